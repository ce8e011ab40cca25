"""Small checks of user input shared by the public API and the CLI.

Each returns the value in its canonical form or raises :class:`~headatlas.errors.InputTypeError` (wrong kind
of value) / :class:`~headatlas.errors.InputError` (right kind, unusable value) with a one-line message that
names the argument, what it got and what to pass instead. A float is never truncated to an int, a NaN never
passes as a number, and a bool is never taken for an int.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Iterable, Sequence, TypeVar

import numpy as np

from .errors import InputError, InputTypeError

T = TypeVar("T")

MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed and numpy take seeds up to int64


def _show(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 40 else text[:37] + "..."


def check_int(x: Any, what: str) -> int:
    """``x`` as a Python int: ints, numpy integers and 0-d integer tensors pass; floats (``0.7``), bools,
    strings and others raise :class:`InputTypeError` (a float is never truncated)."""
    if type(x).__module__.startswith("torch") and getattr(x, "dim", lambda: -1)() == 0:
        if not (x.is_floating_point() or x.is_complex()) and str(x.dtype) != "torch.bool":
            return int(x)
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Integral):
        raise InputTypeError(f"{what} must be an integer, got {type(x).__name__} {_show(x)}")
    return int(x)


def check_count(x: Any, what: str, *, minimum: int = 1, maximum: int | None = None) -> int:
    """An integer in ``minimum..maximum`` (e.g. a batch size, a number of prompts or of new tokens)."""
    n = check_int(x, what)
    if n < minimum or (maximum is not None and n > maximum):
        upper = f"..{maximum}" if maximum is not None else " or more"
        raise InputError(f"{what} must be {minimum}{upper}, got {n}")
    return n


def check_seed(seed: Any, what: str = "seed", *, maximum: int = MAX_SEED) -> int:
    """A seed: an integer in ``0..maximum`` (default ``2**63-1``, what torch and numpy generators accept)."""
    if isinstance(seed, str):
        raise InputTypeError(f"{what} must be an integer, got the string {_show(seed)}; pass e.g. {what}=0")
    n = check_int(seed, what)
    if not 0 <= n <= maximum:
        raise InputError(f"{what} must be in 0..{'2**63-1' if maximum == MAX_SEED else maximum}, got {n}")
    return n


def check_bool(x: Any, what: str) -> bool:
    """True or False (numpy bools too); ``0``/``1``/strings are refused so that ``"no"`` is never truthy."""
    if not isinstance(x, (bool, np.bool_)):
        raise InputTypeError(f"{what} must be True or False, got {type(x).__name__} {_show(x)}")
    return bool(x)


def check_finite(x: Any, what: str) -> float:
    """A finite real number (NaN and infinity would turn every logit into NaN)."""
    if type(x).__module__.startswith("torch") and getattr(x, "numel", lambda: 0)() == 1:
        x = x.reshape(()).item()
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real):
        raise InputTypeError(f"{what} must be a number, got {type(x).__name__} {_show(x)}")
    value = float(x)
    if not math.isfinite(value):
        raise InputError(f"{what} is {value}; pass a finite number")
    return value


def check_range(x: Any, what: str, *, low: float | None = None, high: float | None = None,
                low_open: bool = False) -> float:
    """A finite number in ``[low, high]`` (``(low, high]`` with ``low_open``: e.g. a regularisation > 0)."""
    value = check_finite(x, what)
    if low is not None and (value < low or (low_open and value == low)):
        raise InputError(f"{what} must be {'>' if low_open else '>='} {low:g}"
                         + (f" and <= {high:g}" if high is not None else "") + f", got {value:g}")
    if high is not None and value > high:
        raise InputError(f"{what} must be <= {high:g}, got {value:g}")
    return value


def check_real_array(x: Any, what: str, *, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A float64 array of real, finite numbers (a numpy array, a tensor or nested lists); ``shape`` when given.
    Strings, objects and complex numbers are refused, never cast."""
    if type(x).__module__.startswith("torch") and hasattr(x, "detach"):
        x = x.detach().cpu()
        if x.is_complex():
            raise InputTypeError(f"{what} must be real numbers, got a complex tensor")
        x = x.float() if str(x.dtype) == "torch.bfloat16" else x
    if isinstance(x, (str, bytes)) or x is None:
        raise InputTypeError(f"{what} must be an array of numbers, got {type(x).__name__} {_show(x)}")
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError):
        raise InputTypeError(f"{what} must be an array of numbers (a ragged list is not one)") from None
    if arr.dtype.kind not in "iuf":
        raise InputTypeError(f"{what} must be real numbers, got {'bools' if arr.dtype.kind == 'b' else arr.dtype}")
    if shape is not None and arr.shape != tuple(shape):
        raise InputError(f"{what} must have shape {list(shape)}, got {list(arr.shape)}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise InputError(f"{what} holds {int((~np.isfinite(arr)).sum())} NaN or infinite value(s); pass finite numbers")
    return arr


def check_binary(x: Any, what: str) -> np.ndarray:
    """Labels that are 0 or 1 exactly (ints, bools or floats 0.0/1.0) -> an int array; anything else (2, 0.5, NaN,
    strings) is refused, never truncated."""
    arr = np.asarray(x)
    if arr.dtype.kind == "b":
        return arr.astype(int)
    if arr.dtype.kind not in "iuf":
        raise InputTypeError(f"{what} must be 0 or 1, got {arr.dtype} values such as {_show(arr.ravel()[:3].tolist())}")
    bad = ~np.isin(arr, (0, 1))
    if bad.any():
        raise InputError(f"{what} must be 0 or 1, got {_show(arr[bad][0].item())} ({int(bad.sum())} such value(s)); "
                         "a probe predicts a binary label")
    return arr.astype(int)


def check_integral(x: Any, what: str) -> np.ndarray:
    """An array of integers (integer dtype, or floats with integral values) -> int64; 0.5 is never truncated."""
    arr = np.asarray(x)
    if arr.dtype.kind in "iub":
        return arr.astype(np.int64)
    if arr.dtype.kind != "f" or not np.isfinite(arr).all() or (arr != np.round(arr)).any():
        raise InputError(f"{what} must be integers, got {arr.dtype} values such as {_show(arr.ravel()[:3].tolist())}")
    return arr.astype(np.int64)


def check_hashable(key: Any, what: str) -> Any:
    """A key usable in a dict (lists become tuples); InputTypeError for a dict, a set or a nested list."""
    key = tuple(key) if isinstance(key, list) else key
    try:
        hash(key)
    except TypeError:
        raise InputTypeError(f"{what} must be a string or a number (or a flat list of them), got "
                             f"{type(key).__name__} {_show(key)}") from None
    return key


def check_choice(x: Any, what: str, choices: Sequence[str]) -> str:
    """One of ``choices`` (strings)."""
    if not isinstance(x, str):
        raise InputTypeError(f"{what} must be one of {', '.join(choices)}; got {type(x).__name__} {_show(x)}")
    if x not in choices:
        raise InputError(f"unknown {what} {x!r}; use {', '.join(choices)}")
    return x


def check_callable(fn: Any, what: str, *, optional: bool = True) -> Callable[..., Any] | None:
    """A function (or None when ``optional``)."""
    if fn is None and optional:
        return None
    if not callable(fn):
        raise InputTypeError(f"{what} must be a function, got {type(fn).__name__} {_show(fn)}")
    return fn


def check_str_list(items: Any, what: str) -> list[str]:
    """A string or a list/tuple of strings -> a non-empty list of strings."""
    if isinstance(items, str):
        return [items]
    if not isinstance(items, (list, tuple)):
        raise InputTypeError(f"{what} must be a string or a list of strings, got {type(items).__name__} {_show(items)}")
    if not items:
        raise InputError(f"no {what} given")
    bad = [x for x in items if not isinstance(x, str)]
    if bad:
        raise InputTypeError(f"{what} must be strings, got {type(bad[0]).__name__} {_show(bad[0])}")
    return list(items)


def check_iterable(x: Any, what: str, example: str) -> Iterable[Any]:
    """Something to iterate over that is not a string, a number or None."""
    if x is None or isinstance(x, (str, bytes, numbers.Number)) or not hasattr(x, "__iter__"):
        raise InputTypeError(f"{what} must be a list such as {example}, got {type(x).__name__} {_show(x)}")
    return x
