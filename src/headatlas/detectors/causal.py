"""Causal checks for labels (v3), and per-head effect maps turned into detector results.

A label is a claim that the model's behaviour depends on the head. :func:`set_check` runs a detector's
:class:`~headatlas.detectors.behaviours.Behaviour` with the intervention on

- the tested set (the labelled heads, or their ``top`` most significant for a steering check);
- :data:`~headatlas.detectors.pools.N_SETS` layer-matched random sets from the clean pool (every head labelled,
  or significant in the rule's direction, by any detector of the same metric family is out of it;
  :mod:`headatlas.detectors.pools`), or every distinct set when fewer exist;
- each of the tested set's :data:`PER_HEAD` most significant heads alone (``CausalCheck.per_head``);

all as batch rows of shared passes (:func:`headatlas.detectors.setruns.measure`). The p-value is the rank of the
tested change among the random ones, ``(1 + #{random change at least as large in the expected direction}) /
(1 + n_sets)``; the atlas corrects it across all its checks (Benjamini-Hochberg -> ``CausalCheck.q_value``).
The scan gives a check every detector's results (``ScanConfig.results``), so the pool can be clean.

:func:`effect_map_result` turns any method's per-head, per-prompt effects (patching, attribution, DLA) into a
:class:`DetectorResult` with a sign-flip null, p, q, CI and labels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np

from .. import stats
from ..atlas.records import CausalCheck, DetectorResult, LabelRule
from . import base as registry
from .behaviours import Behaviour
from .pools import N_SETS, clean_pool, matched_sets
from .setruns import measure

if TYPE_CHECKING:
    from ..models import LoadedModel
    from .base import ScanConfig

PER_HEAD = 16   # heads ablated alone per check (the most significant of the tested set)
BehaviourFn = Callable[["LoadedModel", "ScanConfig", DetectorResult], Behaviour]
Report = Callable[[np.ndarray, np.ndarray, np.ndarray], str]   # (clean [U], tested [U], random [n, U]) -> note


def family_of(name: str) -> tuple[str, tuple[str, ...]]:
    """``(family, members)`` of a registered detector (itself included); ``("", (name,))`` when it is not
    registered (a check built by hand)."""
    try:
        det = registry.get(name)
    except Exception:   # noqa: BLE001 -- an unregistered name: its own pool only
        return "", (name,)
    return det.metric, registry.same_metric(name) or (name,)


def tested_heads(result: DetectorResult, top: int | None = None) -> list[tuple[int, int]]:
    """The heads a check intervenes on: the labelled heads (most significant first), or their first ``top``."""
    heads = [(int(a), int(b)) for a, b in result.labelled]
    return heads if top is None else heads[:top]


def set_check(m: LoadedModel, cfg: ScanConfig, result: DetectorResult, behaviour: Behaviour, *,
              heads: Sequence[tuple[int, int]] | None = None, n_sets: int = N_SETS,
              members: Sequence[str] | None = None, results: Mapping[str, DetectorResult] | None = None,
              note: str = "", report: Report | None = None) -> CausalCheck:
    """The v3 causal check of ``result`` on ``behaviour`` (module docstring).

    ``heads``: the tested set (default: every labelled head); ``members``: the detectors whose heads leave the
    pool (default: the metric family of ``result.name``); ``results``: every result of the scan (default
    ``cfg.results`` plus ``result``); ``report(clean [U], tested [U], random [n_sets, U]) -> note``: a note from
    the per-unit values (e.g. answer rates), appended to ``note``."""
    tested = [(int(a), int(b)) for a, b in (result.labelled if heads is None else heads)]
    family, fam_members = family_of(result.name)
    members = tuple(fam_members if members is None else members)
    if not tested:
        return CausalCheck(metric=behaviour.metric, kind="none", note="no heads were labelled: nothing to ablate",
                           description=behaviour.description, expected=behaviour.expected)
    everyone = {**dict(cfg.results if results is None else results), result.name: result}
    shape = (m.info.n_layers, m.info.n_heads)
    pool = clean_pool(everyone, members, shape, tested=tested, family=family,
                      attention_layers=getattr(m.info, "attention_layers", None))
    rng = stats.rng_for(cfg.seed, f"causal:{result.name}")
    drawn = matched_sets(tested, pool.free, rng, n_sets)
    if not drawn.sets:
        return CausalCheck(metric=behaviour.metric, kind="none", heads=tuple(tested), expected=behaviour.expected,
                           description=behaviour.description, pool=pool.describe(),
                           note="no other layer-matched set can be drawn from the clean pool: nothing to compare with")
    singles = tested[:PER_HEAD] if len(tested) > 1 else []
    sets = [tuple(tested)] + [(h,) for h in singles] + list(drawn.sets)
    clean, values = measure(m, behaviour, sets, batch_size=cfg.batch_size)
    change = (values - clean[None]).mean(1)                                  # [n_sets]
    effect = float(change[0])
    per_head = {_name(h): float(x) for h, x in zip(singles, change[1:1 + len(singles)])}
    if len(tested) == 1:
        per_head = {_name(tested[0]): effect}           # a set of one head: the set's change is the head's own
    rand = change[1 + len(singles):]
    if report is not None:
        note = "; ".join(x for x in (note, report(clean, values[0], values[1 + len(singles):])) if x)
    sign = 1.0 if behaviour.expected == "increase" else -1.0
    hits = int(np.sum(sign * rand >= sign * effect))
    capped = (f"; per-head numbers for the {len(singles)} most significant of {len(tested)} tested heads "
              "(the others rest on the set's check)") if len(tested) > len(singles) > 0 else ""
    return CausalCheck(metric=behaviour.metric, kind=behaviour.kind, heads=tuple(tested), effect=effect,
                       random_effects=tuple(float(x) for x in rand), p_value=(1 + hits) / (1 + len(rand)),
                       n_prompts=behaviour.n_prompts, baseline=float(np.mean(clean)), expected=behaviour.expected,
                       description=behaviour.description, note=note, random_sets=tuple(drawn.sets),
                       exhaustive=drawn.exhaustive, per_head=per_head,
                       pool=f"{pool.describe()}; {drawn.describe()}{capped}")


def _name(h: tuple[int, int]) -> str:
    return f"L{h[0]}H{h[1]}"


def behaviour_check(make: BehaviourFn, *, top: int | None = None) -> Callable[..., CausalCheck]:
    """A detector's ``causal=`` from its ``behaviour=`` function: ``fn(m, cfg, result) -> CausalCheck`` running
    :func:`set_check` on the labelled heads (their ``top`` most significant when given). A detector whose check
    needs nothing else registers ``causal=behaviour_check(make), behaviour=make``."""
    def check(m: LoadedModel, cfg: ScanConfig, result: DetectorResult) -> CausalCheck:
        return set_check(m, cfg, result, make(m, cfg, result), heads=tested_heads(result, top))
    return check


def effect_map_result(name: str, per_prompt: np.ndarray, rule: LabelRule, *, seed: int, data_description: str,
                      null_description: str | None = None, extras: dict[str, np.ndarray] | None = None,
                      details: dict | None = None, n_perm: int = stats.N_PERM) -> DetectorResult:
    """A result from per-prompt, per-head effects ``[L, B, H]`` of any causal method (patching,
    attribution, direct logit attribution).

    The score is the mean effect; the null flips each prompt's sign (the effect of a head that does
    nothing for this behaviour is symmetric around 0 across prompts: for a contrast such as
    logit(IO) - logit(S), swapping the two answers flips it exactly)."""
    rng = stats.rng_for(seed, f"{name}:signflip")
    draws = stats.signflip_null(per_prompt, n_perm, rng=rng)
    scores = stats.mean_over_prompts(per_prompt)
    tested = stats.evaluate(per_prompt, draws, rule, seed=seed, salt=name, scores=scores, extras=extras)
    return stats.result(name, tested, scores=scores, rule=rule, data_description=data_description,
                        null_description=null_description or (
                            "sign-flip permutations of the per-prompt effects (each prompt's effect may flip "
                            f"sign under the null; {tested.n_null} draws)"),
                        n_prompts=per_prompt.shape[1], seed=seed, extras=extras, details=details)
