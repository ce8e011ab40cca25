"""The plan of a sweep: its models (:func:`expand_specs`: names, checkpoint folders in natural order,
``id@revision``), its seeds (:func:`parse_seeds`), and one job per (model, seed) with its own output folder
(:func:`plan_jobs`). Plain data only: nothing here loads a model or starts Ray."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import InputError, InputTypeError


@dataclass(frozen=True)
class SweepModel:
    """One model of a sweep: ``label`` (the ``model`` column and folder name), ``spec`` and ``revision``
    (what :func:`headatlas.load` gets), ``group`` and ``checkpoint`` (the x axis of the plots: a
    checkpoint folder and its sub-folder, or a hub id and its revision; ``group`` is "" otherwise)."""

    label: str
    spec: str
    revision: str | None = None
    group: str = ""
    checkpoint: str = ""


def natural_key(text: str) -> list[Any]:
    """Sort key that orders numbers by value: ``step-2 < step-10 < step-100``."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", text) if part]


def _safe(text: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in text).strip("-.")
    return safe[:80] or "model"


def _short(spec: str) -> str:
    stem = Path(spec.rstrip("/\\")).name or spec
    return stem[: -len(".gguf")] if stem.lower().endswith(".gguf") else stem


def checkpoint_folders(folder: Path) -> list[Path]:
    """Sub-folders of ``folder`` holding a ``config.json``, in natural order ([] when there are none)."""
    subs = [p for p in folder.iterdir() if p.is_dir() and (p / "config.json").is_file()]
    return sorted(subs, key=lambda p: natural_key(p.name))


def expand_specs(specs: Sequence[str]) -> list[SweepModel]:
    """The models of a sweep, in order: checkpoint folders expand to their checkpoints, ``id@revision``
    becomes a hub id with a revision (refused for bundled names and local paths). Labels are unique."""
    from ..models.bundled import BUNDLED

    if isinstance(specs, (str, os.PathLike)):
        specs = [os.fspath(specs)]
    if not specs:
        raise InputError("no model to sweep; pass one or more model specs (bundled names, folders, hub ids)")
    models: list[SweepModel] = []
    for raw in specs:
        if not isinstance(raw, (str, os.PathLike)) or not str(raw).strip():
            raise InputError(f"model spec {raw!r} is not a name or a path")
        spec = os.fspath(raw).strip()
        path = Path(spec).expanduser()
        if path.is_dir() and not (path / "config.json").is_file():
            subs = checkpoint_folders(path)
            if not subs:
                raise InputError(f"{path} is a folder without config.json and without checkpoint sub-folders "
                                 "(each with a config.json); pass a model folder or a folder of checkpoints")
            models += [SweepModel(label=f"{_short(spec)}/{s.name}", spec=str(s), group=_short(spec), checkpoint=s.name)
                       for s in subs]
            continue
        if "@" in spec and not path.exists():
            base, revision = spec.rsplit("@", 1)
            if not base or not revision:
                raise InputError(f"{spec!r}: write a hub model at a revision as id@revision, e.g. "
                                 "EleutherAI/pythia-160m@step1000")
            if base in BUNDLED:
                raise InputError(f"{spec!r}: {base} is a bundled model with a single version; drop @{revision}")
            if Path(base).expanduser().exists() or base.startswith((".", "/", "~")) or base.lower().endswith(".gguf"):
                raise InputError(f"{spec!r}: @revision applies to Hugging Face hub ids only; for local checkpoints "
                                 "pass their folders (or the folder that holds them)")
            models.append(SweepModel(label=spec, spec=base, revision=revision, group=base, checkpoint=revision))
            continue
        models.append(SweepModel(label=_short(spec) if path.exists() else spec, spec=spec))
    seen: dict[str, int] = {}
    unique = []
    for m in models:
        n = seen[m.label] = seen.get(m.label, 0) + 1
        unique.append(m if n == 1 else SweepModel(f"{m.label} ({n})", m.spec, m.revision, m.group, m.checkpoint))
    return unique


def _folders(models: list[SweepModel], seeds: list[int]) -> dict[tuple[str, int], str]:
    """``<model>-s<seed>`` folder names, unique even where two labels sanitise alike."""
    names: dict[tuple[str, int], str] = {}
    used: set[str] = set()
    for m in models:
        base = _safe(m.label.replace("/", "--"))
        stem, k = base, 2
        while any(f"{stem}-s{s}" in used for s in seeds):
            stem, k = f"{base}-{k}", k + 1
        for s in seeds:
            names[(m.label, s)] = f"{stem}-s{s}"
            used.add(f"{stem}-s{s}")
    return names


def parse_seeds(seeds: int | str | Sequence[int]) -> list[int]:
    """``0``, ``"0,1,2"``, ``"0-3"`` (0..3) or ``[0, 1]`` -> a list of distinct ints, in order. InputError for a
    float, a negative or too large seed, a seed listed twice, or more than :data:`~headatlas.validate.MAX_SEEDS`."""
    from ..checks import check_seed
    from ..validate import MAX_SEEDS

    items: list[int] = []
    if isinstance(seeds, str):
        for part in (p.strip() for p in seeds.split(",")):
            if not part:
                continue
            m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
            if m is None and not re.fullmatch(r"\d+", part):
                raise InputError(f"seeds {seeds!r}: write integers such as 0,1,2 or a range such as 0-3")
            lo, hi = (int(m.group(1)), int(m.group(2))) if m else (int(part), int(part))
            if hi - lo + 1 + len(items) > MAX_SEEDS:   # checked before the range is built
                raise InputError(f"seeds {seeds!r}: at most {MAX_SEEDS} seeds per sweep")
            items += range(lo, hi + 1)
    elif isinstance(seeds, (list, tuple)):
        items = list(seeds)
    elif isinstance(seeds, (str, bytes, float)) or seeds is None or not hasattr(seeds, "__index__"):
        raise InputTypeError(f"seeds must be an integer, a list of integers or a string such as '0,1' or '0-3'; got "
                             f"{type(seeds).__name__} {seeds!r:.40}")
    else:
        items = [seeds]
    out = [check_seed(s, "a seed") for s in items]
    if not out:
        raise InputError(f"seeds {seeds!r}: give at least one non-negative integer")
    if len(out) > MAX_SEEDS:
        raise InputError(f"{len(out)} seeds: at most {MAX_SEEDS} per sweep")
    twice = sorted({s for s in out if out.count(s) > 1})
    if twice:
        raise InputError(f"seeds {seeds!r:.60}: seed {twice[0]} is listed twice; list each seed once")
    return out


def plan_jobs(models: list[SweepModel], seeds: list[int], detectors: list[str], out_dir: Path, *, resume: bool,
              load: dict[str, Any], settings: dict[str, Any]) -> list[dict[str, Any]]:
    """One job per (model, seed), models first: what :func:`~headatlas.sweep.run.run_task` gets (plain data)."""
    folders = _folders(models, seeds)
    return [{"model": m.label, "spec": m.spec, "revision": m.revision, "seed": s, "detectors": detectors,
             "out": str(out_dir / folders[(m.label, s)]), "resume": bool(resume), "load": load,
             "settings": {k: settings[k] for k in ("quick", "batch_size", "n_prompts")}}
            for m in models for s in seeds]
