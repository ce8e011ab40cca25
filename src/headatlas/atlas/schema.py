"""The atlas JSON schema ``headatlas.atlas/2``: lossless, NaN-safe encoding of detector results.

Schema 2 (detector contract v2) stores per head ``effect, ci_low, ci_high, p_value, q_value,
stability`` beside ``scores, null_mean, null_std``, the label rule as data and the causal check.
Files written as ``headatlas.atlas/1`` still load: :func:`migrate_result_v1` keeps their scores,
nulls and labels, marks p/q/CI as unavailable (NaN) and records a note.

Plain JSON has no NaN, infinity, tuples or typed arrays, so values that need them are tagged:

- arrays: ``{"__ndarray__": {"dtype": "float64", "shape": [L, H], "data": [...]}}`` (row-major, flat);
  non-finite floats inside ``data`` are the strings ``"nan"``, ``"inf"``, ``"-inf"``;
- a non-finite float scalar: ``{"__float__": "nan"}``; a tuple: ``{"__tuple__": [...]}``;
- a dict with non-string keys: ``{"__items__": [[key, value], ...]}``.

Finite floats are written with ``repr`` precision, so float64 and float32 values come back
bit-for-bit. Readers reject a missing/foreign schema, a newer major version, and unknown keys
(each with :class:`~headatlas.errors.AtlasFileError`); a later schema adds an explicit migration.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .records import PER_HEAD_FIELDS, CausalCheck, DetectorResult, LabelRule
from ..errors import AtlasFileError, InputError, InputTypeError

SCHEMA_NAME = "headatlas.atlas"
SCHEMA_MAJOR = 2
SCHEMA = f"{SCHEMA_NAME}/{SCHEMA_MAJOR}"
PARTIAL_SCHEMA = f"headatlas.partial/{SCHEMA_MAJOR}"

_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_TAGS = ("__ndarray__", "__float__", "__tuple__", "__items__")

# Reading an atlas bounds its memory: an atlas is untrusted input (a shared file).
MAX_FILE_BYTES = 256 << 20     # a 256 MiB JSON file is far beyond any real atlas (a few MB)
MAX_DEPTH = 64                  # real atlases nest < 10 levels
MAX_ARRAY_ELEMENTS = 1 << 24    # per array, and n_layers x n_heads (the largest models have < 10^4 heads)
MAX_NDIM = 4
MAX_STR_CHARS = 1024            # per element of a string array
# Only plain numeric, bool and bounded string dtypes: a dtype string such as "(100000,100000)f8" would declare
# a sub-array of 80 GB per element, "O" would hold arbitrary objects.
_DTYPES = frozenset(["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16",
                     "float32", "float64"])


def _float_token(x: float) -> float | str:
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def encode_array(a: np.ndarray) -> dict[str, Any]:
    """A numpy array as a tagged JSON object (any shape; float, int, bool or str dtype)."""
    a = np.asarray(a)
    if a.dtype.kind == "f":
        data: list[Any] = [_float_token(float(x)) for x in a.ravel().tolist()]
    elif a.dtype.kind in "biu":
        data = a.ravel().tolist()
    elif a.dtype.kind == "U":
        data = [str(x) for x in a.ravel().tolist()]
    else:
        raise InputTypeError(f"cannot store an array of dtype {a.dtype} in an atlas")
    return {"__ndarray__": {"dtype": a.dtype.str.lstrip("<>=|") if a.dtype.kind == "U" else str(a.dtype),
                            "shape": list(a.shape), "data": data}}


def _array_dtype(name: Any) -> np.dtype:
    """An allowed dtype (see ``_DTYPES``, or ``U<n>`` with n <= MAX_STR_CHARS); AtlasFileError otherwise."""
    if isinstance(name, str) and name in _DTYPES:
        return np.dtype(name)
    if isinstance(name, str) and name[:1] == "U" and name[1:].isdigit() and 0 < int(name[1:]) <= MAX_STR_CHARS:
        return np.dtype(name)
    raise AtlasFileError(f"array dtype {name!r:.60} is not allowed in an atlas (only bool, int, uint, float and short "
                         "strings)")


def _array_shape(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise AtlasFileError(f"array shape {shape!r:.60} is not a list of at most {MAX_NDIM} non-negative integers")
    return tuple(shape)


def decode_array(obj: dict[str, Any], expect: tuple[int, ...] | None = None) -> np.ndarray:
    """Inverse of :func:`encode_array`. Checks the dtype (numeric, bool or short strings), the declared shape
    (``expect`` when given, e.g. ``[n_layers, n_heads]``) and that the data holds exactly that many plain values,
    all before allocating; bare NaN/infinity (not the "nan"/"inf" tokens) is refused. AtlasFileError otherwise."""
    spec = obj.get("__ndarray__") if isinstance(obj, dict) else None
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data"}:
        raise AtlasFileError("an array must be {\"__ndarray__\": {\"dtype\", \"shape\", \"data\"}}")
    dtype = _array_dtype(spec["dtype"])
    shape = _array_shape(spec["shape"])
    if expect is not None and shape != tuple(expect):
        raise AtlasFileError(f"array of shape {list(shape)} where {list(expect)} is expected")
    size = math.prod(shape)
    if size > MAX_ARRAY_ELEMENTS:
        raise AtlasFileError(f"array of shape {list(shape)} has {size} elements, more than an atlas holds "
                             f"({MAX_ARRAY_ELEMENTS})")
    data = spec["data"]
    if not isinstance(data, list) or len(data) != size:
        got = len(data) if isinstance(data, list) else type(data).__name__
        raise AtlasFileError(f"array of shape {list(shape)} needs {size} values, its data holds {got}")
    if dtype.kind == "U":
        if not all(isinstance(x, str) for x in data):
            raise AtlasFileError("a string array holds a non-string value")
    elif dtype.kind == "f":
        try:
            data = [_NONFINITE[x] if isinstance(x, str) else x for x in data]
        except KeyError as exc:
            raise AtlasFileError(f"float array holds the string {exc.args[0]!r:.40} (only \"nan\", \"inf\", "
                                 "\"-inf\" are allowed)") from None
        bad = next((x for x in data if isinstance(x, bool) or not isinstance(x, (int, float))), None)
        if bad is not None:
            raise AtlasFileError(f"float array holds {type(bad).__name__} {bad!r:.40}")
        if any(isinstance(x, float) and not math.isfinite(x) for x in spec["data"]):
            raise AtlasFileError("float array holds a bare NaN or infinity; atlases write them as \"nan\", \"inf\", "
                                 "\"-inf\"")
    else:
        ok = (bool,) if dtype.kind == "b" else (int,)
        bad = next((x for x in data if not isinstance(x, ok) or (dtype.kind != "b" and isinstance(x, bool))), None)
        if bad is not None:
            raise AtlasFileError(f"{dtype} array holds {type(bad).__name__} {bad!r:.40}")
    try:
        arr = np.array(data, dtype=dtype)
    except (OverflowError, ValueError) as exc:
        raise AtlasFileError(f"array values do not fit dtype {dtype} ({exc})") from None
    return arr.reshape(shape)


def encode(value: Any) -> Any:
    """Any JSON-able value plus numpy arrays/scalars, tuples and non-finite floats -> plain JSON."""
    if isinstance(value, np.ndarray):
        return encode_array(value)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        x = float(value)
        return x if math.isfinite(x) else {"__float__": _float_token(x)}
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and not any(k in _TAGS for k in value):
            return {k: encode(v) for k, v in value.items()}
        return {"__items__": [[encode(k), encode(v)] for k, v in value.items()]}
    raise InputTypeError(f"cannot store a {type(value).__name__} in an atlas: {value!r:.80}")


def decode(value: Any, _depth: int = 0) -> Any:
    """Inverse of :func:`encode`; AtlasFileError beyond ``MAX_DEPTH`` levels of nesting, on a bare NaN or
    infinity, or on a malformed tag."""
    if _depth > MAX_DEPTH:
        raise AtlasFileError(f"nested more than {MAX_DEPTH} levels deep; not an atlas written by headatlas")
    d = _depth + 1
    if isinstance(value, float) and not math.isfinite(value):
        raise AtlasFileError("a bare NaN or infinity; atlases write them as {\"__float__\": \"nan\"}")
    if isinstance(value, list):
        return [decode(v, d) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        (tag, inner), = value.items()
        if tag == "__ndarray__":
            return decode_array(value)
        if tag == "__float__":
            if inner not in _NONFINITE:
                raise AtlasFileError(f"{{\"__float__\": {inner!r:.40}}}: only \"nan\", \"inf\", \"-inf\" are allowed")
            return _NONFINITE[inner]
        if tag == "__tuple__":
            if not isinstance(inner, list):
                raise AtlasFileError("a __tuple__ must hold a list")
            return tuple(decode(v, d) for v in inner)
        if tag == "__items__":
            if not isinstance(inner, list) or not all(isinstance(kv, list) and len(kv) == 2 for kv in inner):
                raise AtlasFileError("__items__ must hold [key, value] pairs")
            try:
                return {_hashable(decode(k, d)): decode(v, d) for k, v in inner}
            except TypeError as exc:  # an unhashable key (a dict)
                raise AtlasFileError(f"__items__ has a key that cannot be a key ({exc})") from None
    return {k: decode(v, d) for k, v in value.items()}


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, (list, tuple)) else key


RESULT_KEYS = ("name", *PER_HEAD_FIELDS, "labelled", "rule", "data_description", "null_description", "n_prompts",
               "seed", "n_null", "extras", "details", "skipped", "causal")
RESULT_KEYS_V1 = ("name", "scores", "null_mean", "null_std", "labelled", "min_score", "min_z", "data_description",
                  "null_description", "n_prompts", "seed", "extras", "details", "skipped")


def result_to_dict(r: DetectorResult) -> dict[str, Any]:
    """One :class:`DetectorResult` as plain JSON (every field, extras and details included)."""
    out: dict[str, Any] = {"name": r.name}
    for key in PER_HEAD_FIELDS:
        out[key] = encode_array(np.asarray(getattr(r, key), dtype=float))
    out.update({
        "labelled": [[int(layer), int(head)] for layer, head in r.labelled],
        "rule": r.rule.to_dict(),
        "data_description": r.data_description,
        "null_description": r.null_description,
        "n_prompts": int(r.n_prompts),
        "seed": int(r.seed),
        "n_null": int(r.n_null),
        "extras": {str(k): encode_array(np.asarray(v)) for k, v in r.extras.items()},
        "details": encode(r.details),
        "skipped": r.skipped,
        "causal": None if r.causal is None else r.causal.to_dict(),
    })
    return out


def result_from_dict(d: Any, where: str = "result", *, major: int = SCHEMA_MAJOR,
                     expect_shape: tuple[int, int] | None = None) -> DetectorResult:
    """Inverse of :func:`result_to_dict` (``major`` 1 results are migrated); :class:`AtlasFileError` on a
    malformed entry."""
    if not isinstance(d, dict):
        raise AtlasFileError(f"{where}: expected an object, got {type(d).__name__}")
    if major == 1:
        _check_keys(d, RESULT_KEYS_V1, where)
        try:
            d = migrate_result_v1(d)
        except AtlasFileError as exc:
            raise AtlasFileError(f"{where}: {exc}") from None
    _check_keys(d, RESULT_KEYS, where)
    try:
        arrays = {k: decode_array(d[k], expect_shape).astype(float) for k in PER_HEAD_FIELDS}
        shape = arrays["scores"].shape
        for k, a in arrays.items():
            if a.shape != shape:
                raise ValueError(f"{k} has shape {list(a.shape)}, scores {list(shape)}")
        if not isinstance(d["name"], str) or not d["name"]:
            raise AtlasFileError(f"{where}: a detector name must be a non-empty string, got {d['name']!r:.40}")
        return DetectorResult(
            name=str(d["name"]), **arrays,
            labelled=[(int(layer), int(head)) for layer, head in d["labelled"]],
            rule=LabelRule.from_dict(d["rule"]),
            data_description=str(d["data_description"]),
            null_description=str(d["null_description"]),
            n_prompts=int(d["n_prompts"]),
            seed=int(d["seed"]),
            n_null=int(d["n_null"]),
            extras={str(k): decode_array(v) for k, v in d["extras"].items()},
            details=decode(d["details"]),
            skipped=None if d["skipped"] is None else str(d["skipped"]),
            causal=None if d["causal"] is None else CausalCheck.from_dict(d["causal"]),
        )
    except AtlasFileError as exc:
        text = str(exc)
        raise AtlasFileError(text if text.startswith(where) else f"{where}: {text}") from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError) as exc:
        raise AtlasFileError(f"{where}: malformed detector result ({type(exc).__name__}: {exc})") from None


V1_NOTE = ("migrated from schema headatlas.atlas/1: scores, nulls and labels are kept as they were labelled then "
           "(score and z cut-offs); p, q, CI and stability were not computed (NaN). Rescan for tested labels.")


def migrate_result_v1(d: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 result as a schema-2 one: effect = score - null mean; p, q, CI, stability NaN; the old
    cut-offs become the rule's statistic text; ``details["migrated_from"]`` says so."""
    try:
        scores = decode_array(d["scores"]).astype(float)
        null_mean = decode_array(d["null_mean"]).astype(float)
    except (KeyError, TypeError, ValueError) as exc:
        raise AtlasFileError(f"malformed schema-1 result ({exc})") from None
    nan = encode_array(np.full(scores.shape, np.nan))
    details = dict(d.get("details") or {})
    details["migrated_from"] = "headatlas.atlas/1"
    rule = LabelRule(statistic=(f"schema 1 cut-offs: score >= {decode(d['min_score'])} and z >= {decode(d['min_z'])} "
                                "against the null (no p-values)"))
    return {"name": d["name"], "scores": d["scores"], "null_mean": d["null_mean"], "null_std": d["null_std"],
            "effect": encode_array(scores - null_mean), "ci_low": nan, "ci_high": nan, "p_value": nan, "q_value": nan,
            "stability": nan, "labelled": d["labelled"], "rule": rule.to_dict(),
            "data_description": d["data_description"], "null_description": d["null_description"],
            "n_prompts": d["n_prompts"], "seed": d["seed"], "n_null": 0, "extras": d["extras"],
            "details": details, "skipped": d["skipped"], "causal": None}


