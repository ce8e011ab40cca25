"""Exact patching's shortcuts change no number: stacked passes (rows joining at their layer) == one pass per
layer == one forward per head; skipped patches (source == base at every patched position) have effect exactly
0 and equal the computed run; reusing the base run's keys and values of an unchanged prefix == recomputing it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import headatlas
from headatlas.instrument import RowHeadPatch, instrumented
from headatlas.methods import engine, logit_diff, patch_heads_by_position, patching_map
from headatlas.methods import patching as P
from headatlas.models.suffix import capture_layer_inputs, run_from_layer, run_stacked
from methods_helpers import head_outputs, oproj_hook
from tiny import KINDS, random_ids, tiny_model

ANS, WRONG = torch.tensor([5, 9]), torch.tensor([7, 11])


@pytest.fixture(params=KINDS, scope="module")
def loaded(request):
    return headatlas.load(tiny_model(request.param), device="cpu")


def shared_prefix_pair(prefix: int, seq: int = 14) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean and corrupted ids equal on positions ``0..prefix-1`` and different at ``prefix``."""
    clean, corr = random_ids(2, seq, seed=1), random_ids(2, seq, seed=2)
    corr[:, :prefix] = clean[:, :prefix]
    corr[:, prefix] = (clean[:, prefix] - 3 + 1) % 61 + 3   # a different token in 3..63
    return clean, corr


def naive_map(m, base_ids, src_ids, metric):
    """One full forward per head with a plain o_proj pre-hook (independent of headatlas's engine)."""
    z_src, _ = head_outputs(m, src_ids)
    out = np.zeros((m.info.n_layers, m.info.n_heads))
    for layer in range(m.info.n_layers):
        for h in range(m.info.n_heads):
            def fn(z, layer=layer, h=h):
                z[:, :, h] = z_src[layer][:, :, h]
                return z
            with torch.no_grad(), oproj_hook(m, layer, fn):
                out[layer, h] = float(metric(m.model(base_ids).logits).mean())
    return out


def runs(m, clean, corr, met):
    base = engine.base_run(m, corr, met, keep_hidden=True, keep_z=True, keep_kv=True)
    src = engine.base_run(m, clean, met, keep_hidden=False, keep_z=True)
    return base, src


@pytest.fixture
def passes(monkeypatch):
    """Records ``(rows, prefix)`` of every stacked pass."""
    seen: list[tuple[int, int]] = []
    real = engine.run_stacked_rows

    def spy(m, base, layers, prompts, make, met, *, prefix=0):
        seen.append((int(layers.numel()), prefix))
        return real(m, base, layers, prompts, make, met, prefix=prefix)
    monkeypatch.setattr(engine, "run_stacked_rows", spy)
    return seen


def test_run_stacked_equals_one_suffix_run_per_layer(loaded):
    ids = random_ids(2, 12, seed=4)
    with torch.no_grad(), capture_layer_inputs(loaded) as hidden:
        loaded.model(ids)
    L = loaded.info.n_layers
    prompts = [torch.tensor([0, 1]), torch.tensor([1]), torch.tensor([0, 0, 1])]
    entries = [(layer, hidden[layer][p]) for layer, p in zip(range(L), prompts)]
    with torch.no_grad():
        got = run_stacked(loaded, entries, ids[:1], last_only=False)
        want = torch.cat([run_from_layer(loaded, hidden[layer][p], layer, ids[p], last_only=False)
                          for layer, p in zip(range(L), prompts)])
    assert got.shape == want.shape == (6, 12, loaded.info.vocab_size)
    assert (got - want).abs().max() <= 1e-5
    with pytest.raises(ValueError):
        run_stacked(loaded, entries[::-1], ids[:1])


def test_prefix_cache_equals_full_recomputation(loaded):
    """Keys and values of positions 0..p-1 from the base run + a run of positions p..S-1 == the full run."""
    ids = random_ids(2, 12, seed=5)
    met = logit_diff(ANS, WRONG)
    base = engine.base_run(loaded, ids, met, keep_hidden=True, keep_kv=True)
    p = min(4, engine.prefix_limit(loaded))
    assert p == 4   # every tiny model takes a cache (Gemma 3's sliding window is 6)
    L = loaded.info.n_layers
    rows = torch.tensor([1, 0, 1])
    layers = torch.tensor([0, 1, L - 1])
    cache = engine.prefix_cache(loaded, base, [rows[layers <= layer] for layer in range(L)], p)
    entries = [(int(layer), base.hidden[int(layer)][rows[i:i + 1], p:]) for i, layer in enumerate(layers)]
    with torch.no_grad():
        got = run_stacked(loaded, entries, ids[:1, p:], cache=cache)
        want = torch.cat([run_from_layer(loaded, base.hidden[int(layer)][rows[i:i + 1]], int(layer), ids[rows[i:i + 1]])
                          for i, layer in enumerate(layers)])
    assert (got - want).abs().max() <= 1e-5


