"""Previous-token heads (ICI): attention from each token to the one right before it.

Score (Olsson et al. 2022; TransformerLens ``previous_token_head`` in "mul" mode): the mean
attention from query ``i`` to key ``i - 1`` on random tokens, over queries ``i > W`` (``W`` = 8, so
that the null's offsets never reach BOS). Rows sum to one, so this is the share of *all* the
head's attention; ``extras["excl_first"]`` is the TransformerLens ``exclude_bos`` variant (the
share of the non-first-token attention), reported but not used for labels: it turns a dormant
sink head with a trace of previous-token attention into a perfect score.

Null: the same head's attention at the other nearby offsets ``i - 2 .. i - W`` (per prompt and
offset: mean and std): what the head gives a typical nearby position that is not the previous one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Detector, DetectorResult, ScanConfig, label_heads, register
from .synthetic import mean_std, synthetic_stats

if TYPE_CHECKING:
    from ..models import LoadedModel

MIN_SCORE = 0.4   # at least 40% of all attention on i-1 (TransformerLens-style cut-offs are 0.4-0.5)
MIN_Z = 3.0


def run(m: LoadedModel, cfg: ScanConfig) -> DetectorResult:
    st = synthetic_stats(m, cfg)
    prev = st.offset_mass[..., 1]                          # [L, B, H]
    scores = prev.mean(1)
    null_mean, null_std = mean_std(st.offset_mass[..., 2:], (1, 3))
    return DetectorResult(
        name="previous_token", scores=scores, null_mean=null_mean, null_std=null_std,
        labelled=label_heads(scores, null_mean, null_std, min_score=MIN_SCORE, min_z=MIN_Z),
        min_score=MIN_SCORE, min_z=MIN_Z,
        data_description=f"{st.describe_random()}; queries i > {st.spec.window}",
        null_description=(f"the head's own mean attention at offsets i-2..i-{st.spec.window} "
                          "(mean and std over prompts and offsets)"),
        n_prompts=st.spec.n_prompts, seed=st.spec.seed,
        extras={"excl_first": st.prev_excl_first.mean(1), "score_std": prev.std(1)},
        details={"window": st.spec.window, "seq_len": st.batch.seq_len},
    )


DETECTOR = register(Detector(
    name="previous_token", stage="ICI", method="attention-pattern score",
    summary="attends from each token to the token right before it",
    citation="Olsson et al. 2022, arXiv 2209.11895", run=run,
))
