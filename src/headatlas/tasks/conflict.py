"""Knowledge-conflict prompts for the memory and context heads (Jin et al. 2024, arXiv 2402.18154; Yu,
Merullo & Pavlick 2023, arXiv 2310.15910).

Authored facts ``(subject, attribute)`` per relation. Each relation has a *statement* ``"The capital city
of {s} is"`` and a *question* ``"What is the capital city of {s}?"``. Two prompt forms:

- closed book: ``"Q: {question}\\nA: {statement}"`` -> the model's own answer (memory);
- conflict: ``"Context: {statement} {x}.\\nQ: {question}\\nA: {statement}"`` where ``x`` is the
  attribute of *another* fact of the same relation (the counterfactual, "context" answer).

Only facts the model gets right closed book (its top-1 next token is the attribute's first token) are
kept (:func:`known_facts`, measured per model). Answers are read by their first token (a multi-token
attribute such as ``" New Delhi"`` is scored by ``" New"``); two facts whose attributes share a first
token are never paired.

Paired design (:func:`conflict_batch`): the kept facts of each relation are matched in pairs ``(i, j)``
with different first tokens (a seeded random matching; an odd fact out is dropped); fact ``i`` gets
``j``'s attribute as its context and ``j`` gets ``i``'s. Every answer token thus plays the memory role in
one prompt and the context role in the other, so a head that merely favours some answer tokens (a
frequency prior) contributes with opposite signs within a pair to ``logit(memory) - logit(context)``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InputError
from .tables import data_tables, rows
from .text import pad_id
from .vocab import bos_id, encode

# relation -> (statement "... {s} is", question "... {s}?", ((subject, attribute), ...)); data/conflict.json
RELATIONS: dict[str, tuple[str, str, tuple[tuple[str, str], ...]]] = {
    r: (t["statement"], t["question"], rows(t["pairs"])) for r, t in data_tables("conflict.json").items()}


@dataclass(frozen=True)
class Fact:
    relation: str
    subject: str
    attribute: str
    token: int          # the attribute's first token (with a leading space)


@dataclass
class ConflictBatch:
    """Tokenised conflict prompts (right-padded).

    - ``ids [B, S]``; ``last [B]`` the answer position (the prompt's last token)
    - ``memory [B]``, ``context [B]``: first tokens of the memory (true) and context (counterfactual) answers
    - ``pair [B]``: the pair index of each prompt (prompts ``2k`` and ``2k + 1`` form pair ``k``)
    - ``facts``: the memory fact of each prompt; ``context_text``: the counterfactual attribute
    - ``closed_book``: the closed-book accuracy behind the kept facts, ``(kept, total)`` per relation
    """

    ids: torch.Tensor
    last: torch.Tensor
    memory: torch.Tensor
    context: torch.Tensor
    pair: torch.Tensor
    facts: list[Fact]
    context_text: list[str]
    closed_book: dict[str, tuple[int, int]]

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def _with_bos(tokenizer: Any, ids: list[int]) -> list[int]:
    bos = bos_id(tokenizer)
    return ([bos] if bos is not None else []) + ids


def closed_book_text(relation: str, subject: str) -> str:
    statement, question, _ = RELATIONS[relation]
    return f"Q: {question.format(s=subject)}\nA: {statement.format(s=subject)}"


def conflict_text(relation: str, subject: str, counterfactual: str) -> str:
    statement, question, _ = RELATIONS[relation]
    st = statement.format(s=subject)
    return f"Context: {st} {counterfactual}.\nQ: {question.format(s=subject)}\nA: {st}"


def all_facts(tokenizer: Any, relations: dict | None = None) -> list[Fact]:
    """Every authored fact with its attribute's first token. InputError when the tokenizer cannot encode them."""
    out = []
    for rel, (_st, _q, pairs) in (RELATIONS if relations is None else relations).items():
        for s, a in pairs:
            t = encode(tokenizer, " " + a)
            if not t:
                raise InputError(f"the tokenizer cannot encode the attribute {a!r}")
            out.append(Fact(rel, s, a, int(t[0])))
    return out


def pad_rows(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, S]`` right-padded ids and ``[B]`` last positions."""
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
    return ids, torch.tensor([len(r) - 1 for r in rows])


def closed_book_ids(tokenizer: Any, facts: list[Fact]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [_with_bos(tokenizer, encode(tokenizer, closed_book_text(f.relation, f.subject))) for f in facts]
    return pad_rows(rows, pad_id(tokenizer))


def match_pairs(facts: list[Fact], seed: int) -> list[tuple[Fact, Fact]]:
    """A seeded random matching of the facts of each relation into pairs with different first tokens
    (greedy over a shuffled order; facts left without a partner are dropped)."""
    rng = random.Random(seed)
    out = []
    for rel in RELATIONS:
        pool = [f for f in facts if f.relation == rel]
        rng.shuffle(pool)
        while len(pool) >= 2:
            a = pool.pop(0)
            j = next((k for k, b in enumerate(pool) if b.token != a.token), None)
            if j is None:
                break
            out.append((a, pool.pop(j)))
    return out


def conflict_batch(tokenizer: Any, facts: list[Fact], *, seed: int, closed_book: dict[str, tuple[int, int]] | None = None,
                   max_pairs: int | None = None) -> ConflictBatch:
    """The paired conflict prompts over ``facts`` (see the module docstring); ``max_pairs`` keeps the
    first pairs of the matching."""
    pairs = match_pairs(facts, seed)
    if max_pairs is not None:
        pairs = pairs[:max_pairs]
    if not pairs:
        raise InputError("no two known facts of one relation with different answers: cannot build conflict pairs")
    rows, mem, ctx, pid, fs, ctext = [], [], [], [], [], []
    for k, (a, b) in enumerate(pairs):
        for f, other in ((a, b), (b, a)):
            rows.append(_with_bos(tokenizer, encode(tokenizer, conflict_text(f.relation, f.subject, other.attribute))))
            mem.append(f.token)
            ctx.append(other.token)
            pid.append(k)
            fs.append(f)
            ctext.append(other.attribute)
    ids, last = pad_rows(rows, pad_id(tokenizer))
    return ConflictBatch(ids=ids, last=last, memory=torch.tensor(mem), context=torch.tensor(ctx),
                         pair=torch.tensor(pid), facts=fs, context_text=ctext, closed_book=dict(closed_book or {}))
