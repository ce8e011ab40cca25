"""Turning user input (a model spec, prompts, answers, heads) into checked tensors for the causal methods."""

from __future__ import annotations

import numbers
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from ..checks import check_int, check_str_list
from ..errors import InputError, InputTypeError
from ..models.loading import LoadedModel
from ..tasks.vocab import bos_id, encode_batch, single_token_id

Prompts = str | Sequence[str] | torch.Tensor
Heads = Iterable[tuple[int, int]]


def as_loaded(model: Any) -> LoadedModel:
    """A :class:`LoadedModel` from anything ``headatlas.load`` accepts (a loaded one is returned as is)."""
    from ..models import load

    return model if isinstance(model, LoadedModel) else load(model)


def encode(m: LoadedModel, prompts: Prompts, what: str = "prompts") -> torch.Tensor:
    """``[batch, seq]`` token ids on the model's device (BOS prepended when the tokenizer has one).

    A tensor is taken as token ids already (``[seq]`` or ``[batch, seq]``, integers in the vocabulary);
    strings in one list must tokenize to one length, and to at least one token."""
    if isinstance(prompts, torch.Tensor):
        return _within_context(m, check_token_ids(m, prompts, what), what)
    if isinstance(prompts, np.ndarray):
        return encode(m, torch.as_tensor(prompts), what)
    if not isinstance(prompts, (str, list, tuple)):
        raise InputTypeError(f"{what} must be a string, a list of strings or a [batch, seq] tensor of token ids, "
                             f"got {type(prompts).__name__}")
    texts = check_str_list(prompts, what)
    try:
        ids = encode_batch(m.tokenizer, texts)
    except InputError as exc:
        raise InputError(f"{what}: {exc}") from None
    if ids.shape[1] == (0 if bos_id(m.tokenizer) is None else 1):
        raise InputError(f"{what} {texts[0]!r} tokenize to no tokens; give non-empty text")
    return _within_context(m, ids.to(m.device), what)


def check_token_ids(m: LoadedModel, ids: torch.Tensor, what: str = "token ids") -> torch.Tensor:
    """``[batch, seq]`` long ids on the model's device: integers, 1-D or 2-D, non-empty, inside the vocabulary."""
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise InputTypeError(f"{what}: token ids must be an integer tensor, got dtype {ids.dtype}")
    if ids.dim() not in (1, 2):
        raise InputError(f"{what}: token ids must be [seq] or [batch, seq], got a {ids.dim()}-D tensor of shape "
                         f"{tuple(ids.shape)}; reshape it")
    ids = ids.reshape(1, -1) if ids.dim() == 1 else ids
    if ids.numel() == 0:
        raise InputError(f"{what}: empty tensor of token ids (shape {tuple(ids.shape)})")
    lo, hi = int(ids.min()), int(ids.max())
    vocab = m.info.vocab_size
    if lo < 0 or hi >= vocab:
        raise InputError(f"{what}: token ids must be in 0..{vocab - 1} (the vocabulary), got values from {lo} to {hi}")
    return ids.to(device=m.device, dtype=torch.long)


def _within_context(m: LoadedModel, ids: torch.Tensor, what: str) -> torch.Tensor:
    if ids.shape[1] > m.info.n_ctx:
        raise InputError(f"{what} are {ids.shape[1]} tokens long, but {m.info.name or 'the model'} has a context "
                         f"of {m.info.n_ctx} positions; shorten them")
    return ids


