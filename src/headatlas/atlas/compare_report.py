"""The HTML diff report of a comparison (:class:`~headatlas.atlas.comparison.Comparison`): one self-contained page
on the shared shell (:func:`headatlas.atlas.page.html_page`), no scripts at all.

Sections: a summary line first (detectors compared, roles gained and lost, changes that pass the change test, where
the weights moved most, or "n/a: compared from atlases"); the two models; per detector the heads that gained or
lost its label and a table of the heads whose change passes the change test (:mod:`headatlas.atlas.change`) and
nothing else; then where the heads changed: heatmaps (HTML tables with coloured cells) of the number of
detectors in which each head changed significantly, and, when models were compared, of the weight delta, its
q/k/v/o parts and the activation delta. Every string from either atlas is escaped with :func:`htmlsafe.esc`; the
page's Content-Security-Policy allows no script and no network request.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .htmlsafe import esc
from .page import html_page
from .protocols import ComparisonLike
from .report_data import fmt

EXTRA_CSS = """
table.heat { border-collapse: collapse; font-size: 11px; }
table.heat td, table.heat th { width: 26px; height: 18px; text-align: center; padding: 0; border: 1px solid #fff; }
table.diff td, table.diff th { padding: 2px 8px; border-bottom: 1px solid #ddd; text-align: left; }
p.summary { font-size: 1.05em; background: #f4f8ff; border: 1px solid #cddcf5; padding: 6px 10px; }
"""
MAX_ROWS = 25
NO_MODELS = "n/a: compared from atlases"


def _fmt(x: Any, digits: int = 3) -> str:
    """:func:`~headatlas.atlas.report_data.fmt`, escaped (a non-number is shown as its text)."""
    return esc(fmt(x, digits))


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
            f"scale; hover a cell for its value)</p><div class='scroll'><table class='heat'><tr><th></th>{head_row}</tr>"
            f"{''.join(rows)}</table></div>")


def _heads(heads: list[tuple[int, int]], cls: str) -> str:
    if not heads:
        return "<span class='muted'>none</span>"
    return f"<span class='{cls}'>" + esc(", ".join(f"L{la}H{h}" for la, h in heads)) + "</span>"


def summary_line(comp: ComparisonLike) -> str:
    """One line: what was compared and what changed (plain text)."""
    changes = comp.changes()
    gained = sum(len(c["gained"]) for c in changes.values())
    lost = sum(len(c["lost"]) for c in changes.values())
    sig = {d: len(c["significant"]) for d, c in changes.items()}
    moved = ", ".join(f"{d} {n}" for d, n in sorted(sig.items(), key=lambda kv: -kv[1]) if n)
    text = (f"{comp.atlas_a.model_name} -> {comp.atlas_b.model_name}: {len(changes)} detectors compared; "
            f"{gained} labels gained, {lost} lost; {sum(sig.values())} head changes pass the change test"
            + (f" ({moved})" if moved else "") + "; weight delta: ")
    if comp.weight_delta is None:
        return text + NO_MODELS + "."
    flat = np.nan_to_num(np.asarray(comp.weight_delta, float), nan=-1.0, posinf=np.finfo(float).max).ravel()
    top = [divmod(int(i), comp.n_heads) for i in np.argsort(-flat, kind="stable")[:3]]
    return text + "largest at " + ", ".join(f"L{la}H{h} {_fmt(comp.weight_delta[la, h])}" for la, h in top) + "."


def _detector_rows(comp: ComparisonLike, df: Any) -> str:
    changes = comp.changes()
    if not changes:
        return "<p class='muted'>no detector ran on both models.</p>"
    out = ["<div class='scroll'><table class='diff'><tr><th>detector</th><th>stage</th><th>gained (b only)</th>"
           "<th>lost (a only)</th><th>kept</th><th>changes passing the test</th></tr>"]
    for d, ch in changes.items():
        out.append(f"<tr><td><a href='#d-{esc(d)}'>{esc(d)}</a></td><td>{esc(comp.atlas_a.meta[d].stage)}</td>"
                   f"<td>{_heads(ch['gained'], 'gain')}</td><td>{_heads(ch['lost'], 'loss')}</td>"
                   f"<td>{len(ch['kept'])}</td><td>{len(ch['significant'])}</td></tr>")
    out.append("</table></div>")
    weights = comp.weight_delta is not None
    for d in changes:
        sub = df[(df["detector"] == d) & df["significant"]]
        sub = sub.reindex(sub["z"].abs().sort_values(ascending=False).index)[:MAX_ROWS]
        out.append(f"<h3 id='d-{esc(d)}'>{esc(d)}</h3>")
        if sub.empty:
            out.append("<p class='muted'>no head's change passes the change test.</p>")
            continue
        rows = "".join(
            f"<tr><td>L{int(r.layer)}H{int(r.head)}</td><td>{_fmt(r.score_a)}</td><td>{_fmt(r.score_b)}</td>"
            f"<td>{_fmt(r.effect_delta)}</td><td>{_fmt(r.z)}</td><td>{_fmt(r.q_change, 2)}</td>"
            f"<td>{'yes' if r.labelled_a else 'no'} &rarr; {'yes' if r.labelled_b else 'no'}</td>"
            f"<td>{_fmt(r.weight_delta) if weights else NO_MODELS}</td></tr>"
            for r in sub.itertuples())
        out.append("<div class='scroll'><table class='diff'><tr><th>head</th><th>score a</th><th>score b</th>"
                   "<th>effect delta</th><th>z</th><th>q change</th><th>labelled a &rarr; b</th>"
                   f"<th>weight delta</th></tr>{rows}</table></div>")
    return "\n".join(out)


def _where(comp: ComparisonLike) -> str:
    parts = []
    count = np.zeros((comp.n_layers, comp.n_heads))
    for ch in comp.changes().values():
        for la, h in ch["significant"]:
            count[la, h] += 1
    if count.any():
        parts.append(heatmap(count, "Detectors in which the head's change passes the change test"))
    else:
        parts.append("<p class='muted'>no head's change passes the change test in any detector.</p>")
    if comp.weight_delta is not None:
        parts.append(heatmap(comp.weight_delta, "Weight delta ||W_b - W_a||_F / ||W_a||_F (q, k, v, o slices)"))
        for p, v in comp.weight_parts.items():
            parts.append(heatmap(v, f"weight delta of {p}"))
    else:
        parts.append(f"<p class='muted'>Weight and activation deltas: {NO_MODELS} (they need both models).</p>")
    if comp.activation_delta is not None:
        parts.append(heatmap(comp.activation_delta, f"Activation delta ||z_b - z_a|| / ||z_a|| on {comp.activation_prompts}"))
    return "".join(parts)


def render_comparison(comp: ComparisonLike) -> str:
    """The whole page as a string."""
    df = comp.to_dataframe()
    a, b = comp.atlas_a, comp.atlas_b
    models = "".join(
        f"<tr><th>{side}</th><td>{esc(at.model_name)}</td><td>{esc(at.model.get('architecture', '?'))}</td>"
        f"<td>{esc(at.model.get('fingerprint', ''))}</td><td>{esc(at.seed)}</td>"
        f"<td>{esc(at.settings.get('quick', ''))}</td></tr>" for side, at in (("a", a), ("b", b)))
    notes = "".join(f"<li>{esc(n)}</li>" for n in comp.notes)
    skipped = "".join(f"<li><b>{esc(d)}</b>: {esc(w)}</li>" for d, w in comp.skipped().items())
    timings = ", ".join(f"{esc(k)} {v:.2f} s" for k, v in comp.timings.items())
    title = f"headatlas comparison: {a.model_name} vs {b.model_name}"
    body = f"""<h1>{esc(title)}</h1>
<p class="summary">{esc(summary_line(comp))}</p>
<p class="muted">{comp.n_layers} layers x {comp.n_heads} heads. A change passes the change test when the effect moved by
more than both models' null spreads allow (two-sided normal p on (e_b - e_a) / sqrt(null_std_a^2 + null_std_b^2),
Benjamini-Hochberg q &lt;= {esc(comp.fdr)} over the detector's heads) and the two 95% bootstrap CIs of the effect are
disjoint; only such changes are listed.</p>
<div class='scroll'><table class="diff"><tr><th></th><th>model</th><th>architecture</th><th>weights fingerprint</th>
<th>seed</th><th>quick</th></tr>{models}</table></div>
<p class="muted">time: {timings}</p>
{'<div class="notes"><b>Notes</b><ul>' + notes + '</ul></div>' if notes else ''}
<h2>Roles gained and lost</h2>
{_detector_rows(comp, df)}
<h2>Not compared</h2>
{'<ul>' + skipped + '</ul>' if skipped else "<p class='muted'>none</p>"}
<h2>Where the heads changed</h2>
{_where(comp)}"""
    return html_page(title, body, style=EXTRA_CSS)
