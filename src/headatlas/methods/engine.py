"""The shared engine of the causal methods: a cached base run, then many edited runs, one edit per batch row.

A run that edits heads of layer ``l`` (and later) leaves layers ``0..l-1`` exactly as in the base run, so
it starts from the base run's residual stream at layer ``l`` (:func:`headatlas.models.suffix.run_from_layer`)
and, for a last-position metric, unembeds only the last position. Rows are chunked to a batch size chosen
from available memory. Models that the suffix runner does not support fall back to full forward passes.

:func:`run_stacked_rows` runs rows that start at different layers in one pass (rows join at their start
layer: one large batch per layer instead of one small batch per start layer), and, where every row of
the pass leaves the first ``p`` positions as in the base run (their edits change nothing before position
``p``), runs only positions ``p..S-1`` with the base run's keys and values of the first ``p`` positions
in every layer (:func:`prefix_cache`). :func:`stack_plan` groups rows into such passes.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..instrument import Edit, Taps, instrumented
from ..models.loading import LoadedModel
from ..models.suffix import cache_kwarg, capture_layer_inputs, run_from_layer, run_stacked, supports_suffix
from .metrics import Metric

Progress = Callable[[int, int], None]   # (done, total)
MakeEdits = Callable[[int, int], Sequence[Edit]]   # (start, stop) of the row chunk -> edits on rows 0..stop-start-1
# (layer, indices of the rows starting there, which are also their batch rows at that layer) -> edits
MakeLayerEdits = Callable[[int, torch.Tensor], Sequence[Edit]]

CPU_BUDGET_BYTES = 1 << 30   # on CPU the work is compute-bound: a modest batch is as fast as a huge one
MAX_ROWS = 512


@dataclass
class BaseRun:
    """A run whose residual stream and head outputs later runs reuse.

    ``ids [B, S]``; ``hidden[l]`` the residual stream at the input of layer ``l`` ``[B, S, d_model]``
    (None when the model falls back to full passes); ``z[l]`` head outputs ``[B, S, H, d_head]`` (when
    asked for); ``metric [B]``; ``k[l]``/``v[l]`` the keys and values layer ``l``'s attention used
    ``[B, n_kv_heads, S, d_head_qk / d_head]`` (after rotary; when asked for), in float32. Per-layer lists
    hold None for a hybrid's layers without heads.
    """

    ids: torch.Tensor
    hidden: list[torch.Tensor | None] | None
    z: list[torch.Tensor | None] | None
    metric: torch.Tensor
    k: list[torch.Tensor | None] | None = None
    v: list[torch.Tensor | None] | None = None


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
    """Rows per edited pass that fit a memory budget (a simple estimate of one row's live activations,
    and of its keys and values in every layer, which a stacked pass with a reused prefix keeps).

    Budget: half the free device memory on a GPU; on CPU the smaller of a quarter of the available RAM
    and ``CPU_BUDGET_BYTES``."""
    i = m.info
    if budget_bytes is None:
        free = available_memory(m.device)
        budget_bytes = free // 2 if m.device.type == "cuda" else min(free // 4, CPU_BUDGET_BYTES)
    width = torch.finfo(m.dtype).bits // 8 if m.dtype.is_floating_point else 4
    kv = len(i.attention_layers) * i.n_kv_heads * (i.d_head_qk + i.d_head) * seq   # cached keys and values, all layers
    per_row = width * (seq * 24 * i.d_model + 2 * i.n_heads * seq * seq + (1 if last_only else seq) * i.vocab_size * 2 + kv)
    return int(max(1, min(MAX_ROWS, budget_bytes // max(per_row, 1))))


def logits_of(m: LoadedModel, ids: torch.Tensor, last_only: bool) -> torch.Tensor:
    """Plain forward (under any active session): ``[B, 1 or S, V]``."""
    if last_only and supports_suffix(m):
        return m.model(input_ids=ids, use_cache=False, logits_to_keep=1).logits
    out = m.model(input_ids=ids, use_cache=False).logits
    return out[:, -1:] if last_only else out


def base_run(m: LoadedModel, ids: torch.Tensor, metric: Metric, *, keep_hidden: bool = True,
             keep_z: bool = False, keep_kv: bool = False, edits: Sequence[Edit] = ()) -> BaseRun:
    """One forward pass over ``ids`` keeping the residual stream per layer (for suffix runs), z and/or
    the keys and values of every layer (for :func:`prefix_cache`)."""
    hidden = None
    with torch.no_grad(), instrumented(m, edits=edits, taps=Taps(z=keep_z, qkv=keep_kv)) as rec:
        if keep_hidden and supports_suffix(m):
            with capture_layer_inputs(m) as store:
                logits = logits_of(m, ids, metric.last_only)
            hidden = list(store)
        else:
            logits = logits_of(m, ids, metric.last_only)
        attn = m.info.attention_layers   # None for a hybrid's layers without heads
        z = [rec.z(l) if l in attn else None for l in range(m.info.n_layers)] if keep_z else None
        k = [rec.k(l) if l in attn else None for l in range(m.info.n_layers)] if keep_kv else None
        v = [rec.v(l) if l in attn else None for l in range(m.info.n_layers)] if keep_kv else None
    return BaseRun(ids=ids, hidden=hidden, z=z, metric=metric(logits), k=k, v=v)


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


def supports_stacked(m: LoadedModel) -> bool:
    """Whether :func:`run_stacked_rows` can run this model (the suffix runner can; the mask and rotary
    set-up of one prompt are shared by all rows, which holds for unpadded decoder-only text models)."""
    return supports_suffix(m)


def prefix_limit(m: LoadedModel) -> int:
    """The longest prefix whose keys and values :func:`prefix_cache` may hand to the model: 0 where the
    model's forward takes no cache or has no suffix runner, or is a hybrid (its other layers' state is not
    keys and values); below the smallest sliding window (a sliding layer's cache then still holds the whole
    prefix, so query positions stay countable); else unbounded."""
    if not supports_suffix(m) or cache_kwarg(m) is None or m.info.is_hybrid:
        return 0
    cfg = m.model.config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    window = getattr(cfg, "sliding_window", None)
    return max(0, int(window) - 1) if window else 1 << 62


def prefix_cache(m: LoadedModel, base: BaseRun, prompts_per_layer: Sequence[torch.Tensor], p: int) -> Any:
    """A fresh transformers ``DynamicCache`` holding, in layer ``l``, the base run's keys and values of
    positions ``0..p-1`` of prompts ``prompts_per_layer[l]`` (one cache row per batch row at layer ``l``;
    an empty index gives one row of prompt 0, for layers no row runs)."""
    from transformers import DynamicCache

    if base.k is None or base.v is None:
        raise ValueError("the base run kept no keys and values (base_run(..., keep_kv=True))")
    cache = DynamicCache(config=m.model.config)
    for layer, rows in enumerate(prompts_per_layer):
        idx = (rows if rows.numel() else torch.zeros(1, dtype=torch.long)).to(base.k[layer].device)
        k = base.k[layer][idx, :, :p].to(m.dtype)
        v = base.v[layer][idx, :, :p].to(m.dtype)
        cache.update(k, v, layer)
    return cache


def stack_plan(layer_of_row: np.ndarray, first_of_row: np.ndarray, cap: int, *, min_rows: int = 64) -> list[tuple[np.ndarray, int]]:
    """Group rows into stacked passes: ``[(indices, p)]``, ``indices`` sorted by layer, ``p`` the positions
    the pass may take from the base run (the smallest ``first_of_row`` of its rows).

    ``layer_of_row [N]``: each row's start layer; ``first_of_row [N]``: the first position its edits
    change. Rows are sorted by first position and cut into consecutive groups of at least ``min_rows``
    rows (rows with a late first change share a pass that skips more positions); a group larger than
    ``cap`` rows is split into passes that each take an even share of every layer's rows.
    """
    n = len(layer_of_row)
    if n == 0:
        return []
    order = np.lexsort((np.arange(n), first_of_row))
    groups: list[np.ndarray] = []
    start = 0
    for i in range(1, n + 1):
        boundary = i == n or first_of_row[order[i]] != first_of_row[order[i - 1]]
        if boundary and (i - start >= min_rows or i == n):
            groups.append(order[start:i])
            start = i
    plan = []
    for g in groups:
        parts = max(1, math.ceil(len(g) / max(cap, 1)))
        per_layer = [g[layer_of_row[g] == layer] for layer in np.unique(layer_of_row[g])]
        while parts < len(g) and sum(math.ceil(len(r) / parts) for r in per_layer) > cap:
            parts += 1
        for c in range(parts):
            idx = np.concatenate([np.array_split(r, parts)[c] for r in per_layer])
            if len(idx):
                plan.append((idx, int(first_of_row[idx].min())))
    return plan


def run_stacked_rows(m: LoadedModel, base: BaseRun, layer_of_row: torch.Tensor, prompt_of_row: torch.Tensor,
                     make_edits: MakeLayerEdits, metric: Metric, *, prefix: int = 0) -> torch.Tensor:
    """Metric ``[N]`` of N edited runs in one stacked pass (:func:`headatlas.models.suffix.run_stacked`).

    Row ``i`` runs prompt ``prompt_of_row[i]`` from layer ``layer_of_row[i]`` (non-decreasing) with the
    edits ``make_edits(layer, rows)`` gives for the rows starting at each layer (``rows`` index both the
    caller's rows and the batch at that layer); edits may only touch that layer and later ones. With
    ``prefix > 0`` (last-position metrics only) the edits must leave positions ``0..prefix-1`` unchanged:
    those come from the base run's keys and values (``base_run(..., keep_kv=True)``)."""
    if base.hidden is None:
        raise ValueError("stacked runs need the base run's residual stream (base_run(..., keep_hidden=True))")
    layer_of_row, prompt_of_row = layer_of_row.cpu(), prompt_of_row.cpu()
    if bool((layer_of_row[1:] < layer_of_row[:-1]).any()):
        raise ValueError("rows must be sorted by start layer")
    S = base.ids.shape[1]
    if not 0 <= prefix < S or (prefix and not metric.last_only):
        raise ValueError(f"prefix {prefix} out of range 0..{S - 1} (and only for last-position metrics)")
    starts, counts = torch.unique_consecutive(layer_of_row, return_counts=True)
    entries, edits = [], []
    offset = 0
    for layer, count in zip(starts.tolist(), counts.tolist()):
        idx = torch.arange(offset, offset + count)
        prompts = prompt_of_row[idx].to(m.device)
        entries.append((layer, base.hidden[layer][prompts, prefix:]))
        edits.extend(make_edits(layer, idx))
        offset += count
    cache = None
    if prefix:
        per_layer = [prompt_of_row[layer_of_row <= layer] for layer in range(m.info.n_layers)]
        cache = prefix_cache(m, base, per_layer, prefix)
    ids = base.ids[:1, prefix:]
    with torch.no_grad(), instrumented(m, edits=edits):
        logits = run_stacked(m, entries, ids, cache=cache, last_only=metric.last_only)
    return metric(logits, prompt_of_row.to(m.device))
