"""Truthfulness heads (Li et al. 2023, ITI, arXiv 2306.03341): heads whose output at the end of a statement
linearly encodes whether the statement is true.

Data: ``tasks/statements.py`` (geography, arithmetic, units, everyday facts; each fact written true and
false, the pair one group; false completions are other items' true completions). The probe split (3/4 of
the pairs) is probed; the held-out 1/4 drives the causal check.

Score: held-out balanced accuracy of a per-head linear probe on ``z`` at the statement's last token (grouped
5-fold CV, :func:`headatlas.methods.probing.probe_features`). Null: the same probe's accuracy with the
labels permuted within each true/false pair (999 permutations, same folds); p add-one, BH q. Label: q <=
0.05 and accuracy >= null mean + ``MIN_EFFECT`` (0.1: ten accuracy points above chance, a margin a 64-d
probe on ~230 items does not reach by noise, whose null std is ~0.03).

Causal check (ITI): the top-``K_ITI`` labelled heads are shifted by ``ALPHA`` standard deviations along
their mass-mean truth direction (probe split) at every position; on held-out facts the change in
``log P(true completion | prefix) - log P(false completion | prefix)`` is compared with 20 layer-matched
random head sets, each shifted along its own mass-mean direction with the same alpha.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .. import stats
from ..atlas.records import CausalCheck
from ..methods.probing import (ProbeResult, capture_heads, completion_logodds, iti, mass_mean_directions,
                               probe_detector_result, probe_features, resolve_positions, token_rows)
from ..tasks.statements import pairs_to_records, statement_pairs
from ..tasks.text import check_english
from .base import Detector, DetectorResult, LabelRule, ScanConfig, SharedPass, register
from .causal import N_RANDOM, matched_random_sets

if TYPE_CHECKING:
    from ..models import LoadedModel

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
    pr = probe_features(cap.features, labels, groups, n_folds=4 if cfg.quick else 5,
                        n_perm=199 if cfg.quick else 999, seed=cfg.seed, position=-1,
                        source="headatlas statements (probe split)")
    return TruthPass(cap.features, labels, groups, [(p.prefix, p.true, p.false) for p in held], pr, len(pairs))


TRUTH_PASS: SharedPass[TruthPass] = SharedPass("truthfulness_statements", _compute,
                                               lambda m, cfg: (cfg.seed, cfg.quick, cfg.n_prompts))


def run(m: "LoadedModel", cfg: ScanConfig) -> DetectorResult:
    tp = cfg.shared(TRUTH_PASS, m)
    return probe_detector_result(
        "truthfulness", tp.probe, RULE,
        data_description=(f"{tp.n_pairs} true/false statement pairs (geography, arithmetic, units, everyday facts; "
                          f"seed {cfg.seed}), z at the last token, grouped {tp.probe.n_folds}-fold CV"),
        details={"n_pairs": tp.n_pairs, "n_heldout_pairs": len(tp.heldout)})


def iti_check(m: "LoadedModel", heads: Sequence[tuple[int, int]], features: np.ndarray, labels: np.ndarray,
              triples: Sequence[tuple[str, str, str]], *, alpha: float, seed: int, metric: str, description: str,
              n_random: int = N_RANDOM) -> CausalCheck:
    """ITI on ``heads`` vs ``n_random`` layer-matched random sets: each set is shifted by ``alpha`` sigmas along
    its own mass-mean directions (from ``features``/``labels``); the metric is the held-out log-odds of the
    good over the bad completion of ``triples``; effect = mean change (steered - unsteered), expected up."""
    heads = [(int(a), int(b)) for a, b in heads]
    if not heads:
        return CausalCheck(metric=metric, kind="none", note="no heads were labelled: nothing to steer",
                           description=description)
    unit, sigma = mass_mean_directions(features, labels)
    clean = completion_logodds(m, triples)

    def change(hs: list[tuple[int, int]]) -> float:
        it = iti(m, hs, unit, alpha, sigma=sigma)
        return float(np.mean(completion_logodds(m, triples, it.edits()) - clean))

    effect = change(heads)
    rng = stats.rng_for(seed, f"causal:{metric}")
    sets = matched_random_sets(heads, m.info.n_layers, m.info.n_heads, n_random, rng, m.info.attention_layers)
    rand = [change(s) for s in sets]
    hits = sum(1 for r in rand if r >= effect)
    return CausalCheck(metric=metric, kind=f"iti(alpha={alpha:g} sigma)", heads=tuple(heads), effect=effect,
                       random_effects=tuple(rand), p_value=(1 + hits) / (1 + len(rand)), n_prompts=len(triples),
                       baseline=float(np.mean(clean)), expected="increase", description=description)


def causal(m: "LoadedModel", cfg: ScanConfig, result: DetectorResult) -> CausalCheck:
    tp = cfg.shared(TRUTH_PASS, m)
    top = sorted(result.labelled, key=lambda lh: -float(result.scores[lh]))[:K_ITI]
    return iti_check(m, top, tp.features, tp.labels, tp.heldout, alpha=ALPHA, seed=cfg.seed + 1000,
                     metric="log P(true completion) - log P(false completion)",
                     description=(f"ITI: top-{len(top)} truthfulness heads shifted {ALPHA:g} sigma along their "
                                  f"mass-mean truth direction, on {len(tp.heldout)} held-out facts, vs "
                                  f"{N_RANDOM} layer-matched random head sets with their own directions"))


def example(m: "LoadedModel", cfg: ScanConfig):
    import torch

    p = statement_pairs(seed=cfg.seed, n_arithmetic=8, split="probe")[0]
    return torch.tensor(token_rows(m, [p.text(1)])[0])


DETECTOR = register(Detector(
    name="truthfulness", stage="LR", method="probing",
    summary="a linear probe on the head's output tells true from false statements (held-out, grouped CV)",
    citation="Li et al. 2023, Inference-Time Intervention (arXiv 2306.03341)",
    run=run, uses=(TRUTH_PASS,), causal=causal, example=example, default=False))
