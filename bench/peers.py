"""Peer libraries for the patching benchmark, each on its own copy of the model (wrapping changes the
model: TransformerLens's bridge replaces its attention path). Both are optional: a missing library
is reported as "not installed", never faked.

- TransformerLens 4.x: ``TransformerBridge.boot_transformers(..., hf_model=model)`` and
  ``transformer_lens.patching.get_act_patch_attn_head_out_all_pos`` (one forward per head).
- nnsight 0.8: ``LanguageModel(model, tokenizer=tok)``, one trace per head writing the head's slice
  of the output projection's input; or batched: ``heads_per_trace`` heads per trace, one ``tr.invoke``
  (one copy of the corrupted batch) per patched head, all copies in one forward.
"""

from __future__ import annotations

import importlib.util
from typing import Callable

import numpy as np
import torch

import headatlas


def available(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def transformer_lens_patch(model_name: str, hf_id: str, clean: torch.Tensor, corrupted: torch.Tensor,
                           metric: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
    """``[L, H]`` denoising head-output patching at all positions with TransformerLens."""
    from transformer_lens import patching
    from transformer_lens.model_bridge import TransformerBridge

    m = headatlas.load(model_name, device="cpu")
    bridge = TransformerBridge.boot_transformers(hf_id, hf_model=m.model, tokenizer=m.tokenizer, device="cpu")
    with torch.no_grad():
        _, cache = bridge.run_with_cache(clean)
        out = patching.get_act_patch_attn_head_out_all_pos(bridge, corrupted, cache, lambda lg: metric(lg).mean())
    return out.detach().float().numpy()


def _value(saved):
    return saved.value if hasattr(saved, "value") else saved


def nnsight_model(model_name: str, device: str = "cpu"):
    """``(LanguageModel, LoadedModel, output projections per layer)`` on a fresh copy of the model."""
    from nnsight import LanguageModel

    m = headatlas.load(model_name, device=device)
    lm = LanguageModel(m.model, tokenizer=m.tokenizer)
    projs = [getattr(lm.model.layers[layer].self_attn, m.layout.out_proj_name) for layer in range(m.info.n_layers)]
    return lm, m, projs


def nnsight_clean_z(lm, projs, clean: torch.Tensor) -> list[torch.Tensor]:
    """The clean run's output-projection inputs ``[B, S, H * d_head]`` per layer, in one trace."""
    with torch.no_grad():
        saved = []
        with lm.trace(clean):
            for p in projs:
                saved.append(p.input.save())
    return [_value(s) for s in saved]


def nnsight_patch_batched(model_name: str, clean: torch.Tensor, corrupted: torch.Tensor,
                          metric: Callable[[torch.Tensor], torch.Tensor], *, heads_per_trace: int = 27,
                          model=None) -> np.ndarray:
    """``[L, H]`` the same map with nnsight, batched: ``heads_per_trace`` patched heads per trace, each an
    ``invoke`` of its own copy of the corrupted batch (its rows only are patched), one forward per trace.
    ``model``: a ``nnsight_model(...)`` triple to reuse (else a fresh copy)."""
    lm, m, projs = model or nnsight_model(model_name)
    L, H, D = m.info.n_layers, m.info.n_heads, m.info.d_head
    z_clean = nnsight_clean_z(lm, projs, clean)
    heads = [(layer, h) for layer in range(L) for h in range(H)]
    out = np.zeros((L, H))
    with torch.no_grad():
        for s in range(0, len(heads), heads_per_trace):
            group = heads[s:s + heads_per_trace]
            saved = []
            with lm.trace() as tr:
                for layer, h in group:
                    with tr.invoke(corrupted):
                        projs[layer].input[:, :, h * D:(h + 1) * D] = z_clean[layer][:, :, h * D:(h + 1) * D]
                        saved.append(lm.lm_head.output.save())
            for (layer, h), logits in zip(group, saved):
                out[layer, h] = float(metric(_value(logits)).mean())
    return out


def nnsight_patch(model_name: str, clean: torch.Tensor, corrupted: torch.Tensor,
                  metric: Callable[[torch.Tensor], torch.Tensor], *, model=None) -> np.ndarray:
    """``[L, H]`` the same map with nnsight: one trace per head."""
    lm, m, projs = model or nnsight_model(model_name)
    L, H, D = m.info.n_layers, m.info.n_heads, m.info.d_head
    with torch.no_grad():
        z_clean = nnsight_clean_z(lm, projs, clean)
        out = np.zeros((L, H))
        for layer in range(L):
            for h in range(H):
                with lm.trace(corrupted):
                    projs[layer].input[:, :, h * D:(h + 1) * D] = z_clean[layer][:, :, h * D:(h + 1) * D]
                    logits = lm.lm_head.output.save()
                lg = logits.value if hasattr(logits, "value") else logits
                out[layer, h] = float(metric(lg).mean())
    return out
