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
from ..base import DetectorResult, LabelRule, ScanConfig
from .declare import repeat_loss_detector
from .synthetic import synthetic_stats, twin_result

if TYPE_CHECKING:
    from ...models import LoadedModel

MIN_COPYING = 1.0
RULE = LabelRule(statistic="prefix-matching mass minus the twin's mass at the same key positions (mean over prompts)",
                 direction="greater", min_effect=0.2, extra_min=(("copying", MIN_COPYING),))


def run(m: LoadedModel, cfg: ScanConfig) -> DetectorResult:
    st = synthetic_stats(m, cfg)
    extras = {"copying": np.nanmean(st.copying, axis=1), "copying_logit": np.nanmean(st.copying_logit, axis=1),
              "score_std": st.ind.std(1)}
    res = twin_result("induction", st, st.ind, st.ind_null, RULE, cfg.seed, what="prefix-matching mass", extras=extras,
                      details={"block_len": st.batch.block_len, "n_repeats": st.batch.n_repeats,
                               "min_copying": MIN_COPYING})
    matching = stats.apply_rule(LabelRule(statistic="", min_effect=RULE.min_effect), effect=res.effect,
                                q=res.q_value, scores=res.scores)
    res.details["matching_only"] = [[int(a), int(b)] for a, b in zip(*np.nonzero(matching))
                                    if (int(a), int(b)) not in set(res.labelled)]
    return res


DETECTOR = repeat_loss_detector(
    name="induction", stage="LR", method="scoring (prefix matching + OV copying)", run=run,
    summary="on a repeat, attends to the token after the earlier copy and copies it to the output",
    citation="Olsson et al. 2022, arXiv 2209.11895; Crosbie & Shutova 2024, arXiv 2407.07011")
