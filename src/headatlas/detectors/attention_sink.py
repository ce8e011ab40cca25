"""Attention-sink heads: most attention on the first token, whatever the content.

Score (Gu et al. 2024, arXiv 2410.10781, eps = 0.3): the mean attention on the first token
(BOS when the tokenizer has one) over queries ``i > W`` of non-repeated random tokens.
A head is labelled when the score exceeds eps = 0.3 and the null by ``MIN_Z`` std.

Null: the same head's mean attention on each other early key ``1 .. W`` (per prompt and key:
mean and std): what a single position that is not first gets from this head.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Detector, DetectorResult, ScanConfig, label_heads, register
from .synthetic import mean_std, synthetic_stats

if TYPE_CHECKING:
    from ..models import LoadedModel

MIN_SCORE = 0.3   # Gu et al.'s eps
MIN_Z = 3.0


def run(m: LoadedModel, cfg: ScanConfig) -> DetectorResult:
    st = synthetic_stats(m, cfg)
    first = st.key_mass[..., 0]                            # [L, B, H]
    scores = first.mean(1)
    null_mean, null_std = mean_std(st.key_mass[..., 1:], (1, 3))
    return DetectorResult(
        name="attention_sink", scores=scores, null_mean=null_mean, null_std=null_std,
        labelled=label_heads(scores, null_mean, null_std, min_score=MIN_SCORE, min_z=MIN_Z),
        min_score=MIN_SCORE, min_z=MIN_Z,
        data_description=f"{st.describe_random()}; queries i > {st.spec.window}",
        null_description=(f"the head's own mean attention on each other early key 1..{st.spec.window} "
                          "(mean and std over prompts and keys)"),
        n_prompts=st.spec.n_prompts, seed=st.spec.seed,
        extras={"score_std": first.std(1)},
        details={"eps": MIN_SCORE, "first_token_is_bos": bool(st.batch.start)},
    )


DETECTOR = register(Detector(
    name="attention_sink", stage="ICI", method="attention-pattern score",
    summary="puts most of its attention on the first token (attention sink / dormant head)",
    citation="Gu et al. 2024, arXiv 2410.10781; Xiao et al. 2023, arXiv 2309.17453", run=run,
    places_stage=False,  # not in the survey's taxonomy; most heads of real LLMs are sinks
))
