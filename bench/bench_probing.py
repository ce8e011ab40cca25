"""Per-head probing: headatlas vs honest_llama's recipe (Li et al. 2023, ITI), end to end, same statements.

    python bench/bench_probing.py                  # writes bench/results/probing.md (+ bench/RESULTS.md)
    python bench/bench_probing.py --device cuda    # on a GPU (bench/gpu.sh): probing-cuda.md

Every head of smollm2-135m probed on the package's true/false statements (``--pairs`` pairs, a statement
and its false twin one group), z (the o_proj input) at the last token. Interleaved rounds (A B C A B C ...),
medians of wall time; each time is the whole job from token ids to per-head accuracies:

- honest_llama's recipe: one forward per statement (batch 1, every position unembedded, as its
  ``get_llama_activations_bau`` runs it) with the head outputs read at ``o_proj``'s input, then one
  scikit-learn ``LogisticRegression(random_state=seed, max_iter=1000)`` per head fitted on a grouped 80/20
  split (its ``train_probes``), accuracy on the 20%;
- headatlas, the same job: ``capture_heads`` (batches of ``--batch`` statements sorted by length and
  right-padded, the unembedding on the last position only) and the ridge probe of every head on the same
  split in one batched solve (``probe_fit.ridge_operator``);
- headatlas ``probe()`` as it ships: the same capture, grouped 5-fold cross-validation and the 9,999-draw
  shuffled-label null for every head (p-values, which the recipe does not compute).

Agreement: Spearman of the per-head accuracies against the recipe's, and the overlap of the top-16 heads.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from collect import interleaved, machine_line, write_section  # noqa: E402

import headatlas  # noqa: E402
from headatlas.methods.probe_capture import capture_heads, resolve_positions, token_rows  # noqa: E402
from headatlas.methods.probe_fit import grouped_folds, probe_features, ridge_operator  # noqa: E402
from headatlas.tasks.statements import pairs_to_records, statement_pairs  # noqa: E402

MODEL = "smollm2-135m"


def statements(n_pairs: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    n_arith = 60
    pairs = statement_pairs(seed=0, n_arithmetic=n_arith)
    while len(pairs) < n_pairs:
        n_arith += n_pairs - len(pairs)
        pairs = statement_pairs(seed=0, n_arithmetic=n_arith)
    return pairs_to_records(pairs[:n_pairs])


def recipe_capture(m, rows: list[list[int]]) -> np.ndarray:
    """``[N, L, H, D]``: one forward per text, ``o_proj``'s input at the last token (honest_llama's
    ``get_llama_activations_bau`` reads the same tensor through baukit's TraceDict)."""
    L, H, D = m.info.n_layers, m.info.n_heads, m.info.d_head
    out = np.zeros((len(rows), L, H, D), dtype=np.float32)
    store: dict[int, torch.Tensor] = {}
    handles = []
    for layer in range(L):
        proj = getattr(m.layout.attention_modules[layer], m.layout.out_proj_name)

        def pre(_mod, args, layer=layer):
            store[layer] = args[0][0, -1].detach()
        handles.append(proj.register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            for i, row in enumerate(rows):
                m.model(input_ids=torch.tensor([row], device=m.device), output_hidden_states=True)
                out[i] = torch.stack([store[layer] for layer in range(L)]).reshape(L, H, D).float().cpu().numpy()
    finally:
        for h in handles:
            h.remove()
    return out


def recipe_fit(feats: np.ndarray, labels: np.ndarray, train: np.ndarray, val: np.ndarray, seed: int) -> np.ndarray:
    """``[L, H]`` validation accuracy of honest_llama's per-head LogisticRegression."""
    from sklearn.linear_model import LogisticRegression

    N, L, H, D = feats.shape
    acc = np.zeros((L, H))
    for layer in range(L):
        for h in range(H):
            clf = LogisticRegression(random_state=seed, max_iter=1000).fit(feats[train, layer, h], labels[train])
            acc[layer, h] = float((clf.predict(feats[val, layer, h]) == labels[val]).mean())
    return acc


def ours_same_split(feats: np.ndarray, labels: np.ndarray, train: np.ndarray, val: np.ndarray) -> np.ndarray:
    """``[L, H]`` validation accuracy of the ridge probe of every head, one batched solve."""
    N, L, H, D = feats.shape
    X = torch.from_numpy(np.ascontiguousarray(np.moveaxis(feats.reshape(N, L * H, D), 1, 0), dtype=np.float64))
    A, W = ridge_operator(X, train, val, 1.0)
    y = torch.from_numpy(labels.astype(np.float64))
    score = (A @ (W @ y[train][:, None]))[..., 0]                          # [K, n_val]: prediction - training mean
    return ((score > 0) == (y[val] > 0.5)).double().mean(1).reshape(L, H).numpy()


def top_overlap(a: np.ndarray, b: np.ndarray, k: int = 16) -> int:
    ta = set(np.argsort(-a, axis=None, kind="stable")[:k].tolist())
    tb = set(np.argsort(-b, axis=None, kind="stable")[:k].tolist())
    return len(ta & tb)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--batch", type=int, default=64, help="statements per capture forward (headatlas)")
    ap.add_argument("--n-perm", type=int, default=9999)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    m = headatlas.load(MODEL, device=args.device)
    texts, labels, groups = statements(args.pairs)
    rows = token_rows(m, texts)
    pos = resolve_positions(rows, -1)
    fold = grouped_folds(labels, groups, 5, args.seed)
    train, val = np.flatnonzero(fold != 0), np.flatnonzero(fold == 0)

    feats: dict[str, np.ndarray] = {}     # the last run's features of each capture, for the agreement check

    def recipe():
        feats["recipe"] = recipe_capture(m, rows)
        return recipe_fit(feats["recipe"], labels, train, val, args.seed)

    def same():
        feats["ours"] = capture_heads(m, rows, pos, batch_size=args.batch).features
        return ours_same_split(feats["ours"], labels, train, val)

    def full():
        cap = capture_heads(m, rows, pos, batch_size=args.batch)
        return probe_features(cap.features, labels, groups, n_perm=args.n_perm, seed=args.seed)

    todo = [("honest_llama's recipe (batch-1 capture, LogisticRegression per head, 80/20 split)", recipe),
            ("headatlas, same job (batched capture, ridge on the same split, one batched solve)", same),
            (f"headatlas `probe` as shipped (5-fold CV + {args.n_perm:,}-permutation null per head)", full)]
    capture_heads(m, rows[:8], pos[:8], batch_size=8)    # warm-up
    secs, out = interleaved(todo, args.repeats, m.device)
    rname = todo[0][0]
    ref = out[rname]
    med = {n: float(np.median(v)) for n, v in secs.items()}
    L, H = m.info.n_layers, m.info.n_heads
    gpu = m.device.type == "cuda"
    lines = [
        "## probing vs honest_llama's recipe" + (" (CUDA)" if gpu else ""),
        "",
        f"`python bench/bench_probing.py{' --device cuda' if gpu else ''}`: all {L * H} heads of {MODEL}, "
        f"{len(texts)} true/false statements ({args.pairs} pairs, {min(map(len, rows))}-{max(map(len, rows))} tokens), "
        f"z at the last token; headatlas captures {args.batch} statements per forward; "
        f"{'CUDA ' + torch.cuda.get_device_name(m.device) if gpu else 'CPU (' + machine_line() + ')'}; "
        f"{args.repeats} interleaved rounds, medians of wall time (ratios only: the machine is shared).",
        "",
        "| method | median s (runs) | recipe / this | Spearman of head accuracies vs the recipe | top-16 heads shared |",
        "|---|---|---:|---:|---:|",
    ]
    for n, _ in todo:
        acc = out[n].accuracy if hasattr(out[n], "accuracy") else out[n]
        runs = ", ".join(f"{t:.1f}" for t in secs[n])
        ratio = "-" if n == rname else f"**{med[rname] / med[n]:.2f}x**"
        rho = "-" if n == rname else f"{spearmanr(acc.ravel(), ref.ravel())[0]:.4f}"
        top = "-" if n == rname else f"{top_overlap(acc, ref)}/16"
        lines.append(f"| {n} | {med[n]:.1f} ({runs}) | {ratio} | {rho} | {top} |")
    pr = out[todo[2][0]]
    feats_ours, feats_recipe = feats["ours"], feats["recipe"]
    same_clf = recipe_fit(feats_ours, labels, train, val, args.seed)
    lines += ["", f"Same features: headatlas's batched capture vs the recipe's batch-1 capture, max abs difference "
              f"{np.abs(feats_ours - feats_recipe).max():.1e}; the recipe's LogisticRegression on headatlas's features "
              f"gives Spearman {spearmanr(same_clf.ravel(), ref.ravel())[0]:.4f} and top-16 "
              f"{top_overlap(same_clf, ref)}/16 against the recipe (the rows above differ by classifier: ridge vs "
              f"logistic regression, and the shipped probe by its 5-fold balanced accuracy).", f"Recipe: best head accuracy {ref.max():.3f} on the {len(val)} held-out statements; headatlas `probe`: "
              f"best balanced CV accuracy {pr.accuracy.max():.3f}, {int((pr.q <= 0.05).sum())} heads with q <= 0.05 "
              f"(p floor {1 / (args.n_perm + 1):.0e})."]
    text = "\n".join(lines)
    print(text)
    write_section("probing" + ("-cuda" if gpu else ""), text)


if __name__ == "__main__":
    main()
