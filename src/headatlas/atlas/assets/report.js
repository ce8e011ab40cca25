/* headatlas report script. Reads the page's JSON block (#ha-data); writes atlas strings with textContent only,
   never innerHTML; text handed to plotly (which renders HTML-like markup) is escaped first. Plots are built from
   the embedded numbers and drawn when they scroll into view; #L<layer>H<head> opens that head's page. */
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("ha-data").textContent);
  var byName = {};
  D.detectors.forEach(function (d) {
    byName[d.name] = d;
    d.statusOf = {};
    d.labelled.forEach(function (lh, k) { d.statusOf[lh[0] + "," + lh[1]] = d.status[k]; });
  });

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
  function signed(v, d) { var t = fmt(v, d); return (typeof v === "number" && v > 0) ? "+" + t : t; }
  function esc(s) {
    return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
  }
  function headName(l, h) { return "L" + l + "H" + h; }
  function val(d, k, l, h) { var f = d.fields[k]; return f ? f[l][h] : null; }
  function statusOf(d, l, h) { return d.statusOf[l + "," + h] || null; }

  // ---------------------------------------------------------------- plots
  function hoverText(d) {
    var keys = Object.keys(d.extras || {});
    var rows = [];
    for (var l = 0; l < D.n_layers; l++) {
      var row = [];
      for (var h = 0; h < D.n_heads; h++) {
        var st = statusOf(d, l, h);
        var t = "<b>" + headName(l, h) + "</b> " + (st ? esc(st) : "not labelled") +
          "<br>effect " + signed(val(d, "effect", l, h)) + " [" + fmt(val(d, "ci_low", l, h)) + ", " +
          fmt(val(d, "ci_high", l, h)) + "]<br>score " + fmt(val(d, "scores", l, h), 4) + " (null " +
          fmt(val(d, "null_mean", l, h)) + " \u00b1 " + fmt(val(d, "null_std", l, h), 2) + ")<br>p " +
          fmt(val(d, "p_value", l, h), 2) + ", q " + fmt(val(d, "q_value", l, h), 2) + ", stability " +
          fmt(val(d, "stability", l, h), 2);
        keys.forEach(function (k) { t += "<br>" + esc(k) + " " + esc(fmt(d.extras[k][l][h])); });
        row.push(t);
      }
      rows.push(row);
    }
    return rows;
  }
  function build(fig) {
    var d = D.detectors[fig.det];
    fig.data.forEach(function (tr) {
      if (tr.z_field === "nan_mask") {
        tr.z = d.fields.effect.map(function (r) { return r.map(function (v) { return v === null ? 1 : null; }); });
      } else if (tr.z_field) {
        tr.z = d.fields[tr.z_field];
        tr.text = hoverText(d);
      }
      if (tr.x_field) tr.x = d.causal[tr.x_field].filter(function (v) { return v !== null; });
      delete tr.z_field; delete tr.x_field;
    });
  }
  function draw(fig) {
    if (fig.drawn) return;
    var div = document.getElementById(fig.id);
    if (!div || typeof Plotly === "undefined") return;
    fig.drawn = true;
    build(fig);
    Plotly.newPlot(div, fig.data, fig.layout, D.config);
    if (fig.clickable) {
      div.on("plotly_click", function (ev) {
        if (!ev || !ev.points || !ev.points.length) return;
        var p = ev.points[0];
        if (typeof p.x === "number" && typeof p.y === "number") location.hash = headName(p.y, p.x);
      });
    }
  }
  var lazy = {};
  function whenVisible(id, fn) {
    var node = document.getElementById(id);
    if (!node) return;
    if (typeof IntersectionObserver === "undefined") { fn(); return; }
    lazy[id] = fn;
    observer.observe(node);
  }
  var observer = typeof IntersectionObserver === "undefined" ? null : new IntersectionObserver(function (entries) {
    entries.forEach(function (en) {
      if (!en.isIntersecting) return;
      var fn = lazy[en.target.id];
      observer.unobserve(en.target);
      delete lazy[en.target.id];
      if (fn) fn();
    });
  }, {rootMargin: "300px 0px"});
  D.figures.forEach(function (fig) {
    var div = document.getElementById(fig.id);
    if (div) div.style.minHeight = fig.layout.height + "px";   // reserve the space: nothing moves when it is drawn
    whenVisible(fig.id, function () { draw(fig); });
  });

  // ---------------------------------------------------------------- token views
  function tokenView(root, tv, only) {
    var names = only ? [only] : Object.keys(tv.heads);
    var current = names[0], query = tv.tokens.length - 1, spans = [];
    var bar = el("div", null, "tv-heads");
    var row = el("div", null, "tv-tokens");
    var info = el("div", "", "muted");
    tv.tokens.forEach(function (tok, i) {
      var s = el("span", tok.length ? tok : "\u2205", "tv-tok");
      s.tabIndex = 0;
      s.addEventListener("mouseenter", function () { query = i; paint(); });
      s.addEventListener("focus", function () { query = i; paint(); });
      spans.push(s); row.appendChild(s);
    });
    function paint() {
      var w = (tv.heads[current] || [])[query] || [];
      var best = -1, bestW = -1;
      spans.forEach(function (s, k) {
        var x = k < w.length ? w[k] / 1000 : 0;
        if (x > bestW) { bestW = x; best = k; }
        s.style.background = "rgba(214,39,40," + Math.min(1, Math.max(0, x)).toFixed(3) + ")";
        s.title = "attention from token " + (query + tv.start) + " to token " + (k + tv.start) + ": " + fmt(x);
        s.classList.toggle("q", k === query);
      });
      info.textContent = current + ": query token " + (query + tv.start) + " attends most to token " +
        (best + tv.start) + " (" + fmt(bestW) + "). Hover a token to see what it attends to.";
    }
    if (names.length > 1) {
      bar.appendChild(el("span", "head: "));
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
      root.appendChild(bar);
    }
    if (tv.note) root.appendChild(el("div", tv.note, "muted"));
    root.appendChild(row); root.appendChild(info);
    paint();
  }
  D.token_views.forEach(function (tv) {
    whenVisible(tv.id, function () { tokenView(document.getElementById(tv.id), tv, null); });
  });

  // ---------------------------------------------------------------- head pages
  var panel = document.getElementById("ha-head");
  var body = document.getElementById("ha-head-body");
  function causalText(d, name) {
    var c = d.causal;
    if (c === null) return "no causal check ran";
    if (c.kind === "none") return "no behavioural metric: " + c.note;
    var set = "set: " + signed(c.effect) + " vs random median " + signed(c.random_median) + ", p " + fmt(c.p_value, 2) +
      (c.q_value !== null ? ", q " + fmt(c.q_value, 2) : "");
    var own = c.per_head ? c.per_head[name] : undefined;
    return (own !== undefined && own !== null ? "alone: " + c.metric + " " + signed(own) + "; " : c.metric + " ") + set;
  }
  function labelTable(rows, name, l, h) {
    var wrap = el("div", null, "scroll"), t = el("table"), cg = el("colgroup");
    ["w-det", "w-st", "w-eff", "w-p", "w-p", "w-c"].forEach(function (c) { var x = el("col"); x.className = c; cg.appendChild(x); });
    t.appendChild(cg);
    var hdr = el("tr");
    ["detector (stage)", "status", "effect [95% CI]", "p", "q", "causal check"].forEach(function (c) { hdr.appendChild(el("th", c)); });
    t.appendChild(hdr);
    rows.forEach(function (d) {
      var tr = el("tr"), st = statusOf(d, l, h);
      var a = el("a", d.name); a.href = "#" + d.anchor;
      var td = el("td"); td.appendChild(a); td.appendChild(document.createTextNode(" (" + d.stage + ")"));
      tr.appendChild(td);
      tr.appendChild(el("td", st || "-", st === "confirmed" ? "st-c" : (st === "unconfirmed" ? "st-u" : "st-a")));
      tr.appendChild(el("td", signed(val(d, "effect", l, h)) + " [" + fmt(val(d, "ci_low", l, h)) + ", " +
        fmt(val(d, "ci_high", l, h)) + "]", "num"));
      tr.appendChild(el("td", fmt(val(d, "p_value", l, h), 2), "num"));
      tr.appendChild(el("td", fmt(val(d, "q_value", l, h), 2), "num"));
      tr.appendChild(el("td", causalText(d, name)));
      t.appendChild(tr);
    });
    wrap.appendChild(t);
    return wrap;
  }
  function tokenChip(s) { return el("span", s, "tok"); }
  function writesBlock(name) {
    var box = el("div");
    box.appendChild(el("h3", "What it writes"));
    var w = D.writes ? D.writes.heads[name] : null;
    if (!w) {
      box.appendChild(el("p", D.writes ? "no OV output tokens stored for this head (the scan records them for labelled heads)"
        : D.writes_note, "muted"));
      return box;
    }
    box.appendChild(el("p", D.writes.method, "muted"));
    if (w.self_z !== null) {
      box.appendChild(el("p", "Copying: its source token itself gets z " + signed(w.self_z) + " on average; in the top 10 " +
        "outputs for " + fmt(100 * (w.copy_top10 || 0), 2) + "% of the " + D.writes.n_sources + " sources."));
    }
    var cols = el("div", null, "writes");
    [["promoted", "Top promoted"], ["suppressed", "Top suppressed"]].forEach(function (p) {
      var c = el("div"), t = el("table"), hdr = el("tr");
      c.appendChild(el("b", p[1]));
      ["output token", "z", "from source"].forEach(function (x) { hdr.appendChild(el("th", x)); });
      t.appendChild(hdr);
      w[p[0]].forEach(function (e) {
        var tr = el("tr"), a = el("td"), b = el("td");
        a.appendChild(tokenChip(e[0])); b.appendChild(tokenChip(e[2]));
        tr.appendChild(a); tr.appendChild(el("td", signed(e[1]), "num")); tr.appendChild(b);
        t.appendChild(tr);
      });
      c.appendChild(t); cols.appendChild(c);
    });
    box.appendChild(cols);
    return box;
  }
  function circuitBlock(name) {
    if (!D.circuit || !D.circuit.nodes[name]) return null;
    var box = el("div");
    box.appendChild(el("h3", "In the IOI circuit"));
    box.appendChild(el("p", "roles: " + D.circuit.nodes[name].map(function (r) { return r[0] + " (" + r[1] + ")"; }).join(", ")));
    var ul = el("ul");
    D.circuit.edges.forEach(function (e) {
      if (e[0] !== name && e[1] !== name) return;
      ul.appendChild(el("li", e[0] + " \u2192 " + e[1] + ": " + (e[3] ? "measured, effect " + signed(e[2]) + " logits" :
        "assumed (pattern role), not measured")));
    });
    if (ul.childNodes.length) box.appendChild(ul);
    else box.appendChild(el("p", "no edge to or from this head", "muted"));
    return box;
  }
  function viewsBlock(name, labelled) {
    var box = el("div"), shown = {};
    box.appendChild(el("h3", "Attention on the detectors' example prompts"));
    D.token_views.forEach(function (tv) {
      if (!tv.heads[name]) return;
      shown[tv.det] = true;
      var root = el("div", null, "tv");
      root.appendChild(el("b", tv.det));
      tokenView(root, tv, name);
      box.appendChild(root);
    });
    var missing = labelled.filter(function (d) { return !shown[d.name]; }).map(function (d) { return d.name; });
    if (!Object.keys(shown).length) box.appendChild(el("p", "no token view of this head is stored in the atlas", "muted"));
    if (missing.length) {
      box.appendChild(el("p", "No token view of this head for: " + missing.join(", ") + " (a detector stores its top " +
        "labelled heads' attention on one of its prompts, when it has an example prompt).", "muted"));
    }
    return box;
  }
  function openHead(l, h) {
    l = Number(l); h = Number(h);
    if (!(l >= 0 && l < D.n_layers && h >= 0 && h < D.n_heads)) return false;
    var name = headName(l, h);
    var live = D.detectors.filter(function (d) { return d.skipped === null; });
    var rank = {"confirmed": 0, "attention-defined": 1, "unconfirmed": 2};
    var labelled = live.filter(function (d) { return statusOf(d, l, h); })
      .sort(function (a, b) { return rank[statusOf(a, l, h)] - rank[statusOf(b, l, h)]; });
    var rest = live.filter(function (d) { return !statusOf(d, l, h); });
    body.textContent = "";
    body.appendChild(el("h2", name));
    var stages = {};
    labelled.forEach(function (d) {
      var c = stages[d.stage] = stages[d.stage] || {}, st = statusOf(d, l, h);
      c[st] = (c[st] || 0) + 1;
    });
    body.appendChild(el("p", Object.keys(stages).length ? "labels by stage: " + Object.keys(stages).map(function (s) {
      return s + " (" + D.stages[s] + "): " + Object.keys(stages[s]).map(function (st) {
        return stages[s][st] + " " + st; }).join(", "); }).join("; ") : "no label: this head is in no stage"));
    body.appendChild(el("h3", "Labels"));
    if (labelled.length) body.appendChild(labelTable(labelled, name, l, h));
    else body.appendChild(el("p", "no detector labelled this head", "muted"));
    var c = circuitBlock(name);
    if (c) body.appendChild(c);
    body.appendChild(writesBlock(name));
    body.appendChild(viewsBlock(name, labelled));
    var det = el("details");
    det.appendChild(el("summary", "Every other detector (" + rest.length + ")"));
    det.appendChild(labelTable(rest, name, l, h));
    body.appendChild(det);
    panel.hidden = false;
    panel.setAttribute("data-head", name);
    panel.scrollTop = 0;
    return true;
  }
  window.headatlasShowHead = openHead;
  function route() {
    var m = /^#L(\d+)H(\d+)$/.exec(location.hash);
    if (m) { openHead(m[1], m[2]); return; }
    panel.hidden = true;
    var target = location.hash.length > 1 ? document.getElementById(location.hash.slice(1)) : null;
    if (target && target.tagName === "DETAILS") { target.open = true; target.scrollIntoView(); }
  }
  document.getElementById("ha-head-close").addEventListener("click", function () {
    panel.hidden = true;
    try { history.replaceState(null, "", location.href.split("#")[0]); } catch (e) { /* the hash stays; links still work */ }
  });
  document.addEventListener("click", function (ev) {   // a link to the head already in the address bar reopens it
    var a = ev.target && ev.target.closest ? ev.target.closest("a") : null;
    var m = a ? /^#L(\d+)H(\d+)$/.exec(a.getAttribute("href") || "") : null;
    if (m && location.hash === a.getAttribute("href")) openHead(m[1], m[2]);
  });
  document.getElementById("ha-lookup").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var m = /^\s*L(\d+)\s*H(\d+)\s*$/i.exec(document.getElementById("ha-lookup-input").value);
    var ok = m && Number(m[1]) < D.n_layers && Number(m[2]) < D.n_heads;
    document.getElementById("ha-lookup-msg").textContent = ok ? "" : "no such head: use L<layer>H<head>, e.g. L0H0";
    if (ok) {
      var name = headName(Number(m[1]), Number(m[2]));
      if (location.hash === "#" + name) openHead(m[1], m[2]); else location.hash = name;
    }
  });
  window.addEventListener("hashchange", route);
  route();
  document.body.setAttribute("data-ready", "1");
})();
