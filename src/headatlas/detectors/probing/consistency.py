"""Consistency heads (Yang et al. 2024, arXiv 2501.11041): heads whose output linearly predicts whether the
model answers paraphrases of one question the same way.

Data (authored): paraphrase sets of one question, three templates each — sums of two numbers 1-9
(``"{a} + {b} ="``, ``"The sum of {a} and {b} is"``, ``"{a} plus {b} equals"``) and capitals
(``"The capital of {c} is"``, ``"The capital city of {c} is"``, ``"{c}'s capital is"``). The model's
answer to a paraphrase is its greedy next token (stripped, lower-cased); a set is *consistent* when all
three answers agree. Every paraphrase is one item with its set's label, the set is its group (grouped CV;
the null permutes the labels of whole sets, within a domain); features: ``z`` at each prompt's last token.

Score: held-out balanced probe accuracy; null: set labels permuted across sets (9,999 draws); BH q; label: q <= 0.05 and
accuracy >= null mean + 0.1. Refuses ("not found: ...") with fewer than ``MIN_SETS`` sets in a class.

Causal check: on held-out sets (two-digit sums, seed + 1000), mean-ablating the labelled heads (each
template's own position means) lowers the agreement of the three paraphrases' next-token distributions
(mean pairwise Bhattacharyya coefficient) more than 99 layer-matched random head sets from the clean pool.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ...atlas.records import CausalCheck
from ...errors import InputError
from ...methods.probing import ProbeResult, capture_heads, token_rows
from ...tasks.statements import CAPITALS
from ...tasks.text import check_english, pad_id
from ..base import NOT_FOUND, Detector, DetectorResult, LabelRule, ScanConfig, SharedPass, register
from ..behaviours import Behaviour, HeadOp
from ..causal import set_check
from .common import fit_probes, probe_run

if TYPE_CHECKING:
    from ...models import LoadedModel

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
    pr = fit_probes(cap.features, labels, groups, cfg, position=-1, source="paraphrase sets", strata=domain)
    return ConsistencyPass(pr, consistent, len(sets))


CONS_PASS: SharedPass[ConsistencyPass] = SharedPass("consistency_paraphrases", _compute,
                                                    lambda m, cfg: (cfg.seed, cfg.quick))


def _describe(cp: ConsistencyPass, cfg: ScanConfig) -> tuple[str, dict]:
    return (f"{cp.n_sets} paraphrase sets x 3 (sums of 1-9, capitals); {int(cp.consistent.sum())} consistent (all "
            "greedy answers agree); z at the last token", {"consistent_sets": int(cp.consistent.sum()), "n_sets": cp.n_sets})


run = probe_run("consistency", CONS_PASS, RULE, _describe)


def agreement_behaviour(m: "LoadedModel", cfg: ScanConfig, result: DetectorResult | None = None) -> Behaviour:
    """Paraphrase agreement on 24 held-out two-digit sums (seed + 1000): per sum, the mean pairwise Bhattacharyya
    coefficient of the three templates' next-token distributions; mean ablation uses each template's own
    position means (``mean_groups``)."""
    rng = random.Random(f"consistency:{cfg.seed + EVAL_SEED_OFFSET}")
    pairs = [(rng.randint(10, 49), rng.randint(10, 49)) for _ in range(24)]
    rows, group = [], []
    for t_i, t in enumerate(SUM_TEMPLATES):
        tr = token_rows(m, [t.format(a=a, b=b) for a, b in pairs])
        if len({len(r) for r in tr}) != 1:
            raise InputError("the held-out paraphrases of one template tokenize to different lengths for this tokenizer")
        rows += tr
        group += [t_i] * len(tr)
    W = max(len(r) for r in rows)
    ids = torch.full((len(rows), W), pad_id(m.tokenizer), dtype=torch.long)
    for j, r in enumerate(rows):
        ids[j, :len(r)] = torch.tensor(r)
    last = torch.tensor([len(r) - 1 for r in rows])
    keep = W - int(last.min())
    n_t, n = len(SUM_TEMPLATES), len(pairs)

    def score(logits: torch.Tensor) -> torch.Tensor:             # [k, 3 * 24, keep, V] -> [k, 24]
        r = torch.arange(len(rows), device=logits.device)
        p = torch.softmax(logits[:, r, (last - (W - keep)).to(logits.device)].float(), -1)
        root = p.sqrt().reshape(p.shape[0], n_t, n, -1)
        bc = [(root[:, i] * root[:, j]).sum(-1) for i in range(n_t) for j in range(i + 1, n_t)]
        return torch.stack(bc).mean(0)

    return Behaviour(family="paraphrase agreement", metric=("paraphrase agreement (mean pairwise Bhattacharyya "
                                                            "coefficient of next-token distributions)"),
                     expected="decrease", ids=ids, score=score, keep=keep, intervention=HeadOp("mean"),
                     mean_groups=torch.tensor(group),
                     description=(f"mean-ablate the labelled heads (each template's own position means) on {n} held-out "
                                  "two-digit sum paraphrase sets (seed + 1000)"))


def causal(m: "LoadedModel", cfg: ScanConfig, result: DetectorResult) -> CausalCheck:
    return set_check(m, cfg, result, agreement_behaviour(m, cfg, result))


DETECTOR = register(Detector(
    name="consistency", evidence="probing", metric="paraphrase agreement", stage="LR", method="probing",
    summary="a linear probe on the head's output predicts whether the model answers paraphrases of a question alike",
    citation="Yang et al. 2024, semantic consistency via model editing (arXiv 2501.11041)",
    run=run, uses=(CONS_PASS,), causal=causal, behaviour=agreement_behaviour, default=False, version=3))
