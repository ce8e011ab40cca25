"""Per-head probes (methods/probing.py), ITI, the statement data and the probing detectors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import headatlas
from headatlas.errors import InputError
from headatlas.methods.probing import (ProbeData, capture_heads, grouped_folds, iti, load_probe_data,
                                       mass_mean_directions, permute_labels, probe, probe_features,
                                       resolve_positions, token_rows)
from headatlas.tasks.statements import pairs_to_records, statement_pairs


def _planted(n_groups=40, L=3, H=4, D=8, seed=0, strength=1.5, planted=(1, 2)):
    """Features [N, L, H, D] of random noise, except head ``planted`` whose first feature carries the label."""
    rng = np.random.default_rng(seed)
    labels = np.tile([1, 0], n_groups)
    groups = np.repeat(np.arange(n_groups), 2)
    x = rng.normal(size=(2 * n_groups, L, H, D)).astype(np.float32)
    x[:, planted[0], planted[1], 0] += strength * (2 * labels - 1)
    return x, labels, groups


def test_planted_head_is_found_and_no_other():
    x, y, g = _planted()
    r = probe_features(x, y, g, n_perm=299, seed=0)
    assert r.accuracy[1, 2] > 0.8 and r.p[1, 2] == pytest.approx(1 / 300) and r.q[1, 2] <= 0.05
    others = np.ones(r.accuracy.shape, bool)
    others[1, 2] = False
    assert (r.q[others] > 0.05).all()
    assert np.abs(r.null_mean - 0.5).max() < 0.05
    assert r.top(1) == [(1, 2)] and r.significant() == [(1, 2)]
    df = r.to_dataframe()
    assert len(df) == 12 and set(df.columns) >= {"layer", "head", "accuracy", "null_mean", "p", "q"}
    # mass-mean direction of the planted head points along feature 0
    assert abs(r.direction[1, 2, 0]) > 0.9


def test_random_labels_give_chance_accuracy_and_no_significance():
    x, _, g = _planted(strength=0.0)
    y = np.tile([1, 0], 40)
    r = probe_features(x, y, g, n_perm=199, seed=3)
    assert abs(float(r.accuracy.mean()) - 0.5) < 0.08
    assert (r.q > 0.05).all()


def test_logistic_method_agrees_on_the_planted_head():
    x, y, g = _planted(n_groups=20, L=1, H=3, planted=(0, 1), strength=2.0)
    r = probe_features(x, y, g, n_perm=19, method="logistic", n_folds=2)
    assert int(np.argmax(r.accuracy[0])) == 1 and r.p[0, 1] == pytest.approx(1 / 20)


def test_grouped_folds_never_split_a_group_and_permutations_keep_structure():
    y = np.array([1, 0] * 15 + [1, 1, 1, 0, 0, 0])
    g = np.concatenate([np.repeat(np.arange(15), 2), [15, 16, 17, 18, 19, 20]])
    fold = grouped_folds(y, g, 5, seed=1)
    for grp in np.unique(g):
        assert len(set(fold[g == grp])) == 1
    perms = permute_labels(y, g, 50, np.random.default_rng(0))
    assert (perms.sum(1) == y.sum()).all()
    for grp in range(15):    # mixed pairs stay one 1 and one 0
        assert (perms[:, g == grp].sum(1) == 1).all()
    assert not (perms == y).all()
    # single-label groups move as wholes: items of a 2-item pure group share a label
    y2, g2 = np.array([1, 1, 0, 0, 1, 1, 0, 0]), np.array([0, 0, 1, 1, 2, 2, 3, 3])
    p2 = permute_labels(y2, g2, 30, np.random.default_rng(1))
    assert (p2[:, 0::2] == p2[:, 1::2]).all() and len({tuple(r) for r in p2}) > 1


def test_jsonl_loader_errors(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text("")
    with pytest.raises(InputError, match="empty"):
        load_probe_data(f)
    f.write_text('{"text": "a", "label": 1}\nnot json\n')
    with pytest.raises(InputError, match="line 2"):
        load_probe_data(f)
    f.write_text('{"text": "a"}\n')
    with pytest.raises(InputError, match="lacks label"):
        load_probe_data(f)
    f.write_text('{"text": "a", "label": 2}\n')
    with pytest.raises(InputError, match="0 or 1"):
        load_probe_data(f)
    f.write_text("".join(json.dumps({"text": f"t{i}", "label": 1}) + "\n" for i in range(8)))
    with pytest.raises(InputError, match="both labels"):
        load_probe_data(f)
    with pytest.raises(InputError, match="does not exist"):
        load_probe_data(tmp_path / "nope.jsonl")
    f.write_text("".join(json.dumps({"text": f"t{i}", "label": i % 2, "group": i // 2}) + "\n" for i in range(10)))
    d = load_probe_data(f)
    assert len(d) == 10 and list(d.groups[:4]) == [0, 0, 1, 1]


def test_truthfulqa_formats(tmp_path):
    csv = tmp_path / "TruthfulQA.csv"
    rows = ["Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source"]
    for i in range(4):
        rows.append(f'Adversarial,Misc,Q{i}?,a{i},"a{i}; b{i}","c{i}; d{i}",x')
    csv.write_text("\n".join(rows) + "\n")
    d = load_probe_data(csv)
    assert len(d) == 16 and d.labels.sum() == 8 and d.texts[0] == "Q: Q0? A: a0" and len(set(d.groups)) == 4
    js = tmp_path / "tqa.jsonl"
    js.write_text("".join(json.dumps({"question": f"Q{i}?", "correct_answers": [f"a{i}", f"b{i}"],
                                      "incorrect_answers": [f"c{i}", f"d{i}"]}) + "\n" for i in range(4)))
    assert len(load_probe_data(js)) == 16


def test_statements_balanced_grouped_and_split():
    pairs = statement_pairs(seed=0)
    assert {p.domain for p in pairs} == {"geography", "arithmetic", "units", "everyday"}
    assert all(p.true != p.false for p in pairs)
    texts, labels, groups = pairs_to_records(pairs)
    assert labels.mean() == 0.5 and len(set(groups)) == len(pairs)
    probe_split = statement_pairs(seed=0, split="probe")
    held = statement_pairs(seed=0, split="heldout")
    assert len(probe_split) + len(held) == len(pairs) and not set(probe_split) & set(held)
    assert statement_pairs(seed=0) == pairs and statement_pairs(seed=1) != pairs
    # completions do not give the label away: within authored domains each word is true as often as false
    for dom in ("units", "everyday", "geography"):
        ps = [p for p in pairs if p.domain == dom]
        trues = sorted(p.true for p in ps)
        assert sorted(p.false for p in ps) == trues or len(ps) < 2


@pytest.fixture(scope="module")
def tiny():
    from english_tiny import english_tiny_model

    return headatlas.load(english_tiny_model(seed=0), device="cpu")


def test_capture_matches_plain_z_at_last_token(tiny):
    texts = ["Snow is cold.", "The capital of France is Paris.", "3 + 4 = 7."]
    rows = token_rows(tiny, texts)
    pos = resolve_positions(rows, -1)
    cap = capture_heads(tiny, rows, pos, batch_size=2)
    for i, row in enumerate(rows):
        with torch.no_grad(), headatlas.instrumented(tiny, taps=headatlas.Taps(z=True)) as rec:
            tiny.model(input_ids=torch.tensor([row]))
        z = rec.z_all()[:, 0, -1].numpy()
        assert np.allclose(cap.features[i], z, atol=1e-5)
    with pytest.raises(InputError, match="outside"):
        resolve_positions(rows, 40)


def test_probe_on_random_model_finds_nothing(tiny):
    from headatlas.tasks.statements import statement_probe_data

    data = statement_probe_data(seed=0, max_pairs=40)
    r = probe(tiny, data, n_perm=199, n_folds=4)
    assert r.accuracy.shape == (tiny.info.n_layers, tiny.info.n_heads)
    assert (r.q > 0.05).all() and abs(float(r.accuracy.mean()) - 0.5) < 0.1


def test_iti_alpha_zero_is_identity_and_touches_only_chosen_heads(tiny):
    ids = torch.tensor([token_rows(tiny, ["The capital of France is Paris."])[0]])
    L, H, D = tiny.info.n_layers, tiny.info.n_heads, tiny.info.d_head
    dirs = torch.randn(L, H, D, generator=torch.Generator().manual_seed(0))
    taps = headatlas.Taps(z=True)
    with torch.no_grad(), headatlas.instrumented(tiny, taps=taps) as rec:
        base = tiny.model(input_ids=ids).logits
    z0 = rec.z_all()
    it0 = iti(tiny, [(1, 2)], dirs, 0.0, sigma=np.ones((L, H)))
    with torch.no_grad(), headatlas.instrumented(tiny, edits=it0.edits()):
        same = tiny.model(input_ids=ids).logits
    assert torch.allclose(base, same, atol=1e-6)
    it = iti(tiny, [(1, 2)], dirs, 3.0, sigma=np.full((L, H), 2.0))
    with torch.no_grad(), headatlas.instrumented(tiny, edits=it.edits(), taps=taps) as rec:
        tiny.model(input_ids=ids)
    z1 = rec.z_all()
    diff = (z1 - z0).abs().amax(dim=(1, 2, 4))        # [L, H]
    assert diff[1, 2] > 0 and float(diff.sum() - diff[1, 2]) == 0.0
    unit = dirs[1, 2] / dirs[1, 2].norm()
    assert torch.allclose(z1[1, 0, :, 2] - z0[1, 0, :, 2], (6.0 * unit).expand(ids.shape[1], D), atol=1e-5)
    assert isinstance(it.generate("Snow is", max_new_tokens=2), str)


def test_iti_from_probe_result_top_k():
    x, y, g = _planted(L=2, H=3, D=tiny_d_head(), planted=(1, 0))
    r = probe_features(x, y, g, n_perm=99)
    unit, sigma = mass_mean_directions(x, y)
    assert np.allclose(r.direction, unit) and np.allclose(r.sigma, sigma)


def tiny_d_head():
    return 8


def test_probing_detectors_draw_the_contracts_permutations(monkeypatch):
    """A full scan's probing detectors draw stats.N_PERM = 9,999 shuffled-label permutations (p floor 1e-4;
    version 2 drew 999), a quick one 199; all five go through detectors/probing/common.fit_probes."""
    from headatlas import stats
    from headatlas.detectors import ScanConfig
    from headatlas.detectors.probing import common

    seen = []
    monkeypatch.setattr(common, "probe_features", lambda *a, **k: seen.append((k["n_perm"], k["n_folds"])))
    x, y, g = np.zeros((8, 1, 1, 2)), np.array([0, 1] * 4), np.arange(8)
    common.fit_probes(x, y, g, ScanConfig(seed=0), position=-1, source="t")
    common.fit_probes(x, y, g, ScanConfig(seed=0, quick=True), position=-1, source="t")
    assert seen == [(stats.N_PERM, 5), (common.QUICK_PERM, 4)] and stats.N_PERM == 9999
    import inspect
    from headatlas.detectors.probing import accuracy, coherence, consistency, faithfulness, truthfulness
    for mod in (accuracy, coherence, consistency, faithfulness, truthfulness):
        src = inspect.getsource(mod)
        assert "fit_probes(" in src and "probe_features(" not in src and "n_perm=" not in src, mod.__name__


def test_detectors_label_nothing_on_random_models(tiny):
    """(Speed is measured in bench/bench_probing.py, not asserted here.)"""
    from headatlas.detectors import ScanConfig, get

    for name in ("truthfulness",):
        try:
            r = get(name).run(tiny, ScanConfig(seed=0, quick=True))
        except InputError as exc:
            assert str(exc)
            continue
        assert r.labelled == [] and np.isfinite(r.p_value).all()
        r2 = get(name).run(tiny, ScanConfig(seed=0, quick=True))
        assert np.array_equal(r.p_value, r2.p_value) and np.array_equal(r.scores, r2.scores)


def test_cli_probe_bad_file(tmp_path):
    from typer.testing import CliRunner

    from headatlas.cli import app

    f = tmp_path / "bad.jsonl"
    f.write_text('{"text": "a", "label": 1}\n{oops\n')
    res = CliRunner().invoke(app, ["probe", "smollm2-135m", "--data", str(f), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "line 2" in res.output


@pytest.mark.slow
def test_truthfulness_on_smollm2(smollm2):
    from headatlas.detectors import ScanConfig, get

    cfg = ScanConfig(seed=0)
    det = get("truthfulness")
    r = det.run(smollm2, cfg)
    assert len(r.labelled) >= 5 and float(np.nanmax(r.scores)) > 0.6
    layers = [lh[0] for lh in r.labelled]
    assert 5 <= np.median(layers) <= 25          # middle layers, as in Li et al.
    # (the ITI causal check, 22 steered passes, takes minutes on 2 cores: bench/probing_detectors.py runs it)


def test_completion_logodds_matches_one_by_one(tiny):
    from headatlas.methods.probing import completion_logodds

    triples = [("The capital of France is", "Paris", "Rome"), ("Snow is", "cold", "hot"), ("3 + 4 =", "7", "12")]
    got = completion_logodds(tiny, triples, batch_size=4)
    for (prefix, good, bad), g in zip(triples, got):
        vals = []
        for comp in (good, bad):
            head = token_rows(tiny, [prefix])[0]
            tail = tiny.tokenizer.encode(" " + comp, add_special_tokens=False)
            with torch.no_grad():
                lp = torch.log_softmax(tiny.model(input_ids=torch.tensor([head + tail])).logits[0].float(), -1)
            vals.append(sum(float(lp[len(head) - 1 + i, t]) for i, t in enumerate(tail)))
        assert g == pytest.approx(vals[0] - vals[1], abs=1e-4)


@pytest.mark.slow
def test_cli_probe_on_smollm2(tmp_path):
    from typer.testing import CliRunner

    from headatlas.cli import app
    from headatlas.tasks.statements import statement_probe_data

    d = statement_probe_data(seed=0, max_pairs=30)
    f = tmp_path / "s.jsonl"
    f.write_text("".join(json.dumps({"text": t, "label": int(y), "group": int(g)}) + "\n"
                         for t, y, g in zip(d.texts, d.labels, d.groups)))
    res = CliRunner().invoke(app, ["probe", "smollm2-135m", "--data", str(f), "--n-perm", "99", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "o" / "probe.json").read_text())["heads"]
    assert len(rows) == 270 and (tmp_path / "o" / "probe.csv").exists()


def test_balanced_accuracy_on_unbalanced_labels():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(80, 2, 2, 6)).astype(np.float32)
    y = (np.arange(80) % 4 == 0).astype(int)          # 25% positives
    x[:, 0, 1, 0] += 2.0 * (2 * y - 1)
    r = probe_features(x, y, np.arange(80), n_perm=199, seed=1)
    assert abs(float(r.null_mean.mean()) - 0.5) < 0.05       # not the 0.75 of always guessing the majority
    assert r.accuracy[0, 1] > 0.85 and r.q[0, 1] <= 0.05
    assert np.allclose(r.correct.mean(1), r.accuracy)


def test_tasks_build_probe_data_without_importing_methods():
    """The labelled-text record lives under tasks/: the statements generator builds it without pulling in
    methods/ (no upward import, no probing <-> statements circle)."""
    import subprocess
    import sys

    code = ("import sys, headatlas.tasks.statements as s; d = s.statement_probe_data(max_pairs=4); "
            "bad = sorted(k for k in sys.modules if k.startswith(('headatlas.methods', 'headatlas.detectors'))); "
            "assert not bad, bad; print(type(d).__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "headatlas.tasks.labelled"


def test_ridge_null_equals_refitting_each_permutation():
    """The one-product null (float32 scores, counted hits) equals refitting scikit-learn's Ridge per head,
    fold and permuted label vector, and the default draws are 9,999."""
    from sklearn.linear_model import Ridge

    from headatlas import stats
    from headatlas.methods.probe_fit import N_PERM, grouped_folds, permute_labels, probe_correct

    assert N_PERM == stats.N_PERM == 9999
    rng = np.random.default_rng(5)
    N, L, H, D = 48, 1, 3, 5
    x = rng.normal(size=(N, L, H, D)).astype(np.float32)
    y = np.tile([1, 0], N // 2)
    g = np.repeat(np.arange(N // 2), 2)
    x[y == 1, 0, 1] += 0.8
    correct, null, fold = probe_correct(x, y, g, n_folds=4, n_perm=6, seed=2)
    perms = permute_labels(y, g, 6, stats.rng_for(2, "probe:permute"))
    assert np.array_equal(fold, grouped_folds(y, g, 4, 2))
    for r, lab in enumerate([y] + list(perms)):
        acc = np.zeros(H)
        for f in range(4):
            tr, te = fold != f, fold == f
            for h in range(H):
                X = x[:, 0, h].astype(np.float64)
                Xc = X[tr] - X[tr].mean(0)
                lam = float(np.trace(Xc.T @ Xc) / D) + 1e-9
                fit = Ridge(alpha=lam).fit(X[tr], lab[tr])
                pred = fit.predict(X[te]) > lab[tr].mean()
                right = pred == (lab[te] == 1)
                acc[h] += (right * np.where(lab[te] == 1, 0.5 / lab.sum(), 0.5 / (N - lab.sum()))).sum()
        got = correct.mean(1)[0] if r == 0 else null[r - 1, 0]
        np.testing.assert_allclose(got, acc, rtol=0, atol=1e-12)
