"""Ablation and steering: no-ops are exact, edits match independent o_proj hooks, errors are clear."""

from __future__ import annotations

import pytest
import torch

import headatlas
from headatlas.errors import InputError
from headatlas.methods import (ablate_heads, ablation_effect, head_directions, logit_diff, steer, steer_generate,
                               steering_effect)
from methods_helpers import oproj_hook
from tiny import KINDS, random_ids, tiny_model


@pytest.fixture(params=KINDS, scope="module")
def loaded(request):
    return headatlas.load(tiny_model(request.param), device="cpu")


def plain(m, ids):
    with torch.no_grad():
        return m.model(ids).logits


def test_mean_ablation_with_reference_equal_to_input_is_a_noop(loaded):
    ids = random_ids(1, 16, seed=5)
    heads = [(0, 1), (1, 3), (2, 0)]
    out = ablate_heads(loaded, heads, ids, kind="mean", reference=ids)
    assert (out - plain(loaded, ids)).abs().max() <= 1e-5
    same = ids.repeat(3, 1)  # several copies of one prompt: the mean is each row's own value
    assert (ablate_heads(loaded, heads, same, kind="mean") - plain(loaded, same)).abs().max() <= 1e-5
    assert (ablate_heads(loaded, heads, ids, kind="resample", reference=ids) - plain(loaded, ids)).abs().max() <= 1e-5
    # a different reference does change the output (the no-op is not vacuous)
    other = ablate_heads(loaded, heads, ids, kind="mean", reference=random_ids(4, 16, seed=6))
    assert (other - plain(loaded, ids)).abs().max() > 1e-4


def test_zero_ablation_matches_an_independent_hook(loaded):
    ids = random_ids(2, 12, seed=7)
    got = ablate_heads(loaded, [(1, 2), (1, 0), (2, 3)], ids, kind="zero")

    def zero_heads(hs):
        def fn(z):
            z[:, :, hs] = 0
            return z
        return fn
    with oproj_hook(loaded, 1, zero_heads([0, 2])), oproj_hook(loaded, 2, zero_heads([3])):
        want = plain(loaded, ids)
    assert (got - want).abs().max() <= 1e-5
    # at chosen positions only
    got_pos = ablate_heads(loaded, [(1, 2)], ids, kind="zero", positions=[4, 5])

    def zero_pos(z):
        z[:, 4:6, 2] = 0
        return z
    with oproj_hook(loaded, 1, zero_pos):
        assert (got_pos - plain(loaded, ids)).abs().max() <= 1e-5


def test_mean_over_other_length_and_resample_rows(loaded):
    ids = random_ids(2, 10, seed=8)
    ref = random_ids(5, 7, seed=9)  # other length: mean over all reference tokens
    out = ablate_heads(loaded, [(0, 0)], ids, kind="mean", reference=ref)
    assert out.shape == (2, 10, loaded.info.vocab_size)
    with pytest.raises(InputError, match="resample"):
        ablate_heads(loaded, [(0, 0)], ids, kind="resample", reference=ref)
    with pytest.raises(InputError, match="reference"):
        ablate_heads(loaded, [(0, 0)], ids, kind="resample")


def test_ablation_errors_and_effect(loaded):
    ids = random_ids(2, 10, seed=10)
    with pytest.raises(InputError, match="out of range"):
        ablate_heads(loaded, [(0, loaded.info.n_heads)], ids)
    with pytest.raises(InputError, match="out of range"):
        ablate_heads(loaded, [(loaded.info.n_layers, 0)], ids)
    with pytest.raises(InputError, match="kind"):
        ablate_heads(loaded, [(0, 0)], ids, kind="shuffle")
    eff = ablation_effect(loaded, [(0, 0), (1, 1)], ids)
    assert eff.metric == "loss" and eff.base > 0 and eff.change != 0


def test_steering_alpha_zero_is_a_noop_and_alpha_adds_the_direction(loaded):
    pos, neg = random_ids(3, 9, seed=11), random_ids(3, 9, seed=12)
    dirs = head_directions(loaded, pos, neg)
    L, H, D = loaded.info.n_layers, loaded.info.n_heads, loaded.info.d_head
    assert dirs.shape == (L, H, D) and dirs.abs().max() > 0
    assert head_directions(loaded, pos, pos).abs().max() == 0
    ids = random_ids(2, 9, seed=13)
    heads = [(1, 1), (2, 2)]
    assert torch.equal(steer(loaded, ids, dirs, heads, 0.0), plain(loaded, ids))
    got = steer(loaded, ids, dirs, heads, 3.0)

    def add(layer, h):
        def fn(z):
            z[:, :, h] += 3.0 * dirs[layer, h]
            return z
        return fn
    with oproj_hook(loaded, 1, add(1, 1)), oproj_hook(loaded, 2, add(2, 2)):
        want = plain(loaded, ids)
    assert (got - want).abs().max() <= 1e-5


def test_steered_generation_and_effect(loaded):
    tok_prompt = "t5 t9 t12 t7"
    pos, neg = random_ids(2, 6, seed=14), random_ids(2, 6, seed=15)
    dirs = head_directions(loaded, pos, neg, pool="mean")
    heads = [(0, 0), (1, 1), (2, 2)]
    ids = loaded.tokenizer(tok_prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                                    pad_token_id=0)
    assert steer_generate(loaded, tok_prompt, dirs, heads, 0.0, max_new_tokens=5) == loaded.tokenizer.decode(ref[0, ids.shape[1]:])
    met = logit_diff(torch.tensor([5]), torch.tensor([6]))
    eff = steering_effect(loaded, ids, dirs * 20, heads, met, alphas=(-1.0, 0.0, 1.0))
    assert eff.kl[1] == 0 and eff.kl[0] > 0 and eff.kl[2] > 0
    with pytest.raises(InputError, match="directions"):
        steer(loaded, ids, dirs[:, :2], heads, 1.0)
