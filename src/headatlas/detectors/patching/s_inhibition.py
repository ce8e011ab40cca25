"""S-inhibition heads of the IOI circuit (Wang et al. 2022, arXiv 2211.00593), found by path patching into the
name movers' queries (:mod:`headatlas.detectors.dla.name_mover`).

``s_inhibition`` (LR): path patching (:func:`headatlas.methods.path_patching.path_patch`) from every head in a
layer before the last name mover's layer (the senders) to the labelled name movers' *queries* (the receivers),
clean prompts with the sender's output taken from the ABC-corrupted twin (three other names). Per prompt the
effect is the drop of logit(IO) - logit(S) at END: ``clean - path-patched`` (logits). Rule: mean drop >=
``MIN_DROP`` logits with BH q <= 0.05 under a sign-flip null of the per-prompt drops. Heads that are not
senders (layers at or after the last receiver's) get effect 0 with a degenerate null (never labelled; flagged
by ``extras["sender"] == 0``). ``details["edges"]``: every labelled S-inhibition head path-patched to each name
mover alone (the sender -> receiver effects :meth:`headatlas.Atlas.circuit` draws). Requires ``name_mover``;
when it labels nothing the detector skips ("not found: ..."). Causal check: mean-ablating the S-inhibition
heads lowers the IOI logit difference on held-out prompts more than layer-matched random head sets.

Version 2: 64 prompts by default (:data:`SINH_PROMPTS`; version 1 used 16), as for the other IOI roles.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ... import stats
from ...atlas.records import CausalCheck
from ...methods.metrics import Metric
from ...tasks.ioi import IOIBatch
from ..base import Detector, DetectorResult, LabelRule, ScanConfig, register
from ..causal import effect_map_result
from ..dla.name_mover import ioi_batches, ioi_behaviour, ioi_check
from .receivers import labelled_receivers, senders_before

if TYPE_CHECKING:
    from ...models import LoadedModel

# 0.1 logits: the same floor as the name movers' DLA; a sender whose path into the movers' queries moves the
# logit difference by less than a tenth of a logit is not worth a role in the circuit drawing.
MIN_DROP = 0.1
S_RULE = LabelRule(statistic="drop of logit(IO) - logit(S) when the head's output from the ABC twin reaches only "
                             "the name movers' queries (path patching; mean over prompts)",
                   direction="greater", min_effect=MIN_DROP)
SINH_PROMPTS = 64      # prompts for the path patching (as the name movers' pass; 16 gave a sign-flip floor of 2^-16)
SINH_PROMPTS_QUICK = 12


# ---------------------------------------------------------------- S-inhibition: path patching
class _Recorder:
    """A logit-difference metric that keeps every row it computes (path_patch returns only batch means)."""

    def __init__(self, io: torch.Tensor, s: torch.Tensor) -> None:
        self.io, self.s = io, s
        self.calls: list[torch.Tensor] = []

    def fn(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        last = logits[:, -1]
        out = (last.gather(1, self.io.to(last.device)[rows][:, None])[:, 0]
               - last.gather(1, self.s.to(last.device)[rows][:, None])[:, 0])
        self.calls.append(out.detach().double().cpu())
        return out


def path_patch_per_prompt(m: LoadedModel, b: IOIBatch, receivers: list[tuple[int, int]],
                          senders: list[tuple[int, int]], batch_size: int | None = None) -> np.ndarray:
    """``[n_senders, B]`` per-prompt drop of logit(IO) - logit(S), ``clean - patched``, when each sender's
    output from the ABC twin reaches only the ``receivers``' queries (exact path patching)."""
    from ...methods.path_patching import path_patch

    rec = _Recorder(b.io_ids, b.s_ids)
    path_patch(m, b.clean_ids, b.corrupted_ids, receivers, via="q", senders=senders,
               metric=Metric("logit_diff_per_prompt", rec.fn), batch_size=batch_size)
    clean = rec.calls[1]                                   # calls: corrupted, clean, then one per sender group
    patched = torch.cat(rec.calls[2:]).reshape(len(senders), -1)
    return (clean[None] - patched).numpy()


