"""The record of a comparison of two same-shaped models' atlases: :class:`Comparison` (both atlases, the
per-head weight and activation deltas when models were compared, notes, timings), its tables, summary and
JSON I/O (schema ``headatlas.comparison/1``). Numbers only: importing this module does not import torch, so a
saved ``comparison.json`` loads and renders anywhere. Whether a head's change is significant is decided by
:func:`headatlas.atlas.change.change_test`; the deltas are measured by :mod:`headatlas.head_deltas` and the
comparison is run by :func:`headatlas.compare`.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from . import schema
from .atlas import Atlas
from .change import FDR, change_test
from ..checks import check_finite, check_range
from ..errors import AtlasFileError, InputError, InputTypeError

if TYPE_CHECKING:
    import pandas as pd

COMPARISON_SCHEMA = "headatlas.comparison/1"
SHAPE_KEYS = ("n_layers", "n_heads", "n_kv_heads", "d_head", "d_head_qk")


def check_same_shape(info_a: dict[str, Any], info_b: dict[str, Any], name_a: str = "a", name_b: str = "b") -> None:
    """InputError naming both shapes unless layers, heads, kv heads and head dim agree (keys missing from an
    atlas written by an older version are not compared)."""
    keys = [k for k in SHAPE_KEYS if k in info_a and k in info_b]
    layers_a, layers_b = info_a.get("attention_layers"), info_b.get("attention_layers")
    if layers_a is not None and layers_b is not None and list(layers_a) != list(layers_b):
        raise InputError(f"the models have different attention layers: a ({name_a}) {list(layers_a)!r:.80}; b "
                         f"({name_b}) {list(layers_b)!r:.80}; compare needs the same layout")
    if any(int(info_a[k]) != int(info_b[k]) for k in keys):
        def shape(i: dict[str, Any]) -> str:
            return ", ".join(f"{k}={i.get(k, '?')}" for k in SHAPE_KEYS)
        raise InputError(f"the models have different shapes: a ({name_a}) has {shape(info_a)}; b ({name_b}) has "
                         f"{shape(info_b)}; compare needs the same layers, heads, kv heads and head dim")


@dataclass
class Comparison:
    """Two atlases of same-shaped models and what changed between them.

    ``atlas_a``, ``atlas_b``: the scans; ``weight_delta`` ``[n_layers, n_heads]`` (None when atlases were
    compared without models) with ``weight_parts`` (per projection q/k/v/o); ``activation_delta``
    ``[n_layers, n_heads]`` (or None) on ``activation_prompts``; ``timings`` seconds of each step; ``notes``."""

    atlas_a: Atlas
    atlas_b: Atlas
    weight_delta: np.ndarray | None = None
    weight_parts: dict[str, np.ndarray] = field(default_factory=dict)
    activation_delta: np.ndarray | None = None
    activation_prompts: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    fdr: float = FDR
    created: str = ""

    def __post_init__(self) -> None:
        check_comparison(self)
        check_same_shape(self.atlas_a.model, self.atlas_b.model, self.atlas_a.model_name, self.atlas_b.model_name)
        if not self.created:
            self.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

    # ----- access -------------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return self.atlas_a.n_layers

    @property
    def n_heads(self) -> int:
        return self.atlas_a.n_heads

    @property
    def detectors(self) -> list[str]:
        """Detectors held by both atlases (in a's order)."""
        return [d for d in self.atlas_a.detectors if d in self.atlas_b.detectors]

    def skipped(self) -> dict[str, str]:
        """Detector -> why it has no comparison (skipped on a side, or held by one atlas only)."""
        out = {}
        for d in dict.fromkeys(self.atlas_a.detectors + self.atlas_b.detectors):
            if d not in self.detectors:
                out[d] = f"only in atlas {'a' if d in self.atlas_a.detectors else 'b'}"
                continue
            sa, sb = self.atlas_a.result(d).skipped, self.atlas_b.result(d).skipped
            if sa or sb:
                out[d] = "; ".join(f"{side}: skipped: {why}" for side, why in (("a", sa), ("b", sb)) if why)
        return out

    def test(self, detector: str) -> dict[str, np.ndarray]:
        """:func:`change_test` of ``detector``'s results in the two atlases."""
        return change_test(self.atlas_a.result(detector), self.atlas_b.result(detector), fdr=self.fdr)

    def changes(self) -> dict[str, dict[str, list[tuple[int, int]]]]:
        """Per compared detector (not skipped on either side): ``gained`` (labelled in b only), ``lost``
        (labelled in a only), ``kept`` (both) and ``significant`` (heads whose change is significant)."""
        out = {}
        skipped = self.skipped()
        for d in self.detectors:
            if d in skipped:
                continue
            la, lb = set(self.atlas_a.labelled(d)), set(self.atlas_b.labelled(d))
            sig = self.test(d)["significant"]
            out[d] = {"gained": sorted(lb - la), "lost": sorted(la - lb), "kept": sorted(la & lb),
                      "significant": [(int(x), int(y)) for x, y in zip(*np.nonzero(sig))]}
        return out

    def top_weight_heads(self, k: int = 10) -> list[tuple[int, int, float]]:
        """The ``k`` heads whose weights moved most: ``(layer, head, relative change)`` ([] without models)."""
        from ..checks import check_count

        k = check_count(k, "k", minimum=0)
        if self.weight_delta is None:
            return []
        flat = np.nan_to_num(self.weight_delta, nan=-1.0, posinf=np.finfo(float).max).ravel()
        order = np.argsort(-flat, kind="stable")[:k]
        return [(int(i) // self.n_heads, int(i) % self.n_heads, float(self.weight_delta.ravel()[i])) for i in order]

    # ----- tables -------------------------------------------------------------------------------
    def to_dataframe(self) -> "pd.DataFrame":
        """One row per head x compared detector: ``layer, head, detector, score_a, score_b, delta, effect_a,
        effect_b, effect_delta, z, p_change, q_change, significant, labelled_a, labelled_b, weight_delta,
        activation_delta`` (NaN where unavailable; a detector skipped on a side has NaN scores there)."""
        import pandas as pd

        L, H = self.n_layers, self.n_heads
        layers, heads = np.meshgrid(np.arange(L), np.arange(H), indexing="ij")
        wd = self.weight_delta if self.weight_delta is not None else np.full((L, H), np.nan)
        ad = self.activation_delta if self.activation_delta is not None else np.full((L, H), np.nan)
        cols = ["layer", "head", "detector", "score_a", "score_b", "delta", "effect_a", "effect_b", "effect_delta",
                "z", "p_change", "q_change", "significant", "labelled_a", "labelled_b", "weight_delta",
                "activation_delta"]
        frames = []
        for d in self.detectors:
            ra, rb = self.atlas_a.result(d), self.atlas_b.result(d)
            t = self.test(d)
            frames.append(pd.DataFrame({
                "layer": layers.ravel(), "head": heads.ravel(), "detector": d,
                "score_a": np.asarray(ra.scores, float).ravel(), "score_b": np.asarray(rb.scores, float).ravel(),
                "delta": (np.asarray(rb.scores, float) - np.asarray(ra.scores, float)).ravel(),
                "effect_a": np.asarray(ra.effect, float).ravel(), "effect_b": np.asarray(rb.effect, float).ravel(),
                "effect_delta": (np.asarray(rb.effect, float) - np.asarray(ra.effect, float)).ravel(),
                "z": t["z"].ravel(), "p_change": t["p_change"].ravel(), "q_change": t["q_change"].ravel(),
                "significant": t["significant"].ravel(),
                "labelled_a": _mask(ra.labelled, L, H).ravel(), "labelled_b": _mask(rb.labelled, L, H).ravel(),
                "weight_delta": wd.ravel(), "activation_delta": ad.ravel()}))
        if not frames:
            return pd.DataFrame(columns=cols)
        return pd.concat(frames, ignore_index=True)[cols]

    def summary(self, top: int = 5) -> str:
        """Plain text: per detector the heads gained/lost and the significant changes; the top weight changes."""
        from ..checks import check_count

        top = check_count(top, "top", minimum=0)
        lines = [f"headatlas comparison: a = {self.atlas_a.model_name}, b = {self.atlas_b.model_name} "
                 f"({self.n_layers} layers x {self.n_heads} heads)"]
        for d, ch in self.changes().items():
            lines.append(f"  {d}: gained {_names(ch['gained'])}; lost {_names(ch['lost'])}; "
                         f"kept {len(ch['kept'])}; significant changes {len(ch['significant'])}")
        for d, why in self.skipped().items():
            lines.append(f"  {d}: not compared ({why})")
        if self.weight_delta is not None:
            tops = ", ".join(f"L{la}H{h} {v:.3g}" for la, h, v in self.top_weight_heads(top))
            lines.append(f"  weight delta (relative Frobenius), top {top}: {tops}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"Comparison({self.atlas_a.model_name!r} -> {self.atlas_b.model_name!r}, "
                f"{self.n_layers}x{self.n_heads} heads, detectors={self.detectors})")

    # ----- JSON -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (schema ``headatlas.comparison/1``): both atlases in full, the deltas and the changes."""
        from ..version import __version__

        return {
            "schema": COMPARISON_SCHEMA, "headatlas_version": __version__, "created": self.created,
            "a": self.atlas_a.to_dict(), "b": self.atlas_b.to_dict(),
            "weight_delta": None if self.weight_delta is None else schema.encode_array(self.weight_delta),
            "weight_parts": {p: schema.encode_array(v) for p, v in self.weight_parts.items()},
            "activation_delta": None if self.activation_delta is None else schema.encode_array(self.activation_delta),
            "activation_prompts": self.activation_prompts,
            "timings": {k: schema.encode(float(v)) for k, v in self.timings.items()},
            "notes": list(self.notes), "fdr": float(self.fdr),
            "changes": {d: {k: [list(lh) for lh in v] for k, v in ch.items()} for d, ch in self.changes().items()},
        }

    @classmethod
    def from_dict(cls, doc: Any, source: str = "comparison") -> "Comparison":
        """Inverse of :meth:`to_dict`; AtlasFileError on anything malformed (the stored ``changes`` are rebuilt from
        the atlases, and must name only their detectors and heads)."""
        if not isinstance(doc, dict) or doc.get("schema") != COMPARISON_SCHEMA:
            got = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
            raise AtlasFileError(f"{source}: not a headatlas comparison (schema {got!r:.60}, expected "
                                 f"{COMPARISON_SCHEMA!r})")
        try:
            a = Atlas.from_dict(doc["a"], f"{source}: a")
            b = Atlas.from_dict(doc["b"], f"{source}: b")
            grid = (a.n_layers, a.n_heads)

            def arr(x: Any) -> np.ndarray | None:
                return None if x is None else schema.decode_array(x, expect=grid).astype(float)

            comp = cls(a, b, weight_delta=arr(doc["weight_delta"]),
                       weight_parts={str(p): arr(v) for p, v in dict(doc["weight_parts"]).items()},
                       activation_delta=arr(doc["activation_delta"]),
                       activation_prompts=str(doc["activation_prompts"]),
                       timings={str(k): float(schema.decode(v)) for k, v in dict(doc["timings"]).items()},
                       notes=[str(n) for n in doc["notes"]], fdr=float(doc["fdr"]), created=str(doc["created"]))
            check_stored_changes(doc.get("changes"), comp, source)
            return comp
        except AtlasFileError:
            raise
        except (KeyError, TypeError, ValueError) as exc:   # InputError (a ValueError) included
            raise AtlasFileError(f"{source}: malformed comparison ({type(exc).__name__}: {exc})") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Comparison":
        """Read ``comparison.json`` (a file, or a folder holding one)."""
        p = Path(os.fspath(path)).expanduser()
        if p.is_dir():
            p = p / "comparison.json"
        return cls.from_dict(schema.read_json(p), source=str(p))

    def to_html(self) -> str:
        """The HTML diff report (self-contained, no scripts, no network): see :mod:`headatlas.atlas.compare_report`."""
        from .compare_report import render_comparison

        return render_comparison(self)

    def save(self, out: str | os.PathLike) -> dict[str, str]:
        """Write ``out/comparison.json``, ``out/comparison.html`` and both sides' ``atlas_a.json`` /
        ``atlas_b.json`` (each atomically); returns the paths written."""
        from ..outdir import atomic_write_text, prepare_out

        d = prepare_out(out)
        paths = {"json": d / "comparison.json", "html": d / "comparison.html", "atlas_a": d / "atlas_a.json",
                 "atlas_b": d / "atlas_b.json"}
        self.atlas_a.save(paths["atlas_a"])
        self.atlas_b.save(paths["atlas_b"])
        html = self.to_html()
        atomic_write_text(paths["json"], schema.dumps(self.to_dict()) + "\n")
        atomic_write_text(paths["html"], html)
        return {k: str(v) for k, v in paths.items()}


def _mask(labelled: Sequence[Sequence[int]], L: int, H: int) -> np.ndarray:
    m = np.zeros((L, H), dtype=bool)
    for la, h in labelled:
        m[int(la), int(h)] = True
    return m


def _names(heads: Sequence[tuple[int, int]], limit: int = 8) -> str:
    if not heads:
        return "none"
    text = ", ".join(f"L{la}H{h}" for la, h in heads[:limit])
    return text + (f" (+{len(heads) - limit} more)" if len(heads) > limit else "")


# ----- validation ----------------------------------------------------------------------------------------
def check_comparison(comp: Any) -> None:
    """A :class:`Comparison`'s fields: two Atlases, ``fdr`` in (0, 1), per-head deltas
    ``[n_layers, n_heads]`` that are >= 0 (or NaN/inf), weight parts of q/k/v/o only, notes a list of strings,
    timings finite seconds."""
    for side in ("atlas_a", "atlas_b"):
        if not isinstance(getattr(comp, side), Atlas):
            raise InputTypeError(f"Comparison.{side} must be an Atlas, got {type(getattr(comp, side)).__name__}")
    comp.fdr = check_range(comp.fdr, "fdr", low=0.0, low_open=True, high=1.0)
    if comp.fdr >= 1.0:
        raise InputError(f"fdr must be < 1, got {comp.fdr:g}")
    grid = (comp.atlas_a.n_layers, comp.atlas_a.n_heads)
    for what in ("weight_delta", "activation_delta"):
        if getattr(comp, what) is not None:
            setattr(comp, what, _delta(getattr(comp, what), what, grid))
    if not isinstance(comp.weight_parts, Mapping):
        raise InputTypeError(f"weight_parts must be a dict of projection -> [n_layers, n_heads], got "
                             f"{type(comp.weight_parts).__name__}")
    unknown = [p for p in comp.weight_parts if p not in ("q", "k", "v", "o")]
    if unknown:
        raise InputError(f"weight_parts has unknown projection(s) {', '.join(map(repr, unknown))}; use q, k, v, o")
    comp.weight_parts = {p: _delta(v, f"weight_parts[{p!r}]", grid) for p, v in comp.weight_parts.items()}
    if not isinstance(comp.notes, list) or not all(isinstance(n, str) for n in comp.notes):
        raise InputTypeError(f"notes must be a list of strings, got {type(comp.notes).__name__}")
    if not isinstance(comp.timings, Mapping):
        raise InputTypeError(f"timings must be a dict of step -> seconds, got {type(comp.timings).__name__}")
    comp.timings = {str(k): check_finite(v, f"timings[{k!r}]") for k, v in comp.timings.items()}


def _delta(x: Any, what: str, grid: tuple[int, int]) -> np.ndarray:
    """A relative change per head: float ``[n_layers, n_heads]``, >= 0 where finite (inf: from zero; NaN: unknown)."""
    if isinstance(x, (str, bytes)) or x is None:
        raise InputTypeError(f"{what} must be an array [n_layers, n_heads], got {type(x).__name__}")
    arr = np.asarray(x)
    if arr.dtype.kind not in "iuf":
        raise InputTypeError(f"{what} must be numbers, got dtype {arr.dtype}")
    arr = arr.astype(float)
    if arr.shape != grid:
        raise InputError(f"{what} must be [n_layers, n_heads] = {list(grid)}, got {list(arr.shape)}")
    with np.errstate(invalid="ignore"):
        if (arr < 0).any():
            raise InputError(f"{what} holds negative values; a relative change is >= 0")
    return arr


def check_stored_changes(changes: Any, comp: Any, source: str) -> None:
    """A stored comparison's ``changes`` (rebuilt from the atlases on load) name only detectors both atlases hold
    and heads inside the model; anything else means the file was edited or is corrupt."""
    if changes is None:
        return
    if not isinstance(changes, Mapping):
        raise InputError(f"{source}: \"changes\" must be an object")
    L, H = comp.n_layers, comp.n_heads
    for det, ch in changes.items():
        if det not in comp.detectors:
            raise InputError(f"{source}: changes name detector {det!r}, which the atlases do not both hold")
        if not isinstance(ch, Mapping) or set(ch) - {"gained", "lost", "kept", "significant"}:
            raise InputError(f"{source}: changes[{det!r}] must hold gained, lost, kept and significant")
        for key, heads in ch.items():
            for lh in heads if isinstance(heads, list) else [None]:
                ok = (isinstance(lh, list) and len(lh) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                    for v in lh))
                if not ok or not (0 <= lh[0] < L and 0 <= lh[1] < H):
                    raise InputError(f"{source}: changes[{det!r}][{key!r}] names {lh!r:.40}, not a head of the "
                                     f"{L} x {H} model")
