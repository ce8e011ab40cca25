"""headatlas.compare: a known edit (two planted heads swapped), self-comparison, GQA weight deltas, shape
mismatch, atlases as input, adapters (PEFT LoRA), the CLI and the HTML report's escaping."""

from __future__ import annotations

import copy
import html as html_lib
import json

import numpy as np
import pytest
import torch
from planted import D_HEAD, D_MODEL, PLANTED, planted_model
from tiny import save_tiny_folder, tiny_model

import headatlas
from headatlas.atlas import Atlas
from headatlas.compare import Comparison, activation_delta, activation_prompts, change_test, compare, weight_delta
from headatlas.errors import InputError

SWAP = (0, PLANTED.previous_token[1], PLANTED.positional[1])   # layer 0: heads 1 (previous token) and 3 (offset -2)


def swap_heads(model, layer: int, h1: int, h2: int):
    """A copy of the planted GPT-2 with heads ``h1`` and ``h2`` of ``layer`` exchanged (q, k, v columns of the
    fused c_attn with their biases, and the heads' rows of c_proj): the same function, other head indices."""
    m = copy.deepcopy(model)
    attn = m.transformer.h[layer].attn
    with torch.no_grad():
        w, b, o = attn.c_attn.weight, attn.c_attn.bias, attn.c_proj.weight
        for part in range(3):
            s1 = slice(part * D_MODEL + h1 * D_HEAD, part * D_MODEL + (h1 + 1) * D_HEAD)
            s2 = slice(part * D_MODEL + h2 * D_HEAD, part * D_MODEL + (h2 + 1) * D_HEAD)
            w[:, s1], w[:, s2] = w[:, s2].clone(), w[:, s1].clone()
            b[s1], b[s2] = b[s2].clone(), b[s1].clone()
        r1, r2 = slice(h1 * D_HEAD, (h1 + 1) * D_HEAD), slice(h2 * D_HEAD, (h2 + 1) * D_HEAD)
        o[r1], o[r2] = o[r2].clone(), o[r1].clone()
    return m


@pytest.fixture(scope="module")
def swapped():
    model, tok = planted_model(seed=0)
    a = headatlas.load((model, tok))
    b = headatlas.load((swap_heads(model, *SWAP), tok))
    return a, b, compare(a, b, detectors=["previous_token"], quick=True)


def test_swapped_heads_trade_roles(swapped):
    _, _, c = swapped
    layer, h1, h2 = SWAP
    assert c.atlas_a.labelled("previous_token") == [(layer, h1)]
    assert c.atlas_b.labelled("previous_token") == [(layer, h2)]
    ch = c.changes()["previous_token"]
    assert ch["gained"] == [(layer, h2)] and ch["lost"] == [(layer, h1)] and ch["kept"] == []
    assert ch["significant"] == sorted([(layer, h1), (layer, h2)])
    df = c.to_dataframe()
    row = df[(df["layer"] == layer) & (df["head"] == h1)].iloc[0]
    assert row.labelled_a and not row.labelled_b and row.delta < 0 and row.significant
    assert {"layer", "head", "detector", "score_a", "score_b", "delta", "labelled_a", "labelled_b", "significant",
            "weight_delta", "activation_delta"} <= set(df.columns)
    assert len(df) == c.n_layers * c.n_heads


def test_weight_delta_only_on_the_swapped_heads(swapped):
    _, _, c = swapped
    layer, h1, h2 = SWAP
    moved = np.zeros((c.n_layers, c.n_heads), dtype=bool)
    moved[layer, [h1, h2]] = True
    assert np.all(c.weight_delta[~moved] == 0.0)          # exactly zero elsewhere
    assert np.all(c.weight_delta[moved] > 0.5)
    # both heads read the same query (the position) and copy the same value (the token): their q and v
    # slices are equal, so swapping them changes only k (which offset) and o (where they write)
    for p in ("k", "o"):
        assert np.all(c.weight_parts[p][~moved] == 0.0) and np.all(c.weight_parts[p][moved] > 0.5), p
    assert np.all(c.weight_parts["q"] == 0.0) and np.all(c.weight_parts["v"] == 0.0)
    # the swap keeps the model's function: other heads' outputs are unchanged up to float rounding
    assert np.all(c.activation_delta[moved] > 0.5)
    assert np.all(c.activation_delta[~moved] < 1e-4)


def test_a_model_compared_with_itself_changes_nothing(swapped):
    a, _, c = swapped
    same = Comparison(c.atlas_a, c.atlas_a)
    df = same.to_dataframe()
    assert (df.delta.dropna() == 0).all() and not df.significant.any()
    assert same.changes()["previous_token"] == {"gained": [], "lost": [], "kept": [SWAP[:2]], "significant": []}
    total, parts = weight_delta(a, a)
    assert np.all(total == 0) and all(np.all(v == 0) for v in parts.values())
    ids, _ = activation_prompts(a)
    assert np.all(activation_delta(a, a, ids) == 0)


