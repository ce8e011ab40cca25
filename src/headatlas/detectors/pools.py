"""Where a causal check's random head sets come from: the clean pool, layer-matched sets, distributed results.

- :func:`clean_pool`: the heads a random set may contain. Every head that a detector of the tested detector's
  metric family (itself included) labelled, or found significant in its rule's direction (q <=
  :data:`SIGNIFICANT_Q` with at least the rule's minimum effect, :func:`significant_heads`), is taken out, except
  the tested heads themselves; so are heads of layers without softmax attention. A sibling's heads are not "random": a set of memory heads moves the memory-vs-context
  answer as much as the context heads under test, the other way.
- :func:`matched_sets`: random sets of the tested set's size with as many heads from each layer as the tested
  set has there, drawn from the pool, every one distinct and none equal to the tested set. At least
  :data:`N_SETS` of them (p floor ``1 / (1 + N_SETS)`` = 0.01), or every such set when fewer exist
  (``exhaustive``; the floor is then ``1 / (1 + n_sets)``).

  Why the tested heads stay in the pool: the check's p-value is the rank of the tested set's change among the
  random sets' changes, which is uniform when the tested set is exchangeable with the random sets, i.e. when
  both are draws from the same heads. Random sets that may never contain a tested head are draws from a
  smaller population: a tested set that happens to hold the layer's most influential ordinary heads then
  beats sets that cannot hold them, and a check of heads that do nothing special passes far more often than
  the nominal rate (13.5% of 200 seeds instead of 5% at p <= 0.05 in ``bench/zero_effect.py``; 3.5% with them
  kept).
- :func:`distributed`: a detector whose statistic passes for more than :data:`DISTRIBUTED_FRACTION` of the
  heads has found a property spread over the model, not a head type; the scan reports it instead of labels.

Heads are ``(layer, head)`` pairs of ints; a set is a sorted tuple of them.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from ..atlas.records import DetectorResult

Head = tuple[int, int]
HeadSet = tuple[Head, ...]

N_SETS = 99                   # random sets per check: p floor 0.01
SIGNIFICANT_Q = 0.05          # a head with q <= this in its rule's direction is not "random" for its family
DISTRIBUTED_FRACTION = 0.25   # more than this share of the heads passing: a distributed property
ENUMERATE_BELOW = 20          # fewer than ENUMERATE_BELOW * n_sets distinct sets: enumerate, then draw without replacement


def significant_heads(r: DetectorResult, q: float = SIGNIFICANT_Q) -> set[Head]:
    """Heads that pass the core of the detector's rule: ``q_value <= q`` and an effect at least the rule's
    ``min_effect`` in its direction (positive for "greater", negative for "less", either for "two-sided"), whether
    or not the side conditions (a score floor, extras) or the distributed rule let them be labelled.

    Why the effect minimum: with hundreds of prompts a tiny effect is significant for most heads (on smollm2-135m
    q <= 0.05 alone holds for 260 of the 270 heads across induction, previous_token, duplicate_token and gating,
    and for all 72 heads of gemma3-270m), which would leave no head to draw random sets from. The rule's minimum
    is what the detector calls a head of its type; a head below it is not a weaker sibling."""
    qv = np.asarray(r.q_value, dtype=float)
    eff = np.asarray(r.effect, dtype=float)
    floor = max(float(r.rule.min_effect), 0.0)
    ok = np.isfinite(qv) & (qv <= q) & np.isfinite(eff)
    if r.rule.direction == "greater":
        ok &= (eff > 0) & (eff >= floor)
    elif r.rule.direction == "less":
        ok &= (eff < 0) & (eff <= -floor)
    else:
        ok &= (eff != 0) & (np.abs(eff) >= floor)
    return {(int(a), int(b)) for a, b in zip(*np.nonzero(ok))}


@dataclass(frozen=True)
class Pool:
    """The heads a random set may contain: ``free``; ``excluded`` detector -> how many heads it took out
    (labelled or significant); ``absent``: family members that did not run in this scan (their heads could
    not be excluded); ``n_heads``: the attention heads of the model."""

    family: str
    free: frozenset[Head]
    excluded: dict[str, int]
    absent: tuple[str, ...]
    n_heads: int
    tested: int = 0

    def describe(self) -> str:
        fam = f"metric family {self.family!r}" if self.family else "this detector"
        took = ", ".join(f"{k} {v}" for k, v in self.excluded.items())
        text = (f"pool: {len(self.free)} of {self.n_heads} heads, the {self.tested} tested included (random sets may "
                f"share heads with the tested set: the rank test is then exact); excluded every other head labelled, "
                f"or significant (q <= {SIGNIFICANT_Q:g} with the rule's minimum effect in its direction), by a detector "
                f"of {fam} ({took})")
        if self.absent:
            text += f"; not in this scan (their heads could not be excluded): {', '.join(self.absent)}"
        return text


def clean_pool(results: Mapping[str, DetectorResult], members: Sequence[str], shape: tuple[int, int], *,
               tested: Iterable[Head] = (), family: str = "", attention_layers: Iterable[int] | None = None) -> Pool:
    """The pool for a check of ``tested`` by a detector whose family is ``members`` (itself included): every head
    of ``shape = (n_layers, n_heads)`` in ``attention_layers`` (default all) minus, for each member present in
    ``results`` and not skipped, its labelled and significant heads, plus the tested heads."""
    n_layers, n_heads = shape
    layers = range(n_layers) if attention_layers is None else sorted({int(x) for x in attention_layers})
    everyone = {(la, h) for la in layers for h in range(n_heads)}
    taken: set[Head] = set()
    excluded: dict[str, int] = {}
    absent = []
    for name in members:
        r = results.get(name)
        if r is None:
            absent.append(name)
            continue
        if r.skipped:
            excluded[name] = 0
            continue
        out = {(int(a), int(b)) for a, b in r.labelled} | significant_heads(r)
        excluded[name] = len(out & everyone)
        taken |= out
    mine = {(int(a), int(b)) for a, b in tested}
    return Pool(family=family, free=frozenset((everyone - taken) | mine), excluded=excluded, absent=tuple(absent),
                n_heads=len(everyone), tested=len(mine))


def allocate(heads: Sequence[Head], free: Iterable[Head]) -> dict[int, int] | None:
    """Layer -> how many heads a matched set draws from it (as many as the tested set has there); None when a
    layer's pool holds fewer (it cannot when the pool holds the tested heads)."""
    need: dict[int, int] = {}
    for la, _h in heads:
        need[int(la)] = need.get(int(la), 0) + 1
    cap: dict[int, int] = {}
    for la, _h in free:
        cap[int(la)] = cap.get(int(la), 0) + 1
    return None if any(cap.get(la, 0) < n for la, n in need.items()) else need


