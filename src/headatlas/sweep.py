"""``headatlas.sweep``: scan many models (checkpoints, sizes, families) x seeds as tasks on Ray.

Each (model, seed) is one Ray task with declared resources (``num_cpus`` / ``num_gpus``) that loads
the model and runs :func:`headatlas.scan` with ``out=DIR/<model>-s<seed>/`` (its ``atlas.json``,
``atlas.html`` and ``partial/`` for resume). Ray schedules the tasks; headatlas schedules nothing.
A local Ray cluster starts by default; ``address`` (``"auto"``, ``"ray://host:10001"``) joins one.

Results, all written atomically:

- ``DIR/sweep.csv``: one row per model x seed x detector x head, columns :data:`CSV_COLUMNS`;
- ``DIR/sweep.json``: the engine (``"ray <version>"``), the specs, the settings and every task's
  status (``done``, ``resumed``, ``failed``) with its error;
- ``DIR/sweep.html``: plots across models (per detector: labelled heads and top score against the
  model or checkpoint), self-contained (plotly.js inlined once).

A failed task is reported and the others finish. A rerun resumes: a task whose atlas is finished
with the same settings is not run again, and an unfinished one reuses its scan's ``partial/``.

Specs: anything :func:`headatlas.load` takes by name; a folder of Hugging Face checkpoints (sub-folders
with a ``config.json``, in natural order: ``step-2 < step-10``); ``hub/id@revision`` (a branch, tag or
commit of a hub model). Ray is an extra: ``pip install 'headatlas[ray]'``; importing headatlas does
not import it.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import HeadAtlasError, InputError, InputTypeError

CSV_COLUMNS = ["model", "seed", "layer", "head", "detector", "score", "p_value", "q_value", "labelled"]
SWEEP_SCHEMA = "headatlas.sweep/1"
TASK_FILE = "sweep-task.json"
_PLANS = ("auto", "balanced", "balanced_low_0", "sequential")


class RayMissingError(HeadAtlasError):
    """``headatlas sweep`` needs Ray, which is an extra."""


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


@dataclass
class SweepResult:
    """What :func:`sweep` wrote: ``table`` (the rows of ``sweep.csv``), ``tasks`` (one dict per
    (model, seed): model, seed, status, error, seconds, out ...), ``record`` (``sweep.json``)."""

    out: Path
    table: Any
    tasks: list[dict[str, Any]]
    record: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [t for t in self.tasks if t["status"] == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed


# ----- specs -------------------------------------------------------------------------------------------
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
    from .models.bundled import BUNDLED

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
    from .checks import check_seed
    from .validate import MAX_SEEDS

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


# ----- the task (runs in a Ray worker) -----------------------------------------------------------------
def _task_key(job: dict[str, Any]) -> dict[str, Any]:
    keys = ("spec", "revision", "seed", "detectors", "settings", "load")
    return json.loads(json.dumps({k: job[k] for k in keys}, sort_keys=True, default=str))


def _finished(job: dict[str, Any]) -> dict[str, Any] | None:
    """The atlas of a task finished earlier with the same spec, seed, detectors and settings, or None."""
    from .atlas import Atlas

    out = Path(job["out"])
    try:
        doc = json.loads((out / TASK_FILE).read_text())
        if doc.get("key") != _task_key(job) or doc.get("status") != "done":
            return None
        return Atlas.load(out / "atlas.json").to_dict()
    except (OSError, ValueError, HeadAtlasError):
        return None


def run_task(job: dict[str, Any]) -> dict[str, Any]:
    """Load one model and scan it with one seed (the body of a Ray task; plain data in and out).

    Returns ``{"status": "done" | "failed", "atlas": Atlas.to_dict() | None, "error", "traceback",
    "seconds", "node"}``; errors are caught and returned, so one model's failure is data."""
    import socket
    import traceback

    t0 = time.perf_counter()
    node = socket.gethostname()
    try:
        from .atlas.schema import atomic_write_text
        from .models import load
        from .scan import scan

        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        try:
            from transformers.utils import logging as tlog

            tlog.set_verbosity_error()
            tlog.disable_progress_bar()
        except ImportError:  # pragma: no cover - transformers is a dependency
            pass
        m = load(job["spec"], revision=job["revision"], **job["load"])
        s = job["settings"]
        atlas = scan(m, job["detectors"], seed=job["seed"], out=job["out"], resume=job["resume"], quick=s["quick"],
                     batch_size=s["batch_size"], n_prompts=s["n_prompts"])
        atomic_write_text(Path(job["out"]) / TASK_FILE,
                          json.dumps({"key": _task_key(job), "status": "done", "node": node}, indent=1))
        return {"status": "done", "atlas": atlas.to_dict(), "error": None, "traceback": None,
                "seconds": time.perf_counter() - t0, "node": node}
    except Exception as exc:  # noqa: BLE001 - reported per task; the sweep goes on
        return {"status": "failed", "atlas": None, "error": _first_line(exc), "traceback": traceback.format_exc()[-4000:],
                "seconds": time.perf_counter() - t0, "node": node}


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)  # a RayTaskError wraps the worker's exception
    if isinstance(cause, BaseException):
        exc = cause
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