def test_change_test_needs_both_nulls_and_disjoint_cis(swapped):
    _, _, c = swapped
    ra = c.atlas_a.result("previous_token")
    rb = copy.deepcopy(ra)
    rb.effect = ra.effect + 10 * np.sqrt(2) * ra.null_std    # a 10-sigma shift ...
    rb.ci_low, rb.ci_high = ra.ci_low, ra.ci_high            # ... whose CIs overlap: not significant
    assert not change_test(ra, rb)["significant"].any()
    rb.ci_low = ra.ci_high + 1.0
    rb.ci_high = ra.ci_high + 2.0
    resolvable = np.isfinite(ra.null_std) & (ra.null_std > 1e-6)   # (1 + 1e-20 rounds back to 1)
    assert change_test(ra, rb)["significant"][resolvable].all()


def test_gqa_kv_change_goes_to_every_head_of_the_group():
    model, tok = tiny_model("llama", seed=0)    # 4 query heads, 2 kv heads (d_head 16)
    a = headatlas.load((model, tok))
    edited = copy.deepcopy(model)
    with torch.no_grad():
        edited.model.layers[1].self_attn.k_proj.weight[16:32] += 0.5    # kv head 1 = query heads 2, 3
    b = headatlas.load((edited, tok))
    total, parts = weight_delta(a, b)
    expect = np.zeros_like(total, dtype=bool)
    expect[1, 2:] = True
    assert np.all((total > 0) == expect) and np.all((parts["k"] > 0) == expect)
    assert all(np.all(parts[p] == 0) for p in ("q", "v", "o"))
    assert parts["k"][1, 2] == parts["k"][1, 3]


def test_different_shapes_are_refused_naming_both():
    a = tiny_model("llama", seed=0)
    b = tiny_model("gemma3", seed=0)
    with pytest.raises(InputError, match=r"different shapes.*n_kv_heads=2.*n_kv_heads=1"):
        compare(a, b, detectors=["previous_token"], quick=True)


def test_two_atlases_are_compared_without_models(swapped, tmp_path):
    _, _, c = swapped
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    c.atlas_a.save(pa)
    c.atlas_b.save(pb)
    c2 = compare(pa, pb)
    assert c2.weight_delta is None and c2.activation_delta is None
    assert any("without their models" in n for n in c2.notes)
    assert c2.changes()["previous_token"] == c.changes()["previous_token"]
    # the report of an atlas-vs-atlas comparison: a summary line first, weight deltas "n/a", only changes that pass
    html = c2.to_html()
    body = html[html.index("<body>"):]
    assert body.index("<p class=\"summary\">") < body.index("<table")
    summary = html_lib.unescape(body.split('<p class="summary">')[1].split("</p>")[0])
    n_sig = len(c2.changes()["previous_token"]["significant"])
    assert f"{n_sig} head changes pass the change test" in summary and "weight delta: n/a: compared from atlases" in summary
    section = body.split("<h3 id='d-previous_token'>")[1].split("<h2>")[0]
    assert section.count("<tr>") == 1 + n_sig and ">nan<" not in section and "n/a: compared from atlases" in section
    assert "Detectors in which the head&#x27;s change passes the change test" in body
    # one page shell for both reports: the same head (CSP, referrer, stylesheet) made by headatlas.atlas.page
    from headatlas.atlas.page import asset

    for page in (html, c2.atlas_a.to_html()):
        assert page.startswith("<!DOCTYPE html>") and '<meta name="referrer" content="no-referrer">' in page
        assert asset("assets/page.css") in page
    with pytest.raises(InputError, match="two models or two atlases"):
        compare(pa, planted_model(seed=0))
    with pytest.raises(InputError, match="no such atlas file"):
        compare(tmp_path / "missing.json", pb)


def test_save_writes_json_and_escaped_html(swapped, tmp_path):
    _, _, c = swapped
    evil = "<script>alert(1)</script>\"'&"
    atlas = c.atlas_b
    bad = Atlas({**atlas.model, "name": evil}, {d: atlas.result(d) for d in atlas.detectors}, atlas.meta,
                seed=atlas.seed, settings=atlas.settings, notes=[evil])
    comp = Comparison(c.atlas_a, bad, weight_delta=c.weight_delta, weight_parts=c.weight_parts,
                      activation_delta=c.activation_delta, activation_prompts=evil, notes=[evil])
    paths = comp.save(tmp_path / "out")
    html = open(paths["html"], encoding="utf-8").read()
    assert "<script" not in html and "alert(1)</script>" not in html and "&lt;script&gt;" in html
    policy = html_lib.unescape(html.split('Content-Security-Policy" content="')[1].split('"')[0])
    assert "script-src 'none'" in policy and "connect-src 'none'" in policy and "<link" not in html and " src=" not in html
    back = Comparison.load(tmp_path / "out")
    assert back.atlas_b.model_name == evil and back.notes == [evil]
    assert np.array_equal(back.weight_delta, c.weight_delta)
    assert json.loads(open(paths["json"], encoding="utf-8").read())["changes"]["previous_token"]["gained"] == [[0, 3]]


