"""Constant and single-letter heads (Lieberum et al. 2023, arXiv 2307.09458): at the final position
of a multiple-choice prompt, how a head's attention over the option letters is shaped.

Data: ``tasks/mcqa.py`` (arithmetic questions, four lettered options, correct letter balanced).
Let ``a [K]`` be the final-position attention on the K letter positions and ``m = sum(a)``.

- ``constant``: ``m * H(a / m) / log K`` per prompt (mass on the letters, spread evenly: 1 when
  all attention is split equally over the letters; 0 for no mass or one letter), averaged.
- ``single_letter``: ``max_j E[a_j | correct != j]``: attention on one fixed letter when that
  letter is *not* the answer (so correct-letter heads do not score); ``extras["letter"]`` is j.

Null (both): the same statistic with the letter positions replaced by K random non-letter
positions of the options block (sorted, so "letter j" becomes "the j-th random position"),
averaged over ``N_DRAWS`` draws; ``null_std`` is the standard error of the paired per-prompt
difference. A head that spreads attention over the options block regardless of letters, or sits
on a fixed relative position, scores the same on both.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from ..errors import InputError
from ..tasks.mcqa import mcqa_batch
from ..tasks.text import check_english
from .base import Detector, DetectorResult, ScanConfig, label_heads, register
from .spans import SpanSet, collect_masses, paired_stats

N_DRAWS = 8
CONST = dict(min_score=0.3, min_z=4.0, min_margin=0.15)
SINGLE = dict(min_score=0.3, min_z=4.0, min_margin=0.15)


def evenness(a: np.ndarray) -> np.ndarray:
    """``a [n, K, ...]`` attention on K positions -> ``[n, ...]`` = ``m * normalised entropy of a/m``."""
    K = a.shape[1]
    m = a.sum(axis=1, keepdims=True)
    p = np.where(m > 0, a / np.maximum(m, 1e-12), 0.0)
    ent = -(np.where(p > 0, p * np.log(np.maximum(p, 1e-12)), 0.0)).sum(axis=1)
    return m[:, 0] * ent / np.log(K)


def fixed_letter(a: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``a [n, K, ...]``, ``correct [n]`` -> per letter j the mean of ``a_j`` over prompts whose answer
    is not j: ``means [K, ...]``, the best letter ``[...]`` and its score ``[...]``."""
    K = a.shape[1]
    means = np.stack([a[correct != j, j].mean(axis=0) for j in range(K)])
    best = means.argmax(axis=0)
    return means, best, np.take_along_axis(means, best[None], axis=0)[0]


def _spans(batch, n_draws: int, rng: random.Random) -> tuple[SpanSet, SpanSet]:
    n, K = batch.letter_pos.shape
    letters = [(r * K + j, r, int(batch.final_pos[r]), int(batch.letter_pos[r, j])) for r in range(n) for j in range(K)]
    null = []
    for d in range(n_draws):
        for r in range(n):
            lo, hi = (int(x) for x in batch.option_region[r])
            pool = sorted(set(range(lo, hi)) - set(batch.letter_pos[r].tolist()))
            for j, k in enumerate(sorted(rng.sample(pool, K))):
                null.append(((d * n + r) * K + j, r, int(batch.final_pos[r]), k))
    return SpanSet.build(letters, n * K), SpanSet.build(null, n_draws * n * K)


CACHE_KEY = "headatlas.detectors.mcqa"


def _measure(model, config: ScanConfig):
    """Letter and null attention ``a [n, K, L, H]``, ``a_null [N_DRAWS, n, K, L, H]`` (one forward pass
    shared by ``constant`` and ``single_letter``: cached on the loaded model per seed and size)."""
    n = config.n_prompts or (8 if config.quick else 32)
    key = (CACHE_KEY, config.seed, n)
    cache = getattr(model, "_cache", None)
    if cache is not None and key in cache:
        return cache[key]
    out = _measure_uncached(model, config, n)
    if cache is not None:
        cache[key] = out
    return out


def _measure_uncached(model, config: ScanConfig, n: int):
    tok = model.tokenizer
    check_english(tok)
    if n < 8:
        raise InputError("the MCQA detectors need at least 8 prompts (2 per correct letter)")
    batch = mcqa_batch(tok, n, seed=config.seed)
    if batch.ids.shape[1] > model.info.n_ctx:
        raise InputError(f"MCQA prompts need {batch.ids.shape[1]} positions; the model has {model.info.n_ctx}")
    letters, null = _spans(batch, N_DRAWS, random.Random(config.seed + 1))
    m = collect_masses(model, batch.ids, {"letters": letters, "null": null}, config)
    K = batch.letter_pos.shape[1]
    L, H = m["letters"].shape[1:]
    a = m["letters"].reshape(n, K, L, H)
    a_null = m["null"].reshape(N_DRAWS, n, K, L, H)
    return batch, a, a_null


