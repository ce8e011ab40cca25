"""``headatlas patch|ablate|steer`` end to end on a tiny model saved to a folder."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from headatlas.cli import app
from tiny import save_tiny_folder

runner = CliRunner()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    save_tiny_folder(path, "llama")
    return str(path)


def test_patch_writes_heatmap_and_json(folder, tmp_path):
    res = runner.invoke(app, ["patch", folder, "--clean", "t5 t6 t7 t8", "--corrupted", "t9 t6 t7 t8",
                              "--answer", "t3", "--wrong", "t4", "--no-normalize", "--out", str(tmp_path), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "patching.json").read_text())
    assert len(data["values"]) == 3 and len(data["values"][0]) == 4
    assert (tmp_path / "patching.html").stat().st_size > 1000


def test_patch_reports_clear_errors(folder, tmp_path):
    res = runner.invoke(app, ["patch", folder, "--clean", "t5 t6 t7", "--corrupted", "t9 t6", "--answer", "t3",
                              "--wrong", "t4", "--out", str(tmp_path), "--device", "cpu"])
    assert res.exit_code == 2 and "same length" in res.output


def test_ablate_and_steer(folder):
    res = runner.invoke(app, ["ablate", folder, "--heads", "1.2,L2H0", "--prompt", "t5 t6 t7 t8", "--answer", "t3",
                              "--wrong", "t4", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "loss" in res.output and "logit_diff" in res.output
    bad = runner.invoke(app, ["ablate", folder, "--heads", "1.9", "--prompt", "t5 t6", "--device", "cpu"])
    assert bad.exit_code == 2 and "out of range" in bad.output
    res = runner.invoke(app, ["steer", folder, "--heads", "1.1", "--positive", "t5 t6 t7", "--negative", "t9 t10",
                              "--prompt", "t5 t6", "--alpha", "2", "--max-new-tokens", "3", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "+2" in res.output and "-2" in res.output
