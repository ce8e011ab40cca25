"""The specificity matrix of an atlas, as a plain record (numbers only: no torch, no detectors).

For every detector whose causal check passed (its set is confirmed), the set the check tested was ablated and
**every** behavioural metric family of the atlas measured on it. A cell is in units of the metric's own random-set
spread::

    z = sign * (effect - median(random effects)) / std(random effects)

where ``effect`` is the mean change of the metric (intervened - clean) when the row's set is intervened on with
the column's intervention, and ``median``, ``std`` (ddof 1) and ``sign`` (+1 when the column's heads are expected
to raise the metric, -1 when they lower it) come from the stored causal check the cell is measured against, its
:class:`Reference`. So ``z > 0`` means "moves the metric the way that family's own heads do", in standard
deviations of what layer-matched random sets of that check do; ``z ~ 0`` means "like a random set".

Which check a cell is measured against:

- a row's **own** family column (the diagonal) uses the row's own check: its behaviour (prompts, metric,
  intervention), its random sets and its direction. Its effect is the stored check's effect, re-measured (the
  computation checks that it reproduces it);
- every other column uses the column's **reference** check: one detector of that family (a confirmed one when
  there is one), whose behaviour is run with the row's set and whose random sets give the spread.

Axes: rows are detectors (the ablated sets, in atlas order), columns are metric families
(:data:`headatlas.detectors.base.METRIC_FAMILIES`). ``effects [n_rows, n_families]`` is NaN where a cell was not
measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from ..errors import AtlasFileError, InputError
from .records import CausalCheck

if TYPE_CHECKING:
    import pandas as pd

Head = tuple[int, int]

MAX_ROWS = 256          # detectors in one matrix (33 are registered)
MAX_FAMILIES = 64       # metric families (15 are declared)
MAX_NAME = 200          # characters of a detector or family name
MAX_TEXT = 2000         # characters of a metric, intervention or note
MAX_NOTES = 256
ROW_AXIS = "ablated set (detector)"
COLUMN_AXIS = "metric family"
DIAGONAL_RTOL, DIAGONAL_ATOL = 1e-3, 1e-4   # a re-measured diagonal effect equals the stored check's within these


@dataclass(frozen=True)
class Reference:
    """The spread a cell is measured in: detector ``detector``'s stored check on metric family ``family``
    (``metric``, ``expected`` direction, intervention ``kind``), the ``median`` and ``std`` (ddof 1) of its
    ``n_random`` random sets' effects."""

    detector: str
    family: str
    metric: str
    expected: str
    kind: str
    median: float
    std: float
    n_random: int

    @classmethod
    def from_check(cls, detector: str, family: str, c: CausalCheck) -> "Reference":
        r = np.asarray(c.random_effects, dtype=float)
        std = float(np.std(r, ddof=1)) if r.size >= 2 else math.nan
        return cls(detector=detector, family=family, metric=c.metric, expected=c.expected, kind=c.kind,
                   median=float(np.median(r)) if r.size else math.nan, std=std, n_random=int(r.size))

    @property
    def sign(self) -> float:
        return 1.0 if self.expected == "increase" else -1.0

    def z(self, effect: float) -> float:
        """``sign * (effect - median) / std``; NaN where the spread is 0 or unknown."""
        if not (math.isfinite(effect) and math.isfinite(self.std) and self.std > 0):
            return math.nan
        return self.sign * (effect - self.median) / self.std

    def to_dict(self) -> dict[str, Any]:
        from .schema import encode

        return {"detector": self.detector, "family": self.family, "metric": self.metric, "expected": self.expected,
                "kind": self.kind, "median": encode(float(self.median)), "std": encode(float(self.std)),
                "n_random": int(self.n_random)}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "Reference":
        from .schema import _check_keys, decode

        if not isinstance(d, dict):
            raise AtlasFileError(f"{where}: a reference must be an object")
        _check_keys(d, ("detector", "family", "metric", "expected", "kind", "median", "std", "n_random"), where)
        if d["expected"] not in ("increase", "decrease"):
            raise AtlasFileError(f"{where}: expected must be 'increase' or 'decrease', got {d['expected']!r:.40}")
        n = d["n_random"]
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise AtlasFileError(f"{where}: n_random must be an integer >= 0, got {n!r:.40}")
        median, std = (_float(decode(d[k]), f"{where}: {k}") for k in ("median", "std"))
        return cls(detector=_text(d["detector"], f"{where}: detector", MAX_NAME),
                   family=_text(d["family"], f"{where}: family", MAX_NAME),
                   metric=_text(d["metric"], f"{where}: metric", MAX_TEXT),
                   expected=d["expected"], kind=_text(d["kind"], f"{where}: kind", MAX_TEXT),
                   median=median, std=std, n_random=n)


