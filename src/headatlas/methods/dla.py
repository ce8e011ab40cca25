"""A head's direct effect on the logits (its OV path), through the linearised final norm.

Head ``h`` of layer ``l`` writes ``out = z_h @ W_O[h]`` (``[d_model]``) into the residual stream.
Its *direct logit attribution* (DLA) on token ``t`` is ``(N_x(out)) @ W_U[t]`` where ``N_x`` is the
final norm linearised at the real residual ``x`` it normalises: the scale the norm applies to
``x`` (``1 / rms(x)``, or ``1 / std(x)`` after centering) is frozen and applied to ``out``, times the
norm weight. For an RMS norm, summing ``N_x`` over all components of ``x`` gives ``N(x)`` exactly.

Architectures with a norm on the attention output (a "sandwich" norm ``N_post``, ``models.arch.ArchSpec.attn_out_norm``, applied to the
sum of the heads' outputs before the residual add) get it linearised the same way: at the real
attention output ``a`` of the layer, a head's part of the residual is ``out * c_post / rms(a)``, and
these parts sum over the heads to ``N_post(a)`` exactly (no output bias).

Only ``[d_model]``-sized products are formed: the mean and spread of a head's effect over the
whole vocabulary come from ``mean(W_U)`` and the Gram matrix ``W_U^T W_U / V``, never from a
``[.., vocab]`` tensor per head.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import UnsupportedArchitectureError

if TYPE_CHECKING:
    from ..models import LoadedModel


@dataclass(frozen=True)
class Readout:
    """The final norm (linearised) and unembedding of a model, in float32.

    - ``weight``: ``[d_model]`` the norm's elementwise scale (ones when the model has no final norm)
    - ``center``: LayerNorm-style mean subtraction; ``eps``: the norm's epsilon
    - ``W_U``: ``[vocab, d_model]``; ``mean_u``: ``[d_model]`` mean row; ``gram``: ``[d_model, d_model]`` = ``W_U^T W_U / vocab``
    """

    weight: torch.Tensor
    center: bool
    eps: float
    has_norm: bool
    W_U: torch.Tensor
    mean_u: torch.Tensor
    gram: torch.Tensor
    post: tuple[tuple[torch.Tensor, float] | None, ...] = ()   # per layer: (c_post [d_model], eps) or None

    def post_factor(self, layer: int, attn_in: torch.Tensor | None) -> torch.Tensor | None:
        """``[..., d_model]`` the linearised attention-output norm of ``layer`` at its real input
        ``attn_in [..., d_model]`` (``c_post / rms(attn_in)``), or None when the layer has no such norm.
        ValueError when it has one and ``attn_in`` is missing."""
        spec = self.post[layer] if layer < len(self.post) else None
        if spec is None:
            return None
        if attn_in is None:
            raise ValueError(f"layer {layer} normalises its attention output (sandwich norm): pass the norm's input "
                             "(capture_final_residual(m) records it as store.attn_in[layer])")
        c, eps = spec
        a = attn_in.float().to(c.device)
        return c / torch.sqrt(a.pow(2).mean(-1, keepdim=True) + eps)

    def scale(self, resid: torch.Tensor) -> torch.Tensor:
        """``[..., d_model] -> [..., 1]``: the factor the norm divides ``resid`` by (frozen)."""
        if not self.has_norm:
            return torch.ones_like(resid[..., :1])
        r = resid.float()
        if self.center:
            r = r - r.mean(-1, keepdim=True)
        return torch.sqrt(r.pow(2).mean(-1, keepdim=True) + self.eps)

    def normalise(self, out: torch.Tensor, resid: torch.Tensor) -> torch.Tensor:
        """The linearised norm applied to a component ``out [..., d_model]`` of ``resid`` (broadcastable)."""
        v = out.float()
        if self.center:
            v = v - v.mean(-1, keepdim=True)
        return v / self.scale(resid) * self.weight


def _norm_weight(norm: nn.Module, d_model: int) -> tuple[torch.Tensor, bool, float]:
    """Elementwise scale, centering flag and eps of a final norm, read generically.

    LayerNorm (centering) reads its weight; an RMS-type norm ``N(x) = c * x / rms(x)`` (whatever
    its parametrisation, e.g. ``1 + w``) is probed with a vector of ones: ``c = N(1) * rms(1)``."""
    if isinstance(norm, nn.LayerNorm):
        w = norm.weight.detach().float() if norm.weight is not None else torch.ones(d_model)
        return w, True, float(norm.eps)
    eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
    p = next(norm.parameters(), None)
    ones = torch.ones(1, d_model, device=p.device if p is not None else "cpu",
                      dtype=p.dtype if p is not None else torch.float32)
    with torch.no_grad():
        c = norm(ones).float()[0] * (1.0 + eps) ** 0.5
    return c, False, eps


def readout(m: LoadedModel) -> Readout:
    """The model's :class:`Readout` (computed once per loaded model, cached on it)."""
    if m._readout is not None:
        return m._readout
    W_U = m.unembed().weight.detach().float()
    d_model = W_U.shape[1]
    norm = m.final_norm()
    if norm is None:   # a model with no final norm: the unembedding reads the residual stream directly
        weight, center, eps, has = torch.ones(d_model, device=W_U.device), False, 0.0, False
    else:
        weight, center, eps = _norm_weight(norm, d_model)
        has = True
    post = []
    for pn in getattr(m.layout, "attn_out_norms", ()):
        if pn is None:
            post.append(None)
            continue
        c, centered, p_eps = _norm_weight(pn, d_model)
        if centered:
            raise ValueError("a LayerNorm on the attention output is not supported by the linearised DLA")
        post.append((c.float().to(W_U.device), p_eps))
    r = Readout(weight=weight.to(W_U.device), center=center, eps=eps, has_norm=has, W_U=W_U,
                mean_u=W_U.mean(0), gram=W_U.t() @ W_U / W_U.shape[0], post=tuple(post))
    m._readout = r
    return r


