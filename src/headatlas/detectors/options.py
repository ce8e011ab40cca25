"""Detector options: the settings a detector reads from ``ScanConfig.options``, declared as data.

A detector lists its options as :class:`Option` records (``Detector.options``): name, kind, default, range
or choices, and a one-line help. ``scan(options=...)`` takes one flat dict of option name -> value (an
option name means the same thing for every detector that declares it, e.g. ``window`` for the five
detectors that share the random-token passes); ``headatlas scan --option NAME=VALUE`` takes the same as text.
:func:`check_options` checks every key and value against the declarations of the detectors a scan runs,
before the model loads: an unknown name, an option of a detector the scan does not run, a value of the wrong
kind or out of range is an :class:`~headatlas.errors.InputError`, never a skipped detector inside a
successful scan. ``headatlas detectors --options`` lists every declaration.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..checks import check_bool, check_choice, check_finite, check_int
from ..errors import InputError, InputTypeError

KINDS: dict[str, str] = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "choice": "one of the listed words",
    "ints": "a list of integers (comma-separated on the command line)",
    "array": "an array of numbers (a JSON list on the command line)",
}
MAX_ITEMS = 64          # the longest list an "ints" option takes
MAX_ARRAY = 10_000_000  # the most numbers an "array" option takes
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


@dataclass(frozen=True)
class Option:
    """One setting of a detector: ``name`` (lower_snake_case), ``kind`` (one of :data:`KINDS`), ``default`` (the
    value used when the option is not given; ``None`` = the detector derives it, ``help`` says how), ``help``;
    ``low``/``high`` bound an int/float (and every item of an "ints"), ``choices`` the words of a "choice"."""

    name: str
    kind: str
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise InputError(f"option name {self.name!r}: use lower_snake_case")
        if self.kind not in KINDS:
            raise InputError(f"option {self.name!r}: unknown kind {self.kind!r}; use one of {', '.join(KINDS)}")
        if (self.kind == "choice") != bool(self.choices):
            raise InputError(f"option {self.name!r}: a 'choice' option, and only one, lists its choices")
        if self.default is not None and self.kind != "array":
            self.check(self.default)

    # ----- values ---------------------------------------------------------------------------------------
    def check(self, value: Any) -> Any:
        """``value`` in its canonical form (int, float, bool, str, tuple of ints, float array); InputTypeError or
        InputError naming the option, what it takes and what it got."""
        what = f"option {self.name!r}"
        if self.kind == "int":
            return self._in_range(check_int(value, what))
        if self.kind == "float":
            return self._in_range(check_finite(value, what))
        if self.kind == "bool":
            return check_bool(value, what)
        if self.kind == "choice":
            return check_choice(value, what, self.choices)
        if self.kind == "ints":
            return self._ints(value, what)
        return _array(value, what)

    def parse(self, text: str) -> Any:
        """A value given as text (``headatlas scan --option NAME=VALUE``), checked."""
        raw = text.strip()
        what = f"--option {self.name}={text}"
        try:
            if self.kind == "int":
                value: Any = int(raw)
            elif self.kind == "float":
                value = float(raw)
            elif self.kind == "bool":
                if raw.lower() not in _TRUE + _FALSE:
                    raise ValueError
                value = raw.lower() in _TRUE
            elif self.kind == "ints":
                value = [int(p) for p in raw.split(",") if p.strip()]
            elif self.kind == "array":
                value = json.loads(raw)
            else:
                value = raw
        except ValueError:
            raise InputError(f"{what}: {self.name} takes {self.describe()}") from None
        return self.check(value)

    def describe(self) -> str:
        """``"an integer 1..64"``, ``"one of colors, arithmetic"``, ..."""
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        text = KINDS[self.kind]
        if self.low is not None or self.high is not None:
            lo = "" if self.low is None else f"{self.low:g}"
            hi = "" if self.high is None else f"{self.high:g}"
            text += f" {lo}..{hi}" if lo and hi else (f" >= {lo}" if lo else f" <= {hi}")
        return text

    def _in_range(self, x: float) -> Any:
        if (self.low is not None and x < self.low) or (self.high is not None and x > self.high):
            raise InputError(f"option {self.name!r} must be {self.describe()}, got {x:g}")
        return x

    def _ints(self, value: Any, what: str) -> tuple[int, ...]:
        if isinstance(value, np.ndarray):
            value = value.tolist()
        if not isinstance(value, (list, tuple)):
            raise InputTypeError(f"{what} must be a list of integers such as [200, 400], got {type(value).__name__} "
                                 f"{value!r:.40}")
        if not value or len(value) > MAX_ITEMS:
            raise InputError(f"{what} must list 1..{MAX_ITEMS} integers, got {len(value)}")
        return tuple(self._in_range(check_int(v, f"{what}: each item")) for v in value)


def _array(value: Any, what: str) -> np.ndarray:
    """A finite float64 array (numbers only: no strings, objects or complex values)."""
    if isinstance(value, (str, bytes)) or value is None:
        raise InputTypeError(f"{what} must be an array of numbers, got {type(value).__name__}")
    arr = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value)
    if arr.dtype.kind not in "iuf":
        raise InputTypeError(f"{what} must be an array of real numbers, got dtype {arr.dtype}")
    if arr.size > MAX_ARRAY:
        raise InputError(f"{what} holds {arr.size} numbers; at most {MAX_ARRAY}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise InputError(f"{what} holds NaN or infinite values")
    return arr


# ----- a scan's options ------------------------------------------------------------------------------------------
def declared(detectors: Sequence[Any]) -> dict[str, tuple[Option, list[str]]]:
    """Option name -> (its declaration, the detectors that declare it), over ``detectors`` (``Detector`` records)."""
    out: dict[str, tuple[Option, list[str]]] = {}
    for d in detectors:
        for o in d.options:
            out.setdefault(o.name, (o, []))[1].append(d.name)
    return out


def check_declarations(detector: Any, others: Sequence[Any]) -> None:
    """A detector's ``options`` are Option records with distinct names, and each name it shares with another
    registered detector is declared identically there (one name, one meaning). InputError otherwise."""
    opts = detector.options
    if not isinstance(opts, tuple) or not all(isinstance(o, Option) for o in opts):
        raise InputTypeError(f"detector {detector.name!r}: options must be a tuple of Option records")
    names = [o.name for o in opts]
    if len(set(names)) != len(names):
        raise InputError(f"detector {detector.name!r} declares an option twice: {', '.join(names)}")
    known = declared(others)
    for o in opts:
        if o.name in known and known[o.name][0] != o:
            raise InputError(f"detector {detector.name!r} declares option {o.name!r} differently from "
                             f"{', '.join(known[o.name][1])}; an option name means one thing for every detector")


def _listing(table: Mapping[str, tuple[Option, list[str]]]) -> str:
    by_detector: dict[str, list[str]] = {}
    for name, (_, owners) in table.items():
        for d in owners:
            by_detector.setdefault(d, []).append(name)
    return "; ".join(f"{d}: {', '.join(n)}" for d, n in sorted(by_detector.items())) or "none"


def check_options(options: Any, running: Sequence[Any], registered: Sequence[Any]) -> dict[str, Any]:
    """``options`` checked against the declarations of the ``running`` detectors (``registered``: every
    detector, to tell an unknown name from an option of a detector the scan does not run). Returns the
    values in canonical form, after each running detector's ``options_rule(values)`` (relations between its
    options, e.g. a block longer than the window) had its say."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise InputTypeError(f"options must be a dict of option name -> value such as {{'window': 4}}, got "
                             f"{type(options).__name__} {options!r:.40}; `headatlas detectors --options` lists them")
    everywhere, here = declared(registered), declared(running)
    out: dict[str, Any] = {}
    for key, value in options.items():
        if not isinstance(key, str):
            raise InputTypeError(f"an option name must be a string, got {type(key).__name__} {key!r:.40}")
        if key not in everywhere:
            close = difflib.get_close_matches(key, list(everywhere), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InputError(f"unknown option {key!r}{hint}; the detectors' options are: {_listing(everywhere)}")
        if key not in here:
            owners = ", ".join(everywhere[key][1])
            raise InputError(f"option {key!r} is read by {owners}, which this scan does not run "
                             f"({', '.join(d.name for d in running)}); add the detector or drop the option")
        out[key] = here[key][0].check(value)
    for d in running:
        if d.options_rule is not None:
            d.options_rule(out)
    return out


def parse_cli_options(texts: Sequence[str] | None, registered: Sequence[Any]) -> dict[str, Any]:
    """``["window=4", "mcqa_topic=colors"]`` -> ``{"window": 4, "mcqa_topic": "colors"}`` (each value parsed
    by its declared kind; unknown names and malformed items are InputErrors)."""
    everywhere = declared(registered)
    out: dict[str, Any] = {}
    for text in texts or ():
        name, sep, value = text.partition("=")
        name = name.strip()
        if not sep or not name:
            raise InputError(f"--option {text!r}: write NAME=VALUE, e.g. --option window=4")
        if name not in everywhere:
            close = difflib.get_close_matches(name, list(everywhere), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InputError(f"unknown option {name!r}{hint}; the detectors' options are: {_listing(everywhere)}")
        if name in out:
            raise InputError(f"--option {name} is given twice")
        out[name] = everywhere[name][0].parse(value)
    return out


def describe_default(o: Option) -> str:
    if o.default is None:
        return "(derived)"
    if isinstance(o.default, bool):
        return "true" if o.default else "false"
    if isinstance(o.default, float) and math.isfinite(o.default):
        return f"{o.default:g}"
    if isinstance(o.default, tuple):
        return ",".join(str(x) for x in o.default)
    return str(o.default)
