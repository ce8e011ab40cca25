"""In-context-learning data: word-mapping tasks for function-vector heads (Todd et al. 2024, arXiv
2310.15213) and foo/bar classification for in-context heads (Yu & Ananiadou 2024, arXiv 2402.02872).

Prompts use Todd et al.'s template, built token by token so that every prompt of a batch has the same
length and known positions: BOS (when the tokenizer has one), then per demonstration
``"Q:" + " x" + "\\nA:" + " y" + "\\n\\n"`` and finally ``"Q:" + " xq" + "\\nA:"``; the model's next token
should be ``" yq"``. Each piece is encoded on its own and the pieces are concatenated (so a piece never
merges with its neighbour). An item is kept only when ``" x"`` and ``" y"`` are single tokens for the
tokenizer (answers are therefore scored exactly by their one token); :func:`icl_tasks` reports how many
items each task dropped.

- clean prompts: ``k`` demonstrations with their true labels, then the query;
- shuffled prompts: the same demonstrations with their labels permuted (no demonstration keeps its own
  label when the permutation allows it), the same query and answer (Todd's corrupted prompts);
- zero-shot prompts: the query alone.

Items are split once per seed into a detection part and a held-out part (for causal checks).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..errors import InputError
from .tables import data_tables, rows
from .vocab import bos_id, one_token

# task -> ((x, y), ...); answers are single words, scored by their (single) token " y"; data/icl.json
_TABLES = data_tables("icl.json")
_ANTONYM, _COUNTRY_CAPITAL, _PRESENT_PAST, _SINGULAR_PLURAL = (
    rows(_TABLES[k]) for k in ("antonym", "country_capital", "present_past", "singular_plural"))
_WORDS: tuple[str, ...] = tuple(_TABLES["words"])


def _capitalize() -> tuple[tuple[str, str], ...]:
    return tuple((w, w.capitalize()) for w in dict.fromkeys(_WORDS))


def _first_letter() -> tuple[tuple[str, str], ...]:
    return tuple((w, w[0]) for w in dict.fromkeys(_WORDS))


TASKS: dict[str, tuple[tuple[str, str], ...]] = {
    "antonym": _ANTONYM,
    "capitalize": _capitalize(),
    "country_capital": _COUNTRY_CAPITAL,
    "present_past": _PRESENT_PAST,
    "singular_plural": _SINGULAR_PLURAL,
    "first_letter": _first_letter(),
}
MIN_ITEMS = 12


@dataclass
class ICLTask:
    """One task's items as token ids: ``x [n]``, ``y [n]`` (the tokens of ``" x"`` and ``" y"``);
    ``detect``/``heldout``: indices of the two item splits; ``dropped``: items that were not single tokens."""

    name: str
    x: torch.Tensor
    y: torch.Tensor
    words: list[tuple[str, str]]
    detect: list[int]
    heldout: list[int]
    dropped: int


@dataclass
class Template:
    """Token pieces of the template: ``bos`` (or None), ``q`` ("Q:"), ``a`` ("\\nA:"), ``sep`` ("\\n\\n")."""

    bos: int | None
    q: list[int]
    a: list[int]
    sep: list[int]

    def demo_len(self) -> int:
        return len(self.q) + 1 + len(self.a) + 1 + len(self.sep)

    def length(self, k: int) -> int:
        return (self.bos is not None) + k * self.demo_len() + len(self.q) + 1 + len(self.a)


def template(tokenizer: Any) -> Template:
    q = list(tokenizer.encode("Q:", add_special_tokens=False))
    a = list(tokenizer.encode("\nA:", add_special_tokens=False))
    sep = list(tokenizer.encode("\n\n", add_special_tokens=False))
    if not q or not a or not sep:
        raise InputError("the tokenizer encodes the ICL template ('Q:', '\\nA:', '\\n\\n') to nothing")
    return Template(bos=bos_id(tokenizer), q=q, a=a, sep=sep)


def icl_tasks(tokenizer: Any, *, seed: int, names: Sequence[str] | None = None,
              heldout_fraction: float = 1 / 3) -> list[ICLTask]:
    """The tasks whose items are single tokens for ``tokenizer`` (at least :data:`MIN_ITEMS` kept);
    InputError when none qualifies. Items split (seeded) into detection and held-out parts."""
    out = []
    report = []
    for name in names or TASKS:
        if name not in TASKS:
            raise InputError(f"unknown ICL task {name!r}; tasks: {', '.join(TASKS)}")
        kept = []
        for x, y in TASKS[name]:
            a, b = one_token(tokenizer, " " + x), one_token(tokenizer, " " + y)
            if a is not None and b is not None:
                kept.append((x, y, a, b))
        dropped = len(TASKS[name]) - len(kept)
        report.append(f"{name} {len(kept)}/{len(TASKS[name])}")
        if len(kept) < MIN_ITEMS:
            continue
        order = list(range(len(kept)))
        random.Random(f"{seed}:icl-split:{name}").shuffle(order)
        n_held = max(3, int(round(len(kept) * heldout_fraction)))
        out.append(ICLTask(name=name, x=torch.tensor([k[2] for k in kept]), y=torch.tensor([k[3] for k in kept]),
                           words=[(k[0], k[1]) for k in kept], detect=sorted(order[n_held:]),
                           heldout=sorted(order[:n_held]), dropped=dropped))
    if not out:
        raise InputError(f"no ICL task has {MIN_ITEMS} items whose words are single tokens for this tokenizer "
                         f"({', '.join(report)} kept)")
    return out


@dataclass
class ICLBatch:
    """Prompts of one task: ``clean``/``shuffled`` ``[B, S]`` (k-shot), ``zero`` ``[B, S0]`` (zero-shot),
    ``answer [B]`` (the token of ``" yq"``), ``query [B]`` (the item index of each query),
    ``label_pos [k]`` the positions of the demonstrations' labels."""

    task: str
    clean: torch.Tensor
    shuffled: torch.Tensor
    zero: torch.Tensor
    answer: torch.Tensor
    query: torch.Tensor
    label_pos: list[int] = field(default_factory=list)


