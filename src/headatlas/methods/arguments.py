"""Argument checks of the method entry points :func:`headatlas.probe`, :func:`headatlas.iti` and
:func:`headatlas.gate`, with their caps. Each entry point calls its checker before it loads a model or reads
data: every bad value is one :class:`~headatlas.errors.InputError` / :class:`~headatlas.errors.InputTypeError`
naming the argument. The checks of the scan-level entry points (compare, sweep) are in :mod:`headatlas.validate`,
a floor above, which re-exports these names."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from ..checks import (MAX_SEED, check_callable, check_choice, check_count, check_finite, check_int, check_range,
                      check_real_array, check_seed)
from ..errors import InputError, InputTypeError

MAX_FOLDS = 1000                                        # grouped cross-validation folds of a probe
MAX_PERM = {"ridge": 100_000, "logistic": 10_000}       # shuffled-label draws (logistic re-fits every draw)
MAX_PROBE_BYTES = 2 * 2**30                             # the permutation null's arrays
MAX_RIDGE = 1e6                                         # x the mean eigenvalue: beyond it every probe is constant
MAX_GATE_SEEDS, MAX_GATE_STEPS = 1000, 100_000
MAX_LAM = 1000.0        # nats per unit clipped logit: far beyond any task loss, every gate is pushed to its bound
GATE_SEED_STRIDE = 1000  # gate fit s of a run is seeded with seed * 1000 + s


# ----- probe / iti ----------------------------------------------------------------------------------------------
def check_probe_args(*, dataset: Any, position: Any, n_folds: Any, n_perm: Any, method: Any, ridge: Any, C: Any,
                     seed: Any, batch_size: Any, progress: Any) -> None:
    """:func:`headatlas.probe`'s settings (everything but the model)."""
    from pathlib import Path

    from ..tasks.labelled import ProbeData

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
    from .probe_fit import ProbeResult

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


