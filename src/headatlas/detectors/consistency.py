"""Consistency heads (Yang et al. 2024, arXiv 2501.11041): heads whose output linearly predicts whether the
model answers paraphrases of one question the same way.

Data (authored): paraphrase sets of one question, three templates each — sums of two numbers 1-9
(``"{a} + {b} ="``, ``"The sum of {a} and {b} is"``, ``"{a} plus {b} equals"``) and capitals
(``"The capital of {c} is"``, ``"The capital city of {c} is"``, ``"{c}'s capital is"``). The model's
answer to a paraphrase is its greedy next token (stripped, lower-cased); a set is *consistent* when all
three answers agree. Every paraphrase is one item with its set's label, the set is its group (grouped CV;
the null permutes the labels of whole sets, within a domain); features: ``z`` at each prompt's last token.

Score: held-out balanced probe accuracy; null: set labels permuted across sets (999 draws); BH q; label: q <= 0.05 and
accuracy >= null mean + 0.1. Refuses ("not found: ...") with fewer than ``MIN_SETS`` sets in a class.

Causal check: on held-out sets (two-digit sums, seed + 1000), mean-ablating the labelled heads (each
template's own position means) lowers the agreement of the three paraphrases' next-token distributions
(mean pairwise Bhattacharyya coefficient) more than 20 layer-matched random head sets.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .. import stats
from ..atlas.records import CausalCheck
from ..errors import InputError
from ..methods.probing import ProbeResult, capture_heads, probe_detector_result, probe_features, token_rows
from ..tasks.statements import CAPITALS
from ..tasks.text import check_english
from .base import NOT_FOUND, Detector, DetectorResult, LabelRule, ScanConfig, SharedPass, register
from .causal import N_RANDOM, _edits, _position_means, matched_random_sets

if TYPE_CHECKING:
    from ..models import LoadedModel

SUM_TEMPLATES = ("{a} + {b} =", "The sum of {a} and {b} is", "{a} plus {b} equals")
CAPITAL_TEMPLATES = ("The capital of {c} is", "The capital city of {c} is", "{c}'s capital is")
MIN_SETS = 8
EVAL_SEED_OFFSET = 1000

RULE = LabelRule(statistic="held-out balanced accuracy of a linear probe on z at the question's last token predicting whether "
                           "the model answers all paraphrases alike, minus its shuffled-label null mean",
                 direction="greater", min_effect=0.1)


def paraphrase_sets(quick: bool = False) -> list[list[str]]:
    sums = [[t.format(a=a, b=b) for t in SUM_TEMPLATES] for a in range(1, 10) for b in range(1, 10)]
    caps = [[t.format(c=c) for t in CAPITAL_TEMPLATES] for c, _ in CAPITALS]
    sets = sums + caps
    if quick:
        sets = sets[::6]
    return sets


@dataclass
class ConsistencyPass:
    probe: ProbeResult
    consistent: np.ndarray       # [n_sets]
    n_sets: int


def _answer(tok, tid: int) -> str:
    return tok.decode([tid]).strip().lower()


def _compute(m: "LoadedModel", cfg: ScanConfig) -> ConsistencyPass:
    check_english(m.tokenizer)
    sets = paraphrase_sets(cfg.quick)
    texts = [t for s in sets for t in s]
    rows = token_rows(m, texts)
    last = np.array([len(r) - 1 for r in rows])
    cap = capture_heads(m, rows, last, batch_size=max(cfg.batch_size, 16), argmax_at=[[q] for q in last],
                        progress=cfg.progress)
    answers = [_answer(m.tokenizer, a[0]) for a in cap.argmax]
    k = len(SUM_TEMPLATES)
    consistent = np.array([int(len(set(answers[i * k:(i + 1) * k])) == 1) for i in range(len(sets))])
    c = int(consistent.sum())
    need = 3 if cfg.quick else MIN_SETS
    if min(c, len(sets) - c) < need:
        raise InputError(f"{NOT_FOUND}the model answers all three paraphrases alike in {c}/{len(sets)} question sets; "
                         f"a probe needs at least {need} consistent and {need} inconsistent sets")
    labels = np.repeat(consistent, k)
    groups = np.repeat(np.arange(len(sets)), k)
    domain = np.repeat([int("+" not in s[0]) for s in sets], k)      # sums 0, capitals 1
    pr = probe_features(cap.features, labels, groups, n_folds=4 if cfg.quick else 5, n_perm=199 if cfg.quick else 999,
                        seed=cfg.seed, position=-1, source="paraphrase sets", strata=domain)
    return ConsistencyPass(pr, consistent, len(sets))


CONS_PASS: SharedPass[ConsistencyPass] = SharedPass("consistency_paraphrases", _compute,
                                                    lambda m, cfg: (cfg.seed, cfg.quick))


def run(m: "LoadedModel", cfg: ScanConfig) -> DetectorResult:
    cp = cfg.shared(CONS_PASS, m)
    return probe_detector_result(
        "consistency", cp.probe, RULE,
        data_description=(f"{cp.n_sets} paraphrase sets x 3 (sums of 1-9, capitals); {int(cp.consistent.sum())} "
                          "consistent (all greedy answers agree); z at the last token"),
        details={"consistent_sets": int(cp.consistent.sum()), "n_sets": cp.n_sets})


def _agreement(m: "LoadedModel", batches: list[torch.Tensor], means: list, heads: list[tuple[int, int]]) -> np.ndarray:
    """``[n_sets]`` mean pairwise Bhattacharyya coefficient of the templates' next-token distributions."""
    from ..instrument import instrumented

    probs = []
    for ids, mu in zip(batches, means):
        edits = _edits(heads, "mean", mu) if heads else []
        with torch.no_grad(), instrumented(m, edits=edits):
            logits = m.model(input_ids=ids.to(m.device), use_cache=False, logits_to_keep=1).logits[:, -1].float()
        probs.append(torch.softmax(logits, -1).cpu())
    bc = [(probs[i].sqrt() * probs[j].sqrt()).sum(-1) for i in range(len(probs)) for j in range(i + 1, len(probs))]
    return torch.stack(bc).mean(0).double().numpy()


