"""bench/gpu.sh: on a machine without CUDA it says it skipped, exits 0 and writes nothing; its dated summary
section lists every step it ran."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import gpu_summary  # noqa: E402


def test_gpu_script_skips_cleanly_without_cuda():
    results = ROOT / "bench" / "results"
    before = sorted(p.name for p in results.glob("*.md"))
    stamp = (ROOT / "bench" / "RESULTS.md").stat().st_mtime_ns
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHON=sys.executable)
    out = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh")], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "skipped: no CUDA device" in out.stdout
    assert sorted(p.name for p in results.glob("*.md")) == before
    assert (ROOT / "bench" / "RESULTS.md").stat().st_mtime_ns == stamp


def test_gpu_script_names_every_bench_with_the_cuda_device():
    text = (ROOT / "bench" / "gpu.sh").read_text()
    for script in ("bench_patching.py", "bench_gating_peer.py", "bench_probing.py", "bench_scan.py"):
        line = next(ln for ln in text.splitlines() if script in ln and "cmd=(" in ln)
        assert "--device cuda" in line, line


def test_gpu_summary_rows():
    text = gpu_summary.summary("2026-01-01T0000Z", ["patching|python bench/bench_patching.py --device cuda|0|12",
                                                     "scan|python bench/bench_scan.py --device cuda|1|7"], "a GPU")
    assert text.startswith("## GPU run 2026-01-01T0000Z")
    assert "| patching | `python bench/bench_patching.py --device cuda` | 0 | 12 | section \"patching (CUDA)\" |" in text
    assert "| scan | `python bench/bench_scan.py --device cuda` | 1 | 7 | failed: see the log |" in text
