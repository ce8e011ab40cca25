"""The report's pictures.

- **Stage map** (:func:`stage_map_svg`): inline SVG drawn here, so it shows at first paint without any script:
  one layer x head panel per stage; a head is filled in its stage's colour (the stylesheet's ``.KR`` ... ``.EP``) when a confirmed (or
  attention-defined) label places it there, drawn pale with a dashed outline when only unconfirmed labels do.
  Every placed head links to its page (``#L23H0``).
- **Detector maps** (:func:`detector_map`): plotly heatmap specs, drawn by the page script when they scroll
  into view. Colour = the label rule's effect (signed, on the detector's own symmetric scale, diverging around
  0), the rule's minimum marked on the colour bar; grey = a head the detector could not test (NaN); labelled
  heads outlined: confirmed solid black, unconfirmed dashed, attention-defined dotted. The spec carries no
  per-head numbers: the page script fills ``z`` (``"z_field"``) and the hover text from the detector's
  embedded fields, so the numbers are in the page once.
- **Causal check** (:func:`causal_histogram`): the random sets' changes as a histogram with the labelled set and
  the random median marked; the page script fills ``x`` from the embedded random effects.

Every atlas string in a spec is escaped (:func:`~headatlas.atlas.htmlsafe.esc`): plotly renders its text as
HTML-like markup.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .htmlsafe import esc
from .report_data import STAGE_ORDER, DetView, fmt, head_name

DIVERGING = [[0.0, "#2166ac"], [0.25, "#92c5de"], [0.5, "#f7f7f7"], [0.75, "#f4a582"], [1.0, "#b2182b"]]
NAN_GREY = "#bdbdbd"
OUTLINES = {"confirmed": {"color": "#111111", "width": 2.5, "dash": "solid"},
            "unconfirmed": {"color": "#111111", "width": 1.5, "dash": "dash"},
            "attention-defined": {"color": "#555555", "width": 1.5, "dash": "dot"}}


# ----- layer x head grids ----------------------------------------------------------------------------
def _axes(n_layers: int, n_heads: int) -> tuple[dict[str, Any], dict[str, Any]]:
    x = {"title": {"text": "head"}, "range": [-0.5, n_heads - 0.5], "autorange": False, "showgrid": False,
         "zeroline": False, "dtick": 1 if n_heads <= 16 else None}
    y = {"title": {"text": "layer"}, "range": [n_layers - 0.5, -0.5], "autorange": False, "showgrid": False,
         "zeroline": False, "dtick": 1 if n_layers <= 32 else (2 if n_layers <= 64 else None)}
    return x, y


def _cell(n_layers: int, n_heads: int, width: float = 640.0, height: float = 560.0) -> tuple[int, int]:
    """Cell width and height in pixels: the grid fits ``width`` x ``height`` where cells stay legible."""
    return int(max(5, min(34, width / max(n_heads, 1)))), int(max(5, min(22, height / max(n_layers, 1))))


def _outline_path(heads: list[tuple[int, int]]) -> str:
    """One SVG path of unit squares around ``heads`` in data coordinates (x = head, y = layer)."""
    return " ".join(f"M{h - 0.5},{la - 0.5}H{h + 0.5}V{la + 0.5}H{h - 0.5}Z" for la, h in heads)


def colorbar_ticks(zmax: float, min_effect: float, direction: str) -> tuple[list[float], list[str]]:
    """Colour-bar ticks: the scale's ends, 0, and the rule's minimum effect on the side(s) its direction tests
    (labelled "rule ..."); a minimum of 0 or one outside the scale is not marked."""
    vals, text = [-zmax, 0.0, zmax], [fmt(-zmax), "0", fmt(zmax)]
    if min_effect > 0 and min_effect < zmax:
        sides = {"greater": (1,), "less": (-1,), "two-sided": (-1, 1)}.get(direction, (1,))
        for s in sides:
            vals.append(s * min_effect)
            text.append(f"rule {'≥' if s > 0 else '≤'} {fmt(s * min_effect)}")
    order = sorted(range(len(vals)), key=lambda i: vals[i])
    return [vals[i] for i in order], [text[i] for i in order]


def detector_map(d: DetView, index: int, n_layers: int, n_heads: int) -> dict[str, Any]:
    """The plotly spec of detector ``d``'s map (see the module docstring); ``index``: its position in the page
    data's detector list."""
    e = d.f["effect"]
    finite = np.abs(e[np.isfinite(e)])
    zmax = float(finite.max()) if finite.size and finite.max() > 0 else max(d.min_effect, 1.0)
    tickvals, ticktext = colorbar_ticks(zmax, d.min_effect, d.direction)
    cw, ch = _cell(n_layers, n_heads)
    xa, ya = _axes(n_layers, n_heads)
    shapes = []
    for status, line in OUTLINES.items():
        heads = d.heads_with(status)
        if heads:
            shapes.append({"type": "path", "path": _outline_path(heads), "xref": "x", "yref": "y",
                           "line": dict(line), "fillcolor": "rgba(0,0,0,0)", "layer": "above", "name": status})
    nan_trace = {"type": "heatmap", "z_field": "nan_mask", "colorscale": [[0, NAN_GREY], [1, NAN_GREY]],
                 "showscale": False, "hoverinfo": "skip", "xgap": 1, "ygap": 1, "zmin": 0, "zmax": 1}
    main = {"type": "heatmap", "z_field": "effect", "hovertemplate": "%{text}<extra></extra>",
            "colorscale": DIVERGING, "zmin": -zmax, "zmax": zmax, "xgap": 1, "ygap": 1,
            "colorbar": {"title": {"text": "effect"}, "thickness": 12, "len": 1.0, "tickvals": tickvals,
                         "ticktext": [esc(t) for t in ticktext]}}
    layout = {"width": max(380, 190 + cw * n_heads), "height": max(220, 75 + ch * n_layers),
              "margin": {"l": 50, "r": 10, "t": 20, "b": 45}, "xaxis": xa, "yaxis": ya, "showlegend": False,
              "plot_bgcolor": "#ffffff", "shapes": shapes}
    return {"id": d.anchor + "-map", "kind": "map", "det": index, "data": [nan_trace, main], "layout": layout,
            "clickable": True}


