"""The dated section bench/gpu.sh adds to bench/RESULTS.md: one row per step it ran.

    python bench/gpu_summary.py STAMP "step|command|exit status|seconds" ...

Writes ``bench/results/gpu-STAMP.md`` (a new file per run, so earlier runs stay) and rebuilds RESULTS.md. The
numbers themselves are in each step's own section (``patching-cuda``, ``gating_peer-cuda``, ``probing-cuda``,
``scan-cuda``), which the step wrote.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from collect import write_section  # noqa: E402

SECTIONS = {"patching": "patching (CUDA)", "gating": "gating vs nam-causal-head-gating (CUDA)",
            "probing": "probing vs honest_llama's recipe (CUDA)", "scan": "scan-cuda"}


def device_line() -> str:
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device"
    return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}"


def summary(stamp: str, rows: list[str], device: str) -> str:
    lines = [f"## GPU run {stamp}", "", f"`bash bench/gpu.sh` on {device}.", "",
             "| step | command | exit status | seconds | results |", "|---|---|---:|---:|---|"]
    for row in rows:
        step, cmd, rc, secs = row.split("|", 3)
        where = f"section \"{SECTIONS.get(step, step)}\"" if rc == "0" else "failed: see the log"
        lines.append(f"| {step} | `{cmd}` | {rc} | {secs} | {where} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit("usage: gpu_summary.py STAMP 'step|command|rc|seconds' ...")
    stamp, rows = argv[0], argv[1:]
    text = summary(stamp, rows, device_line())
    print(text)
    write_section(f"gpu-{stamp}", text)


if __name__ == "__main__":
    main(sys.argv[1:])