def _common(batch, a: np.ndarray) -> tuple[dict[str, np.ndarray], str]:
    mass = a.sum(axis=1)
    share = np.take_along_axis(a, batch.correct.numpy()[:, None, None, None], axis=1)[:, 0] / np.maximum(mass, 1e-12)
    desc = (f"{batch.ids.shape[0]} arithmetic multiple-choice prompts with {a.shape[1]} lettered options (correct letter "
            "balanced); attention from the final position (':' of 'Answer:') to the option letters")
    return {"letter_mass": mass.mean(0), "correct_share": share.mean(0)}, desc


def run_constant(model, config: ScanConfig) -> DetectorResult:
    batch, a, a_null = _measure(model, config)
    target = evenness(a)                                               # [n, L, H]
    null = np.mean([evenness(x) for x in a_null], axis=0)              # [n, L, H]
    score = target.mean(0)
    _, null_mean, null_std = paired_stats(target, null)
    labelled = label_heads(score, null_mean, null_std, **CONST)
    extras, desc = _common(batch, a)
    return DetectorResult(
        name="constant", scores=score, null_mean=null_mean, null_std=null_std, labelled=labelled,
        min_score=CONST["min_score"], min_z=CONST["min_z"],
        data_description=desc + "; score = mean of m * normalised entropy (m = mass on the letters)",
        null_description=(f"the same statistic on K random non-letter positions of the options block ({N_DRAWS} draws); "
                          "null_std = standard error of the paired per-prompt difference"),
        n_prompts=int(batch.ids.shape[0]), seed=config.seed, extras=extras,
        details={"min_margin": CONST["min_margin"], "letters": "ABCD"[:a.shape[1]]},
    )


def run_single_letter(model, config: ScanConfig) -> DetectorResult:
    batch, a, a_null = _measure(model, config)
    correct = batch.correct.numpy()
    _, best, score = fixed_letter(a, correct)                          # [L, H]
    n, K, L, H = a.shape
    li, hi = np.indices((L, H))
    per_target, per_null = [], []
    for j in range(K):
        sel = correct != j
        per_target.append(a[sel, j])                                    # [n_j, L, H]
        per_null.append(a_null[:, sel, j].mean(0))
    # paired statistics for each head's own best letter
    null_mean = np.zeros((L, H))
    null_std = np.zeros((L, H))
    for j in range(K):
        _, nm, se = paired_stats(per_target[j], per_null[j])
        null_mean = np.where(best == j, nm, null_mean)
        null_std = np.where(best == j, se, null_std)
    labelled = label_heads(score, null_mean, null_std, **SINGLE)
    extras, desc = _common(batch, a)
    extras["letter"] = best.astype(float)
    letters = "ABCD"[:K]
    return DetectorResult(
        name="single_letter", scores=score, null_mean=null_mean, null_std=null_std, labelled=labelled,
        min_score=SINGLE["min_score"], min_z=SINGLE["min_z"],
        data_description=desc + "; score = max over letters j of mean attention on j over prompts whose answer is not j",
        null_description=(f"the same statistic for the j-th of K random non-letter positions of the options block "
                          f"({N_DRAWS} draws), at the head's own letter; null_std = standard error of the paired difference"),
        n_prompts=int(n), seed=config.seed, extras=extras,
        details={"min_margin": SINGLE["min_margin"], "letters": letters,
                 "letter_of_labelled": {f"L{l}H{h}": letters[int(best[l, h])] for l, h in labelled}},
    )


CONSTANT = register(Detector(
    name="constant", stage="KR", method="attention pattern (MCQA)",
    summary="final-position attention spread evenly over the option letters of a multiple-choice prompt",
    citation="Lieberum et al. 2023, arXiv 2307.09458", run=run_constant,
))
SINGLE_LETTER = register(Detector(
    name="single_letter", stage="KR", method="attention pattern (MCQA)",
    summary="final-position attention on one fixed option letter regardless of the correct answer",
    citation="Lieberum et al. 2023, arXiv 2307.09458", run=run_single_letter,
))
