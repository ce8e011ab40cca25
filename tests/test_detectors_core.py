"""Core pattern detectors: pure scoring functions (level 1), OV readout exactness, the repeated
random-token task, and the registered detectors on tiny random models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import KINDS, N_CTX, ToyTokenizer, tiny_model

import headatlas
from headatlas.detectors import ScanConfig, get, names
from headatlas.detectors.patterns import scoring as patterns
from headatlas.methods import dla as ov
from headatlas.detectors.patterns.synthetic import synthetic_stats
from headatlas.errors import InputError
from headatlas.instrument import Taps, instrumented
from headatlas.tasks.repeats import fit_block_len, repeated_tokens

CORE = ("previous_token", "duplicate_token", "induction", "positional", "attention_sink")
L, B, H, BLOCK = 3, 2, 4, 6
IDEAL = (1, 2)


# ---------------------------------------------------------------- level 1: synthetic patterns

def _repeat_ids(batch: int = B, block: int = BLOCK, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randperm(50, generator=g)[:block] + 3 for _ in range(batch)]
    body = torch.stack(rows).repeat(1, 3)
    return torch.cat([torch.ones(batch, 1, dtype=torch.long), body], 1)   # [B, 1 + 3 * block]


def _causal_softmax(logits: torch.Tensor) -> torch.Tensor:
    S = logits.shape[-1]
    causal = torch.ones(S, S, dtype=torch.bool).tril()
    return logits.masked_fill(~causal, float("-inf")).softmax(-1)


def _layers(ideal: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """``[L, B, H, S, S]``: noisy random heads, head (0, 0) uniform, and ``ideal`` at IDEAL."""
    S = ideal.shape[-1]
    g = torch.Generator().manual_seed(seed)
    pats = _causal_softmax(torch.randn(L, B, H, S, S, generator=g) * 1.5)
    pats[0, :, 0] = _causal_softmax(torch.zeros(B, S, S))
    pats[IDEAL[0], :, IDEAL[1]] = ideal
    return pats


def _one_hot_rows(keys: torch.Tensor) -> torch.Tensor:
    """``keys [B, S]`` (key per query) -> ``[B, S, S]`` one-hot patterns."""
    return torch.nn.functional.one_hot(keys, keys.shape[-1]).float()


def _ideal_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Attend the last key of ``mask`` per query, else the first token."""
    S = mask.shape[-1]
    last = torch.where(mask, torch.arange(S), torch.zeros_like(mask, dtype=torch.long)).amax(-1)
    return _one_hot_rows(last)


def _score_all(pats: torch.Tensor, fn) -> np.ndarray:
    return torch.stack([fn(pats[layer]).mean(0) for layer in range(pats.shape[0])]).numpy()


def _assert_ideal_first(scores: np.ndarray, *, top: float = 0.99, others_below: float = 0.5) -> None:
    assert np.unravel_index(np.nanargmax(scores), scores.shape) == IDEAL
    assert scores[IDEAL] >= top
    rest = np.delete(scores.ravel(), IDEAL[0] * scores.shape[1] + IDEAL[1])
    assert np.nanmax(rest) < others_below
    assert scores[0, 0] < 0.2  # the uniform head


def test_previous_token_ideal_head_ranks_first():
    S = 1 + 3 * BLOCK
    ideal = _one_hot_rows((torch.arange(S) - 1).clamp_min(0).expand(B, S))
    queries = torch.arange(S) > 1
    scores = _score_all(_layers(ideal), lambda p: patterns.offset_mass(p, [-1], queries)[..., 0])
    _assert_ideal_first(scores)


def test_duplicate_and_induction_ideal_heads_rank_first():
    ids = _repeat_ids()
    dup, ind = patterns.duplicate_mask(ids), patterns.induction_mask(ids)
    _assert_ideal_first(_score_all(_layers(_ideal_from_mask(dup)), lambda p: patterns.mask_mass(p, dup)))
    _assert_ideal_first(_score_all(_layers(_ideal_from_mask(ind)), lambda p: patterns.mask_mass(p, ind)))
    # each ideal head scores ~0 on the other's key set: the two detectors separate
    assert float(patterns.mask_mass(_ideal_from_mask(dup)[:, None], ind).max()) < 1e-6
    assert float(patterns.mask_mass(_ideal_from_mask(ind)[:, None], dup).max()) < 1e-6


