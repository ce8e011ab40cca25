"""Writes to head outputs ``z`` (the input of the attention output projection).

An edit acts on one layer's ``z`` of shape ``[batch, seq, n_heads, d_head]`` during a forward
pass. Rows are batch rows; positions are absolute token positions (so that edits stay aligned
during cached generation, where a call sees only the newest position).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from ..checks import check_int
from ..errors import InputError, InputTypeError

if TYPE_CHECKING:
    from .session import LayerCall

Op = Literal["zero", "set", "scale", "add", "patch"]
Index = int | Sequence[int] | torch.Tensor | None


@runtime_checkable
class Edit(Protocol):
    """Anything with a ``layer`` and ``apply(z, call) -> z`` is an edit."""

    layer: int

    def apply(self, z: torch.Tensor, call: "LayerCall") -> torch.Tensor: ...


def check_index_list(idx: Index, what: str) -> list[int] | None:
    """``None``, an int, a sequence of ints or an integer tensor -> a list of non-negative ints (None stays None)."""
    if idx is None:
        return None
    if isinstance(idx, torch.Tensor):
        if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
            raise InputTypeError(f"{what} must be integers, got a {idx.dtype} tensor")
        items = [int(v) for v in idx.reshape(-1).tolist()]
    elif isinstance(idx, np.ndarray):
        if idx.dtype.kind not in "iu":
            raise InputTypeError(f"{what} must be integers, got an array of dtype {idx.dtype}")
        items = [int(v) for v in idx.reshape(-1).tolist()]
    elif isinstance(idx, (str, bytes)) or not isinstance(idx, (numbers.Integral, Sequence, range)):
        raise InputTypeError(f"{what} must be an int or a list of ints, got {type(idx).__name__} {idx!r:.40}")
    else:
        items = [check_int(v, what) for v in ([idx] if isinstance(idx, numbers.Integral) else idx)]
    negative = [v for v in items if v < 0]
    if negative:
        raise InputError(f"{what} must be >= 0 (absolute indices), got {negative}")
    return items


def check_finite_value(value: Any, what: str) -> torch.Tensor | float:
    """A real number or a tensor of finite values (NaN or infinity would make every logit NaN)."""
    if isinstance(value, torch.Tensor):
        if value.is_complex() or value.dtype == torch.bool:
            raise InputTypeError(f"{what} must be a real tensor, got dtype {value.dtype}")
        if value.numel() and not bool(torch.isfinite(value).all()):
            raise InputError(f"{what} contains NaN or infinite values; pass finite numbers")
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, (str, bytes)):
            try:
                as_tensor = torch.as_tensor(np.asarray(value, dtype=np.float64))
            except (TypeError, ValueError):
                as_tensor = None
            if as_tensor is not None:
                return check_finite_value(as_tensor, what)
        raise InputTypeError(f"{what} must be a number or a tensor, got {type(value).__name__} {value!r:.40}")
    if not math.isfinite(float(value)):
        raise InputError(f"{what} is {value}; pass a finite number")
    return float(value)


def _as_index(idx: Index, size: int, what: str, device: torch.device) -> torch.Tensor:
    if idx is None:
        return torch.arange(size, device=device)
    t = torch.as_tensor(idx, dtype=torch.long, device=device).reshape(-1)
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= size):
        raise InputError(f"{what} index out of range: got {t.tolist()}, valid 0..{size - 1}")
    return t


@dataclass(frozen=True, eq=False)
class HeadEdit:
    """One write to the output of ``heads`` in ``layer``.

    ops:
      - ``zero``: z <- 0
      - ``set``: z <- value (``[d_head]``, ``[n_sel_heads, d_head]``; e.g. a mean for mean ablation)
      - ``scale``: z <- value * z (``value`` a float)
      - ``add``: z <- z + value (steering; shapes as for ``set``)
      - ``patch``: z <- source[row, pos, head] where ``source`` is a captured ``[B_src, S_src, H, d_head]``
        (row ``r`` reads source row ``r``, or row 0 when ``B_src == 1``; or ``source_rows``)
    ``rows`` (batch rows) and ``positions`` (absolute positions) default to all.
    """

    layer: int
    heads: Index = None
    op: Op = "zero"
    value: torch.Tensor | float | None = None
    source: torch.Tensor | None = None
    rows: Index = None
    positions: Index = None
    source_rows: Index = None

    def __post_init__(self) -> None:
        if self.op not in ("zero", "set", "scale", "add", "patch"):
            raise InputError(f"unknown edit op {self.op!r}; use zero, set, scale, add or patch")
        layer = check_int(self.layer, "edit layer")
        if layer < 0:
            raise InputError(f"edit layer must be >= 0, got {layer}")
        for name in ("heads", "rows", "positions", "source_rows"):
            check_index_list(getattr(self, name), f"edit {name}")
        if self.op in ("set", "add", "scale") and self.value is None:
            raise InputError(f"edit op {self.op!r} needs a value")
        if self.op == "scale":
            if isinstance(self.value, torch.Tensor) and self.value.numel() != 1:
                raise InputError(f"scale needs one factor, got a tensor of shape {tuple(self.value.shape)}")
            factor = self.value.reshape(()) if isinstance(self.value, torch.Tensor) else self.value
            object.__setattr__(self, "value", float(check_finite_value(factor, "scale factor")))
        elif self.op in ("set", "add"):
            v = check_finite_value(self.value, f"{self.op} value")
            if isinstance(v, torch.Tensor) and v.dim() > 2:
                raise InputError(f"{self.op} value must be [d_head] or [n_heads_selected, d_head], got shape {tuple(v.shape)}")
            object.__setattr__(self, "value", v)
        elif self.op == "patch":
            if not isinstance(self.source, torch.Tensor):
                raise InputTypeError("edit op 'patch' needs a source tensor [batch, seq, heads, d_head], got "
                                     f"{type(self.source).__name__}")
            if self.source.dim() != 4:
                raise InputError(f"patch source must be [batch, seq, heads, d_head], got shape {tuple(self.source.shape)}")
        elif self.value is not None or self.source is not None:
            raise InputError("edit op 'zero' takes no value or source")

    def check(self, n_layers: int, n_heads: int, d_head: int) -> None:
        """Check this edit against the model's sizes before any forward pass (InputError naming the fix)."""
        if not int(self.layer) < n_layers:
            raise InputError(f"edit on layer {self.layer}, but the model has {n_layers} layers (0..{n_layers - 1})")
        heads = check_index_list(self.heads, "edit heads")
        bad = [h for h in heads or [] if h >= n_heads]
        if bad:
            raise InputError(f"edit head index out of range: got {bad}, the model has {n_heads} heads per layer (0..{n_heads - 1})")
        n_sel = n_heads if heads is None else len(heads)
        if self.op in ("set", "add") and isinstance(self.value, torch.Tensor):
            shape = tuple(self.value.shape)
            fits = (shape in ((), (1,), (d_head,), (1, d_head), (n_sel, d_head)))
            if not fits:
                raise InputError(f"{self.op} value of shape {shape} does not fit: use [d_head] = [{d_head}] or "
                                 f"[n_heads_selected, d_head] = [{n_sel}, {d_head}]")
        if self.op == "patch":
            src = self.source
            if src.shape[2] != n_heads or src.shape[3] != d_head:  # type: ignore[union-attr]
                raise InputError(f"patch source must be [batch, seq, {n_heads}, {d_head}], got {tuple(src.shape)}")  # type: ignore[union-attr]

    def max_position(self) -> int | None:
        """The largest absolute position this edit asks for (None: all positions)."""
        pos = check_index_list(self.positions, "edit positions")
        return max(pos) if pos else None

    def apply(self, z: torch.Tensor, call: "LayerCall") -> torch.Tensor:
        B, S, H, D = z.shape
        dev = z.device
        rows = _as_index(self.rows, B, "batch row", dev)
        heads = _as_index(self.heads, H, "head", dev)
        if self.positions is None:
            local = torch.arange(S, device=dev)
        else:
            wanted = torch.as_tensor(self.positions, dtype=torch.long, device=dev).reshape(-1)
            local = call.local_indices(wanted)
            if local.numel() == 0:
                return z
        r, p, h = rows[:, None, None], local[None, :, None], heads[None, None, :]
        if self.op == "zero":
            z[r, p, h] = 0.0
        elif self.op == "scale":
            z[r, p, h] = z[r, p, h] * float(self.value)  # type: ignore[arg-type]
        elif self.op in ("set", "add"):
            v = torch.as_tensor(self.value, dtype=z.dtype, device=dev)
            if v.dim() == 2 and v.shape[0] != heads.numel():
                raise InputError(f"value of shape {tuple(v.shape)} does not match {heads.numel()} selected heads")
            z[r, p, h] = v.expand(rows.numel(), local.numel(), heads.numel(), D) + (z[r, p, h] if self.op == "add" else 0)
        else:  # patch
            src = self.source.to(device=dev, dtype=z.dtype)  # type: ignore[union-attr]
            if src.dim() != 4 or src.shape[2] != H or src.shape[3] != D:
                raise InputError(f"patch source must be [batch, seq, {H}, {D}], got {tuple(src.shape)}")
            if self.source_rows is not None:
                srows = torch.as_tensor(self.source_rows, dtype=torch.long, device=dev).reshape(-1)
            elif src.shape[0] == 1:
                srows = torch.zeros_like(rows)
            else:
                srows = rows
            spos = call.absolute_positions[local]
            if int(spos.max()) >= src.shape[1]:
                raise InputError(f"patch source has {src.shape[1]} positions; the run reaches position {int(spos.max())}")
            z[r, p, h] = src[srows[:, None, None], spos[None, :, None], h]
        return z


