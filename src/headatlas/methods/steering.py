"""Directional addition / subtraction at chosen heads (steering).

A head's direction is the mean difference of its output ``z`` between two prompt sets (at the last
position, or averaged over positions); steering adds ``alpha * direction`` to the head's ``z`` at every
position (or at ``positions``) during a forward pass or during generation. ``alpha < 0`` subtracts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch

from ..checks import check_choice, check_count, check_finite, check_str_list
from ..errors import InputError, InputTypeError
from ..instrument import HeadEdit, Taps, instrumented
from ..models.loading import LoadedModel
from .ablation import _by_layer
from .inputs import Heads, Prompts, as_loaded, check_heads, check_positions, encode
from .metrics import Metric

Pool = Literal["last", "mean"]


def _pooled_z(m: LoadedModel, prompts: Prompts, pool: Pool, what: str) -> torch.Tensor:
    """Mean over prompts of z pooled over positions: ``[n_layers, n_heads, d_head]``. Prompts of different
    lengths run one by one."""
    texts = prompts if isinstance(prompts, torch.Tensor) else check_str_list(prompts, what)
    batches = [encode(m, t, what) for t in texts] if not isinstance(texts, torch.Tensor) else [encode(m, texts, what)]
    total, count = None, 0
    for ids in batches:
        with torch.no_grad(), instrumented(m, taps=Taps(z=True)) as rec:
            m.model(input_ids=ids, use_cache=False)
            z = rec.z_all()  # [L, B, S, H, D]
        pooled = z[:, :, -1] if pool == "last" else z.mean(dim=2)
        total = pooled.sum(1) if total is None else total + pooled.sum(1)
        count += ids.shape[0]
    return total / count


def head_directions(model: Any, positive: Prompts, negative: Prompts, *, pool: Pool = "last") -> torch.Tensor:
    """``[n_layers, n_heads, d_head]``: mean z over ``positive`` minus mean z over ``negative`` prompts
    (pooled at the last position, or averaged over positions with ``pool="mean"``)."""
    m = as_loaded(model)
    check_choice(pool, "pool", ("last", "mean"))
    return _pooled_z(m, positive, pool, "positive prompts") - _pooled_z(m, negative, pool, "negative prompts")


def steering_edits(m: LoadedModel, directions: torch.Tensor, heads: Heads, alpha: float,
                   positions: Sequence[int] | None = None) -> list[HeadEdit]:
    """``add`` edits of ``alpha * directions[l, h]`` at each chosen head."""
    L, H, D = m.info.n_layers, m.info.n_heads, m.info.d_head
    alpha = check_finite(alpha, "alpha")
    if not isinstance(directions, torch.Tensor):
        raise InputTypeError(f"directions must be a tensor [{L}, {H}, {D}] (see head_directions), got "
                             f"{type(directions).__name__}")
    if directions.is_complex() or not directions.is_floating_point():
        raise InputTypeError(f"directions must be a float tensor, got dtype {directions.dtype}")
    if tuple(directions.shape) != (L, H, D):
        raise InputError(f"directions must be [{L}, {H}, {D}] (layers, heads, d_head), got {tuple(directions.shape)}")
    hs = check_heads(m, heads)
    chosen = directions[[h[0] for h in hs], [h[1] for h in hs]]
    if not bool(torch.isfinite(chosen).all()):
        raise InputError("directions hold NaN or infinite values at the chosen heads; recompute them with head_directions")
    dirs = directions.to(device=m.device, dtype=m.dtype)
    return [HeadEdit(layer, h, "add", value=float(alpha) * dirs[layer, h], positions=positions)
            for layer, h in _by_layer(hs).items()]


def steer(model: Any, prompts: Prompts, directions: torch.Tensor, heads: Heads, alpha: float, *,
          positions: Sequence[int] | None = None) -> torch.Tensor:
    """Logits ``[batch, seq, vocab]`` with ``alpha * direction`` added at ``heads``."""
    m = as_loaded(model)
    ids = encode(m, prompts)
    pos = check_positions(positions, ids.shape[1])
    with torch.no_grad(), instrumented(m, edits=steering_edits(m, directions, heads, alpha, pos)):
        return m.model(input_ids=ids, use_cache=False).logits


def steer_generate(model: Any, prompt: str, directions: torch.Tensor, heads: Heads, alpha: float, *,
                   max_new_tokens: int = 20) -> str:
    """Greedy continuation of ``prompt`` with the heads steered at every position (prompt and new tokens)."""
    m = as_loaded(model)
    if not isinstance(prompt, str):
        raise InputTypeError(f"steer_generate continues one prompt: pass a string, got {type(prompt).__name__}")
    max_new_tokens = check_count(max_new_tokens, "max_new_tokens", minimum=1, maximum=m.info.n_ctx)
    ids = encode(m, prompt)
    pad = getattr(m.tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(m.tokenizer, "eos_token_id", None)
    with torch.no_grad(), instrumented(m, edits=steering_edits(m, directions, heads, alpha)):
        out = m.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                               do_sample=False, pad_token_id=pad)
    return m.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@dataclass
class SteeringEffect:
    """Batch-mean metric per alpha (``alphas[i]`` -> ``values[i]``) and the mean KL divergence of the
    last-position next-token distribution from the unsteered one."""

    metric: str
    alphas: list[float]
    values: list[float]
    kl: list[float]


def steering_effect(model: Any, prompts: Prompts, directions: torch.Tensor, heads: Heads, metric: Metric,
                    alphas: Sequence[float] = (-4.0, -2.0, 0.0, 2.0, 4.0)) -> SteeringEffect:
    """Measure the behaviour change: ``metric`` and KL(unsteered || steered) at the last position per alpha."""
    m = as_loaded(model)
    if not isinstance(metric, Metric):
        raise InputTypeError(f"metric must be a headatlas Metric (logit_diff, logprob, loss, user_metric(fn)), got "
                             f"{type(metric).__name__}")
    if isinstance(alphas, (str, bytes)) or not hasattr(alphas, "__iter__"):
        raise InputTypeError(f"alphas must be a list of numbers, got {type(alphas).__name__}")
    alphas = [check_finite(a, "alpha") for a in alphas]
    if not alphas:
        raise InputError("alphas is empty; pass at least one strength, e.g. alphas=[-4, 0, 4]")
    ids = encode(m, prompts)
    base = steer(m, ids, directions, heads, 0.0)
    base_lp = torch.log_softmax(base[:, -1].float(), -1)
    values, kl = [], []
    for a in alphas:
        logits = base if a == 0 else steer(m, ids, directions, heads, a)
        values.append(float(metric(logits).mean()))
        lp = torch.log_softmax(logits[:, -1].float(), -1)
        kl.append(float((base_lp.exp() * (base_lp - lp)).sum(-1).mean()))
    return SteeringEffect(metric.name, [float(a) for a in alphas], values, kl)
