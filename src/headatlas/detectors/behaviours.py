"""What a causal check measures: a :class:`Behaviour` (prompts + metric + expected direction + intervention).

Every detector with a behavioural metric gives its causal check as a Behaviour; the battery
(:func:`headatlas.detectors.causal.set_check`) runs the labelled set, layer-matched random sets and each
labelled head alone on it, all as batch rows of the same forward passes
(:func:`headatlas.detectors.setruns.measure`). Because the prompts and the metric are separate from the head
set, any set can run on any behaviour: "ablate set S, measure every family's metric" is
``measure(m, behaviour, [S, *random_sets])`` for each family's behaviour.

- :class:`Behaviour`: ``ids [B, S]`` (right-padded where prompts differ in length: no attention mask is
  needed, a causal model never lets padding after a position change it), ``keep`` (how many final positions
  the metric reads: only those are unembedded), ``score(logits [k, B, keep, V]) -> [k, U]`` (the metric of
  ``k`` runs over all prompts, per unit: usually a prompt, :func:`per_prompt`), ``expected`` (``"increase"``
  or ``"decrease"``: how the head type's heads move it), ``family`` (a key of
  :data:`headatlas.detectors.base.METRIC_FAMILIES`) and the ``intervention``.
- Interventions: :class:`HeadOp` changes the output ``z`` of every head of the set at every position
  (``"mean"``: its mean over the behaviour's prompts at that position, or over the prompts of the same
  ``mean_groups`` value; ``"zero"``; ``"scale"`` by ``factor``; ``"add"`` ``vectors[l, h]``, steering);
  :class:`ResidualAdd` adds a vector built from the set (``vector(set) -> [C, d_model]``, one per prompt class)
  to the residual stream entering one layer at one position per prompt (function vectors).
- :func:`repeat_loss_behaviour` / :func:`repeat_loss_check`: the next-token loss on the second copy of fresh
  random-token blocks (``[BOS] + block + block``, seeded apart from the detection data), which induction,
  previous-token, duplicate-token and gating heads serve (Olsson et al. 2022).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Sequence, Union

import torch

from ..atlas.records import CausalCheck, DetectorResult
from ..errors import InputError
from ..tasks.repeats import fit_block_len, repeated_tokens, token_pool
from ..tasks.vocab import bos_id
from .base import ScanConfig

if TYPE_CHECKING:
    from ..models import LoadedModel

EVAL_SEED_OFFSET = 1000   # causal-check data never reuses the detection data's seed
EVAL_BLOCK = 50

Head = tuple[int, int]
Score = Callable[[torch.Tensor], torch.Tensor]              # logits [k, B, keep, V] -> [k, U]
RowFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits [n, keep, V], prompts [n]) -> [n]
HEAD_OPS = ("mean", "zero", "scale", "add")


@dataclass(frozen=True, eq=False)
class HeadOp:
    """Change the output of every head of the set, at every position: ``op`` one of :data:`HEAD_OPS`;
    ``factor`` for ``"scale"``; ``vectors [L, H, d_head]`` for ``"add"`` (head ``(l, h)`` gets
    ``vectors[l, h]`` added). ``kind``: the name a :class:`CausalCheck` records (default ``op``)."""

    op: str = "mean"
    factor: float = 0.0
    vectors: torch.Tensor | None = None
    kind: str = ""

    def __post_init__(self) -> None:
        if self.op not in HEAD_OPS:
            raise InputError(f"unknown head intervention {self.op!r}; use one of {', '.join(HEAD_OPS)}")
        if self.op == "add" and (self.vectors is None or self.vectors.dim() != 3):
            raise InputError("the 'add' intervention needs vectors [n_layers, n_heads, d_head]")
        if not self.kind:
            object.__setattr__(self, "kind", self.op)

    def start_layer(self, heads: Sequence[Head]) -> int:
        """The earliest layer the intervention on ``heads`` changes (the run starts there)."""
        return min(int(la) for la, _ in heads)


@dataclass(frozen=True, eq=False)
class ResidualAdd:
    """Add ``vector(heads)[group[b]]`` (``[C, d_model]``) to the residual stream entering ``layer`` at
    position ``position[b]`` of prompt ``b`` (``group``, ``position``: ``[B]``)."""

    layer: int
    vector: Callable[[Sequence[Head]], torch.Tensor]
    group: torch.Tensor
    position: torch.Tensor
    kind: str = "add"

    def start_layer(self, heads: Sequence[Head]) -> int:
        return int(self.layer)


Intervention = Union[HeadOp, ResidualAdd]
MEAN_ABLATION = HeadOp("mean")


@dataclass(frozen=True, eq=False)
class Behaviour:
    """Prompts, a metric, the direction the head type's heads move it, and the intervention (module docstring)."""

    family: str
    metric: str
    expected: str
    ids: torch.Tensor
    score: Score
    keep: int = 1
    intervention: Intervention = MEAN_ABLATION
    description: str = ""
    mean_groups: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.expected not in ("increase", "decrease"):
            raise InputError(f"expected must be 'increase' or 'decrease', got {self.expected!r}")
        if self.ids.dim() != 2 or self.ids.shape[0] < 1:
            raise InputError(f"a behaviour needs prompts [B, S], got ids of shape {tuple(self.ids.shape)}")
        if not 1 <= int(self.keep) <= self.ids.shape[1]:
            raise InputError(f"keep must be 1..{self.ids.shape[1]} positions, got {self.keep}")

    @property
    def n_prompts(self) -> int:
        return int(self.ids.shape[0])

    @property
    def kind(self) -> str:
        return self.intervention.kind

    def with_intervention(self, intervention: Intervention) -> "Behaviour":
        """The same prompts and metric under another intervention (e.g. mean ablation of a steering check's prompts)."""
        return replace(self, intervention=intervention)


