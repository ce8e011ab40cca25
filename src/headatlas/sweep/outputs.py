"""A sweep's outputs: ``sweep.csv``'s table (:func:`sweep_table`), per (model, seed, detector) summaries, and
``sweep.html`` (:func:`render_sweep_html`: plots across models, self-contained, every string escaped)."""

from __future__ import annotations

import json
import math
from typing import Any

from .plan import SweepModel

CSV_COLUMNS = ["model", "seed", "layer", "head", "detector", "score", "p_value", "q_value", "labelled"]


def sweep_table(atlases: list[tuple[str, int, dict[str, Any]]]) -> Any:
    """``sweep.csv``'s rows from ``(model, seed, atlas dict)``: one row per detector x head, columns
    :data:`CSV_COLUMNS` (``p_value``/``q_value`` NaN where an atlas has none)."""
    import numpy as np
    import pandas as pd

    from ..atlas import Atlas

    frames = []
    for model, seed, doc in atlases:
        df = Atlas.from_dict(doc).to_dataframe()
        for col in ("p_value", "q_value"):
            if col not in df.columns:
                df[col] = np.nan
        df.insert(0, "seed", int(seed))
        df.insert(0, "model", model)
        frames.append(df[CSV_COLUMNS])
    if not frames:
        return pd.DataFrame(columns=CSV_COLUMNS)
    table = pd.concat(frames, ignore_index=True)
    table["labelled"] = table["labelled"].astype(bool)
    return table


