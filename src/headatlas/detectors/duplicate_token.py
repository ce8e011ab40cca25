"""Duplicate-token heads (ICI): attention from a token to its earlier copies.

Score (Wang et al. 2022, IOI; TransformerLens ``duplicate_token_head``): on ``[BOS] + block x 3``
random-token sequences, the mean attention from each token of the second and third repeats to
the earlier copies of the same token (the query itself excluded).

Null: the same mass on a non-repeated random sequence of the same length, at the same key
positions (``i - block``, ``i - 2 block``): what the head gives those positions by position
alone (mean and std over prompts).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Detector, DetectorResult, ScanConfig, label_heads, register
from .synthetic import mean_std, synthetic_stats

if TYPE_CHECKING:
    from ..models import LoadedModel

MIN_SCORE = 0.3   # 30% of all attention on earlier copies (a uniform head gives ~1.5/i)
MIN_Z = 3.0


def run(m: LoadedModel, cfg: ScanConfig) -> DetectorResult:
    st = synthetic_stats(m, cfg)
    scores = st.dup.mean(1)
    null_mean, null_std = mean_std(st.dup_null, (1,))
    return DetectorResult(
        name="duplicate_token", scores=scores, null_mean=null_mean, null_std=null_std,
        labelled=label_heads(scores, null_mean, null_std, min_score=MIN_SCORE, min_z=MIN_Z),
        min_score=MIN_SCORE, min_z=MIN_Z,
        data_description=f"{st.describe()}; queries in repeats 2+",
        null_description=("the same mass on the non-repeated twin sequences at the same key positions "
                          "(mean and std over prompts)"),
        n_prompts=st.spec.n_prompts, seed=st.spec.seed,
        extras={"score_std": st.dup.std(1)},
        details={"block_len": st.batch.block_len, "n_repeats": st.batch.n_repeats},
    )


DETECTOR = register(Detector(
    name="duplicate_token", stage="ICI", method="attention-pattern score",
    summary="attends from a token to earlier copies of the same token",
    citation="Wang et al. 2022, arXiv 2211.00593", run=run,
))
