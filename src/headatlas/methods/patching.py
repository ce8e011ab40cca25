"""Activation patching of every head: exact (batched, suffix-only runs) or attribution (first order).

Denoising runs the corrupted prompt with one head's output ``z`` taken from the clean run; noising runs
the clean prompt with one head's ``z`` from the corrupted run. Each entry of the map is the metric (by
default logit(answer) - logit(wrong) at the last position, averaged over the prompts) of the run with
that one head patched (at all positions, or at ``positions``).

Exact patching runs, for each layer ``l``, only layers ``l..L-1`` starting from the cached residual
stream of the base run, with one patched head per batch row, and unembeds only the last position. The
runs of all layers share stacked passes (a row joins the batch at its layer), a patch whose source equals
the base at every patched position is not run (its value is the base metric: effect exactly 0), and
positions before the first one any patch of a pass changes are taken from the base run's keys and values
instead of being recomputed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import torch

from ..checks import check_bool, check_callable, check_choice, check_count
from ..errors import InputError, InputTypeError
from ..instrument import RowHeadPatch
from ..instrument.session import LayerCall
from . import engine
from .engine import BaseRun, Progress, base_run, run_rows
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
        if not isinstance(metric, Metric):
            raise InputTypeError(f"metric must be a headatlas Metric (logit_diff, logprob, user_metric(fn)), got "
                                 f"{type(metric).__name__}")
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
    check_choice(method, "method", ("exact", "attribution"))
    check_choice(direction, "direction", ("denoise", "noise"))
    per_position, normalize = check_bool(per_position, "per_position"), check_bool(normalize, "normalize")
    batch_size = None if batch_size is None else check_count(batch_size, "batch_size")
    check_callable(progress, "progress")
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
        base = base_run(m, base_ids, met, keep_hidden=True, keep_z=True, keep_kv=engine.prefix_limit(m) > 0)
        src = base_run(m, src_ids, met, keep_hidden=False, keep_z=True)
        base_mean, src_mean = float(base.metric.mean()), float(src.metric.mean())
        vals = _exact(m, base, src.z, met, pos, per_position, batch_size, progress)
    clean_m, corr_m = (src_mean, base_mean) if direction == "denoise" else (base_mean, src_mean)
    if normalize:
        vals = normalise(vals, clean_m, corr_m, direction)
    return PatchMap(values=vals.astype(np.float64), clean_metric=clean_m, corrupted_metric=corr_m, method=method,
                    direction=direction, normalized=normalize, metric=met.name, n_prompts=B, seq=S,
                    seconds=time.perf_counter() - t0)


def _row_table(H: int, B: int, S: int, pos: list[int] | None, per_position: bool
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One layer's patched runs: ``heads [n]``, ``prompts [n]`` and (per position) ``at [n]``, the
    position each row patches; all-position rows are head-major (row ``h * B + b``)."""
    if per_position:
        hh, pp, bb = torch.meshgrid(torch.arange(H), torch.arange(S), torch.arange(B), indexing="ij")
        hh, pp, bb = hh.reshape(-1), pp.reshape(-1), bb.reshape(-1)
        if pos is not None:
            sel = torch.isin(pp, torch.tensor(pos))
            hh, pp, bb = hh[sel], pp[sel], bb[sel]
        return hh, bb, pp
    return torch.arange(H).repeat_interleave(B), torch.arange(B).repeat(H), None


def first_change(base_z: torch.Tensor, src_z: torch.Tensor, heads: torch.Tensor, prompts: torch.Tensor,
                 positions: list[int] | None = None, at: torch.Tensor | None = None) -> torch.Tensor:
    """The first position each patch changes: ``[n]`` (``S`` where the source equals the base at every
    patched position: that patch changes nothing and its run equals the base run).

    ``base_z``/``src_z [B, S, H, d_head]``: the head outputs of the base and source runs of one layer;
    row ``i`` patches head ``heads[i]`` of prompt ``prompts[i]`` at ``positions`` (None: all) or, per
    position, at ``at[i]``. Exact comparison: a position counts as unchanged only if bit-identical."""
    S = base_z.shape[1]
    dev = base_z.device
    heads, prompts = heads.to(dev), prompts.to(dev)
    differs = (base_z != src_z.to(device=dev, dtype=base_z.dtype)).any(-1)   # [B, S, H]
    rows = differs[prompts[:, None], torch.arange(S, device=dev)[None, :], heads[:, None]]   # [n, S]
    if positions is not None:
        keep = torch.zeros(S, dtype=torch.bool, device=dev)
        keep[torch.as_tensor(positions, dtype=torch.long, device=dev)] = True
        rows = rows & keep
    if at is not None:
        rows = rows & (torch.arange(S, device=dev)[None, :] == at.to(dev)[:, None])
    first = rows.to(torch.int8).argmax(1)
    return torch.where(rows.any(1), first, torch.full_like(first, S)).cpu()