def _prompt(t: Template, xs: Sequence[int], ys: Sequence[int], xq: int) -> list[int]:
    ids = [] if t.bos is None else [t.bos]
    for x, y in zip(xs, ys):
        ids += t.q + [x] + t.a + [y] + t.sep
    return ids + t.q + [xq] + t.a


def _derange(n: int, rng: random.Random) -> list[int]:
    """A random permutation of ``range(n)`` with no fixed point (n >= 2)."""
    while True:
        p = list(range(n))
        rng.shuffle(p)
        if n < 2 or all(i != j for i, j in enumerate(p)):
            return p


def icl_batch(tokenizer: Any, task: ICLTask, n: int, k: int, *, seed: int, split: str = "detect") -> ICLBatch:
    """``n`` prompts of ``k`` demonstrations each. Queries come from ``split`` ("detect" or "heldout")
    and cycle through it; demonstrations are drawn from the other items of the detection split (the
    held-out items never appear as demonstrations)."""
    t = template(tokenizer)
    pool_q = task.detect if split == "detect" else task.heldout
    if len(task.detect) < k + 1:
        raise InputError(f"ICL task {task.name!r} has {len(task.detect)} detection items; {k}-shot prompts need {k + 1}")
    rng = random.Random(f"{seed}:icl:{task.name}:{split}")
    queries = list(pool_q)
    rng.shuffle(queries)
    clean, shuffled, zero, answer, qs = [], [], [], [], []
    for i in range(n):
        q = queries[i % len(queries)]
        demos = rng.sample([j for j in task.detect if j != q], k)
        xs = [int(task.x[j]) for j in demos]
        ys = [int(task.y[j]) for j in demos]
        perm = _derange(k, rng)
        xq = int(task.x[q])
        clean.append(_prompt(t, xs, ys, xq))
        shuffled.append(_prompt(t, xs, [ys[p] for p in perm], xq))
        zero.append(_prompt(t, [], [], xq))
        answer.append(int(task.y[q]))
        qs.append(q)
    base = (t.bos is not None)
    label_pos = [base + d * t.demo_len() + len(t.q) + 1 + len(t.a) for d in range(k)]
    return ICLBatch(task=task.name, clean=torch.tensor(clean), shuffled=torch.tensor(shuffled),
                    zero=torch.tensor(zero), answer=torch.tensor(answer), query=torch.tensor(qs), label_pos=label_pos)


