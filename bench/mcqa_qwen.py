"""The MCQA family on a model that can do the task (the qwen section of docs/mcqa_heads.md): each step run
as a scan runs it (one scan cache, the detectors in scan order), with the process CPU time and wall time of
each step, the labels, and the numbers behind the published directions.

    OMP_NUM_THREADS=2 python bench/mcqa_qwen.py qwen2.5-coder-1.5b OUT.json [--dtype bfloat16] [--shots 0]
        [--n 32] [--steps ep,mcqa,amplification,constant,single_letter,correct_letter,correct,content_gatherer,causal]
    python bench/mcqa_qwen.py --compare A.npz B.npz      # two runs' shared-pass arrays (e.g. bfloat16 vs float32)

- ``ref``: one forward over 8 x 64 random tokens, at the start and at the end: the unit in which the steps'
  costs are reported (``cpu_s / ref_cpu_s``), since absolute seconds on a shared machine mean little;
- ``ep``: the family's data pass (skill gate, letter logits of the twins, one DLA pass over the prompts and one
  over the twins); ``mcqa``: the output-head test and attribution patching; then each detector; ``causal``:
  each labelled detector's causal check, and for ``correct_letter`` the same ablation measured as accuracy;
- directions: correct-letter heads' final-token attention on the correct letter vs the other letters;
  amplification heads' DLA effect, option and letter attention; single-letter heads' attention on their
  letter when it is the answer and when it is not.

OUT.json holds the numbers; OUT.pkl the detector results and causal checks; OUT.npz the shared pass's arrays.
"""

from __future__ import annotations

import argparse
import json
import pickle
import time
from pathlib import Path

import numpy as np
import torch

import headatlas
from headatlas.detectors import ScanConfig, get
from headatlas.detectors.base import ScanCache
from headatlas.detectors.behaviours import Behaviour, HeadOp, at_positions, per_prompt
from headatlas.detectors.causal import set_check
from headatlas.detectors.dla.mcqa import MCQA_PASS
from headatlas.detectors.dla.mcqa_ep import EP_PASS, EVAL_SEED_OFFSET, answer_letter_ids, mcqa_format
from headatlas.errors import InputError
from headatlas.tasks.mcqa import mcqa_batch

STEPS = ("ep", "mcqa", "amplification", "constant", "single_letter", "correct_letter", "correct", "content_gatherer",
         "causal")


