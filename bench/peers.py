"""Peer libraries for the patching benchmark, each on its own copy of the model (wrapping changes the
model: TransformerLens's bridge replaces its attention path). Both are optional: a missing library
is reported as "not installed", never faked.

- TransformerLens 4.x: ``TransformerBridge.boot_transformers(..., hf_model=model)`` and
  ``transformer_lens.patching.get_act_patch_attn_head_out_all_pos`` (one forward per head).
- nnsight 0.8: ``LanguageModel(model, tokenizer=tok)``, one trace per head writing the head's slice
  of the output projection's input.
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


def nnsight_patch(model_name: str, clean: torch.Tensor, corrupted: torch.Tensor,
                  metric: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
    """``[L, H]`` the same map with nnsight: one trace per head."""
    from nnsight import LanguageModel

    m = headatlas.load(model_name, device="cpu")
    L, H, D = m.info.n_layers, m.info.n_heads, m.info.d_head
    lm = LanguageModel(m.model, tokenizer=m.tokenizer)
    projs = [getattr(lm.model.layers[layer].self_attn, m.layout.out_proj_name) for layer in range(L)]
    with torch.no_grad():
        saved = []
        with lm.trace(clean):
            for p in projs:
                saved.append(p.input.save())
        z_clean = [s.value if hasattr(s, "value") else s for s in saved]
        out = np.zeros((L, H))
        for layer in range(L):
            for h in range(H):
                with lm.trace(corrupted):
                    projs[layer].input[:, :, h * D:(h + 1) * D] = z_clean[layer][:, :, h * D:(h + 1) * D]
                    logits = lm.lm_head.output.save()
                lg = logits.value if hasattr(logits, "value") else logits
                out[layer, h] = float(metric(lg).mean())
    return out
