"""The HTML report on hand-made atlases (no model, no browser): untrusted strings appear only escaped,
plotly's upload features are off, nothing points off the page, stage counts come from the labels,
maps share one scale and a detector that found nothing is greyed, and the token view format."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from headatlas.atlas import Atlas, DetectorMeta
from headatlas.atlas import report
from headatlas.atlas.htmlsafe import PLOTLY_CONFIG, script_hash, script_json
from headatlas.atlas.records import CausalCheck, DetectorResult, LabelRule, no_causal_check, skipped_result
from headatlas.atlas.tokenview import MAX_HEADS, MAX_TOKENS, check_token_view, make_token_view

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


def make_report_atlas(s: str = "", *, shared: bool = True) -> Atlas:
    """A small atlas with every kind of section; ``s`` is appended to every string an atlas can hold
    (pass a script-injection payload to test escaping)."""
    tokens = ["<s>", " A", " B", " A", " B" + s]
    pattern = np.stack([np.tril(np.ones((5, 5))) / np.arange(1, 6)[:, None], np.eye(5)])
    view = make_token_view(tokens, pattern, [(2, 2), (3, 0)], note="repeated tokens" + s)
    if s:
        view["heads"]["L3H0" + s] = view["heads"].pop("L3H0")
    causal = CausalCheck(metric="loss on repeated tokens" + s, kind="mean", heads=((2, 2), (3, 0)), effect=1.2,
                         random_effects=tuple(np.linspace(0.0, 0.3, 20)), p_value=1 / 21, n_prompts=16, baseline=3.0,
                         expected="increase", description="ablate the labelled set" + s, note="note" + s)
    results = [
        _result("prev" + s, {(0, 1): 0.9, (2, 2): 0.6}, s=s, extras={"relation": np.array([["nsubj" + s] * H] * L)},
                details={"offsets" + s: [1, 2], "why": "because" + s}),
        _result("ind" + s, {(2, 2): 0.8, (3, 0): 0.7}, s=s, causal=causal, details={"token_view": view},
                extras={"copying": np.linspace(-1, 1, L * H).reshape(L, H)}),
        _result("nothing" + s, {}, s=s, causal=no_causal_check("no behavioural metric for this type" + s)),
        _result("sink" + s, {(1, 1): 0.9}, s=s),
        _result("negative" + s, {(1, 0): -0.5}, s=s, direction="less"),
        skipped_result("long" + s, L, H, "needs 4096 positions" + s, 0),
    ]
    stages = {"prev": "ICI", "ind": "LR", "nothing": "EP", "sink": "KR", "negative": "KR", "long": "ICI"}
    meta = {n + s: DetectorMeta(n + s, st, method="pattern" + s, summary=f"{n} heads{s}", citation="paper" + s,
                                version=("2" + s) if s else 2, places_stage=(n != "sink"), metric="")
            for n, st in stages.items()}   # attention-defined: their labels place heads without a causal check
    return Atlas({"name": "toy" + s, "architecture": "Toy" + s, "n_layers": L, "n_heads": H, "note" + s: "x" + s},
                 results, meta, seed=3, settings={"quick": True, "n_prompts": None, "device" + s: "cpu" + s,
                                                  "nested": {"k" + s: ["v" + s]}},
                 timings={n + s: 1.5 for n in stages} | {"ind" + s: 0.0},
                 shared_passes={"ind" + s: "reused shared pass 'synthetic' computed by prev" + s} if shared else None,
                 notes=["migrated from headatlas.atlas/1" + s], headatlas_version="0.1.0" + s,
                 created="2026-01-01" + s)


def page_data(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="ha-data">(.*?)</script>', html, re.S)
    assert m, "no data block"
    return json.loads(m.group(1))


def _scripts(html: str) -> list[str]:
    return re.findall(r"<script(?: [^>]*)?>(.*?)</script>", html, re.S)


def _without_plotly(html: str) -> str:
    from plotly.offline import get_plotlyjs

    js = get_plotlyjs()
    assert html.count(js) == 1, "plotly.js must be inlined exactly once"
    return html.replace(js, "")


@pytest.fixture(scope="module")
def crafted_html() -> str:
    return make_report_atlas(PAYLOADS[0] + PAYLOADS[1]).to_html()


def test_every_atlas_string_appears_only_escaped(crafted_html):
    page = _without_plotly(crafted_html)
    for p in PAYLOADS + ("<img", "<script>alert", "onerror=alert(1)>"):
        assert p not in page, f"{p!r} appears raw in the report"
    # exactly the report's own three script elements, and no element made from the payload
    assert page.count("<script") == 3 and page.count("</script>") == 3
    assert "<img" not in page.lower()
    # the strings were rendered (escaped) in the HTML text, in every kind of place
    esc_payload = "&lt;img src=x onerror=alert(1)&gt;&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;"
    for where in ("prev", "toy", "Toy", "0.1.0", "2026-01-01", "pattern", "paper", "heads", "needs 4096 positions",
                  "attention mass", " data", " null", "cpu", "device", "no behavioural metric for this type",
                  "loss on repeated tokens", "ablate the labelled set", "reused shared pass 'synthetic' computed by prev"
                  .replace("'", "&#x27;"), "because", "nsubj", "note", "repeated tokens",
                  "migrated from headatlas.atlas/1"):
        assert where + esc_payload in page, f"{where!r}+payload not found escaped"
    assert "2" + esc_payload in page  # a string-valued detector version


def test_script_data_is_script_safe_and_lossless(crafted_html):
    data = page_data(crafted_html)
    block = re.search(r'id="ha-data">(.*?)</script>', crafted_html, re.S).group(1)
    for ch in "<>&\u2028\u2029":
        assert ch not in block
    payload = PAYLOADS[0] + PAYLOADS[1]
    names = [d["name"] for d in data["detectors"]]
    assert names[0] == "prev" + payload  # JSON.parse gives the exact string back (scripts use textContent)
    tv = data["token_views"][0]
    assert tv["tokens"][-1] == " B" + payload and "L3H0" + payload in tv["heads"]
    assert json.loads(script_json({"a": "\u2028</script>&"})) == {"a": "\u2028</script>&"}


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


def test_stage_map_counts_heads_in_every_stage_of_their_labels():
    a = make_report_atlas()
    heads = report.stage_heads(a)
    # L2H2 is labelled by prev (ICI) and ind (LR): it counts in both; sink (places_stage False) places nothing
    assert heads["ICI"] == [(0, 1), (2, 2)] and heads["LR"] == [(2, 2), (3, 0)]
    assert heads["KR"] == [(1, 0)] and heads["EP"] == []
    html = a.to_html()
    assert "Latent Reasoning: <b>2</b> heads" in html and "In-Context Identification: <b>2</b> heads" in html
    assert "Knowledge Recalling: <b>1</b> heads" in html and "Expression Preparation: <b>0</b> heads" in html
    data = page_data(html)
    stage_fig = next(f for f in data["figures"] if f["id"] == "stage-map")
    panels = {t["xaxis"]: t["z"] for t in stage_fig["data"]}
    assert len(panels) == 4 and panels["x3"][2][2] == 1 and panels["x2"][2][2] == 1  # LR and ICI panels
    assert data["stage_heads"]["LR"] == [[2, 2], [3, 0]]
    assert "Labels of sink (outside the survey" in html


def test_maps_share_one_diverging_scale_and_nothing_found_is_greyed():
    data = page_data(make_report_atlas().to_html())
    maps = {f["id"]: f for f in data["figures"] if f["id"].endswith("-heatmap")}
    assert len(maps) == 5  # the skipped detector has no map
    scales = {(f["data"][0]["zmin"], f["data"][0]["zmax"]) for f in maps.values()}
    assert len(scales) == 1 and next(iter(scales))[0] == -next(iter(scales))[1]
    nothing = maps["det-nothing-heatmap"]["data"][0]
    assert nothing["colorscale"] == report.GREYS
    ind = maps["det-ind-heatmap"]
    assert ind["data"][0]["colorscale"] == report.DIVERGING
    # signed significance: a labelled negative head is below 0, a labelled positive one above
    neg = maps["det-negative-heatmap"]["data"][0]["z"]
    assert neg[1][0] == pytest.approx(-3.0) and ind["data"][0]["z"][2][2] == pytest.approx(3.0)
    # no empty rows or columns beyond the model; no plotly legend over row 0
    lay = ind["layout"]
    assert lay["yaxis"]["range"] == [L - 0.5, -0.5] and lay["xaxis"]["range"] == [-0.5, H - 0.5]
    assert lay["showlegend"] is False and ind["clickable"] is True


def test_sections_rule_table_causal_and_timings():
    a = make_report_atlas()
    html = a.to_html()
    for d in ("prev", "ind", "nothing", "negative"):
        assert report.esc(a.result(d).rule.describe()) in html
    for col in ("null mean ± std", "effect [95% CI]", "<th>p</th>", "<th>q</th>", "stability", "relation", "copying"):
        assert col in html
    assert "loss on repeated tokens: 1.2 vs random median 0.15" in html
    assert "exceeds 20 of 20 random sets" in html
    assert "no behavioural metric: no behavioural metric for this type" in html
    assert "none found" in html and "skipped: needs 4096 positions" in html
    data = page_data(html)
    causal = [f for f in data["figures"] if f["id"].endswith("-causal")]
    assert len(causal) == 1 and len(causal[0]["data"][0]["x"]) == 20
    assert [s["x0"] for s in causal[0]["layout"]["shapes"]][0] == pytest.approx(1.2)
    # timings: the shared pass is named instead of "0.0 s"; settings never print None
    assert "0.0 s" not in html and "<td>reused shared pass &#x27;synthetic&#x27; computed by prev</td>" in html
    assert ">None<" not in html and "(not recorded)" in html
    # every labelled head's evidence is in the card data
    ind = data["detectors"][1]
    assert ind["fields"]["q_value"][2][2] == pytest.approx(1e-3) and ind["causal"]["random_median"] == pytest.approx(0.15)


def test_wide_tables_scroll_inside_a_container():
    html = make_report_atlas().to_html()
    assert html.count("<table") == html.count("<div class='scroll'><table")
    assert "p,li,h1,h2,h3,nav,summary,form{overflow-wrap:anywhere}" in html


def test_token_view_helper_limits_and_normalisation():
    n = 70
    toks = [f"t{i}" for i in range(n)]
    pat = np.random.default_rng(0).random((5, n, n))
    v = make_token_view(toks, pat, [(0, i) for i in range(5)])
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
    big = {"tokens": ["a"] * 500, "heads": {f"L0H{i}": [[1.0] * 500] * 500 for i in range(10)}}
    cut, _ = check_token_view(big)
    assert len(cut["tokens"]) == MAX_TOKENS and len(cut["heads"]) == MAX_HEADS
    assert all(len(r) <= MAX_TOKENS for rows in cut["heads"].values() for r in rows)


def test_token_view_rendered_only_when_given():
    a = make_report_atlas()
    data = page_data(a.to_html())
    assert [tv["id"] for tv in data["token_views"]] == ["det-ind-tokens"]
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
    from headatlas.errors import AtlasFileError

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


def test_atlas_without_q_values_maps_the_effect_and_short_times_are_not_zero():
    a = make_report_atlas(shared=False)
    r = a.result("prev")
    r.q_value[:] = np.nan   # as in an atlas migrated from schema 1
    r.p_value[:] = np.nan
    a.timings["ind"] = 0.0004
    html = a.to_html()
    fig = next(f for f in page_data(html)["figures"] if f["id"] == "det-prev-heatmap")["data"][0]
    assert fig["z"][0][1] == pytest.approx(0.85) and fig["zmax"] == pytest.approx(0.85)
    assert "holds no q-values for this detector" in html
    assert "0.0 s" not in html and "&lt; 0.1 s" in html
