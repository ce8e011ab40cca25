"""Writes to head outputs ``z`` (the input of the attention output projection).

An edit acts on one layer's ``z`` of shape ``[batch, seq, n_heads, d_head]`` during a forward
pass. Rows are batch rows; positions are absolute token positions (so that edits stay aligned
during cached generation, where a call sees only the newest position).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, Sequence, runtime_checkable

import torch

from ..errors import InputError

if TYPE_CHECKING:
    from .session import LayerCall

Op = Literal["zero", "set", "scale", "add", "patch"]
Index = int | Sequence[int] | torch.Tensor | None


@runtime_checkable
class Edit(Protocol):
    """Anything with a ``layer`` and ``apply(z, call) -> z`` is an edit."""

    layer: int

    def apply(self, z: torch.Tensor, call: "LayerCall") -> torch.Tensor: ...


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
        if self.op in ("set", "add", "scale") and self.value is None:
            raise InputError(f"edit op {self.op!r} needs a value")
        if self.op == "patch" and self.source is None:
            raise InputError("edit op 'patch' needs a source tensor [batch, seq, heads, d_head]")

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
    return HeadEdit(layer, heads, "scale", value=float(factor), rows=rows, positions=positions)


def add(layer: int, heads: Index, vector: torch.Tensor, *, rows: Index = None, positions: Index = None) -> HeadEdit:
    return HeadEdit(layer, heads, "add", value=vector, rows=rows, positions=positions)


def patch(layer: int, heads: Index, source: torch.Tensor, *, rows: Index = None, positions: Index = None,
          source_rows: Index = None) -> HeadEdit:
    return HeadEdit(layer, heads, "patch", source=source, rows=rows, positions=positions, source_rows=source_rows)
