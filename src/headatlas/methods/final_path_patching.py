"""Path patching at the last position only: the effect of a sender head's output *at the final token* on
chosen receiver heads through their *query at the final token* (Wang et al. 2022's path patching,
restricted to the one position a last-token metric reads).

For one base prompt and one source prompt of the same length ``S`` (``f = S - 1``), a sender ``s`` and
receivers ``R`` (in later layers):

1. the base run keeps every layer's residual stream, head outputs ``z`` and keys/values; the source run
   keeps ``z``;
2. a run of the final position only (the base run's keys and values of positions ``0..f-1`` in every
   layer) where the sender's ``z`` at ``f`` is the source's and every other head's ``z`` at ``f`` is
   frozen to the base run's (MLPs recompute) gives the receivers' queries at ``f`` as the sender's change
   alone makes them;
3. a run of the final position only where each receiver's attention is recomputed with that query (its
   keys and values are the base run's: nothing before ``f`` changed) gives the metric.

Only position ``f`` changes, so both runs are one token per sender on top of the cached prefix (all
senders of a chunk in one stacked pass, :func:`headatlas.models.suffix.run_stacked`). The reference for
the drop is a row of step 3 with nothing patched, so a sender that changes nothing has a drop of exactly
0. The same construction with full-sequence runs (``HeadEdit`` at ``positions=[f]``) gives the same numbers
(``tests/test_content_gatherer.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from ..instrument import Edit, HeadEdit, RowHeadPatch, Taps, instrumented
from ..instrument.session import LayerCall
from ..models.loading import LoadedModel
from ..models.suffix import run_stacked
from .engine import (
    BaseRun,
    base_run,
    max_rows,
    prefix_cache,
    prefix_limit,
    supports_stacked,
)
from .metrics import Metric


@dataclass(eq=False)
class RowQueryPatch:
    """Recompute ``heads`` of ``layer`` with their queries replaced on batch ``rows`` by ``query
    [len(rows), n_heads, q, d_head]`` (keys, values, mask and arguments: the layer's own call)."""

    layer: int
    heads: list[int]
    rows: torch.Tensor
    query: torch.Tensor

    def apply(self, z: torch.Tensor, call: LayerCall) -> torch.Tensor:
        if self.rows.numel() == 0:
            return z
        dev = call.query.device
        r, h = self.rows.to(dev)[:, None], torch.tensor(self.heads, device=dev)[None, :]
        q = call.query.clone()
        q[r, h] = self.query.to(dev, q.dtype)[:, self.heads]
        new = call.attend(q, call.key, call.value)                # [N, q, H, d]
        z[r, :, h] = new[r, :, h].to(z.dtype)
        return z


def _by_layer(heads: Sequence[tuple[int, int]]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for layer, h in heads:
        out.setdefault(int(layer), []).append(int(h))
    return out


class FinalPathPatcher:
    """The base and source runs of one prompt pair (``[1, S]`` token ids each), reused by every
    :meth:`drops` call (several receiver sets on the same pair cost one base and one source run)."""

    def __init__(self, m: LoadedModel, base_ids: torch.Tensor, src_ids: torch.Tensor, metric: Metric) -> None:
        if base_ids.dim() != 2 or base_ids.shape[0] != 1 or base_ids.shape != src_ids.shape:
            raise InputError(f"final-position path patching takes one prompt pair of equal length ([1, S]); got "
                             f"{tuple(base_ids.shape)} and {tuple(src_ids.shape)}")
        if not metric.last_only:
            raise InputError("final-position path patching needs a last-position metric")
        if not supports_stacked(m) or prefix_limit(m) < base_ids.shape[1]:
            raise InputError(f"{m.info.architecture}: final-position path patching needs the suffix runner and a KV "
                             "cache covering the prompt")
        self.m, self.metric = m, metric
        self.f = int(base_ids.shape[1]) - 1
        self.base: BaseRun = base_run(m, base_ids.to(m.device), metric, keep_hidden=True, keep_z=True, keep_kv=True)
        self.src_z = base_run(m, src_ids.to(m.device), metric, keep_hidden=False, keep_z=True).z

    def _cache(self, n_per_layer: list[int]):
        return prefix_cache(self.m, self.base, [torch.zeros(n, dtype=torch.long) for n in n_per_layer], self.f)

    def _receiver_queries(self, senders: list[tuple[int, int]], recv: dict[int, list[int]]) -> dict[int, torch.Tensor]:
        """Step 2 for ``senders`` (sorted by layer): per receiver layer ``r`` the queries ``[n_r, H, 1, d]``
        of the rows whose sender is before ``r`` (a prefix of the rows)."""
        m, f, base = self.m, self.f, self.base
        L = m.info.n_layers
        last = max(recv)
        by = _by_layer(senders)
        entries, patches, offset = [], [], 0
        for layer, hs in by.items():
            entries.append((layer, base.hidden[layer][torch.zeros(len(hs), dtype=torch.long), f:f + 1]))
            n = len(hs)
            patches.append(RowHeadPatch(layer=layer, rows=torch.arange(offset, offset + n, device=m.device),
                                        heads=torch.tensor(hs, device=m.device), source=self.src_z[layer],
                                        source_rows=torch.zeros(n, dtype=torch.long, device=m.device)))
            offset += n
        first = min(by)
        freeze: list[Edit] = [HeadEdit(layer, None, "patch", source=base.z[layer]) for layer in range(first, last)]
        present = [sum(1 for s in senders if s[0] <= layer) for layer in range(L)]
        with torch.no_grad(), instrumented(m, edits=freeze + patches, taps=Taps(qkv=True, layers=sorted(recv))) as rec:
            run_stacked(m, entries, base.ids[:1, f:f + 1], cache=self._cache(present), last_only=True)
        return {r: rec.q(r)[:sum(1 for s in senders if s[0] < r)] for r in recv}

    def drops(self, receivers: Sequence[tuple[int, int]], senders: Sequence[tuple[int, int]], *,
              batch_size: int | None = None) -> np.ndarray:
        """``[n_senders]`` the metric of the unpatched final position minus that with each sender's path to
        the receivers' queries patched (steps 1-3 of the module docstring; senders in any order, each
        before the last receiver's layer)."""
        m, f, base = self.m, self.f, self.base
        recv = _by_layer(receivers)
        if not recv:
            raise InputError("final-position path patching needs at least one receiver")
        senders = [(int(a), int(b)) for a, b in senders]
        bad = [f"L{a}H{b}" for a, b in senders if a >= max(recv)]
        if bad:
            raise InputError(f"senders {', '.join(bad)} are not before the receivers' last layer {max(recv)}")
        order = sorted(range(len(senders)), key=lambda i: senders[i])
        out = np.zeros(len(senders))
        cap = max(1, (batch_size or max_rows(m, f + 1)) - 1)
        start = min(recv)
        for c in range(0, len(order), cap):
            idx = order[c:c + cap]
            chunk = [senders[i] for i in idx]
            queries = self._receiver_queries(chunk, recv)
            n = len(chunk)
            edits = [RowQueryPatch(r, hs, torch.arange(queries[r].shape[0], device=m.device), queries[r])
                     for r, hs in recv.items()]
            hidden = base.hidden[start][torch.zeros(n + 1, dtype=torch.long), f:f + 1]     # row n: nothing patched
            with torch.no_grad(), instrumented(m, edits=edits):
                logits = run_stacked(m, [(start, hidden)], base.ids[:1, f:f + 1],
                                     cache=self._cache([n + 1] * m.info.n_layers), last_only=True)
            vals = self.metric(logits, torch.zeros(n + 1, dtype=torch.long, device=m.device)).double().cpu().numpy()
            out[idx] = vals[n] - vals[:n]
        return out