class ResidualStore(list):
    """The final residual of each forward (``[batch, seq, d_model]``, a list entry per forward), and
    ``attn_in[layer]``: the input of each attention-output norm (same layout), for architectures that
    have one (empty otherwise)."""

    def __init__(self) -> None:
        super().__init__()
        self.attn_in: dict[int, list[torch.Tensor]] = {}


@contextlib.contextmanager
def capture_final_residual(m: LoadedModel) -> Iterator[ResidualStore]:
    """Record the residual stream entering the final norm (``[batch, seq, d_model]``, one entry per
    forward); without a final norm, the last hidden state entering the unembedding. Where the
    architecture normalises the attention output (``ArchSpec.attn_out_norm``), also the input of that norm, per layer
    (``store.attn_in[layer]``), which the linearised DLA needs."""
    store = ResidualStore()
    module = m.final_norm() or m.unembed()
    handles = [module.register_forward_pre_hook(lambda _mod, args: store.append(args[0].detach().float()))]
    for layer, pn in enumerate(getattr(m.layout, "attn_out_norms", ())):
        if pn is not None:
            store.attn_in[layer] = []
            handles.append(pn.register_forward_pre_hook(
                lambda _mod, args, _l=layer: store.attn_in[_l].append(args[0].detach().float())))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def head_outputs(z: torch.Tensor, W_O: torch.Tensor) -> torch.Tensor:
    """``z [..., n_heads, d_head]``, ``W_O [n_heads, d_head, d_model]`` -> ``[..., n_heads, d_model]``:
    what each head writes into the residual stream (before the output bias)."""
    return torch.einsum("...hd,hdm->...hm", z.float(), W_O.float())


