"""``headatlas.scan`` on tiny random models with fake detectors: detector selection, skip handling,
seeds, partial results and resume, output files."""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import pytest
import torch
from atlas_fakes import CALLS, fake_registry  # noqa: F401  (fixture)
from tiny import tiny_model

import headatlas
from headatlas import Atlas, scan
from headatlas.detectors import base
from headatlas.errors import HeadAtlasError, InputError

scan_module = sys.modules["headatlas.scan"]


@pytest.fixture(scope="module")
def gpt2():
    return headatlas.load(tiny_model("gpt2"), device="cpu")


def planted(L=3, H=4, heads=((1, 2),), value=0.9):
    a = np.zeros((L, H))
    for lh in heads:
        a[lh] = value
    return a


def test_runs_named_detectors_in_order(gpt2, fake_registry):
    atlas = scan(gpt2, ["fake_planted", "fake_prev"], options={"fake_planted": planted()})
    assert atlas.detectors == ["fake_planted", "fake_prev"]
    assert atlas.labelled("fake_planted") == [(1, 2)]
    assert atlas.scores("fake_prev").shape == (3, 4)
    assert atlas.meta["fake_prev"].stage == "ICI" and atlas.meta["fake_planted"].stage == "LR"
    assert set(atlas.timings) == {"fake_planted", "fake_prev"} and all(t >= 0 for t in atlas.timings.values())
    assert atlas.model["n_layers"] == 3 and atlas.model["fingerprint"]
    assert CALLS == {"fake_planted": 1, "fake_prev": 1}


def test_comma_string_and_default_all(gpt2, fake_registry):
    assert scan(gpt2, "fake_planted, fake_planted_kr,fake_planted").detectors == ["fake_planted", "fake_planted_kr"]
    del fake_registry["fake_boom"]
    assert scan(gpt2).detectors == sorted(fake_registry)


def test_unknown_detector_lists_available(gpt2, fake_registry):
    with pytest.raises(InputError, match=r"unknown detector 'nope'; available: fake_boom, fake_planted"):
        scan(gpt2, ["fake_prev", "nope"])
    assert CALLS == {}  # checked before anything runs
    with pytest.raises(InputError, match="batch_size"):
        scan(gpt2, ["fake_prev"], batch_size=0)


def test_empty_registry_is_a_clear_error(gpt2, monkeypatch):
    monkeypatch.setattr(base, "_REGISTRY", {})
    with pytest.raises(InputError, match="no detectors are registered"):
        scan(gpt2)


def test_data_that_does_not_fit_is_skipped_bugs_propagate(gpt2, fake_registry):
    atlas = scan(gpt2, ["fake_skip", "fake_planted"])
    r = atlas.result("fake_skip")
    assert r.skipped == "needs 100000 positions; the model has 128"
    assert np.isnan(r.scores).all() and r.labelled == []
    assert atlas.labelled("fake_planted") == []   # no planted scores passed: none found
    with pytest.raises(RuntimeError, match="a bug inside the detector"):
        scan(gpt2, ["fake_boom"])


def test_bad_detector_output_is_refused(gpt2, fake_registry):
    def wrong_shape(m, cfg):
        r = base.skipped_result("fake_wrong", 2, 2, "x", 0)
        r.skipped = None
        return r

    fake_registry["fake_wrong"] = base.Detector("fake_wrong", "ICI", "m", "s", "c", wrong_shape)
    with pytest.raises(HeadAtlasError, match=r"fake_wrong.*shape \(2, 2\); expected \(3, 4\)"):
        scan(gpt2, ["fake_wrong"])


def test_seeded_runs_reproduce(gpt2, fake_registry):
    a = scan(gpt2, ["fake_prev"], seed=1, quick=True)
    b = scan(gpt2, ["fake_prev"], seed=1, quick=True, batch_size=3)   # batching does not change the numbers
    c = scan(gpt2, ["fake_prev"], seed=2, quick=True)
    np.testing.assert_allclose(a.scores("fake_prev"), b.scores("fake_prev"), atol=1e-6)
    assert np.array_equal(a.scores("fake_prev"), scan(gpt2, ["fake_prev"], seed=1, quick=True).scores("fake_prev"))
    assert not np.allclose(a.scores("fake_prev"), c.scores("fake_prev"))
    assert a.seed == 1 and a.settings["quick"] is True


