"""MCQA EP heads on a bundled model: accuracy per prompt format, then amplification / correct /
correct_letter with timings (the numbers of docs/mcqa_heads.md).

    OMP_NUM_THREADS=1 .venv/bin/python bench/mcqa_ep.py smollm2-135m out.json [--formats colors:3:4 ...]
        [--ungated]

A format is ``topic:shots:options``. ``--ungated`` also runs amplification with
``options["mcqa_require_skill"]=False`` (what the statistics give when the model is at chance).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import headatlas
from headatlas.detectors import ScanConfig, get
from headatlas.detectors.dla.mcqa import answer_letter_ids
from headatlas.detectors.dla.mcqa_ep import binomial_above_chance, letter_logits
from headatlas.errors import InputError
from headatlas.tasks.mcqa import mcqa_batch

FORMATS = ("arithmetic:0:4", "arithmetic:3:4", "colors:0:4", "colors:3:4", "colors:3:2", "colors:5:2")


def accuracy(m, fmt: str, n: int, seed: int) -> dict:
    topic, shots, k = fmt.split(":")
    b = mcqa_batch(m.tokenizer, n, seed=seed, topic=topic, shots=int(shots), n_options=int(k))
    ans = answer_letter_ids(m.tokenizer, b)
    t0 = time.perf_counter()
    lp = letter_logits(m, b.ids, b.final_pos, ans, 8)
    plain = time.perf_counter() - t0
    lt = letter_logits(m, b.swapped_ids, b.final_pos, ans, 8)
    hp, ht = lp.argmax(1) == b.correct, lt.argmax(1) == b.swapped_correct
    c = lp.gather(1, b.correct[:, None])[:, 0]
    return {"format": fmt, "n": n, "accuracy": float(hp.double().mean()), "twin_accuracy": float(ht.double().mean()),
            "both": float((hp & ht).double().mean()), "chance": 1 / int(k),
            "binomial_p": binomial_above_chance(int(hp.sum()), n, 1 / int(k)),
            "logit_diff": float((c - (lp.sum(1) - c) / (int(k) - 1)).mean()),
            "predicted_letters": torch.bincount(lp.argmax(1), minlength=int(k)).tolist(),
            "plain_forward_s": plain, "seq": int(b.ids.shape[1])}


def run(m, name: str, cfg: ScanConfig) -> dict:
    det = get(name)
    t0 = time.perf_counter()
    try:
        r = det.run(m, cfg)
    except InputError as e:
        return {"detector": name, "skipped": str(e), "seconds": time.perf_counter() - t0}
    out = {"detector": name, "labelled": [list(x) for x in r.labelled], "seconds": time.perf_counter() - t0,
           "top": [[int(a), int(b), float(r.effect[a, b]), float(r.q_value[a, b])]
                   for a, b in zip(*divmod(r.effect.argsort(axis=None)[::-1][:5], r.effect.shape[1]))]}
    if r.labelled and det.causal is not None:
        t1 = time.perf_counter()
        c = det.causal(m, cfg, r)
        out["causal"] = {"effect": c.effect, "random_median": float(sorted(c.random_effects)[len(c.random_effects) // 2]),
                         "p": c.p_value, "seconds": time.perf_counter() - t1}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--formats", nargs="*", default=list(FORMATS))
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--ungated", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    m = headatlas.load(a.model)
    res: dict = {"model": a.model, "formats": [], "detectors": []}
    for f in a.formats:
        res["formats"].append(accuracy(m, f, a.n, 0))
        print(json.dumps(res["formats"][-1]), flush=True)
    for name in ("amplification", "correct", "correct_letter"):
        res["detectors"].append(run(m, name, ScanConfig(seed=0)))
        print(json.dumps(res["detectors"][-1]), flush=True)
    if a.ungated:
        r = run(m, "amplification", ScanConfig(seed=0, options={"mcqa_require_skill": False}))
        r["detector"] = "amplification (ungated)"
        res["detectors"].append(r)
        print(json.dumps(r), flush=True)
    with open(a.out, "w") as fh:
        json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
