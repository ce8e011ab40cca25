"""Run a suffix of the decoder layers from a cached residual stream (exact patching without recomputing
the layers a patch cannot change).

A patch in layer ``l`` leaves layers ``0..l-1`` as they were in the cached run, so only layers
``l..L-1`` need to run again, starting from the residual stream at the input of layer ``l``. Rather
than re-implementing each architecture's layer call (rotary embeddings, masks per layer type,
position ids ...), the model's own ``forward`` runs with layers ``0..l-1`` replaced by a pass-through
and the input of layer ``l`` replaced by the cached hidden state. The embedding lookup, mask and rotary
set-up still run (cheap); with ``last_only`` the unembedding runs on the last position only
(transformers' ``logits_to_keep``, so a final logit softcap stays the model's own).

This is the only place that knows how a decoder layer receives its input (first positional argument
or ``hidden_states=``) and that causal LMs accept ``logits_to_keep``. Where a model does not fit (no
list of decoder layers, or no ``logits_to_keep``), :func:`supports_suffix` says so and callers fall back
to full forward passes.

:func:`run_stacked` runs many suffix runs that start at different layers in one forward pass: rows join
the batch at their start layer, so every layer runs one large batch instead of one small batch per start
layer (larger matrix products, one model call). It needs the mask and rotary set-up to be shared by all
rows (they are built from one prompt of batch 1 and broadcast), and, given a cache holding the keys and
values of the first positions, it runs only the later positions.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import TYPE_CHECKING, Any, Iterator

import torch
from torch import nn

from ..errors import UnsupportedArchitectureError

if TYPE_CHECKING:
    from .loading import LoadedModel


def decoder_layers(loaded: "LoadedModel") -> nn.ModuleList | None:
    """The ``nn.ModuleList`` whose item ``i`` is decoder layer ``i`` (it contains attention module ``i``; a
    hybrid's layers without heads are matched by position)."""
    cached = loaded._decoder_layers
    if cached is not False:
        return cached
    attn = loaded.layout.attention_modules
    found = None
    for module in loaded.model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == len(attn):
            if all(a is None or any(sub is a for sub in layer.modules()) for layer, a in zip(module, attn)):
                found = module
                break
    loaded._decoder_layers = found
    return found


def supports_suffix(loaded: "LoadedModel") -> bool:
    """Whether :func:`run_from_layer` can run this model (else use full forward passes)."""
    if decoder_layers(loaded) is None:
        return False
    try:
        params = inspect.signature(loaded.model.forward).parameters
    except (TypeError, ValueError):
        return False
    return "logits_to_keep" in params


def cache_kwarg(loaded: "LoadedModel") -> str | None:
    """The name under which the model's ``forward`` takes a KV cache (``cache`` or ``past_key_values``), or None."""
    try:
        params = inspect.signature(loaded.model.forward).parameters
    except (TypeError, ValueError):
        return None
    return next((name for name in ("cache", "past_key_values") if name in params), None)


def _hidden_arg(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _passthrough(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return hidden_states


@contextlib.contextmanager
def capture_layer_inputs(loaded: "LoadedModel") -> Iterator[list[torch.Tensor | None]]:
    """Record the residual stream at the input of every decoder layer during the forward passes in the block.

    Yields a list (index = layer) filled with detached ``[batch, seq, d_model]`` tensors (the last call's).
    """
    layers = decoder_layers(loaded)
    if layers is None:
        raise UnsupportedArchitectureError(f"{type(loaded.model).__name__}: found no list of decoder layers")
    store: list[torch.Tensor | None] = [None] * len(layers)
    handles = []
    for i, layer in enumerate(layers):
        def hook(_mod, args, kwargs, i=i):
            store[i] = _hidden_arg(args, kwargs).detach()
        handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def run_from_layer(loaded: "LoadedModel", hidden: torch.Tensor, start_layer: int, input_ids: torch.Tensor, *,
                   last_only: bool = True) -> torch.Tensor:
    """Logits of the model run from decoder layer ``start_layer`` on, given the residual stream ``hidden``
    (``[batch, seq, d_model]``) at that layer's input.

    ``input_ids`` (``[batch, seq]``) are the tokens of the run (only the embedding of skipped layers and
    the mask/rotary set-up read them). Returns ``[batch, 1, vocab]`` with ``last_only`` (the unembedding
    of the last position only), else ``[batch, seq, vocab]``. ``run_from_layer(m, h0, 0, ids)`` with
    ``h0`` the embedding output equals ``m.model(ids)``; edits and taps of an enclosing
    ``instrumented`` session apply to layers ``start_layer..L-1``.
    """
    layers = decoder_layers(loaded)
    if layers is None:
        raise UnsupportedArchitectureError(f"{type(loaded.model).__name__}: found no list of decoder layers")
    if not 0 <= start_layer < len(layers):
        raise ValueError(f"start_layer {start_layer} out of range 0..{len(layers) - 1}")
    if hidden.shape[:2] != input_ids.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} does not match input_ids {tuple(input_ids.shape)}")
    fired = [0]

    def replace_input(_mod, args, kwargs):
        fired[0] += 1
        if args:
            return (hidden,) + tuple(args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = hidden
        return args, kwargs

    handle = layers[start_layer].register_forward_pre_hook(replace_input, with_kwargs=True)
    skipped = list(layers[:start_layer])
    for layer in skipped:
        layer.forward = _passthrough  # instance attribute shadows the class method for this block only
    try:
        out = loaded.model(input_ids=input_ids, use_cache=False, logits_to_keep=1 if last_only else 0)
    finally:
        handle.remove()
        for layer in skipped:
            del layer.forward
    if fired[0] != 1:
        raise UnsupportedArchitectureError(
            f"{type(loaded.model).__name__} called decoder layer {start_layer} {fired[0]} times in one forward pass"
        )
    return out.logits


def _with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden,) + tuple(args[1:]), kwargs
    kwargs = dict(kwargs)
    kwargs["hidden_states"] = hidden
    return args, kwargs


def _last_position_only(_mod: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: keep only the last position of the module's input ``[N, s, d] -> [N, 1, d]``."""
    return (args[0][:, -1:],) + tuple(args[1:])


def last_layer_trims(loaded: "LoadedModel") -> list[nn.Module]:
    """The last decoder layer's output projection and MLP, whose outputs only the last position needs when
    the logits are read at the last position (empty where the layer has no ``mlp`` child). Their other
    positions feed nothing else: the residual adds broadcast ``[N, 1, d]`` over ``[N, s, d]`` and the
    positions other than the last, wrong from then on, are never unembedded."""
    layers = decoder_layers(loaded)
    if layers is None:
        return []
    last = layers[len(layers) - 1]
    out_proj = getattr(loaded.layout.attention_modules[len(layers) - 1], loaded.layout.out_proj_name, None)
    mlp = getattr(last, "mlp", None)
    return [out_proj, mlp] if isinstance(out_proj, nn.Module) and isinstance(mlp, nn.Module) else []


def run_stacked(loaded: "LoadedModel", entries: list[tuple[int, torch.Tensor]], input_ids: torch.Tensor, *,
                cache: Any = None, last_only: bool = True, trim_last_layer: bool = True) -> torch.Tensor:
    """Logits of many suffix runs in one forward pass; rows join the batch at their start layer.

    ``entries``: ``(layer, hidden)`` pairs with strictly increasing layers, ``hidden [n_i, s, d_model]`` the
    residual stream of ``n_i`` rows at the input of ``layer``. From layer ``l`` on the batch holds the rows
    of every entry with ``layer <= l``, in entry order: entry ``i``'s rows are batch rows
    ``offset_i .. offset_i + n_i - 1`` with ``offset_i = n_0 + ... + n_{i-1}`` (row indices for edits of
    an enclosing ``instrumented`` session on layer ``l`` count the rows of the entries with layer ``<= l``).
    ``input_ids [1, s]``: the tokens of the positions run, of one prompt; only the mask and rotary set-up
    read them, shared by (broadcast to) all rows. ``cache``: a transformers cache holding the keys and
    values of the ``p`` earlier positions, whose layer ``l`` has one row per batch row at layer ``l``; the
    run then covers positions ``p .. p + s - 1``. Returns ``[N, 1, vocab]`` (``last_only``) or
    ``[N, s, vocab]``, ``N`` the total number of rows. With ``last_only`` and ``trim_last_layer`` the last
    layer's output projection and MLP run on the last position only (:func:`last_layer_trims`).
    """
    layers = decoder_layers(loaded)
    if layers is None:
        raise UnsupportedArchitectureError(f"{type(loaded.model).__name__}: found no list of decoder layers")
    starts = [int(layer) for layer, _ in entries]
    if not entries or starts != sorted(set(starts)) or not 0 <= starts[0] <= starts[-1] < len(layers):
        raise ValueError(f"entries need strictly increasing layers in 0..{len(layers) - 1}; got {starts}")
    if input_ids.shape[0] != 1 or any(h.shape[1] != input_ids.shape[1] for _, h in entries):
        raise ValueError(f"input_ids {tuple(input_ids.shape)} must be [1, s] with s the length of every hidden")
    fired = {layer: 0 for layer in starts}

    def join(layer: int, rows: torch.Tensor):
        def hook(_mod, args, kwargs):
            fired[layer] += 1
            incoming = _hidden_arg(args, kwargs)
            joined = rows if layer == starts[0] else torch.cat([incoming, rows.to(incoming.dtype)], dim=0)
            return _with_hidden(args, kwargs, joined)
        return hook

    handles = [layers[layer].register_forward_pre_hook(join(layer, rows), with_kwargs=True) for layer, rows in entries]
    if last_only and trim_last_layer and input_ids.shape[1] > 1:
        handles += [module.register_forward_pre_hook(_last_position_only) for module in last_layer_trims(loaded)]
    skipped = list(layers[:starts[0]])
    for layer in skipped:
        layer.forward = _passthrough
    kwargs: dict[str, Any] = {"use_cache": False}
    if cache is not None:
        name = cache_kwarg(loaded)
        if name is None:
            raise UnsupportedArchitectureError(f"{type(loaded.model).__name__}.forward takes no KV cache")
        kwargs[name] = cache
    try:
        out = loaded.model(input_ids=input_ids, logits_to_keep=1 if last_only else 0, **kwargs)
    finally:
        for h in handles:
            h.remove()
        for layer in skipped:
            del layer.forward
    if any(n != 1 for n in fired.values()):
        raise UnsupportedArchitectureError(f"{type(loaded.model).__name__}: decoder layers ran {fired} times in one pass")
    return out.logits