def logit_effects(out: torch.Tensor, resid: torch.Tensor, tokens: torch.Tensor, r: Readout) -> dict[str, torch.Tensor]:
    """Direct effect of residual components on the logits of chosen tokens.

    ``out [..., n, d_model]`` (e.g. ``n`` heads), ``resid [..., d_model]`` the residual they belong
    to, ``tokens [...]`` one token per position. Returns ``[..., n]`` tensors:
    ``logit`` (the direct effect on ``tokens``' logit), ``mean`` and ``std`` (over the vocabulary)
    and ``z`` = ``(logit - mean) / std``, the standardised effect (scale-free: 0 for a head with no
    token-specific effect, > 0 when it favours the token more than the typical vocabulary entry)."""
    u = r.normalise(out, resid[..., None, :])                       # [..., n, M]
    w_t = r.W_U[tokens.clamp_min(0)]                                # [..., M]
    logit = (u * w_t[..., None, :]).sum(-1)
    mean = u @ r.mean_u
    second = ((u @ r.gram) * u).sum(-1)
    std = (second - mean.pow(2)).clamp_min(1e-12).sqrt()
    return {"logit": logit, "mean": mean, "std": std, "z": (logit - mean) / std}


def residual_outputs(m: LoadedModel, layer: int, z: torch.Tensor, attn_in: torch.Tensor | None = None) -> torch.Tensor:
    """``z [..., n_heads, d_head]`` -> ``[..., n_heads, d_model]``: what each head adds to the residual
    stream: ``z_h @ W_O[h]``, through the layer's attention-output norm linearised at its real input
    ``attn_in [..., d_model]`` where the architecture has one (``ArchSpec.attn_out_norm``)."""
    r = readout(m)
    out = head_outputs(z.to(r.W_U.device), m.W_O(layer).detach().to(r.W_U.device))
    f = r.post_factor(layer, attn_in)
    return out if f is None else out * f[..., None, :]


def direct_logit_effect(m: LoadedModel, layer: int, z: torch.Tensor, resid: torch.Tensor,
                        tokens: torch.Tensor, attn_in: torch.Tensor | None = None) -> torch.Tensor:
    """Each head's direct effect on the logit of ``tokens``: ``[..., n_heads]``.

    ``z [..., n_heads, d_head]`` the layer's head outputs (e.g. ``rec.z(layer)``), ``resid
    [..., d_model]`` the final residual at the same positions (:func:`capture_final_residual`),
    ``tokens [...]``; ``attn_in [..., d_model]``: the input of the layer's attention-output norm at the
    same positions (``store.attn_in[layer]``), required where the architecture has one."""
    r = readout(m)
    out = residual_outputs(m, layer, z, attn_in)
    return logit_effects(out, resid.to(r.W_U.device), tokens.to(r.W_U.device), r)["logit"]


@dataclass
class SourceDLA:
    """Direct logit attribution at one query position per prompt, split by source (key) position.

    - ``values[name]``: ``[B, L, H, S]`` the part of head ``(l, h)``'s direct effect on the logit of
      target ``name`` that it moved from source position ``s``:
      ``A_h[q, s] * N_x(v_s @ W_O[h]) @ W_U[t]`` (``N_x`` the final norm linearised at the real final
      residual ``x`` of the query). Summed over ``s`` it is the head's whole direct effect
      (:func:`direct_logit_effect` on its ``z``), since ``z_h[q] = sum_s A_h[q, s] v_s``.
    - ``attention``: ``[B, L, H, S]`` the query's attention row of every head (0 past the query).
    - ``query_pos``: ``[B]`` the query position of each prompt; ``layers``: the layers computed (others are 0).
    """

    values: dict[str, torch.Tensor]
    attention: torch.Tensor
    query_pos: torch.Tensor
    layers: tuple[int, ...]

    def total(self, name: str) -> torch.Tensor:
        """``[B, L, H]``: each head's whole direct effect on target ``name`` (the sum over sources)."""
        return self.values[name].sum(-1)


