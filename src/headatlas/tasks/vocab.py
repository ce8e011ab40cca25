"""Vocabulary helpers shared by the task generators: BOS handling and clean random tokens."""

from __future__ import annotations

import functools
from typing import Any, Sequence

import torch

from ..errors import InputError


def bos_id(tokenizer: Any) -> int | None:
    """The id to start a sequence with (BOS, else None)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return int(bos) if bos is not None else None


def vocab_size(tokenizer: Any) -> int:
    try:
        return len(tokenizer)
    except TypeError:
        return int(tokenizer.vocab_size)


@functools.lru_cache(maxsize=8)
def _clean_ids_cached(key: int, tokenizer: Any, limit: int) -> torch.Tensor:
    special = set(int(i) for i in (getattr(tokenizer, "all_special_ids", None) or []))
    n = min(vocab_size(tokenizer), limit)
    ids = []
    for i in range(n):
        if i in special:
            continue
        piece = tokenizer.convert_ids_to_tokens(i)
        if not isinstance(piece, str) or piece.startswith("<") and piece.endswith(">") or piece.startswith("[") and piece.endswith("]"):
            continue
        if not tokenizer.decode([i]).strip():  # whitespace-only pieces (runs of newlines, spaces)
            continue
        ids.append(i)
    return torch.tensor(ids, dtype=torch.long)


def clean_token_ids(tokenizer: Any, *, limit: int | None = None) -> torch.Tensor:
    """Ids of ordinary tokens (no special, no ``<...>`` control pieces, no whitespace-only pieces). ``limit`` caps the id range
    (low ids are the frequent BPE merges; a cap keeps random tokens ordinary)."""
    return _clean_ids_cached(id(tokenizer), tokenizer, int(limit or vocab_size(tokenizer)))


def random_token_block(tokenizer: Any, batch: int, length: int, generator: torch.Generator, *,
                       unique: bool = True, limit: int | None = 20000) -> torch.Tensor:
    """``[batch, length]`` random ordinary tokens; ``unique`` draws without repetition within a row."""
    pool = clean_token_ids(tokenizer, limit=limit)
    if unique and length > pool.numel():
        raise InputError(f"cannot draw {length} distinct tokens from a vocabulary of {pool.numel()} ordinary tokens")
    rows = []
    for _ in range(batch):
        if unique:
            idx = torch.randperm(pool.numel(), generator=generator)[:length]
        else:
            idx = torch.randint(pool.numel(), (length,), generator=generator)
        rows.append(pool[idx])
    return torch.stack(rows)


def with_bos(tokenizer: Any, ids: torch.Tensor) -> torch.Tensor:
    """Prepend BOS to each row of ``[batch, seq]`` when the tokenizer has one."""
    bos = bos_id(tokenizer)
    if bos is None:
        return ids
    return torch.cat([torch.full((ids.shape[0], 1), bos, dtype=ids.dtype), ids], dim=1)


def encode(tokenizer: Any, text: str) -> list[int]:
    """The token ids of ``text`` (no special tokens)."""
    return list(tokenizer.encode(text, add_special_tokens=False))


def one_token(tokenizer: Any, text: str) -> int | None:
    """The id of ``text`` when it is exactly one token, else None: the task generators' single-token filter
    (an answer scored by its one token needs one)."""
    ids = encode(tokenizer, text)
    return int(ids[0]) if len(ids) == 1 else None


def single_token_id(tokenizer: Any, text: str) -> int:
    """The id of ``text`` when it is exactly one token (without special tokens), else InputError."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(list(ids))
        raise InputError(f"{text!r} is not a single token for this tokenizer: it splits into {pieces}")
    return int(ids[0])


def encode_batch(tokenizer: Any, texts: Sequence[str], *, add_bos: bool = True) -> torch.Tensor:
    """Tokenize texts that must have equal length; prepend BOS if the tokenizer has one and
    did not add it. Raises InputError naming the lengths when they differ."""
    rows = [list(tokenizer.encode(t, add_special_tokens=False)) for t in texts]
    lengths = sorted({len(r) for r in rows})
    if len(lengths) != 1:
        detail = ", ".join(f"{len(r)} tokens: {t!r}" for r, t in zip(rows, texts))
        raise InputError(f"prompts tokenize to different lengths ({detail}); use prompts of equal token length")
    ids = torch.tensor(rows, dtype=torch.long)
    return with_bos(tokenizer, ids) if add_bos else ids
