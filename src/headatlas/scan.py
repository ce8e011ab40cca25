"""``headatlas.scan``: run registered detectors on one model and collect their results in an :class:`Atlas`.

The scan is resumable: with ``out`` set, each finished detector's result is written atomically
to ``out/partial/<name>.json`` under a key that fingerprints the model (name, sizes, dtype, device
and a digest of its weights), the seed, the scan settings and the detector's version; a rerun with
the same key loads it instead of recomputing. At the end ``out/atlas.json`` and ``out/atlas.html``
are written atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import stats
from .atlas import Atlas, DetectorMeta, schema
from .detectors import base as registry
from .atlas.records import PER_HEAD_FIELDS, no_causal_check
from .detectors.base import DetectorResult, ScanCache, ScanConfig, scan_order, skipped_result
from .checks import check_bool, check_callable, check_count, check_seed
from .errors import HeadAtlasError, InputError, InputTypeError, UnsupportedArchitectureError
from .outdir import prepare_out, scan_lock, write_atlas_pair

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]


class ScanProgress:
    """Callbacks a scan makes (all optional; override the ones you need).

    ``start(name, index, total)`` before detector ``index`` of ``total``; ``update(name, done, total)``
    as the detector reports progress (``ScanConfig.progress``); ``finish(name, seconds, status)``
    with status ``"done"``, ``"resumed"`` or ``"skipped: <reason>"``.
    """

    def start(self, name: str, index: int, total: int) -> None:
        pass

    def update(self, name: str, done: int, total: int) -> None:
        pass

    def finish(self, name: str, seconds: float, status: str) -> None:
        pass


class _CallableProgress(ScanProgress):
    def __init__(self, fn: ProgressFn) -> None:
        self.fn = fn

    def update(self, name: str, done: int, total: int) -> None:
        self.fn(name, done, total)


def resolve_detectors(detectors: str | Sequence[str] | None) -> list[str]:
    """Detector names to run: ``None`` -> the default set (``Detector.default``); ``"all"`` -> every
    registered detector; a comma-separated string or a list -> those names (order kept, duplicates
    dropped). InputError on an unknown name, listing the available."""
    if isinstance(detectors, str) and detectors.strip() == "all":
        detectors = None if not registry.names() else list(registry.names())
    if detectors is None:
        names = list(registry.default_names())
        if not names:
            raise InputError("no detectors are registered (headatlas.detectors is empty); nothing to scan")
        return names
    if isinstance(detectors, str):
        detectors = [d for d in (p.strip() for p in detectors.split(",")) if d]
    if not isinstance(detectors, (list, tuple)):
        raise InputTypeError(f"detectors must be detector names (a list, or 'a,b'), got {type(detectors).__name__} "
                             f"{detectors!r:.40}; available: {', '.join(registry.names())}")
    names = []
    for d in detectors:
        if not isinstance(d, str):
            raise InputTypeError(f"detector names must be strings, got {type(d).__name__} {d!r:.40}")
        registry.get(d)  # InputError listing the available ones
        if d not in names:
            names.append(d)
    if not names:
        raise InputError(f"no detector named; available: {', '.join(registry.names())}")
    return names


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


def _partial_path(out: Path, name: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return out / "partial" / f"{safe}.json"


def _load_partial(path: Path, key: str, name: str) -> tuple[DetectorResult, float, str] | None:
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


def _write_partial(path: Path, key: str, meta: DetectorMeta, result: DetectorResult, seconds: float,
                   shared: str) -> None:
    doc = {"schema": schema.PARTIAL_SCHEMA, "key": key, "detector": meta.to_dict(), "seconds": seconds,
           "shared": shared, "result": schema.result_to_dict(result)}
    schema.atomic_write_text(path, schema.dumps(doc))


def _check_result(result: Any, name: str, n_layers: int, n_heads: int) -> DetectorResult:
    if not isinstance(result, DetectorResult):
        raise HeadAtlasError(f"detector {name!r} returned {type(result).__name__}, not a DetectorResult")
    if result.name != name:
        raise HeadAtlasError(f"detector {name!r} returned a result named {result.name!r}")
    for key in PER_HEAD_FIELDS:
        shape = np.shape(getattr(result, key))
        if shape != (n_layers, n_heads):
            raise HeadAtlasError(f"detector {name!r} returned {key} of shape {shape}; expected ({n_layers}, {n_heads})")
    return result


def _only_attention_layers(result: DetectorResult, other: tuple[int, ...]) -> DetectorResult:
    """``result`` with the rows of a hybrid's layers without heads (``other``) set to NaN in every per-head
    array (and per-head extra) and no label there; q-values are recomputed over the real heads when the
    detector gave those rows p-values (the family of tests is the model's heads)."""
    if not other:
        return result
    rows = list(other)
    counted = bool(np.isfinite(np.asarray(result.p_value, dtype=np.float64)[rows]).any())
    for key in PER_HEAD_FIELDS:
        a = np.array(getattr(result, key), dtype=np.float64)
        a[rows] = np.nan
        setattr(result, key, a)
    if counted:
        result.q_value = stats.bh_q(result.p_value)
    shape = np.shape(result.scores)
    for key, value in list(result.extras.items()):
        if np.shape(value) == shape and np.asarray(value).dtype.kind == "f":
            value = np.array(value, dtype=np.float64)
            value[rows] = np.nan
            result.extras[key] = value
    result.labelled = [(la, h) for la, h in result.labelled if la not in other]
    return result


def _causal(det: registry.Detector, m: Any, config: ScanConfig, result: DetectorResult, enabled: bool):
    """The detector's causal check on its labels (None when disabled or nothing was labelled)."""
    if det.causal is None:
        return no_causal_check(det.no_causal)
    if not enabled or not result.labelled:
        return None
    try:
        return det.causal(m, config, result)
    except (InputError, UnsupportedArchitectureError) as exc:   # the check's data or method does not fit this model
        return no_causal_check(f"the causal check could not run on this model: {exc}")


def _attach_token_view(det: registry.Detector, m: Any, config: ScanConfig, result: DetectorResult) -> None:
    """``result.details["token_view"]``: the top labelled heads' attention on one of the detector's prompts."""
    if det.example is None or not result.labelled or "token_view" in result.details:
        return
    import torch

    from .atlas.tokenview import MAX_HEADS, MAX_TOKENS, make_token_view
    from .instrument import Taps, instrumented

    heads = [tuple(lh) for lh in result.labelled[:MAX_HEADS]]
    ids = torch.as_tensor(det.example(m, config)).reshape(-1)[:MAX_TOKENS]
    with torch.no_grad(), instrumented(m, taps=Taps(pattern=True, layers=sorted({la for la, _ in heads}))) as rec:
        m.model(input_ids=ids[None].to(m.device), use_cache=False, logits_to_keep=1)
    pattern = np.stack([rec.pattern(la)[0, h].float().cpu().numpy() for la, h in heads])
    tokens = [m.tokenizer.decode([int(t)]) for t in ids]
    result.details["token_view"] = make_token_view(tokens, pattern, heads)


def _shared_note(det: registry.Detector, cache: ScanCache, name: str) -> str:
    """"reused shared pass 'x' (computed by y, 3.2 s)" for the passes another detector paid for."""
    notes = []
    for p in det.uses:
        payer = cache.computed_by.get(p.name)
        if payer and payer != name:
            notes.append(f"reused shared pass {p.name!r} (computed by {payer}, {cache.seconds.get(p.name, 0.0):.1f} s)")
        elif payer == name:
            notes.append(f"computed shared pass {p.name!r} ({cache.seconds.get(p.name, 0.0):.1f} s)")
    return "; ".join(notes)


def scan(model: Any, detectors: str | Sequence[str] | None = None, *, seed: int = 0, quick: bool = False,
         out: str | os.PathLike | None = None, resume: bool = True,
         progress: ScanProgress | ProgressFn | None = None, batch_size: int = 8, n_prompts: int | None = None,
         options: dict[str, Any] | None = None, causal: bool = True) -> Atlas:
    """Score every head of ``model`` with each detector and return the :class:`Atlas`.

    - ``model``: anything :func:`headatlas.load` accepts (a bundled name, an HF id or folder, a
      ``.gguf`` path, a ``(model, tokenizer)`` pair or a loaded model).
    - ``detectors``: names (a list or ``"a,b"``); default the default set (every detector whose data fits
      a ~10 minute scan of a 135M model on 2 CPU cores); ``"all"`` every registered one. Detectors they
      ``require`` are added and run first.
    - ``seed``, ``quick``, ``batch_size``, ``n_prompts``, ``options``: passed to each detector in its
      :class:`ScanConfig`.
    - ``out``: a folder; after every detector its result is written to ``out/partial/<name>.json``, at the
      end ``out/atlas.json`` and ``out/atlas.html`` (all atomically). ``resume`` reuses partial results
      computed with the same model, seed, settings and detector version.
    - ``progress``: a :class:`ScanProgress`, or ``fn(name, done, total)``.
    - ``causal``: run each detector's causal check on its labelled heads (ablation against random head
      sets on the head type's behaviour); False skips them (faster; the atlas then holds none).

    A detector that raises :class:`InputError` (its data does not fit this model) becomes a skipped
    result carrying the reason; any other exception propagates.
    """
    names = scan_order(resolve_detectors(detectors))
    seed, batch_size = check_seed(seed), check_count(batch_size, "batch_size")
    n_prompts = None if n_prompts is None else check_count(n_prompts, "n_prompts")
    quick, resume, causal = check_bool(quick, "quick"), check_bool(resume, "resume"), check_bool(causal, "causal")
    if options is not None and not (isinstance(options, dict) and all(isinstance(k, str) for k in options)):
        raise InputTypeError(f"options must be a dict of detector name -> value, got {type(options).__name__}")
    if progress is not None and not isinstance(progress, ScanProgress):
        check_callable(progress, "progress (a ScanProgress or fn(name, done, total))")
    out_dir = prepare_out(out) if out is not None else None   # before the model loads: a bad --out fails at once
    with scan_lock(out_dir) if out_dir is not None else contextlib.nullcontext():
        return _run_scan(model, names, seed=seed, quick=quick, out_dir=out_dir, resume=resume, progress=progress,
                         batch_size=batch_size, n_prompts=n_prompts, options=options, causal=causal)


def _run_scan(model: Any, names: list[str], *, seed: int, quick: bool, out_dir: Path | None, resume: bool,
              progress: ScanProgress | ProgressFn | None, batch_size: int, n_prompts: int | None,
              options: dict[str, Any] | None, causal: bool) -> Atlas:
    """The body of :func:`scan` once its input is checked and ``out_dir`` (if any) is locked."""
    from .models import load

    m = load(model)
    prog = progress if isinstance(progress, ScanProgress) else (_CallableProgress(progress) if progress else ScanProgress())
    info = m.info.to_dict()
    fingerprint = model_fingerprint(m)
    settings = {"quick": bool(quick), "n_prompts": n_prompts, "batch_size": int(batch_size), "causal": bool(causal)}
    common_key = {"model": info, "weights": fingerprint, "seed": int(seed), "settings": settings,
                  "options": options or {}, "schema": schema.PARTIAL_SCHEMA}
    n_layers, n_heads = m.info.n_layers, m.info.n_heads

    results: dict[str, DetectorResult] = {}
    metas: dict[str, DetectorMeta] = {}
    timings: dict[str, float] = {}
    shared_notes: dict[str, str] = {}
    cache = ScanCache()
    for index, name in enumerate(names):
        det = registry.get(name)
        meta = DetectorMeta.from_detector(det)
        key = digest({**common_key, "detector": name, "version": int(det.version), "causal": bool(causal),
                      "requires": {d: digest([results[d].labelled, results[d].scores]) for d in det.requires
                                   if d in results}})
        prog.start(name, index, len(names))
        path = _partial_path(out_dir, name) if out_dir is not None else None
        loaded = _load_partial(path, key, name) if (path is not None and resume) else None
        if loaded is not None:
            result, seconds, shared = loaded
            status = "resumed"
        else:
            config = ScanConfig(seed=int(seed), n_prompts=n_prompts, batch_size=int(batch_size), quick=bool(quick),
                                progress=lambda done, total, _n=name: prog.update(_n, done, total),
                                options=dict(options or {}), results=dict(results), cache=cache)
            cache.current = name
            t0 = time.perf_counter()
            try:
                result = _only_attention_layers(_check_result(det.run(m, config), name, n_layers, n_heads),
                                                m.info.other_layers)
            except (InputError, UnsupportedArchitectureError) as exc:   # a method this architecture cannot take
                result = skipped_result(name, n_layers, n_heads, str(exc), int(seed))
            if not result.skipped:
                result.causal = _causal(det, m, config, result, causal)
                _attach_token_view(det, m, config, result)
            seconds = time.perf_counter() - t0
            shared = _shared_note(det, cache, name)
            status = "done"
            if path is not None:
                _write_partial(path, key, meta, result, seconds, shared)
        if shared:
            shared_notes[name] = shared
        if result.skipped:
            status = f"skipped: {result.skipped}"
        results[name], metas[name], timings[name] = result, meta, seconds
        prog.finish(name, seconds, status)

    model_info = {**info, "fingerprint": fingerprint, "source": m.source}
    if options:
        settings["options"] = sorted(options)   # their names only: values can be large arrays
    if n_prompts is None:   # record the values used: each detector's own default
        settings = {**settings, "n_prompts": {name: int(r.n_prompts) for name, r in results.items() if not r.skipped}}
    atlas = Atlas(model_info, results, metas, seed=int(seed), settings=settings, timings=timings,
                  shared_passes=shared_notes)
    if out_dir is not None:  # both rendered first; the HTML is never older than the JSON (outdir.write_atlas_pair)
        write_atlas_pair(out_dir / "atlas.json", schema.dumps(atlas.to_dict()) + "\n", out_dir / "atlas.html",
                         atlas.to_html())
    return atlas


class _CallableModule(type(os)):
    """``headatlas.scan(...)`` calls :func:`scan` even where importing the submodule (``headatlas.cli`` does)
    bound the package attribute ``headatlas.scan`` to this module (the package exports its functions lazily)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Atlas:
        return scan(*args, **kwargs)


import sys as _sys  # noqa: E402

_sys.modules[__name__].__class__ = _CallableModule