def test_sink_and_positional_ideal_heads_rank_first():
    S = 1 + 3 * BLOCK
    W = 4
    queries = torch.arange(S) > W
    sink = _one_hot_rows(torch.zeros(B, S, dtype=torch.long))
    _assert_ideal_first(_score_all(_layers(sink), lambda p: patterns.key_mass(p, [0], queries)[..., 0]))
    pos3 = _one_hot_rows((torch.arange(S) - 3).clamp_min(0).expand(B, S))
    pats = _layers(pos3)
    frac = torch.stack([patterns.argmax_offset_fractions(pats[layer], W, queries).mean(0) for layer in range(L)])
    back, best = patterns.dominant_offset(frac)
    assert int(back[IDEAL]) == 3 and float(best[IDEAL]) == 1.0
    best[IDEAL] = 0
    assert float(best.max()) < 0.6


def test_offset_and_key_mass_match_loops():
    g = torch.Generator().manual_seed(3)
    S = 9
    pat = _causal_softmax(torch.randn(2, 3, S, S, generator=g))
    queries = torch.arange(S) >= 2
    got = patterns.offset_mass(pat, [0, -1, -2, -4], queries)
    for j, d in enumerate([0, -1, -2, -4]):
        qs = [q for q in range(S) if q >= 2 and q + d >= 0]
        want = torch.stack([pat[..., q, q + d] for q in qs], -1).mean(-1)
        torch.testing.assert_close(got[..., j], want)
    keys = patterns.key_mass(pat, [0, 3], queries)
    torch.testing.assert_close(keys[..., 1], pat[..., 3:, 3].mean(-1))
    torch.testing.assert_close(keys[..., 0], pat[..., 2:, 0].mean(-1))


def test_mul_score_exclude_first_renormalises_non_sink_attention():
    S = 6
    pat = torch.zeros(1, 1, S, S)
    pat[..., 0] = 0.9
    for q in range(1, S):
        pat[0, 0, q, q - 1] += 0.1
    pat[0, 0, 0, 0] = 1.0
    prev = torch.ones(S, S, dtype=torch.bool).tril(-1) & ~torch.ones(S, S, dtype=torch.bool).tril(-2)
    q = torch.arange(S) >= 2
    assert float(patterns.mul_score(pat, prev, q)) == pytest.approx(0.1)
    assert float(patterns.mul_score(pat, prev, q, exclude_first=True)) == pytest.approx(1.0)


def test_masks_and_targets_on_a_small_example():
    ids = torch.tensor([[1, 5, 6, 7, 5, 6, 7]])
    dup = patterns.duplicate_mask(ids)[0]
    assert dup[4].nonzero().flatten().tolist() == [1]
    assert dup[6].nonzero().flatten().tolist() == [3]
    assert not dup.diagonal().any()
    ind = patterns.induction_mask(ids)[0]
    assert ind[4].nonzero().flatten().tolist() == [2]
    assert ind[5].nonzero().flatten().tolist() == [3]
    assert not ind[:4].any()
    assert patterns.induction_targets(ids)[0].tolist() == [-1, -1, -1, -1, 6, 7, 5]


def test_scoring_functions_do_not_mutate_inputs():
    ids = _repeat_ids()
    pat = _layers(_ideal_from_mask(patterns.induction_mask(ids)))[1]
    before = pat.clone()
    patterns.mask_mass(pat, patterns.induction_mask(ids))
    patterns.offset_mass(pat, [0, -1, -3])
    patterns.argmax_offset_fractions(pat, 4)
    patterns.mul_score(pat, patterns.duplicate_mask(ids), exclude_first=True)
    assert torch.equal(pat, before)


