"""Successor heads (Gould, Ong, Ogden, Conmy 2024, "Successor Heads", arXiv 2312.09230): heads whose
OV circuit maps an item of an ordinal sequence to the next one (Monday -> Tuesday, 3 -> 4, C -> D).

Weights only (no prompts). Data: ``tasks.ordinal`` families (digits, numbers 10-30, number words,
ordinals, days, months, letters) as single tokens of the model's tokenizer.

Score (Gould's succession score): for every item ``t`` with a successor ``s(t)`` in its family, take
``t``'s MLP0-effective embedding (:func:`headatlas.methods.ov_circuit.effective_embeddings`: the
residual after block 0 for ``t`` alone, norms as the model applies them), pass it through head
``(l, h)``'s OV circuit (layer ``l``'s input norm, value and output projections) and read the logits
of the family's tokens through the final norm's weight and the unembedding. The head succeeds on
``t`` when ``s(t)`` gets the highest logit among the family. Score = fraction of items it succeeds on.

Null: the family's order is shuffled (one random bijection of each family's items per draw, shared by
all heads): the statistic is recomputed on the same pair structure of a randomly ordered sequence, so
a head that prefers one fixed token, or copies its input, keeps its chance rate. Effect = score minus
the head's null mean (fraction of items above the chance a random ordering gives); p = add-one
permutation p over ``stats.N_PERM`` draws, BH q over all heads. Label: q <= 0.05 and effect >=
``MIN_EFFECT`` (0.2: one item in five beyond chance, a clear OV preference for successors; Gould's
GPT-2 successor head scores ~0.9 on a chance rate ~0.1).

Causal check: on held-out prompts of consecutive items (``" Monday Tuesday Wednesday"``), mean-ablating
the labelled heads lowers log p(next item) more than layer-matched random sets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ... import stats
from ...atlas.records import CausalCheck
from ...errors import InputError
from ...methods.ov_circuit import effective_embeddings, ov_logits, ov_outputs, ov_z
from ...tasks.ordinal import Family, drop_report, ordinal_families, sequence_prompts
from ...tasks.vocab import bos_id
from ..base import Detector, DetectorResult, LabelRule, ScanConfig, register
from ..causal import ablation_check

if TYPE_CHECKING:
    from ...models import LoadedModel

MIN_EFFECT = 0.2
PROMPT_LEN = 3          # items shown before the one to predict in the causal check
EVAL_SEED_OFFSET = 1000
RULE = LabelRule(statistic="succession score (fraction of ordinal items whose successor gets the top OV logit "
                           "within the family) minus its shuffled-order null mean", direction="greater",
                 min_effect=MIN_EFFECT)


def family_argmax(m: LoadedModel, families: list[Family]) -> list[np.ndarray]:
    """Per family ``[L, H, n_items]``: the index (within the family) of the token each head's OV circuit
    promotes most from each item's effective embedding."""
    ids = torch.tensor([i for f in families for i in f.ids])
    x = effective_embeddings(m, ids)
    out = ov_outputs(m, ov_z(m, x))                                          # [L, N, H, M]
    res, start = [], 0
    for f in families:
        n = len(f.ids)
        logits = ov_logits(m, out[:, start:start + n], torch.tensor(f.ids))  # [L, n, H, n]
        res.append(logits.argmax(-1).permute(0, 2, 1).numpy())              # [L, H, n]
        start += n
    return res


def successes(argmax: list[np.ndarray], families: list[Family]) -> np.ndarray:
    """``[L, P, H]``: 1 where the head's top token for pair ``p``'s item is its successor (P pairs in all)."""
    cols = []
    for a, f in zip(argmax, families):
        for i, j in f.pairs:
            cols.append((a[:, :, i] == j).astype(float))                     # [L, H]
    return np.stack(cols, axis=1)


def shuffled_null(argmax: list[np.ndarray], families: list[Family], n: int, rng: np.random.Generator) -> np.ndarray:
    """``[R, L, H]``: the succession score when each family's items are relabelled by a random bijection."""
    L, H = argmax[0].shape[:2]
    total = np.zeros((n, L, H))
    n_pairs = 0
    for a, f in zip(argmax, families):
        k = len(f.ids)
        sigma = np.argsort(rng.random((n, k)), axis=1)                        # [R, k]
        for i, j in f.pairs:
            got = a[:, :, sigma[:, i]]                                        # [L, H, R]
            total += np.moveaxis(got == sigma[None, None, :, j], -1, 0)
            n_pairs += 1
    return total / n_pairs


