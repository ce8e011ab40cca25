"""Resume files of a scan: the keys that fingerprint what a result depends on, and ``out/partial/*.json``.

A detector's statistics are written to ``out/partial/<name>.json`` under a key of the model (name, sizes,
dtype, device and a digest of its weights), the seed, the scan settings, the detector's version and the
results it requires; its causal check to ``out/partial/<name>.causal.json`` under a key that adds what the
check depends on: the labelled and significant heads of every detector of its metric family (the clean pool).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from .atlas import DetectorMeta, schema
from .atlas.records import DetectorResult
from .errors import HeadAtlasError

log = logging.getLogger(__name__)


def model_fingerprint(m: Any) -> str:
    """A digest of a loaded model's weights: SHA-256 over, per parameter, its name, shape, dtype and raw
    bytes. Exact bytes, not float sums, so it does not depend on torch's thread count or reduction order;
    offloaded (``device_map``) weights are read back one module at a time."""
    import torch

    from .models.placement import named_weights

    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in named_weights(m.model):
            h.update(f"{name}|{tuple(p.shape)}|{p.dtype}".encode())
            h.update(tensor_bytes(p))
    return h.hexdigest()[:20]


def tensor_bytes(t: Any) -> memoryview:
    """The raw bytes of a tensor (a contiguous copy on the CPU; any dtype, bfloat16 included)."""
    import torch

    flat = t.detach().reshape(-1).contiguous()
    return memoryview(flat.view(torch.uint8).cpu().numpy())


def _canonical(obj: Any) -> Any:
    if isinstance(obj, np.ndarray) or type(obj).__module__.startswith("torch"):
        arr = np.asarray(obj.detach().cpu() if hasattr(obj, "detach") else obj)
        return ["array", str(arr.dtype), list(arr.shape), hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()]
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj)


def digest(obj: Any) -> str:
    """A stable hex digest of a JSON-like object (arrays and tensors by their bytes)."""
    text = json.dumps(_canonical(obj), sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def partial_path(out: Path, name: str, phase: str = "") -> Path:
    """``out/partial/<name>.json`` (statistics) or ``out/partial/<name>.<phase>.json`` (e.g. ``causal``)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return out / "partial" / (f"{safe}.{phase}.json" if phase else f"{safe}.json")


def load_partial(path: Path, key: str, name: str) -> tuple[DetectorResult, float, str] | None:
    if not path.is_file():
        return None
    try:
        doc = schema.read_json(path)
        if not isinstance(doc, dict) or doc.get("schema") != schema.PARTIAL_SCHEMA or doc.get("key") != key:
            return None
        result = schema.result_from_dict(doc["result"], str(path))
        if result.name != name:
            return None
        return result, float(doc.get("seconds", float("nan"))), str(doc.get("shared", ""))
    except (HeadAtlasError, KeyError, TypeError, ValueError) as exc:
        log.warning("ignoring unreadable partial result %s (%s); recomputing", path, exc)
        return None


def write_partial(path: Path, key: str, meta: DetectorMeta, result: DetectorResult, seconds: float,
                   shared: str) -> None:
    doc = {"schema": schema.PARTIAL_SCHEMA, "key": key, "detector": meta.to_dict(), "seconds": seconds,
           "shared": shared, "result": schema.result_to_dict(result)}
    schema.atomic_write_text(path, schema.dumps(doc))


def load_runs(path: Path, key: str) -> dict[str, dict[str, float]]:
    """The specificity runs stored at ``path`` under ``key``: run -> row -> effect (``{}`` when absent, stale or
    unreadable)."""
    if not path.is_file():
        return {}
    try:
        doc = schema.read_json(path)
        if not isinstance(doc, dict) or doc.get("schema") != schema.PARTIAL_SCHEMA or doc.get("key") != key:
            return {}
        runs = schema.decode(doc["runs"])
        return {str(k): {str(r): float(x) for r, x in v.items()} for k, v in runs.items()}
    except (HeadAtlasError, KeyError, TypeError, ValueError, AttributeError) as exc:
        log.warning("ignoring unreadable partial specificity runs %s (%s); recomputing", path, exc)
        return {}


def write_runs(path: Path, key: str, runs: dict[str, dict[str, float]]) -> None:
    schema.atomic_write_text(path, schema.dumps({"schema": schema.PARTIAL_SCHEMA, "key": key,
                                                 "runs": schema.encode(runs)}))
