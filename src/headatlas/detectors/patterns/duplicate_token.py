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

from ... import stats
from ..base import Detector, DetectorResult, LabelRule, ScanConfig, register
from ..behaviours import repeat_loss_check
from .synthetic import SYNTHETIC, example_prompt, mean_std, synthetic_stats

if TYPE_CHECKING:
    from ...models import LoadedModel

RULE = LabelRule(statistic="mass on earlier copies minus the twin's mass at the same key positions (mean over prompts)",
                 direction="greater", min_effect=0.2)


def run(m: LoadedModel, cfg: ScanConfig) -> DetectorResult:
    st = synthetic_stats(m, cfg)
    scores = st.dup.mean(1)
    diff = st.dup - st.dup_null                                   # [L, B, H]
    draws = stats.signflip_null(diff, rng=stats.rng_for(cfg.seed, "duplicate_token:null"))
    tested = stats.evaluate(diff, draws, RULE, seed=cfg.seed, salt="duplicate_token", scores=scores)
    null_mean, null_std = mean_std(st.dup_null, (1,))
    return stats.result(
        "duplicate_token", tested, scores=scores, rule=RULE, null_mean=null_mean, null_std=null_std,
        data_description=f"{st.describe()}; queries in repeats 2+",
        null_description=("null mean/std: the same mass on the non-repeated twin sequences at the same key positions; "
                          f"p: sign-flip permutations of the per-prompt differences ({tested.n_null} draws)"),
        n_prompts=st.spec.n_prompts, seed=st.spec.seed,
        extras={"score_std": st.dup.std(1)},
        details={"block_len": st.batch.block_len, "n_repeats": st.batch.n_repeats},
    )


DETECTOR = register(Detector(
    name="duplicate_token", evidence="pattern", metric="repeat loss", stage="ICI", method="attention-pattern score",
    summary="attends from a token to earlier copies of the same token",
    citation="Wang et al. 2022, arXiv 2211.00593", run=run, uses=(SYNTHETIC,),
    example=example_prompt, causal=repeat_loss_check,
))
