"""Induction heads (LR): prefix matching plus copying.

Prefix-matching score (Olsson et al. 2022; Bansal et al. 2023; Crosbie & Shutova 2024): on
``[BOS] + block x 3`` random-token sequences, the mean attention from each token of repeats 2+
to the token right after its earlier copies.

Copying evidence (``extras["copying"]``): the head's direct effect (its OV path through the
linearised final norm and the unembedding, :mod:`headatlas.methods.dla`) on the logit of the token it
should copy, standardised against the same effect over the whole vocabulary, averaged over
queries and prompts (0 = no preference); ``extras["copying_logit"]`` is the raw logit difference.

Effect: per prompt, the prefix-matching mass minus the mass the head gives the same key positions
on a non-repeated twin of the same length. Null: sign-flip permutations of those per-prompt
differences (twin and repeat are exchangeable for a head that ignores repetition).

Label rule: q <= 0.05, effect >= 0.2, **and** copying >= 1 vocabulary std. Heads that match but do
not copy are listed in ``details["matching_only"]``. Causal check: mean-ablating the labelled heads
raises the loss on the repeat of fresh random tokens, against layer-matched random head sets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ... import stats
from ..base import Detector, DetectorResult, LabelRule, ScanConfig, register
from ..behaviours import repeat_loss_check
from .synthetic import SYNTHETIC, example_prompt, mean_std, synthetic_stats

if TYPE_CHECKING:
    from ...models import LoadedModel

MIN_COPYING = 1.0
RULE = LabelRule(statistic="prefix-matching mass minus the twin's mass at the same key positions (mean over prompts)",
                 direction="greater", min_effect=0.2, extra_min=(("copying", MIN_COPYING),))


def run(m: LoadedModel, cfg: ScanConfig) -> DetectorResult:
    st = synthetic_stats(m, cfg)
    scores = st.ind.mean(1)
    diff = st.ind - st.ind_null
    copying = np.nanmean(st.copying, axis=1)
    extras = {"copying": copying, "copying_logit": np.nanmean(st.copying_logit, axis=1), "score_std": st.ind.std(1)}
    draws = stats.signflip_null(diff, rng=stats.rng_for(cfg.seed, "induction:null"))
    tested = stats.evaluate(diff, draws, RULE, seed=cfg.seed, salt="induction", scores=scores, extras=extras)
    matching = stats.apply_rule(LabelRule(statistic="", min_effect=RULE.min_effect), effect=tested.effect,
                                q=tested.q_value, scores=scores)
    null_mean, null_std = mean_std(st.ind_null, (1,))
    return stats.result(
        "induction", tested, scores=scores, rule=RULE, null_mean=null_mean, null_std=null_std,
        data_description=f"{st.describe()}; queries in repeats 2+",
        null_description=("null mean/std: the prefix-matching mass on the non-repeated twin sequences at the same key "
                          f"positions; p: sign-flip permutations of the per-prompt differences ({tested.n_null} draws)"),
        n_prompts=st.spec.n_prompts, seed=st.spec.seed, extras=extras,
        details={"block_len": st.batch.block_len, "n_repeats": st.batch.n_repeats, "min_copying": MIN_COPYING,
                 "matching_only": [[int(a), int(b)] for a, b in zip(*np.nonzero(matching))
                                   if (int(a), int(b)) not in set(tested.labelled)]},
    )


DETECTOR = register(Detector(
    name="induction", evidence="pattern", metric="repeat loss", stage="LR", method="scoring (prefix matching + OV copying)",
    summary="on a repeat, attends to the token after the earlier copy and copies it to the output",
    citation="Olsson et al. 2022, arXiv 2209.11895; Crosbie & Shutova 2024, arXiv 2407.07011", run=run,
    uses=(SYNTHETIC,), example=example_prompt, causal=repeat_loss_check,
))