def test_lora_adapter_folder_loads_merged(tmp_path):
    peft = pytest.importorskip("peft")
    base_dir = tmp_path / "base"
    save_tiny_folder(base_dir, "llama", seed=0)
    base = headatlas.load(str(base_dir), device="cpu")
    cfg = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], layers_to_transform=[1],
                          init_lora_weights=False)
    tuned = peft.get_peft_model(copy.deepcopy(base.model), cfg)
    tuned.save_pretrained(tmp_path / "adapter")
    assert not (tmp_path / "adapter" / "config.json").exists()
    merged = headatlas.load(str(tmp_path / "adapter"), device="cpu")     # base from adapter_config.json
    total, parts = weight_delta(base, merged)
    assert np.all(parts["q"][1] > 0) and np.all(parts["q"][[0, 2]] == 0)
    assert all(np.all(parts[p] == 0) for p in ("k", "v", "o")) and np.all((total > 0) == (parts["q"] > 0))
    from headatlas.models.adapter import load_adapter

    explicit = load_adapter(tmp_path / "adapter", base=base)     # an explicit base is copied, never changed
    assert np.array_equal(weight_delta(merged, explicit)[0], np.zeros_like(total))
    assert np.all(weight_delta(base, headatlas.load(str(base_dir), device="cpu"))[0] == 0)


def test_cli_compare_on_tiny_models(tmp_path):
    from typer.testing import CliRunner

    from headatlas.cli import app

    save_tiny_folder(tmp_path / "a", "llama", seed=0)
    save_tiny_folder(tmp_path / "b", "llama", seed=1)
    res = CliRunner().invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "o"),
                                   "-d", "attention_sink", "--quick", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    comp = Comparison.load(tmp_path / "o")
    assert comp.detectors == ["attention_sink"] and np.all(comp.weight_delta > 0)
    assert (tmp_path / "o" / "comparison.html").is_file() and (tmp_path / "o" / "atlas_b.json").is_file()
    bad = CliRunner().invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out",
                                   str(tmp_path / "o" / "comparison.json")])
    assert bad.exit_code == 2 and "is a file" in bad.output


@pytest.mark.slow
def test_lora_unlearning_induction_on_smollm2(tmp_path):
    """LoRA on layer 18's q/k of smollm2, trained by gradient ascent on the repeat loss (a few steps), saved as an
    adapter folder and compared with the base: weights move in layer 18 only (q and k), induction scores change
    from layer 18 on (about 5 min on 2 busy cores, ~2 min idle)."""
    pytest.importorskip("peft")
    import peft

    from headatlas.tasks.repeats import repeated_tokens

    torch.set_num_threads(1)
    base = headatlas.load("smollm2-135m", device="cpu")
    layer, block = 18, 16
    cfg = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj"], layers_to_transform=[layer])
    torch.manual_seed(1000)                 # the LoRA A matrices' initialisation
    model = peft.get_peft_model(copy.deepcopy(base.model), cfg)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    g = torch.Generator().manual_seed(1000)
    losses = []
    for _ in range(4):
        ids = repeated_tokens(base.tokenizer, 4, block, 2, g).ids
        lp = torch.log_softmax(model(input_ids=ids).logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None])[..., 0]
        loss = -lp[:, block + 1:].mean()
        opt.zero_grad()
        (-loss).backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.save_pretrained(tmp_path / "adapter")
    assert losses[-1] > losses[0]
    comp = compare(base, tmp_path / "adapter", base_b=base, detectors=["induction"], quick=True)
    wd = comp.weight_delta
    assert np.all(wd[layer] > 0) and np.all(np.delete(wd, layer, axis=0) == 0)
    assert np.all(comp.weight_parts["v"] == 0) and np.all(comp.weight_parts["o"] == 0)
    assert np.all(comp.activation_delta[:layer] == 0) and np.all(comp.activation_delta[layer] > 0)
    df = comp.to_dataframe()
    l18 = df[df["layer"] == layer]
    assert (l18["delta"].abs() > 0).any() and (df[df["layer"] < layer]["delta"] == 0).all()
