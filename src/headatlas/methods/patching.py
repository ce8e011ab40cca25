"""Activation patching of every head: exact (batched, suffix-only runs) or attribution (first order).

Denoising runs the corrupted prompt with one head's output ``z`` taken from the clean run; noising runs
the clean prompt with one head's ``z`` from the corrupted run. Each entry of the map is the metric (by
default logit(answer) - logit(wrong) at the last position, averaged over the prompts) of the run with
that one head patched (at all positions, or at ``positions``).

Exact patching runs, for each layer ``l``, only layers ``l..L-1`` starting from the cached residual
stream of the base run, with one patched head per batch row, and unembeds only the last position.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..instrument import RowHeadPatch
from ..instrument.session import LayerCall
from .engine import Progress, base_run, run_rows
from .inputs import Prompts, as_loaded, check_positions, encode_pair, token_ids
from .metrics import Metric, logit_diff

Method = Literal["exact", "attribution"]
Direction = Literal["denoise", "noise"]


@dataclass
class PatchMap:
    """The result of patching every head.

    ``values``: ``[n_layers, n_heads]`` (or ``[n_layers, n_heads, seq]`` per position): the patched
    metric, or its normalised form (``normalized``). ``clean_metric``/``corrupted_metric``: the batch
    means of the unpatched runs. ``seconds``: wall time of the computation.
    """

    values: np.ndarray
    clean_metric: float
    corrupted_metric: float
    method: str
    direction: str
    normalized: bool
    metric: str
    n_prompts: int
    seq: int
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def top(self, k: int = 10, *, by: Literal["abs", "value"] = "abs") -> list[tuple[int, int, float]]:
        """The ``k`` heads with the largest effect: ``(layer, head, value)``. Per-position maps are summed
        over positions first. Effect = distance from the unpatched base (0 when normalised)."""
        v = self.values.sum(-1) if self.values.ndim == 3 else self.values
        base = 0.0 if self.normalized else (self.corrupted_metric if self.direction == "denoise" else self.clean_metric)
        score = np.abs(v - base) if by == "abs" else v - base
        order = np.argsort(-score, axis=None)[:k]
        return [(int(i // v.shape[1]), int(i % v.shape[1]), float(v.flat[i])) for i in order]


@dataclass(frozen=True, eq=False)
class RowHeadPositionPatch:
    """Row ``rows[i]`` gets head ``heads[i]`` at absolute position ``positions[i]`` from
    ``source[source_rows[i], positions[i], heads[i]]`` (per-position patching, one patch per row)."""

    layer: int
    rows: torch.Tensor
    heads: torch.Tensor
    positions: torch.Tensor
    source: torch.Tensor        # [B_src, S, H, D]
    source_rows: torch.Tensor

    def apply(self, z: torch.Tensor, call: LayerCall) -> torch.Tensor:
        dev = z.device
        rows, heads, pos, srows = (t.to(dev) for t in (self.rows, self.heads, self.positions, self.source_rows))
        local = pos - int(call.absolute_positions[0])
        keep = (local >= 0) & (local < z.shape[1])
        src = self.source.to(device=dev, dtype=z.dtype)
        z[rows[keep], local[keep], heads[keep]] = src[srows[keep], pos[keep], heads[keep]]
        return z


def _resolve_metric(m: Any, metric: Metric | None, answer: Any, wrong: Any, n: int) -> Metric:
    if metric is not None:
        return metric
    if answer is None or wrong is None:
        raise InputError("give answer and wrong (tokens whose logit difference is measured), or a metric")
    return logit_diff(token_ids(m, answer, n, "answer"), token_ids(m, wrong, n, "wrong answer"))


def normalise(values: np.ndarray, clean: float, corrupted: float, direction: Direction) -> np.ndarray:
    """denoise: (v - corrupted) / (clean - corrupted) (1 = the clean behaviour restored);
    noise: (v - clean) / (corrupted - clean) (1 = the clean behaviour destroyed). 0 = no effect."""
    lo, hi = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
    if abs(hi - lo) < 1e-6:
        raise InputError(f"clean and corrupted runs give the same metric ({clean:.4g}); nothing to normalise by")
    return (values - lo) / (hi - lo)


def patching_map(model: Any, clean: Prompts, corrupted: Prompts, answer: Any = None, wrong: Any = None, *,
                 metric: Metric | None = None, method: Method = "exact", direction: Direction = "denoise",
                 positions: Sequence[int] | None = None, per_position: bool = False, normalize: bool = False,
                 batch_size: int | None = None, progress: Progress | None = None) -> PatchMap:
    """Patch every head (see :func:`patch_heads`) and return the map with its baselines."""
    t0 = time.perf_counter()
    m = as_loaded(model)
    if method not in ("exact", "attribution"):
        raise InputError(f"unknown method {method!r}; use 'exact' or 'attribution'")
    if direction not in ("denoise", "noise"):
        raise InputError(f"unknown direction {direction!r}; use 'denoise' or 'noise'")
    clean_ids, corr_ids = encode_pair(m, clean, corrupted)
    B, S = clean_ids.shape
    pos = check_positions(positions, S)
    met = _resolve_metric(m, metric, answer, wrong, B)
    base_ids, src_ids = (corr_ids, clean_ids) if direction == "denoise" else (clean_ids, corr_ids)
    if method == "attribution":
        from .attribution import attribution_deltas

        att = attribution_deltas(m, base_ids, src_ids, met)
        delta = att.delta  # [L, H, S]
        if pos is not None:
            keep = torch.zeros(S, dtype=torch.bool)
            keep[pos] = True
            delta = delta * keep
        base_mean, src_mean = float(att.base_metric.mean()), float(att.source_metric.mean())
        vals = (base_mean + (delta if per_position else delta.sum(-1))).numpy()
    else:
        base = base_run(m, base_ids, met, keep_hidden=True)
        src = base_run(m, src_ids, met, keep_hidden=False, keep_z=True)
        base_mean, src_mean = float(base.metric.mean()), float(src.metric.mean())
        vals = _exact(m, base, src.z, met, pos, per_position, batch_size, progress)
    clean_m, corr_m = (src_mean, base_mean) if direction == "denoise" else (base_mean, src_mean)
    if normalize:
        vals = normalise(vals, clean_m, corr_m, direction)
    return PatchMap(values=vals.astype(np.float64), clean_metric=clean_m, corrupted_metric=corr_m, method=method,
                    direction=direction, normalized=normalize, metric=met.name, n_prompts=B, seq=S,
                    seconds=time.perf_counter() - t0)


def _exact(m: Any, base: Any, src_z: list[torch.Tensor], met: Metric, pos: list[int] | None, per_position: bool,
           batch_size: int | None, progress: Progress | None) -> np.ndarray:
    L, H = m.info.n_layers, m.info.n_heads
    B, S = base.ids.shape
    dev = m.device
    if per_position:
        hh, pp, bb = torch.meshgrid(torch.arange(H), torch.arange(S), torch.arange(B), indexing="ij")
        hh, pp, bb = hh.reshape(-1), pp.reshape(-1), bb.reshape(-1)
        if pos is not None:
            sel = torch.isin(pp, torch.tensor(pos))
            hh, pp, bb = hh[sel], pp[sel], bb[sel]
    else:
        hh, bb = torch.arange(H).repeat_interleave(B), torch.arange(B).repeat(H)
        pp = None
    n = hh.numel()
    out = torch.full((L, H, S) if per_position else (L, H), float("nan"))
    for layer in range(L):
        def make(s: int, e: int, layer: int = layer):
            rows = torch.arange(e - s, device=dev)
            if per_position:
                return [RowHeadPositionPatch(layer, rows, hh[s:e], pp[s:e], src_z[layer], bb[s:e])]
            return [RowHeadPatch(layer=layer, rows=rows, heads=hh[s:e].to(dev), source=src_z[layer],
                                 source_rows=bb[s:e].to(dev), positions=pos)]
        vals = run_rows(m, base, layer, bb, make, met, batch_size=batch_size, progress=progress,
                        done=layer * n, total=L * n).cpu()
        if per_position:
            sums = torch.zeros(H, S).index_put_((hh, pp), vals, accumulate=True)
            counts = torch.zeros(H, S).index_put_((hh, pp), torch.ones_like(vals), accumulate=True)
            out[layer] = torch.where(counts > 0, sums / counts.clamp(min=1), float("nan"))
        else:
            out[layer] = vals.reshape(H, B).mean(1)
    return out.numpy()


def patch_heads(model: Any, clean: Prompts, corrupted: Prompts, answer: Any = None, wrong: Any = None, *,
                method: Method = "exact", direction: Direction = "denoise", positions: Sequence[int] | None = None,
                normalize: bool = False, metric: Metric | None = None, batch_size: int | None = None,
                progress: Progress | None = None) -> np.ndarray:
    """Patch each head in turn; ``[n_layers, n_heads]``.

    ``model``: a LoadedModel or anything ``headatlas.load`` accepts. ``clean``/``corrupted``: a prompt or
    equal-length lists of prompts (or ``[B, S]`` token ids); they must tokenize to the same length.
    ``answer``/``wrong``: single tokens (one for all prompts, or one per prompt), or pass ``metric``.
    Without ``normalize`` entry ``[l, h]`` is the batch-mean metric of the run with head ``(l, h)``
    patched (denoise: the corrupted run with the head's clean ``z``; noise: the clean run with its
    corrupted ``z``) at all positions, or at ``positions``. With ``normalize``: denoise
    ``(patched - corrupted) / (clean - corrupted)``, noise ``(patched - clean) / (corrupted - clean)``.
    ``method="attribution"``: the first-order estimate from one forward per prompt set and one backward.

    >>> patch_heads("smollm2-135m", "When Mary and John went to the store, John gave a drink to",
    ...             "When Anna and Paul went to the store, Tom gave a drink to", " Mary", " John")  # doctest: +SKIP
    """
    return patching_map(model, clean, corrupted, answer, wrong, metric=metric, method=method, direction=direction,
                        positions=positions, normalize=normalize, batch_size=batch_size, progress=progress).values


def patch_heads_by_position(model: Any, clean: Prompts, corrupted: Prompts, answer: Any = None, wrong: Any = None, *,
                            method: Method = "exact", direction: Direction = "denoise", normalize: bool = False,
                            metric: Metric | None = None, batch_size: int | None = None,
                            progress: Progress | None = None) -> np.ndarray:
    """As :func:`patch_heads`, one head at one position at a time: ``[n_layers, n_heads, seq]``."""
    return patching_map(model, clean, corrupted, answer, wrong, metric=metric, method=method, direction=direction,
                        per_position=True, normalize=normalize, batch_size=batch_size, progress=progress).values
