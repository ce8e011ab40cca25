"""Metrics of a run's logits, per batch row: logit difference, probability, log-probability, loss, or
a function of your own.

A :class:`Metric` maps ``logits [N, S', vocab]`` and ``rows [N]`` (which prompt each of the N rows
runs: batched patching runs many copies of each prompt) to ``[N]``. ``last_only`` metrics read only the
last position (``S' == 1`` is enough), which lets exact patching unembed the last position only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..checks import check_bool, check_callable
from ..errors import InputError

MetricFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Metric:
    """A named per-row metric; ``metric(logits, rows) -> [N]``; ``rows`` defaults to ``arange(N)``."""

    name: str
    fn: MetricFn
    last_only: bool = True

    def __call__(self, logits: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        if rows is None:
            rows = torch.arange(logits.shape[0], device=logits.device)
        out = self.fn(logits.float(), rows.to(logits.device))
        if out.dim() != 1 or out.shape[0] != logits.shape[0]:
            raise InputError(f"metric {self.name!r} returned shape {tuple(out.shape)}; expected [{logits.shape[0]}]")
        return out


def _last(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, -1] if logits.dim() == 3 else logits


def logit_diff(answer: torch.Tensor, wrong: torch.Tensor) -> Metric:
    """logit(answer) - logit(wrong) at the last position; ``answer``/``wrong`` are ``[B]`` ids per prompt."""
    def fn(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        last = _last(logits)
        a, w = answer.to(last.device)[rows], wrong.to(last.device)[rows]
        return last.gather(1, a[:, None])[:, 0] - last.gather(1, w[:, None])[:, 0]
    return Metric("logit_diff", fn)


def logprob(token: torch.Tensor) -> Metric:
    """log p(token) at the last position (``token`` ``[B]`` ids)."""
    def fn(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        lp = torch.log_softmax(_last(logits), dim=-1)
        return lp.gather(1, token.to(lp.device)[rows][:, None])[:, 0]
    return Metric("logprob", fn)


def prob(token: torch.Tensor) -> Metric:
    """p(token) at the last position (``token`` ``[B]`` ids)."""
    inner = logprob(token).fn
    return Metric("prob", lambda logits, rows: inner(logits, rows).exp())


def loss(ids: torch.Tensor) -> Metric:
    """Mean next-token cross-entropy over the prompt (``ids [B, S]``); needs all positions' logits."""
    if ids.dim() != 2 or ids.shape[1] < 2:
        raise InputError(f"the loss needs prompts of at least 2 tokens (it predicts each next token), got ids of shape "
                         f"{tuple(ids.shape)}; use longer prompts or another metric")

    def fn(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        target = ids.to(logits.device)[rows][:, 1:]
        ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), target, reduction="none")
        return ce.mean(dim=1)
    return Metric("loss", fn, last_only=False)


def user_metric(fn: MetricFn, *, name: str = "user", last_only: bool = True) -> Metric:
    """Your own ``fn(logits [N, S', vocab], rows [N]) -> [N]``; set ``last_only=False`` when it reads
    positions other than the last."""
    check_callable(fn, "user_metric(fn)", optional=False)
    return Metric(name, fn, last_only=check_bool(last_only, "last_only"))
