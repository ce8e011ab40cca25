"""Forward passes of the probing methods: token rows, probed positions, batched capture of every head's ``z``
at one position per text, and teacher-forced completion log-odds.

Rows are sorted by length and right-padded (causal attention never lets a real position read the padding
after it, so no attention mask is needed); the unembedding runs only where a caller asks for logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..checks import check_int
from ..errors import InputError
from ..instrument import Taps, instrumented
from ..models.loading import LoadedModel
from ..tasks.text import pad_id
from ..tasks.vocab import bos_id


def token_rows(m: LoadedModel, texts: Sequence[str]) -> list[list[int]]:
    """Each text's token ids (BOS first when the tokenizer has one). InputError on an empty encoding or
    a text longer than the context."""
    bos = bos_id(m.tokenizer)
    rows = []
    for t in texts:
        ids = [int(x) for x in m.tokenizer.encode(t, add_special_tokens=False)]
        if not ids:
            raise InputError(f"the text {t[:50]!r} tokenizes to no tokens")
        row = ([] if bos is None else [bos]) + ids
        if len(row) > m.info.n_ctx:
            raise InputError(f"a text needs {len(row)} positions but the model has {m.info.n_ctx}: {t[:50]!r}")
        rows.append(row)
    return rows


def resolve_positions(rows: Sequence[Sequence[int]], position: int | Sequence[int]) -> np.ndarray:
    """``[N]`` absolute positions: ``position`` counts from the start (>= 0) or from the last real token
    (< 0: -1 is the last token of each row); or one position per row."""
    if isinstance(position, (list, tuple, np.ndarray)):
        pos = np.asarray(position, dtype=int)
        if pos.shape != (len(rows),):
            raise InputError(f"give one position per text ({len(rows)}), got {pos.shape}")
    else:
        p = check_int(position, "position")
        pos = np.array([len(r) + p if p < 0 else p for r in rows], dtype=int)
    bad = [i for i, (r, q) in enumerate(zip(rows, pos)) if not 0 <= q < len(r)]
    if bad:
        i = bad[0]
        raise InputError(f"position {int(pos[i])} is outside text {i} ({len(rows[i])} tokens); "
                         f"use -1 for the last token")
    return pos


@dataclass
class Captured:
    """``features [N, L, H, D]`` float32 (z at one position per row); ``argmax``: per row, the model's
    argmax next token at each requested position (when asked)."""

    features: np.ndarray
    argmax: list[list[int]] = field(default_factory=list)


def capture_heads(m: LoadedModel, rows: Sequence[Sequence[int]], positions: np.ndarray, *, batch_size: int = 16,
                  argmax_at: Sequence[Sequence[int]] | None = None,
                  progress: Callable[[int, int], None] | None = None) -> Captured:
    """One forward per batch of rows (sorted by length, right-padded: causal attention never reads the
    padding of a row's real positions) capturing every head's ``z`` at ``positions[i]`` of row ``i``;
    with ``argmax_at``, also the argmax next token at those positions of each row (teacher forcing)."""
    n = len(rows)
    L, H, D = m.info.n_layers, m.info.n_heads, m.info.d_head
    feats = np.zeros((n, L, H, D), dtype=np.float32)
    arg: list[list[int]] = [[] for _ in range(n)]
    order = np.argsort([len(r) for r in rows], kind="stable")
    pad = pad_id(m.tokenizer)
    bs = max(1, int(batch_size))
    for s in range(0, n, bs):
        idx = order[s:s + bs]
        width = max(len(rows[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, :len(rows[i])] = torch.tensor(rows[i], dtype=torch.long)
        pos = torch.as_tensor(positions[idx], dtype=torch.long)
        keep = torch.arange(len(idx))

        def reducer(layer: int, z: torch.Tensor, call: Any, pos=pos, keep=keep) -> torch.Tensor:
            return z[keep.to(z.device), pos.to(z.device)].detach().float().cpu()

        keep = sorted({int(q) for i in idx for q in argmax_at[i]}) if argmax_at is not None else []
        kw: dict[str, Any] = {"logits_to_keep": torch.tensor(keep, device=m.device) if keep else 1}
        with torch.no_grad(), instrumented(m, taps=Taps(z_reducer=reducer)) as rec:
            out = m.model(input_ids=ids.to(m.device), use_cache=False, **kw)
        for layer in m.info.attention_layers:   # a hybrid's other layers keep zero features (masked in probe)
            feats[idx, layer] = torch.cat(rec.z_reduced[layer], 0).numpy()
        if keep:
            where = {q: k for k, q in enumerate(keep)}
            best = out.logits.argmax(-1).cpu()
            for r, i in enumerate(idx):
                arg[i] = [int(best[r, where[int(q)]]) for q in argmax_at[i]]  # type: ignore[index]
        if progress is not None:
            progress(min(s + bs, n), n)
    return Captured(feats, arg)


def completion_rows(m: LoadedModel, pairs: Sequence[tuple[str, str, str]]) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """Token rows of ``(prefix, good, bad)`` triples, two per triple (prefix + " good", prefix + " bad"; BOS first
    where the tokenizer has one), and each row's completion span ``(start, end)``."""
    bos = bos_id(m.tokenizer)
    rows, spans = [], []
    for prefix, good, bad in pairs:
        head = ([] if bos is None else [bos]) + [int(x) for x in m.tokenizer.encode(prefix, add_special_tokens=False)]
        for comp in (good, bad):
            tail = [int(x) for x in m.tokenizer.encode(" " + comp, add_special_tokens=False)]
            if not tail:
                raise InputError(f"the completion {comp!r} tokenizes to no tokens for this tokenizer")
            rows.append(head + tail)
            spans.append((len(head), len(head) + len(tail)))
    return rows, spans


def completion_logodds(m: LoadedModel, pairs: Sequence[tuple[str, str, str]], edits: Sequence[Any] = (), *,
                       batch_size: int = 16) -> np.ndarray:
    """``[n]``: log P(``good`` | prefix) - log P(``bad`` | prefix) (teacher-forced sums over the completion's
    tokens; completions are encoded after a space) for ``(prefix, good, bad)`` triples, with ``edits``."""
    rows, spans = completion_rows(m, pairs)
    out = np.zeros(len(rows))
    pad = pad_id(m.tokenizer)
    order = sorted(range(0, len(rows), 2), key=lambda i: len(rows[i]))     # pairs stay together
    flat = [j for i in order for j in (i, i + 1)]
    for s in range(0, len(flat), batch_size):
        idx = flat[s:s + batch_size]
        width = max(len(rows[j]) for j in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        for r, j in enumerate(idx):
            ids[r, :len(rows[j])] = torch.tensor(rows[j])
        # unembed only the positions that predict a completion token (the union over the batch's rows)
        keep = sorted({q for j in idx for q in range(spans[j][0] - 1, spans[j][1] - 1)})
        where = {q: k for k, q in enumerate(keep)}
        with torch.no_grad(), instrumented(m, edits=list(edits)):
            logits = m.model(input_ids=ids.to(m.device), use_cache=False,
                             logits_to_keep=torch.tensor(keep, device=m.device)).logits
        logp = torch.log_softmax(logits.float(), -1).cpu()
        for r, j in enumerate(idx):
            a, b = spans[j]
            cols = torch.tensor([where[q] for q in range(a - 1, b - 1)])
            out[j] = float(logp[r, cols, torch.tensor(rows[j][a:b])].sum())
    return out[0::2] - out[1::2]


__all__ = ["Captured", "capture_heads", "completion_logodds", "resolve_positions", "token_rows"]
