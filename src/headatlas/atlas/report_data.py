"""What the report reads from an atlas: per detector its numbers, label statuses, causal check and rank, and per
stage its heads by status. Tolerant of records written before contract v2 (missing per-head arrays read as NaN).

Order of detectors (:func:`detector_views`): by stage (KR, ICI, LR, EP), then by how much they found: confirmed
labels first, then attention-defined, unconfirmed only, distributed, none found, skipped; within a group by the
causal check's q, then the best label's q.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .protocols import AtlasLike
from .records import PER_HEAD_FIELDS

STAGE_ORDER = ("KR", "ICI", "LR", "EP")
STAGE_COLORS = {"KR": "#1f77b4", "ICI": "#2ca02c", "LR": "#d62728", "EP": "#9467bd"}
STATUSES = ("confirmed", "attention-defined", "unconfirmed")


def fmt(x: Any, digits: int = 3) -> str:
    """A number for display (``digits`` significant digits; ``nan`` for missing); anything else as text."""
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(v):
        return "nan"
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
        return f"{v:.{max(digits - 1, 0)}e}"
    return f"{v:.{digits}g}"


def signed(x: Any, digits: int = 3) -> str:
    """:func:`fmt` with an explicit ``+`` on positive numbers."""
    text = fmt(x, digits)
    return "+" + text if text[:1].isdigit() and float(x) > 0 else text


def head_name(layer: int, head: int) -> str:
    return f"L{int(layer)}H{int(head)}"


def rounded(a: np.ndarray, digits: int = 4) -> list:
    """``[n_layers, n_heads]`` as nested lists of ``digits``-significant floats (``None`` for NaN/inf)."""
    return [[float(f"{v:.{digits}g}") if math.isfinite(v) else None for v in row] for row in np.asarray(a, float).tolist()]


def _array(v: Any, shape: tuple[int, int]) -> np.ndarray:
    try:
        a = np.asarray(v, dtype=float)
    except (TypeError, ValueError):
        return np.full(shape, np.nan)
    return a if a.shape == shape else np.full(shape, np.nan)


def _num(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def anchors(names: list[str]) -> list[str]:
    """``det-<name>`` ids made of ``[A-Za-z0-9_-]`` only (other characters become ``-``), unique."""
    out: list[str] = []
    for n in names:
        base = "det-" + "".join(c if (c.isascii() and c.isalnum()) or c in "-_" else "-" for c in n)[:80]
        a, i = base, 2
        while a in out:
            a, i = f"{base}-{i}", i + 1
        out.append(a)
    return out


def causal_info(atlas: AtlasLike, name: str) -> dict[str, Any] | None:
    """The detector's causal check as plain numbers (``None`` when none ran): metric, kind, heads, effect,
    random effects and median, p, q (BH across the atlas's checks), per-head effects, expected direction, pool."""
    m = atlas.causal(name)
    if m is None:
        return None
    return {"metric": str(m["metric"]), "kind": str(m["kind"]), "heads": [[int(a), int(b)] for a, b in m["heads"]],
            "effect": _num(m["effect"]), "random_effects": [_num(x) for x in m["random_effects"]],
            "p_value": _num(m["p_value"]), "q_value": _num(m["q_value"]), "n_prompts": m["n_prompts"],
            "expected": str(m["expected"]), "random_median": _num(m["random_median"]),
            "description": str(m["description"]), "note": str(m["note"]), "exhaustive": bool(m["exhaustive"]),
            "pool": str(m["pool"]), "per_head": {str(k): _num(v) for k, v in dict(m["per_head"]).items()}}


class DetView:
    """One detector's numbers as the report uses them (``anchor``: its element id in the page)."""

    def __init__(self, atlas: AtlasLike, name: str, anchor: str, distributed: dict[str, Any] | None) -> None:
        self.name, self.anchor = name, anchor
        self.r = atlas.result(name)
        self.meta = atlas.meta[name]
        self.stage = str(getattr(self.meta, "stage", ""))
        self.places_stage = bool(getattr(self.meta, "places_stage", True))
        shape = (atlas.n_layers, atlas.n_heads)
        self.f: dict[str, np.ndarray] = {k: _array(getattr(self.r, k, None), shape) for k in PER_HEAD_FIELDS}
        if getattr(self.r, "effect", None) is None:
            self.f["effect"] = self.f["scores"] - self.f["null_mean"]
        self.skipped = self.r.skipped
        self.labelled = [(int(a), int(b)) for a, b in self.r.labelled]
        self.status = {lh: str(atlas.label_status(name, *lh) or "unconfirmed") for lh in self.labelled}
        self.rule = getattr(self.r, "rule", None)
        self.direction = str(getattr(self.rule, "direction", "greater"))
        self.min_effect = _num(getattr(self.rule, "min_effect", 0.0))
        self.causal = causal_info(atlas, name)
        self.distributed = distributed
        self.extras = {str(k): np.asarray(v) for k, v in (self.r.extras or {}).items() if np.shape(v) == shape}

    @property
    def found_nothing(self) -> bool:
        return not self.skipped and not self.labelled and not self.distributed

    def heads_with(self, status: str) -> list[tuple[int, int]]:
        """Labelled heads with ``status``, most significant first."""
        return [lh for lh in self.labelled if self.status[lh] == status]

    def directed_effect(self) -> np.ndarray:
        e = self.f["effect"]
        return {"less": -e, "two-sided": np.abs(e)}.get(self.direction, e)

    def best_heads(self, k: int) -> list[tuple[int, int]]:
        """The ``k`` most significant heads (q, then effect in the rule's direction), labelled or not."""
        q = np.where(np.isfinite(self.f["q_value"]), self.f["q_value"], np.inf)
        de = self.directed_effect()
        de = np.where(np.isfinite(de), de, -np.inf)
        order = np.lexsort((-de.ravel(), q.ravel()))
        n_heads = q.shape[1]
        heads = [divmod(int(i), n_heads) for i in order if np.isfinite(q.ravel()[i]) or np.isfinite(de.ravel()[i])]
        return heads[:k]

    def group(self) -> int:
        """0 confirmed labels, 1 attention-defined, 2 unconfirmed only, 3 distributed, 4 none found, 5 skipped."""
        if self.skipped:
            return 5
        for i, s in enumerate(STATUSES):
            if self.heads_with(s):
                return i
        return 3 if self.distributed else 4

    def rank_key(self) -> tuple[int, int, float, float]:
        stage = STAGE_ORDER.index(self.stage) if self.stage in STAGE_ORDER else len(STAGE_ORDER)
        cq = self.causal["q_value"] if self.causal else math.nan
        cp = self.causal["p_value"] if self.causal else math.nan
        causal = cq if math.isfinite(cq) else (cp if math.isfinite(cp) else math.inf)
        best = self.best_heads(1)
        q = float(self.f["q_value"][best[0]]) if best else math.inf
        return stage, self.group(), causal, q if math.isfinite(q) else math.inf


def detector_views(atlas: AtlasLike) -> list[DetView]:
    """Every detector of ``atlas``, ordered by stage, then by what it found (module docstring)."""
    distributed = atlas.distributed()
    names = list(atlas.detectors)
    dets = [DetView(atlas, n, a, distributed.get(n)) for n, a in zip(names, anchors(names))]
    return sorted(dets, key=DetView.rank_key)


def stage_summary(atlas: AtlasLike, dets: list[DetView]) -> dict[str, dict[str, list[tuple[int, int]]]]:
    """Per stage, its heads by their best status there: ``{"confirmed": [...], "attention-defined": [...],
    "unconfirmed": [...]}`` (a head counts once per stage, under the best status of its labels in that stage;
    only detectors that place heads count; a head labelled in several stages appears in each)."""
    out: dict[str, dict[str, set[tuple[int, int]]]] = {s: {k: set() for k in STATUSES} for s in STAGE_ORDER}
    for d in dets:
        if d.skipped or not d.places_stage or d.stage not in out:
            continue
        for lh, st in d.status.items():
            out[d.stage][st if st in STATUSES else "unconfirmed"].add(lh)
    result: dict[str, dict[str, list[tuple[int, int]]]] = {}
    for s, by in out.items():
        taken: set[tuple[int, int]] = set()
        result[s] = {}
        for st in STATUSES:
            result[s][st] = sorted(by[st] - taken)
            taken |= by[st]
    return result


def top_heads_by_stage(dets: list[DetView], k: int = 4) -> dict[str, list[tuple[tuple[int, int], DetView, str]]]:
    """Per stage up to ``k`` heads: confirmed ones first, then attention-defined; each once, with the detector
    whose label on it is most significant (q, then the effect in the rule's direction)."""
    out: dict[str, list[tuple[tuple[int, int], DetView, str]]] = {}
    for s in STAGE_ORDER:
        cands = []
        for d in dets:
            if d.stage != s or d.skipped or not d.places_stage:
                continue
            for lh, st in d.status.items():
                if st in ("confirmed", "attention-defined"):
                    q = float(d.f["q_value"][lh])
                    de = float(d.directed_effect()[lh])
                    cands.append((STATUSES.index(st), q if math.isfinite(q) else math.inf,
                                  -de if math.isfinite(de) else math.inf, lh, d, st))
        cands.sort(key=lambda c: c[:3] + (c[3],))
        seen: set[tuple[int, int]] = set()
        out[s] = []
        for *_, lh, d, st in cands:
            if lh not in seen and len(out[s]) < k:
                seen.add(lh)
                out[s].append((lh, d, st))
    return out
