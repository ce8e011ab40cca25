"""Detector options (issue 19): declared per detector, checked before a scan starts, listed by the CLI.

Static: every key a detector module reads from ``cfg.options`` is declared by a registered detector (the source is
searched, so a new ``cfg.options.get("x")`` without a declaration fails here). Behaviour: values are canonicalised,
relations between options are checked, a declaration may not contradict another detector's, ``--option`` text is
parsed by the declared kind, and ``headatlas detectors [--options]`` lists evidence, metric family and options.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import headatlas.cli
from headatlas.detectors import base
from headatlas.detectors.options import Option, parse_cli_options
from headatlas.errors import InputError, InputTypeError

DETECTORS = Path(base.__file__).parent
READ = re.compile(r"""(?:cfg\.options|opts)(?:\.get\(|\[)\s*["']([a-z_]+)["']""")


def test_every_option_a_detector_reads_is_declared():
    read = {m.group(1) for p in DETECTORS.rglob("*.py") for m in READ.finditer(p.read_text())}
    declared = {o.name for d in base.all_detectors() for o in d.options}
    assert read, "the search found no option reads: the pattern is stale"
    assert read <= declared, f"read but not declared: {sorted(read - declared)}"
    assert declared <= read, f"declared but never read: {sorted(declared - read)}"


def test_values_are_checked_and_canonicalised():
    got = base.check_options({"window": np.int64(4), "block_len": 12}, ["previous_token"])
    assert got == {"window": 4, "block_len": 12} and type(got["window"]) is int
    got = base.check_options({"retrieval_lengths": [300, 200], "min_recall": 1}, ["induction", "retrieval"])
    assert got == {"retrieval_lengths": (300, 200), "min_recall": 1.0}
    assert base.check_options(None, ["induction"]) == {}


@pytest.mark.parametrize("options, detectors, match", [
    ({"windw": 4}, ["induction"], r"unknown option 'windw' \(did you mean 'window'\?\).*retrieval: "),
    ({"mcqa_topic": "colors"}, ["induction"], r"read by amplification, constant, content_gatherer, correct, .*which this scan does not run"),
    ({"window": 3.0}, ["induction"], "must be an integer"),
    ({"window": 99}, ["induction"], r"an integer 1\.\.64, got 99"),
    ({"window": 10, "block_len": 11}, ["induction"], r"block_len' \(11\) must be at least window \+ 2"),
    ({"mover_patching": "fast"}, ["name_mover"], "use attribution, exact, none"),
    ({"mcqa_patching": 0}, ["constant"], "True or False"),
])
def test_bad_values_name_the_option(options, detectors, match):
    with pytest.raises(InputError, match=match):
        base.check_options(options, detectors)


def test_options_of_required_detectors_are_allowed():
    """retrieval requires induction: a scan of retrieval runs induction, so induction's options apply."""
    assert base.check_options({"window": 4}, base.scan_order(["retrieval"])) == {"window": 4}


def test_a_conflicting_declaration_is_refused(monkeypatch):
    d = base.get("induction")
    other = Option("window", "int", 3, "something else", low=1, high=5)
    clash = base.Detector("clash", "ICI", "m", "s", "c", d.run, no_causal="test", evidence="pattern",
                          options=(other,))
    with pytest.raises(InputError, match="declares option 'window' differently"):
        base.register(clash)
    assert "clash" not in base.names()
    with pytest.raises(InputError, match="declares an option twice"):
        base.register(base.Detector("twice", "ICI", "m", "s", "c", d.run, no_causal="t", evidence="pattern",
                                    options=(other, other)))


def test_option_records_check_themselves():
    with pytest.raises(InputError, match="lower_snake_case"):
        Option("Window", "int", 1, "x")
    with pytest.raises(InputError, match="unknown kind"):
        Option("w", "integer", 1, "x")
    with pytest.raises(InputError, match=r"an integer 1\.\.4"):
        Option("w", "int", 9, "x", low=1, high=4)     # the default must satisfy the declaration


def test_cli_text_is_parsed_by_kind():
    dets = base.all_detectors()
    got = parse_cli_options(["window=4", "mcqa_require_skill=no", "retrieval_lengths=200,300", "min_recall=0.25"], dets)
    assert got == {"window": 4, "mcqa_require_skill": False, "retrieval_lengths": (200, 300), "min_recall": 0.25}
    for bad, match in (["window"], "NAME=VALUE"), (["window=x"], "takes an integer"), (["window=1", "window=2"],
                                                                                      "twice"):
        with pytest.raises(InputError, match=match):
            parse_cli_options(bad, dets)
    with pytest.raises(InputTypeError):
        base.check_options({"window": "4"}, ["induction"])   # the Python API never parses strings


def test_detectors_command_lists_evidence_metric_and_options(monkeypatch):
    import headatlas.cli.scan as cli_scan
    from rich.console import Console

    monkeypatch.setattr(cli_scan, "out_console", Console(width=250))   # one line per row: whole cells to search
    runner = CliRunner()
    res = runner.invoke(headatlas.cli.app, ["detectors"])
    assert res.exit_code == 0, res.output
    assert "evidence" in res.stdout and "metric family" in res.stdout and "IOI logit difference" in res.stdout
    res = runner.invoke(headatlas.cli.app, ["detectors", "--options"])
    assert res.exit_code == 0, res.output
    for d in base.all_detectors():
        for o in d.options:
            assert any(d.name in line and o.name in line for line in res.stdout.splitlines()), (d.name, o.name)
    assert "an integer 1..64" in res.stdout and "one of arithmetic, colors" in res.stdout
