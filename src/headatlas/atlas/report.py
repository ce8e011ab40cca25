"""The atlas as one self-contained HTML page: findings first, evidence per head, light and fast.

Page order:

1. **Findings** (the first screen): the stage map of placed heads (confirmed / attention-defined filled,
   unconfirmed pale and dashed; :func:`~headatlas.atlas.report_plots.stage_map_svg`), the counts per stage
   ("LR: 18 confirmed, 206 unconfirmed"), the top confirmed heads per stage with one line of evidence each, and
   what was not found and why (none found, unconfirmed only, distributed, skipped).
2. **IOI circuit** (when the atlas holds an IOI detector; :mod:`headatlas.atlas.circuit_draw`).
3. **Detectors**: an index (ordered by stage, then by what each found), then one collapsed section per detector:
   its rule, data, null, causal check (set vs random sets: p, q, direction, histogram), labelled heads (confirmed
   first, with each head's own causal number), its map and token view.
4. **Model, settings and time per detector**, collapsed.

**Head pages**: ``#L23H0`` (a link, a click on any map cell, the stage map, a circuit box, or the lookup box)
opens that head's page: its labels (confirmed, unconfirmed, then every other detector collapsed) with effect
[CI], p, q and its own causal number; its attention on each detector's example prompt where the atlas stores a
token view for it; what it writes (top promoted / suppressed output tokens of its OV circuit,
:mod:`headatlas.atlas.writes`); its roles and edges in a circuit. The page script builds it from the embedded data.

**Maps** colour each head by its detector's effect (see :mod:`headatlas.atlas.report_plots`).

**Speed**: plotly.js's cartesian bundle (1.5 MB, vendored) instead of the full one (4.8 MB); the numbers are
embedded once and the hover text is built in the page; plots are drawn only when they scroll into view (collapsed
sections draw nothing until opened); token-view weights travel as integers per mille.

**Token view** format: see :mod:`headatlas.atlas.tokenview`.

**Safety**: an atlas is untrusted input (:mod:`headatlas.atlas.htmlsafe`): every string from it is HTML-escaped;
data reaches the page's script as script-safe JSON and is written with ``textContent`` (plotly text is escaped
before plotly sees it); the page shell's Content-Security-Policy (:mod:`headatlas.atlas.page`) lets only the
page's own scripts run (by hash) and forbids any connection. Plotly's config
(:data:`~headatlas.atlas.htmlsafe.PLOTLY_CONFIG`) removes the logo and the upload buttons.
"""

from __future__ import annotations

from typing import Any

from .circuit_draw import circuit_page_data, circuit_section
from .htmlsafe import PLOTLY_CONFIG, esc
from .page import asset, html_page
from .protocols import AtlasLike
from .records import STAGES
from .report_data import STAGE_ORDER, DetView, detector_views, rounded, stage_summary, top_heads_by_stage
from .report_plots import causal_histogram, detector_map, stage_map_svg
from .report_sections import (detector_index, detector_section, not_found_html, settings_section, stage_counts,
                              top_heads_html)
from .report_specificity import specificity_section
from .tokenview import check_token_view
from .writes import check_writes

PLOTLY_BUNDLE = "vendor/plotly-cartesian.min.js"
FIELD_DIGITS = {"scores": 4, "null_std": 2, "p_value": 2, "q_value": 2, "stability": 2}   # significant digits shown
MAX_EXTRAS = 2


def _token_view(d: DetView) -> tuple[dict[str, Any] | None, str]:
    """``(view for the page, "")``, ``(None, why)`` for a malformed one, ``(None, "")`` when there is none. Weights
    travel as integers per mille."""
    if not isinstance(d.r.details, dict) or "token_view" not in d.r.details:
        return None, ""
    view, why = check_token_view(d.r.details["token_view"])
    if view is None:
        return None, why
    heads = {name: [[int(round(1000 * w)) for w in row] for row in rows] for name, rows in view["heads"].items()}
    return {"id": d.anchor + "-tokens", "det": d.name, "tokens": view["tokens"], "heads": heads, "start": view["start"],
            "note": view["note"]}, ""


def _detector_data(d: DetView) -> dict[str, Any]:
    c = d.causal
    return {"name": d.name, "anchor": d.anchor, "stage": d.stage, "skipped": d.skipped,
            "labelled": [list(lh) for lh in d.labelled], "status": [d.status[lh] for lh in d.labelled],
            "direction": d.direction, "min_effect": d.min_effect, "distributed": d.distributed,
            "fields": {} if d.skipped else {k: rounded(v, FIELD_DIGITS.get(k, 3)) for k, v in d.f.items()},
            "extras": {} if d.skipped else {k: rounded(v, 3) if v.dtype.kind in "fiub" else
                                            [[str(x)[:60] for x in row] for row in v.tolist()]
                                            for k, v in list(d.extras.items())[:MAX_EXTRAS]},
            "causal": None if c is None else {k: c[k] for k in ("metric", "kind", "effect", "random_median", "p_value",
                                                                "q_value", "expected", "note", "per_head",
                                                                "random_effects")}}


