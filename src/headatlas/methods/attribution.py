"""Attribution patching: a first-order estimate of every head's patching effect from one forward pass
over the source prompts, one forward pass over the base prompts and one backward pass.

effect(l, h) ~= sum over positions and d_head of (z_source - z_base)[l, h] * dMetric/dz_base[l, h]
(Nanda 2023; Syed et al. 2023). The metric is the batch mean, so the estimate is of the batch-mean
metric of the patched run minus that of the base run.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch

from ..instrument import Taps, instrumented
from ..models.loading import LoadedModel
from .engine import logits_of
from .metrics import Metric


@dataclass
class Attribution:
    """``delta [n_layers, n_heads, seq]`` (float32, CPU): estimated change of the batch-mean metric when
    head ``(l, h)`` at one position takes the source run's value; ``base_metric``/``source_metric`` ``[B]``."""

    delta: torch.Tensor
    base_metric: torch.Tensor
    source_metric: torch.Tensor


@contextlib.contextmanager
def _inputs_require_grad(m: LoadedModel) -> Iterator[None]:
    """Make the embedding output require grad, so that z does even when every parameter is frozen."""
    emb = m.model.get_input_embeddings()

    def hook(_mod, _inp, out):
        return out if out.requires_grad else out.detach().requires_grad_(True)

    handle = emb.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def attribution_deltas(m: LoadedModel, base_ids: torch.Tensor, source_ids: torch.Tensor, metric: Metric) -> Attribution:
    """One no-grad forward on ``source_ids``, one forward + backward on ``base_ids`` (both ``[B, S]``)."""
    attn = m.info.attention_layers
    with torch.no_grad(), instrumented(m, taps=Taps(z=True)) as rec:
        src_metric = metric(logits_of(m, source_ids, metric.last_only))
        z_src = [rec.z(l) for l in attn]
    with torch.enable_grad(), _inputs_require_grad(m), instrumented(m, taps=Taps(z=True, grad=True)) as rec:
        per_row = metric(logits_of(m, base_ids, metric.last_only))
        zs = [rec.z(l) for l in attn]
        grads = torch.autograd.grad(per_row.mean(), zs, allow_unused=True)
    H, S = m.info.n_heads, base_ids.shape[1]
    delta = torch.full((m.info.n_layers, H, S), float("nan"))   # NaN rows: a hybrid's layers without heads
    for i, (layer, g) in enumerate(zip(attn, grads)):
        delta[layer] = torch.zeros(H, S) if g is None else \
            ((z_src[i] - zs[i].detach().float()) * g.float()).sum(dim=(0, 3)).T.cpu()
    return Attribution(delta=delta, base_metric=per_row.detach().float(), source_metric=src_metric.float())
