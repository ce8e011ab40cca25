"""``headatlas.scan``: run registered detectors on one model and collect their results in an :class:`Atlas`.

The scan runs in two phases. First every requested detector's statistics (its run: scores, null, p, q,
labels; a detector whose statistic passes for more than a quarter of the heads is reported as distributed,
:func:`headatlas.detectors.pools.mark_distributed`). Then the causal battery: each detector's check, which now
sees every result of the scan (``ScanConfig.results``), so its random pool excludes the heads that any detector
of its metric family labelled or found significant (:mod:`headatlas.detectors.causal`).

The scan is resumable: with ``out`` set, each finished detector's statistics are written atomically to
``out/partial/<name>.json`` and its check to ``out/partial/<name>.causal.json``, under keys of what each
depends on (:mod:`headatlas.scanfiles`); a rerun with the same key loads them instead of recomputing. At the
end ``out/atlas.json`` and ``out/atlas.html`` are written atomically.

For the report's head pages the scan also stores, per detector with an example prompt, the attention of its top
labelled heads on that prompt (``details["token_view"]``, at most :data:`~headatlas.atlas.tokenview.MAX_HEADS`
heads), and for every labelled head what it writes: the top promoted and suppressed output tokens of its OV
circuit (``Atlas.writes``, :mod:`headatlas.methods.ov_tokens`; cached in ``out/partial/_writes.json``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import stats
from .atlas import Atlas, DetectorMeta, schema
from .detectors import base as registry
from .atlas.records import PER_HEAD_FIELDS, CausalCheck, no_causal_check
from .detectors.base import DetectorResult, ScanCache, ScanConfig, scan_order, skipped_result
from .detectors.pools import mark_distributed, significant_heads
from .checks import check_bool, check_callable, check_count, check_seed
from .errors import HeadAtlasError, InputError, InputTypeError, UnsupportedArchitectureError
from .outdir import prepare_out, scan_lock, write_atlas_pair
from .scanfiles import digest, load_partial, model_fingerprint, partial_path, write_partial

__all__ = ["ScanProgress", "digest", "model_fingerprint", "resolve_detectors", "scan"]

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]


class ScanProgress:
    """Callbacks a scan makes (all optional; override the ones you need).

    Phase 1 (statistics): ``start(name, index, total)`` before detector ``index`` of ``total``;
    ``update(name, done, total)`` as the detector reports progress (``ScanConfig.progress``);
    ``finish(name, seconds, status)`` with status ``"done"``, ``"resumed"`` or ``"skipped: <reason>"``.
    Phase 2 (causal battery, the detectors whose check runs): ``check_start(name, index, total)`` and
    ``check_finish(name, seconds, status)`` with status ``"done"`` or ``"resumed"``.
    Phase 3 (the specificity matrix, when asked for): ``specificity_update(done, total, what)`` before each run of
    a behaviour on every confirmed set, and once more when all ``total`` are done.
    """

    def start(self, name: str, index: int, total: int) -> None:
        pass

    def update(self, name: str, done: int, total: int) -> None:
        pass

    def finish(self, name: str, seconds: float, status: str) -> None:
        pass

    def check_start(self, name: str, index: int, total: int) -> None:
        pass

    def check_finish(self, name: str, seconds: float, status: str) -> None:
        pass

    def specificity_update(self, done: int, total: int, what: str) -> None:
        pass


class _CallableProgress(ScanProgress):
    def __init__(self, fn: ProgressFn) -> None:
        self.fn = fn

    def update(self, name: str, done: int, total: int) -> None:
        self.fn(name, done, total)


def check_progress(progress: Any) -> None:
    """``progress``: None, a :class:`ScanProgress` or ``fn(name, done, total)``."""
    if progress is not None and not isinstance(progress, ScanProgress):
        check_callable(progress, "progress (a ScanProgress or fn(name, done, total))")


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


def _needs_check(det: registry.Detector, result: DetectorResult) -> bool:
    """Whether phase 2 runs a check for this result (a check, labels, not skipped or distributed)."""
    return det.causal is not None and not result.skipped and bool(result.labelled)


def _static_causal(det: registry.Detector, result: DetectorResult) -> CausalCheck | None:
    """The causal record of a result whose check does not run: the no-metric reason, the distributed note, or None."""
    if result.skipped:
        return None
    if det.causal is None:
        return no_causal_check(det.no_causal)
    d = result.details.get("distributed")
    if isinstance(d, dict):
        return CausalCheck(metric=det.metric, kind="none",
                           note=(f"distributed: {d['n_pass']} of {d['n_heads']} heads pass the statistic (more than "
                                 f"{d['threshold']:.0%}): a property of the model, not of a few heads; no set-ablation "
                                 "check"))
    return None


def _run_check(det: registry.Detector, m: Any, config: ScanConfig, result: DetectorResult) -> CausalCheck:
    """The detector's causal check (the check's data may not fit the model: then a record saying so)."""
    try:
        return det.causal(m, config, result)  # type: ignore[misc]
    except (InputError, UnsupportedArchitectureError) as exc:   # the check's data or method does not fit this model
        return no_causal_check(f"the causal check could not run on this model: {exc}")


def _check_key(stat_key: str, det: registry.Detector, results: dict[str, DetectorResult]) -> str:
    """What a check depends on: its detector's statistics (``stat_key``) and the clean pool's inputs, the
    labelled and significant heads of every detector of its metric family in this scan."""
    family = registry.same_metric(det.name) or (det.name,)
    pool = {n: digest([sorted(map(tuple, results[n].labelled)), sorted(significant_heads(results[n])),
                       bool(results[n].skipped)]) for n in family if n in results}
    return digest({"statistics": stat_key, "pool": pool, "phase": "causal"})


def _attach_token_view(det: registry.Detector, m: Any, config: ScanConfig, result: DetectorResult) -> None:
    """``result.details["token_view"]``: the top labelled heads' attention (at most ``MAX_HEADS``, most significant
    first) on one of the detector's prompts."""
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


