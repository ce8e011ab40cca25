"""Truthfulness heads (Li et al. 2023, ITI, arXiv 2306.03341): heads whose output at the end of a statement
linearly encodes whether the statement is true.

Data: ``tasks/statements.py`` (geography, arithmetic, units, everyday facts; each fact written true and
false, the pair one group; false completions are other items' true completions). The probe split (3/4 of
the pairs) is probed; the held-out 1/4 drives the causal check.

Score: held-out balanced accuracy of a per-head linear probe on ``z`` at the statement's last token (grouped
5-fold CV, :func:`headatlas.methods.probing.probe_features`). Null: the same probe's accuracy with the
labels permuted within each true/false pair (9,999 permutations, same folds); p add-one, BH q. Label: q <=
0.05 and accuracy >= null mean + ``MIN_EFFECT`` (0.1: ten accuracy points above chance, a margin a 64-d
probe on ~230 items does not reach by noise, whose null std is ~0.03).

Causal check (ITI): the top-``K_ITI`` labelled heads are shifted by ``ALPHA`` standard deviations along
their mass-mean truth direction (probe split) at every position; on held-out facts the change in
``log P(true completion | prefix) - log P(false completion | prefix)`` is compared with 99 layer-matched
random head sets from a pool without any labelled (or significant) truthfulness head, each shifted along its
own mass-mean direction with the same alpha (:func:`headatlas.detectors.causal.set_check`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from ...atlas.records import CausalCheck
from ...methods.probing import (ProbeResult, capture_heads, completion_rows, mass_mean_directions,
                               resolve_positions, token_rows)
from ...tasks.statements import pairs_to_records, statement_pairs
from ...tasks.text import check_english, pad_id
from ..base import CausalFn, Detector, DetectorResult, LabelRule, ScanConfig, SharedPass, register
from ..behaviours import Behaviour, HeadOp
from ..causal import BehaviourFn, set_check
from .common import fit_probes, probe_run

if TYPE_CHECKING:
    from ...models import LoadedModel

MIN_EFFECT = 0.1
K_ITI = 16           # heads steered in the causal check (ITI steers 48 of 1024, ~5%)
ALPHA = 5.0          # in sigmas (ITI uses 15 on 7B models; smaller models break at that strength)
QUICK_PAIRS = 24
MAX_HELDOUT = 32     # held-out facts in the causal check (22 steered runs over them)

RULE = LabelRule(statistic="held-out balanced accuracy of a linear probe on z at the statement's last token (true vs false), "
                           "minus its shuffled-label null mean", direction="greater", min_effect=MIN_EFFECT)


@dataclass
class TruthPass:
    features: np.ndarray        # [N, L, H, D]
    labels: np.ndarray
    groups: np.ndarray
    heldout: list[tuple[str, str, str]]   # (prefix, true, false)
    probe: ProbeResult
    n_pairs: int


def _n_arith(cfg: ScanConfig) -> int:
    return 8 if cfg.quick else 60 if cfg.n_prompts is None else max(8, int(cfg.n_prompts))


def _compute(m: "LoadedModel", cfg: ScanConfig) -> TruthPass:
    check_english(m.tokenizer)
    pairs = statement_pairs(seed=cfg.seed, n_arithmetic=_n_arith(cfg), split="probe")
    held = statement_pairs(seed=cfg.seed, n_arithmetic=_n_arith(cfg), split="heldout")
    if cfg.quick:
        pairs, held = pairs[:QUICK_PAIRS], held[:8]
    held = held[:MAX_HELDOUT]
    texts, labels, groups = pairs_to_records(pairs)
    rows = token_rows(m, texts)
    cap = capture_heads(m, rows, resolve_positions(rows, -1), batch_size=max(cfg.batch_size, 16), progress=cfg.progress)
    pr = fit_probes(cap.features, labels, groups, cfg, position=-1, source="headatlas statements (probe split)")
    return TruthPass(cap.features, labels, groups, [(p.prefix, p.true, p.false) for p in held], pr, len(pairs))


TRUTH_PASS: SharedPass[TruthPass] = SharedPass("truthfulness_statements", _compute,
                                               lambda m, cfg: (cfg.seed, cfg.quick, cfg.n_prompts))


def _describe(tp: TruthPass, cfg: ScanConfig) -> tuple[str, dict]:
    return (f"{tp.n_pairs} true/false statement pairs (geography, arithmetic, units, everyday facts; seed {cfg.seed}), "
            f"z at the last token, grouped {tp.probe.n_folds}-fold CV",
            {"n_pairs": tp.n_pairs, "n_heldout_pairs": len(tp.heldout)})


run = probe_run("truthfulness", TRUTH_PASS, RULE, _describe)


def completion_behaviour(m: "LoadedModel", triples: Sequence[tuple[str, str, str]], *, family: str, metric: str,
                         intervention: HeadOp, description: str) -> Behaviour:
    """``log P(good | prefix) - log P(bad | prefix)`` of ``(prefix, good, bad)`` triples (teacher-forced sums over the
    completion's tokens), one unit per triple; two right-padded rows per triple."""
    rows, spans = completion_rows(m, triples)
    W = max(len(r) for r in rows)
    ids = torch.full((len(rows), W), pad_id(m.tokenizer), dtype=torch.long)
    for j, r in enumerate(rows):
        ids[j, :len(r)] = torch.tensor(r)
    first = min(a for a, _ in spans) - 1                 # the first position that predicts a completion token
    keep = W - first
    T = max(b - a for a, b in spans)
    pos = torch.zeros(len(rows), T, dtype=torch.long)
    tok = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T)
    for j, (a, b) in enumerate(spans):
        pos[j, :b - a] = torch.arange(a - 1, b - 1) - first
        tok[j, :b - a] = ids[j, a:b]
        mask[j, :b - a] = 1.0

    def score(logits: torch.Tensor) -> torch.Tensor:             # [k, 2N, keep, V] -> [k, N]
        r = torch.arange(len(rows), device=logits.device)[:, None]
        lp = torch.log_softmax(logits[:, r, pos.to(logits.device)].float(), -1)          # [k, 2N, T, V]
        got = lp.gather(-1, tok.to(lp.device)[None, ..., None].expand(lp.shape[0], -1, -1, 1))[..., 0]
        total = (got * mask.to(lp.device)).sum(-1)
        return total[:, 0::2] - total[:, 1::2]

    return Behaviour(family=family, metric=metric, expected="increase", ids=ids, score=score, keep=keep,
                     intervention=intervention, description=description)