def sinh_result(drop: np.ndarray, sender: np.ndarray, *, seed: int, data_description: str,
                details: dict[str, Any] | None = None, n_perm: int = stats.N_PERM) -> DetectorResult:
    """The S-inhibition result from per-prompt drops ``[L, B, H]`` (0 where ``sender [L, H]`` is False)."""
    d = np.where(sender[:, None, :], drop, 0.0)
    return effect_map_result(
        "s_inhibition", d, S_RULE, seed=seed, data_description=data_description,
        null_description=("sign flips of the per-prompt path-patching drops (swapping IO and S flips the logit "
                          "difference; non-senders are 0 with a degenerate null)"),
        extras={"sender": sender.astype(float)}, details=details, n_perm=n_perm)


def run_sinh(m: LoadedModel, cfg: ScanConfig) -> DetectorResult:
    receivers = labelled_receivers(cfg, "name_mover", "name mover heads")
    last = max(layer for layer, _ in receivers)
    L, H = m.info.n_layers, m.info.n_heads
    senders, sender = senders_before(receivers, L, H, m.info.attention_layers)
    n = cfg.n_prompts or (SINH_PROMPTS_QUICK if cfg.quick else SINH_PROMPTS)
    batches = ioi_batches(m, max(n, 12), cfg.seed)
    drops = []
    for i, b in enumerate(batches):
        dd = path_patch_per_prompt(m, b, receivers, senders, batch_size=None)
        full = np.zeros((L, dd.shape[1], H))
        for k, (la, h) in enumerate(senders):
            full[la, :, h] = dd[k]
        drops.append(full)
        cfg.tick(i + 1, len(batches) + 1)
    drop = np.concatenate(drops, axis=1)
    used = [b.template for b in batches]
    res = sinh_result(drop, sender, seed=cfg.seed,
                      data_description=(f"{drop.shape[1]} IOI prompts (seed {cfg.seed}) from {len(used)} templates with "
                                        "ABC-corrupted twins; senders: every head before layer "
                                        f"{last}; receivers: the name movers' queries"),
                      details={"receivers": [f"L{a}H{b}" for a, b in receivers], "via": "q",
                               "n_senders": len(senders)})
    res.details["edges"] = _edges(m, batches, res.labelled, receivers, cfg)
    cfg.tick(len(batches) + 1, len(batches) + 1)
    return res


def _edges(m: LoadedModel, batches: list[IOIBatch], labelled: list[tuple[int, int]],
           receivers: list[tuple[int, int]], cfg: ScanConfig) -> list[dict[str, Any]]:
    """Each labelled sender path-patched to each receiver alone: mean drop (logits) over the prompts."""
    out = []
    for r in receivers:
        send = [s for s in labelled if s[0] < r[0]]
        if not send:
            continue
        dd = np.concatenate([path_patch_per_prompt(m, b, [r], send, batch_size=None) for b in batches],
                            axis=1)
        for s, row in zip(send, dd):
            out.append({"sender": f"L{s[0]}H{s[1]}", "receiver": f"L{r[0]}H{r[1]}", "effect": float(row.mean()),
                        "std": float(row.std()), "via": "q", "n_prompts": int(row.shape[0])})
    return out


def sinh_check(m: LoadedModel, cfg: ScanConfig, result: DetectorResult) -> CausalCheck:
    """Mean-ablate the S-inhibition heads: does the IOI logit difference fall more than for random heads?"""
    return ioi_check(m, cfg, result, expected="decrease")


S_INHIBITION = register(Detector(
    name="s_inhibition", evidence="patching", metric="IOI logit difference", stage="LR", method="path patching (IOI)",
    summary="the head's output at END (from S2) steers the name movers' queries away from S: path patching to "
            "their queries lowers logit(IO) - logit(S)",
    citation="Wang et al. 2022, arXiv 2211.00593", run=run_sinh, requires=("name_mover",), causal=sinh_check, behaviour=ioi_behaviour,
    version=2, default=False,
))
