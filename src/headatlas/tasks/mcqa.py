"""Synthetic multiple-choice questions with lettered options (after Lieberum et al. 2023, arXiv
2307.09458, with MMLU replaced by arithmetic so no data is downloaded; and after Wiegreffe et al. 2024,
arXiv 2407.15018, whose easiest task is prototypical colours).

Topics (``topic=``): ``"arithmetic"`` (two-digit sums, distractors within +-5 of the answer) and
``"colors"`` (``"Question: What color is a banana?"``, an authored list of objects whose colour is
prototypical, :data:`COLOR_ITEMS`; distractors are other basic colours that are not also typical of the
object). ``shots=n`` prepends ``n`` solved examples of the same topic (``"...\nAnswer: B\n\n"``;
their answers cycle through the letters; their items are drawn from a separate seeded stream and are
never the item of a prompt in the same row).

``"Question: What is 17 + 25?\\nA. 40\\nB. 42\\nC. 43\\nD. 41\\nAnswer:"`` — the correct letter is
balanced over the options (prompt ``i`` has its answer at letter ``i % K``, then rows are shuffled),
so a head that always attends to one letter is not confused with one that follows the answer.

Every prompt has an *answer-swapped* twin (``swapped_ids``): the same question and the same option
values, rotated so that the correct value sits at another letter (``swapped_correct``). Twin and
prompt have the same token length (the same values, permuted), so they can be patched into each other.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InputError
from .text import pad_id
from .vocab import bos_id, encode

LETTERS = ("A", "B", "C", "D")
TOPICS = ("arithmetic", "colors")
COLORS = ("red", "yellow", "green", "blue", "white", "black", "orange", "brown", "pink", "purple", "gray")
# object -> (its prototypical colour, other colours it also often has: never used as distractors)
COLOR_ITEMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "a banana": ("yellow", ("green", "brown")), "grass": ("green", ("brown", "yellow")),
    "the clear sky": ("blue", ("white", "gray")), "snow": ("white", ("gray",)), "coal": ("black", ("gray", "brown")),
    "a tomato": ("red", ("green", "orange")), "a carrot": ("orange", ()), "a lemon": ("yellow", ("green",)),
    "milk": ("white", ()), "a strawberry": ("red", ("pink",)), "chocolate": ("brown", ("black", "white")),
    "an orange": ("orange", ("yellow", "green")), "a lime": ("green", ("yellow",)), "blood": ("red", ("brown",)),
    "the ocean": ("blue", ("green", "gray")), "a crow": ("black", ("gray",)),
    "a flamingo": ("pink", ("red", "white", "orange")), "an eggplant": ("purple", ("black",)),
    "a cucumber": ("green", ()), "a pumpkin": ("orange", ("yellow", "white", "green")),
    "a fire truck": ("red", ("yellow",)), "a polar bear": ("white", ("yellow",)), "ash": ("gray", ("black", "white")),
    "a frog": ("green", ("brown",)), "a school bus": ("yellow", ("orange",)),
    "a lavender flower": ("purple", ("blue", "pink")),
    "a cherry": ("red", ("black", "purple")), "an elephant": ("gray", ("brown",)), "a chick": ("yellow", ()),
    "cinnamon": ("brown", ("red", "orange")), "a raven": ("black", ()), "a pig": ("pink", ("brown", "black")),
}


@dataclass(frozen=True)
class MCQABatch:
    """``ids [B, S]`` right-padded; ``letter_pos [B, K]`` positions of the option letters;
    ``final_pos [B]`` the last real position (``:`` of ``Answer:``); ``correct [B]`` the correct
    option index; ``option_region [B, 2]`` the ``[start, end)`` token range of the options;
    ``letter_ids [K]`` the letters' token ids. ``swapped_*``: the answer-swapped twins (module docstring)."""

    ids: torch.Tensor
    letter_pos: torch.Tensor
    final_pos: torch.Tensor
    correct: torch.Tensor
    option_region: torch.Tensor
    texts: tuple[str, ...]
    letter_ids: torch.Tensor
    swapped_ids: torch.Tensor
    swapped_correct: torch.Tensor
    swapped_letter_pos: torch.Tensor

    def letter_token(self, which: torch.Tensor) -> torch.Tensor:
        """``[B]`` token ids of option indices ``which [B]``."""
        return self.letter_ids[which]


def _question(topic: str, item: Any) -> str:
    return f"Question: What is {item[0]} + {item[1]}?" if topic == "arithmetic" else f"Question: What color is {item}?"


def _row(tokenizer: Any, a: int, b: int, values: list[int], letter_ids: list[int], letters: tuple[str, ...],
         *, question: str | None = None, prefix: str = "") -> tuple[list[int], list[int], tuple[int, int], str]:
    bos = bos_id(tokenizer)
    question = question if question is not None else f"Question: What is {a} + {b}?"
    ids = ([] if bos is None else [bos]) + (encode(tokenizer, prefix) if prefix else []) + encode(tokenizer, question)
    start = len(ids)
    pos = []
    for tid, v in zip(letter_ids, values):
        ids += encode(tokenizer, "\n")
        pos.append(len(ids))
        ids += [tid] + encode(tokenizer, f". {v}")
    end = len(ids)
    ids += encode(tokenizer, "\n") + encode(tokenizer, "Answer:")
    text = prefix + question + "".join(f"\n{c}. {v}" for c, v in zip(letters, values)) + "\nAnswer:"
    return ids, pos, (start, end), text


