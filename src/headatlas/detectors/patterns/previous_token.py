"""Previous-token heads (ICI): attention from each token to the one right before it.

Score (Olsson et al. 2022; TransformerLens ``previous_token_head`` in "mul" mode): the mean
attention from query ``i`` to key ``i - 1`` on random tokens, over queries ``i > W`` (``W`` = 8, so
that the compared offsets never reach BOS). Rows sum to one, so this is the share of *all* the
head's attention; ``extras["excl_first"]`` is the TransformerLens ``exclude_bos`` variant, reported
but not used for labels.

Effect: per prompt, the attention on ``i - 1`` minus the mean attention on the other nearby offsets
``i - 2 .. i - W``; averaged over prompts. Null (permutation of the structure the score depends on):
per prompt, the scored offset is drawn at random among ``i - 1 .. i - W`` and the same contrast is
taken: what the head would score if "previous" were any other nearby position.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ... import stats
from ..base import Detector, DetectorResult, LabelRule, ScanConfig, register
from ..behaviours import repeat_loss_check
from .synthetic import SYNTHETIC, example_prompt, synthetic_stats

if TYPE_CHECKING:
    from ...models import LoadedModel

RULE = LabelRule(statistic="attention on i-1 minus the mean attention on i-2..i-W (mean over prompts)",
                 direction="greater", min_effect=0.2)


def run(m: LoadedModel, cfg: ScanConfig) -> DetectorResult:
    st = synthetic_stats(m, cfg)
    mass = st.offset_mass[..., 1:]                               # [L, B, H, W]: offsets -1 .. -W
    scores, tested, null_mean, null_std = stats.evaluate_first_slot(mass, RULE, seed=cfg.seed, salt="previous_token")
    return stats.result(
        "previous_token", tested, scores=scores, rule=RULE, null_mean=null_mean, null_std=null_std,
        data_description=f"{st.describe_random()}; queries i > {st.spec.window}",
        null_description=(f"null mean/std: the head's attention on offsets i-2..i-{st.spec.window}; p: the same "
                          f"contrast with the scored offset drawn at random per prompt among i-1..i-{st.spec.window} "
                          f"({tested.n_null} draws)"),
        n_prompts=st.spec.n_prompts, seed=st.spec.seed,
        extras={"excl_first": st.prev_excl_first.mean(1), "score_std": mass[..., 0].std(1)},
        details={"window": st.spec.window, "seq_len": st.batch.seq_len},
    )


DETECTOR = register(Detector(
    name="previous_token", evidence="pattern", metric="repeat loss", stage="ICI", method="attention-pattern score",
    summary="attends from each token to the token right before it",
    citation="Olsson et al. 2022, arXiv 2209.11895", run=run, uses=(SYNTHETIC,),
    example=example_prompt, causal=repeat_loss_check,
))
