"""Synthetic multiple-choice arithmetic questions with lettered options (after Lieberum et al. 2023,
arXiv 2307.09458, with MMLU replaced by arithmetic so no data is downloaded).

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
from .vocab import bos_id

LETTERS = ("A", "B", "C", "D")


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


def _enc(tokenizer: Any, text: str) -> list[int]:
    return [int(x) for x in tokenizer.encode(text, add_special_tokens=False)]


def _row(tokenizer: Any, a: int, b: int, values: list[int], letter_ids: list[int], letters: tuple[str, ...]
         ) -> tuple[list[int], list[int], tuple[int, int], str]:
    bos = bos_id(tokenizer)
    ids = ([] if bos is None else [bos]) + _enc(tokenizer, f"Question: What is {a} + {b}?")
    start = len(ids)
    pos = []
    for tid, v in zip(letter_ids, values):
        ids += _enc(tokenizer, "\n")
        pos.append(len(ids))
        ids += [tid] + _enc(tokenizer, f". {v}")
    end = len(ids)
    ids += _enc(tokenizer, "\n") + _enc(tokenizer, "Answer:")
    text = f"Question: What is {a} + {b}?" + "".join(f"\n{c}. {v}" for c, v in zip(letters, values)) + "\nAnswer:"
    return ids, pos, (start, end), text


def mcqa_batch(tokenizer: Any, n: int, *, seed: int, n_options: int = 4) -> MCQABatch:
    """``n`` seeded arithmetic questions with ``n_options`` lettered options (two-digit numbers), and
    their answer-swapped twins."""
    if not 2 <= n_options <= len(LETTERS):
        raise InputError(f"n_options must be 2..{len(LETTERS)}")
    letters = LETTERS[:n_options]
    letter_ids = []
    for c in letters:
        t = _enc(tokenizer, c)
        if len(t) != 1:
            raise InputError(f"the option letter {c!r} is not one token for this tokenizer")
        letter_ids.append(t[0])
    rng = random.Random(seed)
    order = list(range(n))
    rng.shuffle(order)
    rows, lpos, fpos, corr, region, texts = [], [], [], [], [], []
    srows, spos, scorr = [], [], []
    for i in order:
        a, b = rng.randint(10, 44), rng.randint(10, 44)
        answer = a + b
        wrong = rng.sample([answer + d for d in (-5, -4, -3, -2, -1, 1, 2, 3, 4, 5)], n_options - 1)
        k = i % n_options
        values = wrong[:k] + [answer] + wrong[k:]
        ids, pos, reg, text = _row(tokenizer, a, b, values, letter_ids, letters)
        shift = 1 + rng.randrange(n_options - 1)          # the twin's answer sits `shift` letters later
        k2 = (k + shift) % n_options
        swapped = [values[(j - shift) % n_options] for j in range(n_options)]
        ids2, pos2, _, _ = _row(tokenizer, a, b, swapped, letter_ids, letters)
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