def test_bad_pattern_shape_is_a_clear_error():
    with pytest.raises(ValueError, match="pattern"):
        patterns.offset_mass(torch.zeros(2, 3, 4, 5), [-1])
    with pytest.raises(ValueError, match="offsets"):
        patterns.offset_mass(torch.zeros(1, 1, 4, 4), [1])


# ---------------------------------------------------------------- repeated random tokens

def test_repeated_tokens_layout_and_null_twin():
    tok = ToyTokenizer()
    b = repeated_tokens(tok, 5, 40, 3, torch.Generator().manual_seed(1))
    assert b.ids.shape == b.null_ids.shape == (5, 121)
    assert (b.ids[:, 0] == tok.bos_token_id).all() and (b.null_ids[:, 0] == tok.bos_token_id).all()
    body = b.ids[:, 1:].reshape(5, 3, 40)
    assert (body == body[:, :1]).all()
    assert all(len(set(r.tolist())) == 40 for r in body[:, 0])
    assert not ((b.ids[:, 1:] >= 0) & (b.ids[:, 1:] <= 2)).any()        # no special tokens
    null = b.null_ids[:, 1:]
    for j in (40, 80):   # the null never repeats a token at the block distance
        assert not (null[:, j:] == null[:, :-j]).any()
    again = repeated_tokens(tok, 5, 40, 3, torch.Generator().manual_seed(1))
    assert torch.equal(again.ids, b.ids) and torch.equal(again.null_ids, b.null_ids)


def test_block_length_adapts_and_refuses_what_cannot_fit():
    assert fit_block_len(61, 128, n_repeats=3, want=40, has_bos=True) == 40
    assert fit_block_len(61, 64, n_repeats=3, want=40, has_bos=True) == 21
    assert fit_block_len(20, 4096, n_repeats=3, want=40, has_bos=False) == 20
    with pytest.raises(InputError, match="context"):
        fit_block_len(61, 16, n_repeats=3, want=40, has_bos=True, minimum=10)


# ---------------------------------------------------------------- OV readout

