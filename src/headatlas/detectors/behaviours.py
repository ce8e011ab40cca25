"""Behavioural metrics for causal checks, shared by detectors whose head types act on the same behaviour.

- :func:`repeat_loss_check`: the next-token loss on the second copy of fresh random-token blocks
  (``[BOS] + block + block``, seeded apart from the detection data), which induction and
  previous-token heads serve (Olsson et al. 2022).

It ablates the labelled heads and layer-matched random sets (:func:`.causal.ablation_check`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..atlas.records import CausalCheck, DetectorResult
from ..tasks.repeats import fit_block_len, repeated_tokens, token_pool
from ..tasks.vocab import bos_id
from .base import ScanConfig
from .causal import ablation_check

if TYPE_CHECKING:
    from ..models import LoadedModel

EVAL_SEED_OFFSET = 1000   # causal-check data never reuses the detection data's seed
EVAL_BLOCK = 50


def _eval_prompts(cfg: ScanConfig) -> int:
    return 6 if cfg.quick else 8


def repeat_loss_check(m: LoadedModel, cfg: ScanConfig, result: DetectorResult, *, kind: str = "mean") -> CausalCheck:
    """Ablate the labelled heads: does the loss on repeated random tokens rise more than for random heads?"""
    pool = token_pool(m.tokenizer).numel()
    block = fit_block_len(pool, m.info.n_ctx, n_repeats=2, want=EVAL_BLOCK, has_bos=bos_id(m.tokenizer) is not None,
                          minimum=8)
    g = torch.Generator().manual_seed(int(cfg.seed) + EVAL_SEED_OFFSET)
    batch = repeated_tokens(m.tokenizer, _eval_prompts(cfg), block, 2, g)
    ids = batch.ids
    start = batch.start + block   # first position of the repeat

    keep = ids.shape[1] - start                  # logits of the repeat positions only

    def repeat_loss(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        lp = torch.log_softmax(logits[:, :-1], -1)
        tgt = ids[rows][:, start + 1:].to(lp.device)
        return -lp.gather(-1, tgt[..., None])[..., 0].mean(-1)

    return ablation_check(m, result.labelled, ids, repeat_loss, metric="repeat loss (nats)", expected="increase",
                          seed=cfg.seed, kind=kind, batch_size=cfg.batch_size, keep_last=keep,
                          description=(f"next-token loss on the repeat of {ids.shape[0]} fresh [BOS] + {block} + {block} "
                                       f"random-token sequences (seed {cfg.seed + EVAL_SEED_OFFSET}), {kind} ablation "
                                       "over those prompts per position"))
