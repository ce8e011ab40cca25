"""IOI roles: negative_name_mover (planted DLA arrays, shared pass with name_mover, causal direction) and
s_inhibition (planted drops, per-prompt path patching equal to path_patch's means, skips without name movers),
plus one slow run on smollm2-135m."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import headatlas
from headatlas.detectors import NOT_FOUND, ScanCache, ScanConfig, get
from headatlas.detectors.dla.negative_name_mover import negative_check, negative_result
from headatlas.detectors.patching.s_inhibition import MIN_DROP, path_patch_per_prompt, sinh_check, sinh_result
from headatlas.detectors.dla.name_mover import IOI_PASS, ioi_batches
from headatlas.errors import InputError


def _planted_ioi(B: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """[L=2, B, H=4]: (1, 0) attends to IO and writes it; (1, 1) attends to IO and writes against it;
    (1, 2) writes against IO without attending to it; (0, 3) attends to IO, weakly negative (-0.05)."""
    rng = np.random.default_rng(seed)
    shape = (2, B, 4)
    per = {k: rng.normal(0, 0.02, shape) for k in ("dla", "dla_io", "dla_s")}
    per.update({k: np.abs(rng.normal(0.05, 0.02, shape)) for k in ("attn_io", "attn_s1", "attn_s2")})
    per["attn_io"][1, :, 0] = 0.6 + rng.normal(0, 0.05, B)
    per["dla"][1, :, 0] = 1.0 + rng.normal(0, 0.2, B)
    per["attn_io"][1, :, 1] = 0.5 + rng.normal(0, 0.05, B)
    per["dla"][1, :, 1] = -2.0 + rng.normal(0, 0.2, B)
    per["dla"][1, :, 2] = -1.0 + rng.normal(0, 0.2, B)
    per["attn_io"][0, :, 3] = 0.5 + rng.normal(0, 0.05, B)
    per["dla"][0, :, 3] = -0.05 + rng.normal(0, 0.01, B)
    return per


def test_negative_name_mover_planted():
    r = negative_result(_planted_ioi(), seed=0, data_description="planted", n_perm=999)
    assert r.labelled == [(1, 1)]                              # not the positive mover, not the non-attender
    assert r.effect[1, 1] < -1.5 and r.q_value[1, 1] <= 0.05 and r.rule.direction == "less"
    assert r.q_value[1, 2] <= 0.05 and r.extras["attends_io"][1, 2] == 0    # significant, but does not attend IO
    assert r.q_value[0, 3] <= 0.05 and r.effect[0, 3] > -0.1               # below the effect floor
    assert r.p_value[1, 0] > 0.5                                           # positive mover: not negative
    assert r.details["heads"][0]["head"] == "L1H1"
    rng = np.random.default_rng(3)
    noise = {k: rng.normal(0, 0.1, (2, 16, 4)) for k in _planted_ioi()}
    assert negative_result(noise, seed=0, data_description="noise", n_perm=999).labelled == []


def test_s_inhibition_planted_drops_and_non_senders():
    rng = np.random.default_rng(0)
    drop = rng.normal(0, 0.05, (3, 16, 2))
    drop[0, :, 1] += 0.5                                       # a real S-inhibition sender
    drop[1, :, 0] += 0.05                                      # consistent but below MIN_DROP
    drop[2, :, 0] += 5.0                                       # huge, but layer 2 holds the receiver: not a sender
    sender = np.zeros((3, 2), dtype=bool)
    sender[:2] = True
    r = sinh_result(drop, sender, seed=0, data_description="planted", n_perm=999)
    assert r.labelled == [(0, 1)] and r.effect[0, 1] >= MIN_DROP
    assert r.effect[2, 0] == 0 and r.p_value[2, 0] == 1.0 and r.extras["sender"][2, 0] == 0
    flat = sinh_result(rng.normal(0, 0.05, (3, 16, 2)), sender, seed=0, data_description="noise", n_perm=999)
    assert flat.labelled == []


@pytest.fixture(scope="module")
def english():
    from english_tiny import english_tiny_model

    return headatlas.load(english_tiny_model(n_ctx=512), device="cpu")


def test_negative_shares_the_ioi_pass_and_is_reproducible(english):
    cache = ScanCache()
    cfg = ScanConfig(seed=2, quick=True, cache=cache)
    pos = get("name_mover").run(english, cfg)
    neg = get("negative_name_mover").run(english, cfg)
    assert [k[0] for k in cache.values] == [IOI_PASS.name] and get("negative_name_mover").uses == (IOI_PASS,)
    assert np.array_equal(pos.scores, neg.scores) and neg.labelled == []            # same DLA, other direction
    again = get("negative_name_mover").run(english, ScanConfig(seed=2, quick=True))
    for f in ("effect", "p_value", "q_value", "ci_low"):
        assert np.array_equal(getattr(neg, f), getattr(again, f), equal_nan=True)


def test_s_inhibition_skips_without_name_movers(english):
    cfg = ScanConfig(seed=0, quick=True)
    movers = get("name_mover").run(english, cfg)
    assert movers.labelled == []
    with pytest.raises(InputError, match=NOT_FOUND + "no name mover heads were labelled"):
        get("s_inhibition").run(english, ScanConfig(seed=0, quick=True, results={"name_mover": movers}))
    assert get("s_inhibition").requires == ("name_mover",) and get("s_inhibition").stage == "LR"


def test_per_prompt_path_patching_matches_path_patch(english):
    from headatlas.methods.path_patching import path_patch

    b = ioi_batches(english, 12, 5, n_templates=1)[0]
    senders = [(0, h) for h in range(english.info.n_heads)]
    per = path_patch_per_prompt(english, b, [(1, 0)], senders)
    ref = path_patch(english, b.clean_ids, b.corrupted_ids, [(1, 0)], b.io_ids, b.s_ids, via="q", senders=senders)
    assert per.shape == (len(senders), 12)
    np.testing.assert_allclose(ref.clean_metric - per.mean(1), [ref.values[0, h] for _, h in senders], atol=1e-5)
    assert np.abs(per).max() > 0                               # the senders do change the receiver's query


def test_s_inhibition_runs_with_forced_receivers_and_causal_directions(english):
    cfg = ScanConfig(seed=0, quick=True)
    movers = get("name_mover").run(english, cfg)
    movers.labelled = [(1, 0)]
    r = get("s_inhibition").run(english, ScanConfig(seed=0, quick=True, results={"name_mover": movers}))
    L, H = english.info.n_layers, english.info.n_heads
    assert r.scores.shape == (L, H) and r.n_prompts >= 12 and np.isfinite(r.p_value).all()
    assert (r.extras["sender"][0] == 1).all() and (r.extras["sender"][1:] == 0).all()
    assert r.details["receivers"] == ["L1H0"] and r.labelled == [] and r.details["edges"] == []
    r.labelled = [(0, 1)]
    assert sinh_check(english, cfg, r).expected == "decrease"
    c = negative_check(english, cfg, r)
    assert c.expected == "increase" and len(c.random_effects) == 20 and np.isfinite(c.effect)


@pytest.mark.slow
def test_smollm2_ioi_roles():
    """64 prompts (32 leave L24H4 at q 0.12): L24H4 attends to IO and writes against it (docs/ioi_circuit.md)."""
    torch.set_num_threads(1)
    m = headatlas.load("smollm2-135m")
    cache = ScanCache()
    cfg = ScanConfig(seed=0, n_prompts=64, cache=cache, options={"mover_patching": "none"})
    pos = get("name_mover").run(m, cfg)
    neg = get("negative_name_mover").run(m, cfg)
    assert len(cache.values) == 1                               # one IOI pass for both
    assert neg.labelled == [(24, 4)] and neg.effect[24, 4] < -0.3 and neg.extras["dla_from_io"][24, 4] < -0.5
    assert pos.labelled and (23, 0) in pos.labelled and not set(pos.labelled) & set(neg.labelled)
