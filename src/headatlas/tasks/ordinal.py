"""Ordinal sequences for the successor-head detector (Gould et al. 2024, arXiv 2312.09230): short
authored lists whose items have a natural successor (digits, numbers, number words, ordinals,
days, months, letters).

Every item is used as one token of the model's tokenizer. For each family the written form is the
one (``" Monday"`` after a space, or ``"Monday"`` bare) under which most items are single tokens;
items that are not single tokens in that form are dropped (and counted), and a successor pair
``(item, next item)`` is kept only when both are single tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError

FAMILIES: dict[str, tuple[str, ...]] = {
    "digits": tuple(str(i) for i in range(10)),
    "numbers": tuple(str(i) for i in range(10, 31)),
    "number_words": ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                     "eleven", "twelve"),
    "ordinals": ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth"),
    "days": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "months": ("January", "February", "March", "April", "May", "June", "July", "August", "September",
               "October", "November", "December"),
    "letters": tuple(chr(c) for c in range(ord("A"), ord("Z") + 1)),
}
MIN_FAMILY = 3   # a family needs at least this many single-token items to be used


@dataclass(frozen=True)
class Family:
    """One ordinal family as single tokens.

    - ``words``: the items kept (in order); ``ids``: their token ids; ``prefix``: ``" "`` or ``""``
      (the written form); ``pairs``: ``(i, j)`` indices into ``words`` with ``words[j]`` the successor
      of ``words[i]`` in the full list; ``dropped``: items that were not single tokens."""

    name: str
    words: tuple[str, ...]
    ids: tuple[int, ...]
    prefix: str
    pairs: tuple[tuple[int, int], ...]
    dropped: tuple[str, ...] = field(default=())


def _single(tokenizer: Any, text: str) -> int | None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return int(ids[0]) if len(ids) == 1 else None


def family(tokenizer: Any, name: str, items: tuple[str, ...]) -> Family | None:
    """The family ``items`` as single tokens of ``tokenizer`` (None when fewer than ``MIN_FAMILY``
    items or no successor pair survive)."""
    best: tuple[int, str, list[int | None]] | None = None
    for prefix in (" ", ""):
        ids = [_single(tokenizer, prefix + w) for w in items]
        ok = sum(i is not None for i in ids)
        if best is None or ok > best[0]:
            best = (ok, prefix, ids)
    assert best is not None
    _, prefix, ids = best
    keep = [k for k, i in enumerate(ids) if i is not None]
    # two items sharing one token (a tokenizer folding them) would make succession ambiguous: drop repeats
    seen: set[int] = set()
    uniq = []
    for k in keep:
        if ids[k] not in seen:
            seen.add(ids[k])          # type: ignore[arg-type]
            uniq.append(k)
    pos = {k: n for n, k in enumerate(uniq)}
    pairs = tuple((pos[k], pos[k + 1]) for k in uniq if k + 1 in pos)
    if len(uniq) < MIN_FAMILY or not pairs:
        return None
    return Family(name=name, words=tuple(items[k] for k in uniq), ids=tuple(int(ids[k]) for k in uniq),  # type: ignore[arg-type]
                  prefix=prefix, pairs=pairs, dropped=tuple(items[k] for k in range(len(items)) if k not in pos))


def ordinal_families(tokenizer: Any, names: tuple[str, ...] | None = None) -> list[Family]:
    """Every usable family (see :func:`family`); InputError when fewer than two survive."""
    out = [f for n, items in FAMILIES.items() if names is None or n in names
           for f in [family(tokenizer, n, items)] if f is not None]
    if len(out) < 2:
        raise InputError(f"only {len(out)} ordinal families (digits, days, months, letters, ...) have >= {MIN_FAMILY} "
                         "single-token items for this tokenizer; the successor detector needs at least 2")
    return out


def drop_report(families: list[Family]) -> dict[str, Any]:
    """What was kept and dropped per family (for the result's details)."""
    return {f.name: {"form": repr(f.prefix + "X"), "kept": len(f.words), "pairs": len(f.pairs),
                     "dropped": list(f.dropped)} for f in families}


def sequence_prompts(tokenizer: Any, families: list[Family], n: int, *, length: int, seed: int
                     ) -> tuple[list[list[int]], list[int], list[str]]:
    """``n`` prompts of ``length`` consecutive items of one family (``" Monday Tuesday Wednesday"``),
    each followed by a known next item: ``(token rows [length], next-item ids, family names)``.

    Only families written with a leading space are used (so the items concatenate as one sentence
    of single tokens); windows are drawn with ``random.Random(seed)``. InputError when no family has
    a run of ``length + 1`` consecutive kept items."""
    import random

    windows = []
    for f in families:
        if f.prefix != " ":
            continue
        nxt = dict(f.pairs)
        for start in range(len(f.words)):
            run = [start]
            while len(run) < length + 1 and run[-1] in nxt:
                run.append(nxt[run[-1]])
            if len(run) == length + 1:
                windows.append((f, run))
    if not windows:
        raise InputError(f"no ordinal family has {length + 1} consecutive single-token items after a space")
    rng = random.Random(seed)
    picks = [windows[rng.randrange(len(windows))] for _ in range(n)]
    rows, targets, names = [], [], []
    for f, run in picks:
        rows.append([f.ids[k] for k in run[:-1]])
        targets.append(f.ids[run[-1]])
        names.append(f.name)
    return rows, targets, names
