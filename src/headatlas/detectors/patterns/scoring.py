"""Pure scoring functions over attention patterns (shared by the pattern detectors).

Axes: a pattern is ``[batch, heads, q, k]`` (one layer, full prompt: ``q == k``, query ``i`` may
attend keys ``0..i``). Key masks are ``[q, k]`` or ``[batch, q, k]`` booleans, query masks ``[q]`` or
``[batch, q]``. Every function returns per-row, per-head values ``[batch, heads, ...]`` so that
callers can average over prompts and take a spread for the null. Inputs are never modified.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _check(pattern: torch.Tensor) -> torch.Tensor:
    if pattern.dim() != 4 or pattern.shape[-1] != pattern.shape[-2]:
        raise ValueError(f"expected a full-prompt pattern [batch, heads, q, q], got shape {tuple(pattern.shape)}")
    return pattern.float()


def _query_mask(queries: torch.Tensor | None, batch: int, seq: int, device: torch.device) -> torch.Tensor:
    if queries is None:
        queries = torch.ones(seq, dtype=torch.bool, device=device)
    queries = queries.to(device=device, dtype=torch.bool)
    if queries.dim() == 1:
        queries = queries.expand(batch, seq)
    if queries.shape != (batch, seq):
        raise ValueError(f"query mask must be [{seq}] or [{batch}, {seq}], got {tuple(queries.shape)}")
    return queries


def _mean_over_queries(values: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """``values [B, H, Q]``, ``queries [B, Q]`` bool -> ``[B, H]`` mean over the selected queries (NaN if none)."""
    w = queries[:, None, :].to(values.dtype)
    n = w.sum(-1)
    return (values * w).sum(-1) / torch.where(n > 0, n, torch.full_like(n, float("nan")))


def mask_mass(pattern: torch.Tensor, key_mask: torch.Tensor, queries: torch.Tensor | None = None) -> torch.Tensor:
    """Mean attention mass on a key set per query: ``[B, H]``.

    ``key_mask`` ``[q, k]`` or ``[B, q, k]``: the keys counted for each query; ``queries`` which
    queries to average over (default: those whose key set is non-empty)."""
    p = _check(pattern)
    B, _, S, _ = p.shape
    km = key_mask.to(device=p.device, dtype=torch.bool)
    if km.dim() == 2:
        km = km.expand(B, S, S)
    if km.shape != (B, S, S):
        raise ValueError(f"key mask must be [{S}, {S}] or [{B}, {S}, {S}], got {tuple(key_mask.shape)}")
    if queries is None:
        queries = km.any(-1)
    q = _query_mask(queries, B, S, p.device)
    mass = (p * km[:, None].to(p.dtype)).sum(-1)  # [B, H, Q]
    return _mean_over_queries(mass, q)


def mul_score(pattern: torch.Tensor, key_mask: torch.Tensor, queries: torch.Tensor | None = None, *,
              exclude_first: bool = False) -> torch.Tensor:
    """TransformerLens-style "mul" score ``sum(A * P) / sum(A)`` over the selected queries: ``[B, H]``.

    With ``exclude_first`` the first key (BOS) is removed from both sums, so the score is the
    share of the head's *non-sink* attention on the key set."""
    p = _check(pattern)
    B, _, S, _ = p.shape
    km = key_mask.to(device=p.device, dtype=torch.bool)
    km = km.expand(B, S, S) if km.dim() == 2 else km
    q = _query_mask(queries if queries is not None else km.any(-1), B, S, p.device)
    keep = torch.ones(S, device=p.device, dtype=p.dtype)
    if exclude_first:
        keep[0] = 0.0
    on = (p * km[:, None].to(p.dtype) * keep).sum(-1)          # [B, H, Q]
    total = (p * keep).sum(-1)
    w = q[:, None, :].to(p.dtype)
    return (on * w).sum(-1) / (total * w).sum(-1).clamp_min(1e-12)


