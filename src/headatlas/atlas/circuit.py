"""Circuits read from an atlas: which labelled heads play which role, and the measured sender -> receiver
edges between them (:meth:`headatlas.Atlas.circuit`). No torch: an atlas read from JSON is enough.

The IOI circuit (Wang et al. 2022, arXiv 2211.00593), upstream to downstream:

- pattern roles (detected by attention-pattern scores, no edge measured): ``previous_token`` ->
  ``induction`` -> and ``duplicate_token`` -> (at S2) the S-inhibition heads; at most :data:`MAX_PATTERN_NODES`
  heads per pattern role (lowest q first) are shown; their edges are drawn as *unmeasured* (``measured=False``,
  ``effect=None``): they say where the paper puts them, not what this atlas measured;
- ``s_inhibition`` -> ``name_mover``: measured by path patching from each S-inhibition head to each name mover's
  queries (``s_inhibition`` ``details["edges"]``: the drop of logit(IO) - logit(S), logits);
- ``negative_name_mover``: nodes only (their inputs were not path-patched).

:func:`circuit_svg` draws a circuit as inline SVG (server-side, no script): one column per layer, one node
per head, measured edges solid with width by effect, unmeasured ones dashed; every string is escaped.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from .htmlsafe import esc

if TYPE_CHECKING:
    from .atlas import Atlas

CIRCUITS = ("ioi",)
IOI_DETECTORS = ("name_mover", "negative_name_mover", "s_inhibition", "mover")
OLD_NAMES = {"name_mover": "mover"}   # atlases scanned before the rename hold the name movers as "mover"
IOI_PATTERN_ROLES = ("previous_token", "duplicate_token", "induction")
IOI_ROLES = IOI_PATTERN_ROLES + ("s_inhibition", "name_mover", "negative_name_mover")
MAX_PATTERN_NODES = 6
ROLE_COLORS = {"previous_token": "#9e9e9e", "duplicate_token": "#8c6d31", "induction": "#7b4173",
               "s_inhibition": "#d62728", "name_mover": "#2ca02c", "negative_name_mover": "#1f77b4"}
ROLE_SHORT = {"previous_token": "prev", "duplicate_token": "dup", "induction": "ind", "s_inhibition": "S-inh",
              "name_mover": "NM", "negative_name_mover": "neg NM"}


@dataclass(frozen=True)
class CircuitNode:
    """One head of the circuit: ``roles`` (detector names, upstream first), per role its ``effects`` (the
    detector's effect, in its own units) and ``q`` values; ``measured`` is False when every role comes from an
    attention-pattern detector."""

    head: str
    layer: int
    index: int
    roles: tuple[str, ...]
    effects: dict[str, float]
    q: dict[str, float]
    measured: bool


@dataclass(frozen=True)
class CircuitEdge:
    """``sender`` -> ``receiver`` (head names). ``effect``: the measured path effect (logits; ``None`` when
    unmeasured), ``via`` the receiver's input it enters (``"q"``), ``source`` the detector that measured it or
    the reason it is drawn without a measurement."""

    sender: str
    receiver: str
    effect: float | None
    measured: bool
    via: str
    source: str


@dataclass
class Circuit:
    """A circuit of one atlas: ``nodes`` (one per head), ``edges``, and ``missing``: role -> why it has no
    node (the detector is not in the atlas, was skipped, or labelled nothing)."""

    name: str
    model: str
    nodes: list[CircuitNode]
    edges: list[CircuitEdge]
    missing: dict[str, str] = field(default_factory=dict)

    def role(self, role: str) -> list[str]:
        """Head names that play ``role``."""
        return [n.head for n in self.nodes if role in n.roles]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model, "nodes": [asdict(n) for n in self.nodes],
                "edges": [asdict(e) for e in self.edges], "missing": dict(self.missing)}

    def __repr__(self) -> str:
        roles = ", ".join(f"{r}: {len(self.role(r))}" for r in IOI_ROLES if self.role(r))
        return (f"Circuit({self.name!r}, {len(self.nodes)} heads ({roles or 'none'}), "
                f"{sum(e.measured for e in self.edges)} measured edges)")


def _hname(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def _parse(name: str) -> tuple[int, int] | None:
    try:
        a, b = str(name)[1:].split("H")
        return int(a), int(b)
    except (ValueError, IndexError):
        return None


def build_circuit(atlas: "Atlas", name: str) -> Circuit:
    """The circuit ``name`` (one of :data:`CIRCUITS`) of ``atlas``; :class:`InputError` for an unknown name or
    an atlas that holds none of the circuit's detectors."""
    if not isinstance(name, str) or name.lower() not in CIRCUITS:
        raise InputError(f"unknown circuit {name!r}; known circuits: {', '.join(CIRCUITS)}")
    held = set(atlas.detectors)
    if not held & set(IOI_DETECTORS):
        raise InputError(f"this atlas holds none of the IOI detectors ({', '.join(IOI_DETECTORS[:3])}); scan with them "
                         "(e.g. detectors='name_mover,negative_name_mover,s_inhibition')")
    roles_of: dict[tuple[int, int], list[str]] = {}
    effects: dict[tuple[int, int], dict[str, float]] = {}
    qs: dict[tuple[int, int], dict[str, float]] = {}
    missing: dict[str, str] = {}
    for role in IOI_ROLES:
        source = role if role in held else OLD_NAMES.get(role, role)
        if source not in held:
            missing[role] = "not in this atlas"
            continue
        r = atlas.result(source)
        if r.skipped:
            missing[role] = f"skipped: {r.skipped}"
            continue
        heads = [(int(a), int(b)) for a, b in r.labelled]
        if role in IOI_PATTERN_ROLES:
            heads = heads[:MAX_PATTERN_NODES]
        if not heads:
            missing[role] = "none labelled"
        for lh in heads:
            roles_of.setdefault(lh, []).append(role)
            effects.setdefault(lh, {})[role] = float(r.effect[lh])
            qs.setdefault(lh, {})[role] = float(r.q_value[lh])
    nodes = [CircuitNode(head=_hname(*lh), layer=lh[0], index=lh[1], roles=tuple(roles_of[lh]), effects=effects[lh],
                         q=qs[lh], measured=any(ro not in IOI_PATTERN_ROLES for ro in roles_of[lh]))
             for lh in sorted(roles_of)]
    return Circuit(name="ioi", model=atlas.model_name, nodes=nodes, edges=_ioi_edges(atlas, nodes), missing=missing)


def _ioi_edges(atlas: "Atlas", nodes: list[CircuitNode]) -> list[CircuitEdge]:
    by_role = {role: [n for n in nodes if role in n.roles] for role in IOI_ROLES}
    present = {n.head for n in nodes}
    edges: list[CircuitEdge] = []
    if "s_inhibition" in atlas.detectors and not atlas.result("s_inhibition").skipped:
        for e in atlas.result("s_inhibition").details.get("edges", []) or []:
            if not isinstance(e, dict):
                continue
            s, r = str(e.get("sender", "")), str(e.get("receiver", ""))
            try:
                eff = float(e.get("effect"))
            except (TypeError, ValueError):
                continue
            if s in present and r in present and math.isfinite(eff):
                edges.append(CircuitEdge(s, r, eff, True, str(e.get("via", "q")), "s_inhibition path patching"))
    unmeasured = "pattern role: where Wang et al. place it, not measured here"
    for up, down in (("previous_token", "induction"), ("duplicate_token", "s_inhibition"), ("induction", "s_inhibition")):
        for a in by_role[up]:
            for b in by_role[down]:
                if a.layer < b.layer:
                    edges.append(CircuitEdge(a.head, b.head, None, False, "", unmeasured))
    return edges


# ---------------------------------------------------------------- drawing
_W_COL, _H_ROW, _R, _PAD = 92, 46, 15, 34


def circuit_svg(c: Circuit) -> str:
    """The circuit as an inline ``<svg>`` (no script; every string escaped); ``""`` when it has no node."""
    if not c.nodes:
        return ""
    layers = sorted({n.layer for n in c.nodes})
    col = {layer: i for i, layer in enumerate(layers)}
    rows: dict[int, int] = {}
    pos: dict[str, tuple[float, float]] = {}
    for n in sorted(c.nodes, key=lambda n: (n.layer, n.index)):
        k = rows.get(n.layer, 0)
        rows[n.layer] = k + 1
        pos[n.head] = (_PAD + col[n.layer] * _W_COL + _R, _PAD + 14 + k * _H_ROW + _R)
    width = _PAD * 2 + len(layers) * _W_COL
    height = _PAD * 2 + 14 + max(rows.values()) * _H_ROW
    top = max((abs(e.effect) for e in c.edges if e.effect is not None), default=0.0) or 1.0
    parts = [f'<svg class="circuit" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(c.name)} circuit">',
             '<defs><marker id="ha-arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" '
             'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/></marker></defs>']
    for layer in layers:
        x = _PAD + col[layer] * _W_COL + _R
        parts.append(f'<text x="{x}" y="{_PAD - 8}" text-anchor="middle" font-size="11" fill="#555">L{int(layer)}</text>')
    for e in c.edges:
        if e.sender not in pos or e.receiver not in pos:
            continue
        (x1, y1), (x2, y2) = pos[e.sender], pos[e.receiver]
        dx, dy = x2 - x1, y2 - y1
        d = math.hypot(dx, dy) or 1.0
        x1, y1, x2, y2 = x1 + dx / d * _R, y1 + dy / d * _R, x2 - dx / d * _R, y2 - dy / d * _R
        if e.measured and e.effect is not None:
            w = 1.0 + 4.0 * min(1.0, abs(e.effect) / top)
            color = "#d62728" if e.effect >= 0 else "#1f77b4"
            tip = f"{e.sender} -> {e.receiver} via {e.via}: effect {e.effect:.3g} logits ({e.source})"
            dash = ""
        else:
            w, color, dash = 1.0, "#999", ' stroke-dasharray="4 3"'
            tip = f"{e.sender} -> {e.receiver}: {e.source}"
        parts.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{color}" '
                     f'stroke-width="{w:.2f}"{dash} marker-end="url(#ha-arrow)"><title>{esc(tip)}</title></line>')
    for n in c.nodes:
        x, y = pos[n.head]
        main = n.roles[-1]
        fill = ROLE_COLORS.get(main, "#777")
        tip = "; ".join(f"{r}: effect {n.effects.get(r, float('nan')):.3g}, q {n.q.get(r, float('nan')):.2g}"
                        for r in n.roles)
        dash = "" if n.measured else ' stroke-dasharray="3 2"'
        parts.append(f'<g><title>{esc(n.head)}: {esc(tip)}</title>'
                     f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{_R}" fill="{fill}" fill-opacity="0.85" stroke="#333"{dash}/>'
                     f'<text x="{x:.1f}" y="{y + 4:.1f}" text-anchor="middle" font-size="9" fill="#fff">{esc(n.head)}</text>'
                     f'<text x="{x:.1f}" y="{y + _R + 10:.1f}" text-anchor="middle" font-size="9" fill="#333">'
                     f'{esc("/".join(ROLE_SHORT.get(r, r) for r in n.roles))}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def circuit_section(atlas: "Atlas") -> str:
    """The report's IOI circuit section (``""`` when the atlas holds none of the IOI detectors)."""
    if not set(atlas.detectors) & set(IOI_DETECTORS):
        return ""
    c = build_circuit(atlas, "ioi")
    legend = " ".join(f'<span style="color:{ROLE_COLORS[r]}">&#9679;</span> {esc(r)}' for r in IOI_ROLES)
    rows = "".join(f"<tr><td>{esc(e.sender)}</td><td>{esc(e.receiver)}</td><td>{esc(e.via)}</td>"
                   f"<td>{e.effect:.3g}</td></tr>" for e in c.edges if e.measured and e.effect is not None)
    table = (f"<table><tr><th>sender</th><th>receiver</th><th>via</th><th>effect (logits)</th></tr>{rows}</table>"
             if rows else "<p class='muted'>no measured sender -> receiver edge.</p>")
    missing = "".join(f"<li>{esc(r)}: {esc(why)}</li>" for r, why in c.missing.items())
    svg = circuit_svg(c) or "<p class='none'>no IOI role was labelled on this model.</p>"
    return (f"<h2 id='ioi-circuit'>IOI circuit</h2><p class='muted'>Heads by role (Wang et al. 2022), one column per "
            "layer. Solid arrows: measured path-patching effects (S-inhibition head -> name mover's queries; drop of "
            "logit(IO) - logit(S), width by size); dashed: pattern roles placed where the paper puts them, not "
            f"measured. Hover a node or arrow for its numbers.</p><p>{legend}</p>{svg}{table}"
            + (f"<p class='muted'>Roles without heads:</p><ul>{missing}</ul>" if missing else ""))
