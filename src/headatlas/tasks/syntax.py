"""Templated English sentences whose dependency arcs are known by construction
(``data/syntax.json``), filled from a small lexicon with a seeded RNG.

A row holds several sentences; every arc is reported with absolute word indices into the row
and the index of its sentence, so a score can restrict candidates to the arc's own sentence.
"""

from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass
from importlib import resources
from typing import Any

from ..errors import InputError
from .text import WordSeq, encode_words


@dataclass(frozen=True)
class Arc:
    """A dependency arc in a row: ``dep`` depends on ``head`` with ``relation``; ``sentence_start``
    is the word index where the arc's sentence begins."""

    dep: int
    head: int
    relation: str
    sentence_start: int

    @property
    def later(self) -> int:
        return max(self.dep, self.head)

    @property
    def earlier(self) -> int:
        return min(self.dep, self.head)

    @property
    def offset(self) -> int:
        """Word distance from the later word back to the earlier one (>= 1)."""
        return self.later - self.earlier


@functools.lru_cache(maxsize=1)
def syntax_data() -> dict[str, Any]:
    text = resources.files("headatlas").joinpath("data", "syntax.json").read_text(encoding="utf-8")
    data = json.loads(text)
    for t in data["templates"]:
        n = len(t["words"])
        for dep, head, rel in t["arcs"]:
            if not (0 <= dep < n and 0 <= head < n and dep != head):
                raise ValueError(f"bad arc {[dep, head, rel]} in template {t['words']}")
    return data


def fill(template: dict[str, Any], lexicon: dict[str, list[str]], rng: random.Random) -> list[str]:
    """The template's words with each ``{SLOT}`` replaced by a lexicon word (no word repeats in a sentence)."""
    used: set[str] = set()
    words = []
    for w in template["words"]:
        if w.startswith("{") and w.endswith("}"):
            choices = [x for x in lexicon[w[1:-1]] if x not in used]
            w = rng.choice(choices)
            used.add(w)
        words.append(w)
    return words


def word_class(template_word: str, classes: dict[str, Any]) -> str:
    """The class of a template word: its slot's class (``{NOUN}`` -> ``NOUN``), else the literal word's
    (lower-cased) class, else ``"OTHER"``."""
    if template_word.startswith("{") and template_word.endswith("}"):
        return str(classes["slots"].get(template_word[1:-1], "OTHER"))
    return str(classes["words"].get(template_word.lower(), "OTHER"))


@dataclass(frozen=True)
class SyntaxBatch:
    """Rows of filled template sentences: ``seqs`` (encoded), ``arcs`` (absolute word indices per row),
    ``classes`` (the word class of every word of each row) and ``templates`` (template index of each
    sentence of each row)."""

    seqs: list[WordSeq]
    arcs: list[list[Arc]]
    classes: list[tuple[str, ...]]
    templates: list[tuple[int, ...]]


def syntax_batch(tokenizer: Any, n_rows: int, per_row: int, *, seed: int) -> SyntaxBatch:
    """``n_rows`` rows of ``per_row`` filled template sentences. Templates are dealt from seeded shuffled
    decks (every template is used once before any is used again), so the designed balance between
    sentence types (e.g. subject first vs. another noun first) holds in every batch, not only on average."""
    data = syntax_data()
    if n_rows < 1 or per_row < 1:
        raise InputError("syntax_rows needs at least one row of one sentence")
    rng = random.Random(seed)
    templates = data["templates"]
    deck: list[int] = []
    seqs, arcs, classes, used = [], [], [], []
    for _ in range(n_rows):
        words: list[str] = []
        row_arcs: list[Arc] = []
        row_cls: list[str] = []
        row_t: list[int] = []
        for _ in range(per_row):
            if not deck:
                deck = list(range(len(templates)))
                rng.shuffle(deck)
            ti = deck.pop()
            t = templates[ti]
            start = len(words)
            sent = fill(t, data["lexicon"], rng)
            words.extend(sent)
            row_cls.extend(word_class(w, data["classes"]) for w in t["words"])
            row_arcs.extend(Arc(start + d, start + h, rel, start) for d, h, rel in t["arcs"])
            row_t.append(ti)
        seqs.append(encode_words(tokenizer, words))
        arcs.append(row_arcs)
        classes.append(tuple(row_cls))
        used.append(tuple(row_t))
    return SyntaxBatch(seqs, arcs, classes, used)


def syntax_rows(tokenizer: Any, n_rows: int, per_row: int, *, seed: int) -> tuple[list[WordSeq], list[list[Arc]]]:
    """``n_rows`` rows of ``per_row`` filled template sentences and the arcs of each row
    (:func:`syntax_batch` without the word classes)."""
    b = syntax_batch(tokenizer, n_rows, per_row, seed=seed)
    return b.seqs, b.arcs
