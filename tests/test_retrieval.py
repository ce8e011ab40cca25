"""Retrieval heads (contract v2): needle prompts with distractor facts that end at the question, the
position-aligned copy-hit rule, a planted copy-from-the-needle head that is found, a planted
copy-from-any-fact head that is not (and gives a non-zero null), random weights label nothing,
same seed -> identical results, the causal check, and a slow smollm2 run."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import headatlas
from headatlas.detectors import ScanConfig, get
from headatlas.detectors.patterns import retrieval as R
from headatlas.errors import InputError
from headatlas.tasks.needle import NeedleCase, needle_case, needle_cases

OPTS = {"retrieval_lengths": [200], "min_recall": 0.0}      # keep every prompt: random models recall nothing


@pytest.fixture(scope="module")
def english():
    from english_tiny import english_tiny_model

    return headatlas.load(english_tiny_model(n_ctx=512), device="cpu")


def _case(ids, spans, needle, response) -> NeedleCase:
    return NeedleCase(ids=torch.tensor(ids), answer_ids=tuple(response[-2:]), response_ids=tuple(response),
                      fact_spans=tuple(spans), needle_index=needle, answer_offset=2, haystack=((0, 1),), depth=0.5,
                      codes=("x", "y"), key=("c", "t"))


def test_slot_hits_are_position_aligned():
    # facts at 1..5 (tokens 10 11 12 13) and 6..10 (10 11 14 15); the needle is the second one
    ids = [1, 10, 11, 12, 13, 2, 10, 11, 14, 15, 3]
    case = _case(ids, [(1, 5), (6, 10)], 1, [10, 14, 15])
    gen = torch.tensor([10, 14, 15])
    top1 = torch.zeros(3, 1, 4, dtype=torch.long)
    top1[:, 0, 0] = torch.tensor([6, 8, 9])      # copies every token from the needle
    top1[:, 0, 1] = torch.tensor([1, 3, 4])      # same offsets in the distractor: aligned control hits
    top1[:, 0, 2] = torch.tensor([7, 6, 6])      # in the needle, wrong tokens
    top1[:, 0, 3] = torch.tensor([0, 10, 5])     # outside every fact
    x = R.slot_hits(top1, gen, case)
    assert x.shape == (1, 4, 2)
    assert x[0, :, 1].tolist() == [3, 0, 0, 0]   # needle slot: Wu et al.'s rule
    assert x[0, :, 0].tolist() == [0, 3, 0, 0]   # distractor slot
    with pytest.raises(ValueError):
        R.slot_hits(top1[:2], gen, case)


def test_recall():
    assert R.recall(torch.tensor([3, 4, 5]), (3, 4, 5)) == 1.0
    assert R.recall(torch.tensor([3, 3, 9]), (3, 4, 3)) == pytest.approx(2 / 3)


def test_needle_case_layout(english):
    tok = english.tokenizer
    cases = needle_cases(tok, 12, [200, 240], seed=0)
    for case in cases:
        assert case.ids.numel() in (200, 240)
        assert len(case.fact_spans) == 4 and len({b - a for a, b in case.fact_spans}) == 1
        assert len(set(case.codes)) == 4
        needle = tok.decode(case.ids[case.needle_span[0]:case.needle_span[1]])
        assert "secret code" in needle and case.code in needle
        assert tuple(case.ids[case.answer_span[0]:case.answer_span[1]].tolist()) == case.answer_ids
        assert case.response_ids[-len(case.answer_ids):] == case.answer_ids
        for k, (a, b) in enumerate(case.fact_spans):   # the same offset holds each fact's code
            assert case.codes[k] in tok.decode(case.ids[a + case.answer_offset:b])
        facts = [range(a, b) for a, b in case.fact_spans]
        for a, b in case.haystack:
            assert not any(set(range(a, b)) & set(f) for f in facts)
        tail = tok.decode(case.ids[max(b for _, b in case.fact_spans):])
        assert tail.rstrip().endswith("Answer:") and case.code not in tail   # ends at the question
    assert len({c.needle_index for c in cases}) >= 3
    assert len({c.depth for c in cases}) == len(cases)
    with pytest.raises(InputError, match="no room"):
        needle_case(tok, 60, random.Random(0))


def test_batched_decoding_equals_one_prompt_at_a_time(english):
    cases = needle_cases(english.tokenizer, 2, [200], seed=3)
    ids = torch.stack([c.ids for c in cases])
    gen, top1 = R.greedy_top1(english, ids, 5)
    assert top1.shape == (2, 5, english.info.n_layers, english.info.n_heads)
    for r in range(2):
        g1, t1 = R.greedy_top1(english, ids[r:r + 1], 5)
        assert torch.equal(g1[0], gen[r]) and torch.equal(t1[0], top1[r])
    g2, t2 = R.greedy_top1(english, ids, 5, prefill_chunk=50)        # chunked prefill: same answer
    assert torch.equal(g2, gen) and torch.equal(t2, top1)
    assert int(top1.max()) < ids.shape[1] + 5


def test_reducer_sees_only_decode_rows(english):
    from headatlas.instrument import Taps, instrumented

    case = needle_cases(english.tokenizer, 1, [200], seed=1)[0]
    shapes = []
    _, cache = R.cached_forward(english, case.ids[None, :-1], None, 1)
    with torch.no_grad(), instrumented(english, taps=Taps(reducer=lambda l, p, c: shapes.append(tuple(p.shape)))):
        R.cached_forward(english, case.ids[None, -1:], cache, 1)
    assert shapes and all(s[2] == 1 and s[3] == case.ids.numel() for s in shapes)


def test_random_model_labels_nothing(english):
    with pytest.raises(InputError, match="recalled the needle"):
        get("retrieval").run(english, ScanConfig(seed=0, quick=True, options={"retrieval_lengths": [200]}))
    r = get("retrieval").run(english, ScanConfig(seed=0, quick=True, options=OPTS))
    assert r.labelled == []
    assert r.scores.shape == r.p_value.shape == (english.info.n_layers, english.info.n_heads)
    assert ((r.p_value > 0) & (r.p_value <= 1)).all() and (r.q_value >= r.p_value - 1e-12).all()
    assert "best_head" in r.details and r.details["induction_overlap"] == "induction was not run in this scan"


def test_same_seed_is_bit_identical(english):
    a = get("retrieval").run(english, ScanConfig(seed=0, quick=True, options=OPTS))
    b = get("retrieval").run(english, ScanConfig(seed=0, quick=True, options=OPTS))
    for key in ("scores", "null_mean", "null_std", "effect", "p_value", "q_value", "ci_low", "stability"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    assert a.details == b.details


NEEDLE_HEAD, ANY_FACT_HEAD, FIRST_FACT_HEAD = (1, 2), (1, 0), (0, 3)


def _planted_decode(real):
    """``greedy_top1`` of a model that answers with the needle's sentence, where head NEEDLE_HEAD copies
    each answer token from the needle, ANY_FACT_HEAD from a random fact (needle or distractor) and
    FIRST_FACT_HEAD always from the first fact of the prompt (position-aligned)."""
    rng = random.Random(7)
    state = {"cases": []}

    def decode(model, ids, n_steps, **kw):
        gen, top1 = real(model, ids, n_steps, **kw)
        by_ids = {tuple(c.ids.tolist()): c for c in state["cases"]}
        for r in range(ids.shape[0]):
            case = by_ids[tuple(ids[r].tolist())]
            resp = torch.tensor(case.response_ids)
            gen[r] = resp
            n0, n1 = case.needle_span
            needle = case.ids[n0:n1].tolist()
            for j, t in enumerate(resp.tolist()):
                if t not in needle:
                    continue
                o = needle.index(t)
                top1[r, j, NEEDLE_HEAD[0], NEEDLE_HEAD[1]] = n0 + o
                top1[r, j, ANY_FACT_HEAD[0], ANY_FACT_HEAD[1]] = rng.choice(case.fact_spans)[0] + o
                top1[r, j, FIRST_FACT_HEAD[0], FIRST_FACT_HEAD[1]] = case.fact_spans[0][0] + o
        return gen, top1

    return decode, state


def test_planted_needle_copier_is_found_and_fact_copiers_are_not(english, monkeypatch):
    decode, state = _planted_decode(R.greedy_top1)
    cfg = ScanConfig(seed=0, quick=True, options={"retrieval_lengths": [200], "retrieval_prompts": 12},
                     results={"induction": SimpleNamespace(labelled=[NEEDLE_HEAD, (0, 0)])})
    n, lengths, nd = R._settings(english, cfg)
    state["cases"] = needle_cases(english.tokenizer, n, lengths, seed=0, n_distractors=nd)
    monkeypatch.setattr(R, "greedy_top1", decode)
    r = get("retrieval").run(english, cfg)
    assert r.details["kept_prompts"] == 12 and r.details["greedy_exact"] == 12
    assert r.labelled == [NEEDLE_HEAD]
    assert r.p_value[NEEDLE_HEAD] <= 0.05 and r.q_value[NEEDLE_HEAD] <= 0.05 and r.effect[NEEDLE_HEAD] >= 0.5
    # a head that copies from any fact scores on the needle too, but its control is as high: no label
    assert r.scores[ANY_FACT_HEAD] > 0.1 and r.null_mean[ANY_FACT_HEAD] > 0.1
    assert r.null_std[ANY_FACT_HEAD] > 0 and r.q_value[ANY_FACT_HEAD] > 0.05
    assert r.null_mean[FIRST_FACT_HEAD] > 0 and FIRST_FACT_HEAD not in r.labelled
    assert r.details["induction_overlap"] == {"heads": ["L1H2"], "n_retrieval": 1, "n_induction": 2, "jaccard": 0.5}


def test_causal_check_ablates_against_random_sets(english):
    cfg = ScanConfig(seed=0, quick=True, options={"retrieval_lengths": [200]})
    result = SimpleNamespace(labelled=[(1, 2)], details={})
    c = R.needle_logprob_check(english, cfg, result)
    assert c.ran and c.kind == "mean" and c.expected == "decrease" and len(c.random_effects) >= 20
    assert np.isfinite(c.effect) and np.isfinite(c.baseline) and c.baseline < 0 and 0 < c.p_value <= 1
    g = result.details["causal_greedy"]
    assert g["n_prompts"] == c.n_prompts == 4 and g["exact_clean"] == g["exact_ablated"] == 0
    z = R.needle_logprob_check(english, cfg, SimpleNamespace(labelled=[(1, 2)], details={}), kind="zero")
    assert z.kind == "zero" and z.effect != c.effect
    assert R.needle_logprob_check(english, cfg, SimpleNamespace(labelled=[], details={})).kind == "none"


@pytest.mark.slow
def test_smollm2_retrieval_is_tested_and_causal(smollm2):
    cfg = ScanConfig(seed=0)
    r = get("retrieval").run(smollm2, cfg)
    assert r.details["kept_prompts"] >= 8
    for lh in r.labelled:
        assert r.p_value[lh] <= 0.05 and r.q_value[lh] <= 0.05 and r.effect[lh] >= R.MIN_EFFECT
    if r.labelled:
        c = get("retrieval").causal(smollm2, cfg, r)
        assert c.beats_every_random_set
    else:
        assert "best_head" in r.details
