"""Argument checks of the public entry points, one function per entry point.

Each entry point (:func:`headatlas.probe`, :func:`headatlas.iti`, :func:`headatlas.gate`,
:func:`headatlas.compare`, :func:`headatlas.sweep`, and the :class:`~headatlas.compare.Comparison` record) calls
its checker first, before it loads a model, reads data or starts a cluster: every bad value is one
:class:`~headatlas.errors.InputError` / :class:`~headatlas.errors.InputTypeError` naming the argument, never a
traceback from scikit-learn, pandas, safetensors or Ray, and never a silent accept. Sizes that would allocate or
run without bound have caps (:data:`MAX_PERM`, :data:`MAX_PROBE_BYTES`, :data:`MAX_SEEDS`, ...), each stated in
its error.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any, Sequence

import numpy as np

from .checks import (MAX_SEED, check_bool, check_callable, check_choice, check_count, check_finite, check_int,
                     check_range, check_real_array, check_seed)
from .errors import InputError, InputTypeError

MAX_FOLDS = 1000                                        # grouped cross-validation folds of a probe
MAX_PERM = {"ridge": 100_000, "logistic": 10_000}       # shuffled-label draws (logistic re-fits every draw)
MAX_PROBE_BYTES = 2 * 2**30                             # the permutation null's arrays
MAX_RIDGE = 1e6                                         # x the mean eigenvalue: beyond it every probe is constant
MAX_GATE_SEEDS, MAX_GATE_STEPS = 1000, 100_000
MAX_LAM = 1000.0        # nats per unit clipped logit: far beyond any task loss, every gate is pushed to its bound
GATE_SEED_STRIDE = 1000  # gate fit s of a run is seeded with seed * 1000 + s
MAX_SEEDS = 1000        # seeds of a sweep
MAX_TASKS = 10_000      # (model, seed) tasks of a sweep


# ----- probe / iti ----------------------------------------------------------------------------------------------
def check_probe_args(*, dataset: Any, position: Any, n_folds: Any, n_perm: Any, method: Any, ridge: Any, C: Any,
                     seed: Any, batch_size: Any, progress: Any) -> None:
    """:func:`headatlas.probe`'s settings (everything but the model)."""
    from pathlib import Path

    from .tasks.labelled import ProbeData

    method = check_choice(method, "method", ("ridge", "logistic"))
    check_count(n_folds, "n_folds", minimum=2, maximum=MAX_FOLDS)
    if n_perm is not None:
        check_count(n_perm, "n_perm", maximum=MAX_PERM[method])
    check_range(ridge, "ridge", low=0.0, low_open=True, high=MAX_RIDGE)
    check_range(C, "C", low=0.0, low_open=True, high=MAX_RIDGE)
    check_seed(seed)
    check_count(batch_size, "batch_size")
    check_callable(progress, "progress (fn(done, total))")
    check_position(position)
    if dataset is not None and not isinstance(dataset, (ProbeData, str, Path, list, tuple)):
        raise InputTypeError(f"dataset must be ProbeData, a path to a .jsonl/.csv file or a list of "
                             f"{{'text', 'label', 'group'}} dicts, got {type(dataset).__name__}")


def check_position(position: Any) -> None:
    """A token position (an int; negative counts from each text's end) or one int per text."""
    if isinstance(position, (list, tuple, np.ndarray)) or type(position).__module__.startswith("torch"):
        items = np.asarray(position.cpu() if hasattr(position, "cpu") else position, dtype=object).reshape(-1)
        for p in items:
            check_int(p, "position")
        if not len(items):
            raise InputError("position is an empty list; give one position, or one per text")
        return
    check_int(position, "position (the token probed: -1 = each text's last)")


