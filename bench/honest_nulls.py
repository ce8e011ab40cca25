"""Before/after numbers for the nulls whose unit of replication is not the prompt (issue 16, "honest nulls"):
the detectors' statistics on a bundled model, without causal checks, each with the old null on the same
captured data where the old null can be recomputed.

    OMP_NUM_THREADS=2 .venv/bin/python bench/honest_nulls.py smollm2-135m OUT.json [detector,...] [--cache DIR]

Detectors: ``semantic_induction`` (flips by relation pair vs per prompt), ``function_vector`` (across-task test
vs pooled prompt flips), ``negative`` (frequency-matched answer words; the rare_words overlap), ``in_context``
(class pairs selected on separate prompts), ``ioi`` (name_mover / negative_name_mover at the default 64
prompts). ``--cache DIR`` keeps the captured per-prompt arrays (pickle), so the statistics can be recomputed
without the forward passes. The old numbers of the detectors whose data changed come from the shipped atlas
(``docs/atlas-<model>/atlas.json``, made by the previous versions at seed 0). The smollm2-135m run the docs quote
is in ``bench/results/honest_nulls_smollm2-135m.json``.
"""

from __future__ import annotations

import json
import pickle
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

import headatlas
from headatlas.detectors import ScanConfig, get

ROOT = Path(__file__).resolve().parents[1]


def head(a: int, b: int) -> str:
    return f"L{a}H{b}"


def labels(r) -> list[dict[str, Any]]:
    return [{"head": head(a, b), "score": round(float(r.scores[a, b]), 4), "effect": round(float(r.effect[a, b]), 4),
             "p": float(r.p_value[a, b]), "q": float(r.q_value[a, b]), "stability": round(float(r.stability[a, b]), 3)}
            for a, b in r.labelled]


def numbers(r, heads: list[str]) -> dict[str, Any]:
    out = {}
    for h in heads:
        a, b = (int(x) for x in h[1:].split("H"))
        out[h] = {"score": round(float(r.scores[a, b]), 4), "effect": round(float(r.effect[a, b]), 4),
                  "ci": [round(float(r.ci_low[a, b]), 4), round(float(r.ci_high[a, b]), 4)],
                  "p": float(r.p_value[a, b]), "q": float(r.q_value[a, b])}
    return out


def shipped(model: str, name: str) -> dict[str, Any]:
    """The previous version's result on the shipped atlas (labels with p, q)."""
    from headatlas import Atlas

    path = ROOT / "docs" / f"atlas-{model}" / "atlas.json"
    if not path.exists():
        return {"note": f"{path} not found"}
    a = Atlas.load(path)
    if name not in a.detectors:
        return {"note": f"{name} not in the shipped atlas"}
    r = a.result(name)
    return {"version": a.meta[name].version, "n_prompts": r.n_prompts, "labelled": labels(r), "skipped": r.skipped,
            "p_below_0.05": int(np.sum(r.p_value < 0.05))}


def cached(cache: Path | None, key: str, compute: Callable[[], Any]) -> Any:
    if cache is None:
        return compute()
    f = cache / f"{key}.pkl"
    if f.exists():
        return pickle.loads(f.read_bytes())
    value = compute()
    cache.mkdir(parents=True, exist_ok=True)
    f.write_bytes(pickle.dumps(value))
    return value


def semantic_induction(m, model: str, cache: Path | None) -> dict[str, Any]:
    from headatlas.detectors.dla import semantic_induction as si
    from headatlas.tasks.relations import split_pairs

    def capture():
        det_rows, _ = split_pairs(m.tokenizer, seed=0)
        bs = si.batches(m, det_rows, 0)
        parts = [si.measure(m, b, 8) for b in bs]
        per = {k: np.concatenate([p[k] for p in parts], axis=1 if k != "model" else 0) for k in parts[0]}
        rel = [r for b in bs for r in b.relation]
        pairs = [f"{r}:{h}:{t}" for b in bs for r, (h, t) in zip(b.relation, b.pairs)]
        return per, rel, pairs

    per, rel, pairs = cached(cache, f"{model}-semantic", capture)
    old = si.semantic_result(per, rel, seed=0, data="per-prompt flips")
    new = si.semantic_result(per, rel, seed=0, data="flips by pair", pairs=pairs)
    watch = sorted({d["head"] for d in labels(old)} | {d["head"] for d in labels(new)})
    return {"n_prompts": len(rel), "n_pairs": len(set(pairs)),
            "per_prompt_flips": {"labelled": labels(old), "p_below_0.05": int(np.sum(old.p_value < 0.05)),
                                 "numbers": numbers(old, watch)},
            "pair_flips": {"labelled": labels(new), "p_below_0.05": int(np.sum(new.p_value < 0.05)),
                           "numbers": numbers(new, watch)}}


