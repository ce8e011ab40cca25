"""Rare-words detector: argmax on the rarest earlier word against a matched frequent control word,
sign-flip null over prompts. Planted heads (no model), then end-to-end runs on tiny random English models."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import headatlas
from headatlas.detectors import ScanConfig, get
from headatlas.detectors.patterns.rare_words import evaluate_words, rare_word_items
from headatlas.detectors.patterns.spans import span_mass
from headatlas.tasks.text import WordSeq


def _seq(sizes: list[int], words: list[str]) -> WordSeq:
    spans, pos = [], 0
    for s in sizes:
        spans.append((pos, pos + s))
        pos += s
    return WordSeq(tuple(range(10, 10 + pos)), tuple(words), tuple(spans))


def _rows(n: int, seed: int = 0) -> list[WordSeq]:
    """``n`` texts of 16 frequent words (1-2 tokens) with one rare word among the first eight."""
    rng = random.Random(seed)
    out = []
    for r in range(n):
        words = [f"w{r}_{i}" for i in range(16)]
        words[rng.randrange(0, 8)] = f"rare{r}"
        out.append(_seq([rng.choice([1, 1, 2]) for _ in words], words))
    return out


def _freq(w: str) -> float:
    return 1.0 if w.startswith("rare") else 6.0


def _planted_word_mass(seqs, spans, items, slots, seed=0):
    """Patterns ``[B, 5, S, S]`` -> pooled word mass ``[n_items, slots, 1, 5]`` for five heads: 0 on the rare
    word, 1 on the control word, 2 previous token, 3 uniform, 4 random."""
    B, S = len(seqs), max(len(s) for s in seqs) + 1
    causal = torch.ones(S, S).tril()
    g = torch.Generator().manual_seed(seed)
    p = torch.empty(B, 5, S, S)
    p[:] = causal / causal.sum(-1, keepdim=True)
    prev = torch.zeros(S, S)
    prev[torch.arange(1, S), torch.arange(S - 1)] = 1.0
    prev[0, 0] = 1.0
    p[:, 2] = prev
    rnd = torch.rand(B, S, S, generator=g) * causal
    p[:, 4] = rnd / rnd.sum(-1, keepdim=True)
    for it in items:
        r, s = it["row"], seqs[it["row"]]
        q = s.spans[s.words.index(it["query"])][1]            # last piece (+1 for BOS, -1 for the end)
        for head, word in ((0, it["rare"]), (1, it["control"])):
            a, b = s.spans[s.words.index(word)]
            p[r, head, q] = 0.01 * causal[q] / causal[q].sum()
            p[r, head, q, a + 1:b + 1] += 0.99 / (b - a)
    mass = span_mass(p, spans).double().numpy()
    return mass.reshape(len(items), slots, 1, 5)


def test_items_match_the_control_on_token_count_and_exclude_the_adjacent_word():
    seqs = _rows(16)
    spans, items, slots = rare_word_items(seqs, 1, random.Random(0), freq=_freq)
    assert len({it["row"] for it in items}) == 16
    for it in items:
        s = seqs[it["row"]]
        i = s.words.index(it["query"])
        assert it["rare"].startswith("rare") and it["control"] != it["rare"]
        assert it["n_slots"] == i - 1 and it["rare_slot"] < i - 1 and it["control_slot"] < i - 1
        size = lambda w: s.spans[s.words.index(w)][1] - s.spans[s.words.index(w)][0]  # noqa: E731
        assert size(it["rare"]) == size(it["control"])


def test_needs_a_clear_minimum():
    seqs = [_seq([1] * 8, [f"w{i}" for i in range(8)])]
    spans, items, slots = rare_word_items(seqs, 0, random.Random(0), freq=lambda w: 5.0)
    assert items == [] and len(spans) == 0


def test_planted_rare_word_head_labelled_control_and_positional_heads_not():
    seqs = _rows(16)
    spans, items, slots = rare_word_items(seqs, 1, random.Random(0), freq=_freq)
    wm = _planted_word_mass(seqs, spans, items, slots)
    tested, scores, control_frac, mass_effect, d = evaluate_words(wm, items, len(seqs), seed=0)
    assert tested.labelled == [(0, 0)]
    assert scores[0, 0] == pytest.approx(1.0) and control_frac[0, 0] == 0.0 and tested.p_value[0, 0] < 1e-3
    assert tested.effect[0, 1] == pytest.approx(-1.0)   # the control head is the mirror image
    assert mass_effect[0, 0] > 0.9
    assert d.shape == (1, 16, 5)


@pytest.fixture(scope="module")
def english():
    from english_tiny import english_tiny_model

    return [headatlas.load(english_tiny_model(n_ctx=512, seed=s), device="cpu") for s in (0, 1)]


def test_random_weights_label_nothing(english):
    for m in english:
        for seed in (0, 1):
            r = get("rare_words").run(m, ScanConfig(seed=seed, quick=True))
            assert r.labelled == [] and np.isfinite(r.p_value).all()
    assert get("rare_words").no_causal


def test_same_seed_bit_identical(english):
    cfg = ScanConfig(seed=3, quick=True)
    a, b = get("rare_words").run(english[0], cfg), get("rare_words").run(english[0], cfg)
    for f in ("scores", "null_mean", "null_std", "effect", "p_value", "q_value", "ci_low", "ci_high", "stability"):
        assert np.array_equal(getattr(a, f), getattr(b, f), equal_nan=True), f