@dataclass(frozen=True, eq=False)
class Specificity:
    """The specificity matrix (module docstring).

    ``rows``: the detectors whose set was ablated; ``families``: the metric families (columns); ``heads``: row ->
    the ablated set (the heads its passing check tested); ``effects [n_rows, n_families]``: the mean change of each
    column's metric (NaN: not measured); ``columns``: family -> its reference detector; ``references``: detector ->
    :class:`Reference` (every column's reference and every row's own check); ``notes``: what was left out and why;
    ``seed``, ``quick``: the settings the behaviours were built with."""

    rows: tuple[str, ...]
    families: tuple[str, ...]
    heads: dict[str, tuple[Head, ...]]
    effects: np.ndarray
    columns: dict[str, str]
    references: dict[str, Reference]
    notes: tuple[str, ...] = ()
    seed: int = 0
    quick: bool = False
    n_confirmed: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        e = np.asarray(self.effects, dtype=float)
        if e.shape != (len(self.rows), len(self.families)):
            raise InputError(f"specificity effects have shape {list(e.shape)}, expected [{len(self.rows)} rows, "
                             f"{len(self.families)} families]")
        object.__setattr__(self, "effects", e)
        for what, names, cap in (("rows", self.rows, MAX_ROWS), ("families", self.families, MAX_FAMILIES)):
            if len(names) > cap or len(set(names)) != len(names):
                raise InputError(f"specificity {what}: at most {cap} distinct names, got {len(names)}")
        missing = [r for r in self.rows if r not in self.heads or r not in self.references]
        missing += [f for f in self.families if self.columns.get(f) not in self.references]
        if missing:
            raise InputError(f"specificity matrix: no set or reference for {missing[0]!r:.60}")
        bad = [r for r in self.rows if self.references[r].family not in self.families]
        if bad:
            raise InputError(f"specificity matrix: row {bad[0]!r:.60}'s own family is not a column")

    # ----- reading ---------------------------------------------------------------------------------------
    def reference_of(self, row: str, family: str) -> Reference:
        """The check cell ``(row, family)`` is measured against: the row's own on its own family, else the column's."""
        own = self.references[row]
        return own if own.family == family else self.references[self.columns[family]]

    def z(self) -> np.ndarray:
        """``[n_rows, n_families]`` z of every cell (NaN where not measured or the spread is 0)."""
        out = np.full(self.effects.shape, np.nan)
        for i, r in enumerate(self.rows):
            for j, f in enumerate(self.families):
                out[i, j] = self.reference_of(r, f).z(float(self.effects[i, j]))
        return out

    def diagonal(self) -> dict[str, tuple[float, float]]:
        """Row -> ``(effect, z)`` on its own family (its own check re-measured)."""
        z = self.z()
        return {r: (float(self.effects[i, self.families.index(self.references[r].family)]),
                    float(z[i, self.families.index(self.references[r].family)])) for i, r in enumerate(self.rows)}

    def table(self, values: str = "z") -> "pd.DataFrame":
        """Rows x families DataFrame of ``values``: ``"z"`` (default) or ``"effect"`` (raw mean changes). ``attrs``:
        ``values``, ``effect`` and ``reference`` (row -> family -> value / reference detector) and ``n_heads``
        (row -> size of the ablated set)."""
        import pandas as pd

        if values not in ("z", "effect"):
            raise InputError(f"values must be 'z' or 'effect', got {values!r:.40}")
        data = self.z() if values == "z" else self.effects
        df = pd.DataFrame(data, index=pd.Index(list(self.rows), name=ROW_AXIS),
                          columns=pd.Index(list(self.families), name=COLUMN_AXIS))
        df.attrs = {"values": values,
                    "effect": {r: {f: float(self.effects[i, j]) for j, f in enumerate(self.families)}
                               for i, r in enumerate(self.rows)},
                    "reference": {r: {f: self.reference_of(r, f).detector for f in self.families} for r in self.rows},
                    "n_heads": {r: len(self.heads[r]) for r in self.rows}}
        return df

    def overlap(self) -> "pd.DataFrame":
        """Rows x rows: how many heads two ablated sets share (the diagonal: each set's size). A large
        off-diagonal z between two rows that share most heads is the same heads seen through two detectors."""
        import pandas as pd

        sets = [set(self.heads[r]) for r in self.rows]
        return pd.DataFrame([[len(a & b) for b in sets] for a in sets], index=pd.Index(list(self.rows), name=ROW_AXIS),
                            columns=pd.Index(list(self.rows), name=ROW_AXIS))

    # ----- JSON ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        from .schema import encode_array

        return {"rows": list(self.rows), "families": list(self.families),
                "heads": {r: [[int(a), int(b)] for a, b in self.heads[r]] for r in self.rows},
                "n_confirmed": {r: int(self.n_confirmed.get(r, 0)) for r in self.rows},
                "effects": encode_array(self.effects), "columns": dict(self.columns),
                "references": {k: v.to_dict() for k, v in self.references.items()}, "notes": list(self.notes),
                "seed": int(self.seed), "quick": bool(self.quick)}

    @classmethod
    def from_dict(cls, d: Any, *, n_layers: int, n_heads: int, detectors: Iterable[str],
                  where: str = "specificity") -> "Specificity":
        """Inverse of :meth:`to_dict`, validated against the atlas (rows and references among its ``detectors``,
        heads inside the model, sizes bounded before anything is allocated); AtlasFileError otherwise."""
        from .schema import _check_keys, decode_array

        if not isinstance(d, dict):
            raise AtlasFileError(f"{where}: expected an object")
        _check_keys(d, ("rows", "families", "heads", "n_confirmed", "effects", "columns", "references", "notes",
                        "seed", "quick"), where)
        held = set(detectors)
        rows = _names(d["rows"], f"{where}: rows", MAX_ROWS, held)
        families = _names(d["families"], f"{where}: families", MAX_FAMILIES, None)
        heads = {r: _head_set(_get(d["heads"], r, where), f"{where}: heads of {r!r:.60}", n_layers, n_heads)
                 for r in rows}
        conf = {r: _count(_get(d["n_confirmed"], r, where), f"{where}: n_confirmed of {r!r:.60}") for r in rows}
        refs_in = d["references"]
        if not isinstance(refs_in, dict) or len(refs_in) > MAX_ROWS + MAX_FAMILIES:
            raise AtlasFileError(f"{where}: references must be an object of at most {MAX_ROWS + MAX_FAMILIES} entries")
        refs = {_text(k, f"{where}: reference", MAX_NAME): Reference.from_dict(v, f"{where}: reference {k!r:.60}")
                for k, v in refs_in.items()}
        if any(k not in held or v.detector != k for k, v in refs.items()):
            raise AtlasFileError(f"{where}: a reference names a detector this atlas does not hold")
        cols = d["columns"]
        if not isinstance(cols, dict) or set(cols) != set(families):
            raise AtlasFileError(f"{where}: columns must name one reference detector per family")
        notes = d["notes"]
        if not isinstance(notes, list) or len(notes) > MAX_NOTES:
            raise AtlasFileError(f"{where}: notes must be a list of at most {MAX_NOTES} strings")
        if not isinstance(d["quick"], bool) or not isinstance(d["seed"], int) or isinstance(d["seed"], bool):
            raise AtlasFileError(f"{where}: seed must be an integer and quick a boolean")
        try:
            return cls(rows=rows, families=families, heads=heads,
                       effects=decode_array(d["effects"], (len(rows), len(families))).astype(float),
                       columns={str(k): _text(v, f"{where}: column {k!r:.60}", MAX_NAME) for k, v in cols.items()},
                       references=refs, notes=tuple(_text(n, f"{where}: note", MAX_TEXT) for n in notes),
                       seed=d["seed"], quick=d["quick"], n_confirmed=conf)
        except InputError as exc:
            raise AtlasFileError(f"{where}: {exc}") from None


