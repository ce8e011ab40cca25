"""The methods on a hybrid model (a tiny MiniMax: layers 1 and 3 have softmax heads, layers 0 and 2 are
lightning-attention layers without heads): every per-head map is NaN on the layers without heads and
finite on the attention layers, and what they compute there is what the plain model gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from arch_zoo import tiny_arch
from tiny import random_ids

import headatlas
from headatlas.instrument import Taps, instrumented, zero
from headatlas.methods import attribution_deltas, head_directions, logit_diff, patch_heads, path_patch
from headatlas.methods.dla import dla_by_source
from headatlas.methods.gating import closing_effects, gate
from headatlas.methods.probing import probe, probe_data

OTHER, ATTN = [0, 2], [1, 3]


@pytest.fixture(scope="module")
def hybrid():
    m = headatlas.load(tiny_arch("minimax"), device="cpu")
    assert m.info.attention_layers == (1, 3)
    return m


def _rows_nan_where_no_heads(a) -> None:
    a = np.asarray(a, dtype=np.float64)
    assert np.isnan(a[OTHER]).all() and np.isfinite(a[ATTN]).all()


def test_patching_and_attribution_maps(hybrid):
    clean, corrupted = random_ids(3, 8, seed=1), random_ids(3, 8, seed=2)
    exact = patch_heads(hybrid, clean, corrupted, 5, 6)
    _rows_nan_where_no_heads(exact)
    # one entry checked against an independent patch of that head alone
    with torch.no_grad(), instrumented(hybrid, taps=Taps(z=True)) as rec:
        hybrid.model(clean)
    with torch.no_grad(), instrumented(hybrid, edits=[headatlas.instrument.patch(3, 2, rec.z(3))]):
        lg = hybrid.model(corrupted).logits[:, -1]
    assert exact[3, 2] == pytest.approx(float((lg[:, 5] - lg[:, 6]).mean()), abs=1e-4)
    att = patch_heads(hybrid, clean, corrupted, 5, 6, method="attribution")
    _rows_nan_where_no_heads(att)
    deltas = attribution_deltas(hybrid, corrupted, clean, logit_diff(torch.tensor([5] * 3), torch.tensor([6] * 3)))
    assert deltas.delta.shape == (4, 4, 8) and torch.isnan(deltas.delta[OTHER]).all()


def test_path_patching_senders_are_attention_heads(hybrid):
    clean, corrupted = random_ids(2, 8, seed=1), random_ids(2, 8, seed=2)
    res = path_patch(hybrid, clean, corrupted, [(3, 0)], 5, 6)
    assert np.isfinite(res.values[1]).all() and np.isnan(res.values[[0, 2, 3]]).all()
    with pytest.raises(headatlas.InputError, match="not an attention layer"):
        path_patch(hybrid, clean, corrupted, [(2, 0)], 5, 6)


def test_dla_by_source_and_steering(hybrid):
    ids = random_ids(2, 8)
    res = dla_by_source(hybrid, ids, 7, {"t": torch.tensor([5, 6])})
    assert res.layers == (1, 3)
    d = head_directions(hybrid, ids, random_ids(2, 8, seed=3))
    assert d.shape == (4, 4, 16) and torch.isnan(d[OTHER]).all() and torch.isfinite(d[ATTN]).all()


def test_gating_and_probing(hybrid):
    ids = random_ids(3, 8)
    g = gate(hybrid, ids, n_seeds=1, steps=2, init_steps=1)
    for arr in (g.minus, g.plus):
        _rows_nan_where_no_heads(arr)
    eff = closing_effects(hybrid, ids, np.nan_to_num(g.minus, nan=1.0))
    assert np.isnan(eff[OTHER]).all() and np.isfinite(eff[ATTN]).all()
    data = probe_data([{"text": f"t{3 + i} t{10 + i % 7}", "label": i % 2, "group": i // 2} for i in range(16)])
    res = probe(hybrid, data, n_folds=2, n_perm=5)
    _rows_nan_where_no_heads(res.accuracy)
    assert all(la in ATTN for la, _ in res.top(8)) and len(res.top(8)) == 8


def test_ablating_an_attention_head_is_exact_and_other_layers_refuse(hybrid):
    ids = random_ids(1, 6)
    with torch.no_grad(), instrumented(hybrid, edits=[zero(1, 0)]):
        edited = hybrid.model(ids).logits
    with torch.no_grad():
        plain = hybrid.model(ids).logits
    assert (edited - plain).abs().max() > 1e-5
    with pytest.raises(headatlas.InputError, match="attention layers are 1, 3"):
        headatlas.ablate_heads(hybrid, [(0, 1)], ids)


def test_a_scan_of_a_hybrid_has_nan_rows_and_says_which_layers_are_attention(hybrid, tmp_path):
    import json

    from headatlas.errors import AtlasFileError

    atlas = headatlas.scan(hybrid, ["previous_token"], quick=True, causal=False)
    assert atlas.model["attention_layers"] == [1, 3]
    _rows_nan_where_no_heads(atlas.scores("previous_token"))
    assert np.isnan(atlas.result("previous_token").p_value[OTHER]).all()
    assert all(la in ATTN for la, _ in atlas.labelled("previous_token"))
    path = atlas.save(tmp_path / "atlas.json")
    assert headatlas.Atlas.load(path).model["attention_layers"] == [1, 3]
    doc = json.loads(open(path).read())
    doc["model"]["attention_layers"] = [1, 9]          # an untrusted file: a layer the model does not have
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(AtlasFileError, match="attention_layers"):
        headatlas.Atlas.load(tmp_path / "bad.json")