def per_prompt(fn: RowFn) -> Score:
    """A :data:`Score` from a per-row metric ``fn(logits [n, keep, V], prompts [n]) -> [n]``: one unit per prompt."""
    def score(logits: torch.Tensor) -> torch.Tensor:
        k, B = logits.shape[:2]
        rows = torch.arange(B, device=logits.device).repeat(k)
        return fn(logits.reshape(k * B, *logits.shape[2:]), rows).reshape(k, B)
    return score


def at_positions(pos: torch.Tensor, seq_len: int, keep: int, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> RowFn:
    """A per-row metric reading one position per prompt: ``pos [B]`` absolute positions (all within the last
    ``keep`` of ``seq_len``); ``fn(logits [n, V], prompts [n]) -> [n]`` on those positions' logits."""
    local = pos - (seq_len - keep)
    if bool((local < 0).any()):
        raise InputError("a read position lies before the kept positions")

    def row(logits: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        p = prompts.cpu()
        lg = logits[torch.arange(len(p), device=logits.device), local[p].to(logits.device)].float()
        return fn(lg, p)
    return row


def token_logit_diff(good: torch.Tensor, bad: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``fn(logits [n, V], prompts [n]) -> [n]``: logit(good[prompt]) - logit(bad[prompt])."""
    def fn(lg: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        r = torch.arange(len(p), device=lg.device)
        return lg[r, good[p].to(lg.device)] - lg[r, bad[p].to(lg.device)]
    return fn


def token_logprob(token: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``fn(logits [n, V], prompts [n]) -> [n]``: log p(token[prompt])."""
    def fn(lg: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        lp = torch.log_softmax(lg, -1)
        return lp.gather(1, token[p].to(lp.device)[:, None])[:, 0]
    return fn


# ------------------------------------------------------------------------------------------ repeat loss

def _eval_prompts(cfg: ScanConfig) -> int:
    return 6 if cfg.quick else 8


def repeat_loss_behaviour(m: LoadedModel, cfg: ScanConfig, result: DetectorResult | None = None, *,
                          kind: str = "mean") -> Behaviour:
    """Next-token loss on the repeat of fresh ``[BOS] + block + block`` random-token sequences (seed + 1000);
    ablating the heads that serve in-context copying raises it (``result`` is not read: the prompts do not depend
    on the labels)."""
    pool = token_pool(m.tokenizer).numel()
    block = fit_block_len(pool, m.info.n_ctx, n_repeats=2, want=EVAL_BLOCK, has_bos=bos_id(m.tokenizer) is not None,
                          minimum=8)
    g = torch.Generator().manual_seed(int(cfg.seed) + EVAL_SEED_OFFSET)
    batch = repeated_tokens(m.tokenizer, _eval_prompts(cfg), block, 2, g)
    ids = batch.ids
    start = batch.start + block                  # first position of the repeat
    keep = ids.shape[1] - start                  # logits of the repeat positions only

    def repeat_loss(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        lp = torch.log_softmax(logits[:, :-1].float(), -1)
        tgt = ids[rows.cpu()][:, start + 1:].to(lp.device)
        return -lp.gather(-1, tgt[..., None])[..., 0].mean(-1)

    return Behaviour(family="repeat loss", metric="repeat loss (nats)", expected="increase", ids=ids,
                     score=per_prompt(repeat_loss), keep=keep, intervention=HeadOp(kind),
                     description=(f"next-token loss on the repeat of {ids.shape[0]} fresh [BOS] + {block} + {block} "
                                  f"random-token sequences (seed {cfg.seed + EVAL_SEED_OFFSET}), {kind} ablation over "
                                  "those prompts per position"))


def repeat_loss_check(m: LoadedModel, cfg: ScanConfig, result: DetectorResult, *, kind: str = "mean") -> CausalCheck:
    """Ablate the labelled heads: does the loss on repeated random tokens rise more than for random heads?"""
    from .causal import set_check

    return set_check(m, cfg, result, repeat_loss_behaviour(m, cfg, kind=kind))
