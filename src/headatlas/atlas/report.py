"""The atlas as one self-contained HTML page (plotly.js inlined once, no network needed to view it).

Sections: the model and scan settings; a stage map (layer x head grid coloured by the stage of
each head's labels, "mixed" where they span stages); a table of the top heads per detector with
scores, nulls and z ("none found" where a detector labelled nothing, the reason where it was
skipped); then per detector a layer x head heatmap of its score (hover: score, null, z, label)
with labelled heads marked, its data and null descriptions, and its details.
"""

from __future__ import annotations

import html
import json
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from ..detectors.base import STAGES

if TYPE_CHECKING:
    from .atlas import Atlas

STAGE_ORDER = ["", "KR", "ICI", "LR", "EP", "mixed"]
STAGE_COLORS = ["#eeeeee", "#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#ff7f0e"]
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}
h1{font-size:1.6em;margin-bottom:4px} h2{margin-top:36px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0;font-size:.92em} th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f6f6f6} td.num{text-align:right;font-variant-numeric:tabular-nums}
.none{color:#a15c00;font-weight:600} .skip{color:#888;font-style:italic} .muted{color:#666;font-size:.9em}
.stage{display:inline-block;padding:0 6px;border-radius:3px;color:#fff;font-size:.85em}
pre{background:#f7f7f7;padding:8px;overflow:auto;max-height:320px;font-size:.85em}
nav a{margin-right:10px}
"""


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(x: Any, digits: int = 3) -> str:
    if isinstance(x, str):
        return x
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(v):
        return "nan"
    return f"{v:.{digits}g}"


def _stage_badge(stage: str) -> str:
    color = STAGE_COLORS[STAGE_ORDER.index(stage)] if stage in STAGE_ORDER else "#555"
    return f'<span class="stage" style="background:{color}" title="{_esc(STAGES.get(stage, stage))}">{_esc(stage)}</span>'


def _nan_to_none(a: np.ndarray) -> list:
    return [[None if not np.isfinite(v) else float(v) for v in row] for row in np.asarray(a, dtype=float)]


def _grid_size(n_layers: int, n_heads: int) -> tuple[int, int]:
    height = int(min(1400, max(260, 120 + 18 * n_layers)))
    width = int(min(1150, max(420, 200 + 34 * n_heads)))
    return width, height


def _figure_html(fig: Any, div_id: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                       config={"displaylogo": False, "responsive": True})


def _score_figure(atlas: "Atlas", name: str) -> Any:
    import plotly.graph_objects as go

    r = atlas.result(name)
    z = r.z
    lab = set(map(tuple, r.labelled))
    extras = {k: v for k, v in r.extras.items() if np.shape(v) == (atlas.n_layers, atlas.n_heads)}
    text = [[f"L{la}H{h}<br>score {_fmt(r.scores[la, h], 4)}<br>null {_fmt(r.null_mean[la, h], 4)} "
             f"± {_fmt(r.null_std[la, h], 3)}<br>z {_fmt(z[la, h], 3)}<br>"
             + "".join(f"{_esc(k)} {_esc(_fmt(v[la, h], 3))}<br>" for k, v in extras.items())
             + ("<b>labelled " + _esc(name) + "</b>" if (la, h) in lab else "not labelled")
             for h in range(atlas.n_heads)] for la in range(atlas.n_layers)]
    fig = go.Figure(go.Heatmap(z=_nan_to_none(r.scores), x=list(range(atlas.n_heads)), y=list(range(atlas.n_layers)),
                               text=text, hovertemplate="%{text}<extra></extra>", colorscale="Viridis",
                               colorbar={"title": {"text": "score"}}))
    if lab:
        heads = sorted(lab)
        fig.add_trace(go.Scatter(x=[h for _, h in heads], y=[la for la, _ in heads], mode="markers", name="labelled",
                                 marker={"symbol": "circle-open", "size": 13, "color": "#ff2d2d", "line": {"width": 2.5}},
                                 hoverinfo="skip", showlegend=True))
    width, height = _grid_size(atlas.n_layers, atlas.n_heads)
    fig.update_layout(width=width, height=height, margin={"l": 50, "r": 20, "t": 30, "b": 40},
                      xaxis={"title": {"text": "head"}, "dtick": 1 if atlas.n_heads <= 32 else None},
                      yaxis={"title": {"text": "layer"}, "autorange": "reversed", "dtick": 1 if atlas.n_layers <= 40 else None},
                      legend={"orientation": "h", "y": 1.06, "x": 0}, plot_bgcolor="#fff")
    return fig


def _stage_figure(atlas: "Atlas") -> Any:
    import plotly.graph_objects as go

    grid = atlas.stage_grid()
    idx = np.vectorize(lambda s: STAGE_ORDER.index(s))(grid) if grid.size else np.zeros((0, 0))
    labels: dict[tuple[int, int], list[str]] = {}
    for name in atlas.detectors:
        for la, h in atlas.labelled(name):
            labels.setdefault((la, h), []).append(f"{name} ({atlas.meta[name].stage})")
    text = [[f"L{la}H{h}<br>{_esc(grid[la, h] or 'no label')}<br>" + "<br>".join(_esc(x) for x in labels.get((la, h), []))
             for h in range(atlas.n_heads)] for la in range(atlas.n_layers)]
    n = len(STAGE_ORDER)
    scale = []
    for i, c in enumerate(STAGE_COLORS):
        scale += [[i / n, c], [(i + 1) / n, c]]
    fig = go.Figure(go.Heatmap(z=idx.tolist(), x=list(range(atlas.n_heads)), y=list(range(atlas.n_layers)), text=text,
                               hovertemplate="%{text}<extra></extra>", colorscale=scale, zmin=-0.5, zmax=n - 0.5,
                               xgap=1, ygap=1,
                               colorbar={"tickvals": list(range(n)), "ticktext": ["none"] + STAGE_ORDER[1:],
                                         "title": {"text": "stage"}}))
    width, height = _grid_size(atlas.n_layers, atlas.n_heads)
    fig.update_layout(width=width, height=height, margin={"l": 50, "r": 20, "t": 20, "b": 40},
                      xaxis={"title": {"text": "head"}, "dtick": 1 if atlas.n_heads <= 32 else None},
                      yaxis={"title": {"text": "layer"}, "autorange": "reversed", "dtick": 1 if atlas.n_layers <= 40 else None},
                      plot_bgcolor="#fff")
    return fig


def _anchor(name: str) -> str:
    return "det-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


def _top_table(atlas: "Atlas", top: int) -> str:
    rows = []
    for name in atlas.detectors:
        r, m = atlas.result(name), atlas.meta[name]
        link = f'<a href="#{_anchor(name)}">{_esc(name)}</a>'
        seconds = atlas.timings.get(name)
        t = f"{seconds:.1f} s" if seconds is not None and math.isfinite(seconds) else ""
        if r.skipped:
            rows.append(f"<tr><td>{link}</td><td>{_stage_badge(m.stage)}</td><td class='skip' colspan='6'>skipped: "
                        f"{_esc(r.skipped)}</td><td class='num'>{t}</td></tr>")
            continue
        tops = atlas.top_heads(name, top)
        if not tops:
            rows.append(f"<tr><td>{link}</td><td>{_stage_badge(m.stage)}</td><td class='num'>0</td>"
                        f"<td class='none' colspan='5'>none found</td><td class='num'>{t}</td></tr>")
            continue
        def cells(f, tops=tops):
            return "<br>".join(f(e) for e in tops)

        rows.append(
            f"<tr><td>{link}</td><td>{_stage_badge(m.stage)}</td><td class='num'>{len(r.labelled)}</td>"
            f"<td>{cells(lambda e: e.name)}</td><td class='num'>{cells(lambda e: _fmt(e.score))}</td>"
            f"<td class='num'>{cells(lambda e: _fmt(e.null_mean) + ' ± ' + _fmt(e.null_std, 2))}</td>"
            f"<td class='num'>{cells(lambda e: _fmt(e.z))}</td>"
            f"<td class='num'>{cells(lambda e: _fmt(e.score - e.null_mean))}</td><td class='num'>{t}</td></tr>")
    head = ("<tr><th>detector</th><th>stage</th><th>labelled</th><th>top heads</th><th>score</th><th>null mean ± std</th>"
            "<th>z</th><th>margin</th><th>time</th></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _detector_section(atlas: "Atlas", name: str, top: int) -> str:
    r, m = atlas.result(name), atlas.meta[name]
    parts = [f'<h2 id="{_anchor(name)}">{_esc(name)} {_stage_badge(m.stage)}</h2>']
    meta_bits = [f"<b>method</b>: {_esc(m.method)}" if m.method else "",
                 f"<b>citation</b>: {_esc(m.citation)}" if m.citation else "", f"<b>version</b>: {m.version}"]
    if m.summary:
        parts.append(f"<p>{_esc(m.summary)}</p>")
    parts.append(f"<p class='muted'>{' · '.join(b for b in meta_bits if b)}</p>")
    if r.skipped:
        parts.append(f"<p class='skip'>skipped on this model: {_esc(r.skipped)}</p>")
        return "\n".join(parts)
    parts.append("<table>"
                 f"<tr><th>data</th><td>{_esc(r.data_description)}</td></tr>"
                 f"<tr><th>null baseline</th><td>{_esc(r.null_description)}</td></tr>"
                 f"<tr><th>prompts</th><td>{r.n_prompts} (seed {r.seed})</td></tr>"
                 f"<tr><th>label rule</th><td>score ≥ {_fmt(r.min_score)} and z ≥ {_fmt(r.min_z)}</td></tr>"
                 "</table>")
    if r.labelled:
        evid = atlas.top_heads(name, max(top, len(r.labelled)) if len(r.labelled) <= 3 * top else 3 * top)
        extra_keys = sorted({k for e in evid for k in e.extras})
        head = "".join(f"<th>{_esc(k)}</th>" for k in ["head", "score", "null mean", "null std", "z", *extra_keys])
        body = "".join("<tr>" + f"<td>{e.name}</td>" + "".join(f"<td class='num'>{_fmt(v)}</td>" for v in
                       [e.score, e.null_mean, e.null_std, e.z, *[e.extras.get(k, math.nan) for k in extra_keys]]) + "</tr>"
                       for e in evid)
        more = len(r.labelled) - len(evid)
        parts.append(f"<p>{len(r.labelled)} labelled head(s)" + (f", top {len(evid)} shown" if more > 0 else "") + ":</p>")
        parts.append(f"<table><tr>{head}</tr>{body}</table>")
    else:
        best = atlas.top_heads(name, 1, labelled_only=False)
        hint = f" (best head {best[0].name}: score {_fmt(best[0].score)}, z {_fmt(best[0].z)})" if best else ""
        parts.append(f"<p class='none'>none found: no head cleared the label rule{_esc(hint)}.</p>")
    parts.append(_figure_html(_score_figure(atlas, name), _anchor(name) + "-heatmap"))
    if r.details:
        text = json.dumps(_jsonable(r.details), indent=1, ensure_ascii=False)
        if len(text) > 20000:
            text = text[:20000] + "\n... (truncated; the full details are in the atlas JSON)"
        parts.append(f"<details><summary>details</summary><pre>{_esc(text)}</pre></details>")
    return "\n".join(parts)


def _jsonable(x: Any) -> Any:
    from . import schema

    return json.loads(json.dumps(schema.encode(x), allow_nan=False))


def render_html(atlas: "Atlas", *, top: int = 5) -> str:
    """The whole report as one HTML string with plotly.js embedded once."""
    from plotly.offline import get_plotlyjs

    info = atlas.model
    model_rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in info.items())
    settings = {"seed": atlas.seed, **atlas.settings, "headatlas": atlas.headatlas_version, "created": atlas.created}
    settings_rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in settings.items())
    counts = {s: 0 for s in STAGE_ORDER[1:]}
    for st in atlas.stage_grid().ravel():
        if st:
            counts[st] += 1
    legend = " ".join(f"{_stage_badge(s)} {_esc(STAGES.get(s, 'labels from several stages'))}: {counts[s]} heads"
                      for s in STAGE_ORDER[1:])
    unplaced = [n for n in atlas.detectors if not atlas.meta[n].places_stage]
    if unplaced:
        legend += (f"<br><span class='muted'>Labels of {_esc(', '.join(unplaced))} (outside the survey's taxonomy) "
                   "are reported below but do not place a head in a stage.</span>")
    nav = " ".join(f'<a href="#{_anchor(n)}">{_esc(n)}</a>' for n in atlas.detectors)
    skipped = atlas.skipped()
    skipped_html = ("<ul>" + "".join(f"<li><b>{_esc(n)}</b>: {_esc(why)}</li>" for n, why in skipped.items()) + "</ul>"
                    if skipped else "<p class='muted'>none</p>")
    sections = "\n".join(_detector_section(atlas, n, top) for n in atlas.detectors)
    stage_map = (_figure_html(_stage_figure(atlas), "stage-map") if atlas.detectors
                 else "<p class='none'>this atlas holds no detector results.</p>")
    title = f"headatlas: {_esc(atlas.model_name)}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="generator" content="headatlas {_esc(atlas.headatlas_version)}">
<style>{_CSS}</style>
<script type="text/javascript">{get_plotlyjs()}</script>
</head><body>
<h1>{title}</h1>
<p class="muted">{atlas.n_layers} layers x {atlas.n_heads} heads ({atlas.n_layers * atlas.n_heads} heads), heads named L&lt;layer&gt;H&lt;head&gt;.
Every label carries its evidence: the score, the same score under a null baseline, and z = (score - null mean) / null std.</p>
<nav>{nav}</nav>
<h2 id="model">Model and scan</h2>
<div style="display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start"><table>{model_rows}</table><table>{settings_rows}</table></div>
<h2 id="stage-map-section">Stage map</h2>
<p>{legend}</p>
{stage_map}
<h2 id="top-heads">Top heads per type</h2>
{_top_table(atlas, top)}
<h2 id="skipped">Skipped detectors</h2>
{skipped_html}
{sections}
</body></html>
"""