def _writes(m: Any, results: dict[str, DetectorResult], key: str, out_dir: Path | None, resume: bool) -> dict[str, Any]:
    """``Atlas.writes`` for every labelled head ({} when none is labelled, or the architecture has no OV readout
    the helpers support), reusing ``out/partial/_writes.json`` when its key matches."""
    heads = sorted({(int(a), int(b)) for r in results.values() for a, b in r.labelled})
    key = digest({"common": key, "heads": heads})
    path = out_dir / "partial" / "_writes.json" if out_dir is not None else None
    if path is not None and resume and path.is_file():
        with contextlib.suppress(HeadAtlasError, KeyError, TypeError, ValueError):
            doc = schema.read_json(path)
            if isinstance(doc, dict) and doc.get("key") == key and isinstance(doc.get("writes"), dict):
                return doc["writes"]
    if not heads:
        return {}
    from .methods.ov_tokens import ov_top_tokens

    from .atlas.writes import check_writes

    try:
        writes, _ = check_writes(ov_top_tokens(m, heads), m.info.n_layers, m.info.n_heads)   # as the atlas stores it
    except (UnsupportedArchitectureError, InputError) as exc:
        log.warning("no OV output tokens for the head pages: %s", exc)
        return {}
    if writes is None:
        return {}
    if path is not None:
        schema.atomic_write_text(path, schema.dumps({"schema": schema.PARTIAL_SCHEMA, "key": key, "writes": writes}))
    return writes


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
         options: dict[str, Any] | None = None, causal: bool = True, specificity: bool | None = None) -> Atlas:
    """Score every head of ``model`` with each detector and return the :class:`Atlas`.

    - ``model``: anything :func:`headatlas.load` accepts (a bundled name, an HF id or folder, a
      ``.gguf`` path, a ``(model, tokenizer)`` pair or a loaded model).
    - ``detectors``: names (a list or ``"a,b"``); default the default set (every detector whose data fits
      a ~10 minute scan of a 135M model on 2 CPU cores); ``"all"`` every registered one. Detectors they
      ``require`` are added and run first.
    - ``seed``, ``quick``, ``batch_size``, ``n_prompts``: passed to each detector in its :class:`ScanConfig`.
    - ``options``: option name -> value, each declared by a detector the scan runs (``Detector.options``;
      ``headatlas detectors --options`` lists them), e.g. ``{"window": 4, "mcqa_topic": "arithmetic"}``;
      checked before the model loads.
    - ``out``: a folder; after every detector its result is written to ``out/partial/<name>.json``, at the
      end ``out/atlas.json`` and ``out/atlas.html`` (all atomically). ``resume`` reuses partial results
      computed with the same model, seed, settings and detector version.
    - ``progress``: a :class:`ScanProgress`, or ``fn(name, done, total)``.
    - ``causal``: run each detector's causal check on its labelled heads (ablation against random head
      sets on the head type's behaviour); False skips them (faster; the atlas then holds none).
    - ``specificity``: after the checks, ablate every confirmed set and measure every metric family's behaviour
      (:mod:`headatlas.detectors.specificity`; ``Atlas.specificity()``); default: only with ``detectors="all"``.
      Resumable (``out/partial/atlas.specificity.json``). Needs ``causal``.

    Every argument is checked before the model loads (InputError / InputTypeError). A detector that raises
    :class:`InputError` while it runs (its data does not fit this model) becomes a skipped result carrying the
    reason; any other exception propagates.
    """
    names = scan_order(resolve_detectors(detectors))
    seed, batch_size = check_seed(seed), check_count(batch_size, "batch_size")
    n_prompts = None if n_prompts is None else check_count(n_prompts, "n_prompts")
    quick, resume, causal = check_bool(quick, "quick"), check_bool(resume, "resume"), check_bool(causal, "causal")
    specificity = (isinstance(detectors, str) and detectors.strip() == "all" and causal) if specificity is None else \
        check_bool(specificity, "specificity")
    if specificity and not causal:
        raise InputError("specificity=True needs the causal checks (causal=True): the matrix ablates the sets they "
                         "confirm")
    options = registry.check_options(options, names)
    check_progress(progress)
    out_dir = prepare_out(out) if out is not None else None   # before the model loads: a bad --out fails at once
    with scan_lock(out_dir) if out_dir is not None else contextlib.nullcontext():
        return _run_scan(model, names, seed=seed, quick=quick, out_dir=out_dir, resume=resume, progress=progress,
                         batch_size=batch_size, n_prompts=n_prompts, options=options, causal=causal,
                         specificity=specificity)