def iti_intervention(features: np.ndarray, labels: np.ndarray, alpha: float) -> HeadOp:
    """ITI as a head intervention: every head's output shifted by ``alpha`` sigmas along its mass-mean direction
    (from ``features [N, L, H, D]`` / ``labels``), at every position."""
    unit, sigma = mass_mean_directions(features, labels)
    vectors = torch.as_tensor(alpha * unit * sigma[..., None], dtype=torch.float32)
    return HeadOp("add", vectors=vectors, kind=f"iti(alpha={alpha:g} sigma)")


def steered(result: DetectorResult, k: int = K_ITI) -> list[tuple[int, int]]:
    """The heads an ITI check steers: the ``k`` labelled heads with the highest probe accuracy."""
    return [(int(a), int(b)) for a, b in sorted(result.labelled, key=lambda lh: -float(result.scores[lh]))[:k]]


def iti_behaviour(shared: SharedPass, *, family: str, metric: str, direction: str, items: str) -> BehaviourFn:
    """The ITI behaviour of a probing detector whose shared pass holds ``features``, ``labels`` and held-out
    ``(prefix, good, bad)`` triples ``heldout``: ``log P(good) - log P(bad)`` on the held-out triples with the set's
    heads shifted ``ALPHA`` sigmas along their mass-mean ``direction`` (``result`` is not read)."""
    def make(m: "LoadedModel", cfg: ScanConfig, result: DetectorResult | None = None) -> Behaviour:
        p = cfg.shared(shared, m)
        return completion_behaviour(
            m, p.heldout, family=family, metric=metric, intervention=iti_intervention(p.features, p.labels, ALPHA),
            description=(f"ITI: the steered heads (the top {K_ITI} labelled by probe accuracy) shifted {ALPHA:g} sigma "
                         f"along their {direction}, on {len(p.heldout)} held-out {items}; random sets: their own "
                         "directions, from a pool without any other labelled or significant head"))
    return make


def iti_check(make: BehaviourFn) -> CausalFn:
    """The causal check of an ITI behaviour: :func:`set_check` on the steered heads (:func:`steered`)."""
    def causal(m: "LoadedModel", cfg: ScanConfig, result: DetectorResult) -> CausalCheck:
        return set_check(m, cfg, result, make(m, cfg, result), heads=steered(result))
    return causal


truth_behaviour = iti_behaviour(TRUTH_PASS, family="true vs false completion",
                                metric="log P(true completion) - log P(false completion)",
                                direction="mass-mean truth direction", items="facts")
causal = iti_check(truth_behaviour)


def example(m: "LoadedModel", cfg: ScanConfig):
    import torch

    p = statement_pairs(seed=cfg.seed, n_arithmetic=8, split="probe")[0]
    return torch.tensor(token_rows(m, [p.text(1)])[0])


DETECTOR = register(Detector(
    name="truthfulness", evidence="probing", metric="true vs false completion", stage="LR", method="probing",
    summary="a linear probe on the head's output tells true from false statements (held-out, grouped CV)",
    citation="Li et al. 2023, Inference-Time Intervention (arXiv 2306.03341)",
    run=run, uses=(TRUTH_PASS,), causal=causal, behaviour=truth_behaviour, example=example, default=False,
    version=3))
