"""Turning user input (a model spec, prompts, answers, heads) into checked tensors for the causal methods."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch

from ..errors import InputError
from ..models.loading import LoadedModel
from ..tasks.vocab import encode_batch, single_token_id

Prompts = str | Sequence[str] | torch.Tensor
Heads = Iterable[tuple[int, int]]


def as_loaded(model: Any) -> LoadedModel:
    """A :class:`LoadedModel` from anything ``headatlas.load`` accepts (a loaded one is returned as is)."""
    from ..models import load

    return model if isinstance(model, LoadedModel) else load(model)


def encode(m: LoadedModel, prompts: Prompts, what: str = "prompts") -> torch.Tensor:
    """``[batch, seq]`` token ids on the model's device (BOS prepended when the tokenizer has one).

    A tensor is taken as token ids already; strings in one list must tokenize to one length."""
    if isinstance(prompts, torch.Tensor):
        ids = prompts if prompts.dim() == 2 else prompts.reshape(1, -1)
        return _within_context(m, ids.to(device=m.device, dtype=torch.long), what)
    texts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not texts:
        raise InputError(f"no {what} given")
    if not all(isinstance(t, str) for t in texts):
        raise InputError(f"{what} must be strings (or a tensor of token ids)")
    try:
        ids = encode_batch(m.tokenizer, texts)
    except InputError as exc:
        raise InputError(f"{what}: {exc}") from None
    return _within_context(m, ids.to(m.device), what)


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
    if isinstance(answers, torch.Tensor):
        ids = answers.reshape(-1).long()
    else:
        items = [answers] if isinstance(answers, (str, int)) else list(answers)
        out = []
        for a in items:
            if isinstance(a, int):
                if not 0 <= a < m.info.vocab_size:
                    raise InputError(f"{what} token id {a} out of range 0..{m.info.vocab_size - 1}")
                out.append(a)
            else:
                try:
                    out.append(single_token_id(m.tokenizer, a))
                except InputError as exc:
                    raise InputError(f"{what}: {exc}") from None
        ids = torch.tensor(out, dtype=torch.long)
    if ids.numel() == 1:
        ids = ids.expand(n)
    if ids.numel() != n:
        raise InputError(f"{ids.numel()} {what}s for {n} prompts; give one for all or one per prompt")
    return ids.to(m.device)


def check_heads(m: LoadedModel, heads: Heads | tuple[int, int]) -> list[tuple[int, int]]:
    """A list of ``(layer, head)`` pairs, each checked against the model's sizes."""
    if isinstance(heads, tuple) and len(heads) == 2 and all(isinstance(x, int) for x in heads):
        heads = [heads]
    out = []
    for item in heads:
        try:
            layer, head = (int(x) for x in item)
        except (TypeError, ValueError):
            raise InputError(f"a head must be a (layer, head) pair, got {item!r}") from None
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
    out = []
    for p in ([positions] if isinstance(positions, int) else positions):
        q = int(p) + seq if int(p) < 0 else int(p)
        if not 0 <= q < seq:
            raise InputError(f"position {p} out of range for prompts of {seq} tokens")
        out.append(q)
    return sorted(set(out))
