"""The Atlas on hand-made detector results: accessors, stages, DataFrame, summary, JSON round trip,
bad files, atomic writes and the HTML report (no model needed)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from headatlas.atlas import Atlas, DetectorMeta, schema
from headatlas.detectors.base import DetectorResult, label_heads, skipped_result
from headatlas.errors import AtlasFileError, InputError

L, H = 4, 3
MODEL = {"name": "toy", "architecture": "ToyForCausalLM", "n_layers": L, "n_heads": H, "n_kv_heads": 1, "d_head": 8,
         "fingerprint": "abc"}


def _result(name: str, planted: dict[tuple[int, int], float], *, extras=None, details=None, seed=0) -> DetectorResult:
    scores = np.full((L, H), 0.05)
    for lh, v in planted.items():
        scores[lh] = v
    null_mean, null_std = np.full((L, H), 0.05), np.full((L, H), 0.02)
    labelled = label_heads(scores, null_mean, null_std, min_score=0.3, min_z=4.0)
    return DetectorResult(name=name, scores=scores, null_mean=null_mean, null_std=null_std, labelled=labelled,
                          min_score=0.3, min_z=4.0, data_description=f"{name} data", null_description=f"{name} null",
                          n_prompts=16, seed=seed, extras=extras or {}, details=details or {})


def make_atlas() -> Atlas:
    results = [
        _result("prev", {(0, 1): 0.9, (2, 2): 0.6}, extras={"offset": np.arange(L * H, dtype=np.int64).reshape(L, H)}),
        _result("ind", {(2, 2): 0.8, (3, 0): 0.7}, extras={"copying": np.linspace(-1, 1, L * H).reshape(L, H)},
                details={"agreement": 0.75, "pairs": [(1, 2), (3, 4)]}),
        _result("letters", {(1, 0): 0.5}),
        _result("nothing", {}),
        skipped_result("long", L, H, "needs 4096 positions; the model has 128", 0),
    ]
    stages = {"prev": "ICI", "ind": "LR", "letters": "KR", "nothing": "EP", "long": "ICI"}
    meta = {n: DetectorMeta(n, st, method="pattern", summary=f"{n} heads", citation="paper") for n, st in stages.items()}
    return Atlas(MODEL, results, meta, seed=3, settings={"quick": True, "n_prompts": None},
                 timings={n: 1.5 for n in stages})


def test_accessors_and_labels():
    a = make_atlas()
    assert a.detectors == ["prev", "ind", "letters", "nothing", "long"]
    assert a.scores("prev").shape == (L, H)
    assert a.labelled("prev") == [(0, 1), (2, 2)]
    assert a.labelled("nothing") == []
    assert a.labelled("long") == [] and np.isnan(a.scores("long")).all()
    assert a.skipped() == {"long": "needs 4096 positions; the model has 128"}
    with pytest.raises(InputError, match="holds no detector 'nope'.*prev"):
        a.scores("nope")
    # scores() is a copy: the atlas cannot be changed through it
    a.scores("prev")[0, 1] = -1
    assert a.scores("prev")[0, 1] == 0.9


def test_head_view_evidence_and_stages():
    a = make_atlas()
    v = a.head(2, 2)
    assert v.name == "L2H2"
    assert {e.detector for e in v.labels} == {"prev", "ind"}
    assert v.stages == {"ICI", "LR"}
    e = v.evidence["ind"]
    assert e.score == pytest.approx(0.8) and e.null_mean == pytest.approx(0.05) and e.null_std == pytest.approx(0.02)
    assert e.z == pytest.approx((0.8 - 0.05) / 0.02) and e.labelled
    assert e.extras["copying"] == pytest.approx(np.linspace(-1, 1, L * H).reshape(L, H)[2, 2])
    assert "long" not in v.evidence  # skipped detectors carry no evidence
    assert a.head(0, 0).labels == []
    with pytest.raises(InputError, match="no head L9H0"):
        a.head(9, 0)
    st = a.stages()
    assert len(st) == L * H
    assert st[(2, 2)] == {"ICI", "LR"} and st[(1, 0)] == {"KR"} and st[(0, 0)] == frozenset()
    grid = a.stage_grid()
    assert grid[2, 2] == "mixed" and grid[0, 1] == "ICI" and grid[3, 0] == "LR" and grid[1, 0] == "KR" and grid[0, 0] == ""


def test_top_heads_and_summary():
    a = make_atlas()
    assert [e.name for e in a.top_heads("prev")] == ["L0H1", "L2H2"]
    assert [e.name for e in a.top_heads("prev", 1)] == ["L0H1"]
    assert a.top_heads("nothing") == []
    assert len(a.top_heads("nothing", 3, labelled_only=False)) == 3
    assert a.top_heads("long", 3, labelled_only=False) == []
    text = a.summary(top=1)
    assert "prev [ICI]: 2 labelled: L0H1 0.9" in text and "+1 more" in text
    assert "nothing [EP]: none found" in text
    assert "long [ICI]: skipped: needs 4096 positions" in text


def test_dataframe_shape_and_columns():
    a = make_atlas()
    df = a.to_dataframe()
    assert len(df) == L * H * len(a.detectors)
    for col in ["layer", "head", "head_id", "detector", "stage", "score", "null_mean", "null_std", "z", "labelled",
                "offset", "copying"]:
        assert col in df.columns
    row = df[(df.detector == "ind") & (df.head_id == "L2H2")].iloc[0]
    assert row.stage == "LR" and row.labelled and row.score == pytest.approx(0.8)
    assert row.z == pytest.approx(37.5)
    assert df[df.detector == "prev"].labelled.sum() == 2
    assert df[df.detector == "prev"].copying.isna().all()       # extra of another detector: NaN here
    assert df[(df.detector == "prev") & (df.head_id == "L1H2")].offset.iloc[0] == 5
    assert df[df.detector == "long"].score.isna().all()


def _assert_same(a: Atlas, b: Atlas) -> None:
    assert a.to_dict() == b.to_dict()
    assert a.detectors == b.detectors and a.meta == b.meta and a.timings == b.timings and a.seed == b.seed
    for name in a.detectors:
        ra, rb = a.result(name), b.result(name)
        for key in ("scores", "null_mean", "null_std"):
            x, y = getattr(ra, key), getattr(rb, key)
            assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True)
        assert ra.extras.keys() == rb.extras.keys()
        for k in ra.extras:
            assert ra.extras[k].dtype == rb.extras[k].dtype
            assert np.array_equal(ra.extras[k], rb.extras[k], equal_nan=ra.extras[k].dtype.kind == "f")
        assert ra.labelled == rb.labelled and ra.skipped == rb.skipped
        assert ra.n_prompts == rb.n_prompts and ra.data_description == rb.data_description


def test_json_round_trip_is_lossless(tmp_path):
    a = make_atlas()
    tricky = _result("tricky", {(0, 0): 1 / 3}, extras={
        "f32": (np.arange(L * H, dtype=np.float32).reshape(L, H) / 7).astype(np.float32),
        "with_nan": np.array([[np.nan, np.inf, -np.inf]] * L),
        "flags": np.eye(L, H, dtype=bool),
        "relation": np.array([["nsubj", "obj", "amod"]] * L),
        "per_layer_offsets": np.arange(L * 5, dtype=np.int32).reshape(L, 5),   # not one value per head
    }, details={"nan": float("nan"), "inf": -math.inf, "tuple": (1, (2, 3)), "nested": {"a": [1.5, None, "x"]},
                "np_scalar": np.float32(0.1), "np_int": np.int64(7), "array": np.arange(5), (1, 2): "tuple key",
                "__float__": "not a tag", "tiny": 5e-324, "big": 1.7976931348623157e308})
    tricky.scores[1, 1] = np.nan
    atlas = Atlas(MODEL, {**{n: a.result(n) for n in a.detectors}, "tricky": tricky},
                  {**a.meta, "tricky": DetectorMeta("tricky", "EP")}, seed=3, settings=a.settings, timings=a.timings)
    path = tmp_path / "atlas.json"
    atlas.save(path)
    json.loads(path.read_text())  # strict JSON: no NaN literals
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
    back = Atlas.load(path)
    _assert_same(atlas, back)
    d = back.result("tricky").details
    assert math.isnan(d["nan"]) and d["inf"] == -math.inf and d["tuple"] == (1, (2, 3))
    assert d["nested"] == {"a": [1.5, None, "x"]} and d[(1, 2)] == "tuple key" and d["__float__"] == "not a tag"
    assert np.array_equal(d["array"], np.arange(5)) and d["np_int"] == 7 and d["tiny"] == 5e-324
    assert d["np_scalar"] == float(np.float32(0.1))
    assert back.result("tricky").extras["relation"][0, 0] == "nsubj"
    df = back.to_dataframe()   # per-head extras become columns, other shapes stay in the JSON only
    assert "relation" in df.columns and "per_layer_offsets" not in df.columns and len(df) == L * H * 6
    assert back.head(0, 0).evidence["tricky"].extras["relation"] == "nsubj"
    assert "nsubj" in back.to_html()
    # and a second trip gives the same bytes
    path2 = tmp_path / "again.json"
    back.save(path2)
    assert path2.read_text() == path.read_text()


@pytest.mark.parametrize("content, match", [
    ('{"schema": "headatlas.atlas/1", "model": ', "not valid JSON"),
    ("", "not valid JSON"),
    ('{"name": "something else"}', "not a headatlas atlas"),
    ("[1, 2, 3]", "not a headatlas atlas"),
    ('{"schema": "otherlib.report/1"}', "not a headatlas atlas"),
    ('{"schema": "headatlas.atlas/2", "whatever": 1}', "newer than this headatlas reads"),
])
def test_load_rejects_bad_files(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(AtlasFileError, match=match):
        Atlas.load(path)


def test_load_rejects_missing_file_unknown_keys_and_malformed_results(tmp_path):
    with pytest.raises(AtlasFileError, match="no atlas file"):
        Atlas.load(tmp_path / "missing.json")
    with pytest.raises(AtlasFileError, match="is a folder"):
        Atlas.load(tmp_path)
    doc = make_atlas().to_dict()
    doc["surprise"] = 1
    (tmp_path / "a.json").write_text(json.dumps(doc))
    with pytest.raises(AtlasFileError, match="unknown surprise"):
        Atlas.load(tmp_path / "a.json")
    doc = make_atlas().to_dict()
    del doc["detectors"][0]["result"]["scores"]
    (tmp_path / "b.json").write_text(json.dumps(doc))
    with pytest.raises(AtlasFileError, match=r"detectors\[0\]: missing scores"):
        Atlas.load(tmp_path / "b.json")
    breakages = [
        lambda d: d["detectors"][0]["result"]["scores"]["__ndarray__"].__setitem__("shape", [2, 2]),
        lambda d: d["detectors"][0]["result"].__setitem__("extras", [1, 2]),
        lambda d: d["detectors"][0].__setitem__("seconds", {"__float__": "bogus"}),
        lambda d: d["detectors"][0].__setitem__("meta", {"name": "prev"}),
        lambda d: d["detectors"][0].__setitem__("meta", "prev"),
        lambda d: d.__setitem__("seed", "zero"),
        lambda d: d.__setitem__("model", {"name": "no sizes"}),
        lambda d: d.__setitem__("detectors", {"prev": 1}),
        lambda d: d["detectors"][0]["result"].__setitem__("labelled", [[1]]),
        lambda d: d["detectors"][0]["result"].__setitem__("labelled", [[99, 0]]),
    ]
    for i, breakage in enumerate(breakages):
        doc = make_atlas().to_dict()
        breakage(doc)
        (tmp_path / f"c{i}.json").write_text(json.dumps(doc))
        with pytest.raises(AtlasFileError):
            Atlas.load(tmp_path / f"c{i}.json")


def test_save_is_atomic(tmp_path, monkeypatch):
    """A crash in the middle of a save leaves the previous file intact and no temp file behind."""
    path = tmp_path / "atlas.json"
    a = make_atlas()
    a.save(path)
    before = path.read_bytes()

    def crash(fd):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(schema.os, "fsync", crash)   # the temp file holds data, then the "crash"
    changed = Atlas(MODEL, [_result("prev", {(3, 2): 0.99})], {"prev": DetectorMeta("prev", "ICI")})
    with pytest.raises(OSError, match="simulated"):
        changed.save(path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["atlas.json"]
    monkeypatch.undo()
    changed.save(path)
    assert Atlas.load(path).labelled("prev") == [(3, 2)]


def test_rejects_inconsistent_results():
    bad = _result("prev", {})
    bad.scores = np.zeros((L + 1, H))
    with pytest.raises(ValueError, match="shape"):
        Atlas(MODEL, [bad], {"prev": DetectorMeta("prev", "ICI")})
    with pytest.raises(ValueError, match="unknown stage"):
        Atlas(MODEL, [_result("prev", {})], {"prev": DetectorMeta("prev", "XX")})


def test_html_report_is_self_contained(tmp_path):
    a = make_atlas()
    path = tmp_path / "atlas.html"
    a.save_html(path)
    page = path.read_text()
    assert page.startswith("<!DOCTYPE html>")
    for name in a.detectors:
        assert f'id="det-{name}"' in page
    assert page.count('id="det-prev-heatmap"') == 1      # one heatmap per detector that ran
    assert 'id="det-long-heatmap"' not in page            # skipped: reason, no heatmap
    assert "needs 4096 positions; the model has 128" in page
    assert "none found" in page
    assert 'id="stage-map"' in page and "mixed" in page
    assert "L0H1" in page and "prev data" in page and "prev null" in page
    # plotly.js inlined exactly once, nothing fetched from the network
    from plotly.offline import get_plotlyjs

    js = get_plotlyjs()
    assert page.count(js[:200]) == 1
    assert "cdn.plot.ly" not in page.replace(js, "") and "<script src=" not in page


def test_html_escapes_untrusted_text():
    a = make_atlas()
    r = a.result("prev")
    r.data_description = "<script>alert(1)</script>"
    page = a.to_html()
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_detectors_outside_the_taxonomy_do_not_place_heads_in_stages(tmp_path):
    results = [_result("sink", {(0, 0): 0.9, (1, 1): 0.8}), _result("prev", {(1, 1): 0.7})]
    meta = {"sink": DetectorMeta("sink", "ICI", places_stage=False), "prev": DetectorMeta("prev", "LR")}
    a = Atlas(MODEL, results, meta)
    assert a.labelled("sink") == [(0, 0), (1, 1)]          # still labelled, with evidence
    grid = a.stage_grid()
    assert grid[0, 0] == "" and grid[1, 1] == "LR"         # but only "prev" places a head
    a.save(tmp_path / "a.json")
    assert Atlas.load(tmp_path / "a.json").meta["sink"].places_stage is False
    assert "do not place a head in a stage" in a.to_html()
