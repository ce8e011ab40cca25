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

The pieces: :mod:`headatlas.sweep.plan` (models, seeds, jobs), :mod:`headatlas.sweep.run` (the Ray task and the
cluster), :mod:`headatlas.sweep.outputs` (``sweep.csv`` and ``sweep.html``). Their public names are importable
from here as before.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import InputError
from .outputs import CSV_COLUMNS, _summaries, render_sweep_html, sweep_table
from .plan import SweepModel, checkpoint_folders, expand_specs, natural_key, parse_seeds, plan_jobs
from .run import TASK_FILE, RayMissingError, _connect, _finished, _first_line, _import_ray, run_task

__all__ = ["CSV_COLUMNS", "SWEEP_SCHEMA", "TASK_FILE", "RayMissingError", "SweepModel", "SweepResult",
           "checkpoint_folders", "expand_specs", "natural_key", "parse_seeds", "plan_jobs", "render_sweep_html",
           "run_task", "sweep", "sweep_table"]

SWEEP_SCHEMA = "headatlas.sweep/1"


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
    from ..atlas import Atlas
    from ..atlas.schema import atomic_write_text
    from ..models.placement import check_placement
    from ..outdir import prepare_out
    from ..scan import resolve_detectors
    from ..validate import check_n_tasks, check_sweep_args, check_unique_specs
    from ..version import __version__

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
    jobs = plan_jobs(models, seed_list, names, out_dir, resume=resume, load=load_kw, settings=settings)

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