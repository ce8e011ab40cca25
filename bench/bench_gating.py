"""Gating on a bundled model: timings and the numbers of docs/gating.md.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_gating.py smollm2-135m [out.json]

Runs previous_token and induction (for the agreement), then the ``gating`` detector with its causal
check, and times: one plain forward over the fit prompts, one forward+backward gate step, the gate fits,
the whole detector, and the causal check. Prints a table and writes the numbers as JSON.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

import headatlas
from headatlas.detectors import ScanConfig, gating
from headatlas.detectors.behaviours import repeat_loss_check
from headatlas.methods.gating import _task_loss, target_mask
from headatlas.tasks.repeats import repeated_tokens


def main(spec: str = "smollm2-135m", out: str | None = None, seed: int = 0) -> dict:
    torch.set_num_threads(1)
    m = headatlas.load(spec)
    L, H = m.info.n_layers, m.info.n_heads
    st = gating.Settings.of(ScanConfig(seed=seed))
    b = repeated_tokens(m.tokenizer, st.n_fit, st.block, 2, torch.Generator().manual_seed(seed))
    mask = target_mask(b.ids, b.repeat_positions())
    t0 = time.perf_counter()
    with torch.no_grad():
        m.model(input_ids=b.ids, use_cache=False)
    t_fwd = time.perf_counter() - t0
    theta = torch.full((L, H), 3.0, requires_grad=True)
    for p in m.model.parameters():
        p.requires_grad_(False)
    t0 = time.perf_counter()
    _task_loss(m, b.ids, mask, torch.sigmoid(theta)).backward()
    t_step = time.perf_counter() - t0
    for p in m.model.parameters():
        p.requires_grad_(True)

    print(f"plain forward {t_fwd:.2f} s, gate step {t_step:.2f} s", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    prior = headatlas.scan(m, ["previous_token", "induction"], seed=seed, causal=False)
    t_prior = time.perf_counter() - t0
    cfg = ScanConfig(seed=seed, results={n: prior.result(n) for n in ("previous_token", "induction")})
    print(f"previous_token+induction {t_prior:.1f} s", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    r = gating.run(m, cfg)
    t_run = time.perf_counter() - t0
    print(f"gating run {t_run:.1f} s", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    cc = repeat_loss_check(m, cfg, r)
    t_causal = time.perf_counter() - t0

    order = np.argsort(-r.scores, axis=None)[:12]
    top = [{"head": [int(a), int(b_)], "g_minus": float(r.scores[a, b_]),
            "g_minus_std": float(r.extras["g_minus_std"][a, b_]),
            "g_plus": float(r.extras["g_plus"][a, b_]), "effect": float(r.effect[a, b_]),
            "closing_task": float(r.extras["closing_task"][a, b_]), "closing_twin": float(r.extras["closing_twin"][a, b_]),
            "p": float(r.p_value[a, b_]), "q": float(r.q_value[a, b_])}
           for a, b_ in (np.unravel_index(i, r.scores.shape) for i in order)]
    rnd = np.asarray(cc.random_effects) if cc.random_effects else np.zeros(0)
    res = {"model": spec, "seed": seed, "labelled": [list(x) for x in r.labelled], "classes": r.details["classes"],
           "agreement": r.details["agreement"], "top": top, "details": {k: v for k, v in r.details.items()
                                                                         if k not in ("classes", "agreement")},
           "prior_labels": {n: [list(x) for x in prior.result(n).labelled] for n in ("previous_token", "induction")},
           "causal": {"effect": cc.effect, "p": cc.p_value, "baseline": cc.baseline, "kind": cc.kind,
                      "random_median": float(np.median(rnd)) if rnd.size else None,
                      "random_range": [float(rnd.min()), float(rnd.max())] if rnd.size else None},
           "seconds": {"plain_forward_fit_prompts": t_fwd, "gate_step_fwd_bwd": t_step, "gating_run": t_run,
                       "causal_check": t_causal, "previous_token+induction": t_prior}}
    print(f"| model | plain fwd ({st.n_fit}x{b.ids.shape[1]}) | gate step fwd+bwd | gating run | causal check |")
    print("|---|---|---|---|---|")
    s = res["seconds"]
    print(f"| {spec} | {s['plain_forward_fit_prompts']:.2f} s | {s['gate_step_fwd_bwd']:.2f} s | {s['gating_run']:.1f} s "
          f"| {s['causal_check']:.1f} s |")
    print(json.dumps(res, indent=1, default=float))
    if out:
        with open(out, "w") as f:
            json.dump(res, f, indent=1, default=float)
    return res


if __name__ == "__main__":
    main(*sys.argv[1:3])