@dataclass(frozen=True, eq=False)
class RowHeadPatch:
    """Vectorised many-edit patch: for each ``i``, row ``rows[i]`` gets head ``heads[i]`` replaced
    by ``source[source_rows[i], :, heads[i]]`` at all positions (or at ``positions``).

    This is the one-intervention-per-batch-row primitive behind batched activation patching.
    """

    layer: int
    rows: torch.Tensor          # [N]
    heads: torch.Tensor         # [N]
    source: torch.Tensor        # [B_src, S, H, D]
    source_rows: torch.Tensor   # [N]
    positions: Index = None

    def apply(self, z: torch.Tensor, call: "LayerCall") -> torch.Tensor:
        dev = z.device
        rows, heads, srows = (t.to(dev) for t in (self.rows, self.heads, self.source_rows))
        src = self.source.to(device=dev, dtype=z.dtype)
        if self.positions is None:
            spos = call.absolute_positions
            z[rows, :, heads] = src[srows[:, None], spos[None, :], heads[:, None]]
        else:
            local = call.local_indices(torch.as_tensor(self.positions, dtype=torch.long, device=dev).reshape(-1))
            spos = call.absolute_positions[local]
            z[rows[:, None], local[None, :], heads[:, None]] = src[srows[:, None], spos[None, :], heads[:, None]]
        return z


def zero(layer: int, heads: Index = None, *, rows: Index = None, positions: Index = None) -> HeadEdit:
    return HeadEdit(layer, heads, "zero", rows=rows, positions=positions)


def set_value(layer: int, heads: Index, value: torch.Tensor, *, rows: Index = None, positions: Index = None) -> HeadEdit:
    return HeadEdit(layer, heads, "set", value=value, rows=rows, positions=positions)


def scale(layer: int, heads: Index, factor: float, *, rows: Index = None, positions: Index = None) -> HeadEdit:
    return HeadEdit(layer, heads, "scale", value=factor, rows=rows, positions=positions)


def add(layer: int, heads: Index, vector: torch.Tensor, *, rows: Index = None, positions: Index = None) -> HeadEdit:
    return HeadEdit(layer, heads, "add", value=vector, rows=rows, positions=positions)


def patch(layer: int, heads: Index, source: torch.Tensor, *, rows: Index = None, positions: Index = None,
          source_rows: Index = None) -> HeadEdit:
    return HeadEdit(layer, heads, "patch", source=source, rows=rows, positions=positions, source_rows=source_rows)