def test_progress_callbacks(gpt2, fake_registry):
    events = []

    class Recorder(scan_module.ScanProgress):
        def start(self, name, index, total):
            events.append(("start", name, index, total))

        def update(self, name, done, total):
            events.append(("update", name, done, total))

        def finish(self, name, seconds, status):
            events.append(("finish", name, status))

    scan(gpt2, ["fake_prev", "fake_skip"], quick=True, batch_size=2, progress=Recorder())
    assert events == [("start", "fake_prev", 0, 2), ("update", "fake_prev", 2, 4), ("update", "fake_prev", 4, 4),
                      ("finish", "fake_prev", "done"), ("start", "fake_skip", 1, 2),
                      ("finish", "fake_skip", "skipped: needs 100000 positions; the model has 128")]
    ticks = []
    scan(gpt2, ["fake_prev"], quick=True, batch_size=2, progress=lambda n, d, t: ticks.append((n, d, t)))
    assert ticks == [("fake_prev", 2, 4), ("fake_prev", 4, 4)]


def test_out_folder_files(gpt2, fake_registry, tmp_path):
    atlas = scan(gpt2, ["fake_prev", "fake_planted", "fake_skip"], quick=True, out=tmp_path,
                 options={"fake_planted": planted()})
    assert sorted(p.name for p in (tmp_path / "partial").iterdir()) == ["_writes.json", "fake_planted.json",
                                                                       "fake_prev.json", "fake_skip.json"]
    back = Atlas.load(tmp_path / "atlas.json")
    assert back.to_dict() == atlas.to_dict()
    page = (tmp_path / "atlas.html").read_text()
    assert all(f'id="det-{n}"' in page for n in atlas.detectors)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_labelled_heads_get_their_ov_output_tokens_and_resume_reuses_them(gpt2, fake_registry, tmp_path, monkeypatch):
    from headatlas.methods import ov_tokens

    atlas = scan(gpt2, ["fake_planted"], quick=True, out=tmp_path, options={"fake_planted": planted()})
    heads = {f"L{la}H{h}" for la, h in atlas.labelled("fake_planted")}
    assert heads and set(atlas.writes["heads"]) == heads
    w = atlas.writes["heads"][sorted(heads)[0]]
    assert len(w["promoted"]) == len(w["suppressed"]) == ov_tokens.K
    assert w["promoted"][0][1] >= w["promoted"][-1][1] > w["suppressed"][-1][1] >= w["suppressed"][0][1]
    assert all(isinstance(t, str) and isinstance(s, str) for t, _, s in w["promoted"] + w["suppressed"])
    assert Atlas.load(tmp_path / "atlas.json").writes == atlas.writes
    calls = []
    monkeypatch.setattr(ov_tokens, "ov_top_tokens", lambda *a, **k: calls.append(a) or {})
    assert scan(gpt2, ["fake_planted"], quick=True, out=tmp_path, options={"fake_planted": planted()}).writes == atlas.writes
    assert calls == []     # resumed from out/partial/_writes.json
    assert scan(gpt2, ["fake_planted"], quick=True, options={"fake_planted": planted()}).writes == {} and len(calls) == 1


def test_resume_skips_finished_detectors(gpt2, fake_registry, tmp_path):
    opts = {"fake_planted": planted()}
    first = scan(gpt2, ["fake_prev", "fake_planted", "fake_skip"], quick=True, out=tmp_path, options=opts)
    assert CALLS == {"fake_prev": 1, "fake_planted": 1, "fake_skip": 1}
    statuses = []

    class Recorder(scan_module.ScanProgress):
        def finish(self, name, seconds, status):
            statuses.append(status)

    again = scan(gpt2, ["fake_prev", "fake_planted", "fake_skip"], quick=True, out=tmp_path, options=opts,
                 progress=Recorder())
    assert CALLS == {"fake_prev": 1, "fake_planted": 1, "fake_skip": 1}   # nothing recomputed
    assert statuses[:2] == ["resumed", "resumed"] and statuses[2].startswith("skipped")
    assert np.array_equal(again.scores("fake_prev"), first.scores("fake_prev"))
    assert again.timings == first.timings
    # a new detector added to a finished scan reuses the others
    scan(gpt2, ["fake_prev", "fake_planted", "fake_planted_kr"], quick=True, out=tmp_path, options=opts)
    assert CALLS == {"fake_prev": 1, "fake_planted": 1, "fake_skip": 1, "fake_planted_kr": 1}


@pytest.mark.parametrize("change", ["seed", "quick", "n_prompts", "options", "version", "weights", "no_resume",
                                    "corrupt"])