def _summaries(atlases: list[tuple[str, int, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per (model, seed, detector): labelled-head count, top score and top head (skipped: None)."""
    import numpy as np

    from ..atlas import Atlas, head_name

    rows = []
    for model, seed, doc in atlases:
        atlas = Atlas.from_dict(doc)
        skipped = atlas.skipped()
        for name in atlas.detectors:
            if name in skipped:
                rows.append({"model": model, "seed": seed, "detector": name, "labelled": None, "top": None,
                             "top_head": None, "skipped": skipped[name]})
                continue
            scores = np.asarray(atlas.scores(name), dtype=float)
            finite = np.where(np.isfinite(scores), scores, -np.inf)
            flat = int(np.argmax(finite)) if np.isfinite(finite).any() else None
            top = float(scores.flat[flat]) if flat is not None else None
            head = head_name(*np.unravel_index(flat, scores.shape)) if flat is not None else None
            rows.append({"model": model, "seed": seed, "detector": name, "labelled": len(atlas.labelled(name)),
                         "top": top, "top_head": head, "skipped": None})
    return rows


def _mean(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def _figures(models: list[SweepModel], summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Two plotly figures (plain dicts): per detector, labelled heads and top score against the model
    (or the checkpoint, one line per checkpoint series), mean over seeds. Strings are escaped."""
    from ..atlas.htmlsafe import esc

    detectors = list(dict.fromkeys(r["detector"] for r in summaries))
    groups = list(dict.fromkeys(m.group for m in models))
    series_of = {m.label: m.group for m in models}
    x_of = {m.label: (m.checkpoint if m.group else m.label) for m in models}
    figs = []
    for key, title, axis in (("labelled", "Labelled heads per detector", "labelled heads"),
                             ("top", "Top score per detector (best head)", "top score")):
        traces = []
        for group in groups:
            members = [m.label for m in models if series_of[m.label] == group]
            for det in detectors:
                xs, ys, texts = [], [], []
                for label in members:
                    rows = [r for r in summaries if r["model"] == label and r["detector"] == det]
                    if not rows:
                        continue
                    y = _mean([r[key] for r in rows])
                    per_seed = ", ".join(f"s{r['seed']}: {'skipped' if r['skipped'] else r[key]}"
                                         + (f" ({r['top_head']})" if key == "top" and r["top_head"] else "")
                                         for r in rows)
                    xs.append(esc(x_of[label]))
                    ys.append(y)
                    texts.append(esc(f"{label} | {det} | {per_seed}"))
                if xs:
                    name = det if len(groups) == 1 else f"{group or 'models'}: {det}"
                    traces.append({"type": "scatter", "mode": "lines+markers", "name": esc(name), "x": xs, "y": ys,
                                   "text": texts, "hovertemplate": "%{text}<extra></extra>"})
        x_title = "checkpoint" if all(m.group for m in models) else "model"
        figs.append({"data": traces, "layout": {
            "title": {"text": esc(title)}, "height": 420, "margin": {"l": 60, "r": 20, "t": 50, "b": 120},
            "xaxis": {"title": {"text": x_title}, "type": "category", "automargin": True},
            "yaxis": {"title": {"text": axis}, "rangemode": "tozero" if key == "labelled" else "normal"},
            "legend": {"orientation": "h"}}})
    return figs


_JS = """(function () {
  var D = JSON.parse(document.getElementById('sweep-data').textContent);
  D.figures.forEach(function (fig, i) {
    var div = document.getElementById('sweep-fig-' + i);
    if (div && window.Plotly) { Plotly.newPlot(div, fig.data, fig.layout, D.config); }
  });
})();"""

_CSS = """body{font-family:system-ui,sans-serif;margin:24px;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f4f4f4}.failed{color:#b2182b}.muted{color:#777}.plot{min-height:420px}
.scroll{overflow-x:auto}code{font-size:12px}"""


def render_sweep_html(record: dict[str, Any], models: list[SweepModel], summaries: list[dict[str, Any]]) -> str:
    """``sweep.html``: self-contained (plotly.js inlined once, nothing fetched), every string escaped."""
    from plotly.offline import get_plotlyjs

    from ..atlas.htmlsafe import PLOTLY_CONFIG, csp, esc, script_json

    figs = _figures(models, summaries)
    detectors = list(dict.fromkeys(r["detector"] for r in summaries))
    by = {(r["model"], r["seed"], r["detector"]): r for r in summaries}
    body_rows = []
    for task in record["tasks"]:
        cells = []
        for det in detectors:
            r = by.get((task["model"], task["seed"], det))
            if r is None:
                cells.append("<td class='muted'>-</td>")
            elif r["skipped"]:
                cells.append(f"<td class='muted'>skipped: {esc(r['skipped'])}</td>")
            else:
                top = "" if r["top"] is None else f" &middot; top {esc(r['top_head'])} {r['top']:.3g}"
                cells.append(f"<td>{r['labelled']}{top}</td>")
        status = esc(task["status"]) + (f": {esc(task['error'])}" if task.get("error") else "")
        cls = " class='failed'" if task["status"] == "failed" else ""
        seconds = "" if task.get("seconds") is None else f"{task['seconds']:.1f} s"
        body_rows.append(f"<tr><td>{esc(task['model'])}</td><td>{task['seed']}</td><td{cls}>{status}</td>"
                         f"<td>{seconds}</td>{''.join(cells)}</tr>")
    header = "".join(f"<th>{esc(h)}</th>" for h in ["model", "seed", "status", "time", *detectors])
    table = f"<div class='scroll'><table><tr>{header}</tr>{''.join(body_rows)}</table></div>"
    settings = "".join(f"<tr><th>{esc(k)}</th><td><code>{esc(json.dumps(v, default=str))}</code></td></tr>"
                       for k, v in record["settings"].items())
    n_failed = sum(t["status"] == "failed" for t in record["tasks"])
    plots = "".join(f"<div class='plot' id='sweep-fig-{i}'></div>" for i in range(len(figs)))
    plotly_js = get_plotlyjs()
    data = script_json({"figures": figs, "config": PLOTLY_CONFIG})
    title = f"headatlas sweep: {len(models)} model(s) x {len(record['settings']['seeds'])} seed(s)"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{esc(csp([plotly_js, _JS]))}">
<meta name="referrer" content="no-referrer">
<title>{esc(title)}</title>
<style>{_CSS}</style>
<script>{plotly_js}</script>
</head><body>
<h1>{esc(title)}</h1>
<p class="muted">{esc(record['engine'])}; headatlas {esc(record['headatlas_version'])}; {len(record['tasks'])} task(s),
{n_failed} failed. Per detector: the number of labelled heads and the best head's score, mean over seeds (hover for
each seed). Each model's own atlas is in its folder (<code>&lt;model&gt;-s&lt;seed&gt;/atlas.html</code>).</p>
{plots}
<h2>Per model and seed</h2>
<p class="muted">Cells: labelled heads &middot; the top head and its score.</p>
{table}
<h2>Settings</h2>
<table>{settings}</table>
<script type="application/json" id="sweep-data">{data}</script>
<script>{_JS}</script>
</body></html>
"""