def encode_pair(m: LoadedModel, clean: Prompts, corrupted: Prompts) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean and corrupted ids of equal shape ``[batch, seq]``; a single corrupted prompt is repeated."""
    c, x = encode(m, clean, "clean prompts"), encode(m, corrupted, "corrupted prompts")
    if c.shape[1] != x.shape[1]:
        def show(p: Prompts) -> str:
            return repr(p if isinstance(p, str) else list(p)[0]) if not isinstance(p, torch.Tensor) else "token ids"
        raise InputError(
            f"clean and corrupted prompts must tokenize to the same length, position by position: the clean "
            f"prompt {show(clean)} has {c.shape[1]} tokens, the corrupted prompt {show(corrupted)} has {x.shape[1]}"
        )
    if x.shape[0] == 1 and c.shape[0] > 1:
        x = x.expand(c.shape[0], -1)
    if c.shape[0] == 1 and x.shape[0] > 1:
        c = c.expand(x.shape[0], -1)
    if c.shape[0] != x.shape[0]:
        raise InputError(f"{c.shape[0]} clean prompts but {x.shape[0]} corrupted prompts; give one corrupted per clean")
    return c.contiguous(), x.contiguous()


def token_ids(m: LoadedModel, answers: str | int | Sequence[str | int] | torch.Tensor, n: int,
              what: str = "answer") -> torch.Tensor:
    """``[n]`` token ids: one string for every prompt, or one per prompt; each must be a single token."""
    vocab = m.info.vocab_size
    if isinstance(answers, torch.Tensor):
        if answers.is_floating_point() or answers.is_complex() or answers.dtype == torch.bool:
            raise InputTypeError(f"{what} token ids must be integers, got a {answers.dtype} tensor")
        ids = answers.reshape(-1).long()
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise InputError(f"{what} token ids must be in 0..{vocab - 1}, got {ids.tolist()[:8]}")
    else:
        if not isinstance(answers, (str, int, list, tuple)) or isinstance(answers, bool):
            raise InputTypeError(f"{what} must be a token string such as ' Mary', a token id, or a list of them; got "
                                 f"{type(answers).__name__}")
        items = [answers] if isinstance(answers, (str, int)) else list(answers)
        if not items:
            raise InputError(f"no {what} given")
        out = []
        for a in items:
            if isinstance(a, str):
                try:
                    out.append(single_token_id(m.tokenizer, a))
                except InputError as exc:
                    raise InputError(f"{what}: {exc}") from None
            else:
                a = check_int(a, f"{what} token id")
                if not 0 <= a < vocab:
                    raise InputError(f"{what} token id {a} out of range 0..{vocab - 1}")
                out.append(a)
        ids = torch.tensor(out, dtype=torch.long)
    if ids.numel() == 1:
        ids = ids.expand(n)
    if ids.numel() != n:
        raise InputError(f"{ids.numel()} {what}s for {n} prompts; give one for all or one per prompt")
    return ids.to(m.device)


def check_heads(m: LoadedModel, heads: Heads | tuple[int, int]) -> list[tuple[int, int]]:
    """A list of ``(layer, head)`` pairs of integers, each checked against the model's sizes."""
    if isinstance(heads, str):
        raise InputTypeError(f"heads must be (layer, head) pairs such as [(9, 6)], got the string {heads!r}; "
                             "headatlas.methods.inputs.parse_heads reads 'L9H6' or '9.6'")
    if heads is None or not hasattr(heads, "__iter__"):
        raise InputTypeError(f"heads must be a list of (layer, head) pairs such as [(9, 6)], got {type(heads).__name__}")
    if isinstance(heads, (tuple, list)) and len(heads) == 2 and all(isinstance(x, numbers.Number) for x in heads):
        heads = [tuple(heads)]  # one head given as a bare pair
    out = []
    for item in heads:
        if isinstance(item, (str, bytes)) or not hasattr(item, "__len__") or len(item) != 2:
            raise InputTypeError(f"a head must be a (layer, head) pair, got {item!r:.40}")
        layer, head = (check_int(x, f"head {tuple(item)!r:.40}: layer and head") for x in item)
        m.check_head(layer, head)
        out.append((layer, head))
    if not out:
        raise InputError("no heads given")
    return out


def parse_heads(text: str) -> list[tuple[int, int]]:
    """``"9.6,10.0"`` or ``"L9H6 L10H0"`` -> ``[(9, 6), (10, 0)]`` (for the CLI)."""
    out = []
    for tok in text.replace(",", " ").split():
        t = tok.upper().lstrip("L").replace("H", ".").replace(":", ".")
        parts = t.split(".")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise InputError(f"cannot read head {tok!r}; write LAYER.HEAD (e.g. 9.6) or L9H6")
        out.append((int(parts[0]), int(parts[1])))
    if not out:
        raise InputError("no heads given")
    return out


def check_positions(positions: Sequence[int] | None, seq: int) -> list[int] | None:
    """Absolute positions, negative ones counted from the end; out of range -> InputError."""
    if positions is None:
        return None
    if isinstance(positions, torch.Tensor):
        positions = positions.reshape(-1).tolist() if not positions.is_floating_point() else positions.tolist()
    if isinstance(positions, (str, bytes)) or not isinstance(positions, (int, Sequence, range)):
        raise InputTypeError(f"positions must be an int or a list of ints, got {type(positions).__name__}")
    items = [positions] if isinstance(positions, int) else list(positions)
    if not items:
        raise InputError("positions is empty: pass None for all positions, or at least one position")
    out = []
    for p in items:
        p = check_int(p, "position")
        q = p + seq if p < 0 else p
        if not 0 <= q < seq:
            raise InputError(f"position {p} out of range for prompts of {seq} tokens (use 0..{seq - 1}, or -1..-{seq} "
                             "from the end)")
        out.append(q)
    return sorted(set(out))