def test_resume_recomputes_when_the_key_changes(gpt2, fake_registry, tmp_path, change):
    kw = dict(seed=0, quick=True, n_prompts=None, options={"fake_planted": planted()}, out=tmp_path)
    scan(gpt2, ["fake_planted"], **kw)
    model = gpt2
    if change == "seed":
        kw["seed"] = 1
    elif change == "quick":
        kw["quick"] = False
    elif change == "n_prompts":
        kw["n_prompts"] = 3
    elif change == "options":
        kw["options"] = {"fake_planted": planted(value=0.8)}
    elif change == "version":
        d = fake_registry["fake_planted"]
        fake_registry["fake_planted"] = dataclasses.replace(d, version=d.version + 1)
    elif change == "weights":
        hf, tok = tiny_model("gpt2")
        with torch.no_grad():
            next(hf.parameters())[0, 0] += 1.0
        model = headatlas.load((hf, tok), device="cpu")
        assert model.info == gpt2.info   # same name and sizes: only the weights differ
    elif change == "no_resume":
        kw["resume"] = False
    elif change == "corrupt":
        (tmp_path / "partial" / "fake_planted.json").write_text('{"schema": "headatlas.partial/2", "key": ')
    scan(model, ["fake_planted"], **kw)
    assert CALLS["fake_planted"] == 2
    saved = json.loads((tmp_path / "partial" / "fake_planted.json").read_text())
    assert saved["schema"] == "headatlas.partial/2"


def test_scan_loads_specs(fake_registry, tmp_path):
    """``scan`` accepts what ``load`` accepts: here a (model, tokenizer) pair and a saved folder."""
    from tiny import save_tiny_folder

    atlas = scan(tiny_model("llama"), ["fake_planted"], options={"fake_planted": planted()})
    assert atlas.model["model_type"] == "llama" and atlas.labelled("fake_planted") == [(1, 2)]
    save_tiny_folder(tmp_path / "m", "qwen2")
    atlas = scan(str(tmp_path / "m"), ["fake_prev"], quick=True)
    assert atlas.model["n_layers"] == 3 and atlas.model_name == str(tmp_path / "m")


def test_digest_is_stable_and_content_based():
    d = scan_module.digest
    assert d({"a": 1, "b": [1, 2]}) == d({"b": [1, 2], "a": 1})
    assert d({"x": np.zeros(3)}) == d({"x": np.zeros(3)}) != d({"x": np.ones(3)})
    assert d({"x": torch.zeros(3)}) != d({"x": torch.zeros(4)})


def test_every_registered_detector_fits_the_atlas(tmp_path):
    """Integration with the real registry: a quick scan of a tiny model with every registered detector
    gives an atlas that saves, loads back identically and renders a section per detector."""
    from headatlas.detectors import names

    if not names():
        pytest.skip("no detectors registered yet")
    atlas = scan(tiny_model("llama"), "all", quick=True, out=tmp_path)
    assert sorted(atlas.detectors) == sorted(names())
    from headatlas.detectors import get
    for name in atlas.detectors:                               # a detector's requirements run (and are listed) first
        assert all(atlas.detectors.index(r) < atlas.detectors.index(name) for r in get(name).requires), name
    back = Atlas.load(tmp_path / "atlas.json")
    assert back.to_dict() == atlas.to_dict()
    for name in atlas.detectors:
        r = atlas.result(name)
        assert r.skipped or np.isfinite(r.scores).any(), name
        assert f'id="det-{name}"' in (tmp_path / "atlas.html").read_text()
    assert len(atlas.to_dataframe()) == 3 * 4 * len(atlas.detectors)


def _wide_model(dtype=torch.float32):
    """A model with a 1M-element embedding: large enough that torch sums it in parallel chunks whose
    partition (and float result) depends on the thread count."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=4096, hidden_size=256, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(cfg).to(dtype).eval()


_FINGERPRINT_CHILD = """
import sys, torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
import headatlas
from headatlas.scan import model_fingerprint
from test_scan import _wide_model
from tiny import ToyTokenizer
print(model_fingerprint(headatlas.load((_wide_model(), ToyTokenizer()), device="cpu")))
"""


def test_weights_fingerprint_hashes_bytes_whatever_the_thread_count():
    """The same weights give the same fingerprint under 1, 2 and 4 torch threads, in this process and in a
    fresh one (a sum of floats would not: its reduction order follows the threads); one changed bit in one
    weight changes it; bfloat16 weights hash too."""
    import subprocess
    from pathlib import Path

    from tiny import ToyTokenizer

    m = headatlas.load((_wide_model(), ToyTokenizer()), device="cpu")
    before = torch.get_num_threads()
    prints = set()
    try:
        for n in (1, 2, 4):
            torch.set_num_threads(n)
            prints.add(scan_module.model_fingerprint(m))
    finally:
        torch.set_num_threads(before)
    assert len(prints) == 1
    child = subprocess.run([sys.executable, "-c", _FINGERPRINT_CHILD.format(tests=str(Path(__file__).parent))],
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.strip().splitlines()[-1] in prints
    w = m.model.model.embed_tokens.weight
    with torch.no_grad():
        w[7, 3] = torch.nextafter(w[7, 3], torch.tensor(float("inf")))
    assert scan_module.model_fingerprint(m) not in prints
    bf = headatlas.load((_wide_model(torch.bfloat16), ToyTokenizer()), device="cpu")
    assert len(scan_module.model_fingerprint(bf)) == 20 and scan_module.model_fingerprint(bf) not in prints
