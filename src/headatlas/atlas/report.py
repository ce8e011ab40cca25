"""The atlas as one self-contained HTML page: plotly.js inlined once, no network request, no upload.

Sections:

- **Model and scan**: the model's info, the settings the scan used, and per detector its time (or the
  shared forward pass it reused, instead of "0.0 s").
- **Stage map**: one small layer x head panel per stage (KR, ICI, LR, EP). A head labelled by
  detectors of several stages appears in each of those panels and counts in each stage; counts come
  from the labels of the detectors that place heads (``meta.places_stage``).
- **Top heads per type**: per detector its labelled heads (effect, q), its causal check (the labelled
  set's effect against the median random set) and time; "none found" or the skip reason otherwise.
- **IOI circuit** (only when the atlas holds an IOI detector: name_mover, negative_name_mover, s_inhibition):
  an inline SVG node-link diagram of :meth:`Atlas.circuit` ``("ioi")`` (:mod:`headatlas.atlas.circuit`).
- **Per detector**: its label rule (``rule.describe()``); its data, null and prompts; its causal check
  (effect vs random median, p, and the distribution of the random sets with the labelled set marked,
  or the reason there is none); a table of its labelled heads (score, null mean ± std, effect with its
  95% CI, p, q, stability, extras; the best heads when none is labelled); a layer x head map; the token
  view; its details.
- **Per-head card**: click any cell of any map (or type a head name) to see that head's evidence across
  all detectors: score, null, effect, p, q, stability, causal check and stage.

**Maps share one scale**: every detector map shows the *signed significance* ``sign(effect) x -log10 q``
on one diverging scale centred on 0 (red: effect above the null, blue: below), so maps of detectors
with different score units compare directly; ``-log10 0.05 = 1.3`` is the usual FDR cut-off. A
detector that labelled nothing is drawn in greys. Labelled heads are circled.

**Token view** (``result.details["token_view"]``, optional; see :mod:`headatlas.atlas.tokenview`,
whose :func:`~headatlas.atlas.tokenview.make_token_view` builds it)::

    {"tokens": [str, ...],                       # at most 64 tokens of one of the detector's prompts
     "heads": {"L3H1": [[w, ...], ...], ...},    # at most 3 heads; one row per query: attention on keys 0..q
     "start": int, "note": str}                  # optional: where the window starts; what the prompt is

Rows are normalised over the shown keys. The report draws the tokens in a row; hovering (or focusing)
a token shades the tokens it attends to. Longer or extra entries are cut to the limits, malformed
ones are reported instead of drawn, and nothing is drawn when a detector gives no token view.

**Safety**: an atlas is untrusted input (:mod:`headatlas.atlas.htmlsafe`): every string from it is
HTML-escaped; data reaches the page's script as script-safe JSON and is written with ``textContent``;
a Content-Security-Policy lets only the page's own scripts run (by hash) and forbids any connection.
Plotly's config (:data:`~headatlas.atlas.htmlsafe.PLOTLY_CONFIG`) removes the logo and the upload
buttons and offers only offline mode-bar buttons.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from .circuit import circuit_section
from .htmlsafe import PLOTLY_CONFIG, csp, esc, plain, script_json
from .records import _INTERVENTIONS, PER_HEAD_FIELDS, STAGES
from .report_assets import CSS, JS
from .report_specificity import specificity_section
from .tokenview import check_token_view

if TYPE_CHECKING:
    from .atlas import Atlas

STAGE_ORDER = ["KR", "ICI", "LR", "EP"]
STAGE_COLORS = {"KR": "#1f77b4", "ICI": "#2ca02c", "LR": "#d62728", "EP": "#9467bd"}
DIVERGING = [[0.0, "#2166ac"], [0.25, "#92c5de"], [0.5, "#f7f7f7"], [0.75, "#f4a582"], [1.0, "#b2182b"]]
GREYS = [[0.0, "#9e9e9e"], [0.5, "#f4f4f4"], [1.0, "#9e9e9e"]]
SCALE_NAME = "sign(effect) x -log10 q"
MAX_TABLE_ROWS = 25
_DETAILS_CHARS = 20000


# ----- numbers and strings ----------------------------------------------------------------------------
def _fmt(x: Any, digits: int = 3) -> str:
    """A number for display (3 significant digits; ``nan`` for missing); anything else as text."""
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(v):
        return "nan"
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
        return f"{v:.{max(digits - 1, 0)}e}"
    return f"{v:.{digits}g}"


def _round(a: np.ndarray) -> list:
    return [[float(f"{v:.5g}") if math.isfinite(v) else None for v in row] for row in a.tolist()]


def _badge(stage: Any) -> str:
    s = str(stage)
    return (f'<span class="stage" style="background:{STAGE_COLORS.get(s, "#555")}" '
            f'title="{esc(STAGES.get(s, s))}">{esc(s)}</span>')


def _head(layer: int, head: int) -> str:
    return f"L{int(layer)}H{int(head)}"


# ----- what the report reads from an atlas (tolerant of records written before contract v2) ---------
class _Det:
    """One detector's numbers as the report uses them."""

    def __init__(self, atlas: "Atlas", name: str, anchor: str) -> None:
        self.name, self.anchor = name, anchor
        self.r = atlas.result(name)
        self.meta = atlas.meta[name]
        self.stage = str(getattr(self.meta, "stage", ""))
        self.places_stage = bool(getattr(self.meta, "places_stage", True))
        shape = (atlas.n_layers, atlas.n_heads)
        self.f: dict[str, np.ndarray] = {k: _array(getattr(self.r, k, None), shape) for k in PER_HEAD_FIELDS}
        if getattr(self.r, "effect", None) is None:
            self.f["effect"] = self.f["scores"] - self.f["null_mean"]
        self.skipped = self.r.skipped
        self.labelled = [(int(a), int(b)) for a, b in self.r.labelled]
        self.rule = getattr(self.r, "rule", None)
        self.direction = str(getattr(self.rule, "direction", "greater"))
        self.causal = _causal(atlas, name, self.r)
        self.extras = {str(k): np.asarray(v) for k, v in (self.r.extras or {}).items() if np.shape(v) == shape}

    @property
    def found_nothing(self) -> bool:
        return not self.skipped and not self.labelled

    def directed_effect(self) -> np.ndarray:
        e = self.f["effect"]
        return {"less": -e, "two-sided": np.abs(e)}.get(self.direction, e)

    def best_heads(self, k: int) -> list[tuple[int, int]]:
        """The ``k`` most significant heads (q, then effect in the rule's direction), labelled or not."""
        q = np.where(np.isfinite(self.f["q_value"]), self.f["q_value"], np.inf)
        de = np.where(np.isfinite(self.directed_effect()), self.directed_effect(), -np.inf)
        order = np.lexsort((-de.ravel(), q.ravel()))
        n_heads = q.shape[1]
        heads = [divmod(int(i), n_heads) for i in order if np.isfinite(q.ravel()[i]) or np.isfinite(de.ravel()[i])]
        return heads[:k]

    def map_values(self, scale: float) -> tuple[np.ndarray, float, str]:
        """What the detector's map shows: the signed significance on the shared scale, or, where the
        atlas holds no q-values for it (a schema-1 atlas), its effect on its own symmetric scale."""
        sig = self.signed_significance()
        if np.isfinite(sig).any() or not np.isfinite(self.f["effect"]).any():
            return sig, scale, "signed<br>-log10 q"
        own = float(np.nanmax(np.abs(self.f["effect"]))) or 1.0
        return self.f["effect"], own, "effect<br>(own scale)"

    def signed_significance(self) -> np.ndarray:
        q, e = self.f["q_value"], self.f["effect"]
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.sign(e) * -np.log10(np.clip(q, 1e-300, 1.0))
        return np.where(np.isfinite(s), s + 0.0, np.nan)