def check_model_sizes(model: Any, source: str) -> tuple[int, int]:
    """The ``model`` block's ``(n_layers, n_heads)``: positive integers whose product is a plausible head count
    (checked before any per-head array is allocated)."""
    if not isinstance(model, dict) or "n_layers" not in model or "n_heads" not in model:
        raise AtlasFileError(f"{source}: \"model\" must hold n_layers and n_heads")
    sizes = (model["n_layers"], model["n_heads"])
    if not all(isinstance(n, int) and not isinstance(n, bool) and 0 < n <= 1 << 16 for n in sizes) or \
            sizes[0] * sizes[1] > MAX_ARRAY_ELEMENTS:
        raise AtlasFileError(f"{source}: model n_layers x n_heads = {sizes[0]!r:.20} x {sizes[1]!r:.20} is not a "
                             "plausible model size (positive integers up to 65536)")
    layers = model.get("attention_layers")
    if layers is not None and (not isinstance(layers, list) or not layers or len(layers) > sizes[0] or any(
            not isinstance(x, int) or isinstance(x, bool) or not 0 <= x < sizes[0] for x in layers)
            or layers != sorted(set(layers))):
        raise AtlasFileError(f"{source}: model attention_layers must be increasing layer indices in 0..{sizes[0] - 1}, "
                             f"got {layers!r:.60}")
    return sizes[0], sizes[1]


