"""Authored fact triples (subject, relation, attribute) for the factual-recall detectors (subject,
relation and mixed heads; Chughtai, Cooney, Nanda 2024, arXiv 2402.07321).

Each relation has one template ``prefix {subject} suffix`` whose next token is the attribute, e.g.
``"The capital city of" + " France" + " is"`` -> ``" Paris"``. A prompt's tokens are BOS (when the
tokenizer has one), then the encodings of the prefix, of the subject (after a space unless it opens
the prompt) and of the suffix, concatenated, so that the subject's positions are known exactly; every
other non-BOS position is a *relation* position. The attribute is read by its first token (``" Paris"``
is one token in most tokenizers; a multi-token attribute such as ``" New York"`` is scored by
``" New"``; :func:`fact_batch` reports how many are). Facts whose attribute's first token is shared
with another attribute of the same relation keep only their first occurrence as a control candidate.
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

# relation -> (prefix, suffix, ((subject, attribute), ...)); a prefix of "" puts the subject first; data/facts.json
RELATIONS: dict[str, tuple[str, str, tuple[tuple[str, str], ...]]] = {
    r: (t["prefix"], t["suffix"], rows(t["pairs"])) for r, t in data_tables("facts.json").items()}


@dataclass
class FactBatch:
    """Tokenised fact prompts (right-padded).

    - ``ids [B, S]``; ``last [B]`` the query position (the prompt's last token); ``lengths [B]``
    - ``subject_mask``, ``relation_mask`` ``[B, S]`` bool: the subject's tokens; every other non-BOS token
      up to ``last`` (padding and BOS are in neither)
    - ``attribute [B]`` the attribute's first token; ``relation``: each prompt's relation name;
      ``facts``: ``(subject, attribute)`` per prompt; ``multi_token``: how many attributes have more than one token
    - ``candidates``: relation -> the distinct attribute first-tokens of that relation (the pool controls come from)
    """

    ids: torch.Tensor
    last: torch.Tensor
    lengths: torch.Tensor
    subject_mask: torch.Tensor
    relation_mask: torch.Tensor
    attribute: torch.Tensor
    relation: list[str]
    facts: list[tuple[str, str]]
    multi_token: int
    candidates: dict[str, list[int]]

    def subset(self, rows: list[int]) -> "FactBatch":
        r = torch.tensor(rows, dtype=torch.long)
        n = int(self.lengths[r].max()) if rows else 1
        return FactBatch(self.ids[r, :n], self.last[r], self.lengths[r], self.subject_mask[r, :n],
                         self.relation_mask[r, :n], self.attribute[r], [self.relation[i] for i in rows],
                         [self.facts[i] for i in rows], self.multi_token, self.candidates)


def fact_batch(tokenizer: Any, relations: dict[str, tuple[str, str, tuple[tuple[str, str], ...]]] | None = None
               ) -> FactBatch:
    """Every authored fact as a prompt (see the module docstring). InputError when the tokenizer cannot
    encode the words (an attribute or subject encodes to nothing)."""
    rel = RELATIONS if relations is None else relations
    bos = bos_id(tokenizer)
    rows, subj, attr, names, facts, multi = [], [], [], [], [], 0
    candidates: dict[str, list[int]] = {}
    for name, (prefix, suffix, pairs) in rel.items():
        pool: list[int] = []
        for s, a in pairs:
            p = encode(tokenizer, prefix)
            sub = encode(tokenizer, (" " if prefix else "") + s)
            suf = encode(tokenizer, suffix)
            a_ids = encode(tokenizer, " " + a)
            if not sub or not suf or not a_ids:
                raise InputError(f"the tokenizer cannot encode the fact {s!r} -> {a!r}")
            multi += len(a_ids) > 1
            head = [bos] if bos is not None else []
            rows.append(head + p + sub + suf)
            subj.append((len(head) + len(p), len(head) + len(p) + len(sub)))
            attr.append(a_ids[0])
            names.append(name)
            facts.append((s, a))
            if a_ids[0] not in pool:
                pool.append(a_ids[0])
        candidates[name] = pool
    n = max(len(r) for r in rows)
    pad = pad_id(tokenizer)
    ids = torch.full((len(rows), n), pad, dtype=torch.long)
    sm = torch.zeros(len(rows), n, dtype=torch.bool)
    rm = torch.zeros(len(rows), n, dtype=torch.bool)
    start = 1 if bos is not None else 0
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        sm[i, subj[i][0]:subj[i][1]] = True
        rm[i, start:len(r)] = True
        rm[i] &= ~sm[i]
    lengths = torch.tensor([len(r) for r in rows])
    return FactBatch(ids=ids, last=lengths - 1, lengths=lengths, subject_mask=sm, relation_mask=rm,
                     attribute=torch.tensor(attr), relation=names, facts=facts, multi_token=multi,
                     candidates=candidates)


def controls(batch: FactBatch, k: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Matched control attributes per prompt, ``[B, k]`` each (seeded):

    - ``same``: first tokens of *other* attributes of the same relation (a control subject's answer:
      what the subject must single out), drawn without replacement where the pool allows;
    - ``other``: first tokens of attributes of *other* relations (a wrong type of answer: what the
      relation must single out), never equal to the prompt's attribute."""
    rng = random.Random(seed)
    same, other = [], []
    for a, r in zip(batch.attribute.tolist(), batch.relation):
        pool = [t for t in batch.candidates[r] if t != a]
        if not pool:
            raise InputError(f"relation {r!r} has a single distinct attribute token: no matched control")
        same.append(rng.sample(pool, k) if len(pool) >= k else [rng.choice(pool) for _ in range(k)])
        rest = [t for rr, ts in batch.candidates.items() if rr != r for t in ts if t != a and t not in batch.candidates[r]]
        if not rest:
            raise InputError("the facts need at least two relations with distinct attribute tokens")
        other.append(rng.sample(rest, k) if len(rest) >= k else [rng.choice(rest) for _ in range(k)])
    return torch.tensor(same), torch.tensor(other)


def split(batch: FactBatch, *, seed: int, eval_fraction: float = 1 / 3) -> tuple[list[int], list[int]]:
    """Rows for detection and for the held-out causal check: within each relation, a seeded shuffle puts
    ``eval_fraction`` of its prompts aside."""
    rng = random.Random(seed)
    det, ev = [], []
    for r in dict.fromkeys(batch.relation):
        rows = [i for i, x in enumerate(batch.relation) if x == r]
        rng.shuffle(rows)
        k = int(round(len(rows) * eval_fraction))
        ev += sorted(rows[:k])
        det += sorted(rows[k:])
    return sorted(det), sorted(ev)
