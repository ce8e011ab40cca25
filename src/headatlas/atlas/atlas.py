"""The Atlas: every detector's scores, null baselines and labels for one model, with the
evidence behind each label, and the queries over them.

Heads are named ``L{layer}H{head}`` everywhere. An atlas is built by :func:`headatlas.scan`
(or from results directly) and is self-contained: it keeps each detector's stage and method, so
it can be read back and rendered without the detectors being installed.

This module is the query API. Its other forms live beside it: the records it hands out
(:mod:`headatlas.atlas.views`: :class:`DetectorMeta`, :class:`Evidence`, :class:`HeadView`, :func:`head_name`,
re-exported here), its tables and text (:mod:`headatlas.atlas.tables`), its JSON
(:mod:`headatlas.atlas.json_io`), its HTML (:mod:`headatlas.atlas.report`) and circuits
(:mod:`headatlas.atlas.circuit`).
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from ..errors import InputError, InputTypeError
from . import schema
from .records import (ATTENTION_DEFINED, CONFIRMED, PER_HEAD_FIELDS, STAGED_STATUSES, STAGES, STATUSES, UNCONFIRMED,
                      DetectorResult)
from .views import MIXED, DetectorMeta, Evidence, HeadView, head_name

if TYPE_CHECKING:
    import pandas as pd

    from .circuit import Circuit
    from .specificity import Specificity

__all__ = ["MIXED", "Atlas", "DetectorMeta", "Evidence", "HeadView", "head_name"]


class Atlas:
    """Detector results for one model.

    ``model``: the model's info (``ModelInfo.to_dict()`` plus a weights ``fingerprint``);
    ``results``: detector name -> :class:`DetectorResult` (scores ``[n_layers, n_heads]``);
    ``meta``: detector name -> :class:`DetectorMeta`; ``timings``: seconds per detector;
    ``settings``: the scan settings (quick, n_prompts, batch_size, ...).
    """

    def __init__(self, model: dict[str, Any], results: dict[str, DetectorResult] | Iterable[DetectorResult],
                 meta: dict[str, DetectorMeta], *, seed: int = 0, settings: dict[str, Any] | None = None,
                 timings: dict[str, float] | None = None, headatlas_version: str | None = None,
                 created: str | None = None, shared_passes: dict[str, str] | None = None,
                 notes: list[str] | None = None, writes: dict[str, Any] | None = None,
                 specificity: "Specificity | None" = None) -> None:
        from ..version import __version__

        if not isinstance(results, dict):
            results = {r.name: r for r in results}
        self.model = dict(model)
        self.n_layers = int(self.model["n_layers"])
        self.n_heads = int(self.model["n_heads"])
        self._results: dict[str, DetectorResult] = {}
        self.meta: dict[str, DetectorMeta] = {}
        for name, r in results.items():
            if name not in meta:
                raise InputError(f"no DetectorMeta for detector {name!r}")
            if meta[name].stage not in STAGES:
                raise InputError(f"detector {name!r} has unknown stage {meta[name].stage!r}")
            _check_shapes(r, self.n_layers, self.n_heads)
            self._results[name] = r
            self.meta[name] = meta[name]
        self.seed = int(seed)
        self.settings = dict(settings or {})
        self.timings = {k: float(v) for k, v in (timings or {}).items()}
        self.shared_passes = {str(k): str(v) for k, v in (shared_passes or {}).items()}
        self.notes = [str(n) for n in (notes or [])]
        self.writes = dict(writes or {})   # per head, top OV output tokens (atlas.writes; {} when not recorded)
        self.headatlas_version = headatlas_version or __version__
        self.created = created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        _correct_causal_checks(self._results)
        self.specificity_matrix: Specificity | None = None
        if specificity is not None:
            self.set_specificity(specificity)

    # ----- access -------------------------------------------------------------------------------
    @property
    def detectors(self) -> list[str]:
        """Names of the detectors held, in scan order."""
        return list(self._results)

    @property
    def model_name(self) -> str:
        return str(self.model.get("name", ""))

    def result(self, name: str) -> DetectorResult:
        """The :class:`DetectorResult` of detector ``name`` (every query goes through here)."""
        if not isinstance(name, str):
            raise InputTypeError(f"a detector name must be a string, got {type(name).__name__} {name!r:.40}; this "
                                 f"atlas holds: {', '.join(self.detectors) or 'none'}")
        try:
            return self._results[name]
        except KeyError:
            held = ", ".join(self.detectors) or "none"
            raise InputError(f"this atlas holds no detector {name!r}; it holds: {held}") from None

    def scores(self, name: str) -> np.ndarray:
        """``[n_layers, n_heads]`` scores of detector ``name`` (NaN where it was skipped)."""
        return np.array(self.result(name).scores, copy=True)

    def p_values(self, name: str) -> np.ndarray:
        """``[n_layers, n_heads]`` permutation p-values of detector ``name``."""
        return np.array(self.result(name).p_value, copy=True)

    def q_values(self, name: str) -> np.ndarray:
        """``[n_layers, n_heads]`` Benjamini-Hochberg q-values of detector ``name``."""
        return np.array(self.result(name).q_value, copy=True)

    def causal(self, name: str) -> dict[str, Any] | None:
        """The causal check of detector ``name``: ``metric, kind, heads, effect, random_effects, p_value,
        n_prompts`` (and ``baseline, expected, random_median, description, note``); ``kind == "none"``
        with a ``note`` where the head type has no behavioural metric; ``None`` where none was run."""
        c = self.result(name).causal
        return None if c is None else c.as_mapping()

    def labelled(self, name: str, status: str | Iterable[str] | None = None) -> list[tuple[int, int]]:
        """Heads that detector ``name`` labelled, best first (``[]``: none found, distributed, or skipped);
        with ``status`` (``"confirmed"``, ``"unconfirmed"``, ``"attention-defined"`` or a collection of them),
        only the labels of that status."""
        heads = [(int(layer), int(head)) for layer, head in self.result(name).labelled]
        if status is None:
            return heads
        want = _check_statuses(status)
        return [lh for lh in heads if self.label_status(name, *lh) in want]

    def label_status(self, name: str, layer: int, head: int) -> str | None:
        """The status of detector ``name``'s label on head ``(layer, head)``: ``"confirmed"`` (the statistic
        passes and the detector's causal check passes after Benjamini-Hochberg across all the atlas's checks,
        and the head's own ablation moves the metric the expected way where it was measured),
        ``"unconfirmed"`` (the statistic passes; the check failed, was not significant or did not run), or
        ``"attention-defined"`` (the head type has no behavioural metric); ``None`` if not labelled."""
        self._check_head(layer, head)
        r = self.result(name)
        lh = (int(layer), int(head))
        if lh not in {(int(a), int(b)) for a, b in r.labelled}:
            return None
        return self._status(name, r, lh)

    def _status(self, name: str, r: DetectorResult, lh: tuple[int, int]) -> str:
        if self.meta[name].attention_defined:
            return ATTENTION_DEFINED
        c = r.causal
        if c is not None and c.passed and lh in set(c.heads) and c.head_supports(head_name(*lh)):
            return CONFIRMED
        return UNCONFIRMED

    def status_counts(self, name: str) -> dict[str, int]:
        """Detector ``name``'s labels counted by status (every status present, 0 where none)."""
        r = self.result(name)
        out = {s: 0 for s in STATUSES}
        for lh in r.labelled:
            out[self._status(name, r, (int(lh[0]), int(lh[1])))] += 1
        return out

    def specificity(self, values: str = "z") -> "pd.DataFrame":
        """The stored specificity matrix (:mod:`headatlas.atlas.specificity`): detector (its confirmed set ablated)
        x metric family, in z units of each metric's random-set spread (``values="effect"``: raw mean changes);
        ``attrs`` hold the raw effects, the reference check of each cell and the set sizes. InputError when the
        atlas holds none (compute it with :func:`headatlas.specificity` or ``headatlas specificity``)."""
        if self.specificity_matrix is None:
            raise InputError("this atlas holds no specificity matrix; compute it with headatlas.specificity(model, "
                             "atlas) or `headatlas specificity ATLAS --model MODEL` (scans with --specificity or "
                             "--detectors all store it)")
        return self.specificity_matrix.table(values)

    def set_specificity(self, matrix: "Specificity") -> None:
        """Keep ``matrix`` (its rows and references must be detectors of this atlas, its heads inside the model)."""
        from .specificity import Specificity

        if not isinstance(matrix, Specificity):
            raise InputTypeError(f"a specificity matrix must be a Specificity, got {type(matrix).__name__}")
        Specificity.from_dict(matrix.to_dict(), n_layers=self.n_layers, n_heads=self.n_heads,
                              detectors=self.detectors)   # the same validation as a file's
        self.specificity_matrix = matrix

    def distributed(self) -> dict[str, dict[str, Any]]:
        """Detectors whose statistic passed for so many heads (more than a quarter) that they report a
        distributed property instead of head labels: name -> ``{"n_pass", "n_heads", ...}``."""
        return {n: dict(r.details["distributed"]) for n, r in self._results.items()
                if isinstance(r.details.get("distributed"), dict)}

    def skipped(self) -> dict[str, str]:
        """Detector name -> the reason it could not run on this model."""
        return {n: r.skipped for n, r in self._results.items() if r.skipped}

    def evidence(self, name: str, layer: int, head: int) -> Evidence:
        self._check_head(layer, head)
        r = self.result(name)
        lh = (int(layer), int(head))
        labelled = lh in {(int(a), int(b)) for a, b in r.labelled}
        return Evidence(detector=name, stage=self.meta[name].stage, layer=lh[0], head=lh[1],
                        score=float(r.scores[lh]), null_mean=float(r.null_mean[lh]), null_std=float(r.null_std[lh]),
                        effect=float(r.effect[lh]), ci_low=float(r.ci_low[lh]), ci_high=float(r.ci_high[lh]),
                        p_value=float(r.p_value[lh]), q_value=float(r.q_value[lh]), stability=float(r.stability[lh]),
                        labelled=labelled, extras={k: _scalar(v[lh]) for k, v in r.extras.items() if self._per_head(v)},
                        status=self._status(name, r, lh) if labelled else None)

    def head(self, layer: int, head: int) -> HeadView:
        """The labels of head ``(layer, head)`` with their stage and evidence, and every other
        detector's numbers for it (skipped detectors are left out)."""
        self._check_head(layer, head)
        ev = {n: self.evidence(n, layer, head) for n, r in self._results.items() if not r.skipped}
        rank = {CONFIRMED: 0, ATTENTION_DEFINED: 1, UNCONFIRMED: 2}
        labels = sorted((e for e in ev.values() if e.labelled),
                        key=lambda e: (rank.get(e.status or "", 3), _finite_or(e.q_value, math.inf)))
        return HeadView(layer=int(layer), head=int(head), labels=labels, evidence=ev)

    def stages(self, status: str | Iterable[str] = STAGED_STATUSES) -> dict[tuple[int, int], frozenset[str]]:
        """Per head ``(layer, head)``, the set of stages (KR/ICI/LR/EP) of its labels of the given ``status``
        (default: confirmed and attention-defined; an unconfirmed label places no head). Labels of detectors
        with ``places_stage=False`` (attention sinks) do not place a head."""
        want = _check_statuses(status)
        out: dict[tuple[int, int], set[str]] = {(la, h): set() for la in range(self.n_layers) for h in range(self.n_heads)}
        for name, r in self._results.items():
            if not self.meta[name].places_stage:
                continue
            for lh in r.labelled:
                lh = (int(lh[0]), int(lh[1]))
                if self._status(name, r, lh) in want:
                    out[lh].add(self.meta[name].stage)
        return {k: frozenset(v) for k, v in out.items()}

    def stage_heads(self, status: str | Iterable[str] = STAGED_STATUSES) -> dict[str, list[tuple[int, int]]]:
        """Per stage (KR, ICI, LR, EP), the heads labelled by a detector of that stage with a label of the given
        ``status`` (default: confirmed and attention-defined); a head labelled in several stages counts in each
        (sorted by layer, head)."""
        out: dict[str, set[tuple[int, int]]] = {s: set() for s in STAGES}
        for lh, stages in self.stages(status).items():
            for st in stages:
                out[st].add(lh)
        return {s: sorted(v) for s, v in out.items()}

    def stage_counts(self) -> dict[str, dict[str, int]]:
        """Per stage, how many heads it holds by status: ``{"KR": {"confirmed": 3, "attention-defined": 0,
        "unconfirmed": 14}, ...}`` (a head counts under each status it has in that stage)."""
        return {s: {st: len(self.stage_heads(st)[s]) for st in STATUSES} for s in STAGES}

    def stage_grid(self, status: str | Iterable[str] = STAGED_STATUSES) -> np.ndarray:
        """``[n_layers, n_heads]`` of str: ``""`` (no label of the given status), a stage code, or ``"mixed"``
        (several stages; :meth:`stage_heads` counts such a head in each of them)."""
        grid = np.full((self.n_layers, self.n_heads), "", dtype=object)
        for (layer, h), st in self.stages(status).items():
            grid[layer, h] = next(iter(st)) if len(st) == 1 else (MIXED if st else "")
        return grid

    def top_heads(self, name: str, k: int = 5, *, labelled_only: bool = True) -> list[Evidence]:
        """The ``k`` best heads of detector ``name``: its labelled heads, most significant first
        (``labelled_only``), or every head with a finite score ranked in the direction of the detector's rule
        (``greater``: highest score first; ``less``: lowest score first, e.g. negative name movers;
        ``two-sided``: largest ``|effect|`` first). The one place the atlas, the CLI and the write-ups rank heads."""
        from ..checks import check_bool, check_count

        k = check_count(k, "k", minimum=0)
        labelled_only = check_bool(labelled_only, "labelled_only")
        r = self.result(name)
        if labelled_only:
            heads = [tuple(lh) for lh in r.labelled]   # most significant first
        else:
            key = {"less": -r.scores, "two-sided": np.abs(r.effect)}.get(r.rule.direction, r.scores)
            flat = np.where(np.isfinite(r.scores) & np.isfinite(key), key, -np.inf).ravel()
            order = [int(i) for i in np.argsort(-flat, kind="stable") if np.isfinite(flat[i])]
            heads = [divmod(i, self.n_heads) for i in order]
        return [self.evidence(name, layer, h) for layer, h in heads[:k]]

    def best_head_hint(self, name: str) -> str:
        """``" (best L24H4: score -0.511, effect -0.511, p 0.003, q 0.12)"``: the head closest to a label of
        detector ``name`` in its rule's direction (:meth:`top_heads` with ``labelled_only=False``), for a "none
        found"; ``""`` when no head has a score."""
        best = self.top_heads(name, 1, labelled_only=False)
        if not best:
            return ""
        b = best[0]
        return (f" (best {b.name}: score {b.score:.3g}, effect {b.effect:.3g}, p {b.p_value:.2g}, "
                f"q {b.q_value:.2g})")

    # ----- tables -------------------------------------------------------------------------------
    # ----- tables (headatlas.atlas.tables) -------------------------------------------------------
    def to_dataframe(self) -> "pd.DataFrame":
        """One row per head x detector: see :func:`headatlas.atlas.tables.to_dataframe`."""
        from .tables import to_dataframe

        return to_dataframe(self)

    def summary(self, top: int = 5) -> str:
        """A plain-text summary: per detector, its top labelled heads (score, null, z), "none found",
        or the reason it was skipped (:func:`headatlas.atlas.tables.summary`)."""
        from .tables import summary

        return summary(self, top)

    def __repr__(self) -> str:
        return (f"Atlas({self.model_name!r}, {self.n_layers}x{self.n_heads} heads, detectors={self.detectors}, "
                f"seed={self.seed})")

    # ----- JSON (headatlas.atlas.json_io) ---------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The atlas as plain JSON (schema ``headatlas.atlas/2``)."""
        from .json_io import atlas_to_dict

        return atlas_to_dict(self)

    @classmethod
    def from_dict(cls, doc: Any, source: str = "atlas") -> "Atlas":
        """Inverse of :meth:`to_dict`; :class:`AtlasFileError` on anything malformed."""
        from .json_io import atlas_from_dict

        return atlas_from_dict(cls, doc, source)

    def save(self, path: str | os.PathLike) -> str:
        """Write the atlas as JSON, atomically (temp file + ``os.replace``); returns the path."""
        return str(schema.atomic_write_text(path, schema.dumps(self.to_dict()) + "\n"))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Atlas":
        """Read an atlas written by :meth:`save`; :class:`AtlasFileError` on a missing, corrupt or foreign
        file, or one written with a newer schema."""
        return cls.from_dict(schema.read_json(path), source=str(path))

    # ----- circuits -------------------------------------------------------------------------------
    def circuit(self, name: str) -> "Circuit":
        """The circuit ``name`` (``"ioi"``) read from this atlas's labels: nodes (heads with their roles, effects
        and q) and sender -> receiver edges (measured path-patching effects; pattern roles unmeasured). See
        :mod:`headatlas.atlas.circuit`. InputError for an unknown name or an atlas without the circuit's detectors."""
        from .circuit import build_circuit

        return build_circuit(self, name)

    # ----- HTML -----------------------------------------------------------------------------------
    def to_html(self) -> str:
        """One self-contained HTML page (plotly.js inlined once): see :mod:`headatlas.atlas.report`."""
        from .report import render_html

        return render_html(self)

    def save_html(self, path: str | os.PathLike) -> str:
        return str(schema.atomic_write_text(path, self.to_html()))

    # ----- helpers --------------------------------------------------------------------------------
    def _per_head(self, v: Any) -> bool:
        """An extra with one value per head (``[n_layers, n_heads]``); others live only in the JSON."""
        return np.shape(v) == (self.n_layers, self.n_heads)

    def _check_head(self, layer: int, head: int) -> None:
        from ..checks import check_int

        layer, head = check_int(layer, "layer"), check_int(head, "head")   # 1.5 is refused, never truncated
        if not 0 <= layer < self.n_layers or not 0 <= head < self.n_heads:
            raise InputError(f"no head {head_name(layer, head)} in this atlas: the model has {self.n_layers} layers "
                             f"x {self.n_heads} heads (L0H0..L{self.n_layers - 1}H{self.n_heads - 1})")