def check_causal(c: CausalCheck, name: str, n_layers: int, n_heads: int) -> None:
    """A causal check that can be true of this model: its heads and random sets inside the model, ``expected``
    an increase or a decrease, p and q in [0, 1] (or NaN), a count of prompts >= 0."""
    where = f"detector {name!r}: causal check"
    sets = [("heads", c.heads)] + [(f"random set {i}", s) for i, s in enumerate(c.random_sets)]
    for what, heads in sets:
        bad = [(a, b) for a, b in heads if not (0 <= a < n_layers and 0 <= b < n_heads)]
        if bad:
            raise InputError(f"{where}: {what} holds L{bad[0][0]}H{bad[0][1]}, outside the model ({n_layers} layers "
                             f"x {n_heads} heads)")
    if c.expected not in ("increase", "decrease"):
        raise InputError(f"{where}: expected must be 'increase' or 'decrease', got {c.expected!r:.40}")
    for what in ("p_value", "q_value"):
        x = getattr(c, what)
        if not (math.isnan(x) or 0.0 <= x <= 1.0):
            raise InputError(f"{where}: {what} must be in [0, 1] (or NaN), got {x:g}")
    if c.n_prompts < 0:
        raise InputError(f"{where}: n_prompts must be >= 0, got {c.n_prompts}")


