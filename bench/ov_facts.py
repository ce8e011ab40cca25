"""Numbers for docs/successor_and_facts.md: the successor, semantic_induction, subject, relation and
mixed detectors on a bundled model, with causal checks, wall times and the time of one plain forward
over each detector's prompts.

    OMP_NUM_THREADS=1 .venv/bin/python bench/ov_facts.py smollm2-135m    # -> bench/results/ov_facts_smollm2-135m.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import headatlas
from headatlas.detectors import ScanConfig, get
from headatlas.detectors.base import ScanCache
from headatlas.errors import InputError

NAMES = ("successor", "subject", "relation", "mixed", "semantic_induction")


def plain_forward_seconds(m, name: str, seed: int) -> float:
    """One plain forward (no instrumentation) over the prompts the detector reads."""
    from headatlas.methods.ov_circuit import effective_embeddings
    from headatlas.tasks.facts import fact_batch
    from headatlas.tasks.ordinal import ordinal_families
    from headatlas.tasks.relations import relation_batch, split_pairs

    t0 = time.perf_counter()
    with torch.no_grad():
        if name == "successor":      # weights only: the effective-embedding pass over the ordinal tokens
            ids = torch.tensor([i for f in ordinal_families(m.tokenizer) for i in f.ids])
            effective_embeddings(m, ids)
        elif name in ("subject", "relation", "mixed"):
            b = fact_batch(m.tokenizer)
            for s in range(0, b.ids.shape[0], 16):
                m.model(input_ids=b.ids[s:s + 16].to(m.device), use_cache=False, logits_to_keep=1)
        else:
            det, _ = split_pairs(m.tokenizer, seed=seed)
            for t in range(2):
                b = relation_batch(m.tokenizer, template=t, k=1, seed=seed, rows=det)
                for s in range(0, b.ids.shape[0], 16):
                    m.model(input_ids=b.ids[s:s + 16].to(m.device), use_cache=False, logits_to_keep=1)
    return time.perf_counter() - t0


def main(model: str = "smollm2-135m", seed: int = 0) -> dict:
    torch.set_num_threads(1)
    m = headatlas.load(model)
    cfg = ScanConfig(seed=seed, cache=ScanCache())
    out: dict = {"model": model, "seed": seed, "detectors": {}}
    for name in NAMES:
        det = get(name)
        t0 = time.perf_counter()
        try:
            r = det.run(m, cfg)
        except InputError as e:
            out["detectors"][name] = {"skipped": str(e), "seconds": time.perf_counter() - t0}
            print(name, "skipped:", e, flush=True)
            continue
        t_run = time.perf_counter() - t0
        c = det.causal(m, cfg, r)
        t_all = time.perf_counter() - t0
        heads = [{"head": f"L{a}H{b}", "score": float(r.scores[a, b]), "effect": float(r.effect[a, b]),
                  "null_mean": float(r.null_mean[a, b]), "q": float(r.q_value[a, b]),
                  **{k: float(v[a, b]) for k, v in r.extras.items() if k != "not_mixed"}} for a, b in r.labelled]
        best = np.unravel_index(np.nanargmax(r.effect), r.effect.shape)
        out["detectors"][name] = {
            "labelled": heads, "n_prompts": r.n_prompts, "data": r.data_description, "null": r.null_description,
            "best_head": {"head": f"L{best[0]}H{best[1]}", "score": float(r.scores[best]), "effect": float(r.effect[best]),
                          "p": float(r.p_value[best]), "q": float(r.q_value[best])},
            "causal": {"effect": c.effect, "baseline": c.baseline, "random_median": float(np.median(c.random_effects))
                       if c.random_effects else None, "p": c.p_value, "metric": c.metric, "note": c.note,
                       "n_prompts": c.n_prompts},
            "details": {k: v for k, v in r.details.items() if k in ("families", "top_heads", "n_correct", "n_facts",
                                                                     "per_relation", "n_detect", "n_eval",
                                                                     "multi_token_attributes", "model_tail_minus_controls",
                                                                     "n_pairs", "relations")},
            "seconds_run": t_run, "seconds_with_causal": t_all,
            "plain_forward_seconds": plain_forward_seconds(m, name, seed)}
        print(name, json.dumps({k: out["detectors"][name][k] for k in ("labelled", "causal", "seconds_run",
                                                                       "seconds_with_causal", "plain_forward_seconds")},
                               default=str)[:1500], flush=True)
    path = Path(__file__).parent / "results" / f"ov_facts_{model}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=float))
    return out


if __name__ == "__main__":
    main(*(sys.argv[1:2] or ["smollm2-135m"]))
