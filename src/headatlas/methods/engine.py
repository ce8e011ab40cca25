"""The shared engine of the causal methods: a cached base run, then many edited runs, one edit per batch row.

A run that edits heads of layer ``l`` (and later) leaves layers ``0..l-1`` exactly as in the base run, so
it starts from the base run's residual stream at layer ``l`` (:func:`headatlas.models.suffix.run_from_layer`)
and, for a last-position metric, unembeds only the last position. Rows are chunked to a batch size chosen
from available memory. Models that the suffix runner does not support fall back to full forward passes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..instrument import Edit, Taps, instrumented
from ..models.loading import LoadedModel
from ..models.suffix import capture_layer_inputs, run_from_layer, supports_suffix
from .metrics import Metric

Progress = Callable[[int, int], None]   # (done, total)
MakeEdits = Callable[[int, int], Sequence[Edit]]   # (start, stop) of the row chunk -> edits on rows 0..stop-start-1

CPU_BUDGET_BYTES = 1 << 30   # on CPU the work is compute-bound: a modest batch is as fast as a huge one
MAX_ROWS = 512


@dataclass
class BaseRun:
    """A run whose residual stream and head outputs later runs reuse.

    ``ids [B, S]``; ``hidden[l]`` the residual stream at the input of layer ``l`` ``[B, S, d_model]``
    (None when the model falls back to full passes); ``z[l]`` head outputs ``[B, S, H, d_head]`` (when
    asked for); ``metric [B]``.
    """

    ids: torch.Tensor
    hidden: list[torch.Tensor | None] | None
    z: list[torch.Tensor] | None
    metric: torch.Tensor


def available_memory(device: torch.device) -> int:
    """Bytes free on ``device`` (CUDA: free device memory; CPU: available RAM)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def max_rows(m: LoadedModel, seq: int, *, last_only: bool = True, budget_bytes: int | None = None) -> int:
    """Rows per edited pass that fit a memory budget (a simple estimate of one row's live activations).

    Budget: half the free device memory on a GPU; on CPU the smaller of a quarter of the available RAM
    and ``CPU_BUDGET_BYTES``."""
    i = m.info
    if budget_bytes is None:
        free = available_memory(m.device)
        budget_bytes = free // 2 if m.device.type == "cuda" else min(free // 4, CPU_BUDGET_BYTES)
    width = torch.finfo(m.dtype).bits // 8 if m.dtype.is_floating_point else 4
    per_row = width * (seq * 24 * i.d_model + 2 * i.n_heads * seq * seq + (1 if last_only else seq) * i.vocab_size * 2)
    return int(max(1, min(MAX_ROWS, budget_bytes // max(per_row, 1))))


def logits_of(m: LoadedModel, ids: torch.Tensor, last_only: bool) -> torch.Tensor:
    """Plain forward (under any active session): ``[B, 1 or S, V]``."""
    if last_only and supports_suffix(m):
        return m.model(input_ids=ids, use_cache=False, logits_to_keep=1).logits
    out = m.model(input_ids=ids, use_cache=False).logits
    return out[:, -1:] if last_only else out


def base_run(m: LoadedModel, ids: torch.Tensor, metric: Metric, *, keep_hidden: bool = True,
             keep_z: bool = False, edits: Sequence[Edit] = ()) -> BaseRun:
    """One forward pass over ``ids`` keeping the residual stream per layer (for suffix runs) and/or z."""
    hidden = None
    with torch.no_grad(), instrumented(m, edits=edits, taps=Taps(z=keep_z)) as rec:
        if keep_hidden and supports_suffix(m):
            with capture_layer_inputs(m) as store:
                logits = logits_of(m, ids, metric.last_only)
            hidden = list(store)
        else:
            logits = logits_of(m, ids, metric.last_only)
        z = [rec.z(l) for l in range(m.info.n_layers)] if keep_z else None
    return BaseRun(ids=ids, hidden=hidden, z=z, metric=metric(logits))


def run_rows(m: LoadedModel, base: BaseRun, start_layer: int, base_rows: torch.Tensor, make_edits: MakeEdits,
             metric: Metric, *, batch_size: int | None = None, progress: Progress | None = None,
             done: int = 0, total: int = 0) -> torch.Tensor:
    """Metric ``[N]`` of N edited runs; row ``i`` runs prompt ``base_rows[i]`` with the edits that
    ``make_edits`` gives its chunk. Edits may only touch layers ``>= start_layer``."""
    n = int(base_rows.numel())
    seq = base.ids.shape[1]
    chunk = batch_size or max_rows(m, seq, last_only=metric.last_only)
    out = torch.empty(n, dtype=torch.float32, device=m.device)
    suffix = base.hidden is not None and base.hidden[start_layer] is not None
    for s in range(0, n, chunk):
        rows = base_rows[s:s + chunk].to(m.device)
        ids = base.ids[rows]
        with torch.no_grad(), instrumented(m, edits=make_edits(s, s + rows.numel())):
            if suffix:
                logits = run_from_layer(m, base.hidden[start_layer][rows], start_layer, ids, last_only=metric.last_only)
            else:
                logits = logits_of(m, ids, metric.last_only)
        out[s:s + rows.numel()] = metric(logits, rows)
        if progress is not None:
            progress(done + s + rows.numel(), total or n)
    return out
