"""``headatlas.compare(a, b)``: how the heads of two same-shaped models differ (a base and its fine-tune,
two checkpoints, a model and an edited copy).

Per head and detector it runs the same scan (same detectors, prompts and seed) on both models and reports
``score_a``, ``score_b``, ``delta`` and whether the change is significant; per head it also measures how
much the head's weights moved (:func:`~headatlas.head_deltas.weight_delta`) and how much its output moved on
a fixed set of prompts (:func:`~headatlas.head_deltas.activation_delta`). Two saved atlases can be compared
without models (no weight/activation deltas).

The pieces: :mod:`headatlas.atlas.change` (the change test: a change is significant when the effect moved
by more than both models' null spreads allow, BH over the detector's heads, and the two bootstrap CIs are
disjoint), :mod:`headatlas.head_deltas` (weight and activation deltas, need the models) and
:mod:`headatlas.atlas.comparison` (the :class:`Comparison` record, its tables and JSON). This module
resolves the inputs and runs the comparison; it re-exports the public names of the other three.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from .atlas import Atlas
from .atlas.change import FDR, change_test
from .atlas.comparison import COMPARISON_SCHEMA, SHAPE_KEYS, Comparison, check_same_shape
from .errors import InputError
from .head_deltas import (ACT_LEN, N_ACT_PROMPTS, PROJECTIONS, activation_delta, activation_prompts, head_outputs,
                          head_slices, weight_delta)

__all__ = ["ACT_LEN", "COMPARISON_SCHEMA", "FDR", "N_ACT_PROMPTS", "PROJECTIONS", "SHAPE_KEYS", "Comparison",
           "activation_delta", "activation_prompts", "change_test", "check_same_shape", "compare", "head_outputs",
           "head_slices", "weight_delta"]


# ----------------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------------
def _atlas_path(spec: Any) -> Path | None:
    """The atlas.json that ``spec`` names (a .json file, or a folder with atlas.json and no model), else None."""
    if isinstance(spec, bool) or not isinstance(spec, (str, os.PathLike)):
        return None
    p = Path(os.fspath(spec)).expanduser()
    if p.suffix.lower() == ".json" and not p.is_dir():
        if not p.is_file():
            raise InputError(f"no such atlas file: {p}")
        return p
    if p.is_dir() and (p / "atlas.json").is_file() and not (p / "config.json").is_file() \
            and not (p / "adapter_config.json").is_file():
        return p / "atlas.json"
    return None


def _resolve(spec: Any, base: Any, device: Any, dtype: Any, what: str) -> Atlas | Any:
    """An :class:`Atlas` (atlas inputs) or a LoadedModel (anything else, adapters merged onto their base)."""
    from .models import LoadedModel, load
    from .models.adapter import is_adapter_folder, load_adapter

    if isinstance(spec, Atlas):
        return spec
    path = _atlas_path(spec)
    if path is not None:
        if base is not None:
            raise InputError(f"{what} is an atlas ({path}); a base model applies to adapter folders only")
        return Atlas.load(path)
    if is_adapter_folder(spec):
        return load_adapter(spec, base, device=device, dtype=dtype)
    if base is not None:
        raise InputError(f"base_{what} applies to a PEFT adapter folder (with adapter_config.json); {what} is not one")
    if isinstance(spec, LoadedModel):
        return spec
    return load(spec, device=device, dtype=dtype)


def compare(a: Any, b: Any, *, detectors: str | Sequence[str] | None = None, seed: int = 0, quick: bool = False,
            causal: bool = False, batch_size: int = 8, n_prompts: int | None = None,
            options: dict[str, Any] | None = None, base_a: Any = None, base_b: Any = None,
            device: str | None = None, dtype: str | None = None, activations: bool = True,
            out: str | os.PathLike | None = None, progress: Any = None,
            on_step: Callable[[str], None] | None = None) -> Comparison:
    """Compare the heads of models ``a`` and ``b`` (same layers, heads, kv heads and head dim).

    - ``a``, ``b``: anything :func:`headatlas.load` accepts (bundled name, HF id or folder, ``.gguf``,
      ``(model, tokenizer)``, LoadedModel), a PEFT/LoRA adapter folder (merged onto ``base_a``/``base_b``, or
      onto the base its ``adapter_config.json`` names), or two saved atlases (``atlas.json`` paths, folders
      holding one, or :class:`Atlas` objects: then no weight or activation deltas; both must be atlases).
    - ``detectors``, ``seed``, ``quick``, ``batch_size``, ``n_prompts``, ``options``, ``causal``: the scan run
      on both models (:func:`headatlas.scan`; ``causal`` default False: labels do not depend on the causal
      checks, which double the cost).
    - ``activations``: measure :func:`activation_delta` on the package sentences (one forward per model).
    - ``out``: write the comparison there (:meth:`Comparison.save`).
    - ``progress``: passed to both scans; ``on_step(message)`` is called before each step.

    Every setting is checked before a model loads (:func:`headatlas.validate.check_compare_args`).
    """
    from .scan import scan
    from .validate import check_compare_args

    names = check_compare_args(detectors=detectors, seed=seed, quick=quick, causal=causal, batch_size=batch_size,
                               n_prompts=n_prompts, options=options, activations=activations, progress=progress,
                               on_step=on_step, device=device, dtype=dtype)
    if out is not None:
        from .outdir import prepare_out

        out = prepare_out(out)       # before any model loads
    step = on_step or (lambda _msg: None)
    timings: dict[str, float] = {}
    notes: list[str] = []

    step("loading a")
    t0 = time.perf_counter()
    ra = _resolve(a, base_a, device, dtype, "a")
    step("loading b")
    rb = _resolve(b, base_b, device, dtype, "b")
    timings["load"] = time.perf_counter() - t0
    if isinstance(ra, Atlas) != isinstance(rb, Atlas):
        raise InputError("compare needs two models or two atlases; got " +
                         ("an atlas (a) and a model (b)" if isinstance(ra, Atlas) else "a model (a) and an atlas (b)") +
                         ": scan the model first (headatlas scan) or pass both models")
    if isinstance(ra, Atlas):
        check_same_shape(ra.model, rb.model, ra.model_name, rb.model_name)
        if detectors is not None:
            absent = [d for d in names if d not in ra.detectors and d not in rb.detectors]
            if absent:
                raise InputError(f"neither atlas holds {', '.join(absent)}; a holds {', '.join(ra.detectors) or 'none'}, "
                                 f"b holds {', '.join(rb.detectors) or 'none'}")
            keep = set(names)
            ra = _subset(ra, keep)
            rb = _subset(rb, keep)
        if ra.seed != rb.seed or ra.settings.get("quick") != rb.settings.get("quick"):
            notes.append(f"the atlases were scanned with different settings (a: seed {ra.seed}, quick "
                         f"{ra.settings.get('quick')}; b: seed {rb.seed}, quick {rb.settings.get('quick')}): "
                         "their prompts may differ")
        notes.append("two atlases compared without their models: weight and activation deltas are unavailable")
        comp = Comparison(ra, rb, notes=notes, timings=timings)
    else:
        check_same_shape(ra.info.to_dict(), rb.info.to_dict(), ra.source, rb.source)
        if ra.info.vocab_size != rb.info.vocab_size:
            notes.append(f"the vocabularies differ in size ({ra.info.vocab_size} vs {rb.info.vocab_size}); prompts "
                         "are written with each model's own tokenizer, activation deltas with a's token ids")
        step("weight deltas")
        t0 = time.perf_counter()
        wd, parts = weight_delta(ra, rb)
        timings["weight_delta"] = time.perf_counter() - t0
        act, act_desc = None, ""
        if activations:
            step("activation deltas")
            t0 = time.perf_counter()
            ids, act_desc = activation_prompts(ra, seed=seed)
            if int(ids.max()) >= rb.info.vocab_size:
                notes.append("activation deltas skipped: a's prompt tokens fall outside b's vocabulary")
                act_desc = ""
            else:
                act = activation_delta(ra, rb, ids)
            timings["activation_delta"] = time.perf_counter() - t0
        kw = dict(seed=seed, quick=quick, causal=causal, batch_size=batch_size, n_prompts=n_prompts,
                  options=options, progress=progress)
        step("scanning a")
        t0 = time.perf_counter()
        atlas_a = scan(ra, names, **kw)
        timings["scan_a"] = time.perf_counter() - t0
        step("scanning b")
        t0 = time.perf_counter()
        atlas_b = scan(rb, names, **kw)
        timings["scan_b"] = time.perf_counter() - t0
        comp = Comparison(atlas_a, atlas_b, weight_delta=wd, weight_parts=parts, activation_delta=act,
                          activation_prompts=act_desc, timings=timings, notes=notes)
    no_ci = [d for d in comp.detectors if d not in comp.skipped() and not comp.test(d)["have_ci"].any()]
    if no_ci:
        comp.notes.append(f"no bootstrap CI in {', '.join(no_ci)}: their changes are tested on the nulls alone")
    if out is not None:
        step("writing")
        comp.save(out)
    return comp


def _subset(atlas: Atlas, keep: set[str]) -> Atlas:
    names = [d for d in atlas.detectors if d in keep]
    return Atlas(atlas.model, {d: atlas.result(d) for d in names}, {d: atlas.meta[d] for d in names},
                 seed=atlas.seed, settings=atlas.settings, timings={d: t for d, t in atlas.timings.items() if d in keep},
                 headatlas_version=atlas.headatlas_version, created=atlas.created, notes=atlas.notes)


class _CallableModule(type(os)):
    """``headatlas.compare(...)`` calls :func:`compare` even where importing the submodule bound the package
    attribute ``headatlas.compare`` to this module (as for ``headatlas.scan``)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Comparison:
        return compare(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
