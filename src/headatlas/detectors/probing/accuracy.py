"""Accuracy heads (probing variant of Yin et al. 2024 LoFiT, arXiv 2406.01563, and Guo et al. SIGIR 2024
ASMR): heads whose output, before the model answers, linearly predicts whether its answer will be right.

Data: two-digit additions with a two-shot prefix (``"23 + 41 = 64\\n15 + 32 = 47\\n{a} + {b} ="``; sums below
100). Label: the model's own greedy answer is correct (teacher forcing: every answer token is the argmax
given the ones before it, which is exactly when greedy decoding writes the answer). One forward per batch
gives both the label and every head's ``z`` at the prompt's last token (``=``). Each problem is its own group.

Score: held-out balanced probe accuracy (grouped 5-fold CV); null: labels permuted across problems of one difficulty stratum (carry x tens digit of the sum; 999 draws);
p add-one, BH q; label: q <= 0.05 and accuracy >= null mean + 0.1. Refuses ("not found: ...") when either
class has fewer than ``MIN_CLASS`` problems or 15% (a model that solves none, or all, gives a probe nothing
to predict). LoFiT's fine-tuned head scalers are not implemented.

Causal check: mean-ablating the labelled heads lowers the mean log-prob of the correct answer's tokens on
held-out problems (seed + 1000, the prompts' modal token length) more than 20 layer-matched random sets.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ...atlas.records import CausalCheck
from ...errors import InputError
from ...methods.probing import ProbeResult, capture_heads, probe_detector_result, probe_features
from ...tasks.text import check_english
from ...tasks.vocab import bos_id
from ..base import NOT_FOUND, Detector, DetectorResult, LabelRule, ScanConfig, SharedPass, register
from ..causal import ablation_check

if TYPE_CHECKING:
    from ...models import LoadedModel

SHOTS = "23 + 41 = 64\n15 + 32 = 47\n"
MIN_CLASS = 12
MIN_FRACTION = 0.15
N_ITEMS = 240
QUICK_ITEMS = 40
EVAL_SEED_OFFSET = 1000

RULE = LabelRule(statistic="held-out balanced accuracy of a linear probe on z at '=' predicting whether the model's greedy "
                           "sum is correct, minus its shuffled-label null mean", direction="greater", min_effect=0.1)


def problems(n: int, seed: int) -> list[tuple[int, int]]:
    """``n`` distinct seeded pairs ``(a, b)``, 10 <= a, b, a + b <= 99."""
    rng = random.Random(f"accuracy:{seed}")
    out, seen = [], set()
    while len(out) < n:
        a, b = rng.randint(10, 89), rng.randint(10, 89)
        if a + b <= 99 and (a, b) not in seen:
            seen.add((a, b))
            out.append((a, b))
    return out


def difficulty(a: int, b: int) -> int:
    """The null's stratum of ``a + b``: carry or not x tens digit of the sum (labels are permuted only among
    problems of one stratum, so a head that merely encodes how hard the problem is gains nothing)."""
    return int((a % 10) + (b % 10) >= 10) * 10 + (a + b) // 10


def encode_problem(m: "LoadedModel", a: int, b: int) -> tuple[list[int], list[int]]:
    """``(prompt ids with BOS, answer ids)`` for ``a + b`` (answer encoded after a space)."""
    bos = bos_id(m.tokenizer)
    prompt = ([] if bos is None else [bos]) + [int(x) for x in m.tokenizer.encode(f"{SHOTS}{a} + {b} =",
                                                                                   add_special_tokens=False)]
    answer = [int(x) for x in m.tokenizer.encode(f" {a + b}", add_special_tokens=False)]
    if not answer or len(prompt) < 2:
        raise InputError("this tokenizer encodes the arithmetic prompts or answers to no tokens")
    return prompt, answer


@dataclass
class AccuracyPass:
    probe: ProbeResult
    correct: np.ndarray          # [N] 1 = the model's greedy answer is right
    n: int


def _compute(m: "LoadedModel", cfg: ScanConfig) -> AccuracyPass:
    check_english(m.tokenizer)
    n = QUICK_ITEMS if cfg.quick else (cfg.n_prompts or N_ITEMS)
    items = problems(n, cfg.seed)
    rows, qpos, ans_pos = [], [], []
    for a, b in items:
        p, ans = encode_problem(m, a, b)
        rows.append(p + ans)
        qpos.append(len(p) - 1)
        ans_pos.append(list(range(len(p) - 1, len(p) - 1 + len(ans))))
    cap = capture_heads(m, rows, np.array(qpos), batch_size=max(cfg.batch_size, 16), argmax_at=ans_pos,
                        progress=cfg.progress)
    correct = np.array([int(cap.argmax[i] == rows[i][qpos[i] + 1:]) for i in range(n)])
    k = int(correct.sum())
    if min(k, n - k) < max(MIN_CLASS if not cfg.quick else 4, int(MIN_FRACTION * n)):
        raise InputError(f"{NOT_FOUND}the model answers {k}/{n} two-digit sums correctly (greedy, 2-shot); a probe "
                         f"needs at least {MIN_CLASS} and {MIN_FRACTION:.0%} of the problems in each class")
    strata = np.array([difficulty(a, b) for a, b in items])
    pr = probe_features(cap.features, correct, np.arange(n), n_folds=4 if cfg.quick else 5,
                        n_perm=199 if cfg.quick else 999, seed=cfg.seed, position="last prompt token ('=')",
                        source="two-digit sums", strata=strata)
    return AccuracyPass(pr, correct, n)


ACC_PASS: SharedPass[AccuracyPass] = SharedPass("accuracy_sums", _compute, lambda m, cfg: (cfg.seed, cfg.quick, cfg.n_prompts))


def run(m: "LoadedModel", cfg: ScanConfig) -> DetectorResult:
    ap = cfg.shared(ACC_PASS, m)
    return probe_detector_result(
        "accuracy", ap.probe, RULE,
        data_description=(f"{ap.n} two-digit sums (2-shot, seed {cfg.seed}); label = the model's greedy answer is "
                          f"correct ({int(ap.correct.sum())}/{ap.n}); z at '='"),
        details={"model_accuracy": float(ap.correct.mean())})


def causal(m: "LoadedModel", cfg: ScanConfig, result: DetectorResult) -> CausalCheck:
    items = problems(32, cfg.seed + EVAL_SEED_OFFSET)
    enc = [encode_problem(m, a, b) for a, b in items]
    lengths = [(len(p), len(a)) for p, a in enc]
    modal = max(set(lengths), key=lengths.count)
    keep = [p + a for (p, a), ln in zip(enc, lengths) if ln == modal]
    ids = torch.tensor(keep)
    lp, la = modal
    targets = ids[:, lp:lp + la]

    def fn(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits, -1)            # [b, la, V] (positions lp-1 .. lp+la-2)
        return logp.gather(-1, targets[rows].unsqueeze(-1).to(logp.device)).squeeze(-1).mean(-1)

    # the answer tokens are predicted at positions lp-1 .. lp+la-2: keep the last la + 1 positions, drop the final one
    def fn_keep(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return fn(logits[:, :-1], rows)

    return ablation_check(m, result.labelled, ids, fn_keep, metric="mean log-prob of the correct sum's tokens",
                          expected="decrease", seed=cfg.seed + EVAL_SEED_OFFSET, keep_last=la + 1,
                          description=(f"mean-ablate the labelled heads on {ids.shape[0]} held-out two-digit sums "
                                       "(seed + 1000) vs 20 layer-matched random sets"))


DETECTOR = register(Detector(
    name="accuracy", evidence="probing", metric="arithmetic answer log-prob", stage="LR", method="probing",
    summary="a linear probe on the head's output before the answer predicts whether the model's own answer is right",
    citation="Yin et al. 2024 LoFiT (arXiv 2406.01563); Guo et al. SIGIR 2024 (ASMR)",
    run=run, uses=(ACC_PASS,), causal=causal, default=False))
