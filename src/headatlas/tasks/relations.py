"""Authored (head, tail) word pairs in semantic relations, for the semantic-induction detector (Ren et
al. 2024, arXiv 2402.13055): part-of, capital-of, hypernym (is-a), made-of, antonym, used-for,
lives-in, colour-of.

A prompt mentions the head word, then a relation-neutral carrier whose next word may be anything:
``"We talked about the wheel, and then about the"`` (query: the last token); the semantic-induction
question is whether a head, attending from the query back to the head word, raises the *tail* word
(``" car"``) more than the tails of other pairs of the same relation. A head word of several tokens
is placed whole and read at its *last* token (where a multi-token word's identity is assembled); a
tail is scored by its first token (after a space). Pairs whose tail's first token is shared with
another tail of the relation count once as a control; a relation needs >= 3 distinct tail tokens.
Prompts are right-padded to one length (``query`` is each prompt's own last position).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InputError
from .tables import data_tables, rows
from .vocab import bos_id, encode

PAIRS: dict[str, tuple[tuple[str, str], ...]] = {r: rows(t) for r, t in data_tables("relations.json").items()}
TEMPLATES = ("We talked about the {h}, and then about the",
             "She wrote the word {h} on the board, and next to it the word")


@dataclass
class RelationBatch:
    """``ids [B, S]`` right-padded, ``head_pos [B]`` the head word's last token, ``query [B]`` each prompt's
    last position; ``tail [B]`` the tail's first token; ``controls [B, K]`` first tokens of other tails of the
    same relation; ``relation``/``pairs`` per prompt; ``multi_token`` how many head or tail words have
    several tokens."""

    ids: torch.Tensor
    head_pos: torch.Tensor
    query: torch.Tensor
    tail: torch.Tensor
    controls: torch.Tensor
    relation: list[str]
    pairs: list[tuple[str, str]]
    multi_token: int


def usable_pairs(tokenizer: Any) -> dict[str, list[tuple[str, str, tuple[int, ...], int]]]:
    """relation -> ``(head, tail, head token ids, tail first token)`` for relations with >= 3 distinct tail tokens."""
    out = {}
    for rel, pairs in PAIRS.items():
        keep = []
        for h, t in pairs:
            hi, ti = encode(tokenizer, " " + h), encode(tokenizer, " " + t)
            if hi and ti:
                keep.append((h, t, tuple(int(x) for x in hi), int(ti[0])))
        if len({k[3] for k in keep}) >= 3:
            out[rel] = keep
    return out


def relation_batch(tokenizer: Any, *, template: int, k: int, seed: int,
                   rows: list[tuple[str, int]] | None = None) -> RelationBatch:
    """Prompts for ``(relation, pair index)`` ``rows`` (default: every usable pair) in template ``template``,
    with ``k`` control tails per prompt (seeded). InputError when fewer than 2 relations are usable."""
    from .text import pad_id

    usable = usable_pairs(tokenizer)
    if len(usable) < 2:
        raise InputError(f"only {len(usable)} relations have >= 3 distinct tail tokens for this tokenizer")
    rows = rows if rows is not None else [(r, i) for r, ps in usable.items() for i in range(len(ps))]
    prefix, suffix = TEMPLATES[template].split("{h}")
    pre = encode(tokenizer, prefix.rstrip(" "))
    suf = encode(tokenizer, suffix)
    bos = bos_id(tokenizer)
    head = [bos] if bos is not None else []
    rng = random.Random(seed)
    seqs, hp, tails, ctrls, rels, prs, multi = [], [], [], [], [], [], 0
    for rel, i in rows:
        h, t, hi, ti = usable[rel][i]
        multi += len(hi) > 1 or len(encode(tokenizer, " " + t)) > 1
        seqs.append(head + pre + list(hi) + suf)
        hp.append(len(head) + len(pre) + len(hi) - 1)
        pool = sorted({x[3] for x in usable[rel]} - {ti})
        ctrls.append(rng.sample(pool, k) if len(pool) >= k else [rng.choice(pool) for _ in range(k)])
        tails.append(ti)
        rels.append(rel)
        prs.append((h, t))
    n = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), n), pad_id(tokenizer), dtype=torch.long)
    for j, x in enumerate(seqs):
        ids[j, :len(x)] = torch.tensor(x)
    return RelationBatch(ids=ids, head_pos=torch.tensor(hp), query=torch.tensor([len(x) - 1 for x in seqs]),
                         tail=torch.tensor(tails), controls=torch.tensor(ctrls), relation=rels, pairs=prs,
                         multi_token=multi)


def split_pairs(tokenizer: Any, *, seed: int, eval_fraction: float = 1 / 3) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """``(detection rows, held-out rows)``: within each relation a seeded shuffle sets ``eval_fraction`` aside."""
    usable = usable_pairs(tokenizer)
    rng = random.Random(seed)
    det, ev = [], []
    for rel, ps in usable.items():
        idx = list(range(len(ps)))
        rng.shuffle(idx)
        n = int(round(len(idx) * eval_fraction))
        ev += [(rel, i) for i in sorted(idx[:n])]
        det += [(rel, i) for i in sorted(idx[n:])]
    return det, ev