def _exact(m: Any, base: BaseRun, src_z: list[torch.Tensor], met: Metric, pos: list[int] | None, per_position: bool,
           batch_size: int | None, progress: Progress | None, *, skip_identical: bool = True,
           reuse_prefix: bool = True) -> np.ndarray:
    """``[L, H]`` (or ``[L, H, S]``) patched metric. Where the model allows stacked suffix runs, every
    patched run of every layer goes through :func:`engine.run_stacked_rows`: patches that change nothing
    (source == base at every patched position) take the base metric without a pass (``skip_identical``),
    and passes whose rows all leave the first ``p`` positions unchanged run only positions ``p..S-1``
    (``reuse_prefix``). Otherwise one batched pass per layer (:func:`_exact_by_layer`)."""
    if not engine.supports_stacked(m) or base.z is None:
        return _exact_by_layer(m, base, src_z, met, pos, per_position, batch_size, progress)
    L, H = m.info.n_layers, m.info.n_heads
    B, S = base.ids.shape
    hh, bb, pp = _row_table(H, B, S, pos, per_position)
    n = hh.numel()
    attn = m.info.attention_layers   # a hybrid's other layers have no heads: never run, NaN in the map
    first = torch.stack([first_change(base.z[layer], src_z[layer], hh, bb, pos, pp) if layer in attn
                         else torch.full((n,), S, dtype=torch.long) for layer in range(L)])  # [L, n]
    vals = base.metric.detach().float().cpu()[bb].repeat(L, 1)   # [L, n]: a patch that changes nothing
    run = (first < S) if skip_identical else torch.ones(L, n, dtype=torch.bool)
    layer_of, row_of = (t.numpy() for t in torch.nonzero(run, as_tuple=True))
    limit = engine.prefix_limit(m) if reuse_prefix and met.last_only and base.k is not None else 0
    start = np.minimum(first.numpy()[layer_of, row_of], limit) if limit else np.zeros(len(layer_of), dtype=np.int64)
    start = np.minimum(start, S - 1)
    cap = batch_size or engine.max_rows(m, S, last_only=met.last_only)
    done = L * n - len(layer_of)
    for idx, p in engine.stack_plan(layer_of, start, cap):
        idx = idx[np.argsort(layer_of[idx], kind="stable")]
        layers, rows = torch.from_numpy(layer_of[idx]), torch.from_numpy(row_of[idx])

        def make(layer: int, local: torch.Tensor, rows: torch.Tensor = rows) -> list[Any]:
            j = rows[local]
            if per_position:
                return [RowHeadPositionPatch(layer, local, hh[j], pp[j], src_z[layer], bb[j])]
            return [RowHeadPatch(layer=layer, rows=local.to(m.device), heads=hh[j].to(m.device), source=src_z[layer],
                                 source_rows=bb[j].to(m.device), positions=pos)]
        got = engine.run_stacked_rows(m, base, layers, bb[rows], make, met, prefix=p).float().cpu()
        vals[layers, rows] = got
        done += len(idx)
        if progress is not None:
            progress(done, L * n)
    return m.info.nan_other_layers(_aggregate(vals, hh, bb, pp, H, B, S))


def _aggregate(vals: torch.Tensor, hh: torch.Tensor, bb: torch.Tensor, pp: torch.Tensor | None, H: int, B: int,
               S: int) -> np.ndarray:
    """Per-row metrics ``[L, n]`` -> the map: ``[L, H]`` (mean over prompts) or ``[L, H, S]`` (mean over
    prompts per position; NaN where no row patched that position)."""
    if pp is None:
        return vals.reshape(vals.shape[0], H, B).mean(2).numpy()
    out = torch.full((vals.shape[0], H, S), float("nan"))
    for layer in range(vals.shape[0]):
        sums = torch.zeros(H, S).index_put_((hh, pp), vals[layer], accumulate=True)
        counts = torch.zeros(H, S).index_put_((hh, pp), torch.ones_like(vals[layer]), accumulate=True)
        out[layer] = torch.where(counts > 0, sums / counts.clamp(min=1), float("nan"))
    return out.numpy()


def _exact_by_layer(m: Any, base: BaseRun, src_z: list[torch.Tensor], met: Metric, pos: list[int] | None,
                    per_position: bool, batch_size: int | None, progress: Progress | None) -> np.ndarray:
    """One batched pass (chunked) per layer: suffix runs from the cached residual stream, or full forward
    passes where the model has no suffix runner."""
    L, H = m.info.n_layers, m.info.n_heads
    B, S = base.ids.shape
    dev = m.device
    hh, bb, pp = _row_table(H, B, S, pos, per_position)
    n = hh.numel()
    vals = torch.full((L, n), float("nan"))
    for layer in m.info.attention_layers:
        def make(s: int, e: int, layer: int = layer):
            rows = torch.arange(e - s, device=dev)
            if per_position:
                return [RowHeadPositionPatch(layer, rows, hh[s:e], pp[s:e], src_z[layer], bb[s:e])]
            return [RowHeadPatch(layer=layer, rows=rows, heads=hh[s:e].to(dev), source=src_z[layer],
                                 source_rows=bb[s:e].to(dev), positions=pos)]
        vals[layer] = run_rows(m, base, layer, bb, make, met, batch_size=batch_size, progress=progress,
                               done=layer * n, total=L * n).float().cpu()
    return _aggregate(vals, hh, bb, pp, H, B, S)


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
