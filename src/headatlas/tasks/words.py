"""Word-level facts: English word frequencies (``wordfreq``) and words that a tokenizer splits
into several pieces (for the subword-merge detector)."""

from __future__ import annotations

import functools
import random
from typing import Any, Sequence

from ..errors import InputError
from .text import WordSeq, data_lines, encode_words, is_punct, split_words


@functools.lru_cache(maxsize=4096)
def zipf(word: str) -> float:
    """Zipf frequency of an English word (log10 of occurrences per billion words; 0 = unseen),
    from the ``wordfreq`` package. Punctuation gets +inf (never "rare")."""
    if is_punct(word):
        return float("inf")
    from wordfreq import zipf_frequency

    return float(zipf_frequency(word.lower(), "en"))


def long_words() -> tuple[str, ...]:
    """The long English words shipped with the package (``data/long_words.txt``)."""
    return data_lines("long_words.txt")


def n_pieces(tokenizer: Any, word: str) -> int:
    """Tokens of ``" " + word`` (the word as it appears after a space)."""
    return len(tokenizer.encode(" " + word, add_special_tokens=False))


def multi_piece_words(tokenizer: Any, words: Sequence[str], min_pieces: int = 3) -> list[str]:
    """The words of ``words`` that the tokenizer splits into at least ``min_pieces`` tokens."""
    return [w for w in words if n_pieces(tokenizer, w) >= min_pieces]


CARRIERS = (
    "Yesterday the word {w} appeared in the newspaper.",
    "She wrote {w} on the board before the lesson.",
    "Nobody in the room could spell {w} correctly.",
    "The dictionary lists {w} on the same page as many others.",
    "He repeated {w} slowly so that everyone could hear.",
    "Our teacher explained what {w} means in simple terms.",
)


def subword_rows(tokenizer: Any, n_rows: int, words_per_row: int, *, seed: int,
                 min_pieces: int = 3, min_words: int = 8) -> list[WordSeq]:
    """``n_rows`` texts of ``words_per_row`` carrier sentences, each holding one long word that the
    tokenizer splits into ``>= min_pieces`` pieces. InputError when fewer than ``min_words`` qualify."""
    pool = multi_piece_words(tokenizer, long_words(), min_pieces)
    if len(pool) < min_words:
        raise InputError(f"only {len(pool)} of the shipped long words split into >= {min_pieces} tokens "
                         f"with this tokenizer (need {min_words}): no subword data")
    rng = random.Random(seed)
    rows = []
    for _ in range(n_rows):
        words: list[str] = []
        for w in rng.sample(pool, min(words_per_row, len(pool))):
            words.extend(split_words(rng.choice(CARRIERS).format(w=w)))
        rows.append(encode_words(tokenizer, words))
    return rows
