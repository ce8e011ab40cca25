"""The report's specificity section: a heatmap of the atlas's specificity matrix (only when it holds one).

:func:`specificity_section` returns the section's HTML and its plotly figure (``{"id", "data", "layout",
"clickable"}``, the report's figure format); every string from the atlas is escaped (names reach plotly's tick labels
and hover text, which plotly renders as HTML).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from .htmlsafe import esc

if TYPE_CHECKING:
    from .protocols import AtlasLike

FIGURE_ID = "specificity-heatmap"
Z_CAP = 10.0   # the colour scale saturates here (a diagonal cell can be 50 sd away; the hover keeps the number)


def _hover(rec: Any, z: np.ndarray) -> list[list[str]]:
    out = []
    for i, r in enumerate(rec.rows):
        row = []
        for j, f in enumerate(rec.families):
            ref = rec.reference_of(r, f)
            own = " (its own check)" if ref.detector == r else f" (against {esc(ref.detector)}'s random sets)"
            row.append(f"<b>{esc(r)}</b> set ({len(rec.heads[r])} heads) on <b>{esc(f)}</b>{own}<br>"
                       f"z {_num(z[i, j])}; change {_num(rec.effects[i, j], 4)} vs random median "
                       f"{_num(ref.median, 4)}, std {_num(ref.std, 4)} over {ref.n_random} sets<br>"
                       f"{esc(ref.metric)}, expected {esc(ref.expected)}, {esc(ref.kind)}")
        out.append(row)
    return out


def _num(x: float, digits: int = 2) -> str:
    return f"{x:+.{digits}g}" if math.isfinite(float(x)) else "n/a"


def specificity_section(atlas: "AtlasLike") -> tuple[str, dict[str, Any] | None]:
    """``(html, figure)``; ``("", None)`` when the atlas holds no matrix."""
    rec = getattr(atlas, "specificity_matrix", None)
    if rec is None:
        return "", None
    notes = "".join(f"<li>{esc(n)}</li>" for n in rec.notes)
    notes_html = f"<details><summary>notes ({len(rec.notes)})</summary><ul>{notes}</ul></details>" if notes else ""
    intro = ("<p>Each row ablates one detector's confirmed set (the heads its passing causal check tested); each column "
             "is a behavioural metric family. A cell is z = (change of the metric - median of its random sets' changes) "
             "/ their std, signed so that <b>positive = moves the metric the way that family's own heads do</b>; about "
             "0 = what a layer-matched random set does. The row's own family (outlined) is its own check re-measured. "
             "A large off-diagonal z means the set also serves that other behaviour (the head types overlap); hover "
             "for the raw change and the reference check.</p>")
    if not rec.rows:
        return (f"<h2 id='specificity'>Specificity matrix</h2>{intro}<p class='none'>empty: "
                f"{esc(rec.notes[0] if rec.notes else 'no confirmed set')}</p>{notes_html}", None)
    z = rec.z()
    shown = np.where(np.isfinite(z), np.clip(z, -Z_CAP, Z_CAP), np.nan)
    rows = [esc(f"{r} ({len(rec.heads[r])})") for r in rec.rows]
    cols = [esc(f) for f in rec.families]
    data = [{"type": "heatmap", "z": [[None if not math.isfinite(x) else round(float(x), 3) for x in row]
                                      for row in shown],
             "x": cols, "y": rows, "text": _hover(rec, z), "hovertemplate": "%{text}<extra></extra>",
             "colorscale": "RdBu", "reversescale": True, "zmin": -Z_CAP, "zmax": Z_CAP, "zmid": 0,
             "colorbar": {"title": {"text": "z"}}}]
    labels = [{"x": cols[j], "y": rows[i], "text": _num(z[i, j], 2), "showarrow": False, "font": {"size": 10}}
              for i in range(len(rows)) for j in range(len(cols)) if math.isfinite(z[i, j])]
    own = [{"type": "rect", "xref": "x", "yref": "y", "x0": j - 0.5, "x1": j + 0.5, "y0": i - 0.5, "y1": i + 0.5,
            "line": {"color": "#000", "width": 2}}
           for i, r in enumerate(rec.rows) for j, f in enumerate(rec.families) if rec.references[r].family == f]
    layout = {"width": min(1100, 260 + 110 * len(cols)), "height": 140 + 28 * len(rows),
              "margin": {"l": 200, "r": 20, "t": 20, "b": 120}, "annotations": labels, "shapes": own,
              "xaxis": {"tickangle": -30, "type": "category"},
              "yaxis": {"autorange": "reversed", "type": "category"}}
    figure = {"id": FIGURE_ID, "data": data, "layout": layout, "clickable": False}
    html = (f"<h2 id='specificity'>Specificity matrix</h2>{intro}<div class='plot' id='{FIGURE_ID}'></div>"
            f"{notes_html}")
    return html, figure