def _draw(rng: random.Random, topic: str, n_options: int, pool: list[str]) -> tuple[Any, list[Any], Any]:
    """One item: ``(item, distractors, answer)``."""
    if topic == "arithmetic":
        a, b = rng.randint(10, 44), rng.randint(10, 44)
        answer = a + b
        return (a, b), rng.sample([answer + d for d in (-5, -4, -3, -2, -1, 1, 2, 3, 4, 5)], n_options - 1), answer
    obj = rng.choice(pool)
    answer, also = COLOR_ITEMS[obj]
    return obj, rng.sample([c for c in COLORS if c != answer and c not in also], n_options - 1), answer


def few_shot_prefix(topic: str, shots: int, *, seed: int, n_options: int = 4) -> tuple[str, set[Any]]:
    """``shots`` solved examples (answers cycling through the letters from a seeded start) and the items
    they use."""
    rng = random.Random(seed * 7919 + 17)
    letters = LETTERS[:n_options]
    pool = sorted(COLOR_ITEMS)
    text, used = "", set()
    first = rng.randrange(n_options)
    for j in range(shots):
        item, wrong, answer = _draw(rng, topic, n_options, [o for o in pool if o not in used] or pool)
        used.add(item)
        k = (first + j) % n_options
        values = wrong[:k] + [answer] + wrong[k:]
        options = "".join(f"\n{c}. {v}" for c, v in zip(letters, values))
        text += _question(topic, item) + options + f"\nAnswer: {letters[k]}\n\n"
    return text, used


def mcqa_batch(tokenizer: Any, n: int, *, seed: int, n_options: int = 4, topic: str = "arithmetic",
               shots: int = 0) -> MCQABatch:
    """``n`` seeded questions of ``topic`` (module docstring) with ``n_options`` lettered options, after
    ``shots`` solved examples, and their answer-swapped twins (same prefix, same question, the options
    rotated so that the answer sits at another letter). ``topic="arithmetic", shots=0`` gives exactly the
    prompts of earlier versions."""
    if not 2 <= n_options <= len(LETTERS):
        raise InputError(f"n_options must be 2..{len(LETTERS)}")
    if topic not in TOPICS:
        raise InputError(f"unknown MCQA topic {topic!r}; use one of {', '.join(TOPICS)}")
    if not isinstance(shots, int) or not 0 <= shots <= 8:
        raise InputError(f"shots must be an integer 0..8, got {shots!r}")
    letters = LETTERS[:n_options]
    letter_ids = []
    for c in letters:
        t = encode(tokenizer, c)
        if len(t) != 1:
            raise InputError(f"the option letter {c!r} is not one token for this tokenizer")
        letter_ids.append(t[0])
    prefix, used = few_shot_prefix(topic, shots, seed=seed, n_options=n_options) if shots else ("", set())
    pool = [o for o in sorted(COLOR_ITEMS) if o not in used]
    rng = random.Random(seed)
    order = list(range(n))
    rng.shuffle(order)
    rows, lpos, fpos, corr, region, texts = [], [], [], [], [], []
    srows, spos, scorr = [], [], []
    for i in order:
        item, wrong, answer = _draw(rng, topic, n_options, pool)
        while item in used:                     # arithmetic: never ask a shot's own question
            item, wrong, answer = _draw(rng, topic, n_options, pool)
        a, b = item if topic == "arithmetic" else (0, 0)
        q = _question(topic, item)
        k = i % n_options
        values = wrong[:k] + [answer] + wrong[k:]
        ids, pos, reg, text = _row(tokenizer, a, b, values, letter_ids, letters, question=q, prefix=prefix)
        shift = 1 + rng.randrange(n_options - 1)          # the twin's answer sits `shift` letters later
        k2 = (k + shift) % n_options
        swapped = [values[(j - shift) % n_options] for j in range(n_options)]
        ids2, pos2, _, _ = _row(tokenizer, a, b, swapped, letter_ids, letters, question=q, prefix=prefix)
        if len(ids2) != len(ids):   # cannot happen: the same pieces in another order
            raise InputError("an answer-swapped MCQA twin tokenized to another length")
        rows.append(ids)
        lpos.append(pos)
        fpos.append(len(ids) - 1)
        corr.append(k)
        region.append(reg)
        texts.append(text)
        srows.append(ids2)
        spos.append(pos2)
        scorr.append(k2)
    width = max(len(r) for r in rows)
    out = torch.full((n, width), pad_id(tokenizer), dtype=torch.long)
    out2 = out.clone()
    for r, (ids, ids2) in enumerate(zip(rows, srows)):
        out[r, :len(ids)] = torch.tensor(ids)
        out2[r, :len(ids2)] = torch.tensor(ids2)
    return MCQABatch(ids=out, letter_pos=torch.tensor(lpos), final_pos=torch.tensor(fpos), correct=torch.tensor(corr),
                     option_region=torch.tensor(region), texts=tuple(texts), letter_ids=torch.tensor(letter_ids),
                     swapped_ids=out2, swapped_correct=torch.tensor(scorr), swapped_letter_pos=torch.tensor(spos))