@pytest.mark.parametrize("prefix", [0, 3, 8])
def test_stacked_with_prefix_equals_one_pass_per_layer_and_one_pass_per_head(loaded, passes, prefix):
    clean, corr = shared_prefix_pair(prefix)
    met = logit_diff(ANS, WRONG)
    base, src = runs(loaded, clean, corr, met)
    sequential = P._exact_by_layer(loaded, base, src.z, met, None, False, None, None)
    stacked = P._exact(loaded, base, src.z, met, None, False, None, None)
    no_prefix = P._exact(loaded, base, src.z, met, None, False, None, None, reuse_prefix=False)
    assert np.abs(stacked - sequential).max() <= 1e-5
    assert np.abs(no_prefix - sequential).max() <= 1e-5
    assert np.abs(stacked - naive_map(loaded, corr, clean, met)).max() <= 1e-5
    assert np.ptp(stacked) > 1e-3
    # one stacked pass for every head of every layer; it skips the positions before the first change
    # (capped below Gemma 3's sliding window), the run without prefix reuse does not
    used = [p for _, p in passes]
    assert used[0] == min(prefix, engine.prefix_limit(loaded)) and used[1] == 0
    assert passes[0][0] == loaded.info.n_layers * loaded.info.n_heads * 2


def test_small_batches_split_the_stacked_pass(loaded, passes):
    clean, corr = shared_prefix_pair(2)
    met = logit_diff(ANS, WRONG)
    full = patching_map(loaded, clean, corr, metric=met).values
    n = len(passes)
    small = patching_map(loaded, clean, corr, metric=met, batch_size=5).values
    assert np.abs(small - full).max() <= 1e-5
    assert len(passes) - n > 2 and all(rows <= 5 for rows, _ in passes[n:])


def test_identical_head_is_skipped_with_effect_exactly_zero(passes):
    """Head 0 and 1 of layer 0 of a tiny Llama share a value head whose weights are zeroed: their z is 0 for
    any prompt, so patching them changes nothing. They are not run; their entries equal the corrupted
    metric exactly and the computed (unskipped) runs to float tolerance."""
    model, tok = tiny_model("llama")
    with torch.no_grad():
        v = model.model.layers[0].self_attn.v_proj.weight
        v[:16] = 0   # kv head 0 (d_head 16) feeds query heads 0 and 1
    m = headatlas.load((model, tok), device="cpu")
    clean, corr = random_ids(2, 14, seed=1), random_ids(2, 14, seed=2)
    met = logit_diff(ANS, WRONG)
    base, src = runs(m, clean, corr, met)
    skipped = P._exact(m, base, src.z, met, None, False, None, None)
    computed = P._exact(m, base, src.z, met, None, False, None, None, skip_identical=False)
    L, H = m.info.n_layers, m.info.n_heads
    assert passes[0][0] == (L * H - 2) * 2 and passes[1][0] == L * H * 2
    corrupted = float(base.metric.mean())
    assert skipped[0, 0] == corrupted and skipped[0, 1] == corrupted   # effect exactly 0
    assert np.abs(skipped - computed).max() <= 1e-5
    assert abs(computed[0, 0] - corrupted) <= 1e-5
    assert np.abs(skipped[0, 2:] - corrupted).max() > 1e-4   # the other heads do change the run


def test_identical_prompts_run_no_pass(loaded, passes):
    clean = random_ids(2, 10, seed=3)
    pm = patching_map(loaded, clean, clean.clone(), metric=logit_diff(ANS, WRONG))
    assert passes == []
    assert np.all(pm.values == pm.corrupted_metric)


