"""True/false statement pairs for truthfulness probes and ITI (authored; no download).

Every pair is one fact written twice, ``"{prefix} {true}."`` (label 1) and ``"{prefix} {false}."`` (label 0);
the two form one group, so grouped cross-validation never puts a statement and its false twin on
different sides of a split. Domains: geography (capitals), arithmetic (seeded sums), units, everyday
facts. Within each authored domain every false completion is the true completion of another item of
the same kind (a derangement), so the completion words alone do not reveal the label: a probe must
relate the completion to its prefix.

:func:`statement_pairs` returns the pairs, shuffled by ``seed``; ``split`` keeps the first 3/4 (``"probe"``)
or the held-out last 1/4 (``"heldout"``, used by causal checks), or ``"all"``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..errors import InputError
from .labelled import ProbeData
from .tables import data_tables, rows

Split = Literal["all", "probe", "heldout"]

# (country, capital); (prefix, true completion, kind) of units and everyday facts: false completions are true ones
# of other items of the same kind. data/statements.json
_TABLES = data_tables("statements.json")
CAPITALS: tuple[tuple[str, ...], ...] = rows(_TABLES["capitals"])
UNITS: tuple[tuple[str, ...], ...] = rows(_TABLES["units"])
FACTS: tuple[tuple[str, ...], ...] = rows(_TABLES["facts"])


@dataclass(frozen=True)
class StatementPair:
    """One fact: ``prefix`` completed by ``true`` (label 1) or ``false`` (label 0)."""

    domain: str
    prefix: str
    true: str
    false: str

    def text(self, label: int) -> str:
        return f"{self.prefix} {self.true if label else self.false}."


def _deranged(items: list[tuple[str, str, str]], rng: random.Random) -> list[tuple[str, str, str]]:
    """``(prefix, true, false)``: within each kind the completions are rotated by a random non-zero shift
    (every completion is false exactly once); pairs whose false equals the true completion are dropped."""
    out = []
    kinds: dict[str, list[tuple[str, str]]] = {}
    for prefix, true, kind in items:
        kinds.setdefault(kind, []).append((prefix, true))
    for kind in sorted(kinds):
        group = kinds[kind]
        if len(group) < 2:
            continue
        shift = rng.randrange(1, len(group))
        for i, (prefix, true) in enumerate(group):
            false = group[(i + shift) % len(group)][1]
            if false != true:
                out.append((prefix, true, false))
    return out


def _arithmetic(n: int, rng: random.Random) -> list[tuple[str, str, str]]:
    """``n`` distinct sums ``a + b`` (1 <= a, b <= 30); the false result differs by 1-3 either way (balanced
    signs, so a larger or smaller number does not give the label away)."""
    seen, out = set(), []
    while len(out) < n:
        a, b = rng.randint(1, 30), rng.randint(1, 30)
        if (a, b) in seen:
            continue
        seen.add((a, b))
        d = rng.randint(1, 3) * (1 if len(out) % 2 == 0 else -1)
        false = a + b + d if a + b + d > 0 else a + b + abs(d)
        out.append((f"{a} + {b} =", str(a + b), str(false)))
    return out


def statement_pairs(*, seed: int = 0, n_arithmetic: int = 60, split: Split = "all") -> list[StatementPair]:
    """The statement pairs of all four domains, shuffled by ``seed`` (seeded derangements and sums)."""
    if split not in ("all", "probe", "heldout"):
        raise InputError(f"split must be all, probe or heldout, got {split!r}")
    rng = random.Random(f"statements:{seed}")
    pairs: list[StatementPair] = []
    countries = list(CAPITALS)
    caps = _deranged([(f"The capital of {c} is", cap, "cap") for c, cap in countries], rng)
    pairs += [StatementPair("geography", *t) for t in caps]
    pairs += [StatementPair("arithmetic", *t) for t in _arithmetic(n_arithmetic, rng)]
    pairs += [StatementPair("units", *t) for t in _deranged(list(UNITS), rng)]
    pairs += [StatementPair("everyday", *t) for t in _deranged(list(FACTS), rng)]
    rng.shuffle(pairs)
    cut = (3 * len(pairs)) // 4
    return pairs if split == "all" else pairs[:cut] if split == "probe" else pairs[cut:]


def pairs_to_records(pairs: list[StatementPair]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(texts, labels, groups)``: the true and the false statement of each pair, pair index as group."""
    texts, labels, groups = [], [], []
    for g, p in enumerate(pairs):
        for lab in (1, 0):
            texts.append(p.text(lab))
            labels.append(lab)
            groups.append(g)
    return texts, np.array(labels), np.array(groups)


def statement_probe_data(tokenizer: Any = None, *, seed: int = 0, n_arithmetic: int = 60, split: Split = "all",
                         max_pairs: int | None = None) -> ProbeData:
    """:class:`~headatlas.tasks.labelled.ProbeData` of the statements (``max_pairs``: keep the first ones)."""
    pairs = statement_pairs(seed=seed, n_arithmetic=n_arithmetic, split=split)
    if max_pairs is not None:
        pairs = pairs[:max_pairs]
    texts, labels, groups = pairs_to_records(pairs)
    return ProbeData(tuple(texts), labels, groups, source=f"headatlas statements (seed {seed}, {split})")
