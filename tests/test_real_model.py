"""Slow tests on the bundled real models (run with ``pytest -m slow``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import headatlas
from headatlas.instrument import Taps, instrumented
from headatlas.tasks.vocab import random_token_block, with_bos

pytestmark = pytest.mark.slow


def test_smollm2_loads_offline_with_expected_sizes(smollm2):
    info = smollm2.info
    assert (info.n_layers, info.n_heads, info.n_kv_heads, info.d_head) == (30, 9, 3, 64)


def test_smollm2_completes_paris(smollm2):
    ids = smollm2.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = smollm2.model.generate(ids, max_new_tokens=2, do_sample=False)
    assert smollm2.tokenizer.decode(out[0, ids.shape[1]:]).startswith(" Paris")


def test_smollm2_repeat_loss_drops_and_instrumentation_is_exact(smollm2):
    g = torch.Generator().manual_seed(0)
    block = random_token_block(smollm2.tokenizer, 2, 50, g)
    ids = with_bos(smollm2.tokenizer, torch.cat([block, block], dim=1))
    with torch.no_grad():
        plain = smollm2.model(ids).logits
        with instrumented(smollm2):
            untouched = smollm2.model(ids).logits
        with instrumented(smollm2, taps=Taps(reducer=lambda l, p, c: p[..., -1, 0])):
            tapped = smollm2.model(ids).logits
    assert torch.equal(plain, untouched)  # sdpa path: bit-identical
    # pattern path (the model's eager attention): float32 reordering over 30 layers only
    scale = plain.abs().max()
    assert (plain - tapped).abs().max() <= 1e-4 * scale, ((plain - tapped).abs().max(), scale)
    loss = F.cross_entropy(plain[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")  # [B, S-1]
    first, second = loss[:, 1:50].mean().item(), loss[:, 51:].mean().item()
    assert first > 8 and second < first / 3, (first, second)


def test_gemma3_loads_with_expected_sizes():
    m = headatlas.load("gemma3-270m", device="cpu")
    assert (m.info.n_layers, m.info.n_heads, m.info.n_kv_heads) == (18, 4, 1)
    ids = m.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        plain = m.model(ids).logits
        with instrumented(m, taps=Taps(pattern=True)) as rec:
            tapped = m.model(ids).logits
    assert (plain - tapped).abs().max() < 1e-3
    assert rec.pattern(0).shape[1] == 4
