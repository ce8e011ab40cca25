"""memory, context and negative heads on a bundled model, with causal checks and timings (the numbers
docs/knowledge_conflict.md quotes).

    OMP_NUM_THREADS=1 .venv/bin/python bench/conflict_negative.py smollm2-135m /tmp/conflict_smollm2.json [seed] [detectors]

Wall time and process CPU time (one thread: about the wall time on an idle core) are reported per
detector, causal check included; the shared conflict pass is paid by ``memory``.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

import headatlas
from headatlas.detectors import ScanConfig, get
from headatlas.detectors.dla.conflict import CONFLICT_PASS
from headatlas.detectors.dla.negative import YES_NO_GROUPS
from headatlas.tasks.yesno import yesno_batch


def _heads(r) -> list[dict]:
    return [{"head": f"L{a}H{h}", "score": float(r.scores[a, h]), "effect": float(r.effect[a, h]),
             "ci": [float(r.ci_low[a, h]), float(r.ci_high[a, h])], "p": float(r.p_value[a, h]),
             "q": float(r.q_value[a, h]), "stability": float(r.stability[a, h])} for a, h in r.labelled]


def _best(r) -> dict:
    i = np.unravel_index(np.nanargmax(r.effect), r.effect.shape)
    return {"head": f"L{i[0]}H{i[1]}", "effect": float(r.effect[i]), "p": float(r.p_value[i]), "q": float(r.q_value[i])}


def _causal(c) -> dict | None:
    if c is None:
        return None
    return {"kind": c.kind, "effect": c.effect, "baseline": c.baseline, "random_median": c.random_median,
            "random_min": min(c.random_effects) if c.random_effects else None,
            "random_max": max(c.random_effects) if c.random_effects else None,
            "p": c.p_value, "n_prompts": c.n_prompts, "note": c.note}


def _plain_forward(m, ids: torch.Tensor, batch_size: int = 8) -> float:
    t = time.perf_counter()
    with torch.no_grad():
        for s in range(0, ids.shape[0], batch_size):
            m.model(input_ids=ids[s:s + batch_size].to(m.device), use_cache=False, logits_to_keep=1)
    return time.perf_counter() - t


def main(model: str = "smollm2-135m", out: str = "/tmp/conflict_negative.json", seed: str = "0",
         detectors: str = "memory,context,negative") -> None:
    torch.set_num_threads(1)
    m = headatlas.load(model)
    cfg = ScanConfig(seed=int(seed))
    summary: dict = {"model": model, "seed": int(seed)}
    names = detectors.split(",")
    for name in names:
        det = get(name)
        t, c = time.perf_counter(), time.process_time()
        try:
            r = det.run(m, cfg)
        except headatlas.errors.InputError as exc:
            summary[name] = {"skipped": str(exc)}
            continue
        run_s = time.perf_counter() - t
        r.causal = det.causal(m, cfg, r) if r.labelled else None
        summary[name] = {"labelled": _heads(r), "best": _best(r), "causal": _causal(r.causal),
                         "n_prompts": r.n_prompts, "data": r.data_description,
                         "behaviour": r.details.get("behaviour"), "causal_rates": r.details.get("causal_rates"),
                         "closed_book": r.details.get("closed_book"), "run_seconds": run_s,
                         "seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - c}
        if name == "negative":
            summary[name]["top_yes_no"] = r.details.get("top_yes_no")
            summary[name]["pairs_dropped"] = r.details.get("pairs_dropped")
            if not r.labelled and r.details.get("top_yes_no"):
                # exploratory, not a label: the causal check on the top heads of the paper's Yes/No-only ranking
                top = [tuple(d["head"]) for d in r.details["top_yes_no"][:3]]
                r.labelled = top
                t2 = time.perf_counter()
                summary[name]["exploratory_top3_yes_no_causal"] = {
                    "heads": [f"L{a}H{h}" for a, h in top], **_causal(det.causal(m, cfg, r)),
                    "rates": r.details.get("causal_rates"), "seconds": time.perf_counter() - t2}
                r.labelled = []
        print(name, json.dumps(summary[name], default=str), flush=True)
    if "memory" in summary and "skipped" not in summary["memory"]:
        st = cfg.shared(CONFLICT_PASS, m)
        summary["plain_forward_conflict_prompts"] = {"n": len(st.batch), "seconds": _plain_forward(m, st.batch.ids)}
    yb = yesno_batch(m.tokenizer, 1, seed=int(seed), first_pair_groups=YES_NO_GROUPS)    # the negative detector's prompts
    summary["plain_forward_yesno_prompts"] = {"n": len(yb), "seconds": _plain_forward(m, yb.ids)}
    with open(out, "w") as f:
        json.dump(summary, f, indent=1, default=str)
    print(json.dumps({k: v for k, v in summary.items() if k.startswith("plain")}, default=str))


if __name__ == "__main__":
    main(*sys.argv[1:])