def dla_by_source(m: LoadedModel, ids: torch.Tensor, query_pos: torch.Tensor | int,
                  targets: dict[str, torch.Tensor], *, layers: list[int] | None = None,
                  batch_size: int = 8) -> SourceDLA:
    """Each head's direct logit attribution at ``query_pos``, split by source position (see :class:`SourceDLA`).

    ``ids [B, S]`` prompts (right padding after the query is harmless: the query never sees it);
    ``query_pos`` one position for all prompts or ``[B]``; ``targets``: ``{name: [B] token ids}`` (one
    token per prompt). One forward per ``batch_size`` prompts with ``Taps(qkv=True)`` (values at kv-head
    granularity: query head ``h`` reads kv head ``h // group``) and a pattern reducer that keeps only the
    query's row of each layer, so no layer's ``[q, k]`` pattern is held. Linear in the target: a contrast
    such as ``logit(a) - mean logit(others)`` is the same combination of the returned maps. float32, on CPU.
    """
    from ..instrument import Taps, instrumented

    ids = torch.as_tensor(ids)
    if ids.dim() != 2:
        raise ValueError(f"ids must be [batch, seq], got shape {tuple(ids.shape)}")
    B, S = ids.shape
    qpos = torch.full((B,), int(query_pos), dtype=torch.long) if not isinstance(query_pos, torch.Tensor) \
        or query_pos.dim() == 0 else query_pos.long().cpu()
    if qpos.shape != (B,) or int(qpos.min()) < 0 or int(qpos.max()) >= S:
        raise ValueError(f"query_pos must be one position or [batch] positions inside 0..{S - 1}")
    for name, t in targets.items():
        if torch.as_tensor(t).shape != (B,):
            raise ValueError(f"target {name!r} must be [batch] token ids, got shape {tuple(torch.as_tensor(t).shape)}")
    L, H = m.info.n_layers, m.info.n_heads
    use = list(m.info.attention_layers) if layers is None else sorted({int(x) for x in layers})
    r = readout(m)
    dev_u = r.W_U.device
    kv = torch.tensor([m.info.kv_head(h) for h in range(H)])
    values = {name: torch.zeros(B, L, H, S) for name in targets}
    attention = torch.zeros(B, L, H, S)
    for s0 in range(0, B, max(1, int(batch_size))):
        s1 = min(B, s0 + max(1, int(batch_size)))
        rows = torch.arange(s1 - s0)
        q_local = qpos[s0:s1]

        def keep_row(layer: int, pattern: torch.Tensor, call, q=q_local, rows=rows) -> torch.Tensor:
            return pattern[rows.to(pattern.device), :, q.to(pattern.device)].detach().float().cpu()   # [b, H, S]

        with torch.no_grad(), capture_final_residual(m) as resid, \
                instrumented(m, taps=Taps(qkv=True, reducer=keep_row, layers=use)) as rec:
            m.model(input_ids=ids[s0:s1].to(m.device), use_cache=False, logits_to_keep=1)
        if rec.transformed_layers:
            raise UnsupportedArchitectureError(
                f"layer {min(rec.transformed_layers)} gates or normalises its attention output before the output "
                "projection, so a head's output is not its attention-weighted values: DLA by source position needs "
                "that; use the per-head DLA (direct_logit_effect) instead")
        x = resid[0][rows, q_local].to(dev_u)                                   # [b, M] final residual at the query
        post = {layer: r.post_factor(layer, resid.attn_in[layer][0][rows, q_local]) for layer in use
                if layer in resid.attn_in}                                      # [b, M] sandwich-norm factors
        # each target's readout direction through the linearised norm: logit(out) = out . d
        for name, t in targets.items():
            w = r.W_U[torch.as_tensor(t)[s0:s1].to(dev_u)] * r.weight / r.scale(x)   # [b, M]
            if r.center:
                w = w - w.mean(-1, keepdim=True)
            for layer in use:
                W_O = m.W_O(layer).detach().to(dev_u).float()                   # [H, D, M]
                wl = w * post[layer] if layer in post else w
                wo = torch.einsum("hdm,bm->bhd", W_O, wl)                       # [b, H, D]
                v = rec.v(layer).to(dev_u)[:, kv]                                # [b, H, S, D]
                per_src = torch.einsum("bhsd,bhd->bhs", v.float(), wo)          # [b, H, S]
                a = rec.reduced[layer][0].to(dev_u)
                values[name][s0:s1, layer] = (a * per_src).cpu()
        for layer in use:
            attention[s0:s1, layer] = rec.reduced[layer][0]
    return SourceDLA(values=values, attention=attention, query_pos=qpos, layers=tuple(use))
