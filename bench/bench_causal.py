"""The causal battery (checks v3) against plain forwards over each check's prompts, and against the v2 checks.

For each detector: its statistics run first (one shared-pass cache, as in a scan), then, interleaved in one
process: a plain forward over the check's prompts (no instrumentation, ``inference_mode``, only the positions
the metric reads unembedded; the unit), the v3 check (>= 99 random sets from the clean pool, per-head runs, all
as batch rows) and, with ``--old DIR``, the v2 check of the same labelled heads (20 random sets, one batch of
prompts per set) from a copy of the package before v3 renamed ``headatlas_old`` in ``DIR`` (``git archive
fac2ac9 src/headatlas``; its attention registry prefix changed so the two can share the model). The v2 checks
read the same shared passes (the caches are shared; the classes match by field names).

Run: ``python bench/bench_causal.py [--model smollm2-135m] [--detectors a,b|all] [--old /tmp/oldpkg]``.
Writes the "causal" section of bench/RESULTS.md (``--no-write`` to only print).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import headatlas  # noqa: E402
from collect import machine_line, write_section  # noqa: E402
from headatlas.detectors import base as registry  # noqa: E402
from headatlas.detectors.base import ScanCache, ScanConfig  # noqa: E402
from headatlas.detectors.pools import mark_distributed  # noqa: E402
from headatlas.scan import resolve_detectors  # noqa: E402

DEFAULT = ("induction,previous_token,duplicate_token,retrieval,name_mover,negative_name_mover,successor,"
           "memory,context,negative,subject,relation,mixed,semantic_induction,truthfulness,function_vector")


def plain_seconds(m, ids: torch.Tensor, keep: int, batch: int = 8) -> float:
    t0 = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, ids.shape[0], batch):
            m.model(input_ids=ids[s:s + batch].to(m.device), use_cache=False, logits_to_keep=keep)
    return time.perf_counter() - t0


def load_old(path: str, m):
    sys.path.insert(0, path)
    import headatlas_old  # type: ignore[import-not-found]
    import headatlas_old.detectors  # type: ignore[import-not-found]  # noqa: F401  (registers the v2 detectors)

    return headatlas_old, headatlas_old.load((m.model, m.tokenizer), device="cpu")


def phase_one(m, names: list[str], seed: int, path: str | None):
    """Every detector's statistics with one shared-pass cache (as in a scan); with ``path``, saved there (pickle) on
    the first run and loaded on the next ones (the benchmark times the checks)."""
    if path and Path(path).is_file():
        saved = torch.load(path, weights_only=False)
        if saved["names"] == names and saved["seed"] == seed:
            cache = ScanCache()
            cache.values.update(saved["cache"])
            return cache, saved["results"], saved["seconds"]
    cache = ScanCache()
    results, seconds = {}, {}
    for name in names:
        t0 = time.perf_counter()
        cfg = ScanConfig(seed=seed, cache=cache, results=dict(results))
        try:
            r = registry.get(name).run(m, cfg)
        except headatlas.errors.InputError as exc:
            r = registry.skipped_result(name, m.info.n_layers, m.info.n_heads, str(exc), seed)
        if not r.skipped:
            mark_distributed(r)
        results[name], seconds[name] = r, time.perf_counter() - t0
        print(f"{name}: statistics {seconds[name]:.1f} s, {len(r.labelled)} labelled", flush=True)
    if path:
        torch.save({"names": names, "seed": seed, "cache": dict(cache.values), "results": results, "seconds": seconds},
                   path)
    return cache, results, seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--detectors", default=DEFAULT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--old", default=None, help="folder holding headatlas_old (the v2 package) to time its checks too")
    ap.add_argument("--cache", default=None, help="a file keeping the statistics phase between runs (pickle)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    m = headatlas.load(args.model, device="cpu")
    names = registry.scan_order(resolve_detectors(args.detectors))
    old = load_old(args.old, m) if args.old else None
    cache, results, stat_s = phase_one(m, names, args.seed, args.cache)
    load0 = os.getloadavg()[0]
    rows = []
    for name in names:
        det, r = registry.get(name), results[name]
        if det.causal is None or r.skipped or not r.labelled:
            continue
        cfg = ScanConfig(seed=args.seed, cache=cache, results=dict(results))
        beh = det.behaviour(m, cfg, r)
        plain = [plain_seconds(m, beh.ids, beh.keep)]
        t0 = time.perf_counter()
        c = det.causal(m, cfg, r)
        new_s = time.perf_counter() - t0
        plain.append(plain_seconds(m, beh.ids, beh.keep))
        old_s = float("nan")
        if old is not None:
            pkg, mo = old
            ocfg = pkg.detectors.base.ScanConfig(seed=args.seed, results=dict(results))
            ocfg.cache.values.update(cache.values)       # the v2 check reads the same shared passes
            t0 = time.perf_counter()
            pkg.detectors.get(name).causal(mo, ocfg, r)
            old_s = time.perf_counter() - t0
            plain.append(plain_seconds(m, beh.ids, beh.keep))
        p = statistics.median(plain)
        rows.append((name, len(c.heads), len(c.random_sets), c.exhaustive, len(c.per_head), beh.n_prompts,
                     tuple(beh.ids.shape), old_s, new_s, p, c.p_value))
        print(f"{name}: v3 {new_s:.1f} s ({len(c.random_sets)} sets, p {c.p_value:.3g}), v2 {old_s:.1f} s, "
              f"plain {p:.2f} s", flush=True)
    load1 = os.getloadavg()[0]
    tot_old = sum(r[7] for r in rows)
    tot_new = sum(r[8] for r in rows)
    tot_plain = sum(r[9] for r in rows)
    lines = [
        "## causal: the causal battery (checks v3) vs plain forwards over the checks' prompts and vs the v2 checks",
        "",
        f"Model `{args.model}`, float32, CPU: {machine_line()}; load average {load0:.1f} before the checks, {load1:.1f} "
        f"after (the machine is shared). `python bench/bench_causal.py --detectors {args.detectors}"
        f"{' --old ' + args.old if args.old else ''}` (seed {args.seed}). Each detector's statistics ran first (one "
        "shared-pass cache); then, interleaved per detector: a plain forward over the check's prompts (the unit; "
        "median of the runs around the checks), the v3 check (random sets from the family's clean pool, >= 99 or "
        "all, plus each tested head alone, as batch rows of stacked passes from each set's first layer), and the v2 "
        "check of the same heads (20 random sets, one pass over the prompts per set).",
        "",
        "| detector | tested heads | v3 sets | per-head runs | prompts [B, S] | v2 s | v3 s | plain s | v2 / plain | "
        "v3 / plain | v3 / v2 | v3 p |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, k, n, ex, ph, _b, shape, o, nw, p, pv in rows:
        lines.append(f"| {name} | {k} | {n}{' (all)' if ex else ''} | {ph} | {list(shape)} | {o:.1f} | {nw:.1f} | "
                     f"{p:.2f} | {o / p:.0f}x | {nw / p:.0f}x | {nw / o:.2f} | {pv:.3g} |")
    lines += [f"| **all** | | | | | {tot_old:.1f} | {tot_new:.1f} | {tot_plain:.2f} | {tot_old / tot_plain:.0f}x | "
              f"{tot_new / tot_plain:.0f}x | **{tot_new / tot_old:.2f}** | |", ""]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("causal", text)


if __name__ == "__main__":
    main()