def successor_result(argmax: list[np.ndarray], families: list[Family], *, seed: int,
                     n_perm: int = stats.N_PERM) -> DetectorResult:
    per = successes(argmax, families)                                        # [L, P, H]
    draws = shuffled_null(argmax, families, n_perm, stats.rng_for(seed, "successor:shuffle"))
    centre = draws.mean(0)                                                   # [L, H]
    scores = per.mean(1)
    tested = stats.evaluate(per - centre[:, None, :], draws - centre[None], RULE, seed=seed, salt="successor",
                            scores=scores)
    by_family = {f.name: (successes([a], [f]).mean(1)) for a, f in zip(argmax, families)}
    top = np.argsort(-scores, axis=None)[:5]
    H = scores.shape[1]
    details = {"families": drop_report(families), "n_pairs": int(per.shape[1]),
               "top_heads": [{"head": f"L{i // H}H{i % H}", "score": float(scores.flat[i]),
                              "by_family": {k: float(v.flat[i]) for k, v in by_family.items()}} for i in top],
               "effective_embedding": "residual after block 0 for the token alone (attention 0 attends to itself)"}
    return stats.result("successor", tested, scores=scores, rule=RULE,
                        data_description=(f"{per.shape[1]} successor pairs from {len(families)} ordinal families "
                                          f"({', '.join(f.name for f in families)}); weights only"),
                        null_description=(f"each family's order shuffled (random bijection of its items per draw, shared "
                                          f"by all heads; {tested.n_null} draws); effect = score - null mean"),
                        n_prompts=per.shape[1], seed=seed, details=details,
                        null_mean=centre, null_std=draws.std(0))


def run(m: LoadedModel, cfg: ScanConfig) -> DetectorResult:
    families = ordinal_families(m.tokenizer)
    argmax = family_argmax(m, families)
    cfg.tick(1, 1)
    return successor_result(argmax, families, seed=cfg.seed)


def _prompts(m: LoadedModel, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows, targets, _ = sequence_prompts(m.tokenizer, ordinal_families(m.tokenizer), n, length=PROMPT_LEN, seed=seed)
    ids = torch.tensor(rows)
    bos = bos_id(m.tokenizer)
    if bos is not None:
        ids = torch.cat([torch.full((ids.shape[0], 1), bos, dtype=ids.dtype), ids], dim=1)
    return ids, torch.tensor(targets)


def successor_check(m: LoadedModel, cfg: ScanConfig, result: DetectorResult, *, kind: str = "mean") -> CausalCheck:
    """Ablate the labelled heads: does log p(next item) of held-out ordinal prompts fall more than for random heads?"""
    seed = cfg.seed + EVAL_SEED_OFFSET
    ids, targets = _prompts(m, 16 if cfg.quick else 48, seed)

    def logp_next(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        lp = torch.log_softmax(logits[:, -1].float(), -1)
        return lp.gather(1, targets[rows.cpu()].to(lp.device)[:, None])[:, 0]

    return ablation_check(m, result.labelled, ids, logp_next, metric="log p(next ordinal item)", expected="decrease",
                          seed=cfg.seed, kind=kind, batch_size=max(cfg.batch_size, 16), keep_last=1,
                          description=(f"log p of the next item after {PROMPT_LEN} consecutive items of an ordinal "
                                       f"family (e.g. ' Monday Tuesday Wednesday' -> ' Thursday'), {ids.shape[0]} "
                                       f"held-out prompts (seed {seed}), {kind} ablation per position"))


def _example(m: LoadedModel, cfg: ScanConfig) -> torch.Tensor:
    try:
        return _prompts(m, 1, cfg.seed)[0][0]
    except InputError:      # no family runs 4 items long after a space: show the first family's tokens in order
        return torch.tensor(ordinal_families(m.tokenizer)[0].ids)


DETECTOR = register(Detector(
    name="successor", evidence="dla", metric="successor log-prob", stage="LR", method="weights-only OV circuit scoring (succession score)",
    summary="the head's OV circuit maps an ordinal item (Monday, 3, C) to its successor (Tuesday, 4, D)",
    citation="Gould et al. 2024, arXiv 2312.09230", run=run, causal=successor_check, example=_example,
))

__all__ = ["DETECTOR", "family_argmax", "shuffled_null", "successes", "successor_result"]
