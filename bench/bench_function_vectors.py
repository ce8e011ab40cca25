"""Numbers for docs/function_vectors.md: the function_vector and in_context detectors on a bundled model
(causal checks included), with wall times and the time of one plain forward over each detector's prompts.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_function_vectors.py smollm2-135m [function_vector,in_context]
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

import headatlas
from headatlas.detectors import ScanConfig
from headatlas.detectors.dla import in_context as ic
from headatlas.detectors.patching import function_vector as fv
from headatlas.errors import InputError
from headatlas.tasks import icl


def plain_forward_seconds(m, ids: torch.Tensor, batch_size: int = 8) -> float:
    t = time.perf_counter()
    fv.last_logits(m, ids, batch_size)
    return time.perf_counter() - t


def summarise(res, check) -> dict:
    out = {"labelled": [f"L{a}H{b}" for a, b in res.labelled],
           "labels": {f"L{a}H{b}": {"effect": round(float(res.effect[a, b]), 4), "q": float(res.q_value[a, b])}
                      for a, b in res.labelled},
           "top10": [(f"L{a}H{b}", round(float(res.scores[a, b]), 4), float(res.q_value[a, b]))
                     for a, b in zip(*np.unravel_index(np.argsort(-res.scores, axis=None)[:10], res.scores.shape))]}
    if check is not None:
        out["causal"] = {"kind": check.kind, "effect": check.effect, "random_median": check.random_median,
                         "p": check.p_value, "baseline": check.baseline, "n_prompts": check.n_prompts,
                         "heads": [f"L{a}H{b}" for a, b in check.heads]}
    return out


def main() -> None:
    torch.set_num_threads(1)
    name = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m"
    which = sys.argv[2].split(",") if len(sys.argv) > 2 else ["function_vector", "in_context"]
    m = headatlas.load(name)
    report: dict = {"model": name}
    for det in which:
        cfg = ScanConfig(seed=0)
        t0 = time.perf_counter()
        try:
            res = fv.run_function_vector(m, cfg) if det == "function_vector" else ic.run_in_context(m, cfg)
        except InputError as e:
            report[det] = {"skipped": str(e), "seconds": time.perf_counter() - t0}
            print(json.dumps(report[det], indent=1, default=str), flush=True)
            continue
        t_run = time.perf_counter() - t0
        check = (fv.fv_check if det == "function_vector" else ic.ic_check)(m, cfg, res)
        t_all = time.perf_counter() - t0
        if det == "function_vector":
            tasks = icl.icl_tasks(m.tokenizer, seed=0)
            ids = torch.cat([icl.icl_batch(m.tokenizer, t, 12, 8, seed=0).clean for t in tasks])
        else:
            ids = icl.class_batch(m.tokenizer, 48, 8, seed=0).ids
        report[det] = summarise(res, check) | {"details": res.details, "seconds_detect": t_run,
                                               "seconds_with_causal": t_all,
                                               "plain_forward_seconds": plain_forward_seconds(m, ids),
                                               "n_prompts": res.n_prompts}
        print(json.dumps(report[det], indent=1, default=str), flush=True)
    with open(f"/tmp/bench_function_vectors_{name}.json", "w") as f:
        json.dump(report, f, indent=1, default=str)


if __name__ == "__main__":
    main()