@pytest.mark.parametrize("kind", KINDS)
def test_linearised_readout_reproduces_the_logits(kind):
    """Feeding the whole final residual through the linearised norm and unembedding gives the model's
    logits (plus the norm bias for LayerNorm); vocab mean/std from the Gram matrix are exact."""
    m = headatlas.load(tiny_model(kind))
    ids = torch.randint(3, 64, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), ov.capture_final_residual(m) as store:
        logits = m.model(ids).logits.float()
    resid = store[0]
    r = ov.readout(m)
    got = r.normalise(resid, resid) @ r.W_U.t()
    norm = m.final_norm()
    if isinstance(norm, torch.nn.LayerNorm):
        got = got + (norm.bias.float() @ r.W_U.t())
    torch.testing.assert_close(got, logits, atol=2e-4, rtol=1e-4)
    u = r.normalise(resid, resid) @ r.W_U.t()
    tokens = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(1))
    one = ov.logit_effects(resid[..., None, :], resid, tokens, r)
    torch.testing.assert_close(one["logit"][..., 0], u.gather(-1, tokens[..., None])[..., 0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(one["mean"][..., 0], u.mean(-1), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(one["std"][..., 0], u.std(-1, unbiased=False), atol=1e-4, rtol=1e-4)


def test_direct_logit_effect_sums_heads_to_the_attention_output():
    m = headatlas.load(tiny_model("llama"))
    ids = torch.randint(3, 64, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), ov.capture_final_residual(m) as store, instrumented(m, taps=Taps(z=True)) as rec:
        m.model(ids)
    z, resid = rec.z(2), store[0]
    tokens = torch.full((1, 8), 7)
    per_head = ov.direct_logit_effect(m, 2, z, resid, tokens)                       # [1, 8, H]
    out = torch.einsum("bshd,hdm->bsm", z, m.W_O(2).detach())                       # the o_proj output
    whole = ov.logit_effects(out[..., None, :], resid, tokens, ov.readout(m))["logit"][..., 0]
    torch.testing.assert_close(per_head.sum(-1), whole, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- registered detectors

def test_core_detectors_are_registered_with_stages():
    for name in CORE:
        assert name in names()
        d = get(name)
        assert d.stage == ("LR" if name == "induction" else "ICI")
        assert d.summary and d.citation


@pytest.mark.parametrize("kind", KINDS)
def test_detectors_run_on_tiny_models(kind):
    m = headatlas.load(tiny_model(kind))
    for name in CORE:
        r = get(name).run(m, ScanConfig(seed=0, quick=True))
        assert r.scores.shape == r.null_mean.shape == r.null_std.shape == (3, 4)
        assert np.isfinite(r.scores).all() and np.isfinite(r.null_mean).all()
        assert ((r.scores >= 0) & (r.scores <= 1 + 1e-6)).all()
        assert r.data_description and r.null_description and r.n_prompts == 12
        for arr in r.extras.values():
            assert arr.shape == (3, 4)
        assert ((r.p_value > 0) & (r.p_value <= 1)).all() and (r.q_value >= r.p_value - 1e-12).all()
        assert r.labelled == [], f"{name} labelled {r.labelled} on a random-weight model"


def test_seeded_runs_reproduce_exactly_and_seeds_differ():
    def run(seed, batch_size=8):
        m = headatlas.load(tiny_model("llama"))
        cfg = ScanConfig(seed=seed, quick=True, batch_size=batch_size)
        return {n: get(n).run(m, cfg) for n in CORE}

    a, b, c = run(0), run(0), run(1)
    for n in CORE:
        for key in ("scores", "null_std", "effect", "p_value", "q_value", "ci_low", "stability"):
            np.testing.assert_array_equal(getattr(a[n], key), getattr(b[n], key))
    assert not np.array_equal(a["induction"].scores, c["induction"].scores)
    split = run(0, batch_size=1)                     # batched == one prompt per pass
    for n in CORE:
        np.testing.assert_allclose(split[n].scores, a[n].scores, atol=1e-5)
        for k in a[n].extras:
            np.testing.assert_allclose(split[n].extras[k], a[n].extras[k], atol=1e-4)


def test_shared_passes_run_once_per_scan_cache():
    from headatlas.detectors import ScanCache

    m = headatlas.load(tiny_model("gpt2"))
    cache = ScanCache()
    cfg = ScanConfig(seed=0, quick=True, cache=cache)
    assert synthetic_stats(m, cfg) is synthetic_stats(m, ScanConfig(seed=0, quick=True, cache=cache))
    assert synthetic_stats(m, ScanConfig(seed=1, quick=True, cache=cache)) is not synthetic_stats(m, cfg)
    fresh = synthetic_stats(m, ScanConfig(seed=0, quick=True))      # another scan: computed again
    assert fresh is not synthetic_stats(m, cfg)
    np.testing.assert_array_equal(fresh.ind, synthetic_stats(m, cfg).ind)
    assert not hasattr(m, "_cache"), "nothing is cached on the model handle by name"


def test_context_too_short_is_an_input_error():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2, n_positions=16)).eval()
    m = headatlas.load((model, ToyTokenizer()))
    with pytest.raises(InputError, match="context 16"):
        get("induction").run(m, ScanConfig(quick=True))


def test_tiny_context_shrinks_the_data():
    m = headatlas.load(tiny_model("qwen2"))
    st = synthetic_stats(m, ScanConfig(quick=True))
    assert st.batch.seq_len <= N_CTX
    assert st.batch.block_len == 40


# ---------------------------------------------------------------- real model (slow)

@pytest.mark.slow
def test_smollm2_induction_labels_are_tested_and_causal(smollm2):
    """Every induction label has p, q <= 0.05, and mean-ablating the labelled set raises the repeat loss
    more than every layer-matched random set of the same size."""
    a = headatlas.scan(smollm2, ["induction"], seed=0)
    r = a.result("induction")
    assert r.labelled, "no induction heads found on smollm2"
    for lh in r.labelled:
        assert r.p_value[lh] <= 0.05 and r.q_value[lh] <= 0.05
    c = a.causal("induction")
    assert c["kind"] == "mean" and len(c["random_effects"]) >= 20
    assert c["effect"] > max(c["random_effects"]) and c["p_value"] <= 0.05
