"""Run the probing detectors (truthfulness, accuracy, consistency, coherence, faithfulness) with their causal
checks on one model and print the numbers docs/probing.md quotes.

    OMP_NUM_THREADS=1 .venv/bin/python bench/probing_detectors.py smollm2-135m [--seed 0] [--only truthfulness,...]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default="smollm2-135m")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="truthfulness,accuracy,consistency,coherence,faithfulness")
    ap.add_argument("--json", default="")
    ap.add_argument("--no-causal", action="store_true", help="skip the causal checks")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import headatlas
    from headatlas.detectors import ScanConfig, get
    from headatlas.errors import InputError

    m = headatlas.load(args.model, device="cpu")
    out = {}
    for name in args.only.split(","):
        cfg = ScanConfig(seed=args.seed)
        det = get(name)
        t0 = time.perf_counter()
        try:
            r = det.run(m, cfg)
        except InputError as exc:
            out[name] = {"skipped": str(exc), "seconds": time.perf_counter() - t0}
            print(f"{name}: skipped ({time.perf_counter() - t0:.1f} s): {exc}", flush=True)
            continue
        t1 = time.perf_counter()
        c = det.causal(m, cfg, r) if det.causal is not None and not args.no_causal else None
        t2 = time.perf_counter()
        best = tuple(int(x) for x in np.unravel_index(int(np.nanargmax(r.scores)), r.scores.shape))
        rec = {"labelled": [list(h) for h in r.labelled], "n_labels": len(r.labelled),
               "best_head": best, "best_accuracy": float(r.scores[best]), "best_null": float(r.null_mean[best]),
               "best_p": float(r.p_value[best]), "best_q": float(r.q_value[best]),
               "top": [[int(a), int(b), round(float(r.scores[a, b]), 3), round(float(r.effect[a, b]), 3),
                        float(r.q_value[a, b])] for a, b in r.labelled[:12]],
               "data": r.data_description, "details": {k: v for k, v in r.details.items() if k != "null_zero_variance"},
               "run_seconds": t1 - t0, "causal_seconds": t2 - t1}
        if c is not None and c.ran:
            rec["causal"] = {"kind": c.kind, "metric": c.metric, "effect": c.effect, "random_median": c.random_median,
                             "random_min": min(c.random_effects), "random_max": max(c.random_effects),
                             "p": c.p_value, "baseline": c.baseline, "n_prompts": c.n_prompts, "heads": len(c.heads)}
        out[name] = rec
        print(name, json.dumps(rec, default=str), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=str)


if __name__ == "__main__":
    main()
