"""Seeded random-token sequences, repeated and not: the data of the pattern detectors.

``[BOS] A B C ... A B C ... A B C ...`` (a block of distinct random ordinary tokens, repeated)
is the classic probe for duplicate-token and induction heads (Olsson et al. 2022; Crosbie &
Shutova 2024): on a repeat, each token has an earlier copy at a known distance and a known
next token. Its *null twin* has the same length and BOS, but independent random tokens chosen
so that no token reappears at a multiple of the block length: whatever a head puts on those
positions there, it puts by position alone.

Everything is drawn with a caller's ``torch.Generator`` (never global seeds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InputError
from .vocab import bos_id, clean_token_ids

POOL_LIMIT = 20000  # draw from the 20k lowest ids: ordinary, frequent-enough BPE pieces


@dataclass(frozen=True)
class RepeatBatch:
    """A batch of repeated random-token sequences and their non-repeated twins.

    - ``ids``: ``[batch, seq]`` = ``[BOS] + block * n_repeats`` (no BOS when the tokenizer has none)
    - ``null_ids``: ``[batch, seq]`` same BOS, independent random tokens, no token equal to the one
      ``block_len``, ``2 * block_len``, ... positions earlier
    - ``start``: position of the first block token (1 with BOS, else 0)
    """

    ids: torch.Tensor
    null_ids: torch.Tensor
    block_len: int
    n_repeats: int
    start: int

    @property
    def seq_len(self) -> int:
        return int(self.ids.shape[1])

    @property
    def batch(self) -> int:
        return int(self.ids.shape[0])

    def repeat_positions(self) -> torch.Tensor:
        """``[seq]`` bool: the positions in the second and later repeats (they have an earlier copy)."""
        pos = torch.arange(self.seq_len)
        return pos >= self.start + self.block_len

    def describe(self) -> str:
        bos = "[BOS] + " if self.start else ""
        return (f"{self.batch} sequences of {bos}{self.n_repeats} x a block of {self.block_len} distinct random "
                f"tokens ({self.seq_len} tokens)")


def token_pool(tokenizer: Any, limit: int = POOL_LIMIT) -> torch.Tensor:
    """``[n]`` the ordinary token ids random sequences are drawn from."""
    return clean_token_ids(tokenizer, limit=limit)


def fit_block_len(pool_size: int, n_ctx: int, *, n_repeats: int, want: int, has_bos: bool,
                  minimum: int = 8) -> int:
    """The longest block ``<= want`` with distinct tokens that fits ``n_repeats`` times in ``n_ctx``.

    Raises InputError when even ``minimum`` does not fit (a vocabulary or context too small)."""
    room = (n_ctx - int(has_bos)) // max(1, n_repeats)
    block = min(want, pool_size, room)
    if block < minimum:
        raise InputError(
            f"repeated random-token data needs a block of at least {minimum} distinct tokens repeated {n_repeats} "
            f"times, but the model allows {room} positions per repeat (context {n_ctx}) and has {pool_size} "
            "ordinary tokens"
        )
    return block


def _distinct_rows(pool: torch.Tensor, batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """``[batch, length]`` rows of distinct tokens from ``pool``."""
    return torch.stack([pool[torch.randperm(pool.numel(), generator=generator)[:length]] for _ in range(batch)])


def _null_row(pool: torch.Tensor, length: int, block_len: int, generator: torch.Generator) -> torch.Tensor:
    """One row of ``length`` random tokens with no token equal to the one ``j * block_len`` earlier.

    Distinct throughout when the pool allows; otherwise distinct within each block, with the
    same-relative-position collisions redrawn (a small pool, e.g. a 64-token test vocabulary)."""
    if pool.numel() >= length:
        return pool[torch.randperm(pool.numel(), generator=generator)[:length]]
    row = torch.empty(length, dtype=pool.dtype)
    for b0 in range(0, length, block_len):
        n = min(block_len, length - b0)
        for _ in range(100):
            cand = pool[torch.randperm(pool.numel(), generator=generator)[:n]]
            earlier = [row[b0 - j * block_len: b0 - j * block_len + n] for j in range(1, b0 // block_len + 1)]
            if not any(bool((cand == e).any()) for e in earlier):
                break
        else:  # pragma: no cover - needs a pool barely larger than a block
            raise InputError(f"cannot draw a non-repeating null row from {pool.numel()} tokens")
        row[b0:b0 + n] = cand
    return row


def repeated_tokens(tokenizer: Any, batch: int, block_len: int, n_repeats: int, generator: torch.Generator, *,
                    limit: int = POOL_LIMIT) -> RepeatBatch:
    """``batch`` sequences ``[BOS] + block * n_repeats`` and their non-repeated twins.

    The block is ``block_len`` distinct ordinary tokens; draws use ``generator`` only."""
    if n_repeats < 2:
        raise InputError(f"a repeated sequence needs n_repeats >= 2, got {n_repeats}")
    pool = token_pool(tokenizer, limit)
    if block_len > pool.numel():
        raise InputError(f"cannot draw {block_len} distinct tokens from {pool.numel()} ordinary tokens")
    blocks = _distinct_rows(pool, batch, block_len, generator)
    ids = blocks.repeat(1, n_repeats)
    null = torch.stack([_null_row(pool, block_len * n_repeats, block_len, generator) for _ in range(batch)])
    bos = bos_id(tokenizer)
    if bos is not None:
        col = torch.full((batch, 1), bos, dtype=ids.dtype)
        ids, null = torch.cat([col, ids], 1), torch.cat([col, null], 1)
    return RepeatBatch(ids=ids, null_ids=null, block_len=block_len, n_repeats=n_repeats, start=int(bos is not None))