def test_per_position_with_prefix_matches_single_patches(loaded, passes):
    clean, corr = shared_prefix_pair(3, seq=8)
    clean, corr = clean[:1], corr[:1]
    met = logit_diff(ANS[:1], WRONG[:1])
    per_pos = patch_heads_by_position(loaded, clean, corr, metric=met)
    corrupted = float(engine.base_run(loaded, corr, met).metric)
    # positions before the first differing token are identical in every layer: never run, effect exactly 0
    assert np.all(per_pos[:, :, :3] == corrupted)
    assert min(p for _, p in passes) == min(3, engine.prefix_limit(loaded))
    z_src, _ = head_outputs(loaded, clean)
    for layer, h, p in [(0, 0, 3), (1, 2, 7), (loaded.info.n_layers - 1, 3, 5)]:
        def fn(z, layer=layer, h=h, p=p):
            z[:, p, h] = z_src[layer][:, p, h]
            return z
        with torch.no_grad(), oproj_hook(loaded, layer, fn):
            want = float(met(loaded.model(corr).logits).mean())
        assert abs(per_pos[layer, h, p] - want) <= 1e-5


def test_first_change():
    base = torch.zeros(2, 5, 3, 4)
    src = base.clone()
    src[0, 2, 1, 0] = 1.0    # prompt 0, head 1 first differs at position 2
    src[1, 4, 1, 3] = -1.0   # prompt 1, head 1 at position 4
    heads, prompts = torch.tensor([0, 1, 1, 1]), torch.tensor([0, 0, 1, 1])
    assert P.first_change(base, src, heads[:3], prompts[:3]).tolist() == [5, 2, 4]
    assert P.first_change(base, src, heads[:3], prompts[:3], positions=[0, 1, 4]).tolist() == [5, 5, 4]
    assert P.first_change(base, src, heads, prompts, at=torch.tensor([2, 2, 4, 3])).tolist() == [5, 2, 4, 5]


def test_stack_plan_covers_every_row_once_within_the_cap():
    rng = np.random.default_rng(0)
    layers = np.repeat(np.arange(6), 20)
    firsts = rng.integers(0, 4, size=layers.size)
    plan = engine.stack_plan(layers, firsts, cap=25, min_rows=10)
    seen = np.concatenate([idx for idx, _ in plan])
    assert sorted(seen.tolist()) == list(range(layers.size))
    for idx, p in plan:
        assert len(idx) <= 25 and p == firsts[idx].min()
    assert len({p for _, p in plan}) > 1   # rows that change later share passes that skip more positions
    assert engine.stack_plan(np.array([], dtype=int), np.array([], dtype=int), cap=4) == []


def test_stacked_edits_reach_only_their_rows(loaded):
    """A row joining at layer l is edited at layer l; rows that joined earlier are not."""
    ids = random_ids(1, 9, seed=6)
    met = logit_diff(ANS[:1], WRONG[:1])
    base, src = runs(loaded, random_ids(1, 9, seed=7), ids, met)
    L = loaded.info.n_layers
    layers, prompts = torch.tensor([0, L - 1]), torch.tensor([0, 0])

    def make(layer, rows):
        return [RowHeadPatch(layer=layer, rows=rows, heads=torch.tensor([1]), source=src.z[layer],
                             source_rows=torch.tensor([0]))] if layer == L - 1 else []
    got = engine.run_stacked_rows(loaded, base, layers, prompts, make, met)
    assert abs(float(got[0]) - float(base.metric[0])) <= 1e-5
    with torch.no_grad(), instrumented(loaded, edits=make(L - 1, torch.tensor([0]))):
        want = float(met(loaded.model(ids).logits).mean())
    assert abs(float(got[1]) - want) <= 1e-5


def test_trimmed_last_layer_changes_no_last_position_logit(loaded):
    """The last layer's output projection and MLP on the last position only: the same last-position logits."""
    ids = random_ids(2, 11, seed=8)
    with torch.no_grad(), capture_layer_inputs(loaded) as hidden:
        full = loaded.model(ids).logits
    entries = [(0, hidden[0]), (loaded.info.n_layers - 1, hidden[-1])]
    with torch.no_grad():
        trimmed = run_stacked(loaded, entries, ids[:1])
        plain = run_stacked(loaded, entries, ids[:1], trim_last_layer=False)
    assert trimmed.shape == (4, 1, loaded.info.vocab_size)
    assert (trimmed - plain).abs().max() <= 1e-5
    assert (trimmed[:, 0] - full[[0, 1, 0, 1], -1]).abs().max() <= 1e-5
