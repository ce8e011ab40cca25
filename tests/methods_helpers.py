"""Independent oracles for the causal-method tests: plain forward pre-hooks on the attention output
projection (no headatlas instrumentation involved)."""

from __future__ import annotations

import contextlib

import torch


def out_proj(m, layer):
    return getattr(m.layout.attention_modules[layer], m.layout.out_proj_name)


@contextlib.contextmanager
def oproj_hook(m, layer, fn):
    """``fn(x [B, S, H, D]) -> [B, S, H, D]`` applied to the output projection's input of ``layer``."""
    H, D = m.info.n_heads, m.info.d_head

    def pre(_mod, args):
        x = args[0]
        y = fn(x.reshape(*x.shape[:-1], H, D).clone())
        return (y.reshape(x.shape),) + tuple(args[1:])

    h = out_proj(m, layer).register_forward_pre_hook(pre)
    try:
        yield
    finally:
        h.remove()


def head_outputs(m, ids):
    """Every layer's o_proj input as ``[B, S, H, D]`` via plain hooks."""
    H, D = m.info.n_heads, m.info.d_head
    store = {}
    handles = []
    for layer in range(m.info.n_layers):
        def pre(_mod, args, layer=layer):
            store[layer] = args[0].detach().reshape(*args[0].shape[:-1], H, D).clone()
        handles.append(out_proj(m, layer).register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            logits = m.model(ids).logits
    finally:
        for h in handles:
            h.remove()
    return [store[i] for i in range(m.info.n_layers)], logits
