"""Long-context retrieval on CPU: one needle prompt at ~32k tokens on gemma3-270m (32k context).

The retrieval detector's own decode path (``detectors.retrieval.decode_cases``) with chunked
prefill: the prompt minus its last token is prefilled in blocks of ``--chunk`` tokens with sdpa and
a KV cache (no attention pattern is recorded; one block's attention is at most
``[1, H, chunk, S]``), then the answer is decoded greedily one token at a time with the top-1
pattern reducer, whose patterns are ``[1, H, 1, S]`` (one query row per decode step). Nothing
``[S, S]`` is ever built, for any layer.

Runs in a fresh subprocess and reports its peak resident set size (``VmHWM`` from
``/proc/self/status``, the same as ``getrusage`` ``ru_maxrss``), the RSS after loading the model,
the wall and CPU time of prefill and decoding, and the load average of the machine before and
after. Usage::

    python bench/bench_retrieval_long.py [--model gemma3-270m] [--tokens 32000] [--chunk 2048] [--write]

``--write`` puts the section ``retrieval_long`` into bench/RESULTS.md (via collect.write_section).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def child(model: str, tokens: int, chunk: int, threads: int, seed: int) -> dict:
    import resource

    import numpy as np
    import torch

    import headatlas
    from headatlas.detectors.patterns import retrieval as R
    from headatlas.tasks.needle import needle_cases

    torch.set_num_threads(threads)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    m = headatlas.load(model, device="cpu")
    load_s = time.perf_counter() - t0
    after_load = _status_mb("VmRSS")
    length = min(tokens, m.info.n_ctx - 32)
    case = needle_cases(m.tokenizer, 1, [length], seed=seed)[0]
    ids = case.ids[None]
    n_steps = len(case.response_ids)
    c0, w0 = time.process_time(), time.perf_counter()
    timings: dict = {}
    gen, top1 = R.greedy_top1(m, ids, n_steps, prefill_chunk=chunk, timings=timings)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    hits = R.slot_hits(top1[0], gen[0], case) / n_steps          # [L, H, K]
    needle = hits[..., case.needle_index]
    others = np.delete(hits, case.needle_index, axis=-1).mean(-1)
    H = m.info.n_heads
    order = np.argsort(-(needle - others).ravel(), kind="stable")[:5]
    return {
        "model": model, "prompt_tokens": int(ids.shape[1]), "chunk": chunk, "threads": threads,
        "n_facts": len(case.fact_spans), "needle_depth": case.depth, "decode_steps": n_steps,
        "generated": m.tokenizer.decode(gen[0]), "code": case.code, "exact": R._exact(gen[0], case),
        "recall": R.recall(gen[0], case.answer_ids),
        "top_heads": [f"L{i // H}H{i % H} {needle.ravel()[i]:.2f} (facts {others.ravel()[i]:.2f})" for i in order],
        "rss_after_load_mb": after_load, "peak_rss_mb": _status_mb("VmHWM"),
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "load_seconds": load_s, "seconds": wall, "cpu_seconds": cpu,
        "prefill_seconds": timings.get("prefill"), "decode_seconds": timings.get("decode"),
        "loadavg_before": load0, "loadavg_after": os.getloadavg(), "nproc": os.cpu_count(),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--tokens", type=int, default=32000)
    ap.add_argument("--chunk", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.model, args.tokens, args.chunk, args.threads, args.seed)))
        return
    cmd = [sys.executable, __file__, "--child", "--model", args.model, "--tokens", str(args.tokens),
           "--chunk", str(args.chunk), "--threads", str(args.threads), "--seed", str(args.seed)]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(r, indent=1))
    lines = [
        "## Long-context retrieval on CPU (retrieval_long)", "",
        f"`python bench/bench_retrieval_long.py --model {r['model']} --tokens {args.tokens} --chunk {r['chunk']}`: one "
        f"needle prompt of **{r['prompt_tokens']} tokens** ({r['n_facts']} facts, needle at depth {r['needle_depth']}) "
        "through the retrieval detector's decode path: chunked sdpa prefill with a KV cache (no pattern), then greedy "
        f"decoding of {r['decode_steps']} tokens with the top-1 reducer (patterns `[1, H, 1, S]`, one layer at a time). "
        f"float32, CPU, {r['threads']} threads, fresh process.", "",
        "| prompt tokens | prefill chunk | peak RSS (GB) | RSS after load (GB) | prefill (s) | decode (s) | total wall (s) "
        "| CPU (s) | load avg before / after (1 min) |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {r['prompt_tokens']} | {r['chunk']} | {r['peak_rss_mb'] / 1024:.2f} | {r['rss_after_load_mb'] / 1024:.2f} | "
        f"{r['prefill_seconds']:.0f} | {r['decode_seconds']:.0f} | {r['seconds']:.0f} | {r['cpu_seconds']:.0f} | "
        f"{r['loadavg_before'][0]:.1f} / {r['loadavg_after'][0]:.1f} on {r['nproc']} cores |", "",
        f"Answer: {r['generated']!r} (code {r['code']}: exact {r['exact']}, code-token recall {r['recall']:.2f}). "
        f"Heads by needle hits minus mean hits on the other facts, this one prompt: {', '.join(r['top_heads'])}.", "",
        "Peak memory is `VmHWM` (peak RSS) of the process, model included. The whole model's attention at this length "
        f"would be 4 heads x {r['prompt_tokens']}^2 x 4 bytes = {4 * r['prompt_tokens'] ** 2 * 4 / 1e9:.1f} GB per "
        "layer; it is never built. Wall times are on a machine shared with other jobs (load above): compare CPU "
        "seconds, not wall seconds.",
    ]
    print("\n".join(lines))
    if args.write:
        sys.path.insert(0, str(HERE))
        from collect import write_section

        write_section("retrieval_long", "\n".join(lines))


if __name__ == "__main__":
    main()
