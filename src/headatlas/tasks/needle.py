"""Needle-in-a-haystack prompts (after Wu et al. 2024, arXiv 2404.15574), fully synthetic.

Haystack: the package's English sentences in a seeded random order, repeated as needed. Needle:
``"The secret code for the {colour} {thing} is {code}."`` with a random 5-digit code (not
answerable from parametric knowledge), inserted at a sentence boundary at a given depth. The
prompt ends with a question whose answer is the code, so the model must copy the code's tokens
from the needle.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..errors import InputError
from .text import WordSeq, concat, encode_text, encode_words, sentences, split_words
from .vocab import bos_id

COLOURS = ("blue", "red", "green", "yellow", "black", "white", "orange", "purple", "silver", "brown")
THINGS = ("locker", "suitcase", "mailbox", "cabinet", "safe", "drawer", "gate", "bicycle lock", "garage", "chest")
NEEDLE = "The secret code for the {c} {t} is {code}."
QUESTION = "Question: What is the secret code for the {c} {t}? Answer: The secret code for the {c} {t} is"


@dataclass(frozen=True)
class NeedleCase:
    """One prompt. ``ids [S]`` (BOS first when the tokenizer has one); ``answer_ids`` the tokens of
    the code as the model should continue; ``needle_span``/``answer_span`` positions ``[start, end)``
    of the needle sentence and of the code inside it; ``haystack`` the ``[start, end)`` ranges of
    filler tokens (for null spans)."""

    ids: torch.Tensor
    answer_ids: tuple[int, ...]
    needle_span: tuple[int, int]
    answer_span: tuple[int, int]
    haystack: tuple[tuple[int, int], ...]
    target_length: int
    depth: float
    code: str


def _needle_words(c: str, t: str, code: str) -> list[str]:
    return split_words(NEEDLE.format(c=c, t=t, code=code))


def needle_case(tokenizer: Any, length: int, depth: float, rng: random.Random,
                pool: Sequence[WordSeq] | None = None) -> NeedleCase:
    """A prompt of about ``length`` tokens with the needle at relative ``depth`` (0 = start, 1 = end)."""
    if not 0.0 <= depth <= 1.0:
        raise InputError(f"needle depth must be within [0, 1], got {depth}")
    pool = list(pool) if pool is not None else [encode_text(tokenizer, s) for s in sentences()]
    c, t = rng.choice(COLOURS), rng.choice(THINGS)
    code = str(rng.randint(10000, 99999))
    needle = encode_words(tokenizer, _needle_words(c, t, code))
    question = encode_text(tokenizer, QUESTION.format(c=c, t=t))
    answer = tuple(int(x) for x in tokenizer.encode(" " + code, add_special_tokens=False))
    off = 0 if bos_id(tokenizer) is None else 1
    budget = length - off - len(needle) - len(question) - 2
    if budget < 2 * max(len(s) for s in pool):
        raise InputError(f"a needle prompt of {length} tokens leaves no room for a haystack "
                         f"(needle {len(needle)} + question {len(question)} tokens)")
    filler: list[WordSeq] = []
    used = 0
    order = list(pool)
    while True:
        rng.shuffle(order)
        for s in order:
            if used + len(s) > budget:
                break
            filler.append(s)
            used += len(s)
        else:
            continue
        break
    cut = round(depth * len(filler))
    parts = filler[:cut] + [WordSeq(needle.ids, needle.words, needle.spans)] + filler[cut:] + [question]
    text = concat(parts, tokenizer)
    # locate word ranges of the parts inside the concatenation
    word_starts, w = [], 0
    for p in parts:
        word_starts.append(w)
        w += len(p.words)
    nw0 = word_starts[cut]
    nspan = (text.spans[nw0][0] + off, text.spans[nw0 + len(needle.words) - 1][1] + off)
    code_word = nw0 + needle.words.index(code)
    aspan = (text.spans[code_word][0] + off, text.spans[code_word][1] + off)
    qstart = text.spans[word_starts[-1]][0] + off
    hay = tuple(r for r in ((off, nspan[0]), (nspan[1], qstart)) if r[1] > r[0])
    ids = torch.tensor(([] if off == 0 else [bos_id(tokenizer)]) + list(text.ids), dtype=torch.long)
    if tuple(ids[aspan[0]:aspan[1]].tolist()) != answer:
        # the code is tokenized differently after the needle's "is" than as a continuation: use the
        # needle's own tokens as the answer (the model copies exactly these)
        answer = tuple(ids[aspan[0]:aspan[1]].tolist())
    return NeedleCase(ids=ids, answer_ids=answer, needle_span=nspan, answer_span=aspan, haystack=hay,
                      target_length=length, depth=depth, code=code)


def needle_cases(tokenizer: Any, lengths: Sequence[int], depths: Sequence[float], *, seed: int) -> list[NeedleCase]:
    """One case per (length, depth), seeded."""
    rng = random.Random(seed)
    pool = [encode_text(tokenizer, s) for s in sentences()]
    return [needle_case(tokenizer, n, d, rng, pool) for n in lengths for d in depths]
