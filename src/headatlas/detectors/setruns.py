"""Run many head sets on one :class:`~headatlas.detectors.behaviours.Behaviour`, one set per batch row.

:func:`measure` runs the behaviour's prompts once clean (keeping the residual stream at the input of every
layer a set starts at, and each head's mean output per position where the intervention is a mean ablation),
then every head set over every prompt as rows of stacked passes
(:func:`headatlas.models.suffix.run_stacked`): a row joins the batch at the earliest layer its set changes
(the layers before are exactly the clean run's), and only the ``keep`` positions the metric reads are
unembedded. One :class:`RowSetEdit` per layer applies every row's set at once (a row x head mask). Models
without the suffix runner run full forward passes with the same row edits. The empty set is the clean run.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch

from ..instrument import Taps, instrumented
from ..methods.engine import max_rows
from ..models.suffix import capture_layer_inputs, decoder_layers, run_stacked, supports_suffix
from .behaviours import Behaviour, HeadOp, ResidualAdd

if TYPE_CHECKING:
    from ..instrument.session import LayerCall
    from ..models import LoadedModel

Head = tuple[int, int]


@dataclass(frozen=True, eq=False)
class RowSetEdit:
    """Layer ``layer``'s head outputs ``z [n, s, H, d]`` for rows ``0..n-1`` of a pass: where ``mask[r, h]``,
    head ``h`` of row ``r`` becomes its mean (``source [C, S, H, d]``, row ``r`` reading class ``group[r]``, or
    class 0), 0, ``factor * z`` or ``z + source[h]`` (``source [H, d]``), by ``op``. Rows beyond ``n`` (not
    yet joined at this layer) are ignored."""

    layer: int
    mask: torch.Tensor
    op: str
    source: torch.Tensor | None = None
    group: torch.Tensor | None = None
    factor: float = 0.0

    def apply(self, z: torch.Tensor, call: "LayerCall") -> torch.Tensor:
        n = z.shape[0]
        mk = self.mask[:n].to(z.device)[:, None, :, None]
        if self.op == "zero":
            return z.masked_fill(mk, 0.0)
        if self.op == "scale":
            return torch.where(mk, z * float(self.factor), z)
        src = self.source.to(device=z.device, dtype=z.dtype)  # type: ignore[union-attr]
        if self.op == "add":
            return z + mk.to(z.dtype) * src[None, None]
        val = src[:, call.absolute_positions.to(z.device)]
        if val.shape[0] > 1:
            val = val[self.group[:n].to(z.device)]  # type: ignore[index]
        return torch.where(mk, val, z)


@dataclass
class _Base:
    clean: torch.Tensor                      # [1, U]
    hidden: dict[int, torch.Tensor]          # start layer -> [B, S, d_model]
    means: dict[int, torch.Tensor]           # layer -> [C, S, H, d_head]


@contextlib.contextmanager
def _unembed_last(m: "LoadedModel", keep: int) -> Iterator[None]:
    """Unembed only the last ``keep`` positions (a pre-hook on the output embedding slices its input)."""
    head = m.model.get_output_embeddings() if hasattr(m.model, "get_output_embeddings") else None
    if head is None:
        yield
        return
    handle = head.register_forward_pre_hook(lambda _mod, args: (args[0][:, -keep:],) + tuple(args[1:]))
    try:
        yield
    finally:
        handle.remove()


def _logits(m: "LoadedModel", ids: torch.Tensor, keep: int) -> torch.Tensor:
    """Plain forward (under any active session) -> ``[b, keep, V]`` float."""
    with _unembed_last(m, keep):
        out = m.model(input_ids=ids.to(m.device), use_cache=False).logits
    return out[:, -keep:].float()


def _groups(b: Behaviour) -> tuple[torch.Tensor, int]:
    if b.mean_groups is None:
        return torch.zeros(b.n_prompts, dtype=torch.long), 1
    g = torch.as_tensor(b.mean_groups, dtype=torch.long).reshape(-1)
    _, inv = torch.unique(g, return_inverse=True)
    return inv, int(inv.max()) + 1


def _base_run(m: "LoadedModel", b: Behaviour, starts: set[int], mean_layers: set[int], batch_size: int,
              suffix: bool) -> _Base:
    """One clean pass over the prompts: the score, the residual stream at the input of ``starts``, and the
    per-position mean head outputs of ``mean_layers``."""
    group, n_groups = _groups(b)
    B, S = b.ids.shape
    sums: dict[int, torch.Tensor] = {}
    hidden: dict[int, list[torch.Tensor]] = {la: [] for la in starts}
    logits = []
    for s0 in range(0, B, batch_size):
        g = group[s0:s0 + batch_size]

        def reduce(layer: int, z: torch.Tensor, call: Any, g=g) -> None:
            part = torch.zeros((n_groups,) + tuple(z.shape[1:]), dtype=torch.float32, device=z.device)
            part.index_add_(0, g.to(z.device), z.float())
            sums[layer] = part if layer not in sums else sums[layer] + part

        taps = Taps(z_reducer=reduce, layers=sorted(mean_layers)) if mean_layers else None
        with torch.no_grad(), instrumented(m, taps=taps), \
                (capture_layer_inputs(m) if suffix and starts else contextlib.nullcontext([])) as store:
            logits.append(_logits(m, b.ids[s0:s0 + batch_size], b.keep))
            for la in starts:
                if suffix:
                    hidden[la].append(store[la])
    counts = torch.bincount(group, minlength=n_groups).float().clamp_min(1.0)
    means = {la: (x / counts.to(x.device)[:, None, None, None]) for la, x in sums.items()}
    clean = b.score(torch.cat(logits)[None])
    return _Base(clean=clean, hidden={la: torch.cat(v) for la, v in hidden.items() if v}, means=means)


def _edits(b: Behaviour, base: _Base, sets: list[tuple[Head, ...]], n_heads: int, group: torch.Tensor
           ) -> list[RowSetEdit]:
    """One :class:`RowSetEdit` per layer a set touches; rows = (set, prompt) in order."""
    iv = b.intervention
    if not isinstance(iv, HeadOp):
        return []
    B = b.n_prompts
    layers = sorted({la for s in sets for la, _ in s})
    out = []
    for la in layers:
        per_set = torch.zeros(len(sets), n_heads, dtype=torch.bool)
        for i, s in enumerate(sets):
            for l2, h in s:
                if l2 == la:
                    per_set[i, h] = True
        mask = per_set.repeat_interleave(B, dim=0)
        if iv.op == "mean":
            out.append(RowSetEdit(la, mask, "mean", source=base.means[la], group=group.repeat(len(sets))))
        elif iv.op == "add":
            out.append(RowSetEdit(la, mask, "add", source=iv.vectors[la]))  # type: ignore[index]
        else:
            out.append(RowSetEdit(la, mask, iv.op, factor=iv.factor))
    return out


def _shift(b: Behaviour, hidden: torch.Tensor, sets: list[tuple[Head, ...]]) -> torch.Tensor:
    """``hidden [len(sets) * B, S, d]`` with each row's residual addition (:class:`ResidualAdd`)."""
    iv = b.intervention
    if not isinstance(iv, ResidualAdd):
        return hidden
    B = b.n_prompts
    hidden = hidden.clone()
    rows = torch.arange(B)
    for i, s in enumerate(sets):
        vec = iv.vector(s).to(device=hidden.device, dtype=hidden.dtype)            # [C, d_model]
        hidden[i * B + rows, iv.position] += vec[iv.group]
    return hidden


