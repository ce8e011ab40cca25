"""Ablation of any set of heads: zero, mean (over reference prompts) or resample (from reference prompts).

- ``zero``: the head's output ``z`` is 0 (its write to the residual stream is the output projection's bias,
  if any).
- ``mean``: ``z`` is its mean over the reference prompts: per position when the reference prompts have the
  prompts' token length (the usual choice for templated tasks; reference == prompts gives a no-op for a
  single prompt), else the mean over all reference tokens. The default reference is the prompts themselves.
- ``resample``: each prompt gets the head's ``z`` from one reference prompt drawn at random (seeded); the
  reference must have the prompts' token length.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch

from ..checks import check_choice, check_seed
from ..errors import InputError, InputTypeError
from ..instrument import Edit, HeadEdit, Taps, instrumented
from ..models.loading import LoadedModel
from .inputs import Heads, Prompts, as_loaded, check_heads, check_positions, encode
from .metrics import Metric, loss

Kind = Literal["zero", "mean", "resample"]


def _by_layer(heads: list[tuple[int, int]]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = defaultdict(list)
    for layer, head in heads:
        if head not in out[layer]:
            out[layer].append(head)
    return dict(out)


def ablation_edits(m: LoadedModel, heads: list[tuple[int, int]], ids: torch.Tensor, kind: Kind, *,
                   reference: torch.Tensor | None = None, positions: list[int] | None = None,
                   seed: int = 0) -> list[Edit]:
    """The edits that ablate ``heads`` for prompts ``ids [B, S]`` (reference ``[B_ref, S_ref]``)."""
    layers = _by_layer(heads)
    if kind == "zero":
        return [HeadEdit(layer, hs, "zero", positions=positions) for layer, hs in layers.items()]
    if kind not in ("mean", "resample"):
        raise InputError(f"unknown ablation kind {kind!r}; use zero, mean or resample")
    ref = ids if reference is None else reference
    if kind == "resample" and reference is None:
        raise InputError("resample ablation needs reference prompts to draw head outputs from")
    with torch.no_grad(), instrumented(m, taps=Taps(z=True, layers=sorted(layers))) as rec:
        m.model(input_ids=ref, use_cache=False)
    same_len = ref.shape[1] == ids.shape[1]
    edits: list[Edit] = []
    gen = torch.Generator().manual_seed(seed)
    draw = torch.randint(ref.shape[0], (ids.shape[0],), generator=gen).to(ids.device)
    for layer, hs in layers.items():
        z = rec.z(layer)  # [B_ref, S_ref, H, D]
        if kind == "mean" and same_len:
            edits.append(HeadEdit(layer, hs, "patch", source=z.mean(0, keepdim=True), positions=positions))
        elif kind == "mean":
            edits.append(HeadEdit(layer, hs, "set", value=z.mean(dim=(0, 1))[hs], positions=positions))
        else:
            if not same_len:
                raise InputError(f"resample ablation needs reference prompts of the prompts' length "
                                 f"({ids.shape[1]} tokens), got {ref.shape[1]}")
            edits.append(HeadEdit(layer, hs, "patch", source=z, source_rows=draw, positions=positions))
    return edits


def ablate_heads(model: Any, heads: Heads, prompts: Prompts, *, kind: Kind = "zero", reference: Prompts | None = None,
                 positions: Sequence[int] | None = None, seed: int = 0) -> torch.Tensor:
    """Logits ``[batch, seq, vocab]`` (float, on the model's device) of the prompts with ``heads``
    (``[(layer, head), ...]``) ablated at all positions or at ``positions``.

    ``kind``: ``"zero"``, ``"mean"`` (over ``reference`` prompts, default the prompts themselves; per
    position when lengths match) or ``"resample"`` (each prompt takes the heads' output of a random
    reference prompt, seeded by ``seed``). Use :func:`ablation_effect` for a metric before and after.
    """
    m = as_loaded(model)
    kind = check_choice(kind, "ablation kind", ("zero", "mean", "resample"))  # type: ignore[assignment]
    seed = check_seed(seed)
    hs = check_heads(m, heads)
    ids = encode(m, prompts)
    ref = None if reference is None else encode(m, reference, "reference prompts")
    if kind == "mean" and ref is None and ids.shape[0] < 2:
        raise InputError("mean ablation over the prompts themselves needs at least 2 prompts (the mean of one prompt "
                         "is itself: a no-op); pass reference prompts to take the mean over")
    pos = check_positions(positions, ids.shape[1])
    edits = ablation_edits(m, hs, ids, kind, reference=ref, positions=pos, seed=seed)
    with torch.no_grad(), instrumented(m, edits=edits):
        return m.model(input_ids=ids, use_cache=False).logits


@dataclass
class AblationEffect:
    """Batch-mean metric before (``base``) and after (``ablated``) the ablation, and per prompt."""

    metric: str
    base: float
    ablated: float
    per_prompt_base: list[float]
    per_prompt_ablated: list[float]

    @property
    def change(self) -> float:
        return self.ablated - self.base


def ablation_effect(model: Any, heads: Heads, prompts: Prompts, metric: Metric | None = None, *, kind: Kind = "zero",
                    reference: Prompts | None = None, positions: Sequence[int] | None = None,
                    seed: int = 0) -> AblationEffect:
    """The metric (default: the prompts' next-token loss) without and with the ablation."""
    m = as_loaded(model)
    if metric is not None and not isinstance(metric, Metric):
        raise InputTypeError(f"metric must be a headatlas Metric (logit_diff, logprob, loss, user_metric(fn)), got "
                             f"{type(metric).__name__}")
    ids = encode(m, prompts)
    met = metric or loss(ids)
    with torch.no_grad():
        base = met(m.model(input_ids=ids, use_cache=False).logits)
    ablated = met(ablate_heads(m, heads, ids, kind=kind, reference=reference, positions=positions, seed=seed))
    return AblationEffect(met.name, float(base.mean()), float(ablated.mean()), base.tolist(), ablated.tolist())
