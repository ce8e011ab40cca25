"""What each head writes: the top promoted and suppressed output tokens of its OV circuit through the unembedding,
as an atlas stores them (``Atlas.writes``, JSON key ``"writes"``; computed by the scan with
:func:`headatlas.methods.ov_tokens.ov_top_tokens`). Numbers and token strings only, no torch.

Format (plain JSON)::

    {"method": "...",                     # how it was computed, in words
     "n_sources": 64, "k": 10,            # source tokens tried; entries kept per list
     "heads": {"L23H0": {"promoted":   [[" M", 9.1, " m"], ...],   # [output token, z, source token]
                         "suppressed": [[" elig", -7.2, " almond"], ...],
                         "self_z": 4.2,                           # mean z of the source token itself (copying)
                         "copy_top10": 0.81}}}                    # sources whose own token is in the top 10

``z``: the centred logit in units of the head's logit spread (its standard deviation over all source x vocab
pairs), so heads compare. An atlas is untrusted: :func:`check_writes` cuts it to the limits and refuses malformed
entries.
"""

from __future__ import annotations

import math
import re
from typing import Any

MAX_K = 20
MAX_TOKEN_CHARS = 48
_HEAD = re.compile(r"L(\d{1,4})H(\d{1,4})")


def _entry(x: Any) -> list[Any] | None:
    if not isinstance(x, (list, tuple)) or len(x) != 3:
        return None
    out, z, src = x
    if not isinstance(out, str) or not isinstance(src, str) or isinstance(z, bool) or not isinstance(z, (int, float)):
        return None
    if not math.isfinite(float(z)):
        return None
    return [out[:MAX_TOKEN_CHARS], float(z), src[:MAX_TOKEN_CHARS]]


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(float(x)):
        return None
    return float(x)


def check_writes(doc: Any, n_layers: int, n_heads: int) -> tuple[dict[str, Any] | None, str]:
    """``(clean, "")`` for a well-formed writes record (heads outside the model, extra entries and long tokens cut),
    ``(None, reason)`` otherwise."""
    if not isinstance(doc, dict) or not isinstance(doc.get("heads"), dict):
        return None, "writes must be an object with a 'heads' object"
    heads: dict[str, dict[str, Any]] = {}
    for name, rec in list(doc["heads"].items())[: n_layers * n_heads]:
        m = _HEAD.fullmatch(str(name))
        if not m or int(m.group(1)) >= n_layers or int(m.group(2)) >= n_heads or not isinstance(rec, dict):
            return None, f"writes.heads holds an entry that is not a head of this model ({str(name)[:40]!r})"
        clean: dict[str, Any] = {}
        for key in ("promoted", "suppressed"):
            rows = rec.get(key, [])
            if not isinstance(rows, list):
                return None, f"writes.heads[{name!r}].{key} is not a list"
            entries = [_entry(x) for x in rows[:MAX_K]]
            if any(e is None for e in entries):
                return None, f"writes.heads[{name!r}].{key} holds an entry that is not [token, number, token]"
            clean[key] = entries
        for key in ("self_z", "copy_top10"):
            clean[key] = _number(rec.get(key))
        heads[str(name)] = clean
    n_sources, k = _number(doc.get("n_sources")), _number(doc.get("k"))
    return {"method": str(doc.get("method", ""))[:2000], "n_sources": int(n_sources) if n_sources is not None else 0,
            "k": min(int(k), MAX_K) if k is not None else MAX_K, "heads": heads}, ""