@contextlib.contextmanager
def _residual_hook(m: "LoadedModel", b: Behaviour, sets: list[tuple[Head, ...]]) -> Iterator[None]:
    """Full-pass fallback of :class:`ResidualAdd`: a pre-hook on the decoder layer adds each row's vector."""
    iv = b.intervention
    if not isinstance(iv, ResidualAdd):
        yield
        return
    layers = decoder_layers(m)
    if layers is None:
        from ..errors import InputError
        raise InputError("adding to the residual stream needs the model's decoder layers (not found for this model)")

    def hook(_mod: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        h = args[0] if args else kwargs["hidden_states"]
        h = _shift(b, h, sets)
        return ((h,) + tuple(args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": h})

    handle = layers[iv.layer].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _run_chunk(m: "LoadedModel", b: Behaviour, base: _Base, sets: list[tuple[Head, ...]], starts: list[int],
               group: torch.Tensor, suffix: bool) -> torch.Tensor:
    """Logits ``[len(sets), B, keep, V]`` of ``sets`` (sorted by start layer) over every prompt."""
    B = b.n_prompts
    edits = _edits(b, base, sets, m.info.n_heads, group)
    with torch.no_grad(), instrumented(m, edits=edits):
        if suffix:
            entries = []
            for la in sorted(set(starts)):
                idx = [i for i, s in enumerate(starts) if s == la]
                h = base.hidden[la].repeat(len(idx), 1, 1)
                entries.append((la, _shift(b, h, [sets[i] for i in idx])))
            with _unembed_last(m, b.keep):
                logits = run_stacked(m, entries, b.ids[:1].to(m.device), last_only=b.keep == 1)
        else:
            with _residual_hook(m, b, sets):
                logits = _logits(m, b.ids.repeat(len(sets), 1), b.keep)
    return logits[:, -b.keep:].float().reshape(len(sets), B, b.keep, -1)


def measure(m: "LoadedModel", b: Behaviour, sets: Sequence[Sequence[Head]], *, batch_size: int = 8,
            max_rows_per_pass: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(clean [U], values [len(sets), U])``: the behaviour's metric per unit, clean and under the intervention on
    each head set (an empty set: the clean values). ``batch_size`` bounds the clean pass; the set passes take as
    many rows as a memory budget allows (``max_rows_per_pass`` overrides it)."""
    canon = [tuple(sorted((int(a), int(h)) for a, h in s)) for s in sets]
    iv = b.intervention
    suffix = supports_suffix(m)
    todo = sorted((i for i, s in enumerate(canon) if s), key=lambda i: iv.start_layer(canon[i]))
    starts = {iv.start_layer(canon[i]) for i in todo}
    mean_layers = {la for i in todo for la, _ in canon[i]} if isinstance(iv, HeadOp) and iv.op == "mean" else set()
    base = _base_run(m, b, starts, mean_layers, max(1, int(batch_size)), suffix)
    clean = base.clean[0].detach().cpu().double().numpy()
    out = np.repeat(clean[None], len(canon), axis=0)
    group, _ = _groups(b)
    B, S = b.ids.shape
    cap = max_rows_per_pass or max_rows(m, S, last_only=b.keep == 1)
    per_pass = max(1, cap // B)
    for c0 in range(0, len(todo), per_pass):
        idx = todo[c0:c0 + per_pass]
        chunk = [canon[i] for i in idx]
        logits = _run_chunk(m, b, base, chunk, [iv.start_layer(s) for s in chunk], group, suffix)
        vals = b.score(logits).detach().cpu().double().numpy()
        out[idx] = vals
    return clean, out
