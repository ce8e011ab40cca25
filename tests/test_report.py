"""The HTML report on hand-made atlases (no model, no browser): untrusted strings appear only escaped, plotly's upload
features are off, nothing points off the page, findings come first with counts by label status, maps colour the
rule's effect with the rule's minimum on the colour bar and outline heads by status, the page carries the numbers
once (hover text is built in the page), head pages get their data (token views, OV output tokens, circuit), and the
token view format."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from headatlas.atlas import Atlas, DetectorMeta
from headatlas.atlas import report, report_plots
from headatlas.atlas.htmlsafe import PLOTLY_CONFIG, script_hash, script_json
from headatlas.atlas.page import asset
from headatlas.atlas.records import CausalCheck, DetectorResult, LabelRule, no_causal_check, skipped_result
from headatlas.atlas.report_data import detector_views, stage_summary
from headatlas.atlas.tokenview import MAX_HEADS, MAX_TOKENS, check_token_view, make_token_view
from headatlas.atlas.writes import check_writes
from headatlas.errors import AtlasFileError

L, H = 4, 3
PAYLOADS = ("<img src=x onerror=alert(1)>", "</script><script>alert(1)</script>")


def _result(name: str, planted: dict[tuple[int, int], float], *, s: str = "", causal=None, details=None,
            extras=None, direction: str = "greater") -> DetectorResult:
    """A v2 result with ``planted`` heads significant (q 0.001) and everything else null (q 1)."""
    scores = np.full((L, H), 0.05)
    effect = np.zeros((L, H))
    p, q = np.full((L, H), 0.6), np.ones((L, H))
    for lh, v in planted.items():
        scores[lh], effect[lh], p[lh], q[lh] = v, v - 0.05, 1e-4, 1e-3
    labelled = sorted(planted, key=lambda lh: -planted[lh])
    return DetectorResult(name=name, scores=scores, null_mean=np.full((L, H), 0.05), null_std=np.full((L, H), 0.02),
                          effect=effect, ci_low=effect - 0.02, ci_high=effect + 0.02, p_value=p, q_value=q,
                          stability=np.where(q < 0.05, 0.95, 0.0), labelled=labelled,
                          rule=LabelRule(statistic=f"attention mass{s}", direction=direction, min_effect=0.1),
                          data_description=f"{name} data{s}", null_description=f"{name} null{s}", n_prompts=16,
                          seed=0, n_null=9999, extras=extras or {}, details=details or {}, causal=causal)


def _check(s: str, p: float, heads, per_head=None) -> CausalCheck:
    return CausalCheck(metric="loss on repeated tokens" + s, kind="mean", heads=tuple(heads), effect=1.2 if p < 0.1 else 0.1,
                       random_effects=tuple(np.linspace(0.0, 0.3, 99)), p_value=p, n_prompts=16, baseline=3.0,
                       expected="increase", description="ablate the labelled set" + s, note="note" + s,
                       per_head=per_head or {}, pool="layer-matched, no head of the metric family" + s)


def make_report_atlas(s: str = "", *, shared: bool = True) -> Atlas:
    """A small atlas with every kind of section and every label status; ``s`` is appended to every string an atlas
    can hold (pass a script-injection payload to test escaping).

    ind (LR): its check passes after BH across the atlas (p 0.01, q 0.02); L2H2 alone raises the loss (confirmed), L3H0
    alone lowers it (unconfirmed); prev (ICI): check fails (p 0.6) -> unconfirmed; sink (KR, no stage), negative (KR):
    no behavioural metric -> attention-defined; nothing (EP): none found; long: skipped."""
    tokens = ["<s>", " A", " B", " A", " B" + s]
    pattern = np.stack([np.tril(np.ones((5, 5))) / np.arange(1, 6)[:, None], np.eye(5)])
    view = make_token_view(tokens, pattern, [(2, 2), (3, 0)], note="repeated tokens" + s)
    if s:
        view["heads"]["L3H0" + s] = view["heads"].pop("L3H0")
    results = [
        _result("prev" + s, {(0, 1): 0.9, (2, 2): 0.6}, s=s, extras={"relation": np.array([["nsubj" + s] * H] * L)},
                details={"offsets" + s: [1, 2], "why": "because" + s}, causal=_check(s, 0.6, [(0, 1), (2, 2)])),
        _result("ind" + s, {(2, 2): 0.8, (3, 0): 0.7}, s=s, causal=_check(s, 0.01, [(2, 2), (3, 0)],
                                                                           {"L2H2": 0.9, "L3H0": -0.1}),
                details={"token_view": view}, extras={"copying": np.linspace(-1, 1, L * H).reshape(L, H)}),
        _result("nothing" + s, {}, s=s, causal=no_causal_check("no behavioural metric for this type" + s)),
        _result("sink" + s, {(1, 1): 0.9}, s=s, causal=no_causal_check("the pattern is the claim" + s)),
        _result("negative" + s, {(1, 0): -0.5}, s=s, direction="less", causal=no_causal_check("pattern" + s)),
        skipped_result("long" + s, L, H, "needs 4096 positions" + s, 0),
    ]
    stages = {"prev": "ICI", "ind": "LR", "nothing": "EP", "sink": "KR", "negative": "KR", "long": "ICI"}
    meta = {n + s: DetectorMeta(n + s, st, method="pattern" + s, summary=f"{n} heads{s}", citation="paper" + s,
                                version=("2" + s) if s else 2, places_stage=(n != "sink"),
                                metric="repeat loss" if n in ("prev", "ind") else "")
            for n, st in stages.items()}   # metric "": attention-defined, their labels place heads without a check
    writes = {"method": "OV circuit" + s, "n_sources": 8, "k": 2,
              "heads": {"L2H2": {"promoted": [[" B" + s, 4.5, " A" + s]], "suppressed": [[" C" + s, -3.0, " A"]],
                                 "self_z": 2.5, "copy_top10": 0.75}}}
    return Atlas({"name": "toy" + s, "architecture": "Toy" + s, "n_layers": L, "n_heads": H, "note" + s: "x" + s},
                 results, meta, seed=3, settings={"quick": True, "n_prompts": None, "device" + s: "cpu" + s,
                                                  "nested": {"k" + s: ["v" + s]}},
                 timings={n + s: 1.5 for n in stages} | {"ind" + s: 0.0},
                 shared_passes={"ind" + s: "reused shared pass 'synthetic' computed by prev" + s} if shared else None,
                 notes=["migrated from headatlas.atlas/1" + s], headatlas_version="0.1.0" + s,
                 created="2026-01-01" + s, writes=writes)


def page_data(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="ha-data">(.*?)</script>', html, re.S)
    assert m, "no data block"
    return json.loads(m.group(1))


def _scripts(html: str) -> list[str]:
    return re.findall(r"<script(?: [^>]*)?>(.*?)</script>", html, re.S)


def _without_plotly(html: str) -> str:
    js = asset(report.PLOTLY_BUNDLE)
    assert html.count(js) == 1, "plotly.js must be inlined exactly once"
    return html.replace(js, "")


@pytest.fixture(scope="module")
def crafted_html() -> str:
    return make_report_atlas(PAYLOADS[0] + PAYLOADS[1]).to_html()


def test_every_atlas_string_appears_only_escaped(crafted_html):
    page = _without_plotly(crafted_html)
    for p in PAYLOADS + ("<img", "<script>alert", "onerror=alert(1)>"):
        assert p not in page, f"{p!r} appears raw in the report"
    # exactly the report's own three script elements (data, plotly, page script), none made from the payload
    assert page.count("<script") == 3 and page.count("</script>") == 3
    assert "<img" not in page.lower()
    esc_payload = "&lt;img src=x onerror=alert(1)&gt;&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;"
    for where in ("prev", "toy", "Toy", "0.1.0", "2026-01-01", "pattern", "paper", "heads", "needs 4096 positions",
                  "attention mass", " data", " null", "cpu", "device", "no behavioural metric for this type",
                  "loss on repeated tokens", "ablate the labelled set", "reused shared pass 'synthetic' computed by prev"
                  .replace("'", "&#x27;"), "because", "nsubj", "note", "migrated from headatlas.atlas/1"):
        assert where + esc_payload in page, f"{where!r}+payload not found escaped"
    assert "2" + esc_payload in page  # a string-valued detector version


def test_script_data_is_script_safe_and_lossless(crafted_html):
    data = page_data(crafted_html)
    block = re.search(r'id="ha-data">(.*?)</script>', crafted_html, re.S).group(1)
    for ch in "<>&\u2028\u2029":
        assert ch not in block
    payload = PAYLOADS[0] + PAYLOADS[1]
    names = {d["name"] for d in data["detectors"]}
    assert "prev" + payload in names  # JSON.parse gives the exact string back (scripts use textContent)
    tv = data["token_views"][0]
    assert tv["tokens"][-1] == " B" + payload and "L3H0" + payload in tv["heads"]
    w = data["writes"]["heads"]["L2H2"]
    assert w["promoted"][0][0] == (" B" + payload)[:48] and data["writes"]["method"] == "OV circuit" + payload
    assert json.loads(script_json({"a": "\u2028</script>&"})) == {"a": "\u2028</script>&"}
    # the page script writes strings with textContent; text handed to plotly is escaped first
    js = asset("assets/report.js")
    assert not re.search(r"\.(inner|outer)HTML|insertAdjacentHTML|document\.write", js)
    assert "esc(k)" in js and "esc(st)" in js


def test_plotly_config_csp_and_no_external_urls(crafted_html):
    data = page_data(crafted_html)
    cfg = data["config"]
    assert cfg == json.loads(json.dumps(PLOTLY_CONFIG))
    assert cfg["displaylogo"] is False and cfg["showSendToCloud"] is False and cfg["showEditInChartStudio"] is False
    buttons = {b for group in cfg["modeBarButtons"] for b in group}
    assert buttons and not buttons & {"sendDataToCloud", "editInChartStudio", "toggleHover", "resetViews"}
    assert buttons <= {"toImage", "zoom2d", "pan2d", "zoomIn2d", "zoomOut2d", "autoScale2d", "resetScale2d"}
    # figures are drawn only by the page script, which passes D.config to every Plotly.newPlot
    assert data["figures"] and "Plotly.newPlot(div, fig.data, fig.layout, D.config)" in crafted_html
    assert _without_plotly(crafted_html).count("Plotly.newPlot(") == 1
    # the CSP allows exactly the page's two executable scripts, by hash, and no connection
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', crafted_html).group(1).replace("&#x27;", "'")
    executable = [s for s in _scripts(crafted_html) if not s.startswith("{")]
    assert len(executable) == 2
    for s in executable:
        assert script_hash(s) in csp
    assert "connect-src 'none'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp.split("style-src")[0]
    page = _without_plotly(crafted_html)
    assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", page, re.I), "an external URL in the report"
    assert "src=" not in page.replace("src=x", "")


def test_the_partial_plotly_bundle_is_vendored_with_its_licence_and_holds_the_traces_used():
    js = asset(report.PLOTLY_BUNDLE)
    assert js.startswith("/**\n* plotly.js (cartesian - minified) v4.1.1")
    assert "MIT License" in asset("vendor/LICENSE.plotly.txt") and "4.1.1" in asset("vendor/README.md")
    assert len(js) < 1_600_000   # the full bundle is 4.8 MB
    html = make_report_atlas().to_html()
    used = {t["type"] for f in page_data(html)["figures"] for t in f["data"]}
    assert used == {"heatmap", "histogram"}
    for trace in used:   # each registers its module in the bundle
        assert f'moduleType:"trace",name:"{trace}"' in js.replace(" ", "")


def test_findings_come_first_with_counts_by_status():
    a = make_report_atlas()
    html = a.to_html()
    # statuses: ind's L2H2 confirmed, L3H0 unconfirmed (its own ablation goes the wrong way), prev unconfirmed,
    # negative attention-defined; sink places no stage
    summary = stage_summary(a, detector_views(a))
    assert summary["LR"] == {"confirmed": [(2, 2)], "attention-defined": [], "unconfirmed": [(3, 0)]}
    assert summary["ICI"] == {"confirmed": [], "attention-defined": [], "unconfirmed": [(0, 1), (2, 2)]}
    assert summary["KR"] == {"confirmed": [], "attention-defined": [(1, 0)], "unconfirmed": []}
    assert summary["EP"] == {"confirmed": [], "attention-defined": [], "unconfirmed": []}
    counts = re.search(r"<ul class='counts' id='stage-counts'>(.*?)</ul>", html).group(1)
    assert "Latent Reasoning: <b>1</b> confirmed, <b>1</b> unconfirmed" in counts
    assert "In-Context Identification: <b>0</b> confirmed, <b>2</b> unconfirmed" in counts
    assert "Knowledge Recalling: <b>0</b> confirmed, <b>1</b> attention-defined, <b>0</b> unconfirmed" in counts
    # page order: findings (stage map, top heads, not found) before the circuit, detectors and settings
    order = [html.index(x) for x in ("id='stage-counts'", 'class="stage-map"', "Top confirmed heads per stage",
                                     "Not found, not confirmed", 'id="detectors"', "<details id='model'>")]
    assert order == sorted(order)
    top = html[html.index("Top confirmed heads per stage"):html.index("Not found, not confirmed")]
    assert "href='#L2H2'" in top and "href='#L0H1'" not in top     # unconfirmed heads are not top heads
    notfound = html[html.index("Not found, not confirmed"):html.index('id="detectors"')]
    assert "none confirmed" in notfound and "none found" in notfound and "needs 4096 positions" in notfound
    # the stage map is drawn here (no script needed), placed heads link to their page, styled by status
    svg = re.search(r'<svg class="stage-map".*?</svg>', html, re.S).group(0)
    assert svg.count('href="#L2H2"') == 2 and 'class="u ICI"' in svg and 'class="c LR"' in svg and 'class="a KR"' in svg
    assert "Labels of sink (outside the survey" in html


def test_detectors_ordered_by_stage_then_what_they_found():
    names = [d.name for d in detector_views(make_report_atlas())]
    assert names == ["sink", "negative", "prev", "long", "ind", "nothing"]
    # the index and the collapsed sections follow that order; every section starts closed
    html = make_report_atlas().to_html()
    pos = [html.index(f'<details class="det" id="det-{n}">') for n in names]
    assert pos == sorted(pos) and "<details class=\"det\" id=\"det-ind\" open" not in html


def test_maps_colour_the_rules_effect_with_its_minimum_and_outline_by_status():
    data = page_data(make_report_atlas().to_html())
    maps = {f["id"]: f for f in data["figures"] if f["kind"] == "map"}
    assert len(maps) == 5  # the skipped detector has no map
    ind = maps["det-ind-map"]
    nan_trace, main = ind["data"]
    assert main["z_field"] == "effect" and main["colorscale"] == report_plots.DIVERGING
    assert nan_trace["z_field"] == "nan_mask" and nan_trace["colorscale"][0][1] == report_plots.NAN_GREY
    # each detector on its own symmetric scale: ind's largest |effect| is 0.75
    assert main["zmin"] == pytest.approx(-0.75) and main["zmax"] == pytest.approx(0.75)
    bar = main["colorbar"]
    assert 0.1 in bar["tickvals"] and "rule ≥ 0.1" in bar["ticktext"] and -0.1 not in bar["tickvals"]
    neg = maps["det-negative-map"]["data"][1]["colorbar"]
    assert -0.1 in neg["tickvals"] and "rule ≤ -0.1" in neg["ticktext"]
    # the maps carry no per-head numbers: the page fills z and hover text from the detector's fields
    assert "z" not in main and "text" not in main
    det = next(d for d in data["detectors"] if d["name"] == "ind")
    assert det["fields"]["effect"][2][2] == pytest.approx(0.75) and det["fields"]["q_value"][2][2] == pytest.approx(1e-3)
    # outlines: confirmed solid, unconfirmed dashed, attention-defined dotted
    shapes = {s["name"]: s for s in ind["layout"]["shapes"]}
    assert set(shapes) == {"confirmed", "unconfirmed"} and shapes["confirmed"]["line"]["dash"] == "solid"
    assert shapes["confirmed"]["path"] == "M1.5,1.5H2.5V2.5H1.5Z" and shapes["unconfirmed"]["line"]["dash"] == "dash"
    assert shapes["unconfirmed"]["path"] == "M-0.5,2.5H0.5V3.5H-0.5Z"
    assert {s["name"]: s["line"]["dash"] for s in maps["det-prev-map"]["layout"]["shapes"]} == {"unconfirmed": "dash"}
    assert {s["name"]: s["line"]["dash"] for s in maps["det-negative-map"]["layout"]["shapes"]} == {"attention-defined": "dot"}
    lay = ind["layout"]
    assert lay["yaxis"]["range"] == [L - 0.5, -0.5] and lay["xaxis"]["range"] == [-0.5, H - 0.5]
    assert lay["showlegend"] is False and ind["clickable"] is True


def test_sections_rule_table_causal_and_timings_once():
    a = make_report_atlas()
    html = a.to_html()
    for d in ("prev", "ind", "nothing", "negative"):
        assert report.esc(a.result(d).rule.describe()) in html
    for col in ("null mean ± std", "effect [95% CI]", "<th>p</th>", "<th>q</th>", "stability", "relation", "copying"):
        assert col in html
    assert "loss on repeated tokens: +1.2 vs random median +0.15 (p 0.01, q 0.02; increase expected; 99 random sets)" in html
    assert "random pool: layer-matched, no head of the metric family" in html
    assert "beats every random set" not in html and "increase expected" in html
    assert "no behavioural metric: no behavioural metric for this type" in html
    assert "none found" in html and "skipped: needs 4096 positions" in html
    data = page_data(html)
    causal = [f for f in data["figures"] if f["kind"] == "hist"]
    assert len(causal) == 2 and causal[0]["data"][0]["x_field"] == "random_effects"
    ind = next(d for d in data["detectors"] if d["name"] == "ind")
    assert len(ind["causal"]["random_effects"]) == 99 and ind["causal"]["random_median"] == pytest.approx(0.15)
    assert ind["status"] == ["confirmed", "unconfirmed"] and ind["causal"]["per_head"] == {"L2H2": 0.9, "L3H0": -0.1}
    # the head's own causal number in the labelled-heads table
    assert "<th>alone (causal)</th>" in html and "<td>+0.9</td>" in html
    # timings appear once, in the collapsed model section; the shared pass is named instead of "0.0 s"
    assert "0.0 s" not in html and html.count("<td>reused shared pass &#x27;synthetic&#x27; computed by prev</td>") == 1
    assert ">None<" not in html and "(not recorded)" in html


def test_wide_tables_scroll_inside_a_container():
    html = make_report_atlas().to_html()
    body = html[html.index("<body>"):]
    assert body.count("<table") == body.count("<div class='scroll'><table") + body.count("<table class='top'>")
    assert "p,li,h1,h2,h3,nav,summary,form{overflow-wrap:anywhere}" in html


def test_head_pages_get_token_views_writes_and_circuit_data():
    a = make_report_atlas()
    data = page_data(a.to_html())
    assert [tv["id"] for tv in data["token_views"]] == ["det-ind-tokens"]
    tv = data["token_views"][0]
    assert tv["det"] == "ind" and set(tv["heads"]) == {"L2H2", "L3H0"}
    assert tv["heads"]["L2H2"][1] == [500, 500] and tv["heads"]["L3H0"][2] == [0, 0, 1000]   # weights per mille
    assert data["writes"]["heads"]["L2H2"]["self_z"] == 2.5 and data["circuit"] is None
    js = asset("assets/report.js")
    for piece in ("What it writes", "Attention on the detectors' example prompts", "Every other detector",
                  "hashchange", "alone: "):
        assert piece in js
    a.writes = {}
    data = page_data(a.to_html())
    assert data["writes"] is None and "stores no OV output tokens" in data["writes_note"]


def test_writes_are_checked_and_round_trip(tmp_path):
    a = make_report_atlas()
    path = tmp_path / "atlas.json"
    a.save(path)
    b = Atlas.load(path)
    assert b.writes["heads"]["L2H2"]["promoted"] == [[" B", 4.5, " A"]]
    doc = json.loads(path.read_text())
    doc["writes"]["heads"]["L9H9"] = {"promoted": [], "suppressed": []}
    path.write_text(json.dumps(doc))
    with pytest.raises(AtlasFileError, match="not a head of this model"):
        Atlas.load(path)
    clean, _ = check_writes({"heads": {"L0H0": {"promoted": [["x" * 500, 1.0, "y"]] * 50, "suppressed": []}}}, L, H)
    assert len(clean["heads"]["L0H0"]["promoted"]) == 20 and len(clean["heads"]["L0H0"]["promoted"][0][0]) == 48
    for bad in ([1], {"heads": {"L0H0": {"promoted": [["a", "b", "c"]]}}}, {"heads": {"L0H0": {"promoted": "x"}}},
                {"heads": {"L0H0": {"promoted": [["a", float("nan"), "c"]]}}}):
        assert check_writes(bad, L, H)[0] is None
    del doc["writes"]
    path.write_text(json.dumps(doc))
    assert Atlas.load(path).writes == {}   # atlases written before the key existed still load


def test_token_view_helper_limits_and_normalisation():
    n = 70
    toks = [f"t{i}" for i in range(n)]
    pat = np.random.default_rng(0).random((MAX_HEADS + 2, n, n))
    v = make_token_view(toks, pat, [(0, i) for i in range(MAX_HEADS + 2)])
    assert len(v["tokens"]) == MAX_TOKENS and v["start"] == n - MAX_TOKENS and len(v["heads"]) == MAX_HEADS
    rows = v["heads"]["L0H0"]
    assert len(rows) == MAX_TOKENS and [len(r) for r in rows] == list(range(1, MAX_TOKENS + 1))
    assert all(abs(sum(r) - 1) < 0.01 for r in rows)
    assert json.loads(json.dumps(v)) == v
    with pytest.raises(ValueError, match="pattern must be"):
        make_token_view(toks[:3], pat[:1], ["L0H0"])
    ok, why = check_token_view(v)
    assert ok is not None and why == ""
    for bad in ({"tokens": "abc", "heads": {}}, {"tokens": ["a"], "heads": {"L0H0": [["x"]]}}, [1, 2],
                {"tokens": ["a"], "heads": {"L0H0": [[float("nan")]]}}):
        assert check_token_view(bad)[0] is None
    big = {"tokens": ["a"] * 500, "heads": {f"L0H{i}": [[1.0] * 500] * 500 for i in range(20)}}
    cut, _ = check_token_view(big)
    assert len(cut["tokens"]) == MAX_TOKENS and len(cut["heads"]) == MAX_HEADS
    assert all(len(r) <= MAX_TOKENS for rows in cut["heads"].values() for r in rows)


def test_token_view_rendered_only_when_given():
    a = make_report_atlas()
    a.result("ind").details["token_view"] = {"tokens": 3}
    html = a.to_html()
    assert page_data(html)["token_views"] == [] and "token view not shown" in html
    del a.result("ind").details["token_view"]
    html = a.to_html()
    assert page_data(html)["token_views"] == [] and "Token view" not in html


def test_empty_atlas_renders():
    a = Atlas({"name": "empty", "n_layers": 2, "n_heads": 2}, [], {})
    html = a.to_html()
    assert "holds no detector results" in html and page_data(html)["figures"] == []


def test_crafted_atlas_file_renders_inert(tmp_path):
    """The attack path: a shared atlas.json, tampered with, then loaded and rendered."""
    payload = PAYLOADS[0] + PAYLOADS[1]
    path = tmp_path / "atlas.json"
    make_report_atlas(payload).save(path)
    doc = json.loads(path.read_text())
    for entry in doc["detectors"]:
        entry["meta"]["version"] = payload            # a string where an int belongs
        entry["result"]["details"]["deep"] = {payload: [payload, {"k": payload}]}
    path.write_text(json.dumps(doc))
    try:
        a = Atlas.load(path)
    except AtlasFileError:
        return  # refusing the file is also safe
    page = _without_plotly(a.to_html())
    assert not any(p in page for p in PAYLOADS) and page.count("<script") == 3


def test_atlas_without_q_values_still_maps_the_effect_and_short_times_are_not_zero():
    a = make_report_atlas(shared=False)
    r = a.result("prev")
    r.q_value[:] = np.nan   # as in an atlas migrated from schema 1
    r.p_value[:] = np.nan
    a.timings["ind"] = 0.0004
    html = a.to_html()
    fig = next(f for f in page_data(html)["figures"] if f["id"] == "det-prev-map")["data"][1]
    assert fig["zmax"] == pytest.approx(0.85)
    assert "0.0 s" not in html and "&lt; 0.1 s" in html
