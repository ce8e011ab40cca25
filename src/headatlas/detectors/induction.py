"""Induction heads (LR): prefix matching plus copying.

Prefix-matching score (Olsson et al. 2022; Bansal et al. 2023; Crosbie & Shutova 2024): on
``[BOS] + block x 3`` random-token sequences, the mean attention from each token of repeats 2+
to the token right after its earlier copies.

Copying evidence (``extras["copying"]``): the head's direct effect (its OV path through the
linearised final norm and the unembedding, :mod:`.ov`) on the logit of the token it should copy
(the token after the earlier copy, i.e. the correct next token), standardised against the same
effect over the whole vocabulary: ``(effect[target] - mean_v) / std_v``, averaged over queries
and prompts. 0 = no preference for the target; ``extras["copying_logit"]`` is the raw logit
difference ``effect[target] - mean_v``.

Null: the prefix-matching mass on a non-repeated random sequence of the same length at the
same key positions (``i - block + 1``, ...): what the head gives them by position alone.

Label rule: prefix-matching score >= ``MIN_SCORE`` and ``MIN_Z`` std above the null, **and**
copying >= ``MIN_COPYING`` (the head raises the attended token's logit by at least
``MIN_COPYING`` vocabulary standard deviations). Heads that match but do not copy directly are
reported in ``details["matching_only"]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .base import Detector, DetectorResult, ScanConfig, label_heads, register
from .synthetic import mean_std, synthetic_stats

if TYPE_CHECKING:
    from ..models import LoadedModel

MIN_SCORE = 0.3
MIN_Z = 3.0
MIN_COPYING = 1.0


def run(m: LoadedModel, cfg: ScanConfig) -> DetectorResult:
    st = synthetic_stats(m, cfg)
    scores = st.ind.mean(1)
    null_mean, null_std = mean_std(st.ind_null, (1,))
    copying = np.nanmean(st.copying, axis=1)
    matching = label_heads(scores, null_mean, null_std, min_score=MIN_SCORE, min_z=MIN_Z)
    labelled = [lh for lh in matching if copying[lh] >= MIN_COPYING]
    return DetectorResult(
        name="induction", scores=scores, null_mean=null_mean, null_std=null_std,
        labelled=labelled, min_score=MIN_SCORE, min_z=MIN_Z,
        data_description=f"{st.describe()}; queries in repeats 2+",
        null_description=("the same prefix-matching mass on the non-repeated twin sequences at the same key "
                          "positions (mean and std over prompts)"),
        n_prompts=st.spec.n_prompts, seed=st.spec.seed,
        extras={"copying": copying, "copying_logit": np.nanmean(st.copying_logit, axis=1),
                "score_std": st.ind.std(1)},
        details={"block_len": st.batch.block_len, "n_repeats": st.batch.n_repeats, "min_copying": MIN_COPYING,
                 "rule": (f"prefix matching >= {MIN_SCORE}, z >= {MIN_Z} against the null, and direct copying "
                          f">= {MIN_COPYING} vocabulary std"),
                 "matching_only": [list(lh) for lh in matching if lh not in labelled]},
    )


DETECTOR = register(Detector(
    name="induction", stage="LR", method="scoring (prefix matching + OV copying)",
    summary="on a repeat, attends to the token after the earlier copy and copies it to the output",
    citation="Olsson et al. 2022, arXiv 2209.11895; Crosbie & Shutova 2024, arXiv 2407.07011", run=run,
))
