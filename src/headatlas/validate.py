"""Argument checks of the public entry points, one function per entry point.

Each entry point (:func:`headatlas.probe`, :func:`headatlas.iti`, :func:`headatlas.gate` (their checks:
:mod:`headatlas.methods.arguments`, re-exported here), :func:`headatlas.compare`, :func:`headatlas.sweep`, and the
:class:`~headatlas.compare.Comparison` record) calls
its checker first, before it loads a model, reads data or starts a cluster: every bad value is one
:class:`~headatlas.errors.InputError` / :class:`~headatlas.errors.InputTypeError` naming the argument, never a
traceback from scikit-learn, pandas, safetensors or Ray, and never a silent accept. Sizes that would allocate or
run without bound have caps (:data:`MAX_PERM`, :data:`MAX_PROBE_BYTES`, :data:`MAX_SEEDS`, ...), each stated in
its error.
"""

from __future__ import annotations

import os
from typing import Any, Sequence


from .checks import (check_bool, check_callable, check_count, check_range, check_seed)
from .errors import InputError, InputTypeError

MAX_SEEDS = 1000        # seeds of a sweep
MAX_TASKS = 10_000      # (model, seed) tasks of a sweep


# The checks of probe / iti / gate (and their caps) live a floor down, in headatlas.methods.arguments, so that the
# methods never import this module (it imports the scan). They stay importable from here, loaded on first use (the
# methods package imports torch; this module does not).
_METHOD_CHECKS = frozenset({
    "MAX_FOLDS", "MAX_PERM", "MAX_PROBE_BYTES", "MAX_RIDGE", "MAX_GATE_SEEDS", "MAX_GATE_STEPS", "MAX_LAM",
    "GATE_SEED_STRIDE", "check_probe_args", "check_position", "check_probe_size", "check_iti_args", "check_shift",
    "check_gate_args", "check_mask"})


def __getattr__(name: str) -> Any:
    if name in _METHOD_CHECKS:
        from .methods import arguments

        return getattr(arguments, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----- compare / Comparison -------------------------------------------------------------------------------------
def check_compare_args(*, detectors: Any, seed: Any, quick: Any, causal: Any, batch_size: Any, n_prompts: Any,
                       options: Any, activations: Any, progress: Any, on_step: Any, device: Any,
                       dtype: Any) -> list[str]:
    """:func:`headatlas.compare`'s settings; returns the detector names."""
    from .detectors.base import check_options, scan_order
    from .scan import check_progress, resolve_detectors

    names = resolve_detectors(detectors)
    check_seed(seed)
    for value, what in ((quick, "quick"), (causal, "causal"), (activations, "activations")):
        check_bool(value, what)
    check_count(batch_size, "batch_size")
    if n_prompts is not None:
        check_count(n_prompts, "n_prompts")
    check_options(options, scan_order(names))
    check_progress(progress)
    check_callable(on_step, "on_step (fn(message))")
    check_device_dtype(device, dtype, local=True)
    return names


def check_device_dtype(device: Any, dtype: Any, *, local: bool) -> None:
    """The checks :func:`headatlas.load` makes of ``device`` and ``dtype``, before any model loads (``local``
    False: the device is only parsed, not looked for on this machine: a remote Ray worker may have it)."""
    import torch

    from .models.loading import _resolve_device, _resolve_dtype

    _resolve_dtype(dtype)
    if device is None:
        return
    if local:
        _resolve_device(device)
        return
    if not isinstance(device, (str, torch.device)) or isinstance(device, bool):
        raise InputTypeError(f"device must be a string such as 'cpu' or 'cuda:0', got {type(device).__name__}")
    try:
        torch.device(device.strip() if isinstance(device, str) else device)
    except (RuntimeError, ValueError, TypeError):
        raise InputError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None


# ----- sweep ------------------------------------------------------------------------------------------------------
def check_sweep_args(*, specs: Any, out: Any, num_cpus: Any, cpus_per_task: Any, gpus_per_task: Any, quick: Any,
                     batch_size: Any, n_prompts: Any, device: Any, dtype: Any, resume: Any, address: Any,
                     progress: Any) -> None:
    """:func:`headatlas.sweep`'s settings (the seeds: :func:`headatlas.sweep.parse_seeds`)."""
    if out is None or (isinstance(out, str) and not out.strip()):
        raise InputError("sweep needs an output folder: out=DIR (--out DIR)")
    if specs is None or isinstance(specs, bool) or not isinstance(specs, (str, os.PathLike, list, tuple)):
        raise InputTypeError(f"specs must be a model spec or a list of them (bundled names, folders, hub ids), got "
                             f"{type(specs).__name__} {specs!r:.40}")
    for value, what in ((quick, "quick"), (resume, "resume")):
        check_bool(value, what)
    check_count(batch_size, "batch_size")
    if n_prompts is not None:
        check_count(n_prompts, "n_prompts")
    if num_cpus is not None:
        check_count(num_cpus, "num_cpus")
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise InputError(f"address must be 'auto' or 'ray://host:port', got {address!r:.40}")
    cpus = check_range(cpus_per_task, "cpus_per_task", low=0.0)
    if gpus_per_task is not None:
        check_range(gpus_per_task, "gpus_per_task", low=0.0)
    if address is None:   # a local cluster: its CPUs are known now; a task asking for more would wait forever
        have = num_cpus or os.cpu_count() or 1
        if cpus > have:
            raise InputError(f"cpus_per_task={cpus:g} but the local Ray cluster has {have} CPU(s): no task could "
                             "ever start; lower it (or raise num_cpus)")
    check_callable(progress, "progress (fn(task record))")
    check_device_dtype(device, dtype, local=address is None)


def check_unique_specs(models: Sequence[Any]) -> None:
    """No model (spec and revision) is listed twice: it would be scanned twice under two labels."""
    seen: dict[tuple[str, Any], str] = {}
    for m in models:
        key = (os.path.realpath(m.spec) if os.path.exists(m.spec) else m.spec, m.revision)
        if key in seen:
            raise InputError(f"model {m.spec!r}{'@' + m.revision if m.revision else ''} is listed twice "
                             f"(as {seen[key]!r} and {m.label!r}); list each model once")
        seen[key] = m.label


def check_n_tasks(n_models: int, n_seeds: int) -> None:
    if n_models * n_seeds > MAX_TASKS:
        raise InputError(f"{n_models} model(s) x {n_seeds} seed(s) = {n_models * n_seeds} tasks; a sweep runs at most "
                         f"{MAX_TASKS}")
