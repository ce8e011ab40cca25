"""Running a sweep's jobs: :func:`run_task` (the body of one Ray task: load a model, scan it with one seed,
return plain data; a failure is data too), the resume check of a finished task, and starting or joining a Ray
cluster. Ray is an extra (``pip install 'headatlas[ray]'``), imported only when a sweep runs."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ..errors import HeadAtlasError

TASK_FILE = "sweep-task.json"


class RayMissingError(HeadAtlasError):
    """``headatlas sweep`` needs Ray, which is an extra."""


def _task_key(job: dict[str, Any]) -> dict[str, Any]:
    keys = ("spec", "revision", "seed", "detectors", "settings", "load")
    return json.loads(json.dumps({k: job[k] for k in keys}, sort_keys=True, default=str))


def _finished(job: dict[str, Any]) -> dict[str, Any] | None:
    """The atlas of a task finished earlier with the same spec, seed, detectors and settings, or None."""
    from ..atlas import Atlas

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
        from ..atlas.schema import atomic_write_text
        from ..models import load
        from ..scan import scan

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

