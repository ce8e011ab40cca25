"""The small records an :class:`~headatlas.atlas.Atlas` keeps and hands out: :class:`DetectorMeta` (what it keeps
about a detector besides its result), :class:`Evidence` (one detector's numbers for one head) and
:class:`HeadView` (everything about one head); and :func:`head_name` (``L{layer}H{head}``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

MIXED = "mixed"

# Atlases written before detectors declared a metric family (DetectorMeta.metric) name no family; these are the
# detectors that had no behavioural metric then (their labels are attention-defined).
_LEGACY_ATTENTION_DEFINED = frozenset({"positional", "syntactic", "subword_merge", "rare_words", "attention_sink"})


def head_name(layer: int, head: int) -> str:
    """``L{layer}H{head}``."""
    return f"L{int(layer)}H{int(head)}"


@dataclass(frozen=True)
class DetectorMeta:
    """What an atlas keeps about a detector besides its result (so it renders without the registry)."""

    name: str
    stage: str
    method: str = ""
    summary: str = ""
    citation: str = ""
    version: int = 1
    places_stage: bool = True

    requires: tuple[str, ...] = ()
    evidence: str = ""          # "pattern", "dla", "patching", "probing" ("" in atlases written before v3)
    metric: str | None = None   # behavioural metric family; "" = attention-defined; None = not recorded (old atlas)

    @classmethod
    def from_detector(cls, d: Any) -> "DetectorMeta":
        """From a registered :class:`~headatlas.detectors.base.Detector`."""
        return cls(name=d.name, stage=d.stage, method=d.method, summary=d.summary, citation=d.citation,
                   version=int(d.version), places_stage=bool(d.places_stage), requires=tuple(d.requires),
                   evidence=str(d.evidence), metric=str(d.metric))

    @property
    def attention_defined(self) -> bool:
        """The head type has no behavioural metric: its attention pattern is the claim."""
        if self.metric is None:
            return self.name in _LEGACY_ATTENTION_DEFINED
        return self.metric == ""

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "requires": list(self.requires)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DetectorMeta":
        d = dict(d)
        d["requires"] = tuple(str(x) for x in d.get("requires", ()))
        if d.get("metric") is not None:
            d["metric"] = str(d["metric"])
        return cls(**d)


@dataclass(frozen=True)
class Evidence:
    """One detector's numbers for one head: the score, its null (mean, std), the effect with its
    bootstrap CI, the permutation p, the BH q, the stability under prompt resampling, and whether it
    is labelled; ``extras`` holds the detector's extra per-head values (e.g. the induction copying score)."""

    detector: str
    stage: str
    layer: int
    head: int
    score: float
    null_mean: float
    null_std: float
    effect: float
    ci_low: float
    ci_high: float
    p_value: float
    q_value: float
    stability: float
    labelled: bool
    extras: dict[str, float | str] = field(default_factory=dict)
    status: str | None = None   # "confirmed", "unconfirmed", "attention-defined"; None when not labelled

    @property
    def name(self) -> str:
        return head_name(self.layer, self.head)


@dataclass(frozen=True)
class HeadView:
    """Everything the atlas knows about one head: ``labels`` (the detectors that labelled it: confirmed first,
    then attention-defined, then unconfirmed; by q within each) and ``evidence`` (every detector that ran,
    labelled or not)."""

    layer: int
    head: int
    labels: list[Evidence]
    evidence: dict[str, Evidence]

    @property
    def name(self) -> str:
        return head_name(self.layer, self.head)

    @property
    def stages(self) -> frozenset[str]:
        return frozenset(e.stage for e in self.labels)

