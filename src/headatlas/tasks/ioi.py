"""Indirect-object-identification (IOI) prompts (Wang et al. 2022, arXiv 2211.00593), seeded.

``"When Mary and John went to the store, John gave a drink to"`` -> `` Mary``. Names, places and
objects are kept only where they are one token with a leading space, so that every prompt of a
template has the same length and clean/corrupted twins align position by position.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import InputError
from .vocab import with_bos

NAMES = (
    "Mary John Tom James Dan Sarah Paul Mark Lisa Anna Kate David Michael Robert Emma Alice Peter Jack "
    "George Susan Laura Kevin Brian Steve Chris Andrew Rachel Linda Nancy Karen Eric Jason Ryan Adam Amy "
    "Ben Sam Tim Joe Bob Max Alex Jane Rose Ruth Helen Frank Henry Grace Lucy Emily Sophie Daniel Matt "
    "Scott Carl Fred Ann Jim Bill Roger Greg Victor Carol Martin Simon Oliver Harry Charlie Jessica"
).split()
PLACES = "store park school house office garden hospital station restaurant beach church library market".split()
OBJECTS = "drink book ball bag ring kiss gift letter phone key cake pen apple bone".split()

# {A} and {B} are the two names in the first clause; {S} repeats the subject; answer = the other name.
TEMPLATES = (
    "When {A} and {B} went to the {P}, {S} gave a {O} to",
    "When {A} and {B} got a {O} at the {P}, {S} decided to give it to",
    "After {A} and {B} went to the {P}, {S} gave a {O} to",
    "While {A} and {B} were working at the {P}, {S} gave a {O} to",
    "Then, {A} and {B} went to the {P}. {S} gave a {O} to",
    "Friends {A} and {B} found a {O} at the {P}. {S} gave it to",
    "The {P} was where {A} and {B} met. {S} handed a {O} to",
)


@dataclass
class IOIBatch:
    """Clean/corrupted IOI prompts of one template (equal token length).

    ``clean_ids``/``corrupted_ids``: ``[batch, seq]`` (BOS prepended when the tokenizer has one).
    ``io_ids``/``s_ids``: the indirect object (answer) and the subject (wrong answer) token ids.
    ``io_pos``/``s1_pos``/``s2_pos``: positions of IO, first S and second S in the clean prompt.
    ``end_pos``: the final position (where the answer is predicted). The corrupted twin (ABC)
    replaces the three names with three other names, so the answer is no longer determined.
    """

    clean_ids: torch.Tensor
    corrupted_ids: torch.Tensor
    io_ids: torch.Tensor
    s_ids: torch.Tensor
    io_pos: torch.Tensor
    s1_pos: torch.Tensor
    s2_pos: torch.Tensor
    end_pos: int
    template: str
    clean_texts: list[str] = field(default_factory=list)
    corrupted_texts: list[str] = field(default_factory=list)


def _single_token_words(tokenizer: Any, words: tuple[str, ...]) -> list[str]:
    return [w for w in words if len(tokenizer.encode(" " + w, add_special_tokens=False)) == 1]


def single_token_names(tokenizer: Any) -> list[str]:
    return _single_token_words(tokenizer, NAMES)


def _fill(template: str, a: str, b: str, s: str, p: str, o: str) -> str:
    return template.format(A=a, B=b, S=s, P=p, O=o)


def ioi_batch(tokenizer: Any, n: int, *, seed: int = 0, template: int = 0) -> IOIBatch:
    """``n`` IOI prompts from one template, half ABBA and half BABA order, with ABC corrupted twins."""
    rng = random.Random(seed)
    names = single_token_names(tokenizer)
    places = _single_token_words(tokenizer, PLACES) or ["store"]
    objects = _single_token_words(tokenizer, OBJECTS) or ["drink"]
    if len(names) < 6:
        raise InputError(f"the tokenizer has only {len(names)} single-token first names; IOI needs at least 6")
    tmpl = TEMPLATES[template % len(TEMPLATES)]
    clean, corrupt, io, s = [], [], [], []
    for i in range(n):
        io_name, s_name, c1, c2, c3 = rng.sample(names, 5)
        p, o = rng.choice(places), rng.choice(objects)
        a, b = (io_name, s_name) if i % 2 == 0 else (s_name, io_name)
        clean.append(_fill(tmpl, a, b, s_name, p, o))
        corrupt.append(_fill(tmpl, c1, c2, c3, p, o))
        io.append(io_name)
        s.append(s_name)
    enc = lambda texts: [tokenizer.encode(t, add_special_tokens=False) for t in texts]  # noqa: E731
    rows_c, rows_x = enc(clean), enc(corrupt)
    lengths = {len(r) for r in rows_c + rows_x}
    if len(lengths) != 1:
        raise InputError(f"IOI template {tmpl!r} tokenizes to different lengths {sorted(lengths)} for this tokenizer")
    clean_ids = with_bos(tokenizer, torch.tensor(rows_c))
    corrupted_ids = with_bos(tokenizer, torch.tensor(rows_x))
    io_ids = torch.tensor([tokenizer.encode(" " + x, add_special_tokens=False)[0] for x in io])
    s_ids = torch.tensor([tokenizer.encode(" " + x, add_special_tokens=False)[0] for x in s])
    io_pos, s1_pos, s2_pos = [], [], []
    for row, io_id, s_id in zip(clean_ids.tolist(), io_ids.tolist(), s_ids.tolist()):
        s_positions = [j for j, t in enumerate(row) if t == s_id]
        io_positions = [j for j, t in enumerate(row) if t == io_id]
        if len(s_positions) < 2 or not io_positions:
            raise InputError(f"IOI template {tmpl!r}: names did not tokenize as expected")
        io_pos.append(io_positions[0])
        s1_pos.append(s_positions[0])
        s2_pos.append(s_positions[1])
    return IOIBatch(
        clean_ids=clean_ids, corrupted_ids=corrupted_ids, io_ids=io_ids, s_ids=s_ids,
        io_pos=torch.tensor(io_pos), s1_pos=torch.tensor(s1_pos), s2_pos=torch.tensor(s2_pos),
        end_pos=clean_ids.shape[1] - 1, template=tmpl, clean_texts=clean, corrupted_texts=corrupt,
    )