def _check_shapes(r: DetectorResult, n_layers: int, n_heads: int) -> None:
    want = (n_layers, n_heads)
    for key in PER_HEAD_FIELDS:
        shape = np.shape(getattr(r, key))
        if shape != want:
            raise InputError(f"detector {r.name!r}: {key} has shape {shape}, expected [n_layers, n_heads] = {list(want)}")
    for layer, head in r.labelled:
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise InputError(f"detector {r.name!r} labelled {head_name(layer, head)}, outside the model")
    if r.causal is not None:
        schema.check_causal(r.causal, r.name, n_layers, n_heads)


def _scalar(x: Any) -> float | str:
    if isinstance(x, (str, np.str_)):
        return str(x)
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _finite_or(x: float, default: float) -> float:
    return x if math.isfinite(x) else default


def _check_statuses(status: Any) -> frozenset[str]:
    """A status name or a collection of them -> a frozenset; InputError naming the valid ones otherwise."""
    items = [status] if isinstance(status, str) else status
    if not isinstance(items, (list, tuple, set, frozenset)):
        raise InputTypeError(f"status must be one of {', '.join(STATUSES)} or a collection of them, got "
                         f"{type(status).__name__}")
    bad = [s for s in items if s not in STATUSES]
    if bad or not items:
        raise InputError(f"unknown label status {bad[0] if bad else 'none given'!r:.60}; use {', '.join(STATUSES)}")
    return frozenset(items)


def _correct_causal_checks(results: dict[str, DetectorResult]) -> None:
    """Benjamini-Hochberg across every causal check that ran (a finite p on at least one head): each such
    check gets its ``q_value`` (a check that ablated nothing gets none and can never pass)."""
    from dataclasses import replace

    from scipy.stats import false_discovery_control

    ran = [n for n, r in results.items() if r.causal is not None and r.causal.ran and r.causal.heads
           and math.isfinite(r.causal.p_value)]
    if not ran:
        return
    q = false_discovery_control(np.array([results[n].causal.p_value for n in ran], dtype=float),  # type: ignore[union-attr]
                                method="bh")
    for n, qv in zip(ran, q):
        results[n].causal = replace(results[n].causal, q_value=float(qv))   # type: ignore[arg-type]