def _labels_by_stage_head(dets: list[DetView]) -> dict[tuple[str, tuple[int, int]], list[str]]:
    out: dict[tuple[str, tuple[int, int]], list[str]] = {}
    for d in dets:
        if d.places_stage and not d.skipped:
            for lh, st in d.status.items():
                out.setdefault((d.stage, lh), []).append(f"{d.name} ({st})")
    return out


def _writes(atlas: AtlasLike) -> tuple[dict[str, Any] | None, str]:
    doc = atlas.writes
    if not doc:
        return None, "this atlas stores no OV output tokens (scanned before they were recorded)"
    return check_writes(doc, atlas.n_layers, atlas.n_heads)


def render_html(atlas: AtlasLike, *, top: int = 5) -> str:
    """The whole report as one HTML string (plotly.js's cartesian bundle embedded once; nothing is fetched)."""
    dets = detector_views(atlas)
    summary = stage_summary(atlas, dets)
    figures: list[dict[str, Any]] = []
    views: list[dict[str, Any]] = []
    sections = []
    for i, d in enumerate(dets):
        map_id = hist_id = None
        if not d.skipped:
            fig = detector_map(d, i, atlas.n_layers, atlas.n_heads)
            figures.append(fig)
            map_id = fig["id"]
            hist = causal_histogram(d, i)
            if hist is not None:
                figures.append(hist)
                hist_id = hist["id"]
        view, why = _token_view(d)
        if view is not None:
            views.append(view)
        sections.append(detector_section(d, map_id, hist_id, view is not None, why))
    writes, writes_note = _writes(atlas)
    live = [d for d in dets if not d.skipped]
    n_det = len(dets)
    title = f"headatlas: {atlas.model_name}"
    unplaced = [d.name for d in dets if not d.places_stage]
    unplaced_html = (f"<p class='muted'>Labels of {esc(', '.join(unplaced))} (outside the survey's taxonomy) do not "
                     "place a head in a stage.</p>" if unplaced else "")
    notes = [str(n) for n in (getattr(atlas, "notes", None) or [])]
    notes_html = ("<div class='notes'><b>Notes</b><ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul></div>"
                  if notes else "")
    if live:
        stage_map = stage_map_svg(atlas.n_layers, atlas.n_heads, summary, _labels_by_stage_head(dets))
        findings = (f"<div class='findings'><div class='fmap'>{stage_counts(summary)}{stage_map}"
                    "<p class='muted legend'>Filled: confirmed (causal check passed after BH across the atlas) or "
                    "attention-defined (the pattern is the claim); pale, dashed: unconfirmed only. A head labelled in "
                    f"several stages is in each. Click a head for its page.</p>{unplaced_html}</div>"
                    f"<div class='ftop'><h3>Top confirmed heads per stage</h3>{top_heads_html(top_heads_by_stage(dets))}"
                    f"<h3>Not found, not confirmed, or not run</h3>{not_found_html(dets)}</div></div>")
    else:
        findings = "<p class='none'>this atlas holds no detector results.</p>"
    circuit = circuit_section(atlas)
    spec_html, spec_figure = specificity_section(atlas)
    if spec_figure is not None:
        figures.append(spec_figure)
    circuit_link = '<a href="#ioi-circuit">circuit</a> · ' if circuit else ""
    body = f"""<header><h1>{esc(title)}</h1>
<p class="muted">{atlas.n_layers} layers x {atlas.n_heads} heads, {n_det} detectors, seed {esc(atlas.seed)}. A label is a
tested claim (effect vs its null, permutation p, BH q, bootstrap CI, stability); <b>confirmed</b> when the detector's
causal check also holds after correction across the atlas. <a href="#detectors">detectors</a> ·
{circuit_link}<a href="#model">model and settings</a></p>
<form id="ha-lookup" class="muted">Head page: <input id="ha-lookup-input" size="8" placeholder="L0H0" aria-label="head">
<button type="submit">open</button> <span id="ha-lookup-msg"></span></form></header>
{notes_html}
<section id="findings"><h2 class="sr">Findings</h2>{findings}</section>
{circuit}
{spec_html}
<h2 id="detectors">Detectors</h2>
<p class="muted">By stage, then by what each found. Open a detector for its rule, causal check, heads, map and token
view.</p>
{detector_index(dets, top)}
{''.join(sections)}
{settings_section(atlas, dets)}
<aside id="ha-head" hidden><button type="button" class="close" id="ha-head-close">close</button>
<div id="ha-head-body"></div></aside>"""
    data = {"n_layers": atlas.n_layers, "n_heads": atlas.n_heads, "config": PLOTLY_CONFIG,
            "stage_order": list(STAGE_ORDER), "stages": {s: STAGES[s] for s in STAGE_ORDER},
            "detectors": [_detector_data(d) for d in dets], "figures": figures, "token_views": views,
            "writes": writes, "writes_note": writes_note, "circuit": circuit_page_data(atlas)}
    return html_page(title, body, style=asset("assets/report.css"), scripts=[asset(PLOTLY_BUNDLE), asset("assets/report.js")],
                     data=data, generator=f"headatlas {atlas.headatlas_version}")