def function_vector(m, model: str, cache: Path | None) -> dict[str, Any]:
    from headatlas.detectors.causal import effect_map_result
    from headatlas.detectors.patching import function_vector as fv

    cfg = ScanConfig(seed=0)
    st = cached(cache, f"{model}-fv", lambda: fv.compute_fv(m, cfg))
    per_prompt = np.where(np.isnan(st.exact), st.attribution, st.exact)
    exact = (~np.isnan(st.exact[:, 0, :])).astype(float)
    pooled = effect_map_result("function_vector", per_prompt, fv.FV_RULE, seed=0, data_description="pooled",
                               extras={"exact": exact})
    new = fv.fv_result(per_prompt, st.task_of(), exact, seed=0, data_description="across tasks")
    watch = sorted({d["head"] for d in labels(pooled)} | {d["head"] for d in labels(new)} | {"L29H0", "L20H5"})
    by_task = {h: {t: round(float(new.extras[f"aie_{t}"][a, b]), 4) for t in st.kept}
               for h in watch for a, b in [(int(x) for x in h[1:].split("H"))]}
    return {"n_per_task": st.n_per_task, "tasks": st.kept, "accuracy": st.accuracy, "seconds": st.seconds,
            "pooled_prompt_flips": {"labelled": labels(pooled)},
            "across_tasks": {"labelled": labels(new), "min_tasks": new.details["min_tasks"],
                             "task_specific": new.details["task_specific"], "numbers": numbers(new, watch)},
            "aie_by_task": by_task}


def run_detector(m, name: str, cfg: ScanConfig) -> tuple[dict[str, Any], Any]:
    t0 = time.perf_counter()
    r = get(name).run(m, cfg)
    out = {"seconds": round(time.perf_counter() - t0, 1), "n_prompts": r.n_prompts, "labelled": labels(r)}
    return out, r


def negative(m, model: str, cache: Path | None) -> dict[str, Any]:
    rw_out, rw = run_detector(m, "rare_words", ScanConfig(seed=0))
    out, r = run_detector(m, "negative", ScanConfig(seed=0, results={"rare_words": rw}))
    watch = sorted({d["head"] for d in shipped(model, "negative").get("labelled", [])} | {d["head"] for d in labels(r)})
    out.update({"word_frequency": r.details["word_frequency"], "rare_words": r.details["rare_words"],
                "n_pairs": r.details["n_pairs"], "pairs_dropped": r.details["pairs_dropped"],
                "behaviour": {k: r.details["behaviour"][k] for k in ("no_rate", "accuracy", "p_no_minus_p_yes")},
                "numbers": numbers(r, watch), "rare_words_effect_of_old_labels": numbers(rw, watch),
                "rare_words_labelled": [d["head"] for d in labels(rw)]})
    return out


def in_context(m, model: str, cache: Path | None) -> dict[str, Any]:
    from headatlas.errors import InputError

    try:
        out, r = run_detector(m, "in_context", ScanConfig(seed=0))
    except InputError as e:
        return {"skipped": str(e)}
    out.update({k: r.details[k] for k in ("kept_pairs", "selection_accuracy_per_pair", "accuracy_per_pair", "accuracy",
                                         "binomial_p", "mean_logit_diff")})
    return out


def ioi(m, model: str, cache: Path | None) -> dict[str, Any]:
    from headatlas.detectors.base import ScanCache

    cfg = ScanConfig(seed=0, cache=ScanCache(), options={"mover_patching": "none"})
    pos_out, pos = run_detector(m, "name_mover", cfg)
    neg_out, neg = run_detector(m, "negative_name_mover", cfg)
    watch = ["L23H0", "L23H3", "L24H4"]
    return {"note": "default settings (64 prompts); mover_patching='none' (the patching agreement is not needed here)",
            "name_mover": {**pos_out, "numbers": numbers(pos, watch)},
            "negative_name_mover": {**neg_out, "numbers": numbers(neg, watch),
                                    "io_attention": {h: round(float(neg.extras["io_attention"][a, b]), 3) for h in watch
                                                     for a, b in [(int(x) for x in h[1:].split("H"))]}},
            "shipped_name_mover": shipped(model, "name_mover")}


SECTIONS = {"semantic_induction": semantic_induction, "function_vector": function_vector, "negative": negative,
            "in_context": in_context, "ioi": ioi}


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    cache = Path(sys.argv[sys.argv.index("--cache") + 1]) if "--cache" in sys.argv else None
    if cache is not None and str(cache) in args:
        args.remove(str(cache))
    model, out = args[0], Path(args[1])
    which = args[2].split(",") if len(args) > 2 else list(SECTIONS)
    m = headatlas.load(model)
    report: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    report["model"] = model
    for name in which:
        t0 = time.perf_counter()
        report[name] = {"after": SECTIONS[name](m, model, cache),
                        "shipped_atlas": shipped(model, "negative_name_mover" if name == "ioi" else name),
                        "seconds": round(time.perf_counter() - t0, 1)}
        out.write_text(json.dumps(report, indent=1, default=str))
        print(name, "done", report[name]["seconds"], "s", flush=True)


if __name__ == "__main__":
    main()
