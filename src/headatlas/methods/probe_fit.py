"""Per-head linear probes on captured head outputs: grouped cross-validation, the shuffled-label null, ITI's
mass-mean directions, and the :class:`ProbeResult` they make (no model here: every function takes arrays).

The probe (``method="ridge"``, default) is an L2-regularised least-squares classifier on centred features
(``w = (Xc'Xc + lam I)^-1 Xc'y``, ``lam`` = ``ridge`` x the mean eigenvalue of ``Xc'Xc``; predicts label 1
when ``xc.w > 0``), fitted for all heads at once. The score is the balanced held-out accuracy (the mean of
the two classes' recalls). Its held-out predictions are *linear in the labels* (``yhat = ybar_train +
M y_train`` with ``M = Xc_test (Xc_train'Xc_train + lam I)^-1 Xc_train'`` fixed per fold and head), so the
shuffled-label null costs one matrix product per fold for all permutations: ``n_perm`` (default 9,999)
permutations of the labels within the group structure (labels shuffled inside each group that holds both
classes, single-class groups' labels shuffled across groups) give a real null distribution of the same
statistic per head; p is add-one, q is Benjamini-Hochberg over all heads. ``method="logistic"`` fits
scikit-learn ``LogisticRegression`` per head and fold instead (as ITI does), with the same folds and
permutations re-fitted (slow: ``n_perm`` defaults to 100).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np
import torch

from .. import stats
from ..checks import check_count, check_finite
from ..errors import InputError, InputTypeError
from ..tasks.labelled import ProbeData, check_probe_data

ProbeMethod = Literal["ridge", "logistic"]
N_PERM = stats.N_PERM  # shuffled-label draws of the ridge probe (p floor 1e-4)
N_PERM_LOGISTIC = 100  # re-fitted logistic probes are ~1000x dearer per draw


def permute_labels(labels: np.ndarray, groups: np.ndarray, n: int, rng: np.random.Generator,
                   strata: np.ndarray | None = None) -> np.ndarray:
    """``[n, N]`` label vectors permuted within the group structure: inside every group that holds both
    labels the labels are shuffled; the labels of single-label groups are shuffled across those groups
    (whole groups move together), only among groups of the same size and the same ``strata`` value (e.g. a
    domain, so a head that only tells domains apart gains nothing from labels that differ by domain). Class
    counts are kept exactly."""
    labels = np.asarray(labels, dtype=int)
    out = np.tile(labels, (n, 1))
    uniq = np.unique(groups)
    members = [np.flatnonzero(groups == g) for g in uniq]
    mixed = [ix for ix in members if len(np.unique(labels[ix])) > 1]
    pure = [ix for ix in members if len(np.unique(labels[ix])) == 1]
    for ix in mixed:
        keys = rng.random((n, len(ix)))
        out[:, ix] = labels[ix][np.argsort(keys, axis=1)]
    if len(pure) > 1:
        by_size: dict[tuple[int, int], list[np.ndarray]] = {}
        for ix in pure:
            key = (len(ix), 0 if strata is None else int(np.asarray(strata)[ix[0]]))
            by_size.setdefault(key, []).append(ix)  # type: ignore[arg-type]
        for same in by_size.values():          # groups of one size swap labels among themselves
            glab = np.array([labels[ix[0]] for ix in same])
            perm = np.argsort(rng.random((n, len(same))), axis=1)
            new = glab[perm]                                           # [n, G]
            for j, ix in enumerate(same):
                out[:, ix] = new[:, j:j + 1]
    return out


def grouped_folds(labels: np.ndarray, groups: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """``[N]`` fold index per item from scikit-learn's StratifiedGroupKFold (a group never straddles folds)."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_groups = len(np.unique(groups))
    k = min(int(n_folds), n_groups)
    if k < 2:
        raise InputError(f"grouped cross-validation needs at least 2 groups, got {n_groups}")
    fold = np.full(len(labels), -1, dtype=int)
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=int(seed) % (2 ** 31))
    for f, (_, test) in enumerate(cv.split(np.zeros(len(labels)), labels, groups)):
        fold[test] = f
    return fold


