"""Syntactic detector: matched same-class controls, best-of-relations with a max-statistic null.
Planted heads on templated data (no model), then end-to-end runs on tiny random English models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import headatlas
from headatlas import stats
from headatlas.detectors import ScanConfig, get
from headatlas.detectors.patterns.spans import span_mass
from headatlas.detectors.patterns.syntactic import (candidate_spans, evaluate_arcs, matched_controls, relation_table,
                                           top_slot, relations_to_test)
from headatlas.tasks.syntax import syntax_batch, syntax_data


class OneTokenPerWord:
    """Every word is one token (ids are irrelevant for these tests)."""

    def encode(self, text, add_special_tokens=False):
        return [7]


def _batch(n_rows=32, seed=0):
    b = syntax_batch(OneTokenPerWord(), n_rows, 4, seed=seed)
    spans, flat, target, slots = candidate_spans(b.seqs, b.arcs, 1)
    ctrl = matched_controls(flat, b.classes, stats.rng_for(seed, "syntactic:controls"))
    return b, spans, flat, target, slots, ctrl


def _first_of_class(flat, classes, cls="NOUN"):
    """Per arc, the slot of the first word of class ``cls`` before the query (-1: none)."""
    out = []
    for r, a in flat:
        ws = [w for w in range(a.sentence_start, a.later) if classes[r][w] == cls]
        out.append(ws[0] - a.sentence_start if ws else -1)
    return np.array(out)


def _planted_top(flat, b, target, seed=0):
    """``top [n_arcs, 1, 6]`` for six planted heads (the slot each head picks per arc)."""
    rng = np.random.default_rng(seed)
    n_valid = np.array([a.later - a.sentence_start for _, a in flat])
    rand = rng.integers(0, n_valid)
    is_nsubj = np.array([a.relation == "nsubj" for _, a in flat])
    first_noun = _first_of_class(flat, b.classes)
    heads = [
        np.where(is_nsubj, target, rand),                   # 0: nsubj head (gold governor on nsubj arcs)
        target,                                             # 1: every arc's gold word
        np.where(first_noun >= 0, first_noun, rand),        # 2: the sentence's first noun
        n_valid - 1,                                        # 3: the previous word
        rng.integers(0, n_valid),                           # 4: random
        np.zeros_like(n_valid),                             # 5: the sentence's first word
    ]
    return np.stack(heads, -1)[:, None, :]


def test_templates_put_another_noun_first_as_often_as_the_subject():
    data = syntax_data()
    b, spans, flat, target, slots, ctrl = _batch()
    table = relation_table(flat, ctrl)
    assert table["nsubj"]["controlled"] >= 30 and table["nsubj"]["gold_farther"] == pytest.approx(0.5, abs=0.1)
    # the control of a subject arc is a noun that is not the subject; in about half of those arcs it comes first
    first_noun = _first_of_class(flat, b.classes)
    sub = [i for i, (_, a) in enumerate(flat) if a.relation == "nsubj" and ctrl[i] >= 0]
    assert all(b.classes[flat[i][0]][flat[i][1].sentence_start + ctrl[i]] == "NOUN" for i in sub)
    share = np.mean([first_noun[i] == target[i] for i in sub])
    assert 0.35 <= share <= 0.65
    rel, untested = relations_to_test(table)
    assert "nsubj" in rel and "det" in untested        # a noun's determiner is always its nearest one
    for t in data["templates"]:
        for dep, head, _ in t["arcs"]:
            assert 0 <= dep < len(t["words"]) and 0 <= head < len(t["words"])


def test_planted_heads_gold_labelled_first_noun_and_previous_word_not():
    b, spans, flat, target, slots, ctrl = _batch()
    top = _planted_top(flat, b, target)
    tested, scores, extras, details, d, relations = evaluate_arcs(top, flat, target, ctrl, 32, seed=0)
    assert set(tested.labelled) == {(0, 0), (0, 1)}
    assert extras["relation"][0, 0] == "nsubj" and extras["relation"].dtype.kind == "U"
    assert details["relation_of_labelled"]["L0H0"] == "nsubj"
    assert scores[0, 0] == 1.0 and tested.p_value[0, 0] < 1e-3
    # the first-noun head picks the control as often as the subject on nsubj arcs
    assert abs(extras["effect_nsubj"][0, 2]) < 0.2 and (0, 2) not in tested.labelled
    assert (0, 3) not in tested.labelled and extras["offset_margin"][0, 3] < 0.1
    assert not {(0, 4), (0, 5)} & set(tested.labelled)


def test_best_of_relations_null_takes_the_max():
    b, spans, flat, target, slots, ctrl = _batch()
    top = _planted_top(flat, b, target)
    tested, scores, extras, details, d, relations = evaluate_arcs(top, flat, target, ctrl, 32, seed=0, n_perm=999)
    assert d.shape[-1] == len(relations) >= 2
    draws = stats.signflip_null(d, 999, rng=stats.rng_for(0, "syntactic:null"))
    single = stats.signflip_null(d[..., 0], 999, rng=stats.rng_for(0, "syntactic:null"))
    assert (draws >= single - 1e-12).all()              # the max over relations in every draw
    assert np.allclose(tested.effect, np.nanmax(np.nanmean(d, 1), -1))


def test_pattern_path_picks_the_planted_word():
    seqs_b, spans, flat, target, slots, ctrl = _batch(n_rows=2)
    S = max(len(s) for s in seqs_b.seqs) + 1
    p = torch.full((2, 1, S, S), 1e-3).tril()
    for i, (r, a) in enumerate(flat):
        q = a.later + 1                                  # one token per word, BOS first
        p[r, 0, q, a.earlier + 1] = 1.0
    mass = span_mass(p, spans).numpy().reshape(len(flat), slots, 1)
    n_valid = np.array([a.later - a.sentence_start for _, a in flat])
    top = top_slot(mass[:, :, None, :], n_valid)[:, 0, 0]
    # arcs sharing a query word share its attention row: the tie goes to the earliest planted word
    first: dict[tuple[int, int], int] = {}
    for r, a in flat:
        first[(r, a.later)] = min(first.get((r, a.later), 10**6), a.earlier - a.sentence_start)
    assert all(top[i] == first[(r, a.later)] for i, (r, a) in enumerate(flat))


@pytest.fixture(scope="module")
def english():
    from english_tiny import english_tiny_model

    return [headatlas.load(english_tiny_model(n_ctx=512, seed=s), device="cpu") for s in (0, 1)]


def test_random_weights_label_nothing(english):
    for m in english:
        r = get("syntactic").run(m, ScanConfig(seed=0, quick=True))
        assert r.labelled == []
        assert np.isfinite(r.p_value).all() and (r.p_value > 0).all()
        assert set(np.unique(r.extras["relation"])) <= set(r.details["relations"])
    assert get("syntactic").no_causal


def test_same_seed_bit_identical(english):
    cfg = ScanConfig(seed=3, quick=True)
    a, b = get("syntactic").run(english[0], cfg), get("syntactic").run(english[0], cfg)
    for f in ("scores", "null_mean", "null_std", "effect", "p_value", "q_value", "ci_low", "ci_high", "stability"):
        assert np.array_equal(getattr(a, f), getattr(b, f), equal_nan=True), f
    assert np.array_equal(a.extras["relation"], b.extras["relation"])
