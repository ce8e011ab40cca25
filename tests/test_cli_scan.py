"""``headatlas scan | detectors | report`` through typer's CliRunner, on a tiny model saved to a
folder (a real, saveable tokenizer) and fake detectors registered for the test."""

from __future__ import annotations

import json

import pytest
from atlas_fakes import CALLS, fake_registry  # noqa: F401  (fixture)
from tiny import save_tiny_folder
from typer.testing import CliRunner

from headatlas import Atlas
from headatlas.cli import app
from headatlas.cli import scan as cli_scan

runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny-llama"
    save_tiny_folder(path, "llama")
    return path


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    monkeypatch.setattr(cli_scan.out_console, "width", 200)
    monkeypatch.setattr(cli_scan.console, "width", 200)


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_scan_writes_atlas_and_prints_summary(model_dir, tmp_path, fake_registry):
    out = tmp_path / "out"
    res = invoke("scan", model_dir, "--detectors", "fake_prev,fake_skip,fake_planted", "--out", out, "--quick",
                 "--seed", 3, "--device", "cpu")
    assert res.exit_code == 0, res.output
    atlas = Atlas.load(out / "atlas.json")
    assert atlas.detectors == ["fake_prev", "fake_skip", "fake_planted"]
    assert atlas.seed == 3 and atlas.settings["quick"] is True
    assert (out / "atlas.html").is_file() and (out / "partial" / "fake_prev.json").is_file()
    rows = {line.split()[0]: line for line in res.stdout.splitlines() if line.strip().startswith("fake_")}
    assert set(rows) == {"fake_prev", "fake_skip", "fake_planted"}       # one line per detector
    assert "skipped" in rows["fake_skip"] and "needs 100000 positions" in rows["fake_skip"]
    assert "none found" in rows["fake_planted"]          # fake_planted without planted scores
    assert "wrote" in res.stderr and "atlas.json" in res.stderr
    # rerun: every detector resumes from out/partial
    CALLS.clear()
    res = invoke("scan", model_dir, "-d", "fake_prev,fake_skip,fake_planted", "-o", out, "--quick", "--seed", 3)
    assert res.exit_code == 0, res.output
    assert CALLS == {} and "resumed" in res.stderr
    res = invoke("scan", model_dir, "-d", "fake_prev", "-o", out, "--quick", "--seed", 3, "--no-resume")
    assert res.exit_code == 0 and CALLS == {"fake_prev": 1}


def test_scan_default_out_folder(model_dir, tmp_path, fake_registry, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = invoke("scan", model_dir, "--detectors", "fake_planted", "--dtype", "float32")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "atlas-tiny-llama" / "atlas.json").is_file()


def test_scan_errors_are_one_line(model_dir, tmp_path, fake_registry):
    res = invoke("scan", model_dir, "--detectors", "fake_prev,nope", "--out", tmp_path)
    assert res.exit_code == 2
    assert "unknown detector 'nope'; available: fake_boom, fake_planted" in res.stderr
    assert "Traceback" not in res.output
    res = invoke("scan", tmp_path / "no-such-model", "--detectors", "fake_prev")
    assert res.exit_code == 2 and "no such file or folder" in res.stderr
    res = invoke("scan", model_dir, "--detectors", "fake_prev", "--batch-size", 0, "--out", tmp_path)
    assert res.exit_code == 2 and "--batch-size" in res.stderr


def test_detectors_lists_the_registry(fake_registry):
    res = invoke("detectors")
    assert res.exit_code == 0, res.output
    for d in fake_registry.values():
        assert d.name in res.stdout and d.method in res.stdout and d.summary in res.stdout
    assert "ICI = In-Context Identification" in res.stdout and "KR = Knowledge Recalling" in res.stdout


def test_detectors_with_empty_registry(monkeypatch):
    from headatlas.detectors import base

    monkeypatch.setattr(base, "_REGISTRY", {})
    res = invoke("detectors")
    assert res.exit_code == 0 and "no detectors are registered" in res.stdout


def test_report_rerenders_and_rejects_bad_files(model_dir, tmp_path, fake_registry):
    out = tmp_path / "out"
    assert invoke("scan", model_dir, "-d", "fake_prev,fake_skip", "-o", out, "--quick").exit_code == 0
    (out / "atlas.html").unlink()
    res = invoke("report", out / "atlas.json")
    assert res.exit_code == 0, res.output
    assert (out / "atlas.html").is_file() and "fake_prev" in res.stdout
    res = invoke("report", out / "atlas.json", "--out", tmp_path / "elsewhere.html")
    assert res.exit_code == 0 and 'id="det-fake_skip"' in (tmp_path / "elsewhere.html").read_text()
    (tmp_path / "broken.json").write_text('{"schema": "headatlas.atlas/1", "mod')
    res = invoke("report", tmp_path / "broken.json")
    assert res.exit_code == 2 and "not valid JSON" in res.stderr
    (tmp_path / "foreign.json").write_text(json.dumps({"hello": "world"}))
    res = invoke("report", tmp_path / "foreign.json")
    assert res.exit_code == 2 and "not a headatlas atlas" in res.stderr


def test_default_out_names():
    assert str(cli_scan.default_out("smollm2-135m")) == "atlas-smollm2-135m"
    assert str(cli_scan.default_out("/models/foo/")) == "atlas-foo"
    assert str(cli_scan.default_out("x/model.Q4.gguf")) == "atlas-model.Q4"
    assert str(cli_scan.default_out("HuggingFaceTB/SmolLM2-135M")) == "atlas-SmolLM2-135M"


def test_interrupt_keeps_partial_results(model_dir, tmp_path, fake_registry):
    from headatlas.detectors import base

    def interrupted(m, cfg):
        raise KeyboardInterrupt

    fake_registry["fake_ctrl_c"] = base.Detector("fake_ctrl_c", "ICI", "m", "s", "c", interrupted)
    res = invoke("scan", model_dir, "-d", "fake_planted,fake_ctrl_c", "-o", tmp_path, "--quick")
    assert res.exit_code == 130 and "run the same command again to resume" in res.stderr
    assert (tmp_path / "partial" / "fake_planted.json").is_file() and not (tmp_path / "atlas.json").exists()
    CALLS.clear()
    del fake_registry["fake_ctrl_c"]
    assert invoke("scan", model_dir, "-d", "fake_planted", "-o", tmp_path, "--quick").exit_code == 0
    assert CALLS == {}   # resumed
