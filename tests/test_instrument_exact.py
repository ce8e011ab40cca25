"""Exactness of the instrumentation on tiny random models of every tested architecture."""

from __future__ import annotations

import pytest
import torch

import headatlas
from headatlas.instrument import HeadEdit, Taps, add, instrumented, patch, scale, set_value, zero
from tiny import KINDS, random_ids, tiny_model

TOL = 1e-5


@pytest.fixture(params=KINDS, scope="module")
def loaded(request):
    model, tok = tiny_model(request.param)
    return headatlas.load((model, tok), device="cpu")


def logits(m, ids, edits=(), taps=None):
    with torch.no_grad(), instrumented(m, edits=edits, taps=taps) as rec:
        out = m.model(ids).logits
    return out, rec


def test_no_edits_equals_plain(loaded):
    ids = random_ids(3, 20)
    with torch.no_grad():
        plain = loaded.model(ids).logits
    out, _ = logits(loaded, ids)
    assert torch.equal(out, plain)
    # the implementation is restored after the session
    with torch.no_grad():
        assert torch.equal(loaded.model(ids).logits, plain)


def test_pattern_taps_do_not_change_logits(loaded):
    ids = random_ids(2, 20)
    with torch.no_grad():
        plain = loaded.model(ids).logits
    out, rec = logits(loaded, ids, taps=Taps(pattern=True, z=True, qkv=True))
    assert (out - plain).abs().max() <= TOL
    assert rec.z(0).shape == (2, 20, loaded.info.n_heads, loaded.info.d_head)
    assert rec.q(0).shape == (2, loaded.info.n_heads, 20, loaded.info.d_head)
    assert rec.k(0).shape == (2, loaded.info.n_kv_heads, 20, loaded.info.d_head)


def test_patterns_are_causal_distributions_matching_eager(loaded):
    ids = random_ids(2, 20)  # longer than the Gemma 3 sliding window (6)
    _, rec = logits(loaded, ids, taps=Taps(pattern=True))
    model = loaded.model
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            eager = model(ids, output_attentions=True).attentions
    finally:
        model.set_attn_implementation("sdpa")
    for layer in range(loaded.info.n_layers):
        p = rec.pattern(layer)
        assert torch.allclose(p.sum(-1), torch.ones_like(p.sum(-1)), atol=1e-5)
        future = torch.triu(torch.ones(20, 20, dtype=torch.bool), diagonal=1)
        assert p[..., future].abs().max() == 0
        assert (p - eager[layer]).abs().max() <= TOL


def test_sliding_window_layer_is_respected():
    model, tok = tiny_model("gemma3")
    m = headatlas.load((model, tok), device="cpu")
    window = model.config.sliding_window
    _, rec = logits(m, random_ids(1, 20), taps=Taps(pattern=True, layers=[0]))
    p = rec.pattern(0)[0]  # layer 0 is a sliding-window layer
    q, k = torch.meshgrid(torch.arange(20), torch.arange(20), indexing="ij")
    outside = k <= q - window
    assert outside.any() and p[:, outside].abs().max() == 0


def test_reducer_sees_every_layer_and_stores_no_pattern(loaded):
    ids = random_ids(2, 16)
    seen = []

    def prev_mass(layer, pattern, call):
        seen.append(layer)
        return pattern.diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1)  # [B, H]

    _, rec = logits(loaded, ids, taps=Taps(reducer=prev_mass))
    assert seen == list(range(loaded.info.n_layers))
    assert not rec._pattern
    _, full = logits(loaded, ids, taps=Taps(pattern=True))
    for layer in range(loaded.info.n_layers):
        expect = full.pattern(layer).diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1)
        assert torch.allclose(rec.reduced[layer][0], expect, atol=1e-6)


def test_patching_every_head_with_its_own_z_is_identity(loaded):
    ids = random_ids(2, 16)
    clean, rec = logits(loaded, ids, taps=Taps(z=True))
    edits = [patch(layer, None, rec.z(layer)) for layer in range(loaded.info.n_layers)]
    out, _ = logits(loaded, ids, edits=edits)
    assert (out - clean).abs().max() <= TOL


def _zero_by_hook(m, ids, layer, head):
    module = m.layout.attention_modules[layer]
    proj = getattr(module, m.layout.out_proj_name)
    d = m.info.d_head

    def hook(_mod, args):
        x = args[0].clone()
        x[..., head * d:(head + 1) * d] = 0
        return (x,) + tuple(args[1:])

    handle = proj.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            return m.model(ids).logits
    finally:
        handle.remove()


@pytest.mark.parametrize("layer,head", [(0, 0), (1, 2), (2, 3)])
def test_zero_ablation_matches_independent_hook(loaded, layer, head):
    ids = random_ids(2, 16)
    ours, _ = logits(loaded, ids, edits=[zero(layer, head)])
    ref = _zero_by_hook(loaded, ids, layer, head)
    plain, _ = logits(loaded, ids)
    assert (ours - ref).abs().max() <= TOL
    assert (ours - plain).abs().max() > 1e-4  # the ablation did something


def test_batched_single_head_edits_equal_separate_runs(loaded):
    B = 5
    one = random_ids(1, 14, seed=3)
    ids = one.expand(B, -1).contiguous()
    d = loaded.info.d_head
    g = torch.Generator().manual_seed(0)
    vec = torch.randn(d, generator=g)
    specs = [("zero", 0, 1, None), ("scale", 1, 2, 0.5), ("add", 2, 0, vec), ("set", 1, 3, vec), ("zero", 2, 3, None)]
    batched = []
    for row, (op, layer, head, value) in enumerate(specs):
        batched.append(HeadEdit(layer, head, op, value=value, rows=[row]))
    out, _ = logits(loaded, ids, edits=batched)
    for row, (op, layer, head, value) in enumerate(specs):
        single, _ = logits(loaded, one, edits=[HeadEdit(layer, head, op, value=value)])
        assert (out[row] - single[0]).abs().max() <= TOL


