"""The report's static stylesheet and script (no atlas data in here: the script reads the page's
``<script type="application/json" id="ha-data">`` block and writes atlas strings with ``textContent``
only, never ``innerHTML``)."""

from __future__ import annotations

CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}
p,li,h1,h2,h3,nav,summary,form{overflow-wrap:anywhere}
td,th{overflow-wrap:break-word}
h1{font-size:1.6em;margin-bottom:4px} h2{margin-top:36px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{margin:18px 0 6px;font-size:1.05em}
.scroll{max-width:100%;overflow-x:auto}
table{border-collapse:collapse;margin:8px 0;font-size:.92em}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f6f6f6} td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.none{color:#a15c00;font-weight:600} .skip{color:#888;font-style:italic} .muted{color:#666;font-size:.9em}
.stage{display:inline-block;padding:0 6px;border-radius:3px;color:#fff;font-size:.85em}
.greyed{opacity:.6} .greyed h2{color:#777}
pre{background:#f7f7f7;padding:8px;overflow:auto;max-height:320px;font-size:.85em;white-space:pre-wrap}
nav a{margin-right:10px}
.plot{max-width:100%;overflow-x:auto}
.rule{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.9em}
#ha-card{position:fixed;top:12px;right:12px;width:min(860px,calc(100vw - 24px));max-height:calc(100vh - 24px);overflow:auto;
 background:#fff;border:1px solid #bbb;border-radius:6px;box-shadow:0 4px 18px rgba(0,0,0,.18);padding:10px 14px;z-index:1000}
#ha-card[hidden]{display:none}
#ha-card h3{margin-top:4px}
#ha-card td.causal{min-width:16em}
#ha-card button.close{float:right}
.tv{margin:8px 0 16px}
.tv-tokens{display:flex;flex-wrap:wrap;gap:2px;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.9em;margin:4px 0}
.tv-tok{white-space:pre;border:1px solid #ddd;border-radius:3px;padding:1px 3px;cursor:default;min-width:1.2em;text-align:center}
.tv-tok.q{outline:2px solid #222}
.tv-heads button{margin-right:4px}
.tv-heads button.on{font-weight:700}
"""

JS = r"""
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("ha-data").textContent);
  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function fmt(v, d) {
    if (v === null || v === undefined) return "nan";
    if (typeof v !== "number") return String(v);
    var a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential((d || 3) - 1);
    return String(Number(v.toPrecision(d || 3)));
  }
  function headName(l, h) { return "L" + l + "H" + h; }
  var card = document.getElementById("ha-card");
  var cardBody = document.getElementById("ha-card-body");
  function showCard(layer, head) {
    layer = Number(layer); head = Number(head);
    if (!(layer >= 0 && layer < D.n_layers && head >= 0 && head < D.n_heads)) return false;
    cardBody.textContent = "";
    cardBody.appendChild(el("h3", headName(layer, head)));
    var stages = [];
    D.stage_order.forEach(function (s) {
      (D.stage_heads[s] || []).forEach(function (lh) {
        if (lh[0] === layer && lh[1] === head) stages.push(s + " (" + D.stages[s] + ")");
      });
    });
    cardBody.appendChild(el("p", "stage: " + (stages.length ? stages.join(", ") : "no stage (no label that places a head)")));
    var wrap = el("div", null, "scroll");
    var t = el("table");
    var hdr = el("tr");
    ["detector", "stage", "label", "score", "null mean \u00b1 std", "effect [95% CI]", "p", "q", "stability",
     "causal check"].forEach(function (c) { hdr.appendChild(el("th", c)); });
    t.appendChild(hdr);
    D.detectors.forEach(function (d) {
      var tr = el("tr");
      tr.appendChild(el("td", d.name));
      tr.appendChild(el("td", d.stage));
      if (d.skipped !== null) {
        var td = el("td", "skipped: " + d.skipped, "skip"); td.colSpan = 8; tr.appendChild(td);
        t.appendChild(tr); return;
      }
      var f = d.fields, lab = d.labelled.some(function (lh) { return lh[0] === layer && lh[1] === head; });
      function g(k) { return f[k] ? f[k][layer][head] : null; }
      tr.appendChild(el("td", lab ? "labelled" : "-", lab ? "" : "muted"));
      tr.appendChild(el("td", fmt(g("scores"), 4), "num"));
      tr.appendChild(el("td", fmt(g("null_mean"), 3) + " \u00b1 " + fmt(g("null_std"), 2), "num"));
      tr.appendChild(el("td", fmt(g("effect"), 3) + " [" + fmt(g("ci_low"), 3) + ", " + fmt(g("ci_high"), 3) + "]", "num"));
      tr.appendChild(el("td", fmt(g("p_value"), 2), "num"));
      tr.appendChild(el("td", fmt(g("q_value"), 2), "num"));
      tr.appendChild(el("td", fmt(g("stability"), 2), "num"));
      var c = d.causal, ctext = "-";
      if (c === null) ctext = "no causal check ran";
      else if (c.kind === "none") ctext = "no behavioural metric: " + c.note;
      else {
        var inSet = c.heads.some(function (lh) { return lh[0] === layer && lh[1] === head; });
        ctext = (inSet ? "in the ablated set: " : "not in the ablated set; set: ") + c.metric + " change " +
          fmt(c.effect) + " vs random median " + fmt(c.random_median) + ", p " + fmt(c.p_value, 2);
      }
      tr.appendChild(el("td", ctext, "causal"));
      t.appendChild(tr);
    });
    wrap.appendChild(t);
    cardBody.appendChild(wrap);
    card.hidden = false;
    card.setAttribute("data-head", headName(layer, head));
    return true;
  }
  window.headatlasShowCard = showCard;
  document.getElementById("ha-card-close").addEventListener("click", function () { card.hidden = true; });
  var form = document.getElementById("ha-lookup");
  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var m = /^\s*L(\d+)\s*H(\d+)\s*$/i.exec(document.getElementById("ha-lookup-input").value);
    var msg = document.getElementById("ha-lookup-msg");
    msg.textContent = (m && showCard(m[1], m[2])) ? "" : "no such head: use L<layer>H<head>, e.g. L0H0";
  });

  D.figures.forEach(function (fig) {
    var div = document.getElementById(fig.id);
    if (!div) return;
    Plotly.newPlot(div, fig.data, fig.layout, D.config);
    if (fig.clickable) {
      div.on("plotly_click", function (ev) {
        if (!ev || !ev.points || !ev.points.length) return;
        var p = ev.points[0];
        if (typeof p.x === "number" && typeof p.y === "number") showCard(p.y, p.x);
      });
    }
  });

  D.token_views.forEach(function (tv) {
    var root = document.getElementById(tv.id);
    if (!root) return;
    var names = Object.keys(tv.heads);
    var bar = el("div", null, "tv-heads");
    bar.appendChild(el("span", "head: "));
    var row = el("div", null, "tv-tokens");
    var info = el("div", "", "muted");
    var current = names[0], query = tv.tokens.length - 1, spans = [];
    tv.tokens.forEach(function (tok, i) {
      var s = el("span", tok.length ? tok : "\u2205", "tv-tok");
      s.tabIndex = 0;
      s.addEventListener("mouseenter", function () { query = i; paint(); });
      s.addEventListener("focus", function () { query = i; paint(); });
      spans.push(s); row.appendChild(s);
    });
    function paint() {
      var rowW = tv.heads[current][query] || [];
      var best = -1, bestW = -1;
      spans.forEach(function (s, k) {
        var w = k < rowW.length ? rowW[k] : 0;
        if (w > bestW) { bestW = w; best = k; }
        s.style.background = "rgba(214,39,40," + Math.min(1, Math.max(0, w)).toFixed(3) + ")";
        s.title = "attention from token " + (query + tv.start) + " to token " + (k + tv.start) + ": " + fmt(w);
        s.classList.toggle("q", k === query);
      });
      info.textContent = current + ": query token " + (query + tv.start) + " attends most to token " +
        (best + tv.start) + " (" + fmt(bestW) + "). Hover a token to see what it attends to.";
    }
    names.forEach(function (n) {
      var b = el("button", n); b.type = "button";
      b.addEventListener("click", function () {
        current = n;
        Array.prototype.forEach.call(bar.querySelectorAll("button"), function (x) { x.classList.toggle("on", x === b); });
        paint();
      });
      if (n === current) b.classList.add("on");
      bar.appendChild(b);
    });
    root.appendChild(bar); root.appendChild(row); root.appendChild(info);
    paint();
  });
  document.body.setAttribute("data-ready", "1");
})();
"""