def _anchors(names: list[str]) -> list[str]:
    """``det-<name>`` ids made of ``[A-Za-z0-9_-]`` only (other characters become ``-``), unique."""
    out: list[str] = []
    for n in names:
        base = "det-" + "".join(c if (c.isascii() and c.isalnum()) or c in "-_" else "-" for c in n)[:80]
        a, i = base, 2
        while a in out:
            a, i = f"{base}-{i}", i + 1
        out.append(a)
    return out


def _array(v: Any, shape: tuple[int, int]) -> np.ndarray:
    try:
        a = np.asarray(v, dtype=float)
    except (TypeError, ValueError):
        return np.full(shape, np.nan)
    return a if a.shape == shape else np.full(shape, np.nan)


def _causal(atlas: "Atlas", name: str, r: Any) -> dict[str, Any] | None:
    fn = getattr(atlas, "causal", None)
    c: Any = None
    if callable(fn):
        c = fn(name)
    elif getattr(r, "causal", None) is not None:
        c = r.causal.as_mapping()
    if c is None:
        return None
    c = dict(c)
    rand = [float(x) for x in c.get("random_effects", ())]
    finite = [x for x in rand if math.isfinite(x)]
    med = c.get("random_median")
    return {"metric": str(c.get("metric", "")), "kind": str(c.get("kind", "")),
            "heads": [[int(a), int(b)] for a, b in c.get("heads", ())], "effect": _num(c.get("effect")),
            "random_effects": rand, "p_value": _num(c.get("p_value")), "n_prompts": c.get("n_prompts", 0),
            "random_median": _num(med) if med is not None else (float(np.median(finite)) if finite else math.nan),
            "expected": str(c.get("expected", "")), "description": str(c.get("description", "")),
            "note": str(c.get("note", ""))}


