"""Instrumentation overhead on smollm2-135m: plain forward vs instrumented forwards on the same batch.

Variants (all under ``torch.no_grad()``, float32, same input batch):
- plain: the HF model as loaded (sdpa attention);
- instrumented, no edits: headatlas's attention function active, nothing read or written;
- instrumented, z taps: every layer's head outputs recorded;
- instrumented, pattern reducer: every layer's pattern computed and reduced to a per-head score
  (the model's own eager attention runs, so the pattern exists);
- instrumented, one edit per batch row: each row zero-ablates a different head.

Timings interleave the variants round-robin and take the median, then report ratios to plain.
Run: ``python bench/bench_instrument.py [--batch 8 --seq 128 --repeats 7]``.
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
from headatlas.instrument import HeadEdit, Taps, instrumented  # noqa: E402
from headatlas.tasks.vocab import random_token_block, with_bos  # noqa: E402


def prev_token_mass(layer: int, pattern: torch.Tensor, call) -> torch.Tensor:
    return pattern.diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1)  # [B, H]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()

    m = headatlas.load(args.model, device="cpu")
    g = torch.Generator().manual_seed(0)
    ids = with_bos(m.tokenizer, random_token_block(m.tokenizer, args.batch, args.seq - 1, g))
    edits = [HeadEdit(layer=(3 * r) % m.info.n_layers, heads=r % m.info.n_heads, op="zero", rows=[r])
             for r in range(args.batch)]

    def plain():
        return m.model(ids).logits

    def no_edits():
        with instrumented(m):
            return m.model(ids).logits

    def z_taps():
        with instrumented(m, taps=Taps(z=True)):
            return m.model(ids).logits

    def reducer():
        with instrumented(m, taps=Taps(reducer=prev_token_mass)):
            return m.model(ids).logits

    def row_edits():
        with instrumented(m, edits=edits):
            return m.model(ids).logits

    variants = {"plain forward": plain, "instrumented, no edits": no_edits, "instrumented, z taps (all layers)": z_taps,
                "instrumented, pattern reducer (all layers)": reducer,
                "instrumented, one zero-ablation per batch row": row_edits}
    times: dict[str, list[float]] = {k: [] for k in variants}
    with torch.no_grad():
        ref = plain()
        assert torch.equal(no_edits(), ref)
        for fn in variants.values():  # warm-up
            fn()
        for _ in range(args.repeats):
            for name, fn in variants.items():
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    base = statistics.median(times["plain forward"])
    targets = {"instrumented, no edits": "≤ 1.05", "instrumented, pattern reducer (all layers)": "≤ 1.5"}
    lines = [
        "## Instrumentation overhead",
        "",
        f"`python bench/bench_instrument.py --batch {args.batch} --seq {args.seq} --repeats {args.repeats}` on {args.model}, "
        f"float32, batch {args.batch} x {args.seq} tokens, {machine_line()}. Median of {args.repeats} interleaved runs.",
        "",
        "| variant | median time (s) | ratio to plain | target |",
        "|---|---|---|---|",
    ]
    for name in variants:
        med = statistics.median(times[name])
        lines.append(f"| {name} | {med:.3f} | {med / base:.3f} | {targets.get(name, '')} |")
    text = "\n".join(lines)
    write_section("instrument", text)
    print(text)


if __name__ == "__main__":
    main()
