"""Atlas.circuit("ioi") and its HTML drawing, on hand-made atlases (no model): roles, measured and unmeasured
edges, missing roles, unknown names, JSON round trip, escaping, no torch import."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from headatlas.atlas import Atlas, DetectorMeta
from headatlas.atlas.circuit import IOI_ROLES, MAX_PATTERN_NODES, circuit_svg
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
    assert svg.count("<circle") == 9 and svg.count('stroke-dasharray="4 3"') == 4 and "<script" not in svg


def test_circuit_module_imports_no_torch():
    code = ("import sys, headatlas.atlas.circuit as c; from headatlas.atlas import Atlas; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
