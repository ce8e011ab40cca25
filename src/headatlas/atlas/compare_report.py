"""The HTML diff report of a :class:`~headatlas.compare.Comparison`: one self-contained page, no scripts.

Sections: the two models, the heads that gained or lost a role per detector (with the significant score
changes), and heatmaps (HTML tables with coloured cells) of the weight delta, its q/k/v/o parts and the
activation delta. Every string from either atlas is escaped with :func:`htmlsafe.esc`; the page's
Content-Security-Policy allows no script at all and no network request (``default-src 'none'``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from .htmlsafe import esc
from .report_assets import CSS

if TYPE_CHECKING:
    from ..compare import Comparison

POLICY = ("default-src 'none'; script-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src 'none'; "
          "connect-src 'none'; frame-src 'none'; object-src 'none'; base-uri 'none'; form-action 'none'")
EXTRA_CSS = """
table.heat { border-collapse: collapse; font-size: 11px; }
table.heat td, table.heat th { width: 26px; height: 18px; text-align: center; padding: 0; border: 1px solid #fff; }
table.diff td, table.diff th { padding: 2px 8px; border-bottom: 1px solid #ddd; text-align: left; }
.gain { color: #0a7d27; } .loss { color: #b3261e; }
"""
MAX_ROWS = 25


def _fmt(x: Any, digits: int = 3) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return esc(x)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.{digits}g}"


def _colour(v: float, vmax: float) -> str:
    """White (0) to dark red (vmax) on a square-root scale; grey for NaN, black for inf."""
    if not math.isfinite(v):
        return "#999" if math.isnan(v) else "#000"
    t = 0.0 if vmax <= 0 else min(1.0, math.sqrt(max(v, 0.0) / vmax))
    r, g, b = 255, int(255 - 200 * t), int(255 - 220 * t)
    return f"rgb({r},{g},{b})"


def heatmap(values: np.ndarray, title: str) -> str:
    """``[n_layers, n_heads]`` as a table: rows are layers, columns heads; each cell's title holds its value."""
    vals = np.asarray(values, dtype=float)
    finite = vals[np.isfinite(vals)]
    vmax = float(finite.max()) if finite.size else 0.0
    head_row = "".join(f"<th>H{h}</th>" for h in range(vals.shape[1]))
    rows = []
    for layer in range(vals.shape[0]):
        cells = "".join(
            f"<td style=\"background:{_colour(float(vals[layer, h]), vmax)}\" "
            f"title=\"L{layer}H{h}: {esc(_fmt(vals[layer, h], 4))}\"></td>" for h in range(vals.shape[1]))
        rows.append(f"<tr><th>L{layer}</th>{cells}</tr>")
    return (f"<h3>{esc(title)}</h3><p class='muted'>max {esc(_fmt(vmax, 4))} (white 0, dark red the max, square-root "
            f"scale; hover a cell for its value)</p><table class='heat'><tr><th></th>{head_row}</tr>{''.join(rows)}</table>")


def _heads(heads: list[tuple[int, int]], cls: str) -> str:
    if not heads:
        return "<span class='muted'>none</span>"
    return f"<span class='{cls}'>" + esc(", ".join(f"L{la}H{h}" for la, h in heads)) + "</span>"


def _detector_rows(comp: "Comparison", df: Any) -> str:
    changes = comp.changes()
    if not changes:
        return "<p class='muted'>no detector ran on both models.</p>"
    out = ["<table class='diff'><tr><th>detector</th><th>stage</th><th>gained (b only)</th><th>lost (a only)</th>"
           "<th>kept</th><th>significant changes</th></tr>"]
    for d, ch in changes.items():
        out.append(f"<tr><td><a href='#d-{esc(d)}'>{esc(d)}</a></td><td>{esc(comp.atlas_a.meta[d].stage)}</td>"
                   f"<td>{_heads(ch['gained'], 'gain')}</td><td>{_heads(ch['lost'], 'loss')}</td>"
                   f"<td>{len(ch['kept'])}</td><td>{len(ch['significant'])}</td></tr>")
    out.append("</table>")
    for d in changes:
        sub = df[df["detector"] == d]
        sub = sub[sub["significant"] | sub["labelled_a"] | sub["labelled_b"]]
        sub = sub.reindex(sub["z"].abs().sort_values(ascending=False).index)[:MAX_ROWS]
        out.append(f"<h3 id='d-{esc(d)}'>{esc(d)}</h3>")
        if sub.empty:
            out.append("<p class='muted'>no head labelled on either side and no significant change.</p>")
            continue
        rows = "".join(
            f"<tr><td>L{int(r.layer)}H{int(r.head)}</td><td>{_fmt(r.score_a)}</td><td>{_fmt(r.score_b)}</td>"
            f"<td>{_fmt(r.delta)}</td><td>{_fmt(r.effect_delta)}</td><td>{_fmt(r.z)}</td><td>{_fmt(r.q_change, 2)}</td>"
            f"<td>{'yes' if r.significant else 'no'}</td><td>{'yes' if r.labelled_a else 'no'} &rarr; "
            f"{'yes' if r.labelled_b else 'no'}</td><td>{_fmt(r.weight_delta)}</td></tr>"
            for r in sub.itertuples())
        out.append("<table class='diff'><tr><th>head</th><th>score a</th><th>score b</th><th>delta</th>"
                   "<th>effect delta</th><th>z</th><th>q change</th><th>significant</th><th>labelled a &rarr; b</th>"
                   f"<th>weight delta</th></tr>{rows}</table>")
    return "\n".join(out)


def render_comparison(comp: "Comparison") -> str:
    """The whole page as a string."""
    df = comp.to_dataframe()
    a, b = comp.atlas_a, comp.atlas_b
    models = "".join(
        f"<tr><th>{side}</th><td>{esc(at.model_name)}</td><td>{esc(at.model.get('architecture', '?'))}</td>"
        f"<td>{esc(at.model.get('fingerprint', ''))}</td><td>{esc(at.seed)}</td>"
        f"<td>{esc(at.settings.get('quick', ''))}</td></tr>" for side, at in (("a", a), ("b", b)))
    notes = "".join(f"<li>{esc(n)}</li>" for n in comp.notes)
    skipped = "".join(f"<li><b>{esc(d)}</b>: {esc(w)}</li>" for d, w in comp.skipped().items())
    heat = []
    if comp.weight_delta is not None:
        heat.append(heatmap(comp.weight_delta, "Weight delta ||W_b - W_a||_F / ||W_a||_F (q, k, v, o slices)"))
        for p, v in comp.weight_parts.items():
            heat.append(heatmap(v, f"weight delta of {p}"))
    else:
        heat.append("<p class='muted'>no weight delta: the comparison was made from two atlases without models.</p>")
    if comp.activation_delta is not None:
        heat.append(heatmap(comp.activation_delta, f"Activation delta ||z_b - z_a|| / ||z_a|| on "
                                                   f"{comp.activation_prompts}"))
    timings = ", ".join(f"{esc(k)} {v:.2f} s" for k, v in comp.timings.items())
    title = f"headatlas comparison: {esc(a.model_name)} vs {esc(b.model_name)}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{esc(POLICY)}">
<meta name="referrer" content="no-referrer">
<title>{title}</title>
<style>{CSS}{EXTRA_CSS}</style>
</head><body>
<h1>{title}</h1>
<p class="muted">{comp.n_layers} layers x {comp.n_heads} heads. A change is significant when the effect moved by
more than both models' null spreads allow (two-sided normal p on (e_b - e_a) / sqrt(null_std_a^2 + null_std_b^2),
Benjamini-Hochberg q &lt;= {esc(comp.fdr)} over the detector's heads) and the two 95% bootstrap CIs of the effect are
disjoint.</p>
<table class="diff"><tr><th></th><th>model</th><th>architecture</th><th>weights fingerprint</th><th>seed</th>
<th>quick</th></tr>{models}</table>
<p class="muted">time: {timings}</p>
{'<div class="notes"><b>Notes</b><ul>' + notes + '</ul></div>' if notes else ''}
<h2>Roles gained and lost</h2>
{_detector_rows(comp, df)}
<h2>Not compared</h2>
{'<ul>' + skipped + '</ul>' if skipped else "<p class='muted'>none</p>"}
<h2>Where the heads changed</h2>
{''.join(heat)}
</body></html>
"""
