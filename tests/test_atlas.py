"""The Atlas on hand-made detector results: accessors, stages, DataFrame, summary, JSON round trip,
bad files, atomic writes and the HTML report (no model needed)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from headatlas import stats
from headatlas.atlas import Atlas, DetectorMeta, schema
from headatlas.atlas.records import CausalCheck, DetectorResult, LabelRule, skipped_result
from headatlas.errors import AtlasFileError, HeadAtlasError, InputError

L, H = 4, 3
MODEL = {"name": "toy", "architecture": "ToyForCausalLM", "n_layers": L, "n_heads": H, "n_kv_heads": 1, "d_head": 8,
         "fingerprint": "abc"}


RULE = LabelRule(statistic="score minus control", min_effect=0.2)


def _result(name: str, planted: dict[tuple[int, int], float], *, extras=None, details=None, seed=0) -> DetectorResult:
    """16 prompts per head: planted heads score their value on every prompt (+- a little noise), others
    0.05 +- 0.02; the control is 0.05 +- 0.02 everywhere; sign-flip null of the paired differences."""
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    per_prompt = 0.05 + 0.02 * rng.standard_normal((L, 16, H))
    for (la, h), v in planted.items():
        per_prompt[la, :, h] = v + 0.01 * rng.standard_normal(16)
    control = 0.05 + 0.02 * rng.standard_normal((L, 16, H))
    d = per_prompt - control
    draws = stats.signflip_null(d, 2999, rng=stats.rng_for(seed, name))
    scores = per_prompt.mean(1)
    tested = stats.evaluate(d, draws, RULE, seed=seed, salt=name, scores=scores, n_boot=200)
    return stats.result(name, tested, scores=scores, rule=RULE, data_description=f"{name} data",
                        null_description=f"{name} null", n_prompts=16, seed=seed, extras=extras or {},
                        details=details or {}, null_mean=control.mean(1), null_std=control.std(1))


def _check(heads, effect: float, randoms: list[float]) -> CausalCheck:
    hits = sum(1 for r in randoms if r >= effect)
    return CausalCheck(metric="loss", kind="mean", heads=tuple(heads), effect=effect, random_effects=tuple(randoms),
                       p_value=(1 + hits) / (1 + len(randoms)), n_prompts=8, baseline=1.0, expected="increase")


def make_atlas() -> Atlas:
    """prev: attention-defined (ICI); ind: its causal check passes (LR, confirmed); letters: its check fails
    (KR, unconfirmed); nothing: no labels; long: skipped."""
    results = [
        _result("prev", {(0, 1): 0.9, (2, 2): 0.6}, extras={"offset": np.arange(L * H, dtype=np.int64).reshape(L, H)}),
        _result("ind", {(2, 2): 0.8, (3, 0): 0.7}, extras={"copying": np.linspace(-1, 1, L * H).reshape(L, H)},
                details={"agreement": 0.75, "pairs": [(1, 2), (3, 4)]}),
        _result("letters", {(1, 0): 0.5}),
        _result("nothing", {}),
        skipped_result("long", L, H, "needs 4096 positions; the model has 128", 0),
    ]
    results[1].causal = _check([(2, 2), (3, 0)], 2.0, [0.01 * i for i in range(99)])
    results[2].causal = _check([(1, 0)], 0.1, [0.01 * i for i in range(99)])
    stages = {"prev": "ICI", "ind": "LR", "letters": "KR", "nothing": "EP", "long": "ICI"}
    metrics = {"prev": "", "ind": "repeat loss", "letters": "MCQA logit difference", "nothing": "attribute log-prob",
               "long": "needle log-prob"}
    meta = {n: DetectorMeta(n, st, method="pattern", summary=f"{n} heads", citation="paper", metric=metrics[n])
            for n, st in stages.items()}
    return Atlas(MODEL, results, meta, seed=3, settings={"quick": True, "n_prompts": None},
                 timings={n: 1.5 for n in stages})


def test_top_heads_follow_the_rules_direction():
    """A 'less' rule (negative name movers): with nothing labelled, the best head is the most negative one, never
    the largest positive score ("negative_name_mover: none found (best L23H3: 1.94, p 1)"); the summary, the CLI
    and the write-ups all take it from Atlas.top_heads."""
    from dataclasses import replace

    scores = np.zeros((L, H))
    scores[2, 0], scores[3, 1], scores[1, 2] = 1.94, -0.51, -0.2
    rule = LabelRule(statistic="DLA (negative)", direction="less", min_effect=0.1)
    r = replace(_result("neg", {}), scores=scores, effect=scores.copy(), rule=rule)
    two = replace(_result("both", {}), scores=scores, effect=-scores, rule=replace(rule, direction="two-sided"))
    meta = {n: DetectorMeta(n, "ICI", method="dla", summary=n, citation="c", metric="IOI logit difference")
            for n in ("neg", "both")}
    a = Atlas(MODEL, [r, two], meta, seed=0, settings={})
    assert [e.name for e in a.top_heads("neg", 3, labelled_only=False)] == ["L3H1", "L1H2", "L0H0"]
    assert a.top_heads("both", 1, labelled_only=False)[0].name == "L2H0"          # largest |effect|
    assert a.best_head_hint("neg").startswith(" (best L3H1: score -0.51, effect -0.51, p ")
    assert "neg [ICI]: none found (best L3H1: score -0.51" in a.summary()
    assert "L2H0" not in a.summary().split("neg [ICI]")[1].split("\n")[0]


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
    before = a.scores("prev")[0, 1]
    a.scores("prev")[0, 1] = -1
    assert a.scores("prev")[0, 1] == before


def test_head_view_evidence_and_stages():
    a = make_atlas()
    v = a.head(2, 2)
    assert v.name == "L2H2"
    assert {e.detector for e in v.labels} == {"prev", "ind"}
    assert v.stages == {"ICI", "LR"}
    e = v.evidence["ind"]
    assert e.score == pytest.approx(0.8, abs=0.02) and e.null_mean == pytest.approx(0.05, abs=0.02)
    assert e.effect == pytest.approx(0.75, abs=0.03) and e.ci_low < e.effect < e.ci_high and e.labelled
    assert e.p_value < 0.001 and e.q_value <= 0.05 and e.stability > 0.9
    off = a.evidence("ind", 0, 0)
    assert not off.labelled and off.p_value > 0.001
    assert e.extras["copying"] == pytest.approx(np.linspace(-1, 1, L * H).reshape(L, H)[2, 2])
    assert "long" not in v.evidence  # skipped detectors carry no evidence
    assert a.head(0, 0).labels == []
    with pytest.raises(InputError, match="no head L9H0"):
        a.head(9, 0)
    everything = ("confirmed", "unconfirmed", "attention-defined")
    st = a.stages(everything)
    assert len(st) == L * H
    assert st[(2, 2)] == {"ICI", "LR"} and st[(1, 0)] == {"KR"} and st[(0, 0)] == frozenset()
    # by default an unconfirmed label (letters: its causal check failed) places no head
    assert a.stages()[(1, 0)] == frozenset() and a.stages()[(2, 2)] == {"ICI", "LR"}
    grid = a.stage_grid(everything)
    assert grid[2, 2] == "mixed" and grid[0, 1] == "ICI" and grid[3, 0] == "LR" and grid[1, 0] == "KR" and grid[0, 0] == ""
    assert a.stage_grid()[1, 0] == ""
    # a head labelled in several stages counts in each of them
    sh = a.stage_heads(everything)
    assert sh["LR"] == [(2, 2), (3, 0)] and sh["ICI"] == [(0, 1), (2, 2)] and sh["KR"] == [(1, 0)] and sh["EP"] == []
    assert a.stage_heads()["KR"] == [] and a.stage_heads("unconfirmed")["KR"] == [(1, 0)]


def test_label_status_follows_the_corrected_causal_check():
    a = make_atlas()
    assert a.label_status("prev", 0, 1) == "attention-defined"
    assert a.label_status("ind", 2, 2) == "confirmed" and a.label_status("ind", 3, 0) == "confirmed"
    assert a.label_status("letters", 1, 0) == "unconfirmed"
    assert a.label_status("ind", 0, 0) is None
    # BH across the atlas's two checks: ind p = 0.01 -> q = 0.02; letters p = 0.9 -> q = 0.9
    assert a.result("ind").causal.q_value == pytest.approx(0.02)
    assert a.result("letters").causal.q_value == pytest.approx(0.9, abs=0.01)
    assert a.labelled("ind", status="confirmed") == [(2, 2), (3, 0)] and a.labelled("letters", "confirmed") == []
    assert a.status_counts("letters") == {"confirmed": 0, "unconfirmed": 1, "attention-defined": 0}
    counts = a.stage_counts()
    assert counts["KR"]["unconfirmed"] == 1 and counts["KR"]["confirmed"] == 0 and counts["LR"]["confirmed"] == 2
    v = a.head(2, 2)
    assert [e.status for e in v.labels] == ["confirmed", "attention-defined"]
    df = a.to_dataframe()
    row = df[(df.detector == "letters") & (df.head_id == "L1H0")].iloc[0]
    assert row.status == "unconfirmed" and df[(df.detector == "letters") & (df.head_id == "L0H0")].status.isna().all()
    with pytest.raises(InputError, match="unknown label status"):
        a.labelled("ind", status="sure")
    with pytest.raises(InputError, match="status must be"):
        a.stages(status=3)


def test_a_head_whose_own_ablation_goes_the_wrong_way_is_not_confirmed():
    a = make_atlas()
    c = a.result("ind").causal
    from dataclasses import replace
    a.result("ind").causal = replace(c, per_head={"L2H2": 1.5, "L3H0": -0.2})
    assert a.label_status("ind", 2, 2) == "confirmed" and a.label_status("ind", 3, 0) == "unconfirmed"


def test_a_check_that_ablated_nothing_never_confirms():
    c = CausalCheck(metric="loss", kind="none", note="nothing labelled")
    assert not c.passed and math.isnan(c.q_value)
    empty = CausalCheck(metric="loss", kind="mean", heads=(), effect=0.0, random_effects=(0.0,) * 5, p_value=1 / 6)
    assert not empty.passed


def test_old_atlases_get_statuses_from_what_they_hold():
    doc = make_atlas().to_dict()
    for entry in doc["detectors"]:
        entry["meta"].pop("metric"), entry["meta"].pop("evidence")
        c = entry["result"]["causal"]
        if c is not None:
            for k in ("q_value", "random_sets", "exhaustive", "per_head", "pool"):
                c.pop(k)
    entry = doc["detectors"][0]
    entry["meta"]["name"] = entry["result"]["name"] = "positional"   # an attention-defined detector of the v2 registry
    a = Atlas.from_dict(doc)
    assert a.label_status("positional", 0, 1) == "attention-defined"
    assert a.label_status("ind", 2, 2) == "confirmed" and a.label_status("letters", 1, 0) == "unconfirmed"


def test_top_heads_and_summary():
    a = make_atlas()
    assert {e.name for e in a.top_heads("prev")} == {"L0H1", "L2H2"}
    assert len(a.top_heads("prev", 1)) == 1
    assert a.top_heads("nothing") == []
    assert len(a.top_heads("nothing", 3, labelled_only=False)) == 3
    assert a.top_heads("long", 3, labelled_only=False) == []
    text = a.summary(top=1)
    assert "prev [ICI]: 2 labelled (2 attention-defined): L" in text and "+1 more" in text and "q " in text
    assert "letters [KR]: 1 labelled (1 unconfirmed)" in text
    assert "nothing [EP]: none found" in text
    assert "long [ICI]: skipped: needs 4096 positions" in text


def test_dataframe_shape_and_columns():
    a = make_atlas()
    df = a.to_dataframe()
    assert len(df) == L * H * len(a.detectors)
    for col in ["layer", "head", "head_id", "detector", "stage", "score", "null_mean", "null_std", "effect", "ci_low",
                "ci_high", "p_value", "q_value", "stability", "labelled", "offset", "copying"]:
        assert col in df.columns
    row = df[(df.detector == "ind") & (df.head_id == "L2H2")].iloc[0]
    assert row.stage == "LR" and row.labelled and row.score == pytest.approx(0.8, abs=0.02)
    assert row.q_value <= 0.05 and row.p_value <= row.q_value
    assert df[df.detector == "prev"].labelled.sum() == 2
    assert df[df.detector == "prev"].copying.isna().all()       # extra of another detector: NaN here
    assert df[(df.detector == "prev") & (df.head_id == "L1H2")].offset.iloc[0] == 5
    assert df[df.detector == "long"].score.isna().all()


def _assert_same(a: Atlas, b: Atlas) -> None:
    assert a.to_dict() == b.to_dict()
    assert a.detectors == b.detectors and a.meta == b.meta and a.timings == b.timings and a.seed == b.seed
    for name in a.detectors:
        ra, rb = a.result(name), b.result(name)
        for key in ("scores", "null_mean", "null_std", "effect", "ci_low", "ci_high", "p_value", "q_value", "stability"):
            x, y = getattr(ra, key), getattr(rb, key)
            assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True)
        assert ra.extras.keys() == rb.extras.keys()
        for k in ra.extras:
            assert ra.extras[k].dtype == rb.extras[k].dtype
            assert np.array_equal(ra.extras[k], rb.extras[k], equal_nan=ra.extras[k].dtype.kind == "f")
        assert ra.labelled == rb.labelled and ra.skipped == rb.skipped and ra.rule == rb.rule and ra.causal == rb.causal
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
    ('{"schema": "headatlas.atlas/3", "whatever": 1}', "newer than this headatlas reads"),
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


def _v1_doc() -> dict:
    """An atlas as headatlas 0.1 wrote it (schema 1: min_score/min_z cut-offs, no p-values)."""
    enc = schema.encode_array
    scores = np.full((L, H), 0.05)
    scores[0, 1] = 0.9
    return {"schema": "headatlas.atlas/1", "headatlas_version": "0.1.0", "created": "2026-01-01T00:00:00+00:00",
            "model": MODEL, "seed": 0, "settings": {"quick": False},
            "detectors": [{"meta": {"name": "prev", "stage": "ICI", "method": "pattern", "summary": "s",
                                    "citation": "c", "version": 1, "places_stage": True},
                           "seconds": 1.0,
                           "result": {"name": "prev", "scores": enc(scores), "null_mean": enc(np.full((L, H), 0.05)),
                                      "null_std": enc(np.full((L, H), 0.02)), "labelled": [[0, 1]], "min_score": 0.3,
                                      "min_z": 3.0, "data_description": "d", "null_description": "n",
                                      "n_prompts": 8, "seed": 0, "extras": {}, "details": {}, "skipped": None}}]}


def test_schema_1_atlases_load_migrated_with_a_note(tmp_path):
    (tmp_path / "old.json").write_text(json.dumps(_v1_doc()))
    a = Atlas.load(tmp_path / "old.json")
    r = a.result("prev")
    assert a.labelled("prev") == [(0, 1)] and r.scores[0, 1] == 0.9
    assert r.effect[0, 1] == pytest.approx(0.85) and np.isnan(r.p_value).all() and np.isnan(r.q_value).all()
    assert "schema 1 cut-offs: score >= 0.3 and z >= 3.0" in r.rule.statistic
    assert r.details["migrated_from"] == "headatlas.atlas/1" and any("migrated" in n for n in a.notes)
    a.save(tmp_path / "new.json")                           # written back as schema 2, note kept
    b = Atlas.load(tmp_path / "new.json")
    assert b.to_dict()["schema"] == "headatlas.atlas/2" and b.notes == a.notes


def test_detector_listed_twice_is_refused(tmp_path):
    doc = make_atlas().to_dict()
    doc["detectors"].append(doc["detectors"][0])
    (tmp_path / "twice.json").write_text(json.dumps(doc))
    with pytest.raises(AtlasFileError, match="listed twice"):
        Atlas.load(tmp_path / "twice.json")


def test_causal_checks_round_trip_and_are_exposed(tmp_path):
    a = make_atlas()
    a.result("ind").causal = CausalCheck(metric="repeat loss", kind="mean", heads=((2, 2), (3, 0)), effect=2.5,
                                         random_effects=tuple(np.linspace(-0.1, 0.3, 20)), p_value=1 / 21,
                                         n_prompts=8, baseline=1.2, expected="increase", description="d")
    a.save(tmp_path / "c.json")
    c = Atlas.load(tmp_path / "c.json").causal("ind")
    assert set(c) >= {"metric", "kind", "heads", "effect", "random_effects", "p_value", "n_prompts"}
    assert c["effect"] == 2.5 and len(c["random_effects"]) == 20 and c["heads"] == [(2, 2), (3, 0)]
    assert Atlas.load(tmp_path / "c.json").result("ind").causal.beats_every_random_set
    assert a.causal("prev") is None


def test_loading_an_atlas_does_not_import_torch(tmp_path):
    import subprocess
    import sys

    make_atlas().save(tmp_path / "a.json")
    code = ("import sys, headatlas; a = headatlas.Atlas.load(sys.argv[1]); a.to_dataframe(); a.summary(); "
            "assert 'torch' not in sys.modules, 'torch was imported'; print(len(a.detectors))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.json")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "5"


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
    with pytest.raises(HeadAtlasError, match="cannot write"):
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
    assert "needs 4096 positions; the model has 128" in page
    assert "none found" in page
    assert "L0H1" in page and "prev data" in page and "prev null" in page
    # plotly.js (the vendored cartesian bundle) inlined exactly once, nothing fetched from the network
    from headatlas.atlas.page import asset
    from headatlas.atlas.report import PLOTLY_BUNDLE

    js = asset(PLOTLY_BUNDLE)
    assert page.count(js[:200]) == 1 and page.count(js) == 1
    assert "cdn.plot.ly" not in page.replace(js, "") and "<script src=" not in page


def test_html_escapes_untrusted_text():
    a = make_atlas()
    r = a.result("prev")
    r.data_description = "<script>alert(1)</script>"
    page = a.to_html()
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_detectors_outside_the_taxonomy_do_not_place_heads_in_stages(tmp_path):
    results = [_result("sink", {(0, 0): 0.9, (1, 1): 0.8}), _result("prev", {(1, 1): 0.7})]
    meta = {"sink": DetectorMeta("sink", "ICI", places_stage=False, metric=""),
            "prev": DetectorMeta("prev", "LR", metric="")}
    a = Atlas(MODEL, results, meta)
    assert a.labelled("sink") == [(0, 0), (1, 1)]          # still labelled, with evidence
    grid = a.stage_grid()
    assert grid[0, 0] == "" and grid[1, 1] == "LR"         # but only "prev" places a head
    a.save(tmp_path / "a.json")
    assert Atlas.load(tmp_path / "a.json").meta["sink"].places_stage is False
    assert "do not place a head in a stage" in a.to_html()
