"""MCQA (constant, single_letter, correct_letter) and IOI mover detectors, and direct logit
attribution split by source position: exactness, planted heads, random weights, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import headatlas
from headatlas import stats
from headatlas.detectors import ScanConfig, get
from headatlas.detectors.base import ScanCache
from headatlas.detectors.dla.mcqa import (MCQA_PASS, _best, evenness, letter_contrast_excluding, mcqa_stats, output_test,
                                      permuted_best_null)
from headatlas.detectors.dla.name_mover import mover_result
from headatlas.instrument import Taps, instrumented
from headatlas.methods.dla import capture_final_residual, direct_logit_effect, dla_by_source

MCQA = ("constant", "single_letter", "correct_letter")
MINE = MCQA + ("name_mover",)


# ---------------------------------------------------------------- dla_by_source


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_dla_by_source_sums_to_the_heads_direct_effect(kind):
    from tiny import tiny_model

    m = headatlas.load(tiny_model(kind), device="cpu")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 64, (5, 12), generator=g)
    q = torch.tensor([11, 7, 9, 11, 3])
    targets = {"a": torch.randint(3, 64, (5,), generator=g), "b": torch.randint(3, 64, (5,), generator=g)}
    d = dla_by_source(m, ids, q, targets, batch_size=2)
    L, H = m.info.n_layers, m.info.n_heads
    assert d.values["a"].shape == (5, L, H, 12) and d.attention.shape == (5, L, H, 12)
    with torch.no_grad(), capture_final_residual(m) as res, instrumented(m, taps=Taps(z=True)) as rec:
        m.model(input_ids=ids)
    rows = torch.arange(5)
    for layer in range(L):
        z = rec.z(layer)[rows, q]
        for name, t in targets.items():
            a_in = res.attn_in[layer][0][rows, q] if layer in res.attn_in else None   # gemma3 sandwich norm
            ref = direct_logit_effect(m, layer, z, res[0][rows, q], t, attn_in=a_in)
            scale = float(ref.abs().max())
            assert torch.allclose(d.total(name)[:, layer], ref, atol=1e-5 * max(scale, 1e-3), rtol=1e-4)
    # attention rows sum to 1 and nothing is read past the query
    assert torch.allclose(d.attention.sum(-1), torch.ones(5, L, H), atol=1e-5)
    for r in range(5):
        assert (d.values["a"][r, :, :, int(q[r]) + 1:] == 0).all()


def test_dla_by_source_layers_subset_and_argument_checks():
    from tiny import tiny_model

    m = headatlas.load(tiny_model("llama"), device="cpu")
    ids = torch.randint(3, 64, (3, 8), generator=torch.Generator().manual_seed(1))
    t = {"x": torch.tensor([5, 6, 7]), "y": torch.tensor([9, 9, 9])}
    d = dla_by_source(m, ids, 7, t)
    d2 = dla_by_source(m, ids, torch.tensor([7, 7, 7]), {"x": t["x"]}, layers=[1])
    assert torch.allclose(d2.values["x"][:, 1], d.values["x"][:, 1], atol=1e-6) and (d2.values["x"][:, 0] == 0).all()
    # a contrast of targets is the contrast of the maps (same pass)
    assert torch.allclose(d.total("x") - d.total("y"), (d.values["x"] - d.values["y"]).sum(-1), atol=1e-6)
    with pytest.raises(ValueError):
        dla_by_source(m, ids, 8, t)
    with pytest.raises(ValueError):
        dla_by_source(m, ids, 7, {"x": torch.tensor([1, 2])})


# ---------------------------------------------------------------- planted MCQA statistics


def test_mcqa_attention_statistics_on_planted_patterns():
    B, K = 16, 4
    correct = np.arange(B) % K
    a = np.full((1, B, 5, K), 0.01)
    a[0, :, 0] = 0.2                         # head 0: constant (even over letters, mass 0.8)
    a[0, :, 1, 3] = 0.9                      # head 1: always on letter D
    a[0, np.arange(B), 2, correct] = 0.9     # head 2: the correct letter
    rng = np.random.default_rng(0)
    a[0, :, 4] = rng.dirichlet(np.ones(K), size=B) * 0.8     # head 4: random letter each prompt
    ev = evenness(a).mean(1)[0]
    assert np.argmax(ev) == 0 and ev[0] == pytest.approx(0.8)
    x = letter_contrast_excluding(a, correct)
    best = _best(x)[0]
    assert np.argmax(best) == 1 and stats.best_candidate(x)[0, 1] == 3
    assert best[2] < 0                       # correct-letter heads are not single-letter heads
    draws = permuted_best_null(x, 999, rng=np.random.default_rng(1))
    p = stats.permutation_p(_best(x), draws, "greater")[0]
    assert p[1] < 0.01 and p[4] > 0.05 and p[2] > 0.05


def test_mcqa_output_heads_planted_dla():
    """Head (1, 0) raises the correct letter's logit; (1, 1) always raises letter A (a bias, not an
    output head); (0, 2) lowers the correct letter; the rest is noise."""
    B, K = 16, 4
    rng = np.random.default_rng(0)
    correct = np.arange(B) % K
    x = rng.normal(0, 0.05, (2, B, 3, K))
    x[1, np.arange(B), 0, correct] += 1.0
    x[1, :, 1, 0] += 2.0
    x[0, np.arange(B), 2, correct] -= 1.0
    tested, scores = output_test(x, correct, seed=0, n_perm=999)
    assert tested.labelled == [(1, 0)]
    assert tested.effect[1, 0] > 0.9 and tested.p_value[1, 1] > 0.05 and tested.p_value[0, 2] > 0.5
    again, _ = output_test(x, correct, seed=0, n_perm=999)
    assert np.array_equal(again.p_value, tested.p_value)


def test_mcqa_patching_agreement_runs_when_asked(english):
    cfg = ScanConfig(seed=2, quick=True, options={"mcqa_patching_always": True})
    p = mcqa_stats(english, cfg).patching
    assert np.isfinite(p["spearman_with_output_effect"]) and 0 <= p["top_overlap"] <= p["top"]
    quiet = mcqa_stats(english, ScanConfig(seed=2, quick=True)).patching
    assert "no output heads" in quiet["skipped"]


# ---------------------------------------------------------------- planted mover


def _planted_ioi(B: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """Per-prompt arrays [L=2, B, H=4]: head (1, 0) attends to IO and writes it; (1, 1) attends to IO and
    writes against it; (1, 2) writes IO without attending to it; the rest is noise."""
    rng = np.random.default_rng(seed)
    shape = (2, B, 4)
    per = {k: rng.normal(0, 0.02, shape) for k in ("dla", "dla_io", "dla_s")}
    attn = {k: np.abs(rng.normal(0.05, 0.02, shape)) for k in ("attn_io", "attn_s1", "attn_s2")}
    per.update(attn)
    per["attn_io"][1, :, 0] = 0.6 + rng.normal(0, 0.05, B)
    per["dla"][1, :, 0] = 1.0 + rng.normal(0, 0.2, B)
    per["attn_io"][1, :, 1] = 0.5 + rng.normal(0, 0.05, B)
    per["dla"][1, :, 1] = -2.0 + rng.normal(0, 0.2, B)
    per["dla"][1, :, 2] = 1.0 + rng.normal(0, 0.2, B)
    return per


def test_mover_planted_positive_labelled_negative_listed():
    per = _planted_ioi()
    patch = np.zeros((2, 4))
    patch[1, 0], patch[1, 2] = 0.5, 0.3
    r = mover_result(per, seed=0, data_description="planted", patch_effect=patch, n_perm=999)
    assert r.labelled == [(1, 0)]
    assert [n["head"] for n in r.details["negative"]] == ["L1H1"] and r.details["negative"][0]["dla"] < -1.5
    assert r.extras["attends_io"][1, 2] == 0                    # writes IO but does not attend: not a mover
    assert [n["head"] for n in r.details["direct_without_io_attention"]] == ["L1H2"]
    assert r.details["patching"]["labelled_patching"]["L1H0"]["rank"] == 1
    assert r.q_value[1, 0] <= 0.05 and r.effect[1, 0] > 0.5
    # no signal at all: nothing labelled, nothing negative
    rng = np.random.default_rng(3)
    noise = {k: rng.normal(0, 0.1, (2, 16, 4)) for k in per}
    r0 = mover_result(noise, seed=0, data_description="noise", n_perm=999)
    assert r0.labelled == [] and r0.details["negative"] == []


# ---------------------------------------------------------------- end to end on tiny models


@pytest.fixture(scope="module")
def english():
    from english_tiny import english_tiny_model

    return headatlas.load(english_tiny_model(n_ctx=512), device="cpu")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_weights_label_nothing(seed):
    from english_tiny import english_tiny_model

    m = headatlas.load(english_tiny_model(n_ctx=512, seed=seed), device="cpu")
    cfg = ScanConfig(seed=seed, quick=True)
    for name in MINE:
        r = get(name).run(m, cfg)
        assert r.labelled == [], (name, seed, r.labelled)
        assert np.isfinite(r.p_value).all() and (r.p_value > 0).all()
    assert mcqa_stats(m, cfg).output.labelled == []           # no output heads on random weights


def test_same_seed_bit_identical_and_shared_pass(english):
    cache = ScanCache()
    cfg = ScanConfig(seed=3, quick=True, cache=cache)
    first = {name: get(name).run(english, cfg) for name in MINE}
    assert len([k for k in cache.values if k[0] == MCQA_PASS.name]) == 1      # one MCQA pass for three detectors
    assert cache.computed_by[MCQA_PASS.name] == "(direct call)"
    assert not hasattr(english, "_cache") or not any("mcqa" in str(k) for k in english._cache)
    again = ScanConfig(seed=3, quick=True)                                     # a fresh scan cache
    L, H = english.info.n_layers, english.info.n_heads
    for name in MINE:
        r1, r2 = first[name], get(name).run(english, again)
        for f in ("scores", "effect", "p_value", "q_value", "ci_low", "ci_high", "null_mean", "null_std"):
            assert np.array_equal(getattr(r1, f), getattr(r2, f), equal_nan=True), (name, f)
        assert r1.scores.shape == (L, H) and all(v.shape == (L, H) for v in r1.extras.values())
        assert r1.data_description and r1.null_description and r1.n_null > 0
    other = get("name_mover").run(english, ScanConfig(seed=4, quick=True))
    assert not np.array_equal(other.scores, first["name_mover"].scores)


def test_causal_checks_run_on_a_given_set(english):
    from headatlas.atlas.records import LabelRule
    from headatlas.detectors.dla.mcqa import mcqa_check
    from headatlas.detectors.dla.name_mover import ioi_check

    cfg = ScanConfig(seed=0, quick=True)
    r = get("name_mover").run(english, cfg)
    r.labelled = [(1, 0)]
    for fn in (ioi_check, mcqa_check):
        c = fn(english, cfg, r)
        assert c.kind == "mean" and len(c.random_effects) == 20 and 0 < c.p_value <= 1 and c.expected == "decrease"
        assert np.isfinite(c.effect) and c.n_prompts == 8
    assert get("constant").causal is mcqa_check and get("name_mover").causal is ioi_check
    assert isinstance(get("single_letter").causal, type(mcqa_check)) and LabelRule


def test_mcqa_batch_balanced_twins_and_positions(english):
    from headatlas.tasks.mcqa import mcqa_batch

    b = mcqa_batch(english.tokenizer, 8, seed=0)
    assert sorted(b.correct.tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert (b.swapped_correct != b.correct).all() and b.swapped_ids.shape == b.ids.shape
    tok = english.tokenizer
    for r in range(8):
        assert [tok.decode([int(b.ids[r, p])]) for p in b.letter_pos[r]] == ["A", "B", "C", "D"]
        assert tok.decode(b.ids[r, : b.final_pos[r] + 1]).endswith("Answer:")
        assert tok.decode(b.swapped_ids[r, : b.final_pos[r] + 1]).endswith("Answer:")
        # the twin holds the same values, with the answer moved to another letter
        clean = tok.decode(b.ids[r]).split("\n")[1:5]
        twin = tok.decode(b.swapped_ids[r]).split("\n")[1:5]
        assert sorted(x[3:] for x in clean) == sorted(x[3:] for x in twin)
        assert clean[int(b.correct[r])][3:] == twin[int(b.swapped_correct[r])][3:]
