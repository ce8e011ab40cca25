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


def check_seed(seed: Any, what: str = "seed") -> int:
    """A seed: an integer in ``0..2**63-1`` (what torch and numpy generators accept)."""
    if isinstance(seed, str):
        raise InputTypeError(f"{what} must be an integer, got the string {_show(seed)}; pass e.g. {what}=0")
    n = check_int(seed, what)
    if not 0 <= n <= MAX_SEED:
        raise InputError(f"{what} must be in 0..2**63-1, got {n}")
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