def _run_scan(model: Any, names: list[str], *, seed: int, quick: bool, out_dir: Path | None, resume: bool,
              progress: ScanProgress | ProgressFn | None, batch_size: int, n_prompts: int | None,
              options: dict[str, Any] | None, causal: bool, specificity: bool = False) -> Atlas:
    """The body of :func:`scan` once its input is checked and ``out_dir`` (if any) is locked."""
    from .models import load

    m = load(model)
    prog = progress if isinstance(progress, ScanProgress) else (_CallableProgress(progress) if progress else ScanProgress())
    info = m.info.to_dict()
    fingerprint = model_fingerprint(m)
    settings = {"quick": bool(quick), "n_prompts": n_prompts, "batch_size": int(batch_size), "causal": bool(causal)}
    common_key = {"model": info, "weights": fingerprint, "seed": int(seed),
                  "settings": {k: v for k, v in settings.items() if k != "causal"},
                  "options": options or {}, "schema": schema.PARTIAL_SCHEMA}
    n_layers, n_heads = m.info.n_layers, m.info.n_heads

    results: dict[str, DetectorResult] = {}
    metas: dict[str, DetectorMeta] = {}
    timings: dict[str, float] = {}
    keys: dict[str, str] = {}
    shared_notes: dict[str, str] = {}
    cache = ScanCache()

    def config_for(name: str, results: dict[str, DetectorResult]) -> ScanConfig:
        return ScanConfig(seed=int(seed), n_prompts=n_prompts, batch_size=int(batch_size), quick=bool(quick),
                          progress=lambda done, total, _n=name: prog.update(_n, done, total),
                          options=dict(options or {}), results=results, cache=cache)

    # ---- phase 1: every detector's statistics
    for index, name in enumerate(names):
        det = registry.get(name)
        meta = DetectorMeta.from_detector(det)
        key = digest({**common_key, "detector": name, "version": int(det.version), "phase": "statistics",
                      "requires": {d: digest([results[d].labelled, results[d].scores]) for d in det.requires
                                   if d in results}})
        prog.start(name, index, len(names))
        path = partial_path(out_dir, name) if out_dir is not None else None
        loaded = load_partial(path, key, name) if (path is not None and resume) else None
        if loaded is not None:
            result, seconds, shared = loaded
            status = "resumed"
        else:
            config = config_for(name, dict(results))
            cache.current = name
            t0 = time.perf_counter()
            try:
                result = _only_attention_layers(_check_result(det.run(m, config), name, n_layers, n_heads),
                                                m.info.other_layers)
            except (InputError, UnsupportedArchitectureError) as exc:   # a method this architecture cannot take
                result = skipped_result(name, n_layers, n_heads, str(exc), int(seed))
            if not result.skipped:
                mark_distributed(result)
                _attach_token_view(det, m, config, result)
            seconds = time.perf_counter() - t0
            shared = _shared_note(det, cache, name)
            status = "done"
            if path is not None:
                write_partial(path, key, meta, result, seconds, shared)
        if shared:
            shared_notes[name] = shared
        if result.skipped:
            status = f"skipped: {result.skipped}"
        results[name], metas[name], timings[name], keys[name] = result, meta, seconds, key
        prog.finish(name, seconds, status)

    # ---- phase 2: the causal battery, each check seeing every result (its family's clean pool)
    checked = [n for n in names if causal and _needs_check(registry.get(n), results[n])]
    for name in names:
        if name not in checked:
            results[name].causal = _static_causal(registry.get(name), results[name])
    for index, name in enumerate(checked):
        det = registry.get(name)
        key = _check_key(keys[name], det, results)
        prog.check_start(name, index, len(checked))
        path = partial_path(out_dir, name, "causal") if out_dir is not None else None
        loaded = load_partial(path, key, name) if (path is not None and resume) else None
        if loaded is not None:
            result, seconds, _ = loaded
            status = "resumed"
        else:
            result = results[name]
            cache.current = name
            t0 = time.perf_counter()
            result.causal = _run_check(det, m, config_for(name, dict(results)), result)
            seconds = time.perf_counter() - t0
            status = "done"
            if path is not None:
                write_partial(path, key, metas[name], result, seconds, "")
        results[name] = result
        timings[name] += seconds
        prog.check_finish(name, seconds, status)

    model_info = {**info, "fingerprint": fingerprint, "source": m.source}
    if options:
        settings["options"] = sorted(options)   # their names only: values can be large arrays
    if n_prompts is None:   # record the values used: each detector's own default
        settings = {**settings, "n_prompts": {name: int(r.n_prompts) for name, r in results.items() if not r.skipped}}
    writes = _writes(m, results, digest(common_key), out_dir, resume)
    atlas = Atlas(model_info, results, metas, seed=int(seed), settings=settings, timings=timings,
                  shared_passes=shared_notes, writes=writes)
    if specificity:   # phase 3: the specificity matrix, on the corrected (BH across checks) atlas
        key = digest({**common_key, "statistics": keys, "phase": "specificity",
                      "checks": {n: digest(r.causal.to_dict()) for n, r in results.items() if r.causal is not None}})
        atlas.set_specificity(_specificity(m, config_for("specificity", dict(results)), atlas, prog, key,
                                           partial_path(out_dir, "atlas", "specificity") if out_dir else None, resume))
    if out_dir is not None:  # both rendered first; the HTML is never older than the JSON (outdir.write_atlas_pair)
        write_atlas_pair(out_dir / "atlas.json", schema.dumps(atlas.to_dict()) + "\n", out_dir / "atlas.html",
                         atlas.to_html())
    return atlas


def _specificity(m: Any, config: ScanConfig, atlas: Atlas, prog: ScanProgress, key: str, path: Path | None,
                 resume: bool) -> Any:
    """The matrix (:func:`headatlas.detectors.specificity.compute`), each finished run written to ``path`` (the
    runs there under ``key`` are reused); a diagonal that does not reproduce its check is noted, not raised."""
    from .detectors.specificity import compute
    from .scanfiles import load_runs, write_runs

    done = load_runs(path, key) if (path is not None and resume) else {}
    runs = dict(done)

    def on_run(run_key: str, effects: dict[str, float]) -> None:
        runs[run_key] = effects
        if path is not None:
            write_runs(path, key, runs)

    return compute(m, config, atlas, done=done, on_run=on_run, progress=prog.specificity_update, verify=False)


class _CallableModule(type(os)):
    """``headatlas.scan(...)`` calls :func:`scan` even where importing the submodule (``headatlas.cli`` does)
    bound the package attribute ``headatlas.scan`` to this module (the package exports its functions lazily)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Atlas:
        return scan(*args, **kwargs)


import sys as _sys  # noqa: E402

_sys.modules[__name__].__class__ = _CallableModule
