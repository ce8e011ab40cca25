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

Each node carries the status of each of its roles' labels (confirmed / unconfirmed / attention-defined, from
``Atlas.label_status``). :mod:`headatlas.atlas.circuit_draw` draws a circuit as inline SVG.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import InputError
from .protocols import AtlasLike

CIRCUITS = ("ioi",)
IOI_DETECTORS = ("name_mover", "negative_name_mover", "s_inhibition", "mover")
OLD_NAMES = {"name_mover": "mover"}   # atlases scanned before the rename hold the name movers as "mover"
IOI_PATTERN_ROLES = ("previous_token", "duplicate_token", "induction")
IOI_ROLES = IOI_PATTERN_ROLES + ("s_inhibition", "name_mover", "negative_name_mover")
# where Wang et al. put the pattern roles: (upstream role, downstream role), drawn as unmeasured edges
PATTERN_FLOW = (("previous_token", "induction"), ("duplicate_token", "s_inhibition"), ("induction", "s_inhibition"))
MAX_PATTERN_NODES = 6
ROLE_COLORS = {"previous_token": "#9e9e9e", "duplicate_token": "#8c6d31", "induction": "#7b4173",
               "s_inhibition": "#d62728", "name_mover": "#2ca02c", "negative_name_mover": "#1f77b4"}
ROLE_SHORT = {"previous_token": "prev", "duplicate_token": "dup", "induction": "ind", "s_inhibition": "S-inh",
              "name_mover": "NM", "negative_name_mover": "neg NM"}


@dataclass(frozen=True)
class CircuitNode:
    """One head of the circuit: ``roles`` (detector names, upstream first), per role its ``effects`` (the
    detector's effect, in its own units), ``q`` values and label ``status``; ``measured`` is False when every role
    comes from an attention-pattern detector."""

    head: str
    layer: int
    index: int
    roles: tuple[str, ...]
    effects: dict[str, float]
    q: dict[str, float]
    measured: bool
    status: dict[str, str] = field(default_factory=dict)

    @property
    def best_status(self) -> str:
        """The strongest status among its roles: confirmed, then attention-defined, then unconfirmed."""
        for s in ("confirmed", "attention-defined"):
            if s in self.status.values():
                return s
        return "unconfirmed"


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


def build_circuit(atlas: AtlasLike, name: str) -> Circuit:
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
    status: dict[tuple[int, int], dict[str, str]] = {}
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
            status.setdefault(lh, {})[role] = str(atlas.label_status(source, *lh) or "unconfirmed")
    nodes = [CircuitNode(head=_hname(*lh), layer=lh[0], index=lh[1], roles=tuple(roles_of[lh]), effects=effects[lh],
                         q=qs[lh], measured=any(ro not in IOI_PATTERN_ROLES for ro in roles_of[lh]), status=status[lh])
             for lh in sorted(roles_of)]
    return Circuit(name="ioi", model=atlas.model_name, nodes=nodes, edges=_ioi_edges(atlas, nodes), missing=missing)


def _ioi_edges(atlas: AtlasLike, nodes: list[CircuitNode]) -> list[CircuitEdge]:
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
    for up, down in PATTERN_FLOW:
        for a in by_role[up]:
            for b in by_role[down]:
                if a.layer < b.layer:
                    edges.append(CircuitEdge(a.head, b.head, None, False, "", unmeasured))
    return edges