def causal(m: "LoadedModel", cfg: ScanConfig, result: DetectorResult) -> CausalCheck:
    metric = "paraphrase agreement (mean pairwise Bhattacharyya coefficient of next-token distributions)"
    heads = [(int(a), int(b)) for a, b in result.labelled]
    desc = ("mean-ablate the labelled heads on 24 held-out two-digit sum paraphrase sets (seed + 1000) vs "
            f"{N_RANDOM} layer-matched random sets")
    if not heads:
        return CausalCheck(metric=metric, kind="none", note="no heads were labelled: nothing to ablate", description=desc)
    rng = random.Random(f"consistency:{cfg.seed + EVAL_SEED_OFFSET}")
    pairs = [(rng.randint(10, 49), rng.randint(10, 49)) for _ in range(24)]
    batches = []
    for t in SUM_TEMPLATES:
        rows = token_rows(m, [t.format(a=a, b=b) for a, b in pairs])
        if len({len(r) for r in rows}) != 1:
            raise InputError("the held-out paraphrases of one template tokenize to different lengths for this tokenizer")
        batches.append(torch.tensor(rows))
    means = [_position_means(m, ids, 16) for ids in batches]
    clean = _agreement(m, batches, means, [])
    effect = float(np.mean(_agreement(m, batches, means, heads) - clean))
    sets = matched_random_sets(heads, m.info.n_layers, m.info.n_heads, N_RANDOM,
                               stats.rng_for(cfg.seed + EVAL_SEED_OFFSET, "causal:consistency"), m.info.attention_layers)
    rand = [float(np.mean(_agreement(m, batches, means, s) - clean)) for s in sets]
    hits = sum(1 for r in rand if r <= effect)
    return CausalCheck(metric=metric, kind="mean", heads=tuple(heads), effect=effect, random_effects=tuple(rand),
                       p_value=(1 + hits) / (1 + len(rand)), n_prompts=len(pairs), baseline=float(np.mean(clean)),
                       expected="decrease", description=desc)


DETECTOR = register(Detector(
    name="consistency", stage="LR", method="probing",
    summary="a linear probe on the head's output predicts whether the model answers paraphrases of a question alike",
    citation="Yang et al. 2024, semantic consistency via model editing (arXiv 2501.11041)",
    run=run, uses=(CONS_PASS,), causal=causal, default=False))
