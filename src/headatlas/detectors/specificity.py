"""Compute an atlas's specificity matrix: ablate each confirmed set, measure every metric family.

:func:`plan` reads the atlas: the **rows** are the detectors with a behaviour (``Detector.behaviour``) whose causal
check passed (the set it tested is ablated); the **columns** are the metric families of every detector with a
behaviour whose check ran on random sets, each with a reference check (a passing one when the family has one, then
the one with the most random sets, then atlas order). :func:`compute` builds each column's
:class:`~headatlas.detectors.behaviours.Behaviour` from its reference detector (the same function, settings and
stored result as the scan's check) and runs every row's set on it as batch rows of shared passes
(:func:`headatlas.detectors.setruns.measure`). A row whose own behaviour is not the same measurement as its
column's reference (same prompts, metric and intervention; the direction may differ, e.g. memory vs context) gets
one more run on its own behaviour, so the diagonal is always the row's own check re-measured; :func:`compute`
checks that it reproduces the stored effect. The record and the meaning of a cell: :mod:`headatlas.atlas.specificity`.

:func:`specificity` is the public entry point (``headatlas.specificity(model, atlas)``); the scan calls
:func:`compute` with ``done`` / ``on_run`` to resume finished runs from ``out/partial``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ..atlas.atlas import Atlas
from ..atlas.specificity import DIAGONAL_ATOL, DIAGONAL_RTOL, Reference, Specificity
from ..errors import InputError, InputTypeError
from . import base as registry
from .behaviours import Behaviour, HeadOp
from .setruns import measure

if TYPE_CHECKING:
    import pandas as pd

    from ..models import LoadedModel
    from .base import ScanConfig

Head = tuple[int, int]
RunProgress = Callable[[int, int, str], None]          # (runs done, runs in all, what runs now)


@dataclass(frozen=True)
class Run:
    """One behaviour (detector ``source``'s) measured with the sets of ``rows``; ``key`` names it in resume files."""

    key: str
    source: str
    rows: tuple[str, ...]


@dataclass
class Plan:
    """What :func:`compute` will run: ``rows`` (detector -> its tested set), ``families`` (column order),
    ``columns`` (family -> reference detector), ``references`` (detector -> its check's spread), ``notes``."""

    rows: dict[str, tuple[Head, ...]]
    families: list[str]
    columns: dict[str, str]
    references: dict[str, Reference]
    notes: list[str] = field(default_factory=list)


def _registered(name: str) -> registry.Detector | None:
    try:
        return registry.get(name)
    except InputError:
        return None


def plan(atlas: Atlas) -> Plan:
    """Rows, columns and references of ``atlas``'s matrix (module docstring); ``notes`` say who is left out, why."""
    rows: dict[str, tuple[Head, ...]] = {}
    candidates: dict[str, list[tuple[tuple[int, int, int], str]]] = {}
    refs: dict[str, Reference] = {}
    notes: list[str] = []
    for order, name in enumerate(atlas.detectors):
        meta = atlas.meta[name]
        if meta.attention_defined:
            continue
        det = _registered(name)
        c = atlas.result(name).causal
        if det is None:
            notes.append(f"{name}: not registered in this headatlas: its behaviour cannot be rebuilt")
            continue
        if det.behaviour is None:
            continue
        if c is None or not c.ran or len(c.random_effects) < 2:
            why = "no causal check" if c is None else (c.note or "its check compared with fewer than 2 random sets")
            notes.append(f"{name}: not in the matrix ({why})")
            continue
        family = det.metric
        refs[name] = Reference.from_check(name, family, c)
        candidates.setdefault(family, []).append(((0 if c.passed else 1, -len(c.random_effects), order), name))
        if c.passed:
            rows[name] = tuple((int(a), int(b)) for a, b in c.heads)
        else:
            notes.append(f"{name}: no row (its check did not pass: p {c.p_value:.2g}, q {c.q_value:.2g}); its family "
                         "is still a column")
    columns = {f: min(c)[1] for f, c in candidates.items()}
    families = list(dict.fromkeys(r.family for r in refs.values()))
    return Plan(rows=rows, families=families, columns=columns, references=refs, notes=notes)


def _same_measurement(a: Behaviour, b: Behaviour) -> bool:
    """Whether two behaviours measure the same thing (prompts, kept positions, metric, description, intervention);
    the expected direction may differ. Unknown intervention parts (a residual vector function) never compare equal."""
    if a is b:
        return True
    if (a.metric, a.description, a.keep, a.kind) != (b.metric, b.description, b.keep, b.kind):
        return False
    if a.ids.shape != b.ids.shape or not torch.equal(a.ids, b.ids):
        return False
    if (a.mean_groups is None) != (b.mean_groups is None) or (
            a.mean_groups is not None and not torch.equal(torch.as_tensor(a.mean_groups), torch.as_tensor(b.mean_groups))):
        return False
    ia, ib = a.intervention, b.intervention
    if not (isinstance(ia, HeadOp) and isinstance(ib, HeadOp)) or (ia.op, ia.factor) != (ib.op, ib.factor):
        return False
    return (ia.vectors is None and ib.vectors is None) or (
        ia.vectors is not None and ib.vectors is not None and torch.equal(ia.vectors, ib.vectors))


def _behaviour(m: LoadedModel, cfg: ScanConfig, atlas: Atlas, name: str) -> Behaviour:
    return registry.get(name).behaviour(m, cfg, atlas.result(name))  # type: ignore[misc]


def _runs(m: LoadedModel, cfg: ScanConfig, atlas: Atlas, p: Plan) -> tuple[list[Run], dict[str, Behaviour]]:
    """The runs: one per column (its reference's behaviour with every row's set but those measured on their own
    behaviour), and one per row whose own behaviour differs from its column's reference."""
    built: dict[str, Behaviour] = {}

    def get(name: str) -> Behaviour:
        if name not in built:
            built[name] = _behaviour(m, cfg, atlas, name)
        return built[name]

    own_run: list[str] = []
    for row in p.rows:
        ref = p.columns[p.references[row].family]
        if ref != row and not _same_measurement(get(row), get(ref)):
            own_run.append(row)
    runs = [Run(f"column:{f}", p.columns[f], tuple(r for r in p.rows if r not in own_run or p.references[r].family != f))
            for f in p.families]
    runs += [Run(f"own:{r}", r, (r,)) for r in own_run]
    return [r for r in runs if r.rows], built


def _measure_run(m: LoadedModel, cfg: ScanConfig, beh: Behaviour, sets: Sequence[tuple[Head, ...]]) -> list[float]:
    """The mean change of ``beh``'s metric for each set, exactly as a causal check computes its effect."""
    clean, values = measure(m, beh, list(sets), batch_size=cfg.batch_size)
    return [float(x) for x in (values - clean[None]).mean(1)]


def compute(m: LoadedModel, cfg: ScanConfig, atlas: Atlas, *, done: Mapping[str, Mapping[str, float]] | None = None,
            on_run: Callable[[str, dict[str, float]], None] | None = None, progress: RunProgress | None = None,
            verify: bool = True) -> Specificity:
    """The matrix of ``atlas`` on model ``m`` with the scan's settings ``cfg`` (seed, quick, n_prompts, options;
    ``cfg.results`` is not read: behaviours get the atlas's results). ``done``: run key -> row -> effect of runs
    finished before (resumed); ``on_run(key, effects)`` after each new run; ``progress(done, total, what)``.
    ``verify``: InputError when a diagonal cell does not reproduce its stored check's effect (the settings differ
    from the scan's); otherwise a note."""
    p = plan(atlas)
    if not p.rows or not p.families:
        why = "no detector has a confirmed set" if not p.rows else "no metric family has a check with random sets"
        return Specificity(rows=(), families=(), heads={}, effects=np.zeros((0, 0)), columns={}, references={},
                           notes=(f"empty: {why}", *p.notes), seed=int(cfg.seed), quick=bool(cfg.quick))
    runs, built = _runs(m, cfg, atlas, p)
    done = dict(done or {})
    results: dict[str, dict[str, float]] = {}
    for i, run in enumerate(runs):
        if progress is not None:
            progress(i, len(runs), f"{run.source} ({run.key.split(':', 1)[0]}, {len(run.rows)} sets)")
        prev = done.get(run.key)
        if prev is not None and set(prev) == set(run.rows):
            results[run.key] = {r: float(prev[r]) for r in run.rows}
            continue
        beh = built.get(run.source) or _behaviour(m, cfg, atlas, run.source)
        effects = dict(zip(run.rows, _measure_run(m, cfg, beh, [p.rows[r] for r in run.rows])))
        results[run.key] = effects
        if on_run is not None:
            on_run(run.key, effects)
    if progress is not None:
        progress(len(runs), len(runs), "done")
    rec = _assemble(p, results, atlas, cfg)
    mismatch = _diagonal_mismatch(rec, atlas)
    if mismatch and verify:
        raise InputError(mismatch)
    return replace(rec, notes=rec.notes + (mismatch,)) if mismatch else rec


def _assemble(p: Plan, results: Mapping[str, Mapping[str, float]], atlas: Atlas, cfg: ScanConfig) -> Specificity:
    rows = tuple(p.rows)
    effects = np.full((len(rows), len(p.families)), np.nan)
    for j, f in enumerate(p.families):
        col = results.get(f"column:{f}", {})
        for i, r in enumerate(rows):
            own = results.get(f"own:{r}")
            if own is not None and p.references[r].family == f:
                effects[i, j] = own[r]
            elif r in col:
                effects[i, j] = col[r]
    confirmed = {r: len(atlas.labelled(r, status="confirmed")) for r in rows}
    return Specificity(rows=rows, families=tuple(p.families), heads=dict(p.rows), effects=effects,
                       columns=dict(p.columns), references=dict(p.references), notes=tuple(p.notes),
                       seed=int(cfg.seed), quick=bool(cfg.quick), n_confirmed=confirmed)


def _diagonal_mismatch(rec: Specificity, atlas: Atlas) -> str:
    """"" when each row's own cell equals its stored check's effect (same behaviour, prompts and intervention);
    otherwise what differs."""
    bad = []
    for r, (effect, _) in rec.diagonal().items():
        stored = float(atlas.result(r).causal.effect)  # type: ignore[union-attr]
        if not math.isclose(effect, stored, rel_tol=DIAGONAL_RTOL, abs_tol=DIAGONAL_ATOL):
            bad.append(f"{r}: {effect:.6g} re-measured vs {stored:.6g} stored")
    if not bad:
        return ""
    return ("the diagonal does not reproduce the stored causal checks (" + "; ".join(bad[:4]) + "): the behaviours "
            "were built with other settings than the scan's (seed, quick, n_prompts or option values)")


# ------------------------------------------------------------------------------------------ public entry point

def config_for(atlas: Atlas, *, seed: int | None = None, quick: bool | None = None, n_prompts: int | None = None,
               batch_size: int | None = None, options: dict[str, Any] | None = None) -> ScanConfig:
    """A :class:`ScanConfig` with the atlas's scan settings, where not given (the settings its checks used).
    InputError when the scan used options whose values are not given (an atlas stores option names only)."""
    from ..checks import check_bool, check_count, check_seed

    s = atlas.settings
    seed = atlas.seed if seed is None else check_seed(seed)
    quick = bool(s.get("quick", False)) if quick is None else check_bool(quick, "quick")
    stored_n = s.get("n_prompts")
    n_prompts = (stored_n if isinstance(stored_n, int) else None) if n_prompts is None else check_count(n_prompts, "n_prompts")
    batch_size = int(s.get("batch_size", 8)) if batch_size is None else check_count(batch_size, "batch_size")
    names = [n for n in atlas.detectors if _registered(n) is not None]
    options = registry.check_options(options, names) if options else {}
    missing = [o for o in s.get("options", []) if o not in options]
    if missing:
        raise InputError(f"the atlas was scanned with option(s) {', '.join(map(str, missing))[:200]}, whose values it does "
                         "not store; pass the same values (options={...}, or -O NAME=VALUE)")
    return registry.ScanConfig(seed=int(seed), n_prompts=n_prompts, batch_size=int(batch_size), quick=quick,
                               options=dict(options), results=dict(atlas._results))


def check_model(m: LoadedModel, atlas: Atlas) -> None:
    """InputError when ``m`` is not the atlas's model: other sizes, or other weights (the stored fingerprint)."""
    from ..scanfiles import model_fingerprint

    if (m.info.n_layers, m.info.n_heads) != (atlas.n_layers, atlas.n_heads):
        raise InputError(f"the model has {m.info.n_layers} layers x {m.info.n_heads} heads; the atlas is of "
                         f"{atlas.model_name!r:.60} with {atlas.n_layers} x {atlas.n_heads}: pass the atlas's model")
    stored = atlas.model.get("fingerprint")
    if stored and model_fingerprint(m) != stored:
        raise InputError(f"the model's weights are not those the atlas was scanned with ({atlas.model_name!r:.60}, "
                         f"weights fingerprint {str(stored)[:24]}): pass the atlas's model")


def load_atlas(atlas: Any) -> Atlas:
    """An :class:`Atlas`, or one read from a path (an ``atlas.json`` or the folder holding it)."""
    if isinstance(atlas, Atlas):
        return atlas
    if isinstance(atlas, (str, os.PathLike)) and not isinstance(atlas, bool):
        path = os.fspath(atlas)
        return Atlas.load(os.path.join(path, "atlas.json") if os.path.isdir(path) else path)
    raise InputTypeError(f"atlas must be an Atlas or the path of an atlas.json (or its folder), got "
                         f"{type(atlas).__name__}")


def specificity(model: Any, atlas: Any, *, seed: int | None = None, quick: bool | None = None,
                n_prompts: int | None = None, batch_size: int | None = None, options: dict[str, Any] | None = None,
                progress: RunProgress | None = None, verify: bool = True) -> "pd.DataFrame":
    """The specificity matrix of ``atlas`` (an :class:`Atlas`, or the path of its JSON / folder) on ``model``
    (anything :func:`headatlas.load` takes; it must be the atlas's model: InputError on other sizes or weights).

    Rows: the detectors whose causal check passed (their tested set is ablated); columns: the metric families of
    the atlas's checks. Each cell is ``z = sign * (effect - median) / std`` of the column metric's own random-set
    effects, with ``sign`` +1 when that family's heads raise the metric and -1 when they lower it: **positive z =
    the set moves the metric the way the family's own heads do**, in standard deviations of layer-matched random
    sets; ~0 = like a random set. The diagonal (a row's own family) is the row's own check re-measured: with
    ``verify`` an InputError when it does not reproduce the stored effect. See :mod:`headatlas.atlas.specificity`.

    ``seed``, ``quick``, ``n_prompts``, ``batch_size``: default the atlas's scan settings (what its checks used);
    ``options``: the scan's option values (required when it used any). Returns the z DataFrame (``attrs``: raw
    effects, each cell's reference check, set sizes; :meth:`Specificity.table`); an ``Atlas`` passed in keeps the
    record (``atlas.specificity()`` returns the table, ``atlas.save()`` writes it). An atlas without a confirmed set
    gives an empty table whose ``attrs["notes"]`` say why."""
    from ..models import LoadedModel, load

    a = load_atlas(atlas)
    cfg = config_for(a, seed=seed, quick=quick, n_prompts=n_prompts, batch_size=batch_size, options=options)
    if progress is not None and not callable(progress):
        raise InputTypeError("progress must be fn(done, total, what)")
    m = model if isinstance(model, LoadedModel) else load(model)
    check_model(m, a)
    rec = compute(m, cfg, a, progress=progress, verify=verify)
    a.set_specificity(rec)
    table = rec.table()
    table.attrs["notes"] = list(rec.notes)
    return table


def describe(rec: Specificity, *, digits: int = 1) -> str:
    """Plain text: the z table (each row with its set size), then the notes (for the CLI and the docs)."""
    if not rec.rows:
        return "specificity matrix: empty (" + "; ".join(rec.notes[:1]) + ")"
    z = rec.z()
    width = max(len(r) for r in rec.rows) + 5
    lines = [" " * width + " ".join(f"{f[:12]:>12}" for f in rec.families)]
    for i, r in enumerate(rec.rows):
        cells = " ".join(f"{x:>12.{digits}f}" if math.isfinite(x) else f"{'-':>12}" for x in z[i])
        lines.append(f"{r + f' ({len(rec.heads[r])})':<{width}}{cells}")
    return "\n".join(lines + [f"note: {n}" for n in rec.notes])
