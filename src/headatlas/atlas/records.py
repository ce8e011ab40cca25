"""Plain records of an atlas: a detector's result, its label rule and its causal check.

These hold numbers only (numpy arrays, floats, strings) and import neither torch nor the
detectors, so an atlas can be loaded and rendered in a process that never imports torch.

Axes: every per-head array is ``[n_layers, n_heads]``; heads are named ``L{layer}H{head}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ..errors import InputError

Stage = Literal["KR", "ICI", "LR", "EP"]
Direction = Literal["greater", "less", "two-sided"]

STAGES: dict[str, str] = {
    "KR": "Knowledge Recalling",
    "ICI": "In-Context Identification",
    "LR": "Latent Reasoning",
    "EP": "Expression Preparation",
}
DIRECTIONS: tuple[str, ...] = ("greater", "less", "two-sided")

# the per-head arrays every result carries, in the order the atlas stores them
PER_HEAD_FIELDS: tuple[str, ...] = ("scores", "null_mean", "null_std", "effect", "ci_low", "ci_high", "p_value",
                                    "q_value", "stability")


@dataclass(frozen=True)
class LabelRule:
    """When a head gets a detector's label, stated as data.

    - ``statistic``: what is tested, in words (e.g. "prefix-matching mass minus the twin's").
    - ``direction``: ``"greater"`` (the effect must be positive), ``"less"`` (negative heads, e.g.
      copy suppression) or ``"two-sided"``.
    - ``min_effect``: the smallest effect, in the score's own units, worth a label (its magnitude; for
      ``"less"`` the effect must be <= ``-min_effect``).
    - ``fdr``: the Benjamini-Hochberg level across all heads of the detector (label needs ``q <= fdr``).
    - ``min_score``: optionally, a floor on the score itself (e.g. Gu et al.'s eps = 0.3 for sinks).
    - ``extra_min``: further per-head conditions ``(extras key, minimum)`` (e.g. induction heads must
      also copy: ``(("copying", 1.0),)``).

    A label is ``q <= fdr`` and the effect clears ``min_effect`` in the rule's direction and every
    other condition holds, on a head whose null distribution is not degenerate.
    """

    statistic: str
    direction: Direction = "greater"
    min_effect: float = 0.0
    fdr: float = 0.05
    min_score: float | None = None
    extra_min: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise InputError(f"unknown rule direction {self.direction!r}; use one of {', '.join(DIRECTIONS)}")
        if not (0.0 < float(self.fdr) < 1.0):
            raise InputError(f"rule fdr must be in (0, 1), got {self.fdr}")
        if not math.isfinite(float(self.min_effect)) or self.min_effect < 0:
            raise InputError(f"rule min_effect must be a finite number >= 0, got {self.min_effect}")

    def describe(self) -> str:
        """One line, e.g. ``q <= 0.05 (BH) and effect >= 0.2 (statistic: ...)``."""
        eff = {"greater": f"effect >= {self.min_effect:g}", "less": f"effect <= {-self.min_effect:g}",
               "two-sided": f"|effect| >= {self.min_effect:g}"}[self.direction]
        parts = [f"q <= {self.fdr:g} (Benjamini-Hochberg over all heads, {self.direction} test)", eff]
        if self.min_score is not None:
            parts.append(f"score >= {self.min_score:g}")
        parts += [f"{k} >= {v:g}" for k, v in self.extra_min]
        return " and ".join(parts) + f"; statistic: {self.statistic}"

    def to_dict(self) -> dict[str, Any]:
        return {"statistic": self.statistic, "direction": self.direction, "min_effect": float(self.min_effect),
                "fdr": float(self.fdr), "min_score": None if self.min_score is None else float(self.min_score),
                "extra_min": [[str(k), float(v)] for k, v in self.extra_min]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LabelRule":
        return cls(statistic=str(d["statistic"]), direction=d["direction"], min_effect=float(d["min_effect"]),
                   fdr=float(d["fdr"]), min_score=None if d.get("min_score") is None else float(d["min_score"]),
                   extra_min=tuple((str(k), float(v)) for k, v in d.get("extra_min", [])))


_INTERVENTIONS = {"mean": "mean ablation", "zero": "zero ablation", "resample": "resample ablation",
                  "add": "addition", "scale": "down-scaling", "iti": "ITI steering", "steer": "steering",
                  "none": "no intervention"}


# Label statuses (statistics.md section 5): what a (detector, head) label has shown.
CONFIRMED = "confirmed"                  # the statistic passes and the causal check passes after BH across the atlas
UNCONFIRMED = "unconfirmed"              # the statistic passes; the check failed, was not significant, or did not run
ATTENTION_DEFINED = "attention-defined"  # no behavioural metric exists: the attention pattern is the claim
STATUSES: tuple[str, ...] = (CONFIRMED, UNCONFIRMED, ATTENTION_DEFINED)
STAGED_STATUSES: tuple[str, ...] = (CONFIRMED, ATTENTION_DEFINED)   # the labels that place a head in a stage
CAUSAL_FDR = 0.05   # the BH level across all the atlas's causal checks


@dataclass(frozen=True)
class CausalCheck:
    """Does the model's behaviour depend on the labelled heads more than on random heads?

    ``heads`` (the labelled set) were ablated (``kind``: ``"mean"`` or ``"zero"``) and so were
    ``len(random_effects)`` random sets of the same size drawn from matched layers (their heads:
    ``random_sets``, drawn from a pool described by ``pool``; ``exhaustive``: every distinct set was used,
    so the p floor is ``1 / (1 + len(random_sets))``). ``effect`` is the change of ``metric`` (ablated -
    clean; ``baseline`` is the clean value) averaged over ``n_prompts`` held-out prompts; ``p_value`` =
    (1 + #random sets whose change is at least as large in the expected direction) / (1 + #random sets);
    ``q_value``: Benjamini-Hochberg over every causal check of the atlas (filled by the atlas).
    ``expected``: ``"increase"`` (a loss) or ``"decrease"`` (a log-prob or logit difference).
    ``per_head``: ``"L23H0"`` -> the change of the metric when that labelled head alone is ablated (its own
    share of the set's effect). ``kind == "none"``: nothing was ablated (``note`` says why).
    """

    metric: str
    kind: str
    heads: tuple[tuple[int, int], ...] = ()
    effect: float = math.nan
    random_effects: tuple[float, ...] = ()
    p_value: float = math.nan
    n_prompts: int = 0
    baseline: float = math.nan
    expected: str = "increase"
    description: str = ""
    note: str = ""
    q_value: float = math.nan
    random_sets: tuple[tuple[tuple[int, int], ...], ...] = ()
    exhaustive: bool = False
    per_head: dict[str, float] = field(default_factory=dict)
    pool: str = ""

    @property
    def ran(self) -> bool:
        return self.kind != "none"

    @property
    def sign(self) -> float:
        """+1 when the expected change is an increase, -1 for a decrease."""
        return 1.0 if self.expected == "increase" else -1.0

    @property
    def p_floor(self) -> float:
        """The smallest p this check could give: ``1 / (1 + number of random sets)``."""
        return 1.0 / (1 + len(self.random_effects)) if self.random_effects else math.nan

    @property
    def passed(self) -> bool:
        """The check ran on at least one head and its BH q across the atlas is <= :data:`CAUSAL_FDR`."""
        return (self.ran and bool(self.heads) and math.isfinite(self.q_value) and self.q_value <= CAUSAL_FDR
                and math.isfinite(self.effect))

    def head_supports(self, head: str) -> bool:
        """Whether head ``"L23H0"``'s own ablation moves the metric in the expected direction (True where no
        per-head number was measured: the set-level check is then the only evidence)."""
        if head not in self.per_head:
            return True
        x = self.per_head[head]
        return math.isfinite(x) and self.sign * x > 0

    @property
    def intervention(self) -> str:
        """The intervention in words: "mean ablation", "zero ablation", "addition", ... ."""
        return _INTERVENTIONS.get(self.kind, f"{self.kind} intervention")

    @property
    def random_median(self) -> float:
        return float(np.median(self.random_effects)) if self.random_effects else math.nan

    @property
    def beats_every_random_set(self) -> bool:
        """The labelled set's change exceeds every random set's, in the expected direction."""
        if not self.random_effects or not math.isfinite(self.effect):
            return False
        sign = 1.0 if self.expected == "increase" else -1.0
        return all(sign * self.effect > sign * r for r in self.random_effects)

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "kind": self.kind, "heads": [[int(a), int(b)] for a, b in self.heads],
                "effect": _num(self.effect), "random_effects": [_num(x) for x in self.random_effects],
                "p_value": _num(self.p_value), "n_prompts": int(self.n_prompts), "baseline": _num(self.baseline),
                "expected": self.expected, "description": self.description, "note": self.note,
                "q_value": _num(self.q_value),
                "random_sets": [[[int(a), int(b)] for a, b in s] for s in self.random_sets],
                "exhaustive": bool(self.exhaustive), "per_head": {str(k): _num(v) for k, v in self.per_head.items()},
                "pool": self.pool}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CausalCheck":
        """Inverse of :meth:`to_dict`; checks written before v3 (no q, random sets or per-head numbers) load
        with those empty."""
        return cls(metric=str(d["metric"]), kind=str(d["kind"]),
                   heads=tuple((int(a), int(b)) for a, b in d["heads"]), effect=_float(d["effect"]),
                   random_effects=tuple(_float(x) for x in d["random_effects"]), p_value=_float(d["p_value"]),
                   n_prompts=int(d["n_prompts"]), baseline=_float(d["baseline"]), expected=str(d["expected"]),
                   description=str(d["description"]), note=str(d["note"]),
                   q_value=_float(d.get("q_value", "nan")),
                   random_sets=tuple(tuple((int(a), int(b)) for a, b in s) for s in d.get("random_sets", [])),
                   exhaustive=bool(d.get("exhaustive", False)),
                   per_head={str(k): _float(v) for k, v in dict(d.get("per_head", {})).items()},
                   pool=str(d.get("pool", "")))

    def as_mapping(self) -> dict[str, Any]:
        """What :meth:`Atlas.causal` returns: ``metric, kind, heads, effect, random_effects, p_value,
        n_prompts`` (plus ``baseline, expected, random_median, description, note``)."""
        return {"metric": self.metric, "kind": self.kind, "heads": list(self.heads), "effect": self.effect,
                "random_effects": list(self.random_effects), "p_value": self.p_value, "n_prompts": self.n_prompts,
                "baseline": self.baseline, "expected": self.expected, "random_median": self.random_median,
                "description": self.description, "note": self.note, "q_value": self.q_value,
                "random_sets": [list(s) for s in self.random_sets], "exhaustive": self.exhaustive,
                "p_floor": self.p_floor, "per_head": dict(self.per_head), "pool": self.pool, "passed": self.passed}


def no_causal_check(reason: str) -> CausalCheck:
    """The record for a head type whose behaviour has no metric to ablate against."""
    return CausalCheck(metric="", kind="none", note=reason)


@dataclass
class DetectorResult:
    """Scores of every head for one head type, with the evidence behind each label.

    Per head ``[n_layers, n_heads]``:

    - ``scores``: the detector's score; ``null_mean``/``null_std``: the centre and spread of the
      score's null distribution (``null_description`` says what it is: permutations of the structure
      the score depends on, or matched controls);
    - ``effect``: the tested statistic (usually score minus the null's centre, in score units) and
      its bootstrap CI over prompts ``ci_low``/``ci_high``;
    - ``p_value``: add-one permutation p (``(1 + #null >= observed) / (1 + n_null)`` in the rule's
      direction; it never reaches 0: its floor is ``1 / (1 + n_null)``); ``q_value``: Benjamini-Hochberg
      over all heads of this detector;
    - ``stability``: the fraction of prompt resamples in which the head would still pass the rule.

    ``labelled`` are the heads the ``rule`` labels (``[]`` = "none found", a valid result), most
    significant first. ``causal`` is the check on the model's behaviour (ablating the labelled set
    against random sets), or ``None`` where none ran. ``extras``: more per-head arrays; ``details``:
    free-form JSON-able facts. ``skipped``: the reason the detector could not run (then scores are NaN).
    """

    name: str
    scores: np.ndarray
    null_mean: np.ndarray
    null_std: np.ndarray
    effect: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    p_value: np.ndarray
    q_value: np.ndarray
    stability: np.ndarray
    labelled: list[tuple[int, int]]
    rule: LabelRule
    data_description: str
    null_description: str
    n_prompts: int
    seed: int
    n_null: int = 0
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None
    causal: CausalCheck | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(np.shape(self.scores))  # type: ignore[return-value]


def skipped_result(name: str, n_layers: int, n_heads: int, reason: str, seed: int,
                   rule: LabelRule | None = None) -> DetectorResult:
    """A result for a detector that could not run on this model: NaN everywhere, ``skipped = reason``."""
    nan = np.full((n_layers, n_heads), np.nan)
    return DetectorResult(name=name, **{k: nan.copy() for k in PER_HEAD_FIELDS}, labelled=[],
                          rule=rule or LabelRule(statistic="(not run)"), data_description="", null_description="",
                          n_prompts=0, seed=seed, skipped=reason)


def _num(x: float) -> float | str:
    x = float(x)
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def _float(x: Any) -> float:
    if isinstance(x, str):
        return {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}[x]
    return float(x)