# ----- Ray ---------------------------------------------------------------------------------------------
def _import_ray():
    try:
        import ray
    except ImportError:
        raise RayMissingError("headatlas sweep runs on Ray, which is not installed; pip install 'headatlas[ray]' "
                              "(or pip install 'ray>=2.40')") from None
    return ray


def _connect(ray: Any, address: str | None, num_cpus: int | None) -> bool:
    """Start a local cluster (``address`` None) or join one; True when this call connected (and so
    must disconnect). A Ray session the caller already opened is used as it is."""
    if ray.is_initialized():
        return False
    import logging

    try:
        if address is None:
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
                     logging_level=logging.WARNING,
                     log_to_driver=False)
        else:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = "a local Ray cluster" if address is None else f"the Ray cluster at {address!r}"
        raise HeadAtlasError(f"could not start or join {where} ({_first_line(exc)}); check the address "
                             "(ray://host:10001 or auto) and that `ray status` answers there") from exc
    return True


# ----- outputs -----------------------------------------------------------------------------------------
def sweep_table(atlases: list[tuple[str, int, dict[str, Any]]]) -> Any:
    """``sweep.csv``'s rows from ``(model, seed, atlas dict)``: one row per detector x head, columns
    :data:`CSV_COLUMNS` (``p_value``/``q_value`` NaN where an atlas has none)."""
    import numpy as np
    import pandas as pd

    from .atlas import Atlas

    frames = []
    for model, seed, doc in atlases:
        df = Atlas.from_dict(doc).to_dataframe()
        for col in ("p_value", "q_value"):
            if col not in df.columns:
                df[col] = np.nan
        df.insert(0, "seed", int(seed))
        df.insert(0, "model", model)
        frames.append(df[CSV_COLUMNS])
    if not frames:
        return pd.DataFrame(columns=CSV_COLUMNS)
    table = pd.concat(frames, ignore_index=True)
    table["labelled"] = table["labelled"].astype(bool)
    return table


