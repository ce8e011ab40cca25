"""What the renderers read from an atlas and from a comparison, stated as protocols.

The report (:mod:`headatlas.atlas.report`, :mod:`headatlas.atlas.report_specificity`), the circuit builder
(:mod:`headatlas.atlas.circuit`), the atlas's tables and JSON (:mod:`headatlas.atlas.tables`,
:mod:`headatlas.atlas.json_io`) and the compare report (:mod:`headatlas.atlas.compare_report`) take these instead of importing :class:`~headatlas.atlas.Atlas` or
:class:`~headatlas.atlas.comparison.Comparison`: the records call their renderers (``Atlas.to_html``,
``Atlas.circuit``, ``Comparison.to_html``), so a renderer that imported its record back would close an import
circle. An :class:`~headatlas.atlas.Atlas` satisfies :class:`AtlasLike`; a ``Comparison`` satisfies
:class:`ComparisonLike`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Collection, Mapping, Protocol

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from .records import DetectorResult


class AtlasLike(Protocol):
    """The read-only surface of an atlas that the report and the circuit use."""

    model: dict[str, Any]
    n_layers: int
    n_heads: int
    meta: Mapping[str, Any]          # detector name -> DetectorMeta (stage, method, summary, citation, ...)
    seed: int
    settings: dict[str, Any]
    timings: dict[str, float]
    shared_passes: dict[str, str]
    notes: list[str]
    headatlas_version: str
    created: str
    writes: dict[str, Any]           # per head, top OV output tokens (headatlas.atlas.writes); {} when not recorded
    specificity_matrix: Any          # a headatlas.atlas.specificity.Specificity, or None

    @property
    def detectors(self) -> list[str]: ...

    @property
    def model_name(self) -> str: ...

    def result(self, name: str) -> DetectorResult: ...

    def causal(self, name: str) -> dict[str, Any] | None: ...

    def labelled(self, name: str, status: str | Collection[str] | None = None) -> list[tuple[int, int]]: ...

    def label_status(self, name: str, layer: int, head: int) -> str | None: ...

    def stage_heads(self, status: str | Collection[str] | None = ...) -> dict[str, list[tuple[int, int]]]: ...

    def distributed(self) -> dict[str, dict[str, Any]]: ...

    def status_counts(self, name: str) -> dict[str, int]: ...

    def top_heads(self, name: str, k: int = 5, *, labelled_only: bool = True) -> list[Any]: ...

    def best_head_hint(self, name: str) -> str: ...


class ComparisonLike(Protocol):
    """The read-only surface of a comparison that the compare report uses."""

    atlas_a: AtlasLike
    atlas_b: AtlasLike
    weight_delta: np.ndarray | None
    weight_parts: dict[str, np.ndarray]
    activation_delta: np.ndarray | None
    activation_prompts: str
    timings: dict[str, float]
    notes: list[str]
    fdr: float

    @property
    def n_layers(self) -> int: ...

    @property
    def n_heads(self) -> int: ...

    @property
    def detectors(self) -> list[str]: ...

    def skipped(self) -> dict[str, str]: ...

    def changes(self) -> dict[str, dict[str, list[tuple[int, int]]]]: ...

    def to_dataframe(self) -> pd.DataFrame: ...
