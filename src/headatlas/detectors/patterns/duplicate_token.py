"""Duplicate-token heads (ICI): attention from a token to its earlier copies.

Score (Wang et al. 2022, IOI; TransformerLens ``duplicate_token_head``): on ``[BOS] + block x 3``
random-token sequences, the mean attention from each token of the second and third repeats to
the earlier copies of the same token (the query itself excluded).

Effect: per prompt, that mass minus the mass the same head gives the same key positions
(``i - block``, ``i - 2 block``) on a non-repeated twin sequence of the same length. Null: the
twin and the repeat are exchangeable within a prompt when the head ignores repetition, so each
prompt's difference flips sign (sign-flip permutations).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..base import DetectorResult, LabelRule, ScanConfig
from .declare import repeat_loss_detector
from .synthetic import synthetic_stats, twin_result

if TYPE_CHECKING:
    from ...models import LoadedModel

RULE = LabelRule(statistic="mass on earlier copies minus the twin's mass at the same key positions (mean over prompts)",
                 direction="greater", min_effect=0.2)


def run(m: LoadedModel, cfg: ScanConfig) -> DetectorResult:
    st = synthetic_stats(m, cfg)
    return twin_result("duplicate_token", st, st.dup, st.dup_null, RULE, cfg.seed, what="same mass",
                       extras={"score_std": st.dup.std(1)},
                       details={"block_len": st.batch.block_len, "n_repeats": st.batch.n_repeats})


DETECTOR = repeat_loss_detector(
    name="duplicate_token", stage="ICI", method="attention-pattern score", run=run,
    summary="attends from a token to earlier copies of the same token", citation="Wang et al. 2022, arXiv 2211.00593",
    default=False)   # its repeat-loss check (early-layer heads: full recomputes) is the dearest in the default set
