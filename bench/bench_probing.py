"""Speed of per-head probing: every head of a model probed on 400 true/false statements (200 pairs).

Prints: one plain forward over the statements (no taps), the capture pass (forward + z at the last token),
the probe fits with the 999-permutation shuffled-label null (closed-form ridge, all heads at once), and the
total of headatlas.probe; optionally the scikit-learn LogisticRegression probe without permutations.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_probing.py smollm2-135m [--logistic]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default="smollm2-135m")
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--logistic", action="store_true", help="also time sklearn LogisticRegression (real labels only)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import headatlas
    from headatlas.methods.probing import capture_heads, probe_features, resolve_positions, token_rows
    from headatlas.tasks.statements import pairs_to_records, statement_pairs

    m = headatlas.load(args.model, device="cpu")
    n_arith = 60
    pairs = statement_pairs(seed=0, n_arithmetic=n_arith)
    while len(pairs) < args.pairs:
        n_arith += args.pairs - len(pairs)
        pairs = statement_pairs(seed=0, n_arithmetic=n_arith)
    texts, labels, groups = pairs_to_records(pairs[:args.pairs])
    rows = token_rows(m, texts)
    pos = resolve_positions(rows, -1)
    pad = m.tokenizer.pad_token_id if m.tokenizer.pad_token_id is not None else 0

    t = time.perf_counter()
    order = np.argsort([len(r) for r in rows])
    for s in range(0, len(rows), 16):
        idx = order[s:s + 16]
        w = max(len(rows[i]) for i in idx)
        ids = torch.full((len(idx), w), pad)
        for r, i in enumerate(idx):
            ids[r, :len(rows[i])] = torch.tensor(rows[i])
        with torch.no_grad():
            m.model(input_ids=ids, use_cache=False, logits_to_keep=1)
    plain = time.perf_counter() - t

    t = time.perf_counter()
    cap = capture_heads(m, rows, pos, batch_size=16)
    capture = time.perf_counter() - t
    t = time.perf_counter()
    pr = probe_features(cap.features, labels, groups, n_perm=999, seed=0)
    fit = time.perf_counter() - t
    L, H = pr.accuracy.shape
    print(f"| model | statements | heads | plain forward s | capture (forward + z) s | ridge probes + 999-perm null s | total s |")
    print(f"|---|---|---|---|---|---|---|")
    print(f"| {args.model} | {len(texts)} | {L * H} | {plain:.1f} | {capture:.1f} | {fit:.1f} | {capture + fit:.1f} |")
    print(f"best head L{pr.top(1)[0][0]}H{pr.top(1)[0][1]} accuracy {pr.accuracy.max():.3f}, "
          f"{int((pr.q <= 0.05).sum())} heads q <= 0.05")
    if args.logistic:
        t = time.perf_counter()
        probe_features(cap.features, labels, groups, n_perm=1, method="logistic", seed=0)
        print(f"sklearn LogisticRegression, real labels + 1 permutation: {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