def _text(x: Any, where: str, cap: int) -> str:
    if not isinstance(x, str) or len(x) > cap:
        raise AtlasFileError(f"{where}: expected a string of at most {cap} characters, got {type(x).__name__}")
    return x


def _float(x: Any, where: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise AtlasFileError(f"{where}: expected a number, got {type(x).__name__}")
    return float(x)


def _count(x: Any, where: str) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or x < 0:
        raise AtlasFileError(f"{where}: expected an integer >= 0, got {x!r:.40}")
    return x


def _get(d: Any, key: str, where: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise AtlasFileError(f"{where}: nothing stored for row {key!r:.60}")
    return d[key]


def _names(x: Any, where: str, cap: int, held: set[str] | None) -> tuple[str, ...]:
    if not isinstance(x, list) or len(x) > cap:
        raise AtlasFileError(f"{where}: expected a list of at most {cap} names")
    names = tuple(_text(n, where, MAX_NAME) for n in x)
    if len(set(names)) != len(names):
        raise AtlasFileError(f"{where}: a name is listed twice")
    if held is not None and any(n not in held for n in names):
        raise AtlasFileError(f"{where}: {next(n for n in names if n not in held)!r:.60} is not a detector of this atlas")
    return names


def _head_set(x: Any, where: str, n_layers: int, n_heads: int) -> tuple[Head, ...]:
    if not isinstance(x, list) or not 0 < len(x) <= n_layers * n_heads:
        raise AtlasFileError(f"{where}: expected a list of 1..{n_layers * n_heads} heads")
    out = []
    for h in x:
        if (not isinstance(h, list) or len(h) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in h)
                or not (0 <= h[0] < n_layers and 0 <= h[1] < n_heads)):
            raise AtlasFileError(f"{where}: {h!r:.40} is not a head of this model ({n_layers} layers x {n_heads} heads)")
        out.append((h[0], h[1]))
    return tuple(out)
