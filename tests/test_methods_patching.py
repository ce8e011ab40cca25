"""Activation and attribution patching: batched == one head at a time (independent hook oracle), zero effect
for identical prompts, all heads patched == clean run, attribution == exact where the metric is linear."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import headatlas
from headatlas.errors import InputError
from headatlas.instrument import HeadEdit, RowHeadPatch
from headatlas.methods import engine, logit_diff, patch_heads, patch_heads_by_position, patching_map
from headatlas.methods.engine import base_run, run_rows
from methods_helpers import head_outputs, oproj_hook
from tiny import KINDS, random_ids, tiny_model

ANS, WRONG = torch.tensor([5, 9]), torch.tensor([7, 11])


@pytest.fixture(params=KINDS, scope="module")
def loaded(request):
    return headatlas.load(tiny_model(request.param), device="cpu")


def prompts():
    return random_ids(2, 14, seed=1), random_ids(2, 14, seed=2)


def naive_map(m, base_ids, src_ids, metric, positions=None):
    """One full forward per head, the head's o_proj input replaced by a plain pre-hook."""
    z_src, _ = head_outputs(m, src_ids)
    out = np.zeros((m.info.n_layers, m.info.n_heads))
    pos = slice(None) if positions is None else positions
    for layer in range(m.info.n_layers):
        for h in range(m.info.n_heads):
            def fn(z, layer=layer, h=h):
                z[:, pos, h] = z_src[layer][:, pos, h]
                return z
            with torch.no_grad(), oproj_hook(m, layer, fn):
                out[layer, h] = float(metric(m.model(base_ids).logits).mean())
    return out


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_batched_equals_one_head_at_a_time(loaded, direction):
    clean, corr = prompts()
    met = logit_diff(ANS, WRONG)
    got = patch_heads(loaded, clean, corr, metric=met, direction=direction)
    base, src = (corr, clean) if direction == "denoise" else (clean, corr)
    want = naive_map(loaded, base, src, met)
    assert got.shape == (loaded.info.n_layers, loaded.info.n_heads)
    assert np.abs(got - want).max() <= 1e-5
    assert np.ptp(got) > 1e-3  # the heads differ: the test could fail


def test_chunking_positions_and_fallback_agree(loaded, monkeypatch):
    clean, corr = prompts()
    met = logit_diff(ANS, WRONG)
    full = patch_heads(loaded, clean, corr, metric=met)
    assert np.abs(patch_heads(loaded, clean, corr, metric=met, batch_size=3) - full).max() <= 1e-5
    at = patch_heads(loaded, clean, corr, metric=met, positions=[3, -1])
    assert np.abs(at - naive_map(loaded, corr, clean, met, positions=[3, 13])).max() <= 1e-5
    monkeypatch.setattr(engine, "supports_suffix", lambda m: False)  # full forward passes instead of suffixes
    assert np.abs(patch_heads(loaded, clean, corr, metric=met) - full).max() <= 1e-5


def test_per_position_matches_single_patches(loaded):
    clean, corr = random_ids(1, 8, seed=1), random_ids(1, 8, seed=2)
    met = logit_diff(ANS[:1], WRONG[:1])
    per_pos = patch_heads_by_position(loaded, clean, corr, metric=met)
    assert per_pos.shape == (loaded.info.n_layers, loaded.info.n_heads, 8)
    for layer, h, p in [(0, 0, 3), (1, 2, 7), (loaded.info.n_layers - 1, 3, 5)]:
        want = naive_map(loaded, corr, clean, met, positions=[p])[layer, h]
        assert abs(per_pos[layer, h, p] - want) <= 1e-5


def test_identical_prompts_give_zero_effect(loaded):
    clean, _ = prompts()
    pm = patching_map(loaded, clean, clean, metric=logit_diff(ANS, WRONG))
    assert np.abs(pm.values - pm.clean_metric).max() <= 1e-5
    assert pm.clean_metric == pm.corrupted_metric


