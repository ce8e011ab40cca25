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
    """The ``nn.ModuleList`` whose item ``i`` is decoder layer ``i`` (it contains attention module ``i``)."""
    cached = loaded._cache.get("decoder_layers", False)
    if cached is not False:
        return cached
    attn = loaded.layout.attention_modules
    found = None
    for module in loaded.model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == len(attn):
            if all(any(sub is a for sub in layer.modules()) for layer, a in zip(module, attn)):
                found = module
                break
    loaded._cache["decoder_layers"] = found
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
