"""The token view a detector may attach to its result: a few heads' attention on one of its own prompts.

Format (``result.details["token_view"]``, plain JSON)::

    {"tokens": ["<s>", " The", " cat", ...],            # the prompt's tokens as text, at most 64
     "heads": {"L3H1": [[1.0], [0.2, 0.8], ...], ...},  # at most 8 heads
     "start": 0,                                        # optional: position of tokens[0] in the prompt
     "note": "..."}                                     # optional: what the prompt is

``heads[name]`` is the head's attention pattern over the shown tokens, one row per query position
``q`` (``len(tokens)`` rows) holding the weights on keys ``0..q`` (a row may also hold ``len(tokens)``
entries; keys after the query are zero in a causal model). Rows are normalised to sum 1 over the shown
keys. Values are rounded to 3 decimals to keep the report small.

The scan stores a detector's top labelled heads (at most :data:`MAX_HEADS`) on one of its own prompts, chosen so the
pattern the head type is about is visible (an induction head on a repeated random sequence, a
retrieval head on a needle prompt). The report draws the tokens in a row for each head; hovering a token shades every token it attends
to (circuitsvis-style). :func:`make_token_view` builds the dict from tokens and a ``[heads, q, k]``
array; :func:`check_token_view` validates one read from an (untrusted) atlas. This module imports
numpy only (no torch), so detectors and the report can both use it.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

MAX_TOKENS = 64
MAX_HEADS = 8


def _head_name(h: Any) -> str:
    if isinstance(h, str):
        return h
    layer, head = h
    return f"L{int(layer)}H{int(head)}"


def make_token_view(tokens: Sequence[str], pattern: Any, heads: Sequence[Any], *, start: int | None = None,
                    note: str = "") -> dict[str, Any]:
    """The ``token_view`` dict for ``heads`` (names ``"L3H1"`` or ``(layer, head)`` pairs).

    ``pattern``: ``[len(heads), Q, K]`` attention weights (numpy or anything array-like, e.g. a CPU
    tensor's ``.numpy()``) with ``Q == K == len(tokens)``. Only the first :data:`MAX_HEADS` heads are
    kept. A prompt longer than :data:`MAX_TOKENS` is cut to a window of that many tokens starting at
    ``start`` (default: the last :data:`MAX_TOKENS`), and each row is renormalised over the window's
    keys (attention to keys before the window is left out; ``start`` records where the window begins).
    """
    toks = [str(t) for t in tokens]
    p = np.asarray(pattern, dtype=float)
    if p.ndim == 2:
        p = p[None]
    if p.ndim != 3 or p.shape[1] != len(toks) or p.shape[2] != len(toks):
        raise ValueError(f"pattern must be [heads, {len(toks)}, {len(toks)}] for {len(toks)} tokens, got {list(p.shape)}")
    if p.shape[0] != len(heads):
        raise ValueError(f"pattern holds {p.shape[0]} heads but {len(heads)} head names were given")
    n = len(toks)
    s = max(0, n - MAX_TOKENS) if start is None else int(start)
    if not 0 <= s < max(n, 1):
        raise ValueError(f"start {s} is outside the prompt of {n} tokens")
    e = min(n, s + MAX_TOKENS)
    window = p[:MAX_HEADS, s:e, s:e]
    out_heads: dict[str, list[list[float]]] = {}
    for name, pat in zip(heads[:MAX_HEADS], window):
        rows = []
        for q in range(pat.shape[0]):
            row = np.nan_to_num(pat[q, : q + 1], nan=0.0, posinf=0.0, neginf=0.0).clip(min=0.0)
            total = row.sum()
            row = row / total if total > 0 else row
            rows.append([round(float(v), 3) for v in row])
        out_heads[_head_name(name)] = rows
    view: dict[str, Any] = {"tokens": toks[s:e], "heads": out_heads, "start": s}
    if note:
        view["note"] = str(note)
    return view


def check_token_view(view: Any) -> tuple[dict[str, Any] | None, str]:
    """``(view, "")`` for a well-formed token view cut to the limits, or ``(None, reason)``.

    Tokens beyond :data:`MAX_TOKENS` and heads beyond :data:`MAX_HEADS` are dropped; a row that is not a
    list of finite numbers makes the view malformed."""
    if not isinstance(view, dict):
        return None, "token_view is not an object"
    tokens = view.get("tokens")
    heads = view.get("heads")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        return None, "token_view.tokens must be a non-empty list of strings"
    if not isinstance(heads, dict) or not heads:
        return None, "token_view.heads must be a non-empty object"
    n = min(len(tokens), MAX_TOKENS)
    out: dict[str, list[list[float]]] = {}
    for name, rows in list(heads.items())[:MAX_HEADS]:
        if not isinstance(rows, list):
            return None, f"token_view.heads[{str(name)[:40]!r}] is not a list of rows"
        clean = []
        for row in rows[:n]:
            if not isinstance(row, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                    and math.isfinite(v) for v in row):
                return None, f"token_view.heads[{str(name)[:40]!r}] holds a row that is not a list of numbers"
            clean.append([float(v) for v in row[:n]])
        out[str(name)] = clean
    start = view.get("start", 0)
    note = view.get("note", "")
    return {"tokens": list(tokens[:n]), "heads": out,
            "start": int(start) if isinstance(start, int) and not isinstance(start, bool) else 0,
            "note": str(note)}, ""
