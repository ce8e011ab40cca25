"""The report's HTML sections, in page order: the findings (stage map with confirmed / unconfirmed counts, the top
heads per stage with one line of evidence each, and what was not found and why), the detector index, one
collapsed section per detector, and the collapsed model / settings / timings. Every atlas string is escaped
here (:func:`~headatlas.atlas.htmlsafe.esc`); numbers go through :func:`~headatlas.atlas.report_data.fmt`.
"""

from __future__ import annotations

import json
import math
from typing import Any

from .htmlsafe import esc, plain
from .protocols import AtlasLike
from .records import _INTERVENTIONS, STAGES
from .report_data import STAGE_COLORS, STAGE_ORDER, DetView, fmt, head_name, signed

MAX_TABLE_ROWS = 12
DETAILS_CHARS = 3000


# ----- small pieces ------------------------------------------------------------------------------------
def badge(stage: Any) -> str:
    s = str(stage)
    return (f'<span class="stage" style="background:{STAGE_COLORS.get(s, "#555")}" '
            f'title="{esc(STAGES.get(s, s))}">{esc(s)}</span>')


def status_class(status: str | None) -> str:
    return {"confirmed": "st-c", "unconfirmed": "st-u", "attention-defined": "st-a"}.get(str(status), "st-u")


def status_tag(status: str) -> str:
    return f"<span class='{status_class(status)}'>{esc(status)}</span>"


def head_link(lh: tuple[int, int]) -> str:
    name = head_name(*lh)
    return f"<a class='hl' href='#{name}'>{name}</a>"


