"""The detector contract: a registered name, a stage, a method family, and a run function that
scores every head ``[n_layers, n_heads]`` together with a null baseline.

A detector module defines one :class:`Detector` and calls :func:`register` at import;
``detectors/__init__.py`` imports every detector module explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal

import numpy as np

from ..errors import InputError

if TYPE_CHECKING:
    from ..models import LoadedModel

Stage = Literal["KR", "ICI", "LR", "EP"]
# Scores are fractions in [0, 1]; a null whose std is below this floor (e.g. a head that never looks at
# the null keys) cannot make a tiny margin "significant": z uses max(null_std, Z_STD_FLOOR).
Z_STD_FLOOR = 0.01

STAGES: dict[str, str] = {
    "KR": "Knowledge Recalling",
    "ICI": "In-Context Identification",
    "LR": "Latent Reasoning",
    "EP": "Expression Preparation",
}


@dataclass(frozen=True)
class ScanConfig:
    """Settings shared by every detector in a scan.

    ``seed`` seeds every generator (runs reproduce exactly); ``n_prompts`` scales the number of
    prompts a detector uses (each detector documents its default); ``batch_size`` caps the rows
    per forward pass; ``progress`` is called as ``progress(done, total)`` by long detectors;
    ``quick`` asks for the smallest data that still gives a meaningful null (tests, CI).
    """

    seed: int = 0
    n_prompts: int | None = None
    batch_size: int = 8
    quick: bool = False
    progress: Callable[[int, int], None] | None = field(default=None, compare=False)
    options: dict[str, Any] = field(default_factory=dict, compare=False)

    def tick(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(done, total)


@dataclass
class DetectorResult:
    """Scores of every head for one head type, with the evidence behind each label.

    - ``scores``: ``[n_layers, n_heads]`` the detector's score.
    - ``null_mean``/``null_std``: ``[n_layers, n_heads]`` the same score on null data (shuffled or
      random-token prompts, or other heads/seeds, as ``null_description`` says).
    - ``labelled``: heads whose score clears ``min_score`` and the null by ``min_z`` std
      (``labelled == []`` means "none found", a valid result).
    - ``extras``: more per-head arrays ``[n_layers, n_heads]`` (e.g. induction copying score,
      dominant offset) and ``details`` free-form JSON-able facts (prompt counts, lengths, agreement).
    - ``skipped``: a reason when the detector could not run on this model (then scores are NaN).
    """

    name: str
    scores: np.ndarray
    null_mean: np.ndarray
    null_std: np.ndarray
    labelled: list[tuple[int, int]]
    min_score: float
    min_z: float
    data_description: str
    null_description: str
    n_prompts: int
    seed: int
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None

    @property
    def z(self) -> np.ndarray:
        """``(score - null_mean) / max(null_std, Z_STD_FLOOR)`` per head."""
        return (self.scores - self.null_mean) / np.maximum(self.null_std, Z_STD_FLOOR)


def label_heads(scores: np.ndarray, null_mean: np.ndarray, null_std: np.ndarray, *,
                min_score: float, min_z: float, min_margin: float = 0.0) -> list[tuple[int, int]]:
    """Heads with ``score >= min_score``, ``z >= min_z`` and ``score - null_mean >= min_margin``,
    sorted by score (highest first). ``z`` floors the null std at ``Z_STD_FLOOR``."""
    z = (scores - null_mean) / np.maximum(null_std, Z_STD_FLOOR)
    ok = (scores >= min_score) & (z >= min_z) & ((scores - null_mean) >= min_margin) & np.isfinite(scores)
    heads = [(int(layer), int(head)) for layer, head in zip(*np.nonzero(ok))]
    return sorted(heads, key=lambda lh: -float(scores[lh]))


def skipped_result(name: str, n_layers: int, n_heads: int, reason: str, seed: int) -> DetectorResult:
    nan = np.full((n_layers, n_heads), np.nan)
    return DetectorResult(name=name, scores=nan, null_mean=nan.copy(), null_std=nan.copy(), labelled=[],
                          min_score=float("nan"), min_z=float("nan"), data_description="", null_description="",
                          n_prompts=0, seed=seed, skipped=reason)


@dataclass(frozen=True)
class Detector:
    """A head type: its registered name, survey stage, method family, one-line summary, citation,
    and ``run(model, config) -> DetectorResult``."""

    name: str
    stage: Stage
    method: str
    summary: str
    citation: str
    run: Callable[["LoadedModel", ScanConfig], DetectorResult]
    version: int = 1
    # False for structural patterns outside the survey's taxonomy (attention sinks): their labels are
    # reported with their evidence but do not place a head in a stage of the stage map.
    places_stage: bool = True


_REGISTRY: dict[str, Detector] = {}


def register(detector: Detector) -> Detector:
    if detector.name in _REGISTRY:
        raise ValueError(f"a detector named {detector.name!r} is already registered")
    if detector.stage not in STAGES:
        raise ValueError(f"unknown stage {detector.stage!r}; use one of {', '.join(STAGES)}")
    _REGISTRY[detector.name] = detector
    return detector


def get(name: str) -> Detector:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InputError(f"unknown detector {name!r}; available: {', '.join(names())}") from None


def names() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def all_detectors() -> tuple[Detector, ...]:
    return tuple(_REGISTRY[n] for n in names())
