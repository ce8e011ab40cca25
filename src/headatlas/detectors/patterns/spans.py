"""Small pure helpers shared by the text/task detectors: attention mass from chosen queries onto
chosen key sets ("spans"), paired null statistics, and a per-layer reducer that applies them.

A *span set* is a flat list of ``(item, row, query, key)`` quadruples: item ``i`` collects the
attention that query position ``query`` of batch row ``row`` pays to each listed ``key``. Summing
per item gives the mass ``[n_items, n_heads]`` a head puts on that item's span (e.g. the pieces
of the rarest word, the earlier pieces of a multi-token word, the option letters).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

if TYPE_CHECKING:
    from ..base import ScanConfig
    from ...models import LoadedModel


@dataclass(frozen=True)
class SpanSet:
    """``n_items`` spans given as flat index tensors of equal length ``[N]``."""

    item: torch.Tensor
    row: torch.Tensor
    query: torch.Tensor
    key: torch.Tensor
    n_items: int

    @staticmethod
    def build(quads: list[tuple[int, int, int, int]], n_items: int) -> "SpanSet":
        if quads:
            t = torch.tensor(quads, dtype=torch.long)
            return SpanSet(t[:, 0], t[:, 1], t[:, 2], t[:, 3], n_items)
        empty = torch.zeros(0, dtype=torch.long)
        return SpanSet(empty, empty, empty, empty, n_items)

    def __len__(self) -> int:
        return int(self.item.numel())


def span_mass(pattern: torch.Tensor, spans: SpanSet) -> torch.Tensor:
    """Attention mass of each item's span. ``pattern [B, H, Q, K]`` -> ``[n_items, H]`` (float32).

    Never mutates ``pattern``. Raises ValueError when an index is outside the pattern.
    """
    if pattern.dim() != 4:
        raise ValueError(f"pattern must be [batch, heads, q, k], got shape {tuple(pattern.shape)}")
    B, H, Q, K = pattern.shape
    out = torch.zeros(spans.n_items, H, dtype=torch.float32, device=pattern.device)
    if len(spans) == 0:
        return out
    for name, idx, size in (("row", spans.row, B), ("query", spans.query, Q), ("key", spans.key, K)):
        if int(idx.max()) >= size or int(idx.min()) < 0:
            raise ValueError(f"span {name} index {int(idx.max())} outside pattern of shape {tuple(pattern.shape)}")
    dev = pattern.device
    vals = pattern[spans.row.to(dev), :, spans.query.to(dev), spans.key.to(dev)].float()  # [N, H]
    return out.index_add_(0, spans.item.to(dev), vals)


def paired_stats(target: np.ndarray, control: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-head paired comparison over items.

    ``target``/``control``: ``[n_items, ...]`` per-item values of the score and of its matched null.
    Returns ``(score, null_mean, null_std)`` each ``[...]``: the means over items, and the standard
    error of the paired difference (so ``(score - null_mean) / null_std`` is a paired z statistic; NaN with one item).
    """
    if target.shape != control.shape:
        raise ValueError(f"target {target.shape} and control {control.shape} must have the same shape")
    n = target.shape[0]
    if n == 0:
        raise ValueError("no items to score")
    diff = target - control
    se = diff.std(axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.full(diff.shape[1:], np.nan)
    return target.mean(axis=0), control.mean(axis=0), se


def mass_reducer(span_sets: dict[str, SpanSet]) -> Callable[[int, torch.Tensor, object], dict[str, torch.Tensor]]:
    """A ``Taps(reducer=...)`` function returning ``{name: span_mass(pattern, spans)}`` per layer call
    (each ``[n_items, H]``, on CPU): only these small arrays are kept, never the pattern."""

    def reduce(layer: int, pattern: torch.Tensor, call: object) -> dict[str, torch.Tensor]:
        return {name: span_mass(pattern, s).cpu() for name, s in span_sets.items()}

    return reduce


def select_rows(spans: SpanSet, start: int, stop: int) -> SpanSet:
    """Quadruples whose row is in ``[start, stop)``, rows renumbered from 0 (items keep their ids)."""
    keep = (spans.row >= start) & (spans.row < stop)
    return SpanSet(spans.item[keep], spans.row[keep] - start, spans.query[keep], spans.key[keep], spans.n_items)


def collect_masses(model: "LoadedModel", ids: torch.Tensor, span_sets: dict[str, SpanSet], config: "ScanConfig",
                   *, done: int = 0, total: int | None = None) -> dict[str, np.ndarray]:
    """Run ``ids [B, S]`` through ``model`` in sub-batches of ``config.batch_size`` with a pattern
    reducer; returns ``{name: [n_items, n_layers, n_heads]}`` masses (float64). ``done``/``total``
    feed ``config.tick`` (progress in rows)."""
    from ...instrument import Taps, instrumented

    L = model.info.n_layers
    out = {name: np.zeros((s.n_items, L, model.info.n_heads)) for name, s in span_sets.items()}
    B = ids.shape[0]
    step = max(1, int(config.batch_size))
    total = B if total is None else total
    for start in range(0, B, step):
        stop = min(B, start + step)
        sub = {name: select_rows(s, start, stop) for name, s in span_sets.items()}
        with torch.no_grad(), instrumented(model, taps=Taps(reducer=mass_reducer(sub))) as rec:
            model.model(ids[start:stop].to(model.device), logits_to_keep=1)
        for layer in model.info.attention_layers:
            for name, m in rec.reduced[layer][0].items():
                out[name][:, layer, :] += m.double().numpy()
        config.tick(done + stop, total)
    for a in out.values():   # a hybrid's layers without heads
        a[:, list(model.info.other_layers)] = np.nan
    return out
