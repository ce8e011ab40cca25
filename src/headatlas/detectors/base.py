"""The detector contract (v2): a registered name, a stage, a method family, the detectors it needs,
the shared passes it uses, a run function that scores every head ``[n_layers, n_heads]`` with a null
distribution, and a causal check on the behaviour the head type is about.

A detector module defines one :class:`Detector` and calls :func:`register` at import;
``detectors/__init__.py`` imports every detector module explicitly. The records a detector returns
(:class:`DetectorResult`, :class:`LabelRule`, :class:`CausalCheck`) live in :mod:`headatlas.atlas.records`
and import no torch; the statistics (p, q, CI, stability, labels) come from :mod:`headatlas.stats`.
How to write or port a detector: docs/detector_contract.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Generic, Hashable, Mapping, TypeVar

from ..atlas.records import (STAGES, CausalCheck, DetectorResult, LabelRule, Stage, no_causal_check,
                             skipped_result)
from ..errors import InputError, InputTypeError

if TYPE_CHECKING:
    from ..models import LoadedModel

T = TypeVar("T")

__all__ = ["EVIDENCE", "METRIC_FAMILIES", "STAGES", "CausalCheck", "Detector", "DetectorResult", "LabelRule", "ScanCache",
           "ScanConfig", "SharedPass", "NOT_FOUND", "Stage", "all_detectors", "by_metric", "default_names", "get", "names",
           "no_causal_check", "register", "same_metric", "scan_order", "skipped_result"]


@dataclass(frozen=True)
class SharedPass(Generic[T]):
    """Forward passes several detectors share, declared instead of hidden.

    ``compute(model, config) -> T`` runs them; ``key(model, config)`` says which settings the
    result depends on (two configs with the same key share one computation within a scan).
    Detectors list the passes they use in ``Detector.uses`` and fetch them with
    ``config.shared(PASS, model)``; the scan records which detector paid for each pass."""

    name: str
    compute: Callable[["LoadedModel", "ScanConfig"], T]
    key: Callable[["LoadedModel", "ScanConfig"], Hashable]


@dataclass
class ScanCache:
    """The per-scan store of shared passes: ``(pass name, key) -> value``, with who computed each one."""

    values: dict[tuple[str, Hashable], Any] = field(default_factory=dict)
    computed_by: dict[str, str] = field(default_factory=dict)      # pass name -> detector that paid
    seconds: dict[str, float] = field(default_factory=dict)        # pass name -> seconds it took
    current: str = ""                                              # the detector running now

    def get(self, p: SharedPass[T], m: "LoadedModel", cfg: "ScanConfig") -> T:
        key = (p.name, p.key(m, cfg))
        if key not in self.values:
            t0 = time.perf_counter()
            self.values[key] = p.compute(m, cfg)
            self.seconds[p.name] = self.seconds.get(p.name, 0.0) + time.perf_counter() - t0
            self.computed_by.setdefault(p.name, self.current or "(direct call)")
        return self.values[key]


@dataclass(frozen=True)
class ScanConfig:
    """Settings shared by every detector in a scan, and what the scan gives a detector.

    ``seed`` seeds every generator (runs reproduce exactly); ``n_prompts`` scales the number of
    prompts a detector uses (each detector documents its default); ``batch_size`` caps the rows
    per forward pass; ``progress`` is called as ``progress(done, total)`` by long detectors;
    ``quick`` asks for the smallest data that still gives a meaningful null (tests, CI);
    ``results`` holds the results of the detectors that ran before (those a detector ``requires``
    are always there); ``cache`` the scan's shared passes (:meth:`shared`).
    """

    seed: int = 0
    n_prompts: int | None = None
    batch_size: int = 8
    quick: bool = False
    progress: Callable[[int, int], None] | None = field(default=None, compare=False)
    options: dict[str, Any] = field(default_factory=dict, compare=False)
    results: Mapping[str, DetectorResult] = field(default_factory=dict, compare=False)
    cache: ScanCache = field(default_factory=ScanCache, compare=False, repr=False)

    def tick(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(done, total)

    def shared(self, p: SharedPass[T], m: "LoadedModel") -> T:
        """The value of shared pass ``p`` for this model and these settings (computed once per scan)."""
        return self.cache.get(p, m, self)

    def result(self, name: str) -> DetectorResult:
        """The result of an earlier detector (declare it in ``requires``)."""
        try:
            return self.results[name]
        except KeyError:
            raise InputError(f"no result of detector {name!r} is available here; declare it in requires= "
                             "or run it in the same scan") from None


CausalFn = Callable[["LoadedModel", ScanConfig, DetectorResult], CausalCheck]
ExampleFn = Callable[["LoadedModel", ScanConfig], Any]   # -> 1-d token ids of one of the detector's own prompts


@dataclass(frozen=True)
class Detector:
    """A head type.

    - ``name``, ``stage`` (KR/ICI/LR/EP), ``method`` (the survey's method family), ``summary``,
      ``citation``; ``run(model, config) -> DetectorResult``;
    - ``requires``: detectors whose results ``run`` reads (``config.result(name)``); the scan runs
      them first (adding them when they were not asked for);
    - ``uses``: the shared passes ``run`` fetches (reported with the timings);
    - ``causal``: ``fn(model, config, result) -> CausalCheck`` ablating the labelled heads against
      random head sets on the head type's behaviour; or ``no_causal`` — the reason no behavioural
      metric exists (then the atlas says so);
    - ``example``: ``fn(model, config) -> token ids [S]`` of one of the detector's own prompts; the scan
      draws its top labelled heads' attention on it as the report's token view;
    - ``version``: bump when the definition changes (stored in every record; resume keys on it);
    - ``places_stage``: False for structural patterns outside the survey's taxonomy (sinks).
    - ``default``: True when a plain scan (no detector list) runs it. Detectors whose data or causal
      battery costs minutes on a 135M model on 2 CPU cores set False; ``detectors="all"`` (CLI ``--all``)
      runs every registered detector.
    - ``evidence``: the kind of evidence a label rests on, one of :data:`EVIDENCE` (``"pattern"``,
      ``"dla"``, ``"patching"``, ``"probing"``); the module lives in the sub-package of that name.
    - ``metric``: the behavioural metric family its causal check measures, one of :data:`METRIC_FAMILIES`
      (detectors of one family share random pools: a head labelled by a sibling is never "random");
      ``""`` for an attention-defined head type (no behavioural metric: the pattern is the claim, and
      ``no_causal`` says so).

    A detector whose behaviour the model does not show at all (e.g. it cannot do any of the in-context
    tasks) raises :class:`InputError` with a message starting ``"not found: "``; the scan records it as a
    skipped result carrying that reason, and the atlas reports the head type as not found.
    """

    name: str
    stage: Stage
    method: str
    summary: str
    citation: str
    run: Callable[["LoadedModel", ScanConfig], DetectorResult]
    requires: tuple[str, ...] = ()
    uses: tuple[SharedPass[Any], ...] = ()
    causal: CausalFn | None = None
    no_causal: str = ""
    example: ExampleFn | None = None
    version: int = 2
    places_stage: bool = True
    default: bool = True
    evidence: str = ""
    metric: str = ""


# The kinds of evidence a label can rest on; detectors/<kind>/ holds the detectors of each kind.
EVIDENCE: dict[str, str] = {
    "pattern": "attention pattern (where the head's attention goes, against a null or matched control)",
    "dla": "direct logit attribution (the head's direct effect on the logits, from activations or OV weights)",
    "patching": "intervention on the running model (activation patching, path patching, learned gates)",
    "probing": "a probe on the head's output (per-head classifier against shuffled labels)",
}

# Behavioural metric families: what a causal check measures. Detectors that share a family share clean random
# pools (a head labelled, or significant in the expected direction, by any detector of the family is never drawn
# into another's random sets). ``""`` = attention-defined (no behavioural metric).
METRIC_FAMILIES: dict[str, str] = {
    "repeat loss": "next-token loss on the repeat of random-token sequences",
    "needle log-prob": "log-prob of a needle's code retrieved from a long haystack",
    "IOI logit difference": "logit(IO) - logit(S) on indirect-object sentences",
    "MCQA logit difference": "logit of the correct option letter minus the other letters",
    "memory vs context": "logit(memory answer) - logit(context answer) under a knowledge conflict",
    "yes/no bias": "logit(No) - logit(Yes) on yes/no questions",
    "attribute log-prob": "log-prob of a fact's attribute after subject and relation",
    "relation tail log-prob": "log-prob of a relation's tail word after its head word",
    "successor log-prob": "log-prob of the next item of an ordinal sequence",
    "in-context task": "the answer of an in-context-learned task (label logits, or zero-shot answer probability)",
    "true vs false completion": "log P(true completion) - log P(false completion) of factual statements",
    "arithmetic answer log-prob": "log-prob of the correct sum's tokens",
    "paraphrase agreement": "agreement of next-token distributions across paraphrases of one question",
    "answer language": "log P(answer in the question's language) - log P(English answer)",
    "chain-of-thought dependence": "whether an answer needs its chain of thought (no check is run)",
}

NOT_FOUND = "not found: "   # prefix of the skip reason of a detector whose behaviour the model does not show


_REGISTRY: dict[str, Detector] = {}


def register(detector: Detector) -> Detector:
    if not isinstance(detector, Detector):
        raise InputTypeError(f"register() takes a Detector, got {type(detector).__name__}")
    if detector.name in _REGISTRY:
        raise InputError(f"a detector named {detector.name!r} is already registered")
    if detector.stage not in STAGES:
        raise InputError(f"unknown stage {detector.stage!r}; use one of {', '.join(STAGES)}")
    if detector.causal is None and not detector.no_causal:
        raise InputError(f"detector {detector.name!r} needs a causal check or a no_causal reason")
    if detector.evidence not in EVIDENCE:
        raise InputError(f"detector {detector.name!r}: evidence must be one of {', '.join(EVIDENCE)}, "
                         f"got {detector.evidence!r}")
    if detector.metric and detector.metric not in METRIC_FAMILIES:
        raise InputError(f"detector {detector.name!r}: unknown metric family {detector.metric!r}; declare it in "
                         f"headatlas.detectors.base.METRIC_FAMILIES (known: {', '.join(METRIC_FAMILIES)})")
    if not detector.metric and detector.causal is not None:
        raise InputError(f"detector {detector.name!r} has a causal check but no metric family: declare metric=")
    _REGISTRY[detector.name] = detector
    return detector


def unregister(name: str) -> None:
    """Remove a registered detector (tests that register temporary ones)."""
    _REGISTRY.pop(name, None)


def get(name: str) -> Detector:
    if not isinstance(name, str):
        raise InputError(f"a detector name must be a string, got {type(name).__name__}")
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InputError(f"unknown detector {name!r}; available: {', '.join(names())}") from None


def same_metric(name: str) -> tuple[str, ...]:
    """The registered detectors whose causal checks measure the same behavioural metric family as ``name``
    (itself included; ``()`` for an attention-defined detector)."""
    fam = get(name).metric
    return tuple(n for n in names() if fam and _REGISTRY[n].metric == fam)


def by_metric() -> dict[str, tuple[str, ...]]:
    """Metric family -> the registered detectors that measure it ("" -> the attention-defined ones)."""
    out: dict[str, list[str]] = {}
    for n in names():
        out.setdefault(_REGISTRY[n].metric, []).append(n)
    return {k: tuple(v) for k, v in out.items()}


def names() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def default_names() -> tuple[str, ...]:
    """The detectors a plain scan runs (``Detector.default``), sorted."""
    return tuple(n for n in names() if _REGISTRY[n].default)


def all_detectors() -> tuple[Detector, ...]:
    return tuple(_REGISTRY[n] for n in names())


def scan_order(requested: list[str]) -> list[str]:
    """``requested`` plus everything they require, each after its requirements (requested order kept
    otherwise). InputError on an unknown name or a dependency cycle."""
    order: list[str] = []
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            cycle = " -> ".join(visiting[visiting.index(name):] + [name])
            raise InputError(f"detector dependencies form a cycle: {cycle}")
        visiting.append(name)
        for dep in get(name).requires:
            visit(dep)
        visiting.pop()
        order.append(name)

    for n in requested:
        visit(n)
    return order
