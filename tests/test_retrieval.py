"""Retrieval heads: the copy-hit rule on planted top-1 positions, needle prompts, faithful ==
teacher-forced on the generated answer (exactness), and a slow smollm2 run."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch

import headatlas
from headatlas.detectors import ScanConfig, get
from headatlas.detectors.retrieval import (cached_forward, copy_hits, greedy_top1, null_spans, prefill, recall, teacher_forced_top1,
                                           top_k_overlap)
from headatlas.errors import InputError
from headatlas.tasks.needle import needle_case


@pytest.fixture(scope="module")
def english():
    from english_tiny import english_tiny_model

    return headatlas.load(english_tiny_model(n_ctx=512), device="cpu")


def test_copy_hits_planted():
    ids = torch.tensor([1, 5, 6, 7, 8, 9, 7, 4])      # needle = positions 2..5 holds 6 7 8 9; a 7 also at 6
    span = (2, 6)
    tokens = torch.tensor([6, 7, 8, 9])                # generated at the 4 steps
    top1 = torch.zeros(4, 1, 4, dtype=torch.long)
    top1[:, 0, 0] = torch.tensor([2, 3, 4, 5])         # head 0: copies each token from the needle
    top1[:, 0, 1] = torch.tensor([3, 2, 5, 4])         # head 1: in the needle, wrong tokens
    top1[:, 0, 2] = torch.tensor([0, 6, 0, 0])         # head 2: the right token (7) but outside the needle
    top1[:, 0, 3] = torch.tensor([2, 3, 0, 0])         # head 3: half the steps
    s = copy_hits(top1, tokens, ids, span, norm=4)
    assert s.shape == (1, 4)
    assert s[0].tolist() == [1.0, 0.0, 0.0, 0.5]
    with pytest.raises(ValueError):
        copy_hits(top1[:3], tokens, ids, span, norm=4)


def test_recall_and_overlap():
    assert recall(torch.tensor([3, 4, 5]), (3, 4, 5)) == 1.0
    assert recall(torch.tensor([3, 3, 9]), (3, 4, 3)) == pytest.approx(2 / 3)
    a = np.arange(20.0).reshape(4, 5)
    assert top_k_overlap(a, a, 5) == 1.0 and top_k_overlap(a, -a, 5) == 0.0


def test_needle_case_layout(english):
    tok = english.tokenizer
    case = needle_case(tok, 300, 0.5, random.Random(0))
    assert abs(case.ids.numel() - 300) < 40
    needle = tok.decode(case.ids[case.needle_span[0]:case.needle_span[1]])
    assert "secret code" in needle and case.code in needle
    assert tuple(case.ids[case.answer_span[0]:case.answer_span[1]].tolist()) == case.answer_ids
    assert case.needle_span[0] <= case.answer_span[0] < case.answer_span[1] <= case.needle_span[1]
    for a, b in case.haystack:
        assert b <= case.needle_span[0] or a >= case.needle_span[1]
    assert tok.decode(case.ids[-12:]).strip().endswith("is")
    for a, b in null_spans(case, 6, 20, random.Random(1)):
        assert any(lo <= a and b <= hi for lo, hi in case.haystack)


def test_needle_depth_moves_the_needle(english):
    shallow = needle_case(english.tokenizer, 300, 0.1, random.Random(0))
    deep = needle_case(english.tokenizer, 300, 0.9, random.Random(0))
    assert shallow.needle_span[0] < deep.needle_span[0]


def test_teacher_forced_on_generated_answer_equals_faithful(english):
    """Exactness: feeding the greedy answer in one chunk gives the same top-1 positions per step."""
    case = needle_case(english.tokenizer, 200, 0.5, random.Random(2))
    cache = prefill(english, case.ids[:-1])
    gen, top_g = greedy_top1(english, case.ids, 5, copy.deepcopy(cache))
    pred, top_tf = teacher_forced_top1(english, case.ids, gen, cache)
    assert torch.equal(pred, gen)
    assert torch.equal(top_tf, top_g)
    assert top_g.shape == (5, english.info.n_layers, english.info.n_heads)
    assert int(top_g.max()) < case.ids.numel() + 5


def test_random_model_does_not_recall_the_needle(english):
    with pytest.raises(InputError, match="recalled the needle in none"):
        get("retrieval").run(english, ScanConfig(seed=0, quick=True, options={"retrieval_lengths": [150]}))


def test_reducer_keeps_no_square_pattern(english):
    """The faithful and teacher-forced passes never see a [S, S] pattern: only decode queries."""
    from headatlas.instrument import Taps, instrumented

    case = needle_case(english.tokenizer, 200, 0.5, random.Random(3))
    shapes = []
    cache = prefill(english, case.ids[:-1])
    with torch.no_grad(), instrumented(english, taps=Taps(reducer=lambda l, p, c: shapes.append(tuple(p.shape)))):
        cached_forward(english, case.ids[-1:][None], cache, 1)
    assert shapes and all(s[2] == 1 and s[3] == case.ids.numel() for s in shapes)


@pytest.mark.slow
def test_smollm2_faithful_finds_retrieval_heads(smollm2):
    r = get("retrieval").run(smollm2, ScanConfig(seed=0, options={"retrieval_lengths": [300],
                                                                  "retrieval_depths": [0.2, 0.8]}))
    assert r.details["kept_tests"] >= 1
    assert r.labelled, "smollm2 copies the code: some head should copy it from the needle"
    assert r.scores.max() >= 0.5 and r.null_mean.max() < 0.1
    assert r.details["top10_overlap_faithful_vs_teacher_forced"] >= 0.5