@dataclass(frozen=True)
class RandomSets:
    """The random sets of a check: ``sets`` (sorted tuples), ``exhaustive`` (every distinct set the pool allows),
    ``n_distinct`` (how many distinct layer-matched sets other than the tested one exist), ``allocation`` (layer ->
    heads per set)."""

    sets: tuple[HeadSet, ...]
    exhaustive: bool
    n_distinct: int
    allocation: dict[int, int]

    def describe(self) -> str:
        layers = ", ".join(f"L{la} x{n}" for la, n in sorted(self.allocation.items()))
        if self.exhaustive:
            return (f"all {len(self.sets)} distinct layer-matched sets ({layers}) were used: exact p floor "
                    f"1/{len(self.sets) + 1} = {1 / (len(self.sets) + 1):.3g}")
        return f"{len(self.sets)} distinct random layer-matched sets ({layers}) of {self.n_distinct:.3g} possible"


def matched_sets(heads: Sequence[Head], free: Iterable[Head], rng: np.random.Generator,
                 n_sets: int = N_SETS) -> RandomSets:
    """``n_sets`` distinct layer-matched random sets from the pool ``free`` (which should hold the tested heads),
    none equal to the tested set; every one when there are no more than ``n_sets`` (``exhaustive``); none when
    a layer's pool is too small."""
    free = sorted({(int(a), int(b)) for a, b in free})
    tested = tuple(sorted((int(a), int(b)) for a, b in heads))
    alloc = allocate(tested, free)
    if alloc is None or not tested:
        return RandomSets(sets=(), exhaustive=False, n_distinct=0, allocation=alloc or {})
    by_layer = {la: [lh for lh in free if lh[0] == la] for la in alloc}
    n_other = math.prod(math.comb(len(by_layer[la]), k) for la, k in alloc.items()) - (1 if set(tested) <= set(free) else 0)
    if n_other <= ENUMERATE_BELOW * n_sets:
        every = [s for s in (tuple(sorted(itertools.chain.from_iterable(parts))) for parts in itertools.product(
            *(itertools.combinations(by_layer[la], k) for la, k in sorted(alloc.items())))) if s != tested]
        if len(every) <= n_sets:
            return RandomSets(sets=tuple(every), exhaustive=True, n_distinct=len(every), allocation=alloc)
        pick = sorted(int(i) for i in rng.choice(len(every), size=n_sets, replace=False))
        return RandomSets(sets=tuple(every[i] for i in pick), exhaustive=False, n_distinct=len(every), allocation=alloc)
    seen: set[HeadSet] = {tested}
    out: list[HeadSet] = []
    while len(out) < n_sets:
        s = tuple(sorted(by_layer[la][int(i)] for la, k in sorted(alloc.items())
                         for i in rng.choice(len(by_layer[la]), size=k, replace=False)))
        if s not in seen:
            seen.add(s)
            out.append(s)
    return RandomSets(sets=tuple(out), exhaustive=False, n_distinct=n_other, allocation=alloc)


def distributed(r: DetectorResult, fraction: float = DISTRIBUTED_FRACTION) -> dict | None:
    """``{"n_pass", "n_heads", "fraction", "threshold"}`` when more than ``fraction`` of the scored heads (finite p)
    are labelled, else None."""
    n_heads = int(np.isfinite(np.asarray(r.p_value, dtype=float)).sum())
    n_pass = len(r.labelled)
    if n_heads == 0 or n_pass <= fraction * n_heads:
        return None
    return {"n_pass": n_pass, "n_heads": n_heads, "fraction": n_pass / n_heads, "threshold": fraction}


def mark_distributed(r: DetectorResult, fraction: float = DISTRIBUTED_FRACTION) -> bool:
    """Report ``r`` as distributed when :func:`distributed` says so: ``details["distributed"]`` holds the counts
    and the heads that passed (``"heads"``), ``labelled`` becomes ``[]`` (the per-head arrays keep every number).
    Returns whether it did."""
    d = distributed(r, fraction)
    if d is None:
        return False
    d["heads"] = [[int(a), int(b)] for a, b in r.labelled]
    r.details["distributed"] = d
    r.labelled = []
    return True
