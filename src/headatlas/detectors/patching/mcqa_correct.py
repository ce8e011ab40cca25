"""``correct`` heads (Wiegreffe et al. 2024, arXiv 2407.15018): exact activation patching of each head's
final-token output between an MCQA prompt and its answer-swapped twin (the data, skill gate and DLA swap
contrast come from the shared pass of :mod:`headatlas.detectors.dla.mcqa_ep`; see its docstring for the
definition of the effect ``e``, the null and the rule).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ... import stats
from ...tasks.mcqa import MCQABatch
from ..base import Detector, DetectorResult, LabelRule, ScanConfig, register
from ..dla.mcqa_ep import EP_PASS, MIN_PATCH, ep_check, ep_stats

if TYPE_CHECKING:
    from ...models import LoadedModel

CORRECT_RULE = LabelRule(statistic=("exact activation patching of the head's final-token output between each prompt "
                                    "and its answer-swapped twin (both directions): drop of logit(answer letter) - "
                                    "logit(twin's answer letter)"),
                         direction="greater", min_effect=MIN_PATCH, extra_min=(("dla_positive", 1.0),))


def patch_effects(m: LoadedModel, batch: MCQABatch, answers: torch.Tensor, batch_size: int | None = None
                  ) -> np.ndarray:
    """``[L, B, H]`` per prompt the two-way exact patching effect ``e`` (module docstring) of each head's
    final-token output. One :func:`patching_map` per prompt and direction (trimmed to its own length, so
    the final token is the last and only it is patched and unembedded)."""
    from ...methods.metrics import user_metric
    from ...methods.patching import patching_map

    L, H = 0, 0
    out = []
    for r in range(batch.ids.shape[0]):
        f = int(batch.final_pos[r])
        P, T = batch.ids[r:r + 1, :f + 1], batch.swapped_ids[r:r + 1, :f + 1]
        k, k2 = answers[batch.correct[r]], answers[batch.swapped_correct[r]]
        per = []
        for base, src, a, b in ((P, T, k, k2), (T, P, k2, k)):
            def fn(logits: torch.Tensor, rows: torch.Tensor, a: torch.Tensor = a, b: torch.Tensor = b) -> torch.Tensor:
                last = logits[:, -1].float()
                return last[:, int(a)] - last[:, int(b)]
            pm = patching_map(m, base.to(m.device), src.to(m.device), metric=user_metric(fn, name="mcqa_swap"),
                              direction="noise", positions=[f], batch_size=batch_size)
            per.append(pm.clean_metric - pm.values)                         # [L, H]
        out.append(0.5 * (per[0] + per[1]))
        L, H = out[-1].shape
    return np.stack(out, 1) if out else np.zeros((L, 0, H))


def correct_result(effects: np.ndarray, swap: np.ndarray, *, seed: int, data_description: str,
                   details: dict[str, Any] | None = None, n_perm: int = stats.N_PERM) -> DetectorResult:
    """The ``correct`` result from per-prompt patching effects and DLA swap contrasts ``[L, B, H]``."""
    dla = swap.mean(1)
    extras = {"dla_swap": dla, "dla_positive": (dla > 0).astype(float)}
    draws = stats.signflip_null(effects, n_perm, rng=stats.rng_for(seed, "correct:signflip"))
    scores = stats.mean_over_prompts(effects)
    tested = stats.evaluate(effects, draws, CORRECT_RULE, seed=seed, salt="correct", scores=scores, extras=extras)
    return stats.result("correct", tested, scores=scores, rule=CORRECT_RULE, data_description=data_description,
                        null_description=f"sign flips of the per-prompt two-way patching effects ({tested.n_null} draws)",
                        n_prompts=effects.shape[1], seed=seed, extras=extras, details=details)


def run_correct(m: LoadedModel, cfg: ScanConfig) -> DetectorResult:
    st = ep_stats(m, cfg)
    eff = patch_effects(m, st.batch, st.answers)
    return correct_result(eff, st.swap, seed=cfg.seed,
                          data_description=(f"{st.describe()}; score = mean over prompts of the exact patching "
                                            "effect of the head's final-token output (prompt <-> twin, both "
                                            "directions) on logit(answer) - logit(twin's answer)"),
                          details=st.common_details())


CORRECT = register(Detector(
    name="correct", evidence="patching", metric="MCQA logit difference", stage="EP", method="activation patching (answer-swapped twins) + DLA (MCQA)",
    summary="its final-token output carries which option letter is correct and raises that letter",
    citation="Wiegreffe et al. 2024, arXiv 2407.15018", run=run_correct, uses=(EP_PASS,), causal=ep_check,
    default=False))
