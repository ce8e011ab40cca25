"""The specificity matrix: a planted model whose A heads move metric A only and B heads metric B only gives a
diagonal-dominant matrix; a no-op set sits at the random sets' centre; the diagonal is the stored check; bad input
is refused; the record round-trips through the atlas JSON; the scan computes and resumes it."""

from __future__ import annotations

import json
from pathlib import Path
import math

import numpy as np
import pytest
import torch
from tiny import ToyTokenizer

import headatlas
from headatlas.atlas import Atlas
from headatlas.atlas.specificity import Reference, Specificity
from headatlas.detectors import base
from headatlas.detectors import specificity as spec
from headatlas.detectors.behaviours import Behaviour, HeadOp, at_positions, per_prompt, token_logit_diff
from headatlas.detectors.causal import behaviour_check
from headatlas.errors import AtlasFileError, InputError, InputTypeError
from headatlas.scan import ScanProgress

N_HEADS, D_HEAD = 16, 4
TA, TB = range(10, 30), range(30, 50)       # the tokens of metric A's and metric B's prompts
A1, A2, B1, B2 = 50, 51, 52, 53             # metric A = logit(A1) - logit(A2); B = logit(B1) - logit(B2)
A_HEADS, B_HEADS = [(0, 0), (0, 1)], [(0, 2), (0, 3)]
FAM_A, FAM_B = "needle log-prob", "yes/no bias"


