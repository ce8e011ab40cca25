"""``headatlas.sweep`` / ``headatlas sweep`` on a local Ray cluster (one per module: Ray starts in ~10 s).

The models are tiny random Llamas saved as two checkpoints of one training run (a folder of
checkpoint sub-folders, named so that natural order differs from string order), under a folder
whose name carries ``<script>`` (the report must escape it). A spec that does not exist fails its
tasks while the others finish; a rerun resumes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from typer.testing import CliRunner  # noqa: E402

import headatlas  # noqa: E402
from headatlas.errors import InputError  # noqa: E402
from headatlas.sweep import CSV_COLUMNS, TASK_FILE, expand_specs, natural_key, parse_seeds  # noqa: E402
from tiny import save_tiny_folder  # noqa: E402

DETECTOR = "induction"
SETTINGS = {"quick": True, "n_prompts": 4}
ROOT_NAME = "<script>alert(1)</script>run"   # a folder name with markup in it (no "/" in a file name)


@pytest.fixture(scope="module")
def cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts") / ROOT_NAME.replace("/", "|")
    save_tiny_folder(root / "step-10", seed=1)
    save_tiny_folder(root / "step-2", seed=0)
    return root


@pytest.fixture(scope="module")
def first(cluster, checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    missing = str(checkpoints.parent / "no-such-model")
    events: list[dict] = []
    result = headatlas.sweep([str(checkpoints), missing], DETECTOR, out=out, seeds="0,1", progress=events.append,
                             **SETTINGS)
    return result, events, missing


def _labels(checkpoints: Path) -> list[str]:
    return [f"{checkpoints.name}/step-2", f"{checkpoints.name}/step-10"]


def test_checkpoint_folders_expand_in_natural_order(checkpoints):
    models = expand_specs([str(checkpoints)])
    assert [m.label for m in models] == _labels(checkpoints)
    assert [m.checkpoint for m in models] == ["step-2", "step-10"]
    assert natural_key("step-2") < natural_key("step-10") < natural_key("step-100")


def test_revision_specs():
    (m,) = expand_specs(["EleutherAI/pythia-160m@step1000"])
    assert (m.spec, m.revision, m.group, m.checkpoint) == ("EleutherAI/pythia-160m", "step1000", "EleutherAI/pythia-160m",
                                                           "step1000")
    with pytest.raises(InputError, match="bundled model"):
        expand_specs(["smollm2-135m@main"])
    with pytest.raises(InputError, match="hub ids only"):
        expand_specs(["./some/folder@step1"])
    with pytest.raises(InputError, match="id@revision"):
        expand_specs(["org/model@"])


def test_seeds_parse():
    assert parse_seeds("0,1") == [0, 1] and parse_seeds("0-3") == [0, 1, 2, 3] and parse_seeds(2) == [2]
    for bad in ("", "a", "-1", [0.5]):
        with pytest.raises(InputError):
            parse_seeds(bad)


def test_csv_has_one_row_per_model_seed_detector_head(first, checkpoints):
    result, _, _ = first
    table = __import__("pandas").read_csv(result.out / "sweep.csv")
    assert list(table.columns) == CSV_COLUMNS
    assert len(table) == 2 * 2 * 1 * (3 * 4)                  # 2 checkpoints x 2 seeds x 1 detector x 12 heads
    assert sorted(table.model.unique()) == sorted(_labels(checkpoints))
    assert set(table.seed) == {0, 1} and set(table.detector) == {DETECTOR}
    assert table.groupby(["model", "seed"]).size().eq(12).all()
    assert table.p_value.between(0, 1).all() and table.q_value.between(0, 1).all()
    assert table.labelled.dtype == bool
    # the rows are the task's own atlas
    task = next(t for t in result.tasks if t["model"] == _labels(checkpoints)[1] and t["seed"] == 1)
    atlas = headatlas.Atlas.load(result.out / task["out"] / "atlas.json")
    rows = table[(table.model == task["model"]) & (table.seed == 1)].sort_values(["layer", "head"])
    assert rows.score.to_numpy() == pytest.approx(atlas.scores(DETECTOR).ravel())
    assert atlas.seed == 1


def test_json_records_engine_specs_settings_and_every_task(first, checkpoints):
    result, _, missing = first
    doc = json.loads((result.out / "sweep.json").read_text())
    assert doc["engine"] == f"ray {ray.__version__}"
    assert doc["specs"] == [str(checkpoints), missing]
    assert doc["settings"]["detectors"] == [DETECTOR] and doc["settings"]["seeds"] == [0, 1]
    assert doc["settings"]["quick"] is True and doc["settings"]["n_prompts"] == 4
    assert len(doc["tasks"]) == 6
    status = {(t["model"], t["seed"]): t["status"] for t in doc["tasks"]}
    assert [status[(label, s)] for label in _labels(checkpoints) for s in (0, 1)] == ["done"] * 4
    for t in doc["tasks"]:
        folder = result.out / t["out"]
        if t["status"] == "done":
            assert t["error"] is None and t["seconds"] > 0
            for name in ("atlas.json", "atlas.html", f"partial/{DETECTOR}.json", TASK_FILE):
                assert (folder / name).is_file(), name
            assert folder.name.endswith(f"-s{t['seed']}") and folder.parent == result.out
        else:
            assert t["spec"] == missing and "ModelNotFoundError" in t["error"] and "no-such-model" in t["error"]
            assert "Traceback" in t["traceback"]


def test_a_failed_task_is_reported_and_the_others_finish(first):
    result, events, missing = first
    assert len(result.failed) == 2 and not result.ok
    assert sorted((e["model"], e["status"]) for e in events if e["status"] == "failed") == [(missing, "failed")] * 2
    assert sum(e["status"] == "done" for e in events) == 4


def test_html_is_self_contained_escaped_and_upload_free(first):
    result, _, _ = first
    text = (result.out / "sweep.html").read_text()
    assert text.count("<script>") == 2                         # plotly.js once, the page's loader once
    assert "<script>alert" not in text and "alert(1)" in text   # the model name is there, escaped
    assert "<script src" not in text and "<link" not in text    # nothing is fetched
    data = text.split('<script type="application/json" id="sweep-data">')[1].split("</script>")[0]
    doc = json.loads(data)
    assert doc["config"]["displaylogo"] is False and doc["config"]["showSendToCloud"] is False
    labelled, top = doc["figures"]
    assert [tr["x"] for tr in labelled["data"]] == [["step-2", "step-10"]]   # checkpoints in natural order
    assert len(top["data"][0]["y"]) == 2
    assert "Content-Security-Policy" in text


def test_rerun_resumes_finished_atlases_without_recomputing(first, checkpoints, tmp_path):
    result, _, _ = first
    atlases = sorted(result.out.glob("*/atlas.json"))
    before = {p: p.stat().st_mtime_ns for p in atlases}
    again = headatlas.sweep([str(checkpoints)], DETECTOR, out=result.out, seeds="0,1", **SETTINGS)
    assert [t["status"] for t in again.tasks] == ["resumed"] * 4
    assert {p: p.stat().st_mtime_ns for p in atlases} == before
    old = result.table.sort_values(CSV_COLUMNS[:5]).reset_index(drop=True)
    new = again.table.sort_values(CSV_COLUMNS[:5]).reset_index(drop=True)
    assert new.equals(old)


def test_an_unfinished_task_resumes_from_its_partial_results(first, checkpoints):
    result, _, _ = first
    task = result.tasks[0]
    folder = result.out / task["out"]
    partial = folder / "partial" / f"{DETECTOR}.json"
    stamp = partial.stat().st_mtime_ns
    scores = headatlas.Atlas.load(folder / "atlas.json").scores(DETECTOR)
    (folder / "atlas.json").unlink()
    (folder / TASK_FILE).unlink()
    again = headatlas.sweep([str(checkpoints)], DETECTOR, out=result.out, seeds=task["seed"], **SETTINGS)
    statuses = {t["model"]: t["status"] for t in again.tasks}
    assert statuses[task["model"]] == "done"                    # ran again (loaded, scanned) ...
    assert partial.stat().st_mtime_ns == stamp                  # ... but took the detector from partial/
    assert (headatlas.Atlas.load(folder / "atlas.json").scores(DETECTOR) == scores).all()


def test_cli_sweep(first, checkpoints):
    from headatlas.cli import app

    result, _, _ = first
    runner = CliRunner()
    ok = runner.invoke(app, ["sweep", str(checkpoints), "--detectors", DETECTOR, "--seeds", "0,1", "--out",
                             str(result.out), "--quick", "--n-prompts", "4"])
    assert ok.exit_code == 0, ok.output
    assert "resumed" in ok.output and "sweep.csv" in ok.output
    bad = runner.invoke(app, ["sweep", str(checkpoints), "--detectors", "no_such_detector", "--out", str(result.out)])
    assert bad.exit_code == 2 and "error" in bad.output
    bad = runner.invoke(app, ["sweep", "smollm2-135m@v2", "--out", str(result.out)])
    assert bad.exit_code == 2 and "single version" in bad.output


def test_cli_reports_failed_tasks_with_exit_code_1(cluster, tmp_path):
    from headatlas.cli import app

    res = CliRunner().invoke(app, ["sweep", str(tmp_path / "gone"), "--detectors", DETECTOR, "--out", str(tmp_path / "o")])
    assert res.exit_code == 1
    assert "failed" in res.output and "no such file or folder" in res.output
    doc = json.loads((tmp_path / "o" / "sweep.json").read_text())
    assert [t["status"] for t in doc["tasks"]] == ["failed"]
    assert (tmp_path / "o" / "sweep.csv").read_text().strip() == ",".join(CSV_COLUMNS)


def test_importing_headatlas_does_not_import_ray():
    code = "import sys, headatlas, headatlas.sweep, headatlas.cli; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})


@pytest.mark.slow
def test_cli_sweep_of_the_bundled_models(tmp_path):
    """The issue's command, as a user types it (a fresh local Ray cluster in a subprocess)."""
    out = tmp_path / "sweep"
    exe = Path(sys.executable).with_name("headatlas")
    res = subprocess.run([str(exe), "sweep", "smollm2-135m", "gemma3-270m", "--detectors", "induction", "--out",
                          str(out), "--num-cpus", "1", "--quick"], capture_output=True, text=True, timeout=3600)
    assert res.returncode == 0, res.stdout + res.stderr
    import pandas as pd

    table = pd.read_csv(out / "sweep.csv")
    assert table.groupby("model").size().to_dict() == {"smollm2-135m": 270, "gemma3-270m": 72}
    doc = json.loads((out / "sweep.json").read_text())
    assert [t["status"] for t in doc["tasks"]] == ["done", "done"]
    assert (out / "sweep.html").is_file() and (out / "smollm2-135m-s0" / "atlas.json").is_file()
    # smollm2 and gemma3 both have induction heads (repeat loss falls 13.6 -> 2.2 and 14.7 -> 0.8)
    assert table[table.labelled].groupby("model").size().min() >= 1