def offset_mass(pattern: torch.Tensor, offsets: Sequence[int], queries: torch.Tensor | None = None) -> torch.Tensor:
    """Mean attention from query ``i`` to key ``i + d`` for each offset ``d <= 0``: ``[B, H, len(offsets)]``.

    ``queries`` ``[q]`` selects the queries averaged over; queries whose key ``i + d`` would be
    negative are skipped for that offset."""
    p = _check(pattern)
    B, H, S, _ = p.shape
    q = _query_mask(queries, B, S, p.device)
    out = []
    for d in offsets:
        if d > 0:
            raise ValueError(f"offsets must be <= 0 (causal attention), got {d}")
        diag = torch.zeros(B, H, S, device=p.device, dtype=p.dtype)
        diag[..., -d:] = torch.diagonal(p, offset=d, dim1=-2, dim2=-1)  # A[i, i+d] at index i
        valid = q.clone()
        valid[:, :-d] = False
        out.append(_mean_over_queries(diag, valid))
    return torch.stack(out, dim=-1)


def key_mass(pattern: torch.Tensor, keys: Sequence[int], queries: torch.Tensor | None = None) -> torch.Tensor:
    """Mean attention on each fixed key position (e.g. 0 = the first token): ``[B, H, len(keys)]``.

    Queries before a key cannot see it and are skipped for that key."""
    p = _check(pattern)
    B, _, S, _ = p.shape
    q = _query_mask(queries, B, S, p.device)
    pos = torch.arange(S, device=p.device)
    return torch.stack([_mean_over_queries(p[..., k], q & (pos >= k)) for k in keys], dim=-1)


def argmax_offset_fractions(pattern: torch.Tensor, max_back: int, queries: torch.Tensor | None = None) -> torch.Tensor:
    """Where each query's top key sits, relative to the query: ``[B, H, max_back + 2]``.

    Entry ``j`` (``0 <= j <= max_back``) is the fraction of selected queries whose argmax key is
    ``i - j``; the last entry is the fraction elsewhere (further back, e.g. the BOS sink)."""
    p = _check(pattern)
    B, _, S, _ = p.shape
    q = _query_mask(queries, B, S, p.device)
    back = torch.arange(S, device=p.device) - p.argmax(-1)         # [B, H, Q] = i - argmax
    bins = torch.where(back <= max_back, back, torch.full_like(back, max_back + 1))
    onehot = torch.nn.functional.one_hot(bins, max_back + 2).to(p.dtype)  # [B, H, Q, W+2]
    w = q[:, None, :, None].to(p.dtype)
    n = q.sum(-1).to(p.dtype)[:, None, None]
    return (onehot * w).sum(2) / torch.where(n > 0, n, torch.full_like(n, float("nan")))


def duplicate_mask(ids: torch.Tensor) -> torch.Tensor:
    """``[B, S, S]``: key ``k`` holds an earlier copy of the query's token (``k < q``, same id)."""
    S = ids.shape[-1]
    same = ids[..., :, None] == ids[..., None, :]
    return same & torch.ones(S, S, dtype=torch.bool, device=ids.device).tril(-1)


def induction_mask(ids: torch.Tensor) -> torch.Tensor:
    """``[B, S, S]``: key ``k`` is the token right after an earlier copy of the query's token
    (``ids[k-1] == ids[q]``, ``k < q``): where an induction head attends."""
    dup = duplicate_mask(ids)
    out = torch.zeros_like(dup)
    out[..., 1:] = dup[..., :-1]          # shift the key axis right by one
    S = ids.shape[-1]
    return out & torch.ones(S, S, dtype=torch.bool, device=ids.device).tril(-1)


def induction_targets(ids: torch.Tensor) -> torch.Tensor:
    """``[B, S]`` the token an induction head would copy at each query: the token after the
    latest earlier copy of the query's token; ``-1`` where the token has no earlier copy."""
    m = induction_mask(ids)
    S = ids.shape[-1]
    last = torch.where(m, torch.arange(S, device=ids.device), torch.full_like(ids[..., None, :], -1)).amax(-1)
    tgt = torch.gather(ids, -1, last.clamp_min(0))
    return torch.where(last >= 0, tgt, torch.full_like(tgt, -1))


def dominant_offset(fractions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From ``[..., W + 2]`` argmax-offset fractions (averaged over prompts): the dominant
    backward offset ``[...]`` (0..W; the "elsewhere" bin is never dominant) and its fraction."""
    window = fractions[..., :-1]
    frac, back = window.max(-1)
    return back, frac
