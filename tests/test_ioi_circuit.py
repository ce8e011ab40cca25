"""Atlas.circuit("ioi") and its HTML drawing, on hand-made atlases (no model): roles, measured and unmeasured
edges, label statuses, missing roles, unknown names, JSON round trip, escaping, routing that never crosses a box,
fixed-size arrowheads, nothing drawn without a measured edge, no torch import."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from headatlas.atlas import Atlas, DetectorMeta
from headatlas.atlas.circuit import IOI_ROLES, MAX_PATTERN_NODES, Circuit, CircuitEdge, CircuitNode
from headatlas.atlas.circuit_draw import circuit_svg, graph, layout, route
from headatlas.atlas.records import DetectorResult, LabelRule, skipped_result
from headatlas.errors import InputError

L, H = 5, 3
BAD = "<img src=x onerror=alert(1)>"
STAGE = {"previous_token": "ICI", "duplicate_token": "ICI", "induction": "LR", "s_inhibition": "LR",
         "name_mover": "ICI", "negative_name_mover": "ICI"}


def _result(name: str, planted: dict[tuple[int, int], float], details: dict | None = None) -> DetectorResult:
    effect = np.zeros((L, H))
    q = np.ones((L, H))
    for lh, v in planted.items():
        effect[lh], q[lh] = v, 1e-3
    z = np.zeros((L, H))
    return DetectorResult(name=name, scores=effect.copy(), null_mean=z, null_std=z + 0.1, effect=effect,
                          ci_low=effect - 0.1, ci_high=effect + 0.1, p_value=np.where(q < 1, 1e-4, 0.5), q_value=q,
                          stability=z, labelled=sorted(planted, key=lambda lh: -abs(planted[lh])),
                          rule=LabelRule(statistic="s", direction="less" if "negative" in name else "greater"),
                          data_description="d", null_description="n", n_prompts=16, seed=0, n_null=999,
                          details=details or {})


EDGES = [{"sender": "L1H2", "receiver": "L3H0", "effect": 0.42, "via": "q"},
         {"sender": "L2H0", "receiver": "L3H0", "effect": -0.05, "via": "q"},
         {"sender": "L2H0", "receiver": "L9H9", "effect": 1.0, "via": "q"},      # receiver not a node: dropped
         {"sender": "L1H2", "receiver": "L3H0", "effect": "nan?", "via": "q"}]  # not a number: dropped


def make_atlas(*, skip_negative: str = "", via: str = "q", only: tuple[str, ...] = IOI_ROLES) -> Atlas:
    edges = [dict(e, via=via) for e in EDGES]
    res = {"previous_token": _result("previous_token", {(0, 0): 0.5}),
           "duplicate_token": _result("duplicate_token", {(0, 1): 0.4, (2, 2): 0.3}),
           "induction": _result("induction", {(1, 1): 0.6}),
           "s_inhibition": _result("s_inhibition", {(1, 2): 0.5, (2, 0): 0.2},
                                   details={"edges": edges, "receivers": ["L3H0"]}),
           "name_mover": _result("name_mover", {(3, 0): 1.2}),
           "negative_name_mover": (skipped_result("negative_name_mover", L, H, skip_negative, 0) if skip_negative
                                   else _result("negative_name_mover", {(3, 1): -0.8, (4, 2): -0.3}))}
    res = {k: v for k, v in res.items() if k in only}
    meta = {k: DetectorMeta(k, STAGE[k], method="m", summary="s", citation="c") for k in res}
    return Atlas({"name": "toy", "n_layers": L, "n_heads": H}, res, meta)


def test_ioi_circuit_roles_and_edges():
    c = make_atlas().circuit("ioi")
    assert c.role("name_mover") == ["L3H0"]
    assert c.role("negative_name_mover") == ["L3H1", "L4H2"]
    assert c.role("s_inhibition") == ["L1H2", "L2H0"]
    assert c.role("duplicate_token") == ["L0H1", "L2H2"] and c.role("induction") == ["L1H1"]
    measured = {(e.sender, e.receiver): e.effect for e in c.edges if e.measured}
    assert measured == {("L1H2", "L3H0"): 0.42, ("L2H0", "L3H0"): -0.05}
    unmeasured = {(e.sender, e.receiver) for e in c.edges if not e.measured}
    # pattern roles feed later S-inhibition heads (dup L2H2 is not before L2H0 nor L1H2): dashed, no effect
    assert unmeasured == {("L0H0", "L1H1"), ("L0H1", "L1H2"), ("L0H1", "L2H0"), ("L1H1", "L2H0")}
    assert all(e.effect is None for e in c.edges if not e.measured)
    node = {n.head: n for n in c.nodes}
    assert node["L3H1"].effects == {"negative_name_mover": -0.8} and node["L0H0"].measured is False
    assert node["L3H0"].q["name_mover"] == pytest.approx(1e-3)
    assert c.missing == {} and "measured edges" in repr(c)


def test_pattern_roles_are_capped_and_missing_roles_are_reported():
    a = make_atlas(skip_negative="prompts too long", only=("name_mover", "negative_name_mover", "induction"))
    c = a.circuit("ioi")
    assert c.missing["negative_name_mover"] == "skipped: prompts too long"
    assert c.missing["s_inhibition"] == "not in this atlas" and c.edges == []
    assert MAX_PATTERN_NODES >= 1


def test_unknown_circuit_and_atlas_without_ioi_detectors():
    with pytest.raises(InputError, match="known circuits: ioi"):
        make_atlas().circuit("docstring")
    with pytest.raises(InputError, match="known circuits"):
        make_atlas().circuit(3)
    with pytest.raises(InputError, match="none of the IOI detectors"):
        make_atlas(only=("induction", "previous_token")).circuit("ioi")


def test_atlas_from_before_the_rename_reads_mover_as_name_mover():
    a = make_atlas(only=("name_mover",))
    r = a.result("name_mover")
    r.name = "mover"
    old = Atlas({"name": "toy", "n_layers": L, "n_heads": H}, {"mover": r},
                {"mover": DetectorMeta("mover", "ICI", method="m", summary="s", citation="c")})
    c = old.circuit("ioi")
    assert c.role("name_mover") == ["L3H0"] and c.missing["s_inhibition"] == "not in this atlas"


def test_circuit_survives_json_round_trip():
    a = make_atlas()
    b = Atlas.from_dict(a.to_dict())
    assert b.circuit("ioi").to_dict() == a.circuit("ioi").to_dict()


def test_html_draws_the_circuit_escaped_and_only_with_ioi_detectors():
    html = make_atlas(via=BAD).to_html()
    assert "id='ioi-circuit'" in html and "<svg class=\"circuit\"" in html
    for head in ("L3H0", "L3H1", "L4H2", "L1H2", "L2H0", "L0H1", "L1H1"):
        assert f">{head}</text>" in html
    assert "0.42" in html and BAD not in html and "&lt;img src=x" in html
    skipped = make_atlas(skip_negative=BAD).to_html()
    assert BAD not in skipped and "skipped: &lt;img" in skipped
    assert "ioi-circuit" not in make_atlas(only=("induction", "previous_token")).to_html()
    svg = circuit_svg(make_atlas().circuit("ioi"))
    # one box per head of a measured role, one group box per pattern role; 4 assumed edges (dashed), 2 measured
    assert svg.count('<g class="node"') == 5 and svg.count('<g class="node group"') == 3 and "<script" not in svg
    assert svg.count('class="edge assumed"') == 4 and svg.count('stroke-dasharray="5 4"') == 4
    assert svg.count('class="edge pos"') == 1 and svg.count('class="edge neg"') == 1
    # fixed-size arrowheads: marker size in user units, whatever the stroke width
    assert svg.count('markerUnits="userSpaceOnUse"') == 3 and 'href="#L3H0"' in svg


def test_nodes_carry_label_status_and_boxes_show_it():
    a = make_atlas()
    c = a.circuit("ioi")
    for n in c.nodes:
        assert set(n.status) == set(n.roles)
        assert all(st == a.label_status(r, n.layer, n.index) for r, st in n.status.items())
    svg = circuit_svg(c)
    for n in c.nodes:
        if n.measured:
            assert f'data-head="{n.head}" data-status="{n.best_status}"' in svg


def test_nothing_is_drawn_without_a_measured_edge_and_the_page_says_so():
    html = make_atlas(only=("name_mover", "negative_name_mover", "induction", "previous_token")).to_html()
    section = html[html.index("id='ioi-circuit'"):html.index('id="detectors"')]
    assert "<svg" not in section and "No edge of this circuit was measured" in section
    assert "not in this atlas" in section and "L3H0" in section    # the roles are still listed


def _crossings(c: Circuit) -> int:
    nodes, edges = graph(c)
    boxes = layout(nodes)
    hits = 0
    for _, pts in route(nodes, edges):
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            for t in np.linspace(0, 1, 41):
                hits += sum(b.contains(x0 + (x1 - x0) * t, y0 + (y1 - y0) * t) for b in boxes.values())
    return hits


def test_routed_edges_never_cross_a_box():
    c = make_atlas().circuit("ioi")
    assert len(route(*graph(c))) == 6 and _crossings(c) == 0
    rng = np.random.default_rng(0)
    for trial in range(30):   # random circuits: many heads per layer, edges skipping many columns
        heads = {(int(la), int(h)) for la, h in zip(rng.integers(0, 12, 25), rng.integers(0, 8, 25))}
        roles = ["s_inhibition", "name_mover", "negative_name_mover", "previous_token", "duplicate_token", "induction"]
        nodes = [CircuitNode(f"L{la}H{h}", la, h, (roles[int(rng.integers(0, 6))],), {}, {}, True, {})
                 for la, h in sorted(heads)]
        nodes = [CircuitNode(n.head, n.layer, n.index, n.roles, {}, {}, n.roles[0] in roles[:3], {}) for n in nodes]
        edges = [CircuitEdge(a.head, b.head, float(rng.normal()), True, "q", "test")
                 for a in nodes for b in nodes if a.layer < b.layer and rng.random() < 0.15]
        edges += [CircuitEdge(a.head, b.head, None, False, "", "pattern") for a in nodes for b in nodes
                  if a.layer < b.layer and not a.measured and rng.random() < 0.2]
        c = Circuit("ioi", "toy", nodes, edges)
        assert _crossings(c) == 0, f"trial {trial}"


def test_circuit_module_imports_no_torch():
    code = ("import sys, headatlas.atlas.circuit as c; from headatlas.atlas import Atlas; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
