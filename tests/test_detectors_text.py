"""Text, task and long-context detectors: planted synthetic patterns (level 1), end-to-end runs
on tiny models, clear refusals where a tokenizer cannot express English."""

from __future__ import annotations


import numpy as np
import pytest
import torch

import headatlas
from headatlas.detectors import ScanConfig, get
from headatlas.detectors.patterns.spans import SpanSet, paired_stats, span_mass
from headatlas.errors import InputError
from headatlas.tasks.text import WordSeq, encode_words, split_words

TEXT_DETECTORS = ("rare_words", "subword_merge", "syntactic", "retrieval")   # MCQA and mover: test_mcqa_mover.py


def _seq(sizes: list[int], words: list[str] | None = None) -> WordSeq:
    """A fake encoded text whose word ``i`` has ``sizes[i]`` tokens (ids are 10, 11, ...)."""
    spans, pos = [], 0
    for s in sizes:
        spans.append((pos, pos + s))
        pos += s
    words = words or [f"w{i}" for i in range(len(sizes))]
    return WordSeq(tuple(range(10, 10 + pos)), tuple(words), tuple(spans))


def _uniform(B: int, H: int, S: int) -> torch.Tensor:
    causal = torch.tril(torch.ones(S, S))
    return (causal / causal.sum(-1, keepdim=True)).expand(B, H, S, S).clone()


def _plant(pattern: torch.Tensor, head: int, spans: SpanSet) -> torch.Tensor:
    """Make ``head`` put all of each span's query attention evenly on that span's keys."""
    p = pattern.clone()
    for item in range(spans.n_items):
        sel = spans.item == item
        if not sel.any():
            continue
        r, q = int(spans.row[sel][0]), int(spans.query[sel][0])
        p[r, head, q] = 0
        p[r, head, q, spans.key[sel]] = 1.0 / int(sel.sum())
    return p


# ---------------------------------------------------------------- shared helpers


def test_span_mass_sums_and_never_mutates():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(2, 3, 5, 5, generator=g)
    before = p.clone()
    spans = SpanSet.build([(0, 0, 4, 1), (0, 0, 4, 2), (1, 1, 3, 0)], 2)
    out = span_mass(p, spans)
    assert torch.equal(p, before)
    assert torch.allclose(out[0], p[0, :, 4, 1] + p[0, :, 4, 2])
    assert torch.allclose(out[1], p[1, :, 3, 0])
    with pytest.raises(ValueError):
        span_mass(p, SpanSet.build([(0, 0, 9, 1)], 1))


def test_paired_stats_is_a_paired_z():
    t = np.array([[0.5, 0.1], [0.7, 0.1], [0.6, 0.2]])
    c = np.array([[0.1, 0.1], [0.1, 0.1], [0.2, 0.2]])
    score, null, se = paired_stats(t, c)
    assert np.allclose(score, t.mean(0)) and np.allclose(null, c.mean(0))
    assert se[1] == 0.0 and se[0] > 0


def test_split_words_and_encode_words_spans():
    assert split_words("The dog barked. Then, it slept!") == ["The", "dog", "barked", ".", "Then", ",", "it", "slept", "!"]

    class Chars:  # one token per character
        def encode(self, text, add_special_tokens=False):
            return [ord(c) for c in text]

    s = encode_words(Chars(), ["ab", "c", "."])
    assert s.spans == ((0, 2), (2, 4), (4, 5))            # " c" is two tokens, "." has no space
    assert list(s.ids) == [ord(c) for c in "ab c."]


# ---------------------------------------------------------------- rare words, subword merge, syntactic
# (planted-head, random-weight and reproducibility tests: tests/test_rare_words.py,
# tests/test_subword_merge.py, tests/test_syntactic.py)


# (constant, single_letter, correct_letter and mover: tests/test_mcqa_mover.py)


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def english():
    from english_tiny import english_tiny_model

    return headatlas.load(english_tiny_model(n_ctx=512), device="cpu")


@pytest.mark.parametrize("name", TEXT_DETECTORS + ("constant", "single_letter", "correct_letter", "name_mover"))
def test_toy_tokenizer_refused_with_clear_reason(name):
    from tiny import tiny_model

    m = headatlas.load(tiny_model("llama"), device="cpu")
    with pytest.raises(InputError) as err:
        get(name).run(m, ScanConfig(seed=0, quick=True))
    msg = str(err.value)
    assert "English" in msg or "single-token" in msg or "IOI" in msg


@pytest.mark.parametrize("name", TEXT_DETECTORS)
def test_end_to_end_tiny_english_model_reproducible(english, name):
    cfg = ScanConfig(seed=3, quick=True, options={"min_recall": 0.0})
    r1 = get(name).run(english, cfg)
    r2 = get(name).run(english, cfg)
    L, H = english.info.n_layers, english.info.n_heads
    assert r1.name == name and r1.scores.shape == (L, H)
    for arr in (r1.scores, r1.null_mean, r1.null_std):
        assert arr.shape == (L, H) and np.isfinite(arr).all()
    assert np.array_equal(r1.scores, r2.scores) and np.array_equal(r1.null_mean, r2.null_mean)
    assert r1.data_description and r1.null_description and r1.n_prompts > 0
    assert all(0 <= l < L and 0 <= h < H for l, h in r1.labelled)
    for k, v in r1.extras.items():
        assert v.shape == (L, H), k


def test_seed_changes_the_data(english):
    a = get("rare_words").run(english, ScanConfig(seed=0, quick=True))
    b = get("rare_words").run(english, ScanConfig(seed=1, quick=True))
    assert not np.array_equal(a.scores, b.scores)


def test_short_context_is_refused_or_fitted():
    from english_tiny import english_tiny_model

    m = headatlas.load(english_tiny_model(n_ctx=48), device="cpu")
    with pytest.raises(InputError, match="positions|room|haystack"):
        get("retrieval").run(m, ScanConfig(seed=0, quick=True, options={"min_recall": 0.0}))
