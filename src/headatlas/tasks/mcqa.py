"""Synthetic multiple-choice arithmetic questions with lettered options (after Lieberum et al. 2023,
arXiv 2307.09458, with MMLU replaced by arithmetic so no data is downloaded).

``"Question: What is 7 + 5?\\nA. 10\\nB. 12\\nC. 13\\nD. 11\\nAnswer:"`` — the correct letter is
balanced over the options (prompt ``i`` has its answer at letter ``i % K``, then rows are shuffled),
so a head that always attends to one letter is not confused with one that follows the answer.
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
    option index; ``option_region [B, 2]`` the ``[start, end)`` token range of the options."""

    ids: torch.Tensor
    letter_pos: torch.Tensor
    final_pos: torch.Tensor
    correct: torch.Tensor
    option_region: torch.Tensor
    texts: tuple[str, ...]


def _enc(tokenizer: Any, text: str) -> list[int]:
    return [int(x) for x in tokenizer.encode(text, add_special_tokens=False)]


def mcqa_batch(tokenizer: Any, n: int, *, seed: int, n_options: int = 4) -> MCQABatch:
    """``n`` seeded arithmetic questions with ``n_options`` lettered options."""
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
    bos = bos_id(tokenizer)
    for i in order:
        a, b = rng.randint(2, 49), rng.randint(2, 49)
        answer = a + b
        wrong = rng.sample([answer + d for d in (-5, -4, -3, -2, -1, 1, 2, 3, 4, 5) if answer + d > 0], n_options - 1)
        k = i % n_options
        values = wrong[:k] + [answer] + wrong[k:]
        ids = ([] if bos is None else [bos]) + _enc(tokenizer, f"Question: What is {a} + {b}?")
        start = len(ids)
        pos = []
        for letter, tid, v in zip(letters, letter_ids, values):
            ids += _enc(tokenizer, "\n")
            pos.append(len(ids))
            ids += [tid] + _enc(tokenizer, f". {v}")
        end = len(ids)
        ids += _enc(tokenizer, "\n") + _enc(tokenizer, "Answer:")
        rows.append(ids)
        lpos.append(pos)
        fpos.append(len(ids) - 1)
        corr.append(k)
        region.append((start, end))
        texts.append(f"Question: What is {a} + {b}?" + "".join(f"\n{c}. {v}" for c, v in zip(letters, values)) + "\nAnswer:")
    width = max(len(r) for r in rows)
    out = torch.full((n, width), pad_id(tokenizer), dtype=torch.long)
    for r, ids in enumerate(rows):
        out[r, :len(ids)] = torch.tensor(ids)
    return MCQABatch(ids=out, letter_pos=torch.tensor(lpos), final_pos=torch.tensor(fpos), correct=torch.tensor(corr),
                     option_region=torch.tensor(region), texts=tuple(texts))