def _check_keys(d: dict[str, Any], expected: tuple[str, ...], where: str) -> None:
    missing = [k for k in expected if k not in d]
    unknown = [k for k in d if k not in expected]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown {', '.join(unknown)}")
        raise AtlasFileError(f"{where}: {'; '.join(parts)} (schema {SCHEMA})")


def check_schema(doc: Any, source: str, *, expected_name: str = SCHEMA_NAME) -> int:
    """Refuse a document that is not ours, or is from a newer major version; return its major version."""
    if not isinstance(doc, dict) or not isinstance(doc.get("schema"), str):
        raise AtlasFileError(f"{source} is JSON but not a headatlas atlas (no \"schema\": \"{expected_name}/N\" field)")
    name, _, major = doc["schema"].partition("/")
    if name != expected_name or not major.isdigit():
        raise AtlasFileError(f"{source} is a {doc['schema']!r} document, not a headatlas atlas ({expected_name}/N)")
    if int(major) > SCHEMA_MAJOR:
        raise AtlasFileError(f"{source} uses schema {doc['schema']}, newer than this headatlas reads "
                             f"({SCHEMA}); upgrade headatlas to read it")
    if int(major) < 1:
        raise AtlasFileError(f"{source}: unknown schema version {doc['schema']!r}")
    return int(major)


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; :class:`AtlasFileError` on a missing, unreadable, oversized or corrupt file."""
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
        raise InputTypeError(f"an atlas path must be a string or pathlib.Path, got {type(path).__name__} {path!r:.40}")
    p = Path(path)
    if not p.exists():
        raise AtlasFileError(f"no atlas file at {p}")
    if p.is_dir():
        raise AtlasFileError(f"{p} is a folder; pass the atlas.json inside it")
    try:
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise AtlasFileError(f"{p} is {size / 2**20:.0f} MiB, larger than any atlas ({MAX_FILE_BYTES >> 20} MiB); "
                                 "not an atlas written by headatlas")
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AtlasFileError(f"cannot read {p}: {exc}") from None
    try:
        return json.loads(text, parse_constant=_bare_constant)
    except json.JSONDecodeError as exc:
        raise AtlasFileError(f"{p} is not valid JSON (corrupt or truncated: {exc})") from None
    except AtlasFileError as exc:
        raise AtlasFileError(f"{p}: {exc}") from None
    except RecursionError:
        raise AtlasFileError(f"{p} is nested too deeply to be an atlas (more than {MAX_DEPTH} levels)") from None


def _bare_constant(name: str) -> Any:
    raise AtlasFileError(f"bare {name} is not valid JSON; atlases write non-finite numbers as \"nan\", \"inf\", "
                         "\"-inf\"")


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` via a temp file in the same folder and ``os.replace``: a crash
    mid-write leaves the previous file intact (see :func:`headatlas.outdir.atomic_write_text`; OutputError
    when ``path`` is a folder or cannot be written)."""
    from ..outdir import atomic_write_text as write

    return write(path, text)


def dumps(doc: Any) -> str:
    """JSON text of an already-encoded document (strict: refuses NaN that slipped through)."""
    return json.dumps(doc, allow_nan=False, indent=1, ensure_ascii=False)