def planted_model():
    """A tiny Llama (3 layers x 16 heads of 4 dims) where heads L0H0-1 read residual dim 0 (set only by the
    embeddings of TA tokens) and write dim 2 (read only by logit(A1) - logit(A2)); L0H2-3 read dim 1 (TB tokens)
    and write dim 3 (logit(B1) - logit(B2)). No other head or MLP writes dims 2-3. On B's prompts the A heads' output
    is exactly 0 (and vice versa): ablating them changes metric B by nothing, but metric A a lot."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=N_HEADS, num_key_value_heads=N_HEADS, head_dim=D_HEAD,
                      max_position_embeddings=64, tie_word_embeddings=False)
    hf = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        emb = hf.model.embed_tokens.weight
        emb[:, :4] = 0.0
        emb[list(TA), 0] = 3.0
        emb[list(TB), 1] = 3.0
        for layer in hf.model.layers:
            layer.self_attn.o_proj.weight[2:4] = 0.0
            layer.mlp.down_proj.weight[2:4] = 0.0
        att = hf.model.layers[0].self_attn
        for (_, h), read, write in [(A_HEADS[0], 0, 2), (A_HEADS[1], 0, 2), (B_HEADS[0], 1, 3), (B_HEADS[1], 1, 3)]:
            att.v_proj.weight[h * D_HEAD:(h + 1) * D_HEAD] = 0.0
            att.v_proj.weight[h * D_HEAD, read] = 1.0
            att.o_proj.weight[:, h * D_HEAD:(h + 1) * D_HEAD] = 0.0
            att.o_proj.weight[write, h * D_HEAD] = 4.0
        u = hf.lm_head.weight
        u[:, 2:4] = 0.0
        u[A1, 2], u[A2, 2], u[B1, 3], u[B2, 3] = 3.0, -3.0, 3.0, -3.0
    return headatlas.load((hf, ToyTokenizer()), device="cpu")


def _behaviour(tokens, good: int, bad: int, family: str, intervention=HeadOp("zero"), seed: int = 5) -> Behaviour:
    g = torch.Generator().manual_seed(seed)
    ids = torch.tensor(list(tokens))[torch.randint(0, len(tokens), (8, 10), generator=g)]
    n = ids.shape[0]
    fn = at_positions(torch.full((n,), 9), 10, 1, token_logit_diff(torch.full((n,), good), torch.full((n,), bad)))
    return Behaviour(family=family, metric=f"logit({good}) - logit({bad})", expected="decrease", ids=ids,
                     score=per_prompt(fn), intervention=intervention,
                     description=f"planted metric {family}, {intervention.kind} ablation")


def make_a(m, cfg, result=None):
    return _behaviour(TA, A1, A2, FAM_A, seed=cfg.seed + 5)


def make_b(m, cfg, result=None):
    return _behaviour(TB, B1, B2, FAM_B, seed=cfg.seed + 5)


def make_c(m, cfg, result=None):       # B's sibling: the same metric under another intervention (its own run)
    return _behaviour(TB, B1, B2, FAM_B, HeadOp("scale", factor=0.25), seed=cfg.seed + 5)


def _planted_run(name):
    from atlas_fakes import _planted
    return _planted(name)


@pytest.fixture
def registry(monkeypatch):
    from atlas_fakes import FAKES, _scores_option

    dets = {n: base.Detector(n, "KR", "planted", "s", "test", _planted_run(n), metric=fam, evidence="dla",
                             causal=behaviour_check(make), behaviour=make, options=(_scores_option(n),))
            for n, fam, make in [("spec_a", FAM_A, make_a), ("spec_b", FAM_B, make_b), ("spec_c", FAM_B, make_c)]}
    dets["fake_prev"] = FAKES["fake_prev"]
    monkeypatch.setattr(base, "_REGISTRY", dets)
    return dets


def _planted(heads):
    x = np.zeros((3, N_HEADS))
    for lh in heads:
        x[lh] = 0.9
    return x


OPTIONS = {"spec_a": _planted(A_HEADS), "spec_b": _planted(B_HEADS), "spec_c": _planted(B_HEADS)}
NAMES = ["spec_a", "spec_b", "spec_c", "fake_prev"]


@pytest.fixture(scope="module")
def model():
    return planted_model()


@pytest.fixture
def scanned(registry, model, tmp_path):
    return headatlas.scan(model, NAMES, quick=True, options=OPTIONS, out=tmp_path, specificity=True)


def test_planted_heads_give_a_diagonal_dominant_matrix(scanned):
    atlas = scanned
    for n in ("spec_a", "spec_b", "spec_c"):
        assert atlas.result(n).causal.passed, n
    z = atlas.specificity()
    eff = atlas.specificity("effect")
    assert list(z.index) == ["spec_a", "spec_b", "spec_c"] and list(z.columns) == [FAM_A, FAM_B]
    # the diagonal: far beyond the random sets; off the diagonal: the set does exactly nothing to the other metric
    assert z.loc["spec_a", FAM_A] > 5 and z.loc["spec_b", FAM_B] > 5 and z.loc["spec_c", FAM_B] > 5
    assert eff.loc["spec_a", FAM_B] == 0.0 and eff.loc["spec_b", FAM_A] == 0.0
    assert abs(z.loc["spec_a", FAM_B]) < 2 and abs(z.loc["spec_b", FAM_A]) < 2
    for row, fam in [("spec_a", FAM_A), ("spec_b", FAM_B), ("spec_c", FAM_B)]:
        assert z.loc[row, fam] > 3 * max(abs(x) for f, x in z.loc[row].items() if f != fam)
    assert z.attrs["n_heads"] == {"spec_a": 2, "spec_b": 2, "spec_c": 2}
    ov = atlas.specificity_matrix.overlap()
    assert ov.loc["spec_b", "spec_c"] == 2 and ov.loc["spec_a", "spec_b"] == 0 and ov.loc["spec_a", "spec_a"] == 2
    # spec_c's own cell is its own check (scale 0.25, its random sets); the other rows on FAM_B use the reference
    assert z.attrs["reference"]["spec_c"][FAM_B] == "spec_c" and z.attrs["reference"]["spec_a"][FAM_B] == "spec_b"


def test_the_diagonal_is_the_stored_check(scanned):
    rec = scanned.specificity_matrix
    for row, (effect, zval) in rec.diagonal().items():
        c = scanned.result(row).causal
        assert math.isclose(effect, c.effect, rel_tol=1e-5, abs_tol=1e-6), row
        r = np.asarray(c.random_effects)
        assert math.isclose(zval, c.sign * (c.effect - np.median(r)) / np.std(r, ddof=1), rel_tol=1e-4), row


def test_a_no_op_set_sits_at_the_random_centre(scanned, model):
    """A set whose intervention changes nothing has effect exactly 0, so its z is -sign * median / std of the
    random sets; a set that IS one of the random sets gets exactly that set's own place among them."""
    atlas = scanned
    b_check = atlas.result("spec_b").causal
    ref = Reference.from_check("spec_b", FAM_B, b_check)
    assert ref.z(0.0) == pytest.approx(ref.sign * -ref.median / ref.std)
    # the A heads are a no-op on metric B (exact zeros): the matrix gives that z
    assert atlas.specificity().loc["spec_a", FAM_B] == pytest.approx(ref.z(0.0))
    # and the median random set itself gets z 0 when re-measured as a row's set
    beh = make_b(model, base.ScanConfig(quick=True))
    order = np.argsort(b_check.random_effects)
    median_set = b_check.random_sets[int(order[len(order) // 2])]
    got = spec._measure_run(model, base.ScanConfig(quick=True), beh, [median_set])[0]
    assert ref.z(got) == pytest.approx(0.0, abs=1e-6)


def test_json_round_trip_and_old_atlases(scanned, tmp_path):
    path = scanned.save(tmp_path / "a.json")
    back = Atlas.load(path)
    pd_equal = back.specificity().equals(scanned.specificity())
    assert pd_equal and back.specificity().attrs == scanned.specificity().attrs
    assert back.specificity_matrix.notes == scanned.specificity_matrix.notes
    doc = json.loads(open(path).read())
    # an atlas without the key (every atlas written before) loads, and says how to get one
    del doc["specificity"]
    old = Atlas.from_dict(doc)
    with pytest.raises(InputError, match="no specificity matrix"):
        old.specificity()
    # a tampered matrix is refused with a clear message
    for key, value, msg in [("rows", ["nope"], "not a detector"), ("heads", {"spec_a": [[9, 0]]}, "not a head"),
                            ("rows", ["spec_a"] * 300, "at most")]:
        bad = json.loads(open(path).read())
        bad["specificity"][key] = value
        with pytest.raises(AtlasFileError, match=msg):
            Atlas.from_dict(bad)


def test_the_scan_resumes_the_matrix_and_reports_progress(registry, model, tmp_path):
    seen = []

    class Rec(ScanProgress):
        def specificity_update(self, done, total, what):
            seen.append((done, total, what))

    first = headatlas.scan(model, NAMES, quick=True, options=OPTIONS, out=tmp_path, specificity=True, progress=Rec())
    assert seen[-1][0] == seen[-1][1] == 3                   # two columns + spec_c's own run
    calls = []
    orig = spec._measure_run
    try:
        spec._measure_run = lambda *a, **k: calls.append(1) or orig(*a, **k)
        again = headatlas.scan(model, NAMES, quick=True, options=OPTIONS, out=tmp_path, specificity=True)
    finally:
        spec._measure_run = orig
    assert calls == [] and again.specificity().equals(first.specificity())
    assert "specificity" not in headatlas.scan(model, NAMES, quick=True, options=OPTIONS, out=tmp_path).to_dict()


def test_the_public_function_recomputes_a_saved_atlas(scanned, model, tmp_path):
    path = scanned.save(tmp_path / "a.json")
    table = headatlas.specificity(model, path, options=OPTIONS)
    assert np.allclose(table.to_numpy(), scanned.specificity().to_numpy(), equal_nan=True)


def test_bad_input(scanned, registry, model, tmp_path):
    from tiny import tiny_model

    with pytest.raises(InputError, match="layers x"):                     # another model
        headatlas.specificity(headatlas.load(tiny_model("llama"), device="cpu"), scanned, options=OPTIONS)
    with pytest.raises(InputError, match="weights"):                      # same sizes, other weights
        other = planted_model()
        with torch.no_grad():
            other.model.lm_head.weight[0, 0] += 1.0
        headatlas.specificity(other, scanned, options=OPTIONS)
    with pytest.raises(InputError, match="option"):                       # the scan's option values are needed
        headatlas.specificity(model, scanned)
    # a stored check that the behaviour cannot reproduce (other settings, another version): the diagonal says so
    import dataclasses

    moved = Atlas.from_dict(scanned.to_dict())
    r = moved.result("spec_a")
    r.causal = dataclasses.replace(r.causal, effect=r.causal.effect * 1.01)
    with pytest.raises(InputError, match="does not reproduce.*spec_a"):
        headatlas.specificity(model, moved, options=OPTIONS)
    with pytest.raises(InputTypeError, match="Atlas"):                    # not an atlas
        headatlas.specificity(model, 42)
    with pytest.raises(InputError, match="causal"):
        headatlas.scan(model, NAMES, quick=True, options=OPTIONS, causal=False, specificity=True)
    # no confirmed set: an empty matrix that says why
    empty = headatlas.scan(model, ["fake_prev"], quick=True, specificity=True)
    assert empty.specificity().empty and "no detector has a confirmed set" in empty.specificity_matrix.notes[0]


def test_a_record_refuses_inconsistent_parts():
    ref = Reference("a", "f", "m", "decrease", "zero", 0.0, 1.0, 10)
    with pytest.raises(InputError, match="shape"):
        Specificity(rows=("a",), families=("f",), heads={"a": ((0, 0),)}, effects=np.zeros((2, 1)),
                    columns={"f": "a"}, references={"a": ref})
    with pytest.raises(InputError, match="own family"):
        Specificity(rows=("a",), families=("g",), heads={"a": ((0, 0),)}, effects=np.zeros((1, 1)),
                    columns={"g": "a"}, references={"a": ref})
    assert math.isnan(Reference("a", "f", "m", "decrease", "zero", 0.0, 0.0, 10).z(1.0))


def test_the_cli_computes_and_stores_the_matrix(scanned, tmp_path):
    from tiny import toy_fast_tokenizer
    from typer.testing import CliRunner

    from headatlas.cli import app

    folder = tmp_path / "model"
    scanned_model = planted_model()
    scanned_model.model.save_pretrained(folder)
    toy_fast_tokenizer().save_pretrained(folder)
    a = Atlas.from_dict(scanned.to_dict())
    a.specificity_matrix = None
    (tmp_path / "out").mkdir()
    path = Path(a.save(tmp_path / "out" / "atlas.json"))
    runner = CliRunner()
    res = runner.invoke(app, ["specificity", str(path.parent), "--model", str(folder)])
    assert res.exit_code == 2 and "option" in res.output                  # the scan's options were not passed
    a.settings.pop("options")                                             # (the behaviours here do not read them)
    a.save(path)
    res = runner.invoke(app, ["specificity", str(path.parent), "--model", str(folder)])
    assert res.exit_code == 0, res.output
    assert "spec_a (2 heads)" in res.output and (tmp_path / "out" / "atlas.html").is_file()
    back = Atlas.load(path)
    assert np.allclose(back.specificity().to_numpy(), scanned.specificity().to_numpy())
    res = runner.invoke(app, ["specificity", str(path), "--model", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "error" in res.output


def test_the_report_draws_the_matrix_with_escaped_names(scanned):
    html = scanned.to_html()
    assert 'id="specificity"' in html or "id='specificity'" in html
    assert "specificity-heatmap" in html
    doc = scanned.to_dict()
    evil = "<img src=x onerror=alert(1)>"
    s = doc["specificity"]
    s["families"] = [evil if f == FAM_A else f for f in s["families"]]
    s["columns"] = {(evil if k == FAM_A else k): v for k, v in s["columns"].items()}
    s["references"]["spec_a"]["family"] = evil
    page = Atlas.from_dict(doc).to_html()
    at = page.find(evil)
    assert at < 0, page[max(0, at - 300):at + 60]
    # an atlas without the matrix has no such section
    doc.pop("specificity")
    assert "specificity-heatmap" not in Atlas.from_dict(doc).to_html()
