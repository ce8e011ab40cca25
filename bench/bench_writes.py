"""Cost of recording what each head writes (``headatlas.methods.ov_tokens.ov_top_tokens``: the top promoted and
suppressed output tokens of every head's OV circuit through the whole unembedding), for all heads of a bundled
model, against its floor: the bare unembedding products of the same shapes (``[sources x heads, d_model] @
[d_model, vocab]`` per layer, no reductions). Interleaved, median of ``--repeats``.

Run: ``python bench/bench_writes.py [--model smollm2-135m --model gemma3-270m] [--repeats 3]``. Writes the "writes"
section of bench/RESULTS.md (``--no-write`` to only print).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import headatlas  # noqa: E402
from collect import machine_line, write_section  # noqa: E402
from headatlas.methods.dla import readout  # noqa: E402
from headatlas.methods.ov_tokens import CHUNK, N_SOURCES, ov_top_tokens  # noqa: E402


def floor(m, n_sources: int) -> float:
    """Seconds of the bare products: per layer ``[n_sources * n_heads, d_model] @ W_U^T`` in CHUNK columns."""
    W_U = readout(m).W_U
    x = torch.randn(n_sources * m.info.n_heads, W_U.shape[1])
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(m.info.n_layers):
            for s in range(0, W_U.shape[0], CHUNK):
                x @ W_U[s:s + CHUNK].t()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", action="append", default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    rows = []
    for name in args.model or ["smollm2-135m", "gemma3-270m"]:
        m = headatlas.load(name, device="cpu")
        heads = [(la, h) for la in range(m.info.n_layers) for h in range(m.info.n_heads)]
        full, bare = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            rec = ov_top_tokens(m, heads)
            full.append(time.perf_counter() - t0)
            bare.append(floor(m, rec["n_sources"]))
        V = readout(m).W_U.shape[0]
        gflop = 2 * len(heads) * rec["n_sources"] * m.info.d_model * V / 1e9
        f, b = statistics.median(full), statistics.median(bare)
        rows.append((name, len(heads), V, gflop, f, b))
        print(name, len(heads), "heads", f"{f:.1f} s vs floor {b:.1f} s", f"ratio {f / b:.2f}")
    lines = ["## writes: OV output tokens of every head (bench_writes)", "",
             f"`python bench/bench_writes.py --repeats {args.repeats}` on {machine_line()} (shared with other jobs: compare "
             f"the ratio). `ov_top_tokens` for every head ({N_SOURCES} source tokens, the whole vocabulary) against the "
             "bare unembedding products of the same shapes; interleaved, medians. The scan runs it for the labelled heads "
             "only.", "",
             "| model | heads | vocabulary | multiply-adds (GFLOP) | ov_top_tokens (s) | bare products (s) | ratio |",
             "|---|---|---|---|---|---|---|"]
    for name, n, V, g, f, b in rows:
        lines.append(f"| {name} | {n} | {V} | {g:.0f} | {f:.1f} | {b:.1f} | {f / b:.2f} |")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("writes", text)


if __name__ == "__main__":
    main()