def _summaries(atlases: list[tuple[str, int, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per (model, seed, detector): labelled-head count, top score and top head (skipped: None)."""
    import numpy as np

    from .atlas import Atlas
    from .atlas.atlas import head_name

    rows = []
    for model, seed, doc in atlases:
        atlas = Atlas.from_dict(doc)
        skipped = atlas.skipped()
        for name in atlas.detectors:
            if name in skipped:
                rows.append({"model": model, "seed": seed, "detector": name, "labelled": None, "top": None,
                             "top_head": None, "skipped": skipped[name]})
                continue
            scores = np.asarray(atlas.scores(name), dtype=float)
            finite = np.where(np.isfinite(scores), scores, -np.inf)
            flat = int(np.argmax(finite)) if np.isfinite(finite).any() else None
            top = float(scores.flat[flat]) if flat is not None else None
            head = head_name(*np.unravel_index(flat, scores.shape)) if flat is not None else None
            rows.append({"model": model, "seed": seed, "detector": name, "labelled": len(atlas.labelled(name)),
                         "top": top, "top_head": head, "skipped": None})
    return rows


def _mean(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def _figures(models: list[SweepModel], summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Two plotly figures (plain dicts): per detector, labelled heads and top score against the model
    (or the checkpoint, one line per checkpoint series), mean over seeds. Strings are escaped."""
    from .atlas.htmlsafe import esc

    detectors = list(dict.fromkeys(r["detector"] for r in summaries))
    groups = list(dict.fromkeys(m.group for m in models))
    series_of = {m.label: m.group for m in models}
    x_of = {m.label: (m.checkpoint if m.group else m.label) for m in models}
    figs = []
    for key, title, axis in (("labelled", "Labelled heads per detector", "labelled heads"),
                             ("top", "Top score per detector (best head)", "top score")):
        traces = []
        for group in groups:
            members = [m.label for m in models if series_of[m.label] == group]
            for det in detectors:
                xs, ys, texts = [], [], []
                for label in members:
                    rows = [r for r in summaries if r["model"] == label and r["detector"] == det]
                    if not rows:
                        continue
                    y = _mean([r[key] for r in rows])
                    per_seed = ", ".join(f"s{r['seed']}: {'skipped' if r['skipped'] else r[key]}"
                                         + (f" ({r['top_head']})" if key == "top" and r["top_head"] else "")
                                         for r in rows)
                    xs.append(esc(x_of[label]))
                    ys.append(y)
                    texts.append(esc(f"{label} | {det} | {per_seed}"))
                if xs:
                    name = det if len(groups) == 1 else f"{group or 'models'}: {det}"
                    traces.append({"type": "scatter", "mode": "lines+markers", "name": esc(name), "x": xs, "y": ys,
                                   "text": texts, "hovertemplate": "%{text}<extra></extra>"})
        x_title = "checkpoint" if all(m.group for m in models) else "model"
        figs.append({"data": traces, "layout": {
            "title": {"text": esc(title)}, "height": 420, "margin": {"l": 60, "r": 20, "t": 50, "b": 120},
            "xaxis": {"title": {"text": x_title}, "type": "category", "automargin": True},
            "yaxis": {"title": {"text": axis}, "rangemode": "tozero" if key == "labelled" else "normal"},
            "legend": {"orientation": "h"}}})
    return figs


_JS = """(function () {
  var D = JSON.parse(document.getElementById('sweep-data').textContent);
  D.figures.forEach(function (fig, i) {
    var div = document.getElementById('sweep-fig-' + i);
    if (div && window.Plotly) { Plotly.newPlot(div, fig.data, fig.layout, D.config); }
  });
})();"""

_CSS = """body{font-family:system-ui,sans-serif;margin:24px;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f4f4f4}.failed{color:#b2182b}.muted{color:#777}.plot{min-height:420px}
.scroll{overflow-x:auto}code{font-size:12px}"""


def render_sweep_html(record: dict[str, Any], models: list[SweepModel], summaries: list[dict[str, Any]]) -> str:
    """``sweep.html``: self-contained (plotly.js inlined once, nothing fetched), every string escaped."""
    from plotly.offline import get_plotlyjs

    from .atlas.htmlsafe import PLOTLY_CONFIG, csp, esc, script_json

    figs = _figures(models, summaries)
    detectors = list(dict.fromkeys(r["detector"] for r in summaries))
    by = {(r["model"], r["seed"], r["detector"]): r for r in summaries}
    body_rows = []
    for task in record["tasks"]:
        cells = []
        for det in detectors:
            r = by.get((task["model"], task["seed"], det))
            if r is None:
                cells.append("<td class='muted'>-</td>")
            elif r["skipped"]:
                cells.append(f"<td class='muted'>skipped: {esc(r['skipped'])}</td>")
            else:
                top = "" if r["top"] is None else f" &middot; top {esc(r['top_head'])} {r['top']:.3g}"
                cells.append(f"<td>{r['labelled']}{top}</td>")
        status = esc(task["status"]) + (f": {esc(task['error'])}" if task.get("error") else "")
        cls = " class='failed'" if task["status"] == "failed" else ""
        seconds = "" if task.get("seconds") is None else f"{task['seconds']:.1f} s"
        body_rows.append(f"<tr><td>{esc(task['model'])}</td><td>{task['seed']}</td><td{cls}>{status}</td>"
                         f"<td>{seconds}</td>{''.join(cells)}</tr>")
    header = "".join(f"<th>{esc(h)}</th>" for h in ["model", "seed", "status", "time", *detectors])
    table = f"<div class='scroll'><table><tr>{header}</tr>{''.join(body_rows)}</table></div>"
    settings = "".join(f"<tr><th>{esc(k)}</th><td><code>{esc(json.dumps(v, default=str))}</code></td></tr>"
                       for k, v in record["settings"].items())
    n_failed = sum(t["status"] == "failed" for t in record["tasks"])
    plots = "".join(f"<div class='plot' id='sweep-fig-{i}'></div>" for i in range(len(figs)))
    plotly_js = get_plotlyjs()
    data = script_json({"figures": figs, "config": PLOTLY_CONFIG})
    title = f"headatlas sweep: {len(models)} model(s) x {len(record['settings']['seeds'])} seed(s)"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{esc(csp([plotly_js, _JS]))}">
<meta name="referrer" content="no-referrer">
<title>{esc(title)}</title>
<style>{_CSS}</style>
<script>{plotly_js}</script>
</head><body>
<h1>{esc(title)}</h1>
<p class="muted">{esc(record['engine'])}; headatlas {esc(record['headatlas_version'])}; {len(record['tasks'])} task(s),
{n_failed} failed. Per detector: the number of labelled heads and the best head's score, mean over seeds (hover for
each seed). Each model's own atlas is in its folder (<code>&lt;model&gt;-s&lt;seed&gt;/atlas.html</code>).</p>
{plots}
<h2>Per model and seed</h2>
<p class="muted">Cells: labelled heads &middot; the top head and its score.</p>
{table}
<h2>Settings</h2>
<table>{settings}</table>
<script type="application/json" id="sweep-data">{data}</script>
<script>{_JS}</script>
</body></html>
"""


# ----- the sweep ---------------------------------------------------------------------------------------
def sweep(specs: str | Sequence[str], detectors: str | Sequence[str] | None = None, *, out: str | os.PathLike,
          seeds: int | str | Sequence[int] = 0, address: str | None = None, num_cpus: int | None = None,
          cpus_per_task: float = 1, gpus_per_task: float | None = None, quick: bool = False, batch_size: int = 8,
          n_prompts: int | None = None, device: str | None = None, dtype: str | None = None,
          device_map: str | dict[str, Any] | None = None, max_memory: dict[int | str, int | str] | None = None,
          offload_folder: str | os.PathLike | None = None, resume: bool = True,
          progress: Callable[[dict[str, Any]], None] | None = None) -> SweepResult:
    """Scan every model in ``specs`` with every seed in ``seeds``, one Ray task per (model, seed).

    - ``specs``: model specs (see :func:`headatlas.load`), folders of checkpoints, or ``id@revision``.
    - ``detectors``: names (a list or ``"a,b"``); default the default set (``"all"``: every registered detector).
    - ``out``: the sweep folder (``<model>-s<seed>/`` per task, ``sweep.csv``, ``sweep.json``, ``sweep.html``).
    - ``address``: None starts a local Ray cluster with ``num_cpus`` CPUs (default all); ``"auto"`` or
      ``"ray://host:10001"`` joins one (then ``out`` must be on storage the workers share for resume).
    - ``cpus_per_task`` / ``gpus_per_task``: each task's Ray resources (GPUs default to 1 when the
      cluster has any, else 0). ``device``, ``dtype``, ``device_map``, ``max_memory``,
      ``offload_folder``: how each task loads its model. ``quick``, ``batch_size``, ``n_prompts``: scan settings.
    - ``progress``: called with each task's record as it finishes.

    Every argument is checked before Ray starts (:mod:`headatlas.validate`): a model listed twice, a seed listed
    twice, more than 1000 seeds, a task asking for more CPUs than the local cluster has, an unusable ``out``, an
    unknown device or dtype are InputErrors. Returns a :class:`SweepResult`; a failed task is in
    ``result.failed`` (and in ``sweep.json``).

    >>> r = sweep(["smollm2-135m", "gemma3-270m"], "induction", out="sweeps/small", seeds="0,1")  # doctest: +SKIP
    >>> r.table.groupby(["model", "detector"]).labelled.sum()                                  # doctest: +SKIP
    """
    from . import __version__
    from .atlas import Atlas
    from .atlas.schema import atomic_write_text
    from .models.placement import check_placement
    from .outdir import prepare_out
    from .scan import resolve_detectors
    from .validate import check_n_tasks, check_sweep_args, check_unique_specs

    check_sweep_args(specs=specs, out=out, num_cpus=num_cpus, cpus_per_task=cpus_per_task, gpus_per_task=gpus_per_task,
                     quick=quick, batch_size=batch_size, n_prompts=n_prompts, device=device, dtype=dtype, resume=resume,
                     address=address, progress=progress)
    models = expand_specs(specs)
    check_unique_specs(models)
    names = resolve_detectors(detectors)
    seed_list = parse_seeds(seeds)
    check_n_tasks(len(models), len(seed_list))
    load_kw: dict[str, Any] = {"device": device, "dtype": dtype}
    if device_map is not None or max_memory is not None or offload_folder is not None:
        if address is None:  # a local cluster has this machine's devices: refuse bad values before any task
            check_placement(device_map, max_memory, offload_folder, device)
        # (on a remote cluster the workers' load() checks them against their own GPUs)
        load_kw.update(device_map=device_map, max_memory=max_memory,
                       offload_folder=None if offload_folder is None else os.fspath(offload_folder))
    out_dir = prepare_out(out).resolve()   # a file, a system folder or an unwritable one: OutputError, before Ray
    settings = {"detectors": names, "seeds": seed_list, "quick": bool(quick), "batch_size": int(batch_size),
                "n_prompts": n_prompts}
    folders = _folders(models, seed_list)
    jobs = [{"model": m.label, "spec": m.spec, "revision": m.revision, "seed": s, "detectors": names,
             "out": str(out_dir / folders[(m.label, s)]), "resume": bool(resume), "load": load_kw,
             "settings": {k: settings[k] for k in ("quick", "batch_size", "n_prompts")}}
            for m in models for s in seed_list]

    ray = _import_ray()
    t0 = time.time()
    records: dict[int, dict[str, Any]] = {}
    atlases: dict[int, dict[str, Any]] = {}

    def finish(i: int, res: dict[str, Any]) -> None:
        job = jobs[i]
        rec = {"model": job["model"], "spec": job["spec"], "revision": job["revision"], "seed": job["seed"],
               "out": os.path.relpath(job["out"], out_dir), "status": res["status"], "error": res.get("error"),
               "traceback": res.get("traceback"), "seconds": res.get("seconds"), "node": res.get("node")}
        if res.get("atlas") is not None:
            atlases[i] = res["atlas"]
            if not (Path(job["out"]) / "atlas.json").is_file():  # a remote worker's disk: keep a copy here
                atlas = Atlas.from_dict(res["atlas"])
                atlas.save(Path(job["out"]) / "atlas.json")
                atlas.save_html(Path(job["out"]) / "atlas.html")
            rec["skipped"] = Atlas.from_dict(res["atlas"]).skipped()
        records[i] = rec
        if progress is not None:
            progress(rec)

    started = _connect(ray, address, num_cpus)
    try:
        cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
        gpus = (1.0 if cluster_gpus >= 1 else 0.0) if gpus_per_task is None else float(gpus_per_task)
        if gpus > cluster_gpus:
            raise InputError(f"gpus_per_task={gpus:g} but the Ray cluster has {cluster_gpus:g} GPU(s); lower it "
                             "(0 runs on CPU)")
        cluster_cpus = float(ray.cluster_resources().get("CPU", 0))
        if float(cpus_per_task) > cluster_cpus:   # such a task would wait forever
            raise InputError(f"cpus_per_task={cpus_per_task:g} but the Ray cluster has {cluster_cpus:g} CPU(s); lower it")
        # GPU tasks get a fresh worker each (Ray's default max_calls=1 for GPU tasks), which frees GPU memory
        remote = ray.remote(num_cpus=cpus_per_task, num_gpus=gpus, max_retries=0)(run_task)
        pending: dict[Any, int] = {}
        for i, job in enumerate(jobs):
            done = _finished(job) if resume else None
            if done is not None:
                finish(i, {"status": "resumed", "atlas": done, "seconds": None, "node": None})
            else:
                pending[remote.remote(job)] = i
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                i = pending.pop(ref)
                try:
                    res = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a worker that died (out of memory, killed, ...)
                    res = {"status": "failed", "atlas": None, "error": _first_line(exc), "traceback": None,
                           "seconds": None, "node": None}
                finish(i, res)
        engine = f"ray {ray.__version__}"
        cluster = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU", "memory")}
    finally:
        if started:
            ray.shutdown()

    tasks = [records[i] for i in range(len(jobs))]
    done_atlases = [(jobs[i]["model"], jobs[i]["seed"], atlases[i]) for i in range(len(jobs)) if i in atlases]
    table = sweep_table(done_atlases)
    record = {
        "schema": SWEEP_SCHEMA, "engine": engine, "headatlas_version": __version__,
        "specs": [os.fspath(s) for s in ([specs] if isinstance(specs, (str, os.PathLike)) else specs)],
        "models": [vars(m) for m in models],
        "settings": {**settings, "address": address or "local", "cpus_per_task": cpus_per_task, "gpus_per_task": gpus,
                     "load": {k: v for k, v in load_kw.items() if v is not None}, "resume": bool(resume)},
        "cluster": cluster, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)),
        "seconds": round(time.time() - t0, 3), "tasks": tasks,
    }
    atomic_write_text(out_dir / "sweep.csv", table.to_csv(index=False))
    atomic_write_text(out_dir / "sweep.json", json.dumps(record, indent=1, default=str, allow_nan=False))
    atomic_write_text(out_dir / "sweep.html", render_sweep_html(record, models, _summaries(done_atlases)))
    return SweepResult(out=out_dir, table=table, tasks=tasks, record=record)


class _CallableModule(type(os)):
    """``headatlas.sweep(...)`` calls :func:`sweep` even where ``import headatlas.sweep`` bound the
    package attribute to this module (the package exports its functions lazily)."""

    def __call__(self, *args: Any, **kwargs: Any) -> SweepResult:
        return sweep(*args, **kwargs)


import sys as _sys  # noqa: E402

_sys.modules[__name__].__class__ = _CallableModule