def causal_histogram(d: DetView, index: int) -> dict[str, Any] | None:
    """The plotly spec of ``d``'s causal check (``None`` when no random set was ablated)."""
    c = d.causal
    if not c or c["kind"] == "none" or not any(math.isfinite(x) for x in c["random_effects"]):
        return None
    n = sum(math.isfinite(x) for x in c["random_effects"])
    data = [{"type": "histogram", "x_field": "random_effects", "nbinsx": min(30, max(5, n // 2)), "name": "random sets",
             "marker": {"color": "#9e9e9e"}, "hovertemplate": "random sets: %{y}<br>change %{x}<extra></extra>"}]
    shapes, notes = [], []
    for x, color, dash, label in ((c["effect"], "#d62728", "solid", "labelled set"),
                                  (c["random_median"], "#555555", "dot", "random median")):
        if math.isfinite(x):
            shapes.append({"type": "line", "x0": x, "x1": x, "xref": "x", "yref": "paper", "y0": 0, "y1": 1,
                           "line": {"color": color, "width": 2, "dash": dash}})
            notes.append({"x": x, "xref": "x", "y": 1, "yref": "paper", "text": label, "showarrow": False,
                          "yanchor": "bottom", "font": {"color": color, "size": 11}})
    layout = {"width": 480, "height": 240, "margin": {"l": 45, "r": 15, "t": 40, "b": 45}, "shapes": shapes,
              "annotations": notes, "showlegend": False, "bargap": 0.05,
              "xaxis": {"title": {"text": f"change of {esc(c['metric'])} (ablated - clean)"}},
              "yaxis": {"title": {"text": "random sets"}}}
    return {"id": d.anchor + "-causal", "kind": "hist", "det": index, "data": data, "layout": layout,
            "clickable": False}


# ----- the stage map (server-side SVG) ---------------------------------------------------------------
def stage_map_svg(n_layers: int, n_heads: int, summary: dict[str, dict[str, list[tuple[int, int]]]],
                  labels: dict[tuple[str, tuple[int, int]], list[str]], width: float = 660.0) -> str:
    """Four panels (KR, ICI, LR, EP), one cell per head; ``labels[(stage, head)]``: the label lines of a placed
    head (for its tooltip)."""
    gap, left, top = 14, 30, 22
    panel = (width - left - 3 * gap) / 4
    cw = max(3.0, min(28.0, panel / max(n_heads, 1)))
    ch = max(3.0, min(16.0, 340.0 / max(n_layers, 1)))
    pw = cw * n_heads
    height = top + ch * n_layers + 22
    total_w = left + 4 * pw + 3 * gap + 4
    parts = [f'<svg class="stage-map" width="{total_w:.0f}" height="{height:.0f}" '
             f'viewBox="0 0 {total_w:.0f} {height:.0f}" role="img" aria-label="stage map">']
    step = 1 if n_layers <= 12 else (5 if n_layers <= 60 else 10)
    for la in range(0, n_layers, step):
        parts.append(f'<text x="{left - 4}" y="{top + (la + 0.75) * ch:.1f}" text-anchor="end" class="ax">{la}</text>')
    parts.append(f'<text x="2" y="{top - 8}" class="ax">layer</text>')
    for i, s in enumerate(STAGE_ORDER):
        x0 = left + i * (pw + gap)
        by = summary.get(s, {})
        parts.append(f'<text x="{x0 + pw / 2:.1f}" y="{top - 8}" text-anchor="middle" class="st">{s}</text>')
        parts.append(f'<rect x="{x0:.1f}" y="{top}" width="{pw:.1f}" height="{ch * n_layers:.1f}" class="bg"/>')
        for status, cls in (("unconfirmed", "u"), ("attention-defined", "a"), ("confirmed", "c")):
            for la, h in by.get(status, []):
                name = head_name(la, h)
                tip = esc(f"{name} {s}: " + ", ".join(labels.get((s, (la, h)), [])))
                parts.append(f'<a href="#{name}"><rect x="{x0 + h * cw + 0.5:.1f}" y="{top + la * ch + 0.5:.1f}" '
                             f'width="{cw - 1:.1f}" height="{ch - 1:.1f}" class="{cls} {s}"><title>{tip}</title></rect></a>')
        parts.append(f'<text x="{x0 + pw / 2:.1f}" y="{height - 6:.0f}" text-anchor="middle" class="ax">head</text>')
    parts.append("</svg>")
    return "".join(parts)