# ---- foo/bar classification (in-context heads) ----

CLASSES: dict[str, tuple[str, ...]] = {c: tuple(ws) for c, ws in _TABLES["classes"].items()}
PAIRS: tuple[tuple[str, str], ...] = (("animal", "vehicle"), ("positive", "negative"), ("fruit", "color"))
LABELS = ("foo", "bar")


@dataclass
class ClassBatch:
    """foo/bar classification prompts ``ids [B, S]`` in the ICL template (``"Q: word\\nA: foo\\n\\n"``);
    ``correct``/``other`` ``[B]`` the label tokens; ``flip [B]`` whether class A maps to the second label
    (the mapping is drawn per prompt, so that a head preferring one label word regardless of the mapping
    has a contrast of random sign); ``pair [B]`` the class pair index."""

    ids: torch.Tensor
    correct: torch.Tensor
    other: torch.Tensor
    flip: torch.Tensor
    pair: torch.Tensor
    dropped: dict[str, int]


def class_words(tokenizer: Any) -> tuple[dict[str, list[int]], dict[str, int]]:
    """Each class's single-token words (as ``" word"`` token ids) and how many were dropped; a word in two
    classes (e.g. "orange") is dropped from both."""
    count: dict[str, int] = {}
    for ws in CLASSES.values():
        for w in ws:
            count[w] = count.get(w, 0) + 1
    out, dropped = {}, {}
    for c, ws in CLASSES.items():
        ids = [one_token(tokenizer, " " + w) if count[w] == 1 else None for w in ws]
        out[c] = [i for i in ids if i is not None]
        dropped[c] = len(ws) - len(out[c])
    return out, dropped


def class_batch(tokenizer: Any, n: int, k: int, *, seed: int, pairs: Sequence[int] | None = None) -> ClassBatch:
    """``n`` prompts (cycling through :data:`PAIRS`, or the pairs of index ``pairs``) of ``k`` demonstrations
    (``k // 2`` per class, random order) and a query word of either class not among the demonstrations."""
    if k < 2 or k % 2:
        raise InputError(f"classification prompts need an even number of demonstrations >= 2, got {k}")
    t = template(tokenizer)
    labels = [one_token(tokenizer, " " + w) for w in LABELS]
    if None in labels or labels[0] == labels[1]:
        raise InputError(f"the label words {LABELS} are not distinct single tokens for this tokenizer")
    words, dropped = class_words(tokenizer)
    chosen = [PAIRS[i] for i in pairs] if pairs is not None else list(PAIRS)
    pairs = [p for p in chosen if min(len(words[p[0]]), len(words[p[1]])) >= k // 2 + 2]
    if not pairs:
        raise InputError("no class pair has enough single-token words for foo/bar classification prompts "
                         f"(dropped per class: {dropped})")
    rng = random.Random(f"{seed}:icl-classify")
    ids, correct, other, flip, pair = [], [], [], [], []
    for i in range(n):
        pi = i % len(pairs)
        a, b = pairs[pi]
        f = rng.random() < 0.5
        lab = {a: labels[int(f)], b: labels[1 - int(f)]}
        qc = a if rng.random() < 0.5 else b
        q = rng.choice(words[qc])
        demos = [(w, a) for w in rng.sample([w for w in words[a] if w != q], k // 2)]
        demos += [(w, b) for w in rng.sample([w for w in words[b] if w != q], k // 2)]
        rng.shuffle(demos)
        ids.append(_prompt(t, [w for w, _ in demos], [lab[c] for _, c in demos], q))
        correct.append(lab[qc])
        other.append(labels[0] if lab[qc] == labels[1] else labels[1])
        flip.append(f)
        pair.append(PAIRS.index((a, b)))
    return ClassBatch(ids=torch.tensor(ids), correct=torch.tensor(correct), other=torch.tensor(other),
                      flip=torch.tensor(flip), pair=torch.tensor(pair), dropped=dropped)
