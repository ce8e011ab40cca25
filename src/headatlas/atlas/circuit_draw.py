"""The report's drawing of a circuit (:class:`~headatlas.atlas.circuit.Circuit`): inline SVG made here, no script.

Layout: one column per layer that holds a head of a measured role (S-inhibition, name mover, negative name mover),
one box per head, stacked by head index; the heads of each pattern role (previous-token, duplicate-token,
induction: no edge of theirs is measured) share one group box in the columns on the left, so the edges the paper
assumes are drawn once per role, not once per pair of heads. Edges are routed orthogonally so that none can pass
through a box:

- an edge leaves its sender's right side, runs in the gap right of the sender's column (a *channel*, where no box
  is) to a horizontal *lane* (the gap between two rows of boxes, which runs under every column), along that lane
  to the channel left of the receiver's column, and enters the receiver from the left; an edge between
  neighbouring columns needs no lane;
- edges sharing a channel or a lane get their own track (an offset inside the gap), and each box spreads its
  ports over its side, so edges do not sit on top of each other;
- arrowheads have a fixed size (``markerUnits="userSpaceOnUse"``), whatever the edge's width.

Style: box fill by role; outline by the label's status (confirmed solid, unconfirmed dashed and pale,
attention-defined dotted); measured edges solid, width by the size of the effect, red when it is positive, blue
when negative; assumed edges (pattern roles placed where Wang et al. put them, not measured) dashed grey. When no
edge was measured nothing is drawn, and :func:`circuit_section` says so. Every string is escaped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .circuit import (IOI_DETECTORS, IOI_PATTERN_ROLES, IOI_ROLES, PATTERN_FLOW, ROLE_COLORS, ROLE_SHORT, Circuit,
                      build_circuit)
from .htmlsafe import esc
from .protocols import AtlasLike

NODE_W, NODE_H = 70, 32
CHANNEL_W, LANE_H = 64, 28
ROW_H = NODE_H + LANE_H
PAD, TOP = 16, 24 + LANE_H
LINE_H = 12
EDGE_COLORS = {"pos": "#d62728", "neg": "#1f77b4", "assumed": "#8a8a8a"}
NODE_STYLE = {"confirmed": 'stroke="#111" stroke-width="2" fill-opacity="0.92"',
              "unconfirmed": 'stroke="#111" stroke-width="1.5" stroke-dasharray="5 3" fill-opacity="0.35"',
              "attention-defined": 'stroke="#444" stroke-width="1.5" stroke-dasharray="1.5 2.5" fill-opacity="0.65"',
              "group": 'stroke="#777" stroke-width="1.2" stroke-dasharray="5 3" fill-opacity="0.18"'}


@dataclass(frozen=True)
class Box:
    """A box: top-left corner and size, in SVG pixels."""

    x: float
    y: float
    w: float = NODE_W
    h: float = NODE_H

    def contains(self, px: float, py: float, margin: float = 0.5) -> bool:
        """``(px, py)`` strictly inside the box shrunk by ``margin`` (points on the border are outside)."""
        return self.x + margin < px < self.x + self.w - margin and self.y + margin < py < self.y + self.h - margin


@dataclass
class DrawNode:
    """A box of the drawing: one head of a measured role, or one group of pattern-role heads (``heads``)."""

    key: str
    col: int
    row: int
    span: int
    role: str
    status: str
    heads: list[tuple[str, str]]      # (head name, status): one for a head box, the members for a group
    tip: str


@dataclass(frozen=True)
class DrawEdge:
    src: str
    dst: str
    measured: bool
    effect: float | None
    tip: str


def graph(c: Circuit) -> tuple[list[DrawNode], list[DrawEdge]]:
    """The drawing's boxes and edges: heads with a measured role get a box each, in their layer's column; the
    heads of each pattern role (previous-token, duplicate-token, induction) share a group box on the left, and
    the unmeasured edges between heads become edges between those groups and the measured heads."""
    measured = [n for n in c.nodes if n.measured]
    pattern = {r: [n for n in c.nodes if r in n.roles] for r in IOI_PATTERN_ROLES}
    pattern = {r: ns for r, ns in pattern.items() if ns}
    n_group_cols = (1 if "previous_token" in pattern else 0) + (1 if pattern.keys() - {"previous_token"} else 0)
    nodes: list[DrawNode] = []
    rows_used: dict[int, int] = {}
    for role, members in pattern.items():
        col = 0 if role == "previous_token" or n_group_cols == 1 else 1
        lines = 1 + len(members)
        span = max(1, math.ceil((lines * LINE_H + 8 - NODE_H) / ROW_H) + 1)
        row = rows_used.get(col, 0)
        rows_used[col] = row + span
        nodes.append(DrawNode(f"group:{role}", col, row, span, role, "group",
                              [(n.head, n.status.get(role, "unconfirmed")) for n in members],
                              f"{role} heads (pattern role, placed where Wang et al. put it; no edge measured): " +
                              ", ".join(f"{n.head} ({n.status.get(role, '?')})" for n in members)))
    layers = sorted({n.layer for n in measured})
    for n in sorted(measured, key=lambda n: (n.layer, n.index)):
        col = n_group_cols + layers.index(n.layer)
        row = rows_used.get(col, 0)
        rows_used[col] = row + 1
        tip = "; ".join(f"{r} ({n.status.get(r, '?')}): effect {n.effects.get(r, float('nan')):.3g}, "
                        f"q {n.q.get(r, float('nan')):.2g}" for r in n.roles)
        main = next(r for r in reversed(n.roles) if r not in IOI_PATTERN_ROLES)
        nodes.append(DrawNode(n.head, col, row, 1, main, n.best_status, [(n.head, n.best_status)], f"{n.head}: {tip}"))
    keys = {d.key for d in nodes}
    roles = {n.head: n.roles for n in c.nodes}
    edges: dict[tuple[str, str], DrawEdge] = {}
    for e in c.edges:
        if e.measured and e.effect is not None:
            if e.sender in keys and e.receiver in keys:
                edges[(e.sender, e.receiver)] = DrawEdge(e.sender, e.receiver, True, e.effect,
                                                         f"{e.sender} -> {e.receiver} via {e.via}: effect {e.effect:.3g} "
                                                         f"logits ({e.source})")
            continue
        for up, down in PATTERN_FLOW:
            if up in roles.get(e.sender, ()) and down in roles.get(e.receiver, ()):
                dst = f"group:{down}" if down in IOI_PATTERN_ROLES else e.receiver
                src = f"group:{up}"
                if src in keys and dst in keys:
                    edges.setdefault((src, dst), DrawEdge(src, dst, False, None, f"{up} -> {down}: {e.source}"))
    return nodes, list(edges.values())


def layout(nodes: list[DrawNode]) -> dict[str, Box]:
    """Each box's position: column ``col`` at ``PAD + col * (NODE_W + CHANNEL_W)``, row ``row`` at
    ``TOP + row * ROW_H``, ``span`` rows tall (the lanes between rows run under every head column)."""
    return {d.key: Box(PAD + d.col * (NODE_W + CHANNEL_W), TOP + d.row * ROW_H, NODE_W, NODE_H + (d.span - 1) * ROW_H)
            for d in nodes}


def _spread(n: int, lo: float, hi: float) -> list[float]:
    """``n`` positions evenly inside ``(lo, hi)``."""
    return [lo + (hi - lo) * (i + 1) / (n + 1) for i in range(n)]


def route(nodes: list[DrawNode], edges: list[DrawEdge]) -> list[tuple[DrawEdge, list[tuple[float, float]]]]:
    """Each drawable edge (source in an earlier column than its target) with its polyline, source port first."""
    boxes = layout(nodes)
    at = {d.key: d for d in nodes}
    edges = [e for e in edges if e.src in at and e.dst in at and at[e.src].col < at[e.dst].col]
    ports: dict[tuple[int, str], float] = {}
    for side, own, other in (("out", "src", "dst"), ("in", "dst", "src")):
        groups: dict[str, list[tuple[int, DrawEdge]]] = {}
        for i, e in enumerate(edges):
            groups.setdefault(getattr(e, own), []).append((i, e))
        for key, es in groups.items():
            b = boxes[key]
            es.sort(key=lambda ie: (at[getattr(ie[1], other)].row, at[getattr(ie[1], other)].col))
            for (i, _), y in zip(es, _spread(len(es), b.y, b.y + min(b.h, NODE_H + 2 * ROW_H))):
                ports[(i, side)] = y
    channel_users: dict[int, list[int]] = {}
    lane_users: dict[int, list[int]] = {}
    lane_of: dict[int, int] = {}
    for i, e in enumerate(edges):
        s, t = at[e.src], at[e.dst]
        channel_users.setdefault(s.col, []).append(i)
        if t.col > s.col + 1:
            y0, y1 = ports[(i, "out")], ports[(i, "in")]
            mid = (y0 + y1) / 2
            lane_of[i] = max(0, round((mid - TOP + LANE_H / 2) / ROW_H))
            lane_users.setdefault(lane_of[i], []).append(i)
            channel_users.setdefault(t.col - 1, []).append(i)
    track: dict[tuple[int, int], float] = {}
    for ch, users in channel_users.items():
        x0 = PAD + ch * (NODE_W + CHANNEL_W) + NODE_W
        for u, x in zip(users, _spread(len(users), x0 + 8, x0 + CHANNEL_W - 12)):
            track[(u, ch)] = x
    lane_y: dict[int, float] = {}
    for lane, users in lane_users.items():
        mid = TOP + lane * ROW_H - LANE_H / 2
        for u, y in zip(users, _spread(len(users), mid - LANE_H / 2 + 3, mid + LANE_H / 2 - 3)):
            lane_y[u] = y
    out = []
    for i, e in enumerate(edges):
        s, t = at[e.src], at[e.dst]
        y0, y1 = ports[(i, "out")], ports[(i, "in")]
        xs, xe = boxes[e.src].x + boxes[e.src].w, boxes[e.dst].x
        x1 = track[(i, s.col)]
        if i not in lane_of:
            pts = [(xs, y0), (x1, y0), (x1, y1), (xe, y1)]
        else:
            x2 = track[(i, t.col - 1)]
            pts = [(xs, y0), (x1, y0), (x1, lane_y[i]), (x2, lane_y[i]), (x2, y1), (xe, y1)]
        out.append((e, pts))
    return out


def _edge_style(e: DrawEdge, top: float) -> tuple[str, float, str]:
    if e.measured and e.effect is not None:
        return ("pos" if e.effect >= 0 else "neg"), 1.2 + 3.3 * min(1.0, abs(e.effect) / top), ""
    return "assumed", 1.2, ' stroke-dasharray="5 4"'


def _box_svg(d: DrawNode, b: Box) -> str:
    fill = ROLE_COLORS.get(d.role, "#777")
    if d.status == "group":
        lines = [f'<text x="{b.x + 5:.1f}" y="{b.y + LINE_H:.1f}" font-size="9" font-weight="600" fill="#222">'
                 f'{esc(ROLE_SHORT.get(d.role, d.role))} heads</text>']
        for k, (head, status) in enumerate(d.heads):
            cls = "st-c" if status == "confirmed" else ("st-u" if status == "unconfirmed" else "st-a")
            lines.append(f'<a href="#{esc(head)}"><text class="{cls}" x="{b.x + 8:.1f}" y="{b.y + LINE_H * (k + 2):.1f}" '
                         f'font-size="9.5" fill="#222">{esc(head)}</text></a>')
        return (f'<g class="node group" data-role="{esc(d.role)}"><title>{esc(d.tip)}</title><rect x="{b.x:.1f}" '
                f'y="{b.y:.1f}" width="{b.w}" height="{b.h}" rx="4" fill="{fill}" {NODE_STYLE["group"]}/>'
                + "".join(lines) + "</g>")
    ink = "#111" if d.status == "unconfirmed" else "#fff"
    head = d.heads[0][0]
    return (f'<a href="#{esc(head)}"><g class="node" data-head="{esc(head)}" data-status="{esc(d.status)}">'
            f'<title>{esc(d.tip)}</title><rect x="{b.x:.1f}" y="{b.y:.1f}" width="{b.w}" height="{b.h}" rx="4" '
            f'fill="{fill}" {NODE_STYLE.get(d.status, NODE_STYLE["unconfirmed"])}/>'
            f'<text x="{b.x + b.w / 2:.1f}" y="{b.y + 13:.1f}" text-anchor="middle" font-size="10" font-weight="600" '
            f'fill="{ink}">{esc(head)}</text><text x="{b.x + b.w / 2:.1f}" y="{b.y + 25:.1f}" text-anchor="middle" '
            f'font-size="8.5" fill="{ink}">{esc(ROLE_SHORT.get(d.role, d.role))}</text></g></a>')


def circuit_svg(c: Circuit) -> str:
    """The circuit as an inline ``<svg>`` (no script; every string escaped); ``""`` when it has no node."""
    nodes, edges = graph(c)
    if not nodes:
        return ""
    boxes = layout(nodes)
    width = max(b.x + b.w for b in boxes.values()) + PAD
    height = max(b.y + b.h for b in boxes.values()) + LANE_H
    top = max((abs(e.effect) for e in edges if e.effect is not None), default=0.0) or 1.0
    markers = "".join(f'<marker id="ha-arrow-{k}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" '
                      f'markerHeight="8" markerUnits="userSpaceOnUse" orient="auto"><path d="M0,0 L10,5 L0,10 z" '
                      f'fill="{col}"/></marker>' for k, col in EDGE_COLORS.items())
    parts = [f'<svg class="circuit" width="{width:.0f}" height="{height:.0f}" '
             f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="{esc(c.name)} circuit"><defs>{markers}</defs>']
    heads = {n.head: n for n in c.nodes}
    for col in sorted({d.col for d in nodes}):
        first = next(d for d in nodes if d.col == col)
        if first.status == "group":
            if col == 0:
                parts.append(f'<text x="{PAD}" y="16" font-size="11" fill="#555">pattern roles (assumed)</text>')
            continue
        x = PAD + col * (NODE_W + CHANNEL_W) + NODE_W / 2
        parts.append(f'<text x="{x}" y="16" text-anchor="middle" font-size="11" fill="#555">'
                     f'L{heads[first.key].layer}</text>')
    for e, pts in route(nodes, edges):
        kind, w, dash = _edge_style(e, top)
        d = "M" + " L".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        parts.append(f'<path class="edge {kind}" d="{d}" fill="none" stroke="{EDGE_COLORS[kind]}" stroke-width="{w:.2f}"'
                     f'{dash} stroke-linejoin="round" marker-end="url(#ha-arrow-{kind})"><title>{esc(e.tip)}</title></path>')
    for d in nodes:
        parts.append(_box_svg(d, boxes[d.key]))
    parts.append("</svg>")
    return "".join(parts)


def _legend() -> str:
    roles = " ".join(f'<span class="sw" style="background:{ROLE_COLORS[r]}"></span>{esc(r)}' for r in IOI_ROLES)
    return (f"<p class='legend'>{roles}<br>Boxes: <span class='bx c'>confirmed</span> <span class='bx u'>unconfirmed</span> "
            "<span class='bx a'>attention-defined</span> &nbsp; Edges: <span style='color:#d62728'>&#9473;&#9654;</span> "
            "measured, positive (the path carries the IO - S logit difference), <span style='color:#1f77b4'>&#9473;&#9654;"
            "</span> measured, negative; width by size; <span style='color:#8a8a8a'>&#9476;&#9654;</span> assumed (pattern "
            "role placed where Wang et al. put it; not measured).</p>")


def _roles_table(c: Circuit) -> str:
    rows = []
    for role in IOI_ROLES:
        heads = [n for n in c.nodes if role in n.roles]
        cells = ", ".join(f"<a class='hl st-{n.status.get(role, 'unconfirmed')[0]}' href='#{esc(n.head)}'>{esc(n.head)}</a>"
                          f" ({esc(n.status.get(role, '?'))})" for n in heads)
        rows.append(f"<tr><td>{esc(role)}</td><td>{cells or esc(c.missing.get(role, 'none'))}</td></tr>")
    return f"<div class='scroll'><table><tr><th>role</th><th>heads (status)</th></tr>{''.join(rows)}</table></div>"


def circuit_section(atlas: AtlasLike) -> str:
    """The report's IOI circuit section (``""`` when the atlas holds none of the IOI detectors)."""
    if not set(atlas.detectors) & set(IOI_DETECTORS):
        return ""
    c = build_circuit(atlas, "ioi")
    head = ("<h2 id='ioi-circuit'>IOI circuit</h2><p class='muted'>Heads by role (Wang et al. 2022), one column per "
            "layer; measured edges are path-patching effects (S-inhibition head -> name mover's queries: the drop of "
            "logit(IO) - logit(S)). Click a box for that head's page; hover a box or an edge for its numbers.</p>")
    measured = [e for e in c.edges if e.measured and e.effect is not None]
    if not measured:
        why = c.missing.get("s_inhibition", "it labelled heads but recorded no edge")
        return (head + f"<p class='none'>No edge of this circuit was measured (s_inhibition: {esc(why)}), so nothing is "
                "drawn: an unmeasured drawing would only restate where the paper puts the roles.</p>" + _roles_table(c))
    rows = "".join(f"<tr><td>{esc(e.sender)}</td><td>{esc(e.receiver)}</td><td>{esc(e.via)}</td>"
                   f"<td class='num'>{e.effect:.3g}</td></tr>" for e in measured)
    table = (f"<div class='scroll'><table><tr><th>sender</th><th>receiver</th><th>via</th><th>effect (logits)</th></tr>"
             f"{rows}</table></div>")
    return head + _legend() + f"<div class='scroll'>{circuit_svg(c)}</div>" + table + _roles_table(c)


def circuit_page_data(atlas: AtlasLike) -> dict[str, Any] | None:
    """For the head pages: per head its roles with their status, and every edge (sender, receiver, effect or
    None, measured); ``None`` when the atlas holds no IOI detector."""
    if not set(atlas.detectors) & set(IOI_DETECTORS):
        return None
    c = build_circuit(atlas, "ioi")
    return {"nodes": {n.head: [[r, n.status.get(r, "unconfirmed")] for r in n.roles] for n in c.nodes},
            "edges": [[e.sender, e.receiver, e.effect, e.measured] for e in c.edges]}