def check_probe_size(n_perm: int, n_items: int, n_heads: int) -> None:
    """The permutation null's arrays (labels, weights and hits per draw: ~``8 * n_perm * 3 (items + heads)``
    bytes) stay under :data:`MAX_PROBE_BYTES`."""
    need = 8 * n_perm * 3 * (n_items + n_heads)
    if need > MAX_PROBE_BYTES:
        most = max(1, MAX_PROBE_BYTES // (24 * (n_items + n_heads)))
        raise InputError(f"n_perm={n_perm} with {n_items} items and {n_heads} heads needs about {need / 2**30:.1f} GiB "
                         f"for the permutation null; use n_perm <= {most} (the p floor is 1 / (1 + n_perm))")


def check_iti_args(*, heads: Any, directions: Any, alpha: Any, sigma: Any) -> None:
    """:func:`headatlas.iti`'s settings: ``alpha`` finite; ``directions`` a ProbeResult or real finite numbers;
    ``sigma`` (>= 0, finite) only with array directions; ``heads=k`` a count, only with a ProbeResult."""
    from .methods.probe_fit import ProbeResult

    check_finite(alpha, "alpha")
    is_result = isinstance(directions, ProbeResult)
    if is_result and sigma is not None:
        raise InputError("sigma applies to directions given as an array; a ProbeResult carries its own sigma")
    if not is_result:
        if not (isinstance(directions, np.ndarray) or type(directions).__module__.startswith("torch")):
            raise InputTypeError(f"directions must be a ProbeResult or a [layers, heads, d_head] tensor/array, got "
                                 f"{type(directions).__name__}")
        check_real_array(directions, "directions")
    if sigma is not None and (check_real_array(sigma, "sigma") < 0).any():
        raise InputError("sigma must be >= 0 (a standard deviation per head)")
    if isinstance(heads, numbers.Integral) and not isinstance(heads, bool):
        if not is_result:
            raise InputError("heads=k (top-k) needs a ProbeResult as directions; pass [(layer, head), ...] otherwise")
        check_count(heads, "heads (the top k)")


def check_shift(alpha: float, scale: float, dtype: Any) -> None:
    """``alpha * scale`` (the largest shift ITI adds) is finite in the model's dtype."""
    import torch

    limit = float(torch.finfo(dtype).max) if getattr(dtype, "is_floating_point", False) else float(np.finfo(np.float32).max)
    if not math.isfinite(abs(alpha) * scale) or abs(alpha) * scale >= limit:
        raise InputError(f"alpha={alpha:g} times the largest direction ({scale:.3g}) overflows {dtype}; use a smaller "
                         "alpha (ITI's alpha is in standard deviations, e.g. 15)")


# ----- gate -------------------------------------------------------------------------------------------------------
def check_gate_args(*, prompts: Any, targets: Any, seed: Any, n_seeds: Any, steps: Any, lam: Any, lr: Any,
                    init_steps: Any) -> None:
    """:func:`headatlas.gate`'s settings."""
    n_seeds = check_count(n_seeds, "n_seeds", maximum=MAX_GATE_SEEDS)
    limit = (MAX_SEED - n_seeds) // GATE_SEED_STRIDE
    if check_seed(seed) > limit:
        raise InputError(f"seed must be in 0..{limit} for gate (fit s of the {n_seeds} seeds is seeded with "
                         f"seed * {GATE_SEED_STRIDE} + s), got {seed}")
    check_count(steps, "steps", maximum=MAX_GATE_STEPS)
    if init_steps is not None:
        check_count(init_steps, "init_steps", minimum=0, maximum=MAX_GATE_STEPS)
    check_range(lam, "lam", low=0.0, high=MAX_LAM)
    check_range(lr, "lr", low=0.0, low_open=True)
    if isinstance(prompts, (list, tuple)) and not prompts:
        raise InputError("no prompts given: gating needs at least one prompt")
    if targets is not None:
        check_mask(targets, "targets")


def check_mask(x: Any, what: str) -> None:
    """A bool mask: a bool tensor/array or nested lists of True/False."""
    if isinstance(x, (str, bytes)) or not (isinstance(x, (list, tuple, np.ndarray)) or hasattr(x, "dtype")):
        raise InputTypeError(f"{what} must be a bool mask [seq] or [batch, seq] (a tensor, array or list of True/"
                             f"False), got {type(x).__name__}")
    try:
        kind = str(x.dtype) if hasattr(x, "dtype") else str(np.asarray(x).dtype)
    except ValueError:   # ragged nested lists
        raise InputTypeError(f"{what} must be a rectangular bool mask [seq] or [batch, seq]") from None
    if kind not in ("bool", "torch.bool"):
        raise InputTypeError(f"{what} must be a bool mask [seq] or [batch, seq], got dtype {kind}")


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
