"""Files and runs (issue 11): --out checked before any work, temp files removed on every exit path, atlas.json
and atlas.html written so that the HTML is never older than the JSON, and one scan per output folder (a lock
file holding the pid; a stale lock taken over)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from atlas_fakes import CALLS, fake_registry  # noqa: F401  (fixture)
from tiny import tiny_model

import headatlas
from headatlas import outdir
from headatlas.errors import OutputError
from headatlas.outdir import (LOCK_NAME, atomic_write_text, prepare_out, read_lock, remove_stale_temps, scan_lock,
                              write_atlas_pair)

SRC = str(Path(__file__).resolve().parents[1] / "src")


def temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


def hold_lock(out: Path, seconds: float = 60.0) -> subprocess.Popen:
    """Another process that holds the scan lock on ``out`` (prints 'locked' once it does)."""
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {SRC!r})
        from headatlas.outdir import scan_lock
        with scan_lock({str(out)!r}):
            print("locked", flush=True)
            time.sleep({seconds})
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.fixture(scope="module")
def tiny():
    hf, tok = tiny_model("llama")
    return headatlas.load((hf, tok), device="cpu")


# ----- prepare_out ----------------------------------------------------------------------------------------------

def test_prepare_out_creates_and_probes_the_folder(tmp_path):
    out = prepare_out(tmp_path / "a" / "b")
    assert out.is_dir() and temps(tmp_path) == []


def test_a_folder_that_cannot_be_written_is_refused(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o555)
    else:  # root writes anywhere: make the probe fail as a read-only folder would
        def refuse(*a, **k):
            raise PermissionError(13, "Permission denied")
        monkeypatch.setattr(outdir.tempfile, "mkstemp", refuse)
    with pytest.raises(OutputError, match="cannot write in this folder"):
        prepare_out(ro)


def test_scan_checks_out_before_loading_the_model(tmp_path, tiny, fake_registry, monkeypatch):
    """An existing file as --out fails before anything runs (not after the first detector)."""
    a_file = tmp_path / "file"
    a_file.write_text("x")
    loads = []
    monkeypatch.setattr("headatlas.models.load", lambda *a, **k: loads.append(1) or tiny)
    CALLS.clear()
    with pytest.raises(OutputError, match="is a file"):
        headatlas.scan(tiny, ["fake_prev"], quick=True, out=a_file)
    assert loads == [] and CALLS == {}


# ----- atomic writes and temp files -----------------------------------------------------------------------------

def test_atomic_write_removes_its_temp_file_when_the_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "atlas.json"
    target.write_text("old")

    def broken(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(outdir.os, "replace", broken)
    with pytest.raises(OutputError, match="No space left"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old" and temps(tmp_path) == []


def test_atomic_write_removes_its_temp_file_on_ctrl_c(tmp_path, monkeypatch):
    target = tmp_path / "atlas.json"

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(outdir.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(target, "new")
    assert not target.exists() and temps(tmp_path) == []


def test_pair_replaces_the_html_before_the_json(tmp_path, monkeypatch):
    jp, hp = tmp_path / "atlas.json", tmp_path / "atlas.html"
    order = []
    real = os.replace
    monkeypatch.setattr(outdir.os, "replace", lambda a, b: order.append(Path(b).name) or real(a, b))
    write_atlas_pair(jp, "{}", hp, "<html>")
    assert order == ["atlas.html", "atlas.json"]
    assert hp.stat().st_mtime_ns >= jp.stat().st_mtime_ns and temps(tmp_path) == []


def test_a_crash_between_the_two_replaces_never_leaves_an_older_html(tmp_path, monkeypatch):
    jp, hp = tmp_path / "atlas.json", tmp_path / "atlas.html"
    write_atlas_pair(jp, '{"v": 1}', hp, "v1")
    calls = []
    real = os.replace

    def die_second(a, b):
        calls.append(b)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(a, b)
    monkeypatch.setattr(outdir.os, "replace", die_second)
    with pytest.raises(KeyboardInterrupt):
        write_atlas_pair(jp, '{"v": 2}', hp, "v2")
    assert hp.read_text() == "v2" and jp.read_text() == '{"v": 1}'   # the HTML is newer, never older
    assert temps(tmp_path) == []


def test_a_killed_writers_temp_files_are_removed_by_the_next_scan(tmp_path):
    (tmp_path / "partial").mkdir()
    left = [tmp_path / ".atlas.json.x1.tmp", tmp_path / "partial" / ".induction.json.x2.tmp"]
    for p in left:
        p.write_text("half")
    keep = tmp_path / "notes.tmp"   # not a headatlas temp file (no leading dot)
    keep.write_text("mine")
    with scan_lock(tmp_path):
        assert not any(p.exists() for p in left) and keep.exists()
    assert remove_stale_temps(tmp_path) == []


def test_scan_leaves_no_temp_or_lock_file_and_a_fresh_html(tmp_path, tiny, fake_registry):
    out = tmp_path / "out"
    headatlas.scan(tiny, ["fake_prev"], quick=True, out=out)
    assert temps(out) == [] and not (out / LOCK_NAME).exists()
    assert (out / "atlas.html").stat().st_mtime_ns >= (out / "atlas.json").stat().st_mtime_ns


def test_scan_removes_temp_files_and_the_lock_when_a_detector_fails(tmp_path, tiny, fake_registry):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        headatlas.scan(tiny, ["fake_prev", "fake_boom"], quick=True, out=out)
    assert temps(out) == [] and not (out / LOCK_NAME).exists()
    assert (out / "partial" / "fake_prev.json").is_file() and not (out / "atlas.json").exists()


# ----- one scan per folder --------------------------------------------------------------------------------------

def test_a_second_scan_into_the_same_folder_refuses(tmp_path, tiny, fake_registry):
    out = tmp_path / "out"
    other = hold_lock(out)
    try:
        CALLS.clear()
        with pytest.raises(OutputError, match=rf"in use by another headatlas scan \(pid {other.pid}"):
            headatlas.scan(tiny, ["fake_prev"], quick=True, out=out)
        assert CALLS == {}                      # refused before any detector ran
        assert read_lock(out / LOCK_NAME)["pid"] == str(other.pid)
    finally:
        other.kill()
        other.wait()


def test_a_stale_lock_of_a_killed_scan_is_taken_over(tmp_path, tiny, fake_registry):
    out = tmp_path / "out"
    other = hold_lock(out)
    other.send_signal(signal.SIGKILL)   # kill -9: no cleanup, the lock file stays
    other.wait()
    assert (out / LOCK_NAME).exists()
    headatlas.scan(tiny, ["fake_prev"], quick=True, out=out)
    assert (out / "atlas.json").is_file() and not (out / LOCK_NAME).exists()


def test_a_lock_file_naming_a_dead_pid_is_stale(tmp_path):
    import socket

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()                              # a pid that existed and is now gone
    (tmp_path / LOCK_NAME).write_text(f"pid={proc.pid}\nhost={socket.gethostname()}\nstart=1\ntime=0\n")
    assert outdir.lock_is_stale(read_lock(tmp_path / LOCK_NAME))
    with scan_lock(tmp_path):
        assert read_lock(tmp_path / LOCK_NAME)["pid"] == str(os.getpid())


def test_a_live_lock_is_not_stale():
    import socket

    fields = {"pid": str(os.getpid()), "host": socket.gethostname(), "start": outdir._start_ticks(os.getpid())}
    assert not outdir.lock_is_stale(fields)
    assert not outdir.lock_is_stale({**fields, "host": "another-machine", "pid": "999999999"})


def test_the_lock_is_reentrant_in_one_thread_and_released_after(tmp_path):
    with scan_lock(tmp_path):
        with scan_lock(tmp_path):
            assert (tmp_path / LOCK_NAME).exists()
        assert (tmp_path / LOCK_NAME).exists()
    assert not (tmp_path / LOCK_NAME).exists()


def test_sigterm_during_a_cli_scan_releases_the_lock(tmp_path):
    """``kill`` (SIGTERM) unwinds like Ctrl-C: the lock and temp files go, the exit code is 128 + 15."""
    out = tmp_path / "out"
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {SRC!r})
        from headatlas.cli.scan import sigterm_as_exit
        from headatlas.outdir import scan_lock
        with scan_lock({str(out)!r}), sigterm_as_exit():
            open({str(out / '.atlas.json.x.tmp')!r}, "w").write("half")
            print("locked", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert not (out / LOCK_NAME).exists()
    with scan_lock(out):                     # the next scan starts at once and clears the temp file
        assert temps(out) == []
