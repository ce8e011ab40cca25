"""Path patching: zero effect without a path or without a difference; an independent hook oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import headatlas
from headatlas.errors import InputError
from headatlas.methods import logit_diff, path_patch
from methods_helpers import head_outputs, oproj_hook, out_proj
from tiny import KINDS, random_ids, tiny_model

MET = logit_diff(torch.tensor([5, 9]), torch.tensor([7, 11]))


@pytest.fixture(params=KINDS, scope="module")
def loaded(request):
    return headatlas.load(tiny_model(request.param), device="cpu")


def pair():
    return random_ids(2, 14, seed=21), random_ids(2, 14, seed=22)


@pytest.mark.parametrize("via", ["q", "k", "v", "qkv"])
def test_identical_runs_give_zero_effect(loaded, via):
    clean, _ = pair()
    res = path_patch(loaded, clean, clean, [(2, 1), (2, 3)], metric=MET, via=via)
    senders = res.values[:2]
    assert np.isfinite(senders).all() and np.isnan(res.values[2]).all()
    assert np.abs(senders - res.clean_metric).max() <= 1e-5


def test_sender_without_a_path_has_zero_effect(loaded):
    clean, corr = pair()
    D = loaded.info.d_head
    proj = out_proj(loaded, 0)
    w = proj.weight
    cols = (slice(None), slice(D, 2 * D)) if type(proj).__name__ != "Conv1D" else (slice(D, 2 * D), slice(None))
    saved = w.data[cols].clone()
    w.data[cols] = 0  # head (0, 1) writes nothing into the residual stream
    try:
        res = path_patch(loaded, clean, corr, [(2, 0), (2, 2)], metric=MET, via="qkv", senders=[(0, 1), (0, 2), (1, 0)])
    finally:
        w.data[cols] = saved
    assert abs(res.values[0, 1] - res.clean_metric) <= 1e-5
    assert abs(res.values[0, 2] - res.clean_metric) > 1e-4 or abs(res.values[1, 0] - res.clean_metric) > 1e-4


def test_matches_hook_oracle_for_a_whole_receiver_layer(loaded):
    """Receivers = every head of the last layer via q, k and v: their new outputs are exactly what they
    compute when only the sender changes (frozen heads in between: none), so the oracle is two hooked runs."""
    clean, corr = pair()
    L, H = loaded.info.n_layers, loaded.info.n_heads
    z_corr, _ = head_outputs(loaded, corr)
    sender = (L - 2, 1)
    res = path_patch(loaded, clean, corr, [(L - 1, h) for h in range(H)], metric=MET, via="qkv", senders=[sender])

    def put_sender(z):
        z[:, :, sender[1]] = z_corr[sender[0]][:, :, sender[1]]
        return z
    store = {}

    def grab(z):
        store["z"] = z.clone()
        return z
    with torch.no_grad(), oproj_hook(loaded, L - 2, put_sender), oproj_hook(loaded, L - 1, grab):
        loaded.model(clean)
    with torch.no_grad(), oproj_hook(loaded, L - 1, lambda z: store["z"].clone()):
        want = float(MET(loaded.model(clean).logits).mean())
    assert abs(res.values[sender] - want) <= 1e-5
    assert abs(want - res.clean_metric) > 1e-4


def test_errors(loaded):
    clean, corr = pair()
    with pytest.raises(InputError, match="via"):
        path_patch(loaded, clean, corr, [(2, 0)], metric=MET, via="x")
    with pytest.raises(InputError, match="not before"):
        path_patch(loaded, clean, corr, [(1, 0)], metric=MET, senders=[(1, 1)])
    with pytest.raises(InputError, match="out of range"):
        path_patch(loaded, clean, corr, [(1, 9)], metric=MET)