def table(header: list[str], rows: list[str], cls: str = "") -> str:
    """A table inside a horizontally scrolling container (headers are escaped here; rows come built)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    return f"<div class='scroll'><table{f' class={cls!r}' if cls else ''}><tr>{head}</tr>{''.join(rows)}</table></div>"


def kv_table(items: list[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(_setting(v))}</td></tr>" for k, v in items)
    return f"<div class='scroll'><table>{rows}</table></div>"


def _setting(v: Any) -> str:
    if v is None:
        return "(not recorded)"
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(plain(v), ensure_ascii=False)
    return fmt(v, 6) if isinstance(v, float) else str(v)


def timing(atlas: AtlasLike, name: str) -> str:
    seconds = atlas.timings.get(name)
    shared = (getattr(atlas, "shared_passes", None) or {}).get(name)
    t = ""
    if isinstance(seconds, (int, float)) and math.isfinite(seconds):
        t = f"{seconds:.1f} s" if seconds >= 0.05 else "&lt; 0.1 s"
    if shared:
        return esc(shared) if not t or seconds < 0.05 else f"{t}; {esc(shared)}"
    return t or "not recorded"


def causal_line(c: dict[str, Any] | None) -> str:
    """The set check in one line: metric change of the labelled set vs the random median, p, q, direction."""
    if c is None:
        return "<span class='muted'>no causal check ran</span>"
    if c["kind"] == "none":
        return f"<span class='muted'>no behavioural metric: {esc(c['note'])}</span>"
    q = f", q {fmt(c['q_value'], 2)}" if math.isfinite(c["q_value"]) else ""
    return (f"{esc(c['metric'])}: {signed(c['effect'])} vs random median {signed(c['random_median'])} "
            f"(p {fmt(c['p_value'], 2)}{q}; {esc(c['expected'] or 'a change')} expected; "
            f"{len(c['random_effects'])} random sets)")


def evidence_line(d: DetView, lh: tuple[int, int]) -> str:
    """One line of evidence for head ``lh`` under detector ``d``: effect [CI], q, and its own causal number."""
    f = d.f
    parts = [f"effect {signed(f['effect'][lh])} [{fmt(f['ci_low'][lh])}, {fmt(f['ci_high'][lh])}]",
             f"q {fmt(f['q_value'][lh], 2)}"]
    c = d.causal
    if c and c["kind"] != "none":
        own = c["per_head"].get(head_name(*lh))
        if own is not None and math.isfinite(own):
            parts.append(f"alone: {esc(c['metric'])} {signed(own)}")
        q = c["q_value"]
        parts.append(f"set check p {fmt(c['p_value'], 2)}" + (f", q {fmt(q, 2)}" if math.isfinite(q) else ""))
    return ", ".join(parts)


def result_summary(d: DetView) -> str:
    """What the detector found, in a few words (counts by status, none found, distributed or skipped)."""
    if d.skipped:
        return "<span class='skip'>skipped</span>"
    if d.distributed:
        return (f"<span class='none'>distributed</span> ({esc(d.distributed.get('n_pass', '?'))} of "
                f"{esc(d.distributed.get('n_heads', '?'))} heads pass)")
    if not d.labelled:
        return "<span class='none'>none found</span>"
    bits = [f"{len(d.heads_with(s))} {s}" for s in ("confirmed", "attention-defined", "unconfirmed") if d.heads_with(s)]
    return ", ".join(bits)


# ----- findings (the first screen) -------------------------------------------------------------------
def stage_counts(summary: dict[str, dict[str, list[tuple[int, int]]]]) -> str:
    """Per stage: "<badge> Latent Reasoning: 18 confirmed, 206 unconfirmed" (attention-defined named apart)."""
    items = []
    for s in STAGE_ORDER:
        by = summary.get(s, {})
        bits = [f"<b>{len(by.get('confirmed', []))}</b> confirmed"]
        if by.get("attention-defined"):
            bits.append(f"<b>{len(by['attention-defined'])}</b> attention-defined")
        bits.append(f"<b>{len(by.get('unconfirmed', []))}</b> unconfirmed")
        items.append(f"<li data-stage='{s}'>{badge(s)} {esc(STAGES[s])}: {', '.join(bits)}</li>")
    return f"<ul class='counts' id='stage-counts'>{''.join(items)}</ul>"


def top_heads_html(top: dict[str, list[tuple[tuple[int, int], DetView, str]]]) -> str:
    rows = []
    for s in STAGE_ORDER:
        entries = top.get(s, [])
        if not entries:
            rows.append(f"<tr><td>{badge(s)}</td><td colspan='2' class='muted'>no confirmed head</td></tr>")
            continue
        for i, (lh, d, st) in enumerate(entries):
            stage_cell = f"<td rowspan='{len(entries)}'>{badge(s)}</td>" if i == 0 else ""
            mark = "" if st == "confirmed" else " <span class='st-a'>(attention-defined)</span>"
            rows.append(f"<tr>{stage_cell}<td>{head_link(lh)}</td><td><b>{esc(d.name)}</b>{mark}: "
                        f"{evidence_line(d, lh)}</td></tr>")
    return f"<table class='top'>{''.join(rows)}</table>"


def not_found_html(dets: list[DetView]) -> str:
    """What was not found and why: none found (with the best head, in the rule's direction), unconfirmed only
    (the failed check), distributed, skipped."""
    items = []
    for d in dets:
        link = f"<a href='#{d.anchor}'>{esc(d.name)}</a>"
        if d.skipped:
            items.append(f"<li>{link}: <span class='skip'>skipped</span>: {esc(d.skipped)}</li>")
        elif d.distributed:
            items.append(f"<li>{link}: <span class='none'>distributed</span>, not specific to a few heads "
                         f"({esc(d.distributed.get('n_pass', '?'))} of {esc(d.distributed.get('n_heads', '?'))} "
                         "heads pass its statistic)</li>")
        elif not d.labelled:
            best = d.best_heads(1)
            hint = (f" (best {head_link(best[0])}: effect {signed(d.f['effect'][best[0]])}, q "
                    f"{fmt(d.f['q_value'][best[0]], 2)}; the rule tests {esc(d.direction)})") if best else ""
            items.append(f"<li>{link}: <span class='none'>none found</span>{hint}</li>")
        elif not d.heads_with("confirmed") and not d.heads_with("attention-defined"):
            items.append(f"<li>{link}: {len(d.labelled)} labelled, <span class='st-u'>none confirmed</span>: "
                         f"{causal_line(d.causal)}</li>")
    if not items:
        return "<p class='muted'>Every detector confirmed at least one head.</p>"
    return f"<ul class='notfound'>{''.join(items)}</ul>"


# ----- the detector index and sections ---------------------------------------------------------------
def detector_index(dets: list[DetView], top: int) -> str:
    rows = []
    for d in dets:
        link = f'<a href="#{d.anchor}">{esc(d.name)}</a>'
        if d.skipped:
            rows.append(f"<tr><td>{link}</td><td>{badge(d.stage)}</td><td colspan='3' class='skip'>skipped: "
                        f"{esc(d.skipped)}</td></tr>")
            continue
        heads = (d.heads_with("confirmed") + d.heads_with("attention-defined") + d.heads_with("unconfirmed"))[:top]
        tops = ", ".join(f"{head_link(lh)} <span class='{status_class(d.status[lh])}'>{signed(d.f['effect'][lh])}</span>"
                         for lh in heads)
        if len(d.labelled) > top:
            tops += f", +{len(d.labelled) - top} more"
        rows.append(f"<tr><td>{link}</td><td>{badge(d.stage)}</td><td>{result_summary(d)}</td><td>{tops or '-'}</td>"
                    f"<td>{causal_line(d.causal)}</td></tr>")
    return table(["detector", "stage", "found", "top heads (effect)", "causal check (set vs random sets)"], rows,
                 cls="index")


def _heads_rows(d: DetView, heads: list[tuple[int, int]]) -> tuple[list[str], list[str]]:
    f = d.f
    keys = list(d.extras)[:6]
    header = ["head", "status", "score", "null mean ± std", "effect [95% CI]", "p", "q", "stability", *keys]
    if d.causal and d.causal["per_head"]:
        header.insert(2, "alone (causal)")
    rows = []
    for lh in heads:
        st = d.status.get(lh)
        cells = [f"<td>{head_link(lh)}</td>", f"<td>{status_tag(st) if st else '<span class=muted>not labelled</span>'}</td>"]
        if d.causal and d.causal["per_head"]:
            cells.append(f"<td>{signed(d.causal['per_head'].get(head_name(*lh), math.nan))}</td>")
        cells += [f"<td>{fmt(f['scores'][lh], 4)}</td>", f"<td>{fmt(f['null_mean'][lh])} ± {fmt(f['null_std'][lh], 2)}</td>",
                  f"<td>{signed(f['effect'][lh])} [{fmt(f['ci_low'][lh])}, {fmt(f['ci_high'][lh])}]</td>",
                  f"<td>{fmt(f['p_value'][lh], 2)}</td>", f"<td>{fmt(f['q_value'][lh], 2)}</td>",
                  f"<td>{fmt(f['stability'][lh], 2)}</td>"]
        cells += [f"<td>{esc(fmt(d.extras[k][lh]))}</td>" for k in keys]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return header, rows


def _causal_block(d: DetView, hist_id: str | None) -> str:
    c = d.causal
    if c is None:
        return "<p class='muted'>no causal check ran for this detector.</p>"
    if c["kind"] == "none":
        return f"<p class='muted'>no behavioural metric for this head type: {esc(c['note'])}</p>"
    what = _INTERVENTIONS.get(str(c["kind"]), f"{c['kind']} intervention")
    exhaustive = " (every distinct random set was enumerated)" if c["exhaustive"] else ""
    out = [f"<p>{esc(what[:1].upper() + what[1:])} of the {len(c['heads'])} labelled heads on {esc(c['n_prompts'])} "
           f"prompts: {causal_line(c)}{exhaustive}. {esc(c['description'])}</p>"]
    if c["pool"]:
        out.append(f"<p class='muted'>random pool: {esc(c['pool'])}</p>")
    if c["note"]:
        out.append(f"<p class='muted'>{esc(c['note'])}</p>")
    if hist_id:
        out.append(f"<div class='plot' id='{hist_id}'></div>")
    return "\n".join(out)


def detector_section(d: DetView, map_id: str | None, hist_id: str | None, has_view: bool, view_note: str) -> str:
    """One detector, collapsed: rule, data, null, causal check, labelled heads, map, token view, details."""
    m, r = d.meta, d.r
    parts = [f'<details class="det" id="{d.anchor}"><summary><b>{esc(d.name)}</b> {badge(d.stage)} '
             f"{result_summary(d)}</summary>"]
    if getattr(m, "summary", ""):
        parts.append(f"<p>{esc(m.summary)}</p>")
    bits = [f"<b>method</b>: {esc(m.method)}" if getattr(m, "method", "") else "",
            f"<b>citation</b>: {esc(m.citation)}" if getattr(m, "citation", "") else "",
            f"<b>version</b>: {esc(getattr(m, 'version', ''))}"]
    if not d.places_stage:
        bits.append("its labels do not place a head in a stage")
    parts.append(f"<p class='muted'>{' · '.join(b for b in bits if b)}</p>")
    if d.skipped:
        parts.append(f"<p class='skip'>skipped on this model: {esc(d.skipped)}</p></details>")
        return "\n".join(parts)
    rule = d.rule.describe() if d.rule is not None and hasattr(d.rule, "describe") else "(no label rule recorded)"
    parts.append(kv_table([("label rule", rule), ("data", r.data_description), ("null", r.null_description),
                           ("prompts", f"{r.n_prompts} (seed {r.seed})"),
                           ("null draws", getattr(r, "n_null", None))]).replace("<td>", "<td class='rule'>", 1))
    parts.append("<h3>Causal check</h3>" + _causal_block(d, hist_id))
    if d.distributed:
        parts.append(f"<p class='none'>distributed: {esc(d.distributed.get('n_pass', '?'))} of "
                     f"{esc(d.distributed.get('n_heads', '?'))} heads pass its statistic, so no head is labelled "
                     "(not specific to a few heads).</p>")
    if d.labelled:
        ordered = d.heads_with("confirmed") + d.heads_with("attention-defined") + d.heads_with("unconfirmed")
        shown = ordered[:MAX_TABLE_ROWS]
        more = len(ordered) - len(shown)
        parts.append(f"<h3>Labelled heads</h3><p>{result_summary(d)}" + (f"; first {len(shown)} shown" if more else "")
                     + ", confirmed first:</p>" + table(*_heads_rows(d, shown), cls="heads"))
    else:
        best = d.best_heads(3)
        if not d.distributed:
            parts.append("<p class='none'>none found: no head passed the label rule.</p>")
        if best:
            parts.append("<p class='muted'>The most significant heads, for reference:</p>"
                         + table(*_heads_rows(d, best), cls="heads"))
    if map_id:
        parts.append("<h3>Map: the rule's effect</h3><p class='muted'>Colour: each head's effect (the statistic the rule "
                     "tests), red above 0 and blue below, on this detector's own scale; the colour bar marks the rule's "
                     "minimum. Grey: not testable. Outlines: confirmed solid, unconfirmed dashed, attention-defined dotted. "
                     f"Hover for p and q; click a head for its page.</p><div class='plot' id='{map_id}'></div>")
    if view_note:
        parts.append(f"<p class='muted'>token view not shown: {esc(view_note)}</p>")
    elif has_view:
        parts.append(f"<h3>Token view</h3><p class='muted'>Attention of the stored heads on one of this detector's "
                     f"prompts. Hover a token (the query) to shade the tokens it attends to.</p>"
                     f"<div class='tv' id='{d.anchor}-tokens'></div>")
    if isinstance(r.details, dict):
        shown_details = {k: v for k, v in r.details.items() if k != "token_view"}
        if shown_details:
            text = json.dumps(plain(shown_details), indent=1, ensure_ascii=False)
            if len(text) > DETAILS_CHARS:
                text = text[:DETAILS_CHARS] + "\n... (truncated; the full details are in the atlas JSON)"
            parts.append(f"<details><summary>details</summary><pre>{esc(text)}</pre></details>")
    parts.append("</details>")
    return "\n".join(parts)


def settings_section(atlas: AtlasLike, dets: list[DetView]) -> str:
    """Model info, the settings the scan used and the time per detector (once), collapsed."""
    model_items = [(str(k), v) for k, v in atlas.model.items()]
    settings = [("seed", atlas.seed), *[(str(k), v) for k, v in atlas.settings.items()],
                ("headatlas", atlas.headatlas_version), ("created", atlas.created)]
    timings = table(["detector", "time"], [f"<tr><td>{esc(d.name)}</td><td>{timing(atlas, d.name)}</td></tr>"
                                           for d in dets])
    return ("<details id='model'><summary><b>Model, settings and time per detector</b></summary>"
            "<div class='cols'>"
            f"<div><h3>Model</h3>{kv_table(model_items)}</div><div><h3>Settings used</h3>{kv_table(settings)}</div>"
            f"<div><h3>Time per detector</h3>{timings}</div></div></details>")
