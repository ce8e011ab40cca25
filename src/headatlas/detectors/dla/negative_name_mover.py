"""Negative name movers of the IOI circuit (Wang et al. 2022, arXiv 2211.00593; McDougall et al. 2023,
arXiv 2310.04625). The name movers themselves: :mod:`headatlas.detectors.dla.name_mover`; the S-inhibition heads:
:mod:`headatlas.detectors.patching.s_inhibition`.

``negative_name_mover`` (ICI; copy suppression): END attends to the indirect object (IO) and the head's output
*lowers* logit(IO) - logit(S) directly. Same data and forward passes as ``name_mover`` (the shared pass
``ioi_dla``, :data:`headatlas.detectors.dla.name_mover.IOI_PASS`): per prompt, the head's direct logit attribution (DLA)
at END to logit(IO) - logit(S). Rule: the mean DLA <= -``MIN_DLA`` logits with BH q <= 0.05 under a sign-flip
null in the ``less`` direction (swapping IO and S flips the contrast), and ``attends_io`` (END's attention to IO
exceeds its attention to S1 by >= 0.05 with BH q <= 0.05, the name mover's own attention test). Causal check:
Wang et al. (and McDougall et al. for GPT-2's L10H7) find that knocking negative name movers out *raises*
the IOI logit difference, so the check expects an increase under mean ablation, against layer-matched
random head sets, on held-out prompts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ... import stats
from ...atlas.records import CausalCheck
from ..base import Detector, DetectorResult, LabelRule, ScanConfig, register
from .name_mover import IOI_PASS, MIN_DLA, attends_io, ioi_check

if TYPE_CHECKING:
    from ...models import LoadedModel

NEG_RULE = LabelRule(statistic="direct logit attribution at END to logit(IO) - logit(S) (mean over prompts; negative)",
                     direction="less", min_effect=MIN_DLA, extra_min=(("attends_io", 1.0),))

# ---------------------------------------------------------------- negative name movers
def negative_result(per: dict[str, np.ndarray], *, seed: int, data_description: str,
                    n_perm: int = stats.N_PERM) -> DetectorResult:
    """The negative-name-mover result from the per-prompt IOI arrays ``[L, B, H]`` (:func:`mover.measure`)."""
    dla = per["dla"]
    extras = attends_io(per, seed, n_perm)
    draws = stats.signflip_null(dla, n_perm, rng=stats.rng_for(seed, "negative_name_mover:signflip"))
    scores = dla.mean(1)
    tested = stats.evaluate(dla, draws, NEG_RULE, seed=seed, salt="negative_name_mover", scores=scores, extras=extras)
    details = {"min_dla": MIN_DLA, "min_attention_excess": 0.05,
               "heads": [{"head": f"L{a}H{b}", "dla": float(tested.effect[a, b]), "q": float(tested.q_value[a, b]),
                          "io_attention": float(extras["io_attention"][a, b]),
                          "dla_from_io": float(extras["dla_from_io"][a, b])} for a, b in tested.labelled]}
    return stats.result(
        "negative_name_mover", tested, scores=scores, rule=NEG_RULE, data_description=data_description,
        null_description=(f"sign flips of the per-prompt DLA contrasts (swapping IO and S flips logit(IO) - logit(S); "
                          f"{tested.n_null} draws), direction less; attention: END -> IO minus END -> S1, sign flips"),
        n_prompts=dla.shape[1], seed=seed, extras=extras, details=details)


def run_negative(m: LoadedModel, cfg: ScanConfig) -> DetectorResult:
    batches, per = cfg.shared(IOI_PASS, m)
    used = [b.template for b in batches]
    return negative_result(per, seed=cfg.seed,
                           data_description=(f"{per['dla'].shape[1]} IOI prompts (seed {cfg.seed}) from {len(used)} "
                                             "templates (ABBA/BABA balanced); END = the final token"))


def negative_check(m: LoadedModel, cfg: ScanConfig, result: DetectorResult) -> CausalCheck:
    """Mean-ablate the negative name movers: does the IOI logit difference rise more than for random heads?"""
    return ioi_check(m, cfg, result, expected="increase")


NEGATIVE = register(Detector(
    name="negative_name_mover", evidence="dla", metric="IOI logit difference", stage="ICI", method="direct logit attribution + attention (IOI)",
    summary="END attends to the indirect object and the head's output lowers logit(IO) - logit(S) (copy suppression)",
    citation="Wang et al. 2022, arXiv 2211.00593; McDougall et al. 2023, arXiv 2310.04625", run=run_negative,
    uses=(IOI_PASS,), causal=negative_check, version=1,
))
