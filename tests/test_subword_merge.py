"""Subword-merge detector: the same-distance control across a word boundary cancels previous-token
heads. Planted heads on synthetic patterns (no model), then end-to-end runs on tiny random English models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import headatlas
from headatlas import stats
from headatlas.atlas.records import LabelRule
from headatlas.detectors import ScanConfig, get
from headatlas.detectors.patterns.spans import SpanSet, span_mass
from headatlas.detectors.patterns.subword_merge import evaluate_masses, previous_token_overlap, subword_items
from headatlas.tasks.text import WordSeq


def _seq(sizes: list[int]) -> WordSeq:
    spans, pos = [], 0
    for s in sizes:
        spans.append((pos, pos + s))
        pos += s
    return WordSeq(tuple(range(10, 10 + pos)), tuple(f"w{i}" for i in range(len(sizes))), tuple(spans))


def _rows(n: int, seed: int = 0) -> list[WordSeq]:
    """``n`` texts of single-token words with three multi-piece words (3-5 pieces) at random places."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        sizes = [1] * 24
        for i in rng.choice(np.arange(3, 24), 3, replace=False):
            sizes[int(i)] = int(rng.integers(3, 6))
        out.append(_seq(sizes))
    return out


def _planted(seqs: list[WordSeq], target: SpanSet, seed: int = 0) -> torch.Tensor:
    """Patterns ``[B, 5, S, S]``: 0 subword merge, 1 previous token (90%), 2 uniform, 3 first token, 4 random."""
    B, S = len(seqs), max(len(s) for s in seqs) + 1
    g = torch.Generator().manual_seed(seed)
    causal = torch.ones(S, S).tril()
    uniform = causal / causal.sum(-1, keepdim=True)
    prev = torch.zeros(S, S)
    prev[torch.arange(1, S), torch.arange(S - 1)] = 1.0
    prev[0, 0] = 1.0
    first = torch.zeros(S, S)
    first[:, 0] = 1.0
    p = torch.empty(B, 5, S, S)
    p[:, 0] = uniform
    p[:, 1] = 0.9 * prev + 0.1 * uniform
    p[:, 2] = uniform
    p[:, 3] = first
    rnd = torch.rand(B, S, S, generator=g) * causal
    p[:, 4] = rnd / rnd.sum(-1, keepdim=True)
    for item in range(target.n_items):                    # head 0: all attention on its word's earlier pieces
        sel = target.item == item
        r, q = int(target.row[sel][0]), int(target.query[sel][0])
        p[r, 0, q] = 0
        p[r, 0, q, target.key[sel]] = 1.0 / int(sel.sum())
    return p


def _masses(n_rows=16, seed=0):
    seqs = _rows(n_rows, seed)
    target, control, rows = subword_items(seqs, 1, stats.rng_for(seed, "subword_merge:controls"))
    p = _planted(seqs, target, seed)
    t = span_mass(p, target).double().numpy()[:, None]        # [n_items, L=1, H]
    c = span_mass(p, control).double().numpy()[:, None]
    return seqs, target, control, rows, t, c


def test_items_cover_every_non_initial_piece_with_a_same_distance_control():
    seqs = [_seq([1, 1, 4, 1, 1, 3, 1, 1, 1, 5, 1])]
    target, control, rows = subword_items(seqs, 1, np.random.default_rng(0))
    assert len(rows) == 3 + 2 + 4
    for item in range(target.n_items):
        t, c = target.item == item, control.item == item
        dt = sorted((target.query[t] - target.key[t]).tolist())
        dc = sorted((control.query[c] - control.key[c]).tolist())
        assert dt == dc == list(range(1, len(dt) + 1))     # the same distances 1..j
        q = int(control.query[c][0]) - 1
        assert q in {a for a, _ in seqs[0].spans}           # the control query starts a word ...
        assert all(int(k) - 1 < q for k in control.key[c])  # ... so its keys belong to other words


def test_planted_subword_head_labelled_previous_token_head_not():
    seqs, target, control, rows, t, c = _masses()
    tested, scores, control_mean, d = evaluate_masses(t, c, rows, len(seqs), seed=0)
    assert tested.labelled == [(0, 0)]
    assert scores[0, 0] == pytest.approx(1.0) and tested.p_value[0, 0] < 1e-3
    # the previous-token head puts 90% on the previous token in both target and control: it cancels
    assert scores[0, 1] > 0.9 and abs(tested.effect[0, 1]) < 0.05
    assert abs(tested.effect[0, 3]) < 1e-12            # first-token head: nothing inside words


def test_previous_token_overlap_is_reported():
    seqs, target, control, rows, t, c = _masses()
    tested, *_ = evaluate_masses(t, c, rows, len(seqs), seed=0)
    prev = stats.result("previous_token", tested, scores=tested.effect, rule=LabelRule(statistic="x"),
                        data_description="", null_description="", n_prompts=1, seed=0)
    prev.labelled = [(0, 0), (0, 1)]
    info = previous_token_overlap(ScanConfig(results={"previous_token": prev}), tested.labelled, tested.effect)
    assert info["previous_token_overlap"] == [[0, 0]] and info["previous_token_labelled"] == 2
    assert previous_token_overlap(ScanConfig(), [], tested.effect) == {"previous_token": "not run in this scan"}
    assert get("subword_merge").requires == ("previous_token",) and get("subword_merge").no_causal


@pytest.fixture(scope="module")
def english():
    from english_tiny import english_tiny_model

    return [headatlas.load(english_tiny_model(n_ctx=512, seed=s), device="cpu") for s in (0, 1)]


def test_random_weights_label_nothing(english):
    for m in english:
        r = get("subword_merge").run(m, ScanConfig(seed=0, quick=True))
        assert r.labelled == [] and r.n_prompts >= 12
        assert np.isfinite(r.p_value).all()


def test_same_seed_bit_identical(english):
    cfg = ScanConfig(seed=3, quick=True)
    a, b = get("subword_merge").run(english[0], cfg), get("subword_merge").run(english[0], cfg)
    for f in ("scores", "null_mean", "null_std", "effect", "p_value", "q_value", "ci_low", "ci_high", "stability"):
        assert np.array_equal(getattr(a, f), getattr(b, f), equal_nan=True), f
