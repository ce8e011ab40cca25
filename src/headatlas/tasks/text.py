"""Word-aligned English text: the shipped sentences, word -> token-span bookkeeping, and packing
rows into one right-padded batch.

Text is encoded word by word (``" " + word`` after the first word, punctuation glued to the
previous word without a space), so every word's token span is known exactly without offset
mappings (which slow or toy tokenizers lack). For the BPE tokenizers of real models this equals
the ordinary encoding of the sentence, because their pre-tokenizers split at the same places.

Rows of different lengths are right-padded: in a causal model later (padding) tokens never
change earlier positions, so no attention mask is needed and scores only read real positions.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable, Sequence, TypeVar

import torch

from ..errors import InputError
from .vocab import bos_id

T = TypeVar("T")
_PUNCT = re.compile(r"^[.,;:!?]+$")
_PROBE = "The old fisherman mended his nets on the quiet harbour wall."


@dataclass(frozen=True)
class WordSeq:
    """One encoded text: ``ids`` (no BOS), ``words`` and each word's token span ``[start, end)``."""

    ids: tuple[int, ...]
    words: tuple[str, ...]
    spans: tuple[tuple[int, int], ...]

    def __len__(self) -> int:
        return len(self.ids)

    def shifted(self, offset: int) -> tuple[tuple[int, int], ...]:
        return tuple((a + offset, b + offset) for a, b in self.spans)


@functools.lru_cache(maxsize=8)
def data_lines(name: str) -> tuple[str, ...]:
    """Non-empty, non-comment lines of the package data file ``name``."""
    text = resources.files("headatlas").joinpath("data", name).read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))


def sentences() -> tuple[str, ...]:
    """The natural English sentences shipped with the package (``data/sentences.txt``)."""
    return data_lines("sentences.txt")


def split_words(text: str) -> list[str]:
    """Whitespace words with trailing punctuation split off: ``"dog."`` -> ``["dog", "."]``."""
    out: list[str] = []
    for w in text.split():
        m = re.match(r"^(.*?)([.,;:!?]+)$", w)
        if m and m.group(1):
            out.extend([m.group(1), m.group(2)])
        else:
            out.append(w)
    return out


def is_punct(word: str) -> bool:
    return bool(_PUNCT.match(word))


def check_english(tokenizer: Any) -> None:
    """InputError unless the tokenizer encodes and decodes a plain English sentence faithfully."""
    try:
        ids = tokenizer.encode(_PROBE, add_special_tokens=False)
        back = tokenizer.decode(ids) if ids else ""
    except Exception as exc:  # a tokenizer that cannot even run on English text
        raise InputError(f"the tokenizer cannot encode English text ({type(exc).__name__}: {exc})") from exc
    if not ids or back.strip() != _PROBE:
        raise InputError(
            "this detector needs English text, but the tokenizer does not round-trip a plain English sentence "
            f"(got {back.strip()[:60]!r}); it cannot be run on this model")


def encode_words(tokenizer: Any, words: Sequence[str]) -> WordSeq:
    """Encode ``words`` one by one (space before each non-punctuation word after the first)."""
    ids: list[int] = []
    spans: list[tuple[int, int]] = []
    for i, w in enumerate(words):
        piece = w if (i == 0 or is_punct(w)) else " " + w
        t = list(tokenizer.encode(piece, add_special_tokens=False))
        if not t:
            raise InputError(f"the tokenizer encodes the word {w!r} to no tokens")
        spans.append((len(ids), len(ids) + len(t)))
        ids.extend(int(x) for x in t)
    return WordSeq(tuple(ids), tuple(words), tuple(spans))


def encode_text(tokenizer: Any, text: str) -> WordSeq:
    return encode_words(tokenizer, split_words(text))


def concat(seqs: Sequence[WordSeq], tokenizer: Any) -> WordSeq:
    """Join texts into one (each later text starts with a space, as in running prose)."""
    words: list[str] = []
    for s in seqs:
        words.extend(s.words)
    return encode_words(tokenizer, words)


def pad_id(tokenizer: Any) -> int:
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        v = getattr(tokenizer, name, None)
        if v is not None:
            return int(v)
    return 0


def rows_that_fit(make: Callable[[int], T], per_row: int, n_ctx: int,
                  seqs: Callable[[T], Sequence[WordSeq]] = lambda x: x) -> tuple[T, int]:
    """``make(k)`` builds rows of ``k`` texts each; ``k`` starts at ``per_row`` and is lowered until the longest
    row plus BOS fits ``n_ctx`` (or ``k`` is 1). Returns ``(make(k), k)``; ``seqs`` gets the rows from the value."""
    value = make(per_row)
    while max(len(s) for s in seqs(value)) + 1 > n_ctx and per_row > 1:
        per_row -= 1
        value = make(per_row)
    return value, per_row


def pack(tokenizer: Any, seqs: Sequence[WordSeq], *, n_ctx: int) -> tuple[torch.Tensor, int]:
    """``[B, S]`` ids (BOS first when the tokenizer has one, right-padded) and the position offset
    of token 0 of each text (1 with BOS, else 0). InputError when a row exceeds ``n_ctx``."""
    bos = bos_id(tokenizer)
    off = 0 if bos is None else 1
    longest = max(len(s) for s in seqs) + off
    if longest > n_ctx:
        raise InputError(f"a prompt needs {longest} positions but the model has only {n_ctx}")
    ids = torch.full((len(seqs), longest), pad_id(tokenizer), dtype=torch.long)
    for r, s in enumerate(seqs):
        if bos is not None:
            ids[r, 0] = bos
        ids[r, off:off + len(s)] = torch.tensor(s.ids, dtype=torch.long)
    return ids, off
