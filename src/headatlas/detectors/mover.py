"""Mover heads, attention part (name movers of Wang et al. 2022, arXiv 2211.00593): on IOI prompts
the final position attends to the indirect object (IO) and the head's OV circuit copies that name.

Data: ``tasks.ioi.ioi_batch`` (two templates, ABBA/BABA balanced) and their ABC corrupted twins.

Score: attention from END to the IO token, averaged over prompts.
Null (paired per prompt): attention from END to the same position in the ABC twin, where that
name is no longer the answer (a head attending by position scores the same).
Copying evidence:
- ``extras["copying"]``: the head's OV applied to the value vector it reads at the IO position
  (what it moves when it attends there), through the linearised final norm and the unembedding
  (:mod:`.ov`): the effect on the IO token's logit standardised against the whole vocabulary
  (``(effect[IO] - mean_v) / std_v``), averaged over prompts. 0 = no preference for the name.
- ``extras["dla_io_minus_s"]``: the head's actual direct effect at END on ``logit(IO) - logit(S)``.
- ``extras["attn_s"]``: attention from END to both S tokens.

Label rule: the attention score clears ``MIN_SCORE``, the null by ``MIN_Z`` and ``MIN_MARGIN``,
**and** copying >= ``MIN_COPYING`` vocabulary std. Heads that attend but do not copy are listed in
``details["attends_only"]``.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError
from ..instrument import Taps, instrumented
from ..tasks.ioi import TEMPLATES, ioi_batch
from .base import Detector, DetectorResult, ScanConfig, label_heads, register
from ..methods.dla import capture_final_residual, direct_logit_effect, head_outputs, logit_effects, readout
from .spans import SpanSet, mass_reducer, paired_stats

MIN_SCORE, MIN_Z, MIN_MARGIN, MIN_COPYING = 0.2, 4.0, 0.1, 1.0
N_TEMPLATES = 2


def ioi_spans(io_pos: torch.Tensor, s1_pos: torch.Tensor, s2_pos: torch.Tensor, end: int) -> dict[str, SpanSet]:
    """Spans (one item per prompt) for END -> IO and END -> S1+S2."""
    n = io_pos.numel()
    io = [(r, r, end, int(io_pos[r])) for r in range(n)]
    s = [(r, r, end, int(p[r])) for r in range(n) for p in (s1_pos, s2_pos)]
    return {"io": SpanSet.build(io, n), "s": SpanSet.build(s, n)}


def _layers(rec, name: str, L: int) -> np.ndarray:
    """Reduced masses -> ``[n_items, L, H]``."""
    return np.stack([rec.reduced[layer][0][name].double().numpy() for layer in range(L)], axis=1)


def _one_template(model, batch) -> dict[str, np.ndarray]:
    L = model.info.n_layers
    spans = ioi_spans(batch.io_pos, batch.s1_pos, batch.s2_pos, batch.end_pos)
    dev = model.device
    rows = torch.arange(batch.clean_ids.shape[0])
    with torch.no_grad(), capture_final_residual(model) as resid, \
            instrumented(model, taps=Taps(z=True, qkv=True, reducer=mass_reducer(spans))) as rec:
        model.model(batch.clean_ids.to(dev), logits_to_keep=1)
    end_resid = resid[0][:, batch.end_pos]                                       # [B, M]
    r = readout(model)
    copying, dla = [], []
    for layer in range(L):
        z_end = rec.z(layer)[:, batch.end_pos]                                   # [B, H, D]
        dla.append((direct_logit_effect(model, layer, z_end, end_resid, batch.io_ids.to(dev))
                    - direct_logit_effect(model, layer, z_end, end_resid, batch.s_ids.to(dev))).cpu())
        v = rec.v(layer)                                                         # [B, KV, S, D]
        kv = torch.tensor([model.info.kv_head(h) for h in range(model.info.n_heads)])
        v_io = v[rows[:, None], kv[None, :], batch.io_pos[:, None]]              # [B, H, D]
        out = head_outputs(v_io.to(r.W_U.device), model.W_O(layer).detach().to(r.W_U.device))
        copying.append(logit_effects(out, end_resid.to(r.W_U.device), batch.io_ids.to(r.W_U.device), r)["z"].cpu())
    clean = {"io": _layers(rec, "io", L), "s": _layers(rec, "s", L)}
    with torch.no_grad(), instrumented(model, taps=Taps(reducer=mass_reducer({"io": spans["io"]}))) as rec2:
        model.model(batch.corrupted_ids.to(dev), logits_to_keep=1)
    return {"io": clean["io"], "s": clean["s"], "null": _layers(rec2, "io", L),
            "copying": torch.stack(copying, 1).double().numpy(), "dla": torch.stack(dla, 1).double().numpy()}


def run(model, config: ScanConfig) -> DetectorResult:
    n = config.n_prompts or (8 if config.quick else 32)
    per = max(2, n // N_TEMPLATES)
    parts, used = [], []
    for t in range(len(TEMPLATES)):
        if len(parts) == N_TEMPLATES:
            break
        try:
            batch = ioi_batch(model.tokenizer, per, seed=config.seed + t, template=t)
        except InputError:
            continue  # this template does not tokenize evenly here: try the next one
        if batch.clean_ids.shape[1] > model.info.n_ctx:
            raise InputError(f"IOI prompts need {batch.clean_ids.shape[1]} positions; the model has {model.info.n_ctx}")
        parts.append(_one_template(model, batch))
        used.append(batch.template)
        config.tick(len(parts), N_TEMPLATES)
    if not parts:
        # the first template's own error says why (e.g. too few single-token names)
        ioi_batch(model.tokenizer, per, seed=config.seed, template=0)
        raise InputError("no IOI template tokenizes to equal lengths with this tokenizer")
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    score, null_mean, null_std = paired_stats(cat["io"], cat["null"])
    copying = cat["copying"].mean(0)
    attends = label_heads(score, null_mean, null_std, min_score=MIN_SCORE, min_z=MIN_Z, min_margin=MIN_MARGIN)
    labelled = [h for h in attends if copying[h] >= MIN_COPYING]
    return DetectorResult(
        name="mover", scores=score, null_mean=null_mean, null_std=null_std, labelled=labelled,
        min_score=MIN_SCORE, min_z=MIN_Z,
        data_description=(f"{cat['io'].shape[0]} IOI prompts from {len(used)} templates (ABBA/BABA balanced); score = "
                          "attention from END to the indirect object; label also needs copying >= "
                          f"{MIN_COPYING} (OV of the IO value vector raises the IO logit, in vocabulary std)"),
        null_description=("paired: attention from END to the same position in the ABC-corrupted twin; null_std = "
                          "standard error of the paired difference"),
        n_prompts=int(cat["io"].shape[0]), seed=config.seed,
        extras={"copying": copying, "dla_io_minus_s": cat["dla"].mean(0), "attn_s": cat["s"].mean(0)},
        details={"templates": used, "min_margin": MIN_MARGIN, "min_copying": MIN_COPYING,
                 "attends_only": [h for h in attends if h not in labelled]},
    )


DETECTOR = register(Detector(
    name="mover", stage="ICI", method="attention pattern + OV copying (IOI)",
    summary="END attends to the indirect object on IOI prompts and the head's OV copies that name",
    citation="Wang et al. 2022, arXiv 2211.00593", run=run,
))
