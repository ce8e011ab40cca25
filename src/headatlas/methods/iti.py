"""Inference-time intervention (ITI; Li et al. 2023, arXiv 2306.03341): shift chosen heads' outputs along
their probe direction.

A head's direction is the mass-mean shift of its probed ``z`` (mean of class 1 minus class 0, unit length;
:func:`headatlas.methods.probe_fit.mass_mean_directions`) and ``sigma`` the std of all items' ``z``
projected on it; steering adds ``alpha * sigma * direction`` to the chosen heads' outputs at every position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import InputError, InputTypeError
from ..instrument import HeadEdit
from ..models.loading import LoadedModel
from .inputs import Heads, as_loaded, check_heads
from .probe_fit import ProbeResult


@dataclass
class ITI:
    """An inference-time intervention: ``alpha * sigma[l, h] * direction[l, h]`` added to the output of each
    head in ``heads`` at every position.

    ``directions [L, H, D]`` already holds ``sigma * unit direction``, so it plugs straight into
    :func:`headatlas.methods.steering.steer_generate` / ``steer`` / ``steering_effect``:
    ``steer_generate(model, prompt, it.directions, it.heads, it.alpha)``; or use :meth:`generate`,
    :meth:`logits` and :meth:`edits` (``HeadEdit`` list for ``instrumented(model, edits=...)``)."""

    model: LoadedModel
    heads: list[tuple[int, int]]
    directions: torch.Tensor
    alpha: float

    def edits(self) -> list[HeadEdit]:
        from .steering import steering_edits

        return steering_edits(self.model, self.directions, self.heads, self.alpha)

    def logits(self, prompts: Any) -> torch.Tensor:
        from .steering import steer

        return steer(self.model, prompts, self.directions, self.heads, self.alpha)

    def generate(self, prompt: str, max_new_tokens: int = 20) -> str:
        from .steering import steer_generate

        return steer_generate(self.model, prompt, self.directions, self.heads, self.alpha,
                              max_new_tokens=max_new_tokens)


def iti(model: Any, heads: Heads | int, directions: ProbeResult | torch.Tensor | np.ndarray, alpha: float = 15.0,
        *, sigma: np.ndarray | torch.Tensor | None = None) -> ITI:
    """Build an :class:`ITI` (Li et al. 2023): shift ``heads`` by ``alpha`` standard deviations along their
    direction.

    ``directions``: a :class:`ProbeResult` (its mass-mean ``direction`` and ``sigma``), or a tensor/array
    ``[L, H, D]`` (normalised to unit length per head, scaled by ``sigma [L, H]`` when given, else used
    as is). ``heads``: ``[(layer, head), ...]`` or an int ``k`` = the top-``k`` heads of the ProbeResult."""
    from .arguments import check_iti_args, check_shift

    check_iti_args(heads=heads, directions=directions, alpha=alpha, sigma=sigma)
    m = as_loaded(model)
    L, H, D = m.info.n_layers, m.info.n_heads, m.info.d_head
    alpha = float(alpha)
    if isinstance(directions, ProbeResult):
        if isinstance(heads, int) and not isinstance(heads, bool):
            heads = directions.top(heads)
        vec = torch.as_tensor(directions.direction * directions.sigma[..., None], dtype=torch.float32)
    elif isinstance(directions, (torch.Tensor, np.ndarray)):
        vec = torch.as_tensor(np.asarray(directions.detach().cpu() if isinstance(directions, torch.Tensor)
                                         else directions, dtype=np.float64), dtype=torch.float32)
        if tuple(vec.shape) != (L, H, D):
            raise InputError(f"directions must be [{L}, {H}, {D}] (layers, heads, d_head), got {tuple(vec.shape)}")
        if sigma is not None:
            s = torch.as_tensor(np.asarray(sigma, dtype=np.float64), dtype=torch.float32)
            if tuple(s.shape) != (L, H):
                raise InputError(f"sigma must be [{L}, {H}], got {tuple(s.shape)}")
            norm = vec.norm(dim=-1, keepdim=True)
            vec = torch.where(norm > 0, vec / norm.clamp_min(1e-30), vec) * s[..., None]
    else:
        raise InputTypeError(f"directions must be a ProbeResult or a [{L}, {H}, {D}] tensor, got "
                             f"{type(directions).__name__}")
    if isinstance(heads, int) and not isinstance(heads, bool):
        raise InputError("heads=k (top-k) needs a ProbeResult as directions; pass [(layer, head), ...] otherwise")
    hs = check_heads(m, heads)
    check_shift(alpha, float(vec.abs().max()) if vec.numel() else 0.0, m.dtype)
    return ITI(m, hs, vec, alpha)


__all__ = ["ITI", "iti"]