def test_position_restricted_edit_only_changes_later_positions(loaded):
    ids = random_ids(1, 16)
    plain, _ = logits(loaded, ids)
    out, _ = logits(loaded, ids, edits=[zero(0, None, positions=[10])])
    assert torch.equal(out[:, :10], plain[:, :10])
    assert (out[:, 10:] - plain[:, 10:]).abs().max() > 1e-5


def test_scale_one_and_add_zero_are_no_ops(loaded):
    ids = random_ids(2, 12)
    plain, _ = logits(loaded, ids)
    out, _ = logits(loaded, ids, edits=[scale(1, [0, 1], 1.0), add(2, 3, torch.zeros(loaded.info.d_head))])
    assert (out - plain).abs().max() <= TOL


def test_gradients_reach_z(loaded):
    ids = random_ids(2, 12)
    with instrumented(loaded, taps=Taps(z=True, grad=True)) as rec:
        out = loaded.model(ids).logits
    out[:, -1, 5].sum().backward()
    for layer in range(loaded.info.n_layers):
        assert rec.z(layer).grad is not None
    # the gradient equals the gradient at the output projection's input, captured independently
    layer = loaded.info.n_layers - 1
    proj = getattr(loaded.layout.attention_modules[layer], loaded.layout.out_proj_name)
    grabbed = {}

    def hook(_m, args):
        args[0].retain_grad()
        grabbed["x"] = args[0]

    h = proj.register_forward_pre_hook(hook)
    try:
        loaded.model.zero_grad()
        loaded.model(ids).logits[:, -1, 5].sum().backward()
    finally:
        h.remove()
    ref = grabbed["x"].grad.reshape(rec.z(layer).shape)
    assert torch.allclose(rec.z(layer).grad, ref, atol=1e-6)
    loaded.model.zero_grad()


def test_bfloat16_no_edits_is_exact():
    model, tok = tiny_model("llama", dtype=torch.bfloat16)
    m = headatlas.load((model, tok), device="cpu")
    ids = random_ids(2, 12)
    with torch.no_grad():
        plain = model(ids).logits
    out, rec = logits(m, ids, taps=Taps(z=True))
    assert torch.equal(out, plain)
    assert rec.z(0).dtype == torch.float32  # stored copies are float32
    edited, _ = logits(m, ids, edits=[zero(1, 1)])
    assert (edited.float() - plain.float()).abs().max() > 0


def _greedy_uncached(m, ids, edits, steps):
    """Greedy decoding by full forwards (no KV cache), the same edits in every step (an edit at a position
    the step does not reach yet is left out of it: headatlas refuses edits that a run never applies)."""
    seq = ids
    for _ in range(steps):
        reached = [e for e in edits if e.positions is None or max(e.positions) < seq.shape[1]]
        out, _ = logits(m, seq, edits=reached)
        seq = torch.cat([seq, out[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq


def test_generation_with_kv_cache(loaded):
    ids = random_ids(1, 6)
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        plain = loaded.model.generate(ids, **kw)
        with instrumented(loaded, taps=Taps(z=True)) as rec:
            ours = loaded.model.generate(ids, **kw)
    assert torch.equal(plain, ours)
    assert rec.z(0).shape[1] == plain.shape[1] - 1  # prompt + all but the last generated token
    # an edit during cached generation equals the same edit on uncached full forwards, step by step
    edit = [zero(1, 2), scale(2, 0, 3.0)]
    with torch.no_grad(), instrumented(loaded, edits=edit):
        cached = loaded.model.generate(ids, **kw)
    assert torch.equal(cached, _greedy_uncached(loaded, ids, edit, 5))


def test_position_edits_during_generation_hit_absolute_positions(loaded):
    ids = random_ids(1, 6)
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    edit = [scale(0, None, 0.0, positions=[7])]  # a position only reached while decoding
    with torch.no_grad(), instrumented(loaded, edits=edit):
        cached = loaded.model.generate(ids, **kw)
    assert torch.equal(cached, _greedy_uncached(loaded, ids, edit, 4))


def test_bad_edits_get_clear_errors(loaded):
    ids = random_ids(1, 8)
    with pytest.raises(headatlas.InputError, match="layer 7"):
        logits(loaded, ids, edits=[zero(7, 0)])
    with pytest.raises(headatlas.InputError, match="head index out of range"):
        logits(loaded, ids, edits=[zero(0, 9)])
    with pytest.raises(headatlas.InputError, match="needs a value"):
        HeadEdit(0, 0, "add")
    with pytest.raises(headatlas.InputError, match="unknown edit op"):
        HeadEdit(0, 0, "explode")


def test_nested_sessions_on_one_model_are_refused(loaded):
    with instrumented(loaded):
        with pytest.raises(headatlas.HeadAtlasError, match="already has an active"):
            with instrumented(loaded):
                pass


def test_recorded_tensors_are_copies_not_aliases(loaded):
    ids = random_ids(1, 8)
    with torch.no_grad(), instrumented(loaded, taps=Taps(z=True, qkv=True)) as rec:
        loaded.model(ids)
    z, k = rec.z(0), rec.k(0)
    z_before, k_before = z.clone(), k.clone()
    with torch.no_grad(), instrumented(loaded, edits=[zero(0, None)]):
        loaded.model(ids)  # a later run (with in-place edits) must not touch what was recorded
    assert torch.equal(z, z_before) and torch.equal(k, k_before)
    assert z.data_ptr() != k.data_ptr()
