"""Attention-sink heads: most attention on the first token, whatever the content.

Score (Gu et al. 2024, arXiv 2410.10781, eps = 0.3): the mean attention on the first token
(BOS when the tokenizer has one) over queries ``i > W`` of non-repeated random tokens.

Effect: per prompt, the first token's attention minus the mean attention on each other early key
``1 .. W``. Null: the scored key is drawn at random per prompt among keys ``0 .. W`` (what the head
would score if "first" were any other early position). Label: q <= 0.05, score >= eps = 0.3, effect
>= 0.2. Attention-defined: no causal check. Sinks are a structural pattern outside the survey's taxonomy (they
place no stage); ablating them disturbs the model in ways unrelated to any head function (Gu et al.), so a loss
change under their ablation would not back a functional label.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ... import stats
from ..base import Detector, DetectorResult, LabelRule, ScanConfig, register
from .synthetic import SYNTHETIC, example_prompt, synthetic_stats

if TYPE_CHECKING:
    from ...models import LoadedModel

EPS = 0.3   # Gu et al.'s eps
RULE = LabelRule(statistic="attention on the first token minus the mean attention on keys 1..W (mean over prompts)",
                 direction="greater", min_effect=0.2, min_score=EPS)


def run(m: LoadedModel, cfg: ScanConfig) -> DetectorResult:
    st = synthetic_stats(m, cfg)
    keys = st.key_mass                                            # [L, B, H, W+1]: keys 0 .. W
    scores, tested, null_mean, null_std = stats.evaluate_first_slot(keys, RULE, seed=cfg.seed, salt="attention_sink")
    return stats.result(
        "attention_sink", tested, scores=scores, rule=RULE, null_mean=null_mean, null_std=null_std,
        data_description=f"{st.describe_random()}; queries i > {st.spec.window}",
        null_description=(f"null mean/std: the head's attention on each other early key 1..{st.spec.window}; p: the "
                          f"scored key drawn at random per prompt among keys 0..{st.spec.window} ({tested.n_null} draws)"),
        n_prompts=st.spec.n_prompts, seed=st.spec.seed,
        extras={"score_std": keys[..., 0].std(1)},
        details={"eps": EPS, "first_token_is_bos": bool(st.batch.start)},
    )


DETECTOR = register(Detector(
    name="attention_sink", evidence="pattern", metric="", stage="ICI", method="attention-pattern score",
    summary="puts most of its attention on the first token (attention sink / dormant head)",
    citation="Gu et al. 2024, arXiv 2410.10781; Xiao et al. 2023, arXiv 2309.17453", run=run, uses=(SYNTHETIC,),
    example=example_prompt, version=3,
    no_causal=("attention sinks are defined by their attention pattern (a structural role, not a function): ablating "
               "them disturbs the model in ways unrelated to a head type, so no behavioural metric backs the label"),
    places_stage=False,  # not in the survey's taxonomy; most heads of real LLMs are sinks
))
