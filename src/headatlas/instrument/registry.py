"""Registration of headatlas's attention function in transformers' registries.

Two names are registered, one per base implementation, each with the base's own mask function,
so that an instrumented run with no edits computes exactly what the plain model computes:
``headatlas_sdpa`` (delegates to sdpa) and ``headatlas_eager`` (delegates to the model's eager
function). Where a pattern is needed, the model's own eager function runs (never our softmax),
so softcapping and sinks stay the model's.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import torch

from ..errors import UnsupportedArchitectureError
from .session import LayerCall, active_session

_BASES = ("sdpa", "eager")
PREFIX = "headatlas_"
_installed = False


def instrumented_name(base: str | None) -> str:
    base = base or "sdpa"
    if base.startswith(PREFIX):
        base = base[len(PREFIX):]
    if base not in _BASES:
        base = "sdpa"  # flash / flex kernels: sdpa computes the same attention and exposes z
    return PREFIX + base


@functools.lru_cache(maxsize=None)
def _eager_for(module_type: type) -> Callable:
    mod = sys.modules.get(module_type.__module__)
    fn = getattr(mod, "eager_attention_forward", None)
    if fn is None:
        raise UnsupportedArchitectureError(
            f"{module_type.__name__}: its module defines no eager_attention_forward, so headatlas cannot "
            "compute its attention pattern"
        )
    return fn


def _additive_mask(mask: torch.Tensor | None, query: torch.Tensor, key: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """An additive float mask for the eager function, from sdpa's boolean mask or ``None`` (causal)."""
    dtype = query.dtype
    if mask is not None and mask.dtype != torch.bool:
        return mask
    if mask is None:
        q_len, k_len = query.shape[2], key.shape[2]
        qpos = torch.arange(k_len - q_len, k_len, device=query.device)[:, None]
        kpos = torch.arange(k_len, device=query.device)[None, :]
        allowed = kpos <= qpos
        window = kwargs.get("sliding_window")
        if window:
            allowed = allowed & (kpos > qpos - int(window))
        mask = allowed[None, None]
    zero = torch.zeros((), dtype=dtype, device=query.device)
    neg = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=query.device)
    return torch.where(mask, zero, neg)


def _make_attention(base: str) -> Callable:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def headatlas_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, **kwargs: Any):
        session = active_session(module)
        base_fn = sdpa_attention_forward if base == "sdpa" else _eager_for(type(module))
        if session is None:
            return base_fn(module, query, key, value, attention_mask, **kwargs)
        layer = int(module.layer_idx)
        fn, mask = base_fn, attention_mask
        if session.wants_pattern(layer):
            fn = _eager_for(type(module))
            mask = _additive_mask(attention_mask, query, key, kwargs) if base == "sdpa" else attention_mask
        z, weights = fn(module, query, key, value, mask, **kwargs)
        positions = session.positions(layer, query.shape[2], key.shape[2], query.device)
        call = LayerCall(layer=layer, module=module, query=query, key=key, value=value, absolute_positions=positions,
                         attention=fn, mask=mask, kwargs=kwargs)
        z = session.after(call, z, weights)
        return z, weights

    headatlas_attention.__name__ = f"headatlas_{base}_attention"
    return headatlas_attention


def install() -> None:
    """Register headatlas's attention functions (idempotent). Refuses to overwrite a foreign function."""
    global _installed
    if _installed:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    for base in _BASES:
        name = PREFIX + base
        existing = AttentionInterface._global_mapping.get(name)
        if existing is not None and not getattr(existing, "__name__", "").startswith("headatlas_"):
            raise RuntimeError(f"another function is registered as {name!r} in AttentionInterface")
        AttentionInterface.register(name, _make_attention(base))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])
    _installed = True