def timed(fn):
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, {"cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - w0}


def ref_forward(m) -> dict:
    ids = torch.randint(100, 30000, (8, 64), generator=torch.Generator().manual_seed(0))

    def run():
        with torch.no_grad():
            m.model(input_ids=ids.to(m.device), use_cache=False)
    return timed(run)[1]


def head(lh) -> str:
    return f"L{lh[0]}H{lh[1]}"


def summary(r) -> dict:
    if r.skipped:
        return {"skipped": r.skipped}
    top = np.argsort(-np.nan_to_num(r.effect, nan=-np.inf), axis=None)[:8]
    H = r.effect.shape[1]
    return {"labelled": [head(x) for x in r.labelled], "n_prompts": r.n_prompts,
            "top": [{"head": f"L{i // H}H{i % H}", "effect": float(r.effect.flat[i]), "q": float(r.q_value.flat[i]),
                     **{k: float(v.flat[i]) for k, v in r.extras.items()}} for i in top],
            "labelled_numbers": {head(x): {"effect": float(r.effect[x]), "ci": [float(r.ci_low[x]), float(r.ci_high[x])],
                                           "q": float(r.q_value[x]),
                                           **{k: float(v[x]) for k, v in r.extras.items()}} for x in r.labelled},
            "data": r.data_description}


def causal_summary(c) -> dict:
    rnd = np.array(c.random_effects) if c.random_effects else np.zeros(0)
    return {"effect": c.effect, "p": c.p_value, "baseline": c.baseline, "n_random": len(rnd),
            "random_median": float(np.median(rnd)) if len(rnd) else None,
            "random_min": float(rnd.min()) if len(rnd) else None, "note": c.note, "description": c.description}


def accuracy_check(m, cfg, result) -> dict:
    """The correct-letter heads' ablation measured as accuracy (letter argmax == answer), same prompts,
    random-set pool and mean ablation as the causal check."""
    topic, shots, n_options = mcqa_format(cfg)
    n, seed = (8 if cfg.quick else 16), cfg.seed + EVAL_SEED_OFFSET
    b = mcqa_batch(m.tokenizer, n, seed=seed, topic=topic, shots=shots, n_options=n_options)
    ans = answer_letter_ids(m.tokenizer, b)
    S = b.ids.shape[1]
    keep = S - int(b.final_pos.min())

    def hit(lg, p):
        ll = lg[:, ans.to(lg.device)]
        return (ll.argmax(1) == b.correct[p].to(ll.device)).double()
    beh = Behaviour(family="MCQA logit difference", metric="MCQA accuracy", expected="decrease", ids=b.ids,
                    score=per_prompt(at_positions(b.final_pos, S, keep, hit)), keep=keep, intervention=HeadOp("mean"),
                    description="accuracy")
    return causal_summary(set_check(m, cfg, result, beh))


def directions(m, cfg, res) -> dict:
    ep = cfg.shared(EP_PASS, m)
    st = cfg.shared(MCQA_PASS, m)
    correct = ep.batch.correct.numpy()
    B, K = st.attn.shape[1], st.attn.shape[-1]
    out: dict = {"output_heads": [head(x) for x in st.output.labelled], "patching": st.patching,
                 "accuracy": ep.accuracy, "twin_accuracy": ep.twin_accuracy, "logit_diff": ep.logit_diff}
    on = st.attn[:, np.arange(B), :, correct]                    # [B, L, H] attention on the correct letter
    on = np.moveaxis(on, 0, 1)
    others = (st.attn.sum(-1) - on) / (K - 1)
    cl = res.get("correct_letter")
    if cl is not None and not cl.skipped:
        out["correct_letter"] = {head(x): {"attn_correct": float(on[x[0], :, x[1]].mean()),
                                           "attn_other_mean": float(others[x[0], :, x[1]].mean()),
                                           "dla_output_effect": float(st.output.effect[x])} for x in cl.labelled}
    sl = res.get("single_letter")
    if sl is not None and not sl.skipped:
        d = {}
        for x in sl.labelled:
            j = int(sl.extras["letter"][x])
            a = st.attn[x[0], :, x[1], j]
            d[head(x)] = {"letter": "ABCD"[j], "attn_when_answer": float(a[correct == j].mean()),
                          "attn_when_not": float(a[correct != j].mean())}
        out["single_letter"] = d
    amp = res.get("amplification")
    if amp is not None and not amp.skipped:
        out["amplification"] = {head(x): {"dla_swap": float(amp.effect[x]),
                                          "option_attention": float(amp.extras["option_attention"][x]),
                                          "letter_attention": float(amp.extras["letter_attention"][x])}
                                for x in amp.labelled}
        out["amplification_readers"] = amp.details.get("readers")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?")
    ap.add_argument("out", nargs="?")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--shots", type=int, default=None)
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--steps", default=",".join(STEPS))
    ap.add_argument("--compare", nargs=2, default=None)
    a = ap.parse_args()
    if a.compare:
        print(json.dumps(compare(*a.compare), indent=1))
        return
    steps = a.steps.split(",")
    options = {} if a.shots is None else {"mcqa_shots": a.shots}
    m = headatlas.load(a.model, dtype=a.dtype, device="cpu")
    out: dict = {"model": a.model, "dtype": str(m.dtype), "threads": torch.get_num_threads(), "options": options,
                 "n_prompts": a.n, "steps": {}, "ref_start": ref_forward(m)}
    path = Path(a.out)
    cfg = ScanConfig(seed=0, n_prompts=a.n, options=options, cache=ScanCache())
    res: dict = {}
    checks: dict = {}

    def save() -> None:
        path.write_text(json.dumps(out, indent=1, default=str) + "\n")
        path.with_suffix(".pkl").write_bytes(pickle.dumps({"results": res, "checks": checks}))

    for step in steps:
        try:
            if step in ("ep", "mcqa"):
                p = EP_PASS if step == "ep" else MCQA_PASS
                _, t = timed(lambda p=p: cfg.shared(p, m))
                out["steps"][step] = t
            elif step == "causal":
                for name, r in res.items():
                    if r.skipped or not r.labelled:
                        continue
                    c, t = timed(lambda name=name, r=r: get(name).causal(m, cfg, r))
                    checks[name] = c
                    out["steps"][f"causal:{name}"] = t | causal_summary(c)
                    save()
                if "correct_letter" in res and res["correct_letter"].labelled:
                    acc, t = timed(lambda: accuracy_check(m, cfg, res["correct_letter"]))
                    out["steps"]["causal:correct_letter:accuracy"] = t | acc
            else:
                c2 = ScanConfig(seed=0, n_prompts=None if step == "content_gatherer" else a.n, options=options,
                                cache=cfg.cache, results=dict(res))
                r, t = timed(lambda step=step, c2=c2: get(step).run(m, c2))
                res[step] = r
                out["steps"][step] = t | summary(r)
        except InputError as e:
            out["steps"][step] = {"skipped": str(e)}
        print(step, json.dumps(out["steps"].get(step, ""), default=str)[:400], flush=True)
        save()
    try:
        out["directions"] = directions(m, cfg, res)
        ep = cfg.shared(EP_PASS, m)
        np.savez(path.with_suffix(".npz"), letter_dla=ep.letter_dla, swap=ep.swap, option_attention=ep.option_attention,
                 letter_attention=ep.letter_attention, attn=ep.attn.numpy(), attn_twin=ep.attn_twin.numpy())
    except InputError as e:
        out["directions"] = {"skipped": str(e)}
    out["ref_end"] = ref_forward(m)
    save()


def compare(a: str, b: str) -> dict:
    """Agreement of two runs' shared-pass arrays: correlation, largest difference, and the top heads."""
    x, y = np.load(a), np.load(b)
    out = {}
    for k in x.files:
        u, v = x[k].astype(float).ravel(), y[k].astype(float).ravel()
        out[k] = {"corr": float(np.corrcoef(u, v)[0, 1]), "max_abs_diff": float(np.abs(u - v).max()),
                  "scale": float(np.abs(u).max())}
    sx, sy = x["swap"].mean(1), y["swap"].mean(1)
    H = sx.shape[1]
    top = lambda s: [f"L{i // H}H{i % H}" for i in np.argsort(-s, axis=None)[:10]]  # noqa: E731
    out["top_swap"] = {"a": top(sx), "b": top(sy), "overlap": len(set(top(sx)) & set(top(sy)))}
    return out


if __name__ == "__main__":
    main()
