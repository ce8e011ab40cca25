"""Positional heads (ICI): the top attention sits at a fixed relative offset, whatever the content.

Score (Voita et al. 2019, adapted to causal models): for each head, the backward offset ``j``
(0 = the query itself, ... ``W``) where its argmax attention falls most often, and the fraction of
queries at that offset; "regardless of content": the fraction is measured on non-repeated random
tokens and on the repeated sequences (where content-driven heads move), and the score is the
*smaller* of the two (``extras["frac_random"]``, ``extras["frac_repeated"]``, ``extras["offset"]`` = ``-j``).

Effect (a best-of statistic over the ``W + 1`` offsets): per prompt and offset, the smaller of the two
argmax fractions minus the mean fraction at the other offsets; the head's effect is the best offset's
mean over prompts. Null: the offset labels are permuted within each prompt (one permutation per
prompt, shared by all heads) and the same max over offsets is taken (max-statistic null), so a
head only passes when one offset wins consistently across prompts.

Labels: q <= 0.05, score >= 0.9 (Voita's "at least 90% of positions"), effect >= 0.5, **except offset
-1**: those heads are previous-token heads, labelled by ``previous_token`` only
(``details["offset_minus_1"]`` lists the heads that would have passed). No behavioural metric:
positional heads are defined by their pattern alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ... import stats
from ..base import Detector, DetectorResult, LabelRule, ScanConfig, register
from .synthetic import SYNTHETIC, example_prompt, synthetic_stats

if TYPE_CHECKING:
    from ...models import LoadedModel

EXCLUDED_OFFSETS = (-1,)
RULE = LabelRule(statistic=("best offset's argmax fraction (min of random and repeated data) minus the mean "
                            "fraction at the other offsets"), direction="greater", min_effect=0.5, min_score=0.9,
                 extra_min=(("not_previous_offset", 1.0),))


def run(m: LoadedModel, cfg: ScanConfig) -> DetectorResult:
    st = synthetic_stats(m, cfg)
    W = st.spec.window
    x_rand = st.argmax[..., :W + 1]                                 # [L, B, H, W+1]
    x_rep = st.argmax_rep[..., :W + 1]
    both = np.minimum(x_rand, x_rep)
    contrast = both - (x_rand.sum(-1, keepdims=True) - x_rand) / W
    back = stats.best_candidate(contrast)                           # [L, H]
    pick = back[:, None, :, None]
    frac_rand = np.take_along_axis(x_rand, pick, axis=3)[..., 0].mean(1)
    frac_rep = np.take_along_axis(x_rep, pick, axis=3)[..., 0].mean(1)
    scores = np.minimum(frac_rand, frac_rep)
    offset = -back
    extras = {"offset": offset.astype(float), "frac_random": frac_rand, "frac_repeated": frac_rep,
              "not_previous_offset": (~np.isin(offset, EXCLUDED_OFFSETS)).astype(float)}
    draws = stats.permute_candidates_null(contrast, rng=stats.rng_for(cfg.seed, "positional:null"))
    tested = stats.evaluate(contrast, draws, RULE, seed=cfg.seed, salt="positional", scores=scores, extras=extras)
    others = x_rand.copy()
    np.put_along_axis(others, pick, np.nan, axis=3)
    would = stats.apply_rule(LabelRule(statistic="", min_effect=RULE.min_effect, min_score=RULE.min_score),
                             effect=tested.effect, q=tested.q_value, scores=scores)
    return stats.result(
        "positional", tested, scores=scores, rule=RULE,
        null_mean=np.nanmean(others, axis=(1, 3)), null_std=np.nanstd(others, axis=(1, 3)),
        data_description=(f"{st.describe()}; argmax offsets 0..-{W} for queries i > {W} (random) and in "
                          "repeats 2+ (repeated)"),
        null_description=(f"null mean/std: the head's argmax fraction at the other offsets 0..-{W} on the random "
                          "sequences; p: offset labels permuted within each prompt, best offset taken in every draw "
                          f"({tested.n_null} draws)"),
        n_prompts=st.spec.n_prompts, seed=st.spec.seed, extras=extras,
        details={"window": W, "excluded_offsets": list(EXCLUDED_OFFSETS),
                 "offset_minus_1": [[int(a), int(b)] for a, b in zip(*np.nonzero(would))
                                    if int(offset[a, b]) in EXCLUDED_OFFSETS]},
    )


DETECTOR = register(Detector(
    name="positional", evidence="pattern", metric="", stage="ICI", method="attention-pattern score (argmax offset)",
    summary="its top attention sits at a fixed relative offset regardless of content",
    citation="Voita et al. 2019, arXiv 1905.09418", run=run, uses=(SYNTHETIC,),
    example=example_prompt,
    no_causal="positional heads are defined by their attention pattern alone; no behaviour of the model is "
              "specific to them, so no ablation check is run",
))
