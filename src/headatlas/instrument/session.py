"""The instrumentation session: one registered attention function, switched on per model.

``instrumented(model, edits=..., taps=...)`` switches the model's attention implementation to
headatlas's registered function for the duration of a ``with`` block. That function calls the
model's own attention (sdpa, or the model's own eager function when a pattern is needed),
records what the taps ask for, applies the edits to ``z`` and returns.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch

from ..errors import HeadAtlasError, InputError, InputTypeError, NotRecordedError, UnsupportedArchitectureError
from ..models.arch import format_layers, not_attention_message
from ..models.info import ModelInfo
from .edits import Edit, HeadEdit, check_index_list, check_int

PatternReducer = Callable[[int, torch.Tensor, "LayerCall"], Any]
ZReducer = Callable[[int, torch.Tensor, "LayerCall"], Any]


@dataclass(frozen=True)
class Taps:
    """What to read during a session.

    - ``z``: each head's output before the output projection, ``[batch, seq, n_heads, d_head]``
      per layer (after edits: what the output projection actually receives).
    - ``qkv``: query ``[batch, n_heads, seq, d_head_qk]`` (after rotary), key ``[batch, n_kv_heads, kv_seq,
      d_head_qk]`` and value ``[batch, n_kv_heads, kv_seq, d_head]`` (GQA: see ``Recording.kv_head``;
      ``d_head_qk`` differs from ``d_head`` only under multi-head latent attention).
    - ``pattern``: keep each layer's whole attention pattern ``[batch, n_heads, q, k]``.
    - ``reducer``: ``fn(layer, pattern, call) -> value`` called per layer with the pattern, whose
      results are kept instead of the pattern (never holds all layers' ``[q, k]`` at once).
    - ``z_reducer``: ``fn(layer, z, call) -> value`` called per layer with the head outputs ``z``
      ``[batch, seq, n_heads, d_head]`` (after edits), results kept in ``Recording.z_reduced``: per-head
      statistics of z (means, probes' features at one position) without keeping every layer's z.
    - ``layers``: restrict taps to these layers (default: every attention layer; in a hybrid model the
      other layers have no heads and naming one is an error).
    - ``grad``: keep ``z`` attached to the graph with ``retain_grad()``, so ``z.grad`` is set by
      ``backward()`` (attribution patching). Default: detached copies.
    - ``float32``: store detached copies in float32 (default True).

    Recorded tensors stay on the device where their layer ran (a model loaded with ``device_map``
    may spread its layers over several GPUs); :meth:`Recording.z_all` gathers them onto layer 0's.
    Edits move their own tensors (patch sources, set values, steering vectors) to the layer's ``z``.
    """

    z: bool = False
    qkv: bool = False
    pattern: bool = False
    reducer: PatternReducer | None = None
    z_reducer: ZReducer | None = None
    layers: Sequence[int] | None = None
    grad: bool = False
    float32: bool = True

    def __post_init__(self) -> None:
        for name in ("z", "qkv", "pattern", "grad", "float32"):
            if not isinstance(getattr(self, name), bool):
                raise InputTypeError(f"Taps({name}=...) must be True or False, got {getattr(self, name)!r:.40}")
        if self.reducer is not None and not callable(self.reducer):
            raise InputTypeError(f"Taps(reducer=...) must be a function fn(layer, pattern, call), got "
                                 f"{type(self.reducer).__name__}")
        if self.z_reducer is not None and not callable(self.z_reducer):
            raise InputTypeError(f"Taps(z_reducer=...) must be a function fn(layer, z, call), got "
                                 f"{type(self.z_reducer).__name__}")
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(check_index_list(self.layers, "Taps(layers=...)") or ()))

    @property
    def needs_pattern(self) -> bool:
        return self.pattern or self.reducer is not None


@dataclass
class LayerCall:
    """What the attention function saw in one call of one layer."""

    layer: int
    module: Any
    query: torch.Tensor                 # [B, H, q, d]
    key: torch.Tensor                   # [B, KV, k, d]
    value: torch.Tensor                 # [B, KV, k, d]
    absolute_positions: torch.Tensor    # [q] positions of the queries in the sequence
    attention: Callable[..., tuple[torch.Tensor, Any]] | None = None  # the function that computed z
    mask: Any = None                    # the attention mask it was given
    kwargs: dict[str, Any] = field(default_factory=dict)  # scaling, dropout, sliding_window, ...
    attention_output: torch.Tensor | None = None   # [B, q, H, d_head]: what the attention function returned
    projection_input: torch.Tensor | None = None   # [B, q, H, d_head]: what the output projection reads (before edits)

    @property
    def output_transformed(self) -> bool:
        """Whether the layer changes the attention output before its output projection reads it (an output
        gate; see the architecture table in models/arch.py): then ``attend`` recomputes the attention output, not ``z``."""
        a, p = self.attention_output, self.projection_input
        return a is not None and p is not None and not torch.equal(a.reshape(p.shape).to(p.dtype), p)

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Recompute this layer's attention on other inputs, with the same function, mask and
        arguments as the real call: ``z [B, q, H, d_head]`` (path patching's receiver recomputation)."""
        if self.attention is None:
            raise HeadAtlasError("this LayerCall carries no attention function")
        z, _ = self.attention(self.module, query, key, value, self.mask, **self.kwargs)
        return z

    def local_indices(self, positions: torch.Tensor) -> torch.Tensor:
        """Indices into this call's query axis of the given absolute positions (those present)."""
        start = int(self.absolute_positions[0])
        n = self.absolute_positions.numel()
        keep = positions[(positions >= start) & (positions < start + n)]
        return keep - start


def stack_layers(per_layer: dict[int, torch.Tensor], n_layers: int) -> torch.Tensor:
    """``{layer: tensor}`` (tensors of one shape) -> ``[n_layers, ...]`` on the first one's device, NaN for the
    layers missing (a hybrid's layers without heads); integer tensors become float."""
    first = next(iter(per_layer.values()))
    like = first if first.is_floating_point() else first.double()
    return torch.stack([per_layer[la].to(like.device, like.dtype) if la in per_layer
                        else torch.full_like(like, float("nan")) for la in range(n_layers)])


@dataclass
class Recording:
    """What the taps captured. Per-layer lists hold one entry per call (several during generation)."""

    n_layers: int
    group_size: int
    attention_layers: tuple[int, ...] = ()    # (): every layer
    _z: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    _q: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    _k: dict[int, torch.Tensor] = field(default_factory=dict)
    _v: dict[int, torch.Tensor] = field(default_factory=dict)
    _pattern: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    reduced: dict[int, list[Any]] = field(default_factory=dict)
    z_reduced: dict[int, list[Any]] = field(default_factory=dict)
    layers_seen: set[int] = field(default_factory=set)
    transformed_layers: set[int] = field(default_factory=set)   # W_O reads a gated/normed attention output
    checked_layers: set[int] = field(default_factory=set)

    def z(self, layer: int) -> torch.Tensor:
        """``[batch, seq, n_heads, d_head]`` (calls concatenated along seq)."""
        return self._cat(self._z, layer, dim=1, what="z")

    def q(self, layer: int) -> torch.Tensor:
        return self._cat(self._q, layer, dim=2, what="qkv")

    def k(self, layer: int) -> torch.Tensor:
        """Keys of the last call (with a KV cache: all keys so far) ``[batch, n_kv_heads, k, d_head]``."""
        return self._get(self._k, layer, "qkv")

    def v(self, layer: int) -> torch.Tensor:
        return self._get(self._v, layer, "qkv")

    def pattern(self, layer: int) -> torch.Tensor:
        """``[batch, n_heads, q, k]`` of the first call (use ``patterns`` for every call)."""
        return self._get(self._pattern, layer, "pattern")[0]

    def patterns(self, layer: int) -> list[torch.Tensor]:
        return self._get(self._pattern, layer, "pattern")

    def z_all(self) -> torch.Tensor:
        """All layers' z stacked: ``[n_layers, batch, seq, n_heads, d_head]``, on the first attention layer's
        device (layers of a model split with ``device_map`` may have run on different devices); the rows of
        layers without softmax heads (hybrid models) are NaN."""
        return stack_layers({layer: self.z(layer) for layer in self.attention_layers}, self.n_layers)

    def __post_init__(self) -> None:
        self.attention_layers = tuple(self.attention_layers) or tuple(range(self.n_layers))

    def kv_head(self, head: int) -> int:
        return head // self.group_size

    def _get(self, store: dict, layer: int, what: str):
        layer = check_int(layer, "layer")
        if layer not in self.attention_layers:
            raise NotRecordedError(not_attention_message(layer, self.attention_layers, self.n_layers))
        if layer not in store:
            if not self.layers_seen:
                raise NotRecordedError(f"nothing was recorded for layer {layer}: run the model inside the "
                                       "`with instrumented(...)` block")
            if not store:
                raise NotRecordedError(f"{what} was not recorded; pass Taps({what}=True) to instrumented(...)")
            raise NotRecordedError(f"{what} of layer {layer} was not recorded (recorded layers: {sorted(store)}); "
                                   "add it to Taps(layers=...)")
        return store[layer]

    def _cat(self, store: dict, layer: int, dim: int, what: str) -> torch.Tensor:
        parts = self._get(store, layer, what)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)


class _Session:
    def __init__(self, edits: Sequence[Edit], taps: Taps, info: ModelInfo):
        if not isinstance(taps, Taps):
            raise InputTypeError(f"taps must be a Taps(...), got {type(taps).__name__}")
        if isinstance(edits, (Edit, str, bytes)) or not hasattr(edits, "__iter__"):
            hint = "; wrap a single edit in a list: edits=[...]" if isinstance(edits, Edit) else ""
            raise InputTypeError(f"edits must be a list of edits, got {type(edits).__name__}{hint}")
        edits = list(edits)
        n_layers, attention = info.n_layers, info.attention_layers
        self.taps = taps
        self.attention_layers = attention
        self.info = info
        self.edits: dict[int, list[Edit]] = {}
        for e in edits:
            if not isinstance(e, Edit):
                raise InputTypeError(f"not an edit: {e!r:.60} (expected a HeadEdit or an object with layer and apply)")
            layer = check_int(e.layer, "edit layer")
            if layer not in attention:
                raise InputError("edit on " + not_attention_message(layer, attention, n_layers))
            if isinstance(e, HeadEdit):
                e.check(n_layers, info.n_heads, info.d_head)
            self.edits.setdefault(layer, []).append(e)
        if taps.layers is not None:
            bad = [x for x in taps.layers if x not in attention]
            if bad:
                raise InputError("Taps(layers=...): " + not_attention_message(bad[0], attention, n_layers))
        tap_layers = attention if taps.layers is None else taps.layers
        self.tap_layers = frozenset(int(x) for x in tap_layers)
        self.recording = Recording(n_layers=n_layers, group_size=info.group_size, attention_layers=attention)
        self.calls: dict[int, int] = {}
        self.forwards = 0
        self.forward_seen: set[int] = set()
        self.in_forward = False
        self.pending: dict[int, LayerCall] = {}   # per layer, its attention call whose output W_O reads next

    def start_forward(self) -> None:
        self.forwards += 1
        self.forward_seen = set()
        self.in_forward = True

    def check_forward(self, model: Any) -> None:
        """After one forward pass of the whole model: the attention layers it ran called the registry. It
        may start late (a suffix run replaces the first layers by a pass-through) but, from its first
        attention layer on, an attention layer that did not call the registry would take edits and taps
        silently as no-ops: an error."""
        self.in_forward = False
        seen = self.forward_seen
        if not seen:
            raise UnsupportedArchitectureError(
                f"{type(model).__name__} ran but never called the attention-function registry: "
                "its attention layers are not supported by headatlas")
        missed = [la for la in self.attention_layers if la > min(seen) and la not in seen]
        if missed:
            raise UnsupportedArchitectureError(
                f"{type(model).__name__}: layers {format_layers(missed)} ran but did not call the attention-function "
                "registry, so headatlas cannot read or write their heads (their attention has its own code path)")

    def check_positions_reached(self, n_forwards: int) -> None:
        """After the run: an edit whose positions the run never reached was silently ignored. One forward
        pass must reach every position an edit names; over several (generation), each edit at least one."""
        for layer, edits in self.edits.items():
            reached = self.calls.get(layer, 0)
            for e in edits:
                if not isinstance(e, HeadEdit) or e.positions is None:
                    continue
                positions = check_index_list(e.positions, "edit positions") or []
                missed = [p for p in positions if p >= reached]
                if missed and (n_forwards <= 1 or len(missed) == len(positions)):
                    raise InputError(f"edit on layer {layer} at position(s) {missed} was never applied: the run reached "
                                     f"positions 0..{reached - 1}; use positions inside the prompt (or the generation)")

    def wants_pattern(self, layer: int) -> bool:
        return self.taps.needs_pattern and layer in self.tap_layers

    def _keep(self, t: torch.Tensor) -> torch.Tensor:
        """A detached copy (never an alias: a static KV cache or a later in-place edit would change it)."""
        return t.detach().to(torch.float32 if self.taps.float32 else t.dtype, copy=True)

    def positions(self, layer: int, q_len: int, k_len: int, device: torch.device) -> torch.Tensor:
        """Absolute positions of this call's queries: counted across the calls of this session
        (cached generation), or read off the key length when a cache was filled before it."""
        offset = max(self.calls.get(layer, 0), k_len - q_len)
        self.calls[layer] = offset + q_len
        return torch.arange(offset, offset + q_len, device=device)

    def after(self, call: LayerCall, z: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """In the attention function, after the model's own attention ran: record the pattern and q/k/v;
        ``z`` goes back unchanged (edits and z taps act where the output projection reads it)."""
        layer = call.layer
        rec = self.recording
        if self.in_forward and layer in self.forward_seen:
            raise UnsupportedArchitectureError(
                f"layer {layer} ran its attention twice in one forward pass (looped or shared layers), so a head "
                "is not identified by its layer")
        if layer not in rec.layers_seen:
            check_call_sizes(call, z, self.info)
        rec.layers_seen.add(layer)
        self.forward_seen.add(layer)
        tapped = layer in self.tap_layers
        if tapped and weights is not None:
            if self.taps.pattern:
                rec._pattern.setdefault(layer, []).append(self._keep(weights))
            if self.taps.reducer is not None:
                rec.reduced.setdefault(layer, []).append(self.taps.reducer(layer, weights, call))
        if tapped and self.taps.qkv:
            rec._q.setdefault(layer, []).append(self._keep(call.query))
            rec._k[layer] = self._keep(call.key)
            rec._v[layer] = self._keep(call.value)
        if layer in self.pending:
            raise UnsupportedArchitectureError(
                f"layer {layer} called the attention function twice before its output projection read the heads' "
                "output (e.g. differential attention), so a head's output is not one attention call's")
        call.attention_output = z
        self.pending[layer] = call
        return z

    def out_proj_hook(self, layer: int) -> Callable:
        """A forward pre-hook for ``layer``'s output projection: there ``z`` is what W_O reads (the attention
        output, times the output gate of gated-attention architectures), viewed ``[batch, seq, n_heads,
        d_head]``; the edits apply to it and the z taps read it."""
        def hook(_module: Any, args: tuple, kwargs: dict):
            call = self.pending.pop(layer, None)
            x = args[0] if args else next(iter(kwargs.values()), None)
            if call is None or not isinstance(x, torch.Tensor):
                return None   # no registry call before it: check_forward reports the layer after the pass
            z = x.reshape(*x.shape[:-1], call.query.shape[1], -1)
            call.projection_input = z
            if layer not in self.recording.checked_layers:   # once per layer: a compare of one call's output
                self.recording.checked_layers.add(layer)
                if call.output_transformed:
                    self.recording.transformed_layers.add(layer)
            z = self.edit_and_tap(layer, z, call)
            if layer not in self.edits and not (self.taps.grad and z.requires_grad):
                return None   # unchanged (with grad taps, the recorded view must be what W_O reads)
            z = z.reshape(x.shape)
            return ((z,) + tuple(args[1:]), kwargs) if args else (args, {**kwargs, next(iter(kwargs)): z})
        return hook

    def edit_and_tap(self, layer: int, z: torch.Tensor, call: LayerCall) -> torch.Tensor:
        rec = self.recording
        tapped = layer in self.tap_layers
        edits = self.edits.get(layer)
        if edits:
            z = z.clone() if torch.is_grad_enabled() else z.contiguous()   # in place on W_O's input: it is read next
            for e in edits:
                z = e.apply(z, call)
        if tapped and self.taps.z_reducer is not None:
            rec.z_reduced.setdefault(layer, []).append(self.taps.z_reducer(layer, z.detach(), call))
        if tapped and self.taps.z:
            if self.taps.grad and z.requires_grad:
                z.retain_grad()
                rec._z.setdefault(layer, []).append(z)
            else:
                rec._z.setdefault(layer, []).append(self._keep(z))
        return z


def check_call_sizes(call: LayerCall, z: torch.Tensor, info: ModelInfo) -> None:
    """The first call of each layer: its queries, keys, values and output have the sizes ``info`` gives
    (``[B, n_heads, q, d_head_qk]``, ``[B, n_kv_heads, k, d_head_qk]``, ``[B, n_kv_heads, k, d_head]``,
    ``[B, q, n_heads, d_head]``); a layer with other sizes would be read with the wrong head mapping."""
    got = (call.query.shape[1], call.query.shape[-1], call.key.shape[1], call.key.shape[-1], call.value.shape[1],
           call.value.shape[-1], z.shape[-2], z.shape[-1])
    want = (info.n_heads, info.d_head_qk, info.n_kv_heads, info.d_head_qk, info.n_kv_heads, info.d_head,
            info.n_heads, info.d_head)
    if got != want:
        names = ("query heads", "query width", "key heads", "key width", "value heads", "value width", "output heads",
                 "output width")
        diff = ", ".join(f"{n} {g} (expected {w})" for n, g, w in zip(names, got, want) if g != w)
        raise UnsupportedArchitectureError(
            f"layer {call.layer}'s attention does not have the sizes of the model's config: {diff}; headatlas needs "
            "the same head layout in every attention layer")


_ACTIVE: contextvars.ContextVar[dict[int, _Session] | None] = contextvars.ContextVar("headatlas_sessions", default=None)


def active_session(module: Any) -> _Session | None:
    sessions = _ACTIVE.get()
    if not sessions:
        return None
    return sessions.get(module.__dict__.get("_headatlas_owner_id"))


def _configs(model: Any) -> list[Any]:
    seen: dict[int, Any] = {}
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            seen.setdefault(id(cfg), cfg)
            for key in getattr(cfg, "sub_configs", {}) or {}:
                sub = getattr(cfg, key, None)
                if sub is not None and hasattr(sub, "_attn_implementation"):
                    seen.setdefault(id(sub), sub)
    return list(seen.values())


@contextlib.contextmanager
def instrumented(target: Any, edits: Sequence[Edit] = (), taps: Taps | None = None) -> Iterator[Recording]:
    """Run ``target`` (a :class:`LoadedModel` or an HF model) with head taps and edits.

    >>> with instrumented(m, edits=[zero(3, 1)], taps=Taps(z=True)) as rec:   # doctest: +SKIP
    ...     logits = m.model(ids).logits
    >>> rec.z(3).shape                                                           # doctest: +SKIP
    torch.Size([1, 7, 9, 64])

    The model's attention implementation is switched for the block and restored after. Works
    under ``torch.no_grad()`` and with gradients, in any dtype, and with ``generate`` (positions
    count across calls of one session).
    """
    from torch import nn

    from ..models.loading import LoadedModel
    from .registry import install, instrumented_name

    model = target.model if isinstance(target, LoadedModel) else target
    if isinstance(target, LoadedModel):
        layout = target.layout
        info = target.info
    elif isinstance(target, nn.Module) and hasattr(target, "config"):
        from ..models.arch import check_supported
        from ..models.loading import model_info

        layout = check_supported(model)
        info = model_info(model, layout, name="", device="")
    else:
        raise InputTypeError(f"instrumented(...) needs a LoadedModel (headatlas.load) or a Hugging Face model, got "
                             f"{type(target).__name__}")
    install()
    session = _Session(edits, Taps() if taps is None else taps, info)
    configs = _configs(model)
    previous = [(cfg, cfg._attn_implementation) for cfg in configs]
    base = previous[0][1] if previous else "sdpa"
    new_name = instrumented_name(base)
    for module in layout.attention_modules:
        if module is not None:
            module.__dict__["_headatlas_owner_id"] = id(model)  # a plain int: not a registered submodule
    sessions = dict(_ACTIVE.get() or {})
    if id(model) in sessions:
        raise InputError("this model already has an active headatlas session; put all edits and taps in one session")
    sessions[id(model)] = session
    token = _ACTIVE.set(sessions)
    hooks = [model.register_forward_pre_hook(lambda *_: session.start_forward()),
             model.register_forward_hook(lambda *_: session.check_forward(model))]
    hooks += [getattr(module, layout.out_proj_name).register_forward_pre_hook(session.out_proj_hook(layer),
                                                                             with_kwargs=True)
              for layer, module in enumerate(layout.attention_modules) if module is not None]
    for cfg, _ in previous:
        cfg._attn_implementation_internal = new_name
    try:
        yield session.recording
    finally:
        for cfg, old in previous:
            cfg._attn_implementation_internal = old
        for hook in hooks:
            hook.remove()
        _ACTIVE.reset(token)
    if session.recording.layers_seen:
        session.check_positions_reached(session.forwards)
