"""An atlas as plain JSON (schema ``headatlas.atlas/2``; ``/1`` files are migrated): :func:`atlas_to_dict` and its
inverse :func:`atlas_from_dict`, which checks everything it reads (an atlas file is untrusted input) and raises
:class:`~headatlas.errors.AtlasFileError` on anything malformed. ``Atlas.to_dict`` / ``Atlas.from_dict`` /
``Atlas.save`` / ``Atlas.load`` call these; the per-result encoding is :mod:`headatlas.atlas.schema`."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import AtlasFileError
from . import schema
from .views import DetectorMeta

if TYPE_CHECKING:
    from .protocols import AtlasLike

A = TypeVar("A")   # the atlas class: Atlas.from_dict passes itself (this module does not import it)


def atlas_to_dict(atlas: "AtlasLike") -> dict[str, Any]:
    """The atlas as plain JSON (schema ``headatlas.atlas/2``)."""
    return {
        "schema": schema.SCHEMA,
        "headatlas_version": atlas.headatlas_version,
        "created": atlas.created,
        "model": schema.encode(atlas.model),
        "seed": atlas.seed,
        "settings": schema.encode(atlas.settings),
        "detectors": [{"meta": atlas.meta[n].to_dict(), "seconds": schema.encode(atlas.timings.get(n, math.nan)),
                       "shared": atlas.shared_passes.get(n, ""),
                       "result": schema.result_to_dict(atlas.result(n))} for n in atlas.detectors],
        "notes": list(atlas.notes),
        **({"writes": atlas.writes} if atlas.writes else {}),
        **({} if atlas.specificity_matrix is None else {"specificity": atlas.specificity_matrix.to_dict()}),
    }


def atlas_from_dict(cls: type[A], doc: Any, source: str = "atlas") -> A:
    """Inverse of :func:`atlas_to_dict`, an atlas of class ``cls``; :class:`AtlasFileError` on anything malformed."""
    major = schema.check_schema(doc, source)
    try:
        return _from_checked_dict(cls, doc, source, major)
    except AtlasFileError as exc:
        text = str(exc)
        raise AtlasFileError(text if text.startswith(source) else f"{source}: {text}") from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise AtlasFileError(f"{source}: malformed atlas ({type(exc).__name__}: {exc})") from None


def _from_checked_dict(cls: type[A], doc: dict[str, Any], source: str, major: int) -> A:
    top = ("schema", "headatlas_version", "created", "model", "seed", "settings", "detectors")
    optional = tuple(k for k in ("writes", "specificity") if k in doc)
    schema._check_keys(doc, top if major == 1 else top + ("notes",) + optional, source)
    if not isinstance(doc["detectors"], list):
        raise AtlasFileError(f"{source}: \"detectors\" must be a list")
    model = schema.decode(doc["model"])
    grid = schema.check_model_sizes(model, source)  # (n_layers, n_heads): every per-head array must have it
    results, meta, timings, shared = {}, {}, {}, {}
    notes = [schema.V1_NOTE] if major == 1 else [str(n) for n in doc["notes"]]
    for i, entry in enumerate(doc["detectors"]):
        where = f"{source}: detectors[{i}]"
        if not isinstance(entry, dict):
            raise AtlasFileError(f"{where}: expected an object")
        schema._check_keys(entry, ("meta", "seconds", "result") + (() if major == 1 else ("shared",)), where)
        try:
            m = DetectorMeta.from_dict(entry["meta"])
        except TypeError as exc:
            raise AtlasFileError(f"{where}: bad detector meta ({exc})") from None
        if m.name in results:
            raise AtlasFileError(f"{where}: detector {m.name!r} is listed twice")
        r = schema.result_from_dict(entry["result"], where, major=major, expect_shape=grid)
        if major != 1 and entry["shared"]:
            shared[m.name] = str(entry["shared"])
        if r.name != m.name:
            raise AtlasFileError(f"{where}: result named {r.name!r} under meta {m.name!r}")
        results[m.name], meta[m.name] = r, m
        seconds = schema.decode(entry["seconds"])
        if not (isinstance(seconds, float) and math.isnan(seconds)):
            timings[m.name] = seconds
    atlas = cls(model, results, meta, seed=doc["seed"], settings=schema.decode(doc["settings"]),
                timings=timings, headatlas_version=str(doc["headatlas_version"]), created=str(doc["created"]),
                shared_passes=shared, notes=notes, writes=_writes(doc.get("writes"), grid, source))
    if doc.get("specificity") is not None:
        from .specificity import Specificity

        atlas.specificity_matrix = Specificity.from_dict(doc["specificity"], n_layers=grid[0], n_heads=grid[1],
                                                         detectors=results, where=f"{source}: specificity")
    return atlas


def _writes(doc: Any, grid: tuple[int, int], source: str) -> dict[str, Any]:
    """The optional ``writes`` record (:mod:`headatlas.atlas.writes`), checked and cut to its limits."""
    if doc is None:
        return {}
    from .writes import check_writes

    clean, why = check_writes(doc, *grid)
    if clean is None:
        raise AtlasFileError(f"{source}: {why}")
    return clean