def test_patching_every_head_at_once_reproduces_clean(loaded):
    """The corrupted run here is the clean prompt with every head's output perturbed (so clean and corrupted
    differ only through the heads); patching every head of every layer with its clean z restores the clean run."""
    clean, _ = prompts()
    met = logit_diff(ANS, WRONG)
    L, H, D = loaded.info.n_layers, loaded.info.n_heads, loaded.info.d_head
    g = torch.Generator().manual_seed(0)
    corruption = [HeadEdit(layer, None, "add", value=torch.randn(H, D, generator=g)) for layer in range(L)]
    corrupted = base_run(loaded, clean, met, edits=corruption)
    src = base_run(loaded, clean, met, keep_hidden=False, keep_z=True)

    def make(s, e, patched=True):
        n = e - s
        patches = [RowHeadPatch(layer=layer, rows=torch.arange(n).repeat_interleave(H), heads=torch.arange(H).repeat(n),
                                source=src.z[layer], source_rows=torch.arange(s, e).repeat_interleave(H))
                   for layer in range(L)]
        return corruption + (patches if patched else [])
    got = run_rows(loaded, corrupted, 0, torch.arange(2), make, met)
    unpatched = run_rows(loaded, corrupted, 0, torch.arange(2), lambda s, e: make(s, e, False), met)
    assert (got - src.metric).abs().max() <= 1e-5
    assert (unpatched - corrupted.metric).abs().max() <= 1e-5
    assert (corrupted.metric - src.metric).abs().max() > 1e-3


def test_normalised_values(loaded):
    clean, corr = prompts()
    met = logit_diff(ANS, WRONG)
    for direction in ("denoise", "noise"):
        raw = patching_map(loaded, clean, corr, metric=met, direction=direction)
        norm = patch_heads(loaded, clean, corr, metric=met, direction=direction, normalize=True)
        lo, hi = ((raw.corrupted_metric, raw.clean_metric) if direction == "denoise"
                  else (raw.clean_metric, raw.corrupted_metric))
        assert np.allclose(norm, (raw.values - lo) / (hi - lo), atol=1e-6)


def linear_last_layer_model():
    """Tiny Llama whose logits are linear in the last layer's head outputs: final norm removed and the
    last layer's MLP silenced (its output is 0), so logit = W_U (resid_in + sum_h z_h W_O[h] + b)."""
    model, tok = tiny_model("llama", seed=4)
    model.model.norm = nn.Identity()
    with torch.no_grad():
        model.model.layers[-1].mlp.down_proj.weight.zero_()
    return headatlas.load((model, tok), device="cpu")


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_attribution_equals_exact_where_metric_is_linear(direction):
    m = linear_last_layer_model()
    clean, corr = prompts()
    met = logit_diff(ANS, WRONG)
    exact = patch_heads(m, clean, corr, metric=met, direction=direction)
    attr = patch_heads(m, clean, corr, metric=met, direction=direction, method="attribution")
    last = m.info.n_layers - 1
    assert np.abs(attr[last] - exact[last]).max() <= 1e-4
    assert np.ptp(exact[last]) > 1e-3
    per_pos = patch_heads_by_position(m, clean, corr, metric=met, direction=direction, method="attribution")
    base = patching_map(m, clean, corr, metric=met, direction=direction).corrupted_metric if direction == "denoise" \
        else patching_map(m, clean, corr, metric=met, direction=direction).clean_metric
    assert np.abs((per_pos - base).sum(-1) + base - attr).max() <= 1e-4  # per-position deltas sum to the per-head one


def test_attribution_correlates_on_random_models(loaded):
    clean, corr = prompts()
    met = logit_diff(ANS, WRONG)
    exact = patch_heads(loaded, clean, corr, metric=met)
    attr = patch_heads(loaded, clean, corr, metric=met, method="attribution")
    assert np.isfinite(attr).all() and attr.shape == exact.shape
    # frozen parameters must not break the backward pass
    for p in loaded.model.parameters():
        p.requires_grad_(False)
    try:
        frozen = patch_heads(loaded, clean, corr, metric=met, method="attribution")
    finally:
        for p in loaded.model.parameters():
            p.requires_grad_(True)
    assert np.abs(frozen - attr).max() <= 1e-5


def test_clear_errors(loaded):
    m = loaded
    with pytest.raises(InputError, match="same length"):
        patch_heads(m, "t5 t6 t7", "t5 t6", " t3", " t4")
    with pytest.raises(InputError, match="not a single token"):
        patch_heads(m, "t5 t6 t7", "t5 t8 t7", " t3 t9", " t4")
    with pytest.raises(InputError, match="direction"):
        patch_heads(m, "t5 t6 t7", "t5 t8 t7", " t3", " t4", direction="sideways")
    with pytest.raises(InputError, match="out of range"):
        patch_heads(m, "t5 t6 t7", "t5 t8 t7", " t3", " t4", positions=[9])
    too_long = " ".join(["t5"] * (m.info.n_ctx + 1))
    with pytest.raises(InputError, match="context of 128 positions"):
        patch_heads(m, too_long, too_long, " t3", " t4")
    vals = patch_heads(m, "t5 t6 t7", "t5 t8 t7", " t3", " t4")  # strings work end to end
    assert vals.shape == (m.info.n_layers, m.info.n_heads)