def test_address_joins_an_existing_cluster(cluster, checkpoints, tmp_path):
    """A second driver (the CLI in a subprocess) joins this module's cluster by its address."""
    address = ray.get_runtime_context().gcs_address
    out = tmp_path / "joined"
    exe = Path(sys.executable).with_name("headatlas")
    res = subprocess.run([str(exe), "sweep", str(checkpoints / "step-2"), "--detectors", DETECTOR, "--out", str(out),
                          "--address", address, "--quick", "--n-prompts", "4"], capture_output=True, text=True,
                         timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["settings"]["address"] == address and doc["cluster"]["CPU"] == 2.0
    assert [t["status"] for t in doc["tasks"]] == ["done"]
    assert ray.is_initialized()                                   # the joining driver left the cluster running


@pytest.mark.parametrize("kwargs, match", [
    ({"detectors": "no_such_detector"}, "no_such_detector"),
    ({"seeds": "x"}, "seeds"),
    ({"batch_size": 0}, "batch_size"),
    ({"cpus_per_task": -1}, "cpus_per_task"),
    ({"device_map": {"": "disk"}}, "offload_folder"),
    ({"device_map": "everywhere"}, "use one of auto"),
    ({"out": ""}, "output folder"),
])
def test_bad_arguments_are_refused_before_any_task(checkpoints, tmp_path, kwargs, match):
    args = {"detectors": DETECTOR, "out": tmp_path / "o", **kwargs}
    with pytest.raises(InputError, match=match):
        headatlas.sweep([str(checkpoints)], **args)
    assert not (tmp_path / "o" / "sweep.json").exists()


def test_more_gpus_per_task_than_the_cluster_has_is_refused(cluster, checkpoints, tmp_path):
    with pytest.raises(InputError, match="GPU"):
        headatlas.sweep([str(checkpoints)], DETECTOR, out=tmp_path / "o", gpus_per_task=1)
