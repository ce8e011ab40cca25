"""The IOI circuit on a bundled model: name movers, negative name movers, S-inhibition heads (with their
path-patching edges into the name movers) and the upstream pattern heads, with causal checks and timings.

    OMP_NUM_THREADS=1 .venv/bin/python bench/ioi_circuit.py smollm2-135m /tmp/ioi_smollm2
    OMP_NUM_THREADS=1 .venv/bin/python bench/ioi_circuit.py gemma3-270m /tmp/ioi_gemma3 name_mover,negative_name_mover,s_inhibition

Writes OUT/atlas.json, OUT/atlas.html and OUT/ioi_summary.json (the numbers docs/ioi_circuit.md quotes).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

import headatlas
from headatlas.detectors.dla.name_mover import ioi_batches

DETECTORS = ["previous_token", "duplicate_token", "induction", "name_mover", "negative_name_mover", "s_inhibition"]


def main(model: str = "smollm2-135m", out: str = "/tmp/ioi_smollm2", detectors: str = "") -> None:
    """``detectors``: a comma list to scan instead of :data:`DETECTORS` (e.g. only the IOI roles)."""
    torch.set_num_threads(1)
    dets = [d for d in detectors.split(",") if d] or DETECTORS
    m = headatlas.load(model)
    t0 = time.perf_counter()
    atlas = headatlas.scan(m, dets, seed=0, out=out, resume=True)
    total = time.perf_counter() - t0
    # one plain forward over the name_mover prompts (32, two templates)
    batches = ioi_batches(m, 32, 0)
    t1 = time.perf_counter()
    with torch.no_grad():
        for b in batches:
            m.model(b.clean_ids.to(m.device))
    plain = time.perf_counter() - t1
    summary = {"model": model, "scan_seconds": total, "plain_forward_seconds_32_ioi_prompts": plain,
               "timings": atlas.timings, "shared_passes": atlas.shared_passes, "skipped": atlas.skipped()}
    for name in dets:
        r = atlas.result(name)
        rows = []
        for a, h in r.labelled:
            rows.append({"head": f"L{a}H{h}", "score": float(r.scores[a, h]), "effect": float(r.effect[a, h]),
                         "ci": [float(r.ci_low[a, h]), float(r.ci_high[a, h])], "p": float(r.p_value[a, h]),
                         "q": float(r.q_value[a, h]), "stability": float(r.stability[a, h])})
        c = atlas.causal(name)
        if c is not None:
            c = {k: (v if not isinstance(v, (list, tuple)) or k == "heads" else
                     {"median": float(np.median(v)), "n": len(v)}) for k, v in c.items()}
        summary[name] = {"labelled": rows, "causal": c, "n_prompts": r.n_prompts}
    if not atlas.result("s_inhibition").skipped:
        summary["s_inhibition"]["edges"] = atlas.result("s_inhibition").details.get("edges")
    # sensitivity: negative name movers on 64 prompts (same seed; a scan option n_prompts=64 does the same)
    from headatlas.detectors import ScanConfig, get

    cfg64 = ScanConfig(seed=0, n_prompts=64)
    t2 = time.perf_counter()
    neg64 = get("negative_name_mover").run(m, cfg64)
    neg64.causal = get("negative_name_mover").causal(m, cfg64, neg64)
    summary["negative_name_mover_64"] = {
        "seconds": time.perf_counter() - t2,
        "labelled": [{"head": f"L{a}H{h}", "effect": float(neg64.effect[a, h]), "q": float(neg64.q_value[a, h]),
                      "p": float(neg64.p_value[a, h]), "io_attention": float(neg64.extras["io_attention"][a, h]),
                      "dla_from_io": float(neg64.extras["dla_from_io"][a, h])} for a, h in neg64.labelled],
        "causal": None if neg64.causal is None else {
            "effect": neg64.causal.effect, "p": neg64.causal.p_value, "kind": neg64.causal.kind,
            "random_median": float(np.median(neg64.causal.random_effects)) if neg64.causal.random_effects else None,
            "baseline": neg64.causal.baseline}}
    circ = atlas.circuit("ioi")
    summary["circuit"] = circ.to_dict()
    with open(f"{out}/ioi_summary.json", "w") as f:
        json.dump(summary, f, indent=1, default=str)
    print(json.dumps(summary, indent=1, default=str))


if __name__ == "__main__":
    main(*sys.argv[1:])