def _num(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def stage_heads(atlas: "Atlas") -> dict[str, list[tuple[int, int]]]:
    """Stage -> its heads (a head labelled in several stages is in each); from ``Atlas.stage_heads``."""
    fn = getattr(atlas, "stage_heads", None)
    out: dict[str, list[tuple[int, int]]] = {s: [] for s in STAGE_ORDER}
    if callable(fn):
        for s, heads in fn().items():
            out.setdefault(str(s), [])
            out[str(s)] = sorted({(int(a), int(b)) for a, b in heads})
        return out
    for name in atlas.detectors:  # atlases built before Atlas.stage_heads existed
        m, r = atlas.meta[name], atlas.result(name)
        if getattr(m, "places_stage", True) and not r.skipped:
            out.setdefault(m.stage, [])
            out[m.stage] = sorted(set(out[m.stage]) | {(int(a), int(b)) for a, b in r.labelled})
    return out


# ----- figures (plain plotly dicts; every atlas string in them is escaped) ---------------------------
def _axes(n_layers: int, n_heads: int) -> tuple[dict[str, Any], dict[str, Any]]:
    x = {"title": {"text": "head"}, "range": [-0.5, n_heads - 0.5], "autorange": False, "showgrid": False,
         "zeroline": False, "dtick": 1 if n_heads <= 16 else None}
    y = {"title": {"text": "layer"}, "range": [n_layers - 0.5, -0.5], "autorange": False, "showgrid": False,
         "zeroline": False, "dtick": 1 if n_layers <= 32 else (2 if n_layers <= 64 else None)}
    return x, y


def _cell(n_layers: int, n_heads: int, width: float = 720.0) -> tuple[int, int]:
    """Cell width and height in pixels: the grid fits ``width`` x 640 px where cells stay legible."""
    return int(max(5, min(34, width / max(n_heads, 1)))), int(max(6, min(22, 640 / max(n_layers, 1))))


def _detector_figure(atlas: "Atlas", d: _Det, scale: float) -> dict[str, Any]:
    L, H = atlas.n_layers, atlas.n_heads
    values, zmax, bar = d.map_values(scale)
    lab = set(d.labelled)
    f = d.f
    extras = [(k, v) for k, v in d.extras.items()]
    text = [[f"<b>{_head(la, h)}</b> {'labelled' if (la, h) in lab else 'not labelled'}<br>"
             f"score {_fmt(f['scores'][la, h], 4)}<br>null {_fmt(f['null_mean'][la, h])} ± {_fmt(f['null_std'][la, h], 2)}"
             f"<br>effect {_fmt(f['effect'][la, h])} [{_fmt(f['ci_low'][la, h])}, {_fmt(f['ci_high'][la, h])}]"
             f"<br>p {_fmt(f['p_value'][la, h], 2)}, q {_fmt(f['q_value'][la, h], 2)}, stability "
             f"{_fmt(f['stability'][la, h], 2)}"
             + "".join(f"<br>{esc(k)} {esc(_fmt(v[la, h]))}" for k, v in extras[:6])
             for h in range(H)] for la in range(L)]
    trace = {"type": "heatmap", "z": _round(values), "x": list(range(H)), "y": list(range(L)), "text": text,
             "hovertemplate": "%{text}<extra></extra>", "colorscale": GREYS if d.found_nothing else DIVERGING,
             "zmin": -zmax, "zmax": zmax, "xgap": 1, "ygap": 1,
             "colorbar": {"title": {"text": bar}, "thickness": 12, "len": 1.0}}
    data: list[dict[str, Any]] = [trace]
    if lab:
        data.append({"type": "scatter", "mode": "markers", "x": [h for _, h in d.labelled],
                     "y": [la for la, _ in d.labelled], "hoverinfo": "skip", "showlegend": False,
                     "marker": {"symbol": "circle-open", "size": 12, "color": "#111", "line": {"width": 2}}})
    cw, ch = _cell(L, H)
    xa, ya = _axes(L, H)
    layout = {"width": max(380, 170 + cw * H), "height": max(220, 75 + ch * L),
              "margin": {"l": 50, "r": 10, "t": 30, "b": 45},
              "xaxis": xa, "yaxis": ya, "showlegend": False, "plot_bgcolor": "#ffffff"}
    return {"id": d.anchor + "-heatmap", "data": data, "layout": layout, "clickable": True}


def _stage_figure(atlas: "Atlas", heads_by_stage: dict[str, list[tuple[int, int]]], dets: list[_Det]) -> dict[str, Any]:
    L, H = atlas.n_layers, atlas.n_heads
    n = len(STAGE_ORDER)
    cw, ch = _cell(L, H, width=(1000.0 - (n - 1) * 40) / n)
    panel_w = cw * H
    gap = 40
    width = 60 + n * panel_w + (n - 1) * gap + 20
    data, layout = [], {"width": width, "height": 100 + ch * L, "margin": {"l": 50, "r": 20, "t": 50, "b": 45},
                        "showlegend": False, "plot_bgcolor": "#ffffff", "annotations": []}
    plot_w = width - 70
    for i, s in enumerate(STAGE_ORDER):
        by_head: dict[tuple[int, int], list[str]] = {}
        for d in dets:
            if d.stage == s and d.places_stage and not d.skipped:
                for lh in d.labelled:
                    by_head.setdefault(lh, []).append(d.name)
        in_stage = set(heads_by_stage.get(s, []))
        z = [[1 if (la, h) in in_stage else 0 for h in range(H)] for la in range(L)]
        text = [[f"<b>{_head(la, h)}</b> · {s}: " + (esc(", ".join(by_head.get((la, h), ["labelled"])))
                                                    if (la, h) in in_stage else "no label in this stage")
                 for h in range(H)] for la in range(L)]
        suffix = "" if i == 0 else str(i + 1)
        x0 = (i * (panel_w + gap)) / plot_w
        x1 = min(1.0, x0 + panel_w / plot_w)
        data.append({"type": "heatmap", "z": z, "x": list(range(H)), "y": list(range(L)), "text": text,
                     "hovertemplate": "%{text}<extra></extra>", "xaxis": "x" + suffix, "yaxis": "y" + suffix,
                     "colorscale": [[0, "#eeeeee"], [1, STAGE_COLORS[s]]], "zmin": 0, "zmax": 1, "showscale": False,
                     "xgap": 1, "ygap": 1})
        xa, ya = _axes(L, H)
        xa.update({"domain": [x0, x1], "anchor": "y" + suffix})
        ya.update({"anchor": "x" + suffix})
        if i:
            ya["title"] = {"text": ""}
        layout["xaxis" + suffix], layout["yaxis" + suffix] = xa, ya
        layout["annotations"].append({"text": f"<b>{s}</b>: {len(in_stage)} heads", "xref": "paper", "yref": "paper",
                                      "x": (x0 + x1) / 2, "y": 1.0, "yshift": 8, "yanchor": "bottom",
                                      "showarrow": False})
    return {"id": "stage-map", "data": data, "layout": layout, "clickable": True}


def _causal_figure(d: _Det) -> dict[str, Any] | None:
    c = d.causal
    if not c or c["kind"] == "none":
        return None
    rand = [x for x in c["random_effects"] if math.isfinite(x)]
    if not rand:
        return None
    data = [{"type": "histogram", "x": rand, "nbinsx": min(30, max(5, len(rand) // 2)), "name": "random sets",
             "marker": {"color": "#9e9e9e"}, "hovertemplate": "random sets: %{y}<br>change %{x}<extra></extra>"}]
    shapes, notes = [], []
    for x, color, dash, label in ((c["effect"], "#d62728", "solid", "labelled set"),
                                  (c["random_median"], "#555555", "dot", "random median")):
        if math.isfinite(x):
            shapes.append({"type": "line", "x0": x, "x1": x, "xref": "x", "yref": "paper", "y0": 0, "y1": 1,
                           "line": {"color": color, "width": 2, "dash": dash}})
            notes.append({"x": x, "xref": "x", "y": 1, "yref": "paper", "text": label, "showarrow": False,
                          "yanchor": "bottom", "font": {"color": color, "size": 11}})
    layout = {"width": 480, "height": 250, "margin": {"l": 45, "r": 15, "t": 50, "b": 45}, "shapes": shapes,
              "annotations": notes, "showlegend": False, "bargap": 0.05,
              "xaxis": {"title": {"text": f"change of {esc(c['metric'])} (ablated - clean)"}},
              "yaxis": {"title": {"text": "random sets"}}}
    return {"id": d.anchor + "-causal", "data": data, "layout": layout, "clickable": False}


# ----- HTML pieces ------------------------------------------------------------------------------------
def _table(header: list[str], rows: list[str]) -> str:
    """A table inside a horizontally scrolling container (headers are escaped here; rows come built)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    return f"<div class='scroll'><table><tr>{head}</tr>{''.join(rows)}</table></div>"


def _kv_table(items: list[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(_setting(v))}</td></tr>" for k, v in items)
    return f"<div class='scroll'><table>{rows}</table></div>"


def _setting(v: Any) -> str:
    if v is None:
        return "(not recorded)"
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(plain(v), ensure_ascii=False)
    return _fmt(v, 6) if isinstance(v, float) else str(v)


def _timing(atlas: "Atlas", name: str) -> str:
    seconds = atlas.timings.get(name)
    shared = (getattr(atlas, "shared_passes", None) or {}).get(name)
    t = ""
    if isinstance(seconds, (int, float)) and math.isfinite(seconds):
        t = f"{seconds:.1f} s" if seconds >= 0.05 else "&lt; 0.1 s"
    if shared:
        return esc(shared) if not t or seconds < 0.05 else f"{t}; {esc(shared)}"
    return t or "not recorded"


def _causal_line(c: dict[str, Any] | None) -> str:
    if c is None:
        return "<span class='muted'>no causal check ran</span>"
    if c["kind"] == "none":
        return f"<span class='muted'>no behavioural metric: {esc(c['note'])}</span>"
    return (f"{esc(c['metric'])}: {_fmt(c['effect'])} vs random median {_fmt(c['random_median'])} "
            f"(p {_fmt(c['p_value'], 2)}, {len(c['random_effects'])} random sets)")


def _heads_rows(d: _Det, heads: list[tuple[int, int]]) -> tuple[list[str], list[str]]:
    f = d.f
    keys = list(d.extras)
    header = ["head", "score", "null mean ± std", "effect [95% CI]", "p", "q", "stability", *keys]
    lab = set(d.labelled)
    rows = []
    for lh in heads:
        cells = [f"<td>{_head(*lh)}{'' if lh in lab else ' <span class=muted>(not labelled)</span>'}</td>",
                 f"<td class='num'>{_fmt(f['scores'][lh], 4)}</td>",
                 f"<td class='num'>{_fmt(f['null_mean'][lh])} ± {_fmt(f['null_std'][lh], 2)}</td>",
                 f"<td class='num'>{_fmt(f['effect'][lh])} [{_fmt(f['ci_low'][lh])}, {_fmt(f['ci_high'][lh])}]</td>",
                 f"<td class='num'>{_fmt(f['p_value'][lh], 2)}</td>", f"<td class='num'>{_fmt(f['q_value'][lh], 2)}</td>",
                 f"<td class='num'>{_fmt(f['stability'][lh], 2)}</td>"]
        cells += [f"<td class='num'>{esc(_fmt(d.extras[k][lh]))}</td>" for k in keys]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return header, rows


def _top_table(atlas: "Atlas", dets: list[_Det], top: int) -> str:
    rows = []
    for d in dets:
        link = f'<a href="#{d.anchor}">{esc(d.name)}</a>'
        t = _timing(atlas, d.name)
        if d.skipped:
            rows.append(f"<tr><td>{link}</td><td>{_badge(d.stage)}</td><td class='skip' colspan='3'>skipped: "
                        f"{esc(d.skipped)}</td><td>{t}</td></tr>")
            continue
        if not d.labelled:
            tops = "<span class='none'>none found</span>"
        else:
            tops = ", ".join(f"{_head(*lh)} ({_fmt(d.f['effect'][lh])}, q {_fmt(d.f['q_value'][lh], 2)})"
                             for lh in d.labelled[:top])
            if len(d.labelled) > top:
                tops += f", +{len(d.labelled) - top} more"
        rows.append(f"<tr><td>{link}</td><td>{_badge(d.stage)}</td><td class='num'>{len(d.labelled)}</td>"
                    f"<td>{tops}</td><td>{_causal_line(d.causal)}</td><td>{t}</td></tr>")
    return _table(["detector", "stage", "labelled", "top heads (effect, q)", "causal check: effect vs random median",
                   "time"], rows)


def _token_view_html(d: _Det, views: list[dict[str, Any]]) -> str:
    if not isinstance(d.r.details, dict) or "token_view" not in d.r.details:
        return ""
    view, why = check_token_view(d.r.details["token_view"])
    if view is None:
        return f"<p class='muted'>token view not shown: {esc(why)}</p>"
    vid = d.anchor + "-tokens"
    views.append({"id": vid, **view})
    note = f" {esc(view['note'])}" if view["note"] else ""
    return (f"<h3>Token view</h3><p class='muted'>Attention of {esc(', '.join(view['heads']))} on one of this "
            f"detector's prompts ({len(view['tokens'])} tokens).{note} Hover a token (the query) to shade the "
            f"tokens it attends to; darker red is more attention.</p><div class='tv' id='{vid}'></div>")


def _detector_section(atlas: "Atlas", d: _Det, figures: list[dict[str, Any]], views: list[dict[str, Any]],
                      scale: float) -> str:
    m, r = d.meta, d.r
    status = ("<span class='skip'>skipped</span>" if d.skipped else
              "<span class='none'>none found</span>" if not d.labelled else f"{len(d.labelled)} labelled")
    parts = [f'<section id="{d.anchor}"><h2>{esc(d.name)} {_badge(d.stage)} <small>{status}</small></h2>']
    if getattr(m, "summary", ""):
        parts.append(f"<p>{esc(m.summary)}</p>")
    bits = [f"<b>method</b>: {esc(m.method)}" if getattr(m, "method", "") else "",
            f"<b>citation</b>: {esc(m.citation)}" if getattr(m, "citation", "") else "",
            f"<b>version</b>: {esc(getattr(m, 'version', ''))}"]
    if not d.places_stage:
        bits.append("its labels do not place a head in a stage")
    parts.append(f"<p class='muted'>{' · '.join(b for b in bits if b)}</p>")
    if d.skipped:
        parts.append(f"<p class='skip'>skipped on this model: {esc(d.skipped)}</p></section>")
        return "\n".join(parts)
    rule = d.rule.describe() if d.rule is not None and hasattr(d.rule, "describe") else "(no label rule recorded)"
    parts.append(_kv_table([("label rule", rule), ("data", r.data_description), ("null", r.null_description),
                            ("prompts", f"{r.n_prompts} (seed {r.seed})"),
                            ("null draws", getattr(r, "n_null", None))]).replace("<td>", "<td class='rule'>", 1))
    # causal check
    c = d.causal
    parts.append("<h3>Causal check</h3>")
    if c is None:
        parts.append("<p class='muted'>no causal check ran for this detector.</p>")
    elif c["kind"] == "none":
        parts.append(f"<p class='muted'>no behavioural metric for this head type: {esc(c['note'])}</p>")
    else:
        beats = ""
        rand = [x for x in c["random_effects"] if math.isfinite(x)]
        if rand and math.isfinite(c["effect"]):
            sign = -1.0 if c["expected"] == "decrease" else 1.0
            n_beat = sum(sign * c["effect"] > sign * x for x in rand)
            beats = f"; the labelled set's change exceeds {n_beat} of {len(rand)} random sets in the expected direction"
        what = _INTERVENTIONS.get(str(c["kind"]), f"{c['kind']} intervention")
        parts.append(f"<p>{esc(what[:1].upper() + what[1:])} of the {len(c['heads'])} labelled heads on {esc(c['n_prompts'])} "
                     f"prompts: {_causal_line(c)}{beats}. Expected direction: {esc(c['expected'])}. "
                     f"{esc(c['description'])}</p>")
        if c["note"]:
            parts.append(f"<p class='muted'>{esc(c['note'])}</p>")
        fig = _causal_figure(d)
        if fig is not None:
            figures.append(fig)
            parts.append(f"<div class='plot' id='{fig['id']}'></div>")
    # heads
    if d.labelled:
        shown = d.labelled[:MAX_TABLE_ROWS]
        more = len(d.labelled) - len(shown)
        parts.append(f"<h3>Labelled heads</h3><p>{len(d.labelled)} labelled" + (f", first {len(shown)} shown" if more
                                                                                else "") + ", most significant first:</p>")
        parts.append(_table(*_heads_rows(d, shown)))
    else:
        best = d.best_heads(3)
        parts.append("<p class='none'>none found: no head passed the label rule.</p>")
        if best:
            parts.append("<p class='muted'>The most significant heads, for reference:</p>" + _table(*_heads_rows(d, best)))
    # map
    fig = _detector_figure(atlas, d, scale)
    figures.append(fig)
    grey = " greyed" if d.found_nothing else ""
    if fig["data"][0]["colorbar"]["title"]["text"].startswith("signed"):
        what = f"<h3>Map: {SCALE_NAME}</h3><p class='muted'>Shared scale across detectors (±{_fmt(scale)})"
    else:
        what = (f"<h3>Map: effect</h3><p class='muted'>This atlas holds no q-values for this detector (e.g. one "
                "migrated from schema 1), so the map shows its effect on its own scale")
    parts.append(what + "; labelled heads circled" + ("; drawn in greys: this detector labelled nothing" if grey else "")
                 + ". Click a cell for that head's card.</p>"
                 f"<div class='plot{grey}' id='{fig['id']}'></div>")
    parts.append(_token_view_html(d, views))
    if isinstance(r.details, dict) and r.details:
        shown_details = {k: v for k, v in r.details.items() if k != "token_view"}
        if shown_details:
            text = json.dumps(plain(shown_details), indent=1, ensure_ascii=False)
            if len(text) > _DETAILS_CHARS:
                text = text[:_DETAILS_CHARS] + "\n... (truncated; the full details are in the atlas JSON)"
            parts.append(f"<details><summary>details</summary><pre>{esc(text)}</pre></details>")
    parts.append("</section>")
    return "\n".join(parts)


def _page_data(atlas: "Atlas", dets: list[_Det], heads_by_stage: dict[str, list[tuple[int, int]]],
               figures: list[dict[str, Any]], views: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "n_layers": atlas.n_layers, "n_heads": atlas.n_heads, "config": PLOTLY_CONFIG,
        "stage_order": STAGE_ORDER, "stages": {s: STAGES[s] for s in STAGE_ORDER},
        "stage_heads": {s: [list(lh) for lh in heads_by_stage.get(s, [])] for s in STAGE_ORDER},
        "detectors": [{"name": d.name, "stage": d.stage, "skipped": d.skipped, "labelled": [list(lh) for lh in d.labelled],
                       "fields": {} if d.skipped else {k: _round(v) for k, v in d.f.items()},
                       "causal": None if d.causal is None else {k: d.causal[k] for k in
                                                                ("metric", "kind", "heads", "effect", "random_median",
                                                                 "p_value", "note")}}
                      for d in dets],
        "figures": figures, "token_views": views,
    }


def render_html(atlas: "Atlas", *, top: int = 5) -> str:
    """The whole report as one HTML string (plotly.js embedded once; nothing is fetched)."""
    from plotly.offline import get_plotlyjs

    dets = [_Det(atlas, n, a) for n, a in zip(atlas.detectors, _anchors(atlas.detectors))]
    live = [d for d in dets if not d.skipped]
    sig_max = max([float(np.nanmax(np.abs(s))) for s in (d.signed_significance() for d in live) if np.isfinite(s).any()],
                  default=0.0)
    scale = max(2.0, math.ceil(sig_max * 10) / 10)
    heads_by_stage = stage_heads(atlas)
    figures: list[dict[str, Any]] = []
    views: list[dict[str, Any]] = []

    model_items = [(str(k), v) for k, v in atlas.model.items()]
    settings = [("seed", atlas.seed), *[(str(k), v) for k, v in atlas.settings.items()],
                ("headatlas", atlas.headatlas_version), ("created", atlas.created)]
    timings = _table(["detector", "time"], [f"<tr><td>{esc(d.name)}</td><td>{_timing(atlas, d.name)}</td></tr>"
                                            for d in dets])
    counts = " ".join(f"{_badge(s)} {esc(STAGES[s])}: <b>{len(heads_by_stage.get(s, []))}</b> heads"
                      for s in STAGE_ORDER)
    unplaced = [d.name for d in dets if not d.places_stage]
    unplaced_html = (f"<p class='muted'>Labels of {esc(', '.join(unplaced))} (outside the survey's taxonomy) are "
                     "reported below but do not place a head in a stage.</p>" if unplaced else "")
    if live:
        figures.append(_stage_figure(atlas, heads_by_stage, dets))
        stage_map = "<div class='plot' id='stage-map'></div>"
    else:
        stage_map = "<p class='none'>this atlas holds no detector results.</p>"
    notes = [str(n) for n in (getattr(atlas, "notes", None) or [])]
    notes_html = ("<div class='notes'><b>Notes</b><ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul></div>"
                  if notes else "")
    skipped = [d for d in dets if d.skipped]
    skipped_html = ("<ul>" + "".join(f"<li><b>{esc(d.name)}</b>: {esc(d.skipped)}</li>" for d in skipped) + "</ul>"
                    if skipped else "<p class='muted'>none</p>")
    spec_html, spec_figure = specificity_section(atlas)
    if spec_figure is not None:
        figures.append(spec_figure)
    sections = "\n".join(_detector_section(atlas, d, figures, views, scale) for d in dets)
    nav = " ".join(f'<a href="#{d.anchor}">{esc(d.name)}</a>' for d in dets)
    plotly_js = get_plotlyjs()
    data_block = script_json(_page_data(atlas, dets, heads_by_stage, figures, views))
    title = f"headatlas: {esc(atlas.model_name)}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{esc(csp([plotly_js, JS]))}">
<meta name="referrer" content="no-referrer">
<title>{title}</title>
<meta name="generator" content="headatlas {esc(atlas.headatlas_version)}">
<style>{CSS}</style>
<script>{plotly_js}</script>
</head><body>
<h1>{title}</h1>
<p class="muted">{atlas.n_layers} layers x {atlas.n_heads} heads ({atlas.n_layers * atlas.n_heads} heads), named
L&lt;layer&gt;H&lt;head&gt;. Every label is a tested claim: the head's score, its null (mean ± std), the effect with a
95% bootstrap CI over prompts, a permutation p, a Benjamini-Hochberg q over all heads of the detector, its
stability under prompt resampling, and the detector's causal check.</p>
{notes_html}
<nav>{nav}</nav>
<form id="ha-lookup" class="muted">Head card: <input id="ha-lookup-input" size="8" placeholder="L0H0" aria-label="head">
<button type="submit">show</button> <span id="ha-lookup-msg"></span> (or click any map cell)</form>
<div id="ha-card" hidden><button type="button" class="close" id="ha-card-close">close</button><div id="ha-card-body"></div></div>
<h2 id="model">Model and scan</h2>
<div style="display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start">
<div><h3>Model</h3>{_kv_table(model_items)}</div><div><h3>Settings used</h3>{_kv_table(settings)}</div>
<div><h3>Time per detector</h3>{timings}</div></div>
<h2 id="stage-map-section">Stage map</h2>
<p>{counts}</p>
<p class="muted">One panel per stage; a head labelled by detectors of several stages is drawn (and counted) in each.
Click a cell for that head's card.</p>
{unplaced_html}
{stage_map}
<h2 id="top-heads">Top heads per type</h2>
{_top_table(atlas, dets, top)}
{spec_html}
<h2 id="skipped">Skipped detectors</h2>
{skipped_html}
{circuit_section(atlas)}
{sections}
<script type="application/json" id="ha-data">{data_block}</script>
<script>{JS}</script>
</body></html>
"""
