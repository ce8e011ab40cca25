"""Weights-only OV circuits through the model's own modules: what each head would write, and which
tokens it would promote, when it attends fully to a given residual vector.

- :func:`effective_embeddings`: the "MLP0-effective embedding" of tokens (Gould et al. 2024, arXiv
  2312.09230): the residual stream after decoder block 0 when the token is run alone as a one-token
  sequence. Attention 0 can then only attend to the token itself, so this is
  ``E[t] + attn0_self(E[t]) + MLP0(...)`` with every norm of block 0 exactly as the model applies it
  (RMS or LayerNorm, any embedding scale and attention-output norms included). Gould et al. use
  ``MLP0(W_E)``; including attention 0's self-attention is the usual approximation for models whose
  first layer's attention is mostly self/BOS-directed and keeps the function architecture-agnostic.
- :func:`ov_outputs`: for residual vectors ``x [N, d_model]``, every head's output ``v_h(norm_l(x)) @ W_O[h]``
  ``[L, N, H, d_model]``: one forward pass on one-token sequences whose every decoder layer's input is
  replaced by ``x`` (a one-token sequence attends only to itself, so the head output is exactly its OV
  map of ``x`` through the layer's own input norm, value projection and GQA grouping).
- :func:`ov_logits`: those outputs read out on chosen tokens through the final norm's weight (the final
  norm treats the head output as the whole residual: its scale is a positive factor per vector, which
  leaves any argmax or ranking over tokens unchanged; LayerNorm centring is applied). For layers that
  normalise the attention output before adding it (``models.arch.ArchSpec.attn_out_norm``, found per layer
  in ``m.layout.attn_out_norms``) that norm's elementwise weight is applied too.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterator

import torch
from torch import nn

from ..errors import UnsupportedArchitectureError

if TYPE_CHECKING:
    from ..models import LoadedModel


def _layers(m: LoadedModel) -> nn.ModuleList:
    from ..models.suffix import decoder_layers

    layers = decoder_layers(m)
    if layers is None:
        raise UnsupportedArchitectureError(f"{type(m.model).__name__}: found no list of decoder layers")
    return layers


def _as_tensor(out: object) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out   # type: ignore[return-value,index]


def effective_embeddings(m: LoadedModel, ids: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """``ids [N]`` -> ``[N, d_model]`` float32: the residual after decoder block 0 for each token run alone."""
    layers = _layers(m)
    ids = torch.as_tensor(ids).long().reshape(-1)
    out: list[torch.Tensor] = []
    for s in range(0, ids.numel(), batch_size):
        store: list[torch.Tensor] = []
        handle = layers[0].register_forward_hook(lambda _m, _a, o: store.append(_as_tensor(o).detach().float()))
        stop = layers[1].register_forward_pre_hook(_stop) if len(layers) > 1 else None
        try:
            with torch.no_grad(), contextlib.suppress(_Stop):
                m.model(input_ids=ids[s:s + batch_size, None].to(m.device), use_cache=False, logits_to_keep=1)
        finally:
            handle.remove()
            if stop is not None:
                stop.remove()
        out.append(store[0][:, 0].cpu())
    return torch.cat(out)


class _Stop(Exception):
    """Raised by a hook to end a forward pass early (nothing after it is needed)."""


def _stop(_mod: nn.Module, _args: tuple) -> None:
    raise _Stop


@contextlib.contextmanager
def _inputs_replaced(layers: nn.ModuleList, hidden: torch.Tensor) -> Iterator[None]:
    """Every decoder layer receives ``hidden`` as its input residual (first positional or ``hidden_states=``)."""
    def hook(_mod, args, kwargs):
        if args:
            return (hidden.to(args[0].dtype),) + tuple(args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = hidden.to(kwargs["hidden_states"].dtype)
        return args, kwargs

    handles = [layer.register_forward_pre_hook(hook, with_kwargs=True) for layer in layers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def ov_z(m: LoadedModel, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """``x [N, d_model]`` -> ``[L, N, H, d_head]``: every head's value of ``x`` (through layer ``l``'s
    input norm and value projection), i.e. its ``z`` when it attends only to a residual equal to ``x``
    (NaN for a hybrid's layers without heads)."""
    from ..instrument import Taps, instrumented

    layers = _layers(m)
    x = x.float()
    parts = []
    for s in range(0, x.shape[0], batch_size):
        xs = x[s:s + batch_size, None, :].to(m.device)                      # [b, 1, M]
        dummy = torch.zeros(xs.shape[0], 1, dtype=torch.long, device=m.device)
        with torch.no_grad(), _inputs_replaced(layers, xs), instrumented(m, taps=Taps(z=True)) as rec:
            m.model(input_ids=dummy, use_cache=False, logits_to_keep=1)
        parts.append(rec.z_all()[:, :, 0].float().cpu())   # [L, b, H, D]
    return torch.cat(parts, dim=1)


def _post_attention_weight(m: LoadedModel, layer: int, d_model: int) -> torch.Tensor | None:
    """The elementwise weight of the norm the layout records on ``layer``'s attention output
    (``m.layout.attn_out_norms``), or None when the layer has none."""
    from .dla import _norm_weight

    norms = m.layout.attn_out_norms
    norm = norms[layer] if layer < len(norms) else None
    if norm is None:
        return None
    return _norm_weight(norm, d_model)[0].float().cpu()


def ov_outputs(m: LoadedModel, z: torch.Tensor) -> torch.Tensor:
    """``z [L, N, H, d_head]`` -> ``[L, N, H, d_model]``: what each head writes (``z_h @ W_O[h]``), times
    the post-attention norm's weight where the architecture has one (see module docstring)."""
    outs = []
    for layer in range(z.shape[0]):
        if layer not in m.info.attention_layers:   # a hybrid's layer without heads
            outs.append(torch.full((*z.shape[1:3], m.info.d_model), float("nan")))
            continue
        W_O = m.W_O(layer).detach().float().cpu()                           # [H, D, M]
        o = torch.einsum("nhd,hdm->nhm", z[layer].float(), W_O)
        w = _post_attention_weight(m, layer, W_O.shape[-1])
        outs.append(o if w is None else o * w)
    return torch.stack(outs)


def ov_readout(m: LoadedModel, out: torch.Tensor) -> torch.Tensor:
    """``out [..., d_model]`` head outputs -> ``[..., d_model]`` as the unembedding reads them: through the final
    norm's weight (and centring for LayerNorm), each output treated as the whole residual (up to its positive
    scale); on the unembedding's device. Its product with ``W_U[t]`` is the logit of token ``t``."""
    from .dla import readout

    r = readout(m)
    v = out.float().to(r.W_U.device)
    if r.center:
        v = v - v.mean(-1, keepdim=True)
    return v * r.weight


def ov_logits(m: LoadedModel, out: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``out [..., d_model]`` head outputs -> ``[..., T]`` their logits on ``tokens [T]`` (:func:`ov_readout`)."""
    from .dla import readout

    W_U = readout(m).W_U
    return (ov_readout(m, out) @ W_U[torch.as_tensor(tokens).long().to(W_U.device)].t()).cpu()