def ridge_operator(X: torch.Tensor, train: np.ndarray, test: np.ndarray, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The ridge probe of each of ``K`` heads (``X [K, N, D]``) fitted on the ``train`` items predicts
    ``ybar_train + A @ W @ y_train`` on the ``test`` items for any labels ``y``: ``(A [K, n_test, D]`` the
    centred test features, ``W [K, D, n_train])``; ``M = A @ W`` is the operator of the module docstring."""
    Xtr, Xte = X[:, train], X[:, test]
    mu = Xtr.mean(1, keepdim=True)
    Xtr, Xte = Xtr - mu, Xte - mu
    G = Xtr.transpose(1, 2) @ Xtr                                                    # [K, D, D]
    D = G.shape[-1]
    lam = ridge * torch.diagonal(G, dim1=1, dim2=2).mean(-1).clamp_min(1e-12) + 1e-9  # [K]
    G = G + lam[:, None, None] * torch.eye(D, dtype=G.dtype)
    return Xte, torch.linalg.solve(G, Xtr.transpose(1, 2))                           # [K, n_te, D], [K, D, n_tr]


def _ridge_scores(A: torch.Tensor, W: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``Y [n_train, r] -> [K, n_test, r]`` held-out prediction minus the training mean (label 1 when > 0),
    by the cheaper of ``(A @ W) @ Y`` and ``A @ (W @ Y)`` (the first when ``n_test * n_train`` is smaller than
    ``D * (n_test + n_train)``), in the dtype of ``Y``."""
    (_, n_te, D), n_tr = A.shape, W.shape[-1]
    if n_te * n_tr <= D * (n_te + n_tr):
        M = A @ W
        cast = {torch.float64: M, torch.float32: M.float()}
        return lambda Y: cast[Y.dtype] @ Y
    cast2 = {torch.float64: (A, W), torch.float32: (A.float(), W.float())}
    return lambda Y: cast2[Y.dtype][0] @ (cast2[Y.dtype][1] @ Y)


def _logistic_fold(X: np.ndarray, train: np.ndarray, test: np.ndarray, Y: np.ndarray, C: float) -> np.ndarray:
    """Held-out P(label 1) - 1/2 (> 0 means label 1) ``[K, n_test, R]`` of scikit-learn LogisticRegression
    fitted per head and label vector (``X [K, N, D]``, ``Y [N, R]``)."""
    from sklearn.linear_model import LogisticRegression

    K = X.shape[0]
    out = np.zeros((K, len(test), Y.shape[1]))
    for r in range(Y.shape[1]):
        y = Y[train, r]
        for k in range(K):
            clf = LogisticRegression(C=C, max_iter=1000, class_weight="balanced")
            clf.fit(X[k, train], y)
            out[k, :, r] = clf.predict_proba(X[k, test])[:, 1] - 0.5
    return out


def _chunk(K: int, n_test: int, budget_bytes: int = 1 << 28) -> int:
    """Label vectors per product so that the ``[K, n_test, chunk]`` float64 scores stay within the budget."""
    return max(1, budget_bytes // max(1, 8 * K * n_test))


def probe_correct(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, *, n_folds: int = 5, n_perm: int = N_PERM,
                  seed: int = 0, method: ProbeMethod = "ridge", ridge: float = 1.0, C: float = 1.0,
                  chunk: int | None = None, strata: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cross-validated probes of every head, on the real labels and ``n_perm`` permuted ones.

    The statistic is the *balanced* held-out accuracy (mean of the two classes' recalls; plain accuracy when
    the classes are balanced), so a probe gains nothing by predicting the majority class.
    ``features [N, L, H, D]`` -> ``(correct [L, N, H]`` held-out correctness with the real labels, weighted
    so that its mean over items is the balanced accuracy (``N / (2 n_class)`` per right item),
    ``null_acc [n_perm, L, H]`` held-out balanced accuracy under each permutation, ``fold [N])``.

    Ridge: per fold, one batched solve gives the operator ``M`` (:func:`ridge_operator`), and the held-out
    scores of every label vector, real and permuted, are one matrix product ``M @ Y_train`` (in chunks of
    ``chunk`` label vectors; default: as many as fit 256 MB). The real labels' scores are float64, the
    permuted ones' float32 (a draw's accuracy can only move where an item's score is within float32
    rounding of 0)."""
    N, L, H, D = features.shape
    labels = np.asarray(labels, dtype=int)
    groups = np.asarray(groups, dtype=int)
    fold = grouped_folds(labels, groups, n_folds, seed)
    perms = permute_labels(labels, groups, n_perm, stats.rng_for(seed, "probe:permute"), strata)   # [R, N]
    Yall = torch.from_numpy(np.concatenate([labels[None], perms], 0).T.astype(np.float64))  # [N, 1 + R]
    X = np.ascontiguousarray(np.moveaxis(features.reshape(N, L * H, D), 1, 0), dtype=np.float64)  # [K, N, D]
    # balanced accuracy: item i weighs 1 / (2 * size of its class) under each label vector (class sizes
    # are the same in every permutation), so the mean recall of the two classes is a weighted hit count
    n1 = int(labels.sum())
    positive = Yall > 0.5                                                                  # [N, 1 + R]
    w1, w0 = (torch.tensor(1.0 / (2 * n), dtype=torch.float64) for n in (n1, N - n1))
    weights = torch.where(positive, w1, w0)                                                # [N, 1 + R]
    K = L * H
    hits = torch.zeros(K, 1 + n_perm, dtype=torch.float64)
    correct = torch.zeros(K, N, dtype=torch.float64)
    Xt = torch.from_numpy(X)
    Y32 = Yall.float()     # the permuted labels' scores in float32 (the real labels' in float64)
    for f in range(int(fold.max()) + 1):
        train, test = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        if method == "ridge":
            scores = _ridge_scores(*ridge_operator(Xt, train, test, ridge))
            step = chunk or _chunk(K, len(test))
            spans = [(0, 1)] + [(s, min(s + step, 1 + n_perm)) for s in range(1, 1 + n_perm, step)]
        else:
            spans = [(0, 1 + n_perm)]
        for s, e in spans:
            if method == "logistic":
                score = torch.from_numpy(_logistic_fold(X, train, test, Yall[:, s:e].numpy(), C))
            else:
                score = scores(Yall[train, s:e] if s == 0 else Y32[train, s:e])            # [K, n_te, r]
            pos = positive[test, s:e][None]
            ok = (score > 0) == pos                                                      # [K, n_te, r]
            right1 = (ok & pos).to(torch.int16).sum(1, dtype=torch.int32)                 # [K, r] class-1 hits
            right = ok.to(torch.int16).sum(1, dtype=torch.int32)
            hits[:, s:e] += right1 * w1 + (right - right1) * w0
            if s == 0:
                correct[:, test] = ok[:, :, 0] * weights[test, 0][None] * N
    null_acc = hits[:, 1:].T.reshape(n_perm, L, H).numpy()
    return np.moveaxis(correct.numpy().reshape(L, H, N), 2, 1), null_acc, fold


def mass_mean_directions(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ITI's mass-mean shift per head: ``(direction [L, H, D]`` unit vector of mean z(label 1) - mean
    z(label 0), ``sigma [L, H]`` std of every item's z projected on it)."""
    labels = np.asarray(labels, dtype=int)
    f = features.astype(np.float64)
    diff = f[labels == 1].mean(0) - f[labels == 0].mean(0)                                # [L, H, D]
    norm = np.linalg.norm(diff, axis=-1, keepdims=True)
    unit = np.where(norm > 0, diff / np.maximum(norm, 1e-30), 0.0)
    proj = np.einsum("nlhd,lhd->nlh", f, unit)
    return unit, proj.std(0)


@dataclass
class ProbeResult:
    """Per-head probe accuracies ``[L, H]`` with their shuffled-label null, p and q.

    - ``accuracy``: held-out balanced accuracy (grouped ``n_folds``-fold CV; plain accuracy for balanced labels); ``null_mean``/``null_std``: of the
      accuracy under ``n_perm`` label permutations; ``effect = accuracy - null_mean``; ``p`` add-one
      (accuracy >= observed), ``q`` BH over all heads;
    - ``correct [L, N, H]``: held-out correctness per item (real labels), weighted ``N / (2 n_class)``; ``null [R, L, H]``: the draws;
    - ``direction [L, H, D]`` / ``sigma [L, H]``: ITI's mass-mean shift on all items (see :func:`iti`)."""

    accuracy: np.ndarray
    null_mean: np.ndarray
    null_std: np.ndarray
    effect: np.ndarray
    p: np.ndarray
    q: np.ndarray
    correct: np.ndarray
    null: np.ndarray
    direction: np.ndarray
    sigma: np.ndarray
    n_items: int
    n_groups: int
    n_folds: int
    n_perm: int
    method: str
    position: Any
    seed: int
    source: str = ""

    def top(self, k: int = 10) -> list[tuple[int, int]]:
        """The ``k`` heads with the highest probe accuracy (ties: lower p first)."""
        L, H = self.accuracy.shape
        k = check_count(k, "k", maximum=L * H)
        order = sorted(((float(-self.accuracy[l, h]), float(self.p[l, h]), l, h) for l in range(L) for h in range(H)
                        if np.isfinite(self.accuracy[l, h])))
        return [(l, h) for *_, l, h in order[:k]]

    def significant(self, fdr: float = 0.05, min_effect: float = 0.0) -> list[tuple[int, int]]:
        mask = (self.q <= fdr) & (self.effect >= min_effect)
        heads = [(int(a), int(b)) for a, b in zip(*np.nonzero(mask))]
        return sorted(heads, key=lambda lh: -float(self.accuracy[lh]))

    def to_dataframe(self) -> Any:
        """One row per head: layer, head, accuracy, null_mean, null_std, effect, p, q, sigma."""
        import pandas as pd

        L, H = self.accuracy.shape
        ll, hh = np.meshgrid(np.arange(L), np.arange(H), indexing="ij")
        return pd.DataFrame({"layer": ll.ravel(), "head": hh.ravel(), "accuracy": self.accuracy.ravel(),
                             "null_mean": self.null_mean.ravel(), "null_std": self.null_std.ravel(),
                             "effect": self.effect.ravel(), "p": self.p.ravel(), "q": self.q.ravel(),
                             "sigma": self.sigma.ravel()})

    def to_json(self) -> dict[str, Any]:
        return {"n_items": self.n_items, "n_groups": self.n_groups, "n_folds": self.n_folds, "n_perm": self.n_perm,
                "method": self.method, "position": self.position, "seed": self.seed, "source": self.source,
                "heads": self.to_dataframe().to_dict(orient="records")}


def probe_features(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, *, n_folds: int = 5,
                   n_perm: int | None = None, seed: int = 0, method: ProbeMethod = "ridge", ridge: float = 1.0,
                   C: float = 1.0, position: Any = -1, source: str = "", strata: np.ndarray | None = None) -> ProbeResult:
    """:class:`ProbeResult` from captured ``features [N, L, H, D]`` (no model: unit-testable); ``strata [N]``:
    single-label groups swap labels only within a stratum (:func:`permute_labels`)."""
    if method not in ("ridge", "logistic"):
        raise InputError(f"method must be 'ridge' or 'logistic', got {method!r}")
    if not isinstance(features, np.ndarray) or features.ndim != 4:
        raise InputTypeError("features must be a numpy array [items, layers, heads, d_head]")
    n_perm = (N_PERM if method == "ridge" else N_PERM_LOGISTIC) if n_perm is None else check_count(n_perm, "n_perm")
    n_folds = check_count(n_folds, "n_folds", minimum=2)
    ridge = check_finite(ridge, "ridge")
    if ridge <= 0:
        raise InputError(f"ridge must be > 0, got {ridge}")
    data = ProbeData(tuple("" for _ in range(features.shape[0])), labels, groups, source)
    check_probe_data(data)
    correct, null, _ = probe_correct(features, data.labels, data.groups, n_folds=n_folds, n_perm=n_perm, seed=seed,
                                     method=method, ridge=ridge, C=C, strata=strata)
    acc = correct.mean(1)
    p = stats.permutation_p(acc, null, "greater")
    direction, sigma = mass_mean_directions(features, data.labels)
    return ProbeResult(accuracy=acc, null_mean=null.mean(0), null_std=null.std(0), effect=acc - null.mean(0), p=p,
                       q=stats.bh_q(p), correct=correct, null=null, direction=direction, sigma=sigma,
                       n_items=len(data), n_groups=len(np.unique(data.groups)), n_folds=n_folds, n_perm=n_perm,
                       method=method, position=position, seed=int(seed), source=source)


def probe_detector_result(name: str, pr: ProbeResult, rule: Any, *, data_description: str,
                          extras: dict[str, np.ndarray] | None = None, details: dict[str, Any] | None = None) -> Any:
    """A :class:`~headatlas.atlas.records.DetectorResult` from a :class:`ProbeResult`: score = held-out
    accuracy; effect = accuracy - mean of the shuffled-label null; p from the null draws (the same
    statistic recomputed on permuted labels), BH q, bootstrap CI over items."""
    centre = pr.null_mean[:, None, :]
    per_item = pr.correct - centre                                                    # [L, N, H]
    draws = pr.null - pr.null_mean[None]
    tested = stats.evaluate(per_item, draws, rule, seed=pr.seed, salt=name, scores=pr.accuracy, extras=extras)
    det = {"n_items": pr.n_items, "n_groups": pr.n_groups, "n_folds": pr.n_folds, "probe": pr.method,
           "position": pr.position, "best_accuracy": float(np.nanmax(pr.accuracy)),
           "best_head": [int(x) for x in np.unravel_index(int(np.nanargmax(pr.accuracy)), pr.accuracy.shape)]}
    det.update(details or {})
    return stats.result(name, tested, scores=pr.accuracy, rule=rule, data_description=data_description,
                        null_description=(f"held-out accuracy of the same probe with labels permuted within the "
                                          f"group structure ({pr.n_perm} permutations, same folds)"),
                        n_prompts=pr.n_items, seed=pr.seed, extras=extras, details=det,
                        null_mean=pr.null_mean, null_std=pr.null_std)


__all__ = ["N_PERM", "ProbeMethod", "ProbeResult", "grouped_folds", "mass_mean_directions", "permute_labels",
           "probe_correct", "probe_detector_result", "probe_features"]
