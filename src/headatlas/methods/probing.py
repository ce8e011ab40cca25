"""Per-head linear probes on head outputs ``z`` and inference-time intervention (ITI).

After Li et al. 2023 (ITI, arXiv 2306.03341): one forward per batch of labelled texts captures every
head's output ``z`` (the input of ``o_proj``, ``d_head`` features) at one position (default ``-1``: the
last real token of each text); a linear probe per head predicts the label; the score is the held-out
accuracy under cross-validation grouped by item (a statement and its negation never straddle train and
test).

The probe (``method="ridge"``, default) is an L2-regularised least-squares classifier on centred
features (``w = (Xc'Xc + lam I)^-1 Xc'y``, ``lam`` = ``ridge`` x the mean eigenvalue of ``Xc'Xc``; predicts
label 1 when ``xc.w > 0``), fitted for all heads at once. The score is the balanced held-out accuracy (the
mean of the two classes' recalls). Its held-out predictions are *linear in the labels* (``yhat = ybar_train + M y_train`` with
``M = Xc_test (Xc_train'Xc_train + lam I)^-1 Xc_train'`` fixed per fold and head), so the shuffled-label
null costs one matrix product per fold for all permutations: ``n_perm`` (default 999) permutations of
the labels within the group structure (labels shuffled inside each group that holds both classes,
single-class groups' labels shuffled across groups) give a real null distribution of the same statistic
per head; p is add-one, q is Benjamini-Hochberg over all heads. ``method="logistic"`` fits
scikit-learn ``LogisticRegression`` per head and fold instead (as ITI does), with the same folds and
permutations re-fitted (slow: use ``n_perm`` of 100-200).

ITI (:func:`iti`): a head's direction is the mass-mean shift (mean ``z`` of class 1 minus class 0,
unit length) and ``sigma`` the std of all items' ``z`` projected on it; steering adds
``alpha * sigma * direction`` to the chosen heads' outputs at every position.
"""

from __future__ import annotations

import dataclasses
import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Sequence

import numpy as np
import torch

from .. import stats
from ..checks import check_count, check_finite, check_int
from ..errors import InputError, InputTypeError
from ..instrument import HeadEdit, Taps, instrumented
from ..models.loading import LoadedModel
from ..tasks.text import pad_id
from ..tasks.vocab import bos_id
from .inputs import Heads, as_loaded, check_heads

ProbeMethod = Literal["ridge", "logistic"]
N_PERM = 999          # shuffled-label draws of the ridge probe (p floor 1e-3)
N_PERM_LOGISTIC = 100  # re-fitted logistic probes are ~1000x dearer per draw


# ----------------------------------------------------------------------------------------------- data

@dataclass(frozen=True)
class ProbeData:
    """Labelled texts: ``texts[i]`` has ``labels[i]`` (0 or 1) and belongs to group ``groups[i]`` (items of
    one group, e.g. a statement and its negation, stay on one side of every train/test split)."""

    texts: tuple[str, ...]
    labels: np.ndarray   # [N] int 0/1
    groups: np.ndarray   # [N] int
    source: str = ""

    def __post_init__(self) -> None:
        n = len(self.texts)
        labels = np.asarray(self.labels)
        groups = np.asarray(self.groups)
        if labels.shape != (n,) or groups.shape != (n,):
            raise InputError(f"probe data: {n} texts but {labels.shape[0] if labels.ndim else 0} labels and "
                             f"{groups.shape[0] if groups.ndim else 0} groups; give one label and group per text")
        object.__setattr__(self, "labels", labels.astype(int))
        object.__setattr__(self, "groups", groups.astype(int))

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: Sequence[int] | np.ndarray) -> "ProbeData":
        idx = np.asarray(idx, dtype=int)
        return ProbeData(tuple(self.texts[i] for i in idx), self.labels[idx], self.groups[idx], self.source)


def _group_ids(raw: Sequence[Any]) -> np.ndarray:
    """Any hashable group keys -> consecutive ints in order of first appearance."""
    seen: dict[Any, int] = {}
    return np.array([seen.setdefault(g if not isinstance(g, list) else tuple(g), len(seen)) for g in raw], dtype=int)


def probe_data(records: Iterable[dict[str, Any]], *, source: str = "records") -> ProbeData:
    """:class:`ProbeData` from dicts ``{"text": str, "label": 0|1, "group": any (optional)}`` (an item
    without a group is its own group). InputError naming the record on a missing key or a bad label."""
    texts, labels, groups = [], [], []
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise InputTypeError(f"{source}: record {i + 1} must be an object with text and label, got {type(r).__name__}")
        missing = [k for k in ("text", "label") if k not in r]
        if missing:
            raise InputError(f"{source}: record {i + 1} lacks {', '.join(missing)} (keys: {sorted(r)})")
        text, label = r["text"], r["label"]
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"{source}: record {i + 1}: text must be a non-empty string, got {text!r:.40}")
        if isinstance(label, bool) or label not in (0, 1):
            raise InputError(f"{source}: record {i + 1}: label must be 0 or 1, got {label!r:.40}")
        texts.append(text)
        labels.append(int(label))
        groups.append(r.get("group", f"__item{i}"))
    data = ProbeData(tuple(texts), np.array(labels, dtype=int), _group_ids(groups), source)
    check_probe_data(data)
    return data


def check_probe_data(data: ProbeData, *, min_per_class: int = 4) -> None:
    """InputError unless both classes have at least ``min_per_class`` items."""
    if len(data) == 0:
        raise InputError(f"{data.source or 'probe data'}: no items")
    counts = np.bincount(data.labels, minlength=2)
    if counts.min() < min_per_class:
        raise InputError(f"{data.source or 'probe data'}: a probe needs both labels, at least {min_per_class} items "
                         f"each; got {counts[0]} with label 0 and {counts[1]} with label 1")


def _split_answers(cell: Any) -> list[str]:
    if isinstance(cell, list):
        return [str(a).strip() for a in cell if str(a).strip()]
    return [a.strip() for a in str(cell or "").split(";") if a.strip()]


def _truthfulqa(rows: list[dict[str, Any]], source: str) -> ProbeData:
    """TruthfulQA rows (the CSV's ``Question``/``Correct Answers``/``Incorrect Answers``, or the Hugging Face
    columns ``question``/``correct_answers``/``incorrect_answers`` that honest_llama reads) -> one
    ``"Q: {question} A: {answer}"`` item per answer, label 1 for correct answers, grouped by question."""
    recs = []
    for i, r in enumerate(rows):
        q = r.get("Question", r.get("question"))
        good = _split_answers(r.get("Correct Answers", r.get("correct_answers")))
        bad = _split_answers(r.get("Incorrect Answers", r.get("incorrect_answers")))
        if not q:
            raise InputError(f"{source}: row {i + 1} has no question")
        for a, lab in [(a, 1) for a in good] + [(a, 0) for a in bad]:
            recs.append({"text": f"Q: {q} A: {a}", "label": lab, "group": i})
    return probe_data(recs, source=source)


def load_probe_data(path: str | Path) -> ProbeData:
    """Read a user's probing data.

    - JSONL (``.jsonl``/``.json`` lines): one object per line ``{"text": ..., "label": 0|1, "group": ...}``;
      TruthfulQA objects (``question``, ``correct_answers``, ``incorrect_answers``) are read as below.
    - CSV: TruthfulQA's ``TruthfulQA.csv`` (``Question``, ``Correct Answers``, ``Incorrect Answers``,
      answers separated by ``;``), or a CSV with ``text,label[,group]`` columns.
    InputError on a missing or empty file, a non-JSON line (with its number), missing keys, labels other
    than 0/1, or a single class."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"probe data file {str(p)!r} does not exist")
    try:
        raw = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read probe data {str(p)!r}: {exc}") from None
    if not raw.strip():
        raise InputError(f"probe data file {str(p)!r} is empty")
    source = p.name
    if p.suffix.lower() == ".csv":
        rows = list(csv.DictReader(raw.splitlines()))
        if not rows:
            raise InputError(f"{source}: no rows under the CSV header")
        cols = set(rows[0])
        if {"Question", "Correct Answers", "Incorrect Answers"} <= cols:
            return _truthfulqa(rows, source)
        if {"text", "label"} <= cols:
            recs = []
            for i, r in enumerate(rows):
                try:
                    lab = int(str(r["label"]).strip())
                except ValueError:
                    raise InputError(f"{source}: row {i + 2}: label must be 0 or 1, got {r['label']!r:.40}") from None
                rec = {"text": r["text"], "label": lab}
                if r.get("group") not in (None, ""):
                    rec["group"] = r["group"]
                recs.append(rec)
            return probe_data(recs, source=source)
        raise InputError(f"{source}: CSV columns {sorted(cols)} are neither text,label[,group] nor TruthfulQA's "
                         "Question, Correct Answers, Incorrect Answers")
    objs = []
    for n, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            objs.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise InputError(f"{source}: line {n} is not JSON ({exc.msg}): {line[:60]!r}") from None
    if objs and all(isinstance(o, dict) and "question" in o and "text" not in o for o in objs):
        return _truthfulqa(objs, source)
    return probe_data(objs, source=source)


def as_probe_data(dataset: Any) -> ProbeData:
    """A :class:`ProbeData`, a path to a JSONL/CSV file, or a list of ``{"text", "label", "group"}`` dicts."""
    if isinstance(dataset, ProbeData):
        check_probe_data(dataset)
        return dataset
    if isinstance(dataset, (str, Path)):
        return load_probe_data(dataset)
    if isinstance(dataset, (list, tuple)):
        return probe_data(dataset)
    raise InputTypeError(f"dataset must be ProbeData, a path to a .jsonl/.csv file or a list of "
                         f"{{'text', 'label', 'group'}} dicts, got {type(dataset).__name__}")


# ------------------------------------------------------------------------------------------- capture

def token_rows(m: LoadedModel, texts: Sequence[str]) -> list[list[int]]:
    """Each text's token ids (BOS first when the tokenizer has one). InputError on an empty encoding or
    a text longer than the context."""
    bos = bos_id(m.tokenizer)
    rows = []
    for t in texts:
        ids = [int(x) for x in m.tokenizer.encode(t, add_special_tokens=False)]
        if not ids:
            raise InputError(f"the text {t[:50]!r} tokenizes to no tokens")
        row = ([] if bos is None else [bos]) + ids
        if len(row) > m.info.n_ctx:
            raise InputError(f"a text needs {len(row)} positions but the model has {m.info.n_ctx}: {t[:50]!r}")
        rows.append(row)
    return rows


def resolve_positions(rows: Sequence[Sequence[int]], position: int | Sequence[int]) -> np.ndarray:
    """``[N]`` absolute positions: ``position`` counts from the start (>= 0) or from the last real token
    (< 0: -1 is the last token of each row); or one position per row."""
    if isinstance(position, (list, tuple, np.ndarray)):
        pos = np.asarray(position, dtype=int)
        if pos.shape != (len(rows),):
            raise InputError(f"give one position per text ({len(rows)}), got {pos.shape}")
    else:
        p = check_int(position, "position")
        pos = np.array([len(r) + p if p < 0 else p for r in rows], dtype=int)
    bad = [i for i, (r, q) in enumerate(zip(rows, pos)) if not 0 <= q < len(r)]
    if bad:
        i = bad[0]
        raise InputError(f"position {int(pos[i])} is outside text {i} ({len(rows[i])} tokens); "
                         f"use -1 for the last token")
    return pos


@dataclass
class Captured:
    """``features [N, L, H, D]`` float32 (z at one position per row); ``argmax``: per row, the model's
    argmax next token at each requested position (when asked)."""

    features: np.ndarray
    argmax: list[list[int]] = field(default_factory=list)


def capture_heads(m: LoadedModel, rows: Sequence[Sequence[int]], positions: np.ndarray, *, batch_size: int = 16,
                  argmax_at: Sequence[Sequence[int]] | None = None,
                  progress: Callable[[int, int], None] | None = None) -> Captured:
    """One forward per batch of rows (sorted by length, right-padded: causal attention never reads the
    padding of a row's real positions) capturing every head's ``z`` at ``positions[i]`` of row ``i``;
    with ``argmax_at``, also the argmax next token at those positions of each row (teacher forcing)."""
    n = len(rows)
    L, H, D = m.info.n_layers, m.info.n_heads, m.info.d_head
    feats = np.zeros((n, L, H, D), dtype=np.float32)
    arg: list[list[int]] = [[] for _ in range(n)]
    order = np.argsort([len(r) for r in rows], kind="stable")
    pad = pad_id(m.tokenizer)
    bs = max(1, int(batch_size))
    for s in range(0, n, bs):
        idx = order[s:s + bs]
        width = max(len(rows[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, :len(rows[i])] = torch.tensor(rows[i], dtype=torch.long)
        pos = torch.as_tensor(positions[idx], dtype=torch.long)
        keep = torch.arange(len(idx))

        def reducer(layer: int, z: torch.Tensor, call: Any, pos=pos, keep=keep) -> torch.Tensor:
            return z[keep.to(z.device), pos.to(z.device)].detach().float().cpu()

        keep = sorted({int(q) for i in idx for q in argmax_at[i]}) if argmax_at is not None else []
        kw: dict[str, Any] = {"logits_to_keep": torch.tensor(keep, device=m.device) if keep else 1}
        with torch.no_grad(), instrumented(m, taps=Taps(z_reducer=reducer)) as rec:
            out = m.model(input_ids=ids.to(m.device), use_cache=False, **kw)
        for layer in m.info.attention_layers:   # a hybrid's other layers keep zero features (masked in probe)
            feats[idx, layer] = torch.cat(rec.z_reduced[layer], 0).numpy()
        if keep:
            where = {q: k for k, q in enumerate(keep)}
            best = out.logits.argmax(-1).cpu()
            for r, i in enumerate(idx):
                arg[i] = [int(best[r, where[int(q)]]) for q in argmax_at[i]]  # type: ignore[index]
        if progress is not None:
            progress(min(s + bs, n), n)
    return Captured(feats, arg)


# ------------------------------------------------------------------------------------------- probes

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


def _ridge_fold(X: torch.Tensor, train: np.ndarray, test: np.ndarray, Y: torch.Tensor, ridge: float) -> torch.Tensor:
    """Held-out predictions ``[K, n_test, R]`` of the ridge probe of each of ``K`` heads, for the ``R``
    label vectors ``Y [N, R]`` at once. ``X [K, N, D]``."""
    Xtr, Xte = X[:, train], X[:, test]
    mu = Xtr.mean(1, keepdim=True)
    Xtr, Xte = Xtr - mu, Xte - mu
    G = Xtr.transpose(1, 2) @ Xtr                                                    # [K, D, D]
    D = G.shape[-1]
    lam = ridge * torch.diagonal(G, dim1=1, dim2=2).mean(-1).clamp_min(1e-12) + 1e-9  # [K]
    G = G + lam[:, None, None] * torch.eye(D, dtype=G.dtype)
    W = torch.linalg.solve(G, Xtr.transpose(1, 2))                                   # [K, D, n_tr]
    M = Xte @ W                                                                      # [K, n_te, n_tr]
    Ytr = Y[train]                                                                   # [n_tr, R]
    return Ytr.mean(0)[None, None, :] + M @ Ytr                                       # [K, n_te, R]


def _logistic_fold(X: np.ndarray, train: np.ndarray, test: np.ndarray, Y: np.ndarray, C: float) -> np.ndarray:
    """Held-out P(label 1) - 1/2 + 1/2 (so > 1/2 means label 1) ``[K, n_test, R]`` of scikit-learn
    LogisticRegression fitted per head and label vector (``X [K, N, D]``, ``Y [N, R]``)."""
    from sklearn.linear_model import LogisticRegression

    K = X.shape[0]
    out = np.zeros((K, len(test), Y.shape[1]))
    for r in range(Y.shape[1]):
        y = Y[train, r]
        for k in range(K):
            clf = LogisticRegression(C=C, max_iter=1000, class_weight="balanced")
            clf.fit(X[k, train], y)
            out[k, :, r] = clf.predict_proba(X[k, test])[:, 1]
    return out


def probe_correct(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, *, n_folds: int = 5, n_perm: int = N_PERM,
                  seed: int = 0, method: ProbeMethod = "ridge", ridge: float = 1.0, C: float = 1.0,
                  chunk: int = 200, strata: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cross-validated probes of every head, on the real labels and ``n_perm`` permuted ones.

    The statistic is the *balanced* held-out accuracy (mean of the two classes' recalls; plain accuracy when
    the classes are balanced), so a probe gains nothing by predicting the majority class.
    ``features [N, L, H, D]`` -> ``(correct [L, N, H]`` held-out correctness with the real labels, weighted
    so that its mean over items is the balanced accuracy (``N / (2 n_class)`` per right item),
    ``null_acc [n_perm, L, H]`` held-out balanced accuracy under each permutation, ``fold [N])``."""
    N, L, H, D = features.shape
    labels = np.asarray(labels, dtype=int)
    groups = np.asarray(groups, dtype=int)
    fold = grouped_folds(labels, groups, n_folds, seed)
    perms = permute_labels(labels, groups, n_perm, stats.rng_for(seed, "probe:permute"), strata)   # [R, N]
    Yall = np.concatenate([labels[None], perms], 0).T.astype(np.float64)                  # [N, 1 + R]
    X = np.ascontiguousarray(np.moveaxis(features.reshape(N, L * H, D), 1, 0), dtype=np.float64)  # [K, N, D]
    # balanced accuracy: item i weighs 1 / (2 * size of its class) under each label vector (class sizes
    # are the same in every permutation), so the mean recall of the two classes is a weighted hit count
    n1 = labels.sum()
    weights = np.where(Yall > 0.5, 1.0 / (2 * n1), 1.0 / (2 * (N - n1)))                 # [N, 1 + R]
    K = L * H
    hits = np.zeros((K, 1 + n_perm))
    correct = np.zeros((K, N))
    Xt = torch.from_numpy(X)
    for f in range(int(fold.max()) + 1):
        train, test = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        for s in range(0, 1 + n_perm, chunk):
            Y = Yall[:, s:s + chunk]
            if method == "ridge":   # threshold at the training mean (balanced classes: 1/2)
                pred = _ridge_fold(Xt, train, test, torch.from_numpy(Y), ridge).numpy()
                cut = Y[train].mean(0)[None, None, :]
            else:
                pred = _logistic_fold(X, train, test, Y, C)
                cut = 0.5
            ok = (pred > cut) == (Y[test][None] > 0.5)                                   # [K, n_te, r]
            w = weights[test, s:s + Y.shape[1]]                                          # [n_te, r]
            hits[:, s:s + Y.shape[1]] += (ok * w[None]).sum(1)
            if s == 0:
                correct[:, test] = ok[:, :, 0] * w[None, :, 0] * N
    acc = hits                                                                             # [K, 1 + R]
    null_acc = acc[:, 1:].T.reshape(n_perm, L, H)
    return np.moveaxis(correct.reshape(L, H, N), 2, 1), null_acc, fold


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


# ------------------------------------------------------------------------------------------- result

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


def probe(model: Any, dataset: Any = None, position: int = -1, *, n_folds: int = 5, n_perm: int | None = None,
          method: ProbeMethod = "ridge", ridge: float = 1.0, C: float = 1.0, seed: int = 0, batch_size: int = 16,
          progress: Callable[[int, int], None] | None = None) -> ProbeResult:
    """Probe every head of ``model`` for the labels of ``dataset``.

    ``dataset``: :class:`ProbeData`, a JSONL/CSV path (:func:`load_probe_data`), a list of
    ``{"text", "label", "group"}`` dicts, or ``None`` for the package's true/false statements
    (:mod:`headatlas.tasks.statements`, each true/false pair one group). ``position``: the token whose
    ``z`` is probed (``-1``: each text's last token). Returns a :class:`ProbeResult`
    (``.accuracy``, ``.null_mean``, ``.p``, ``.q``, ``.to_dataframe()``, ``.top(k)``, ``.direction``)."""
    m = as_loaded(model)
    if dataset is None:
        from ..tasks.statements import statement_probe_data

        data = statement_probe_data(m.tokenizer, seed=seed)
    else:
        data = as_probe_data(dataset)
    batch_size = check_count(batch_size, "batch_size")
    rows = token_rows(m, data.texts)
    pos = resolve_positions(rows, position)
    cap = capture_heads(m, rows, pos, batch_size=batch_size, progress=progress)
    res = probe_features(cap.features, data.labels, data.groups, n_folds=n_folds, n_perm=n_perm, seed=seed,
                         method=method, ridge=ridge, C=C, position=position, source=data.source)
    return _mask_other_layers(res, m.info.other_layers)


def _mask_other_layers(res: ProbeResult, other: tuple[int, ...]) -> ProbeResult:
    """``res`` with NaN for a hybrid's layers without heads (``other``), q-values over the real heads only."""
    if not other:
        return res
    rows = list(other)
    out = {}
    for name in ("accuracy", "null_mean", "null_std", "effect", "p", "correct", "direction", "sigma"):
        a = getattr(res, name).astype(np.float64, copy=True)
        a[rows] = np.nan
        out[name] = a
    null = res.null.astype(np.float64, copy=True)
    null[:, rows] = np.nan
    return dataclasses.replace(res, **out, null=null, q=stats.bh_q(out["p"]))


# ------------------------------------------------------------------------------------------- ITI

@dataclass
class ITI:
    """An inference-time intervention: ``alpha * sigma[l, h] * direction[l, h]`` added to the output of each
    head in ``heads`` at every position.

    ``directions [L, H, D]`` already holds ``sigma * unit direction``, so it plugs straight into
    :func:`headatlas.methods.steering.steer_generate` / ``steer`` / ``steering_effect``:
    ``steer_generate(model, prompt, it.directions, it.heads, it.alpha)``; or use :meth:`generate`,
    :meth:`logits` and :meth:`edits` (``HeadEdit`` list for ``instrumented(model, edits=...)``)."""

    model: LoadedModel
    heads: list[tuple[int, int]]
    directions: torch.Tensor
    alpha: float

    def edits(self) -> list[HeadEdit]:
        from .steering import steering_edits

        return steering_edits(self.model, self.directions, self.heads, self.alpha)

    def logits(self, prompts: Any) -> torch.Tensor:
        from .steering import steer

        return steer(self.model, prompts, self.directions, self.heads, self.alpha)

    def generate(self, prompt: str, max_new_tokens: int = 20) -> str:
        from .steering import steer_generate

        return steer_generate(self.model, prompt, self.directions, self.heads, self.alpha,
                              max_new_tokens=max_new_tokens)


def iti(model: Any, heads: Heads | int, directions: ProbeResult | torch.Tensor | np.ndarray, alpha: float = 15.0,
        *, sigma: np.ndarray | torch.Tensor | None = None) -> ITI:
    """Build an :class:`ITI` (Li et al. 2023): shift ``heads`` by ``alpha`` standard deviations along their
    direction.

    ``directions``: a :class:`ProbeResult` (its mass-mean ``direction`` and ``sigma``), or a tensor/array
    ``[L, H, D]`` (normalised to unit length per head, scaled by ``sigma [L, H]`` when given, else used
    as is). ``heads``: ``[(layer, head), ...]`` or an int ``k`` = the top-``k`` heads of the ProbeResult."""
    m = as_loaded(model)
    L, H, D = m.info.n_layers, m.info.n_heads, m.info.d_head
    alpha = check_finite(alpha, "alpha")
    if isinstance(directions, ProbeResult):
        if isinstance(heads, int) and not isinstance(heads, bool):
            heads = directions.top(heads)
        vec = torch.as_tensor(directions.direction * directions.sigma[..., None], dtype=torch.float32)
    elif isinstance(directions, (torch.Tensor, np.ndarray)):
        vec = torch.as_tensor(np.asarray(directions.detach().cpu() if isinstance(directions, torch.Tensor)
                                         else directions, dtype=np.float64), dtype=torch.float32)
        if tuple(vec.shape) != (L, H, D):
            raise InputError(f"directions must be [{L}, {H}, {D}] (layers, heads, d_head), got {tuple(vec.shape)}")
        if sigma is not None:
            s = torch.as_tensor(np.asarray(sigma, dtype=np.float64), dtype=torch.float32)
            if tuple(s.shape) != (L, H):
                raise InputError(f"sigma must be [{L}, {H}], got {tuple(s.shape)}")
            norm = vec.norm(dim=-1, keepdim=True)
            vec = torch.where(norm > 0, vec / norm.clamp_min(1e-30), vec) * s[..., None]
    else:
        raise InputTypeError(f"directions must be a ProbeResult or a [{L}, {H}, {D}] tensor, got "
                             f"{type(directions).__name__}")
    if isinstance(heads, int) and not isinstance(heads, bool):
        raise InputError("heads=k (top-k) needs a ProbeResult as directions; pass [(layer, head), ...] otherwise")
    hs = check_heads(m, heads)
    return ITI(m, hs, vec, float(alpha))


__all__ = ["ITI", "ProbeData", "ProbeResult", "capture_heads", "grouped_folds", "iti", "load_probe_data",
           "mass_mean_directions", "permute_labels", "probe", "probe_correct", "probe_data", "probe_features",
           "resolve_positions", "token_rows"]


# ------------------------------------------------------------------------------------------- detectors

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


def completion_logodds(m: LoadedModel, pairs: Sequence[tuple[str, str, str]], edits: Sequence[Any] = (), *,
                       batch_size: int = 16) -> np.ndarray:
    """``[n]``: log P(``good`` | prefix) - log P(``bad`` | prefix) (teacher-forced sums over the completion's
    tokens; completions are encoded after a space) for ``(prefix, good, bad)`` triples, with ``edits``."""
    bos = bos_id(m.tokenizer)
    rows, spans = [], []
    for prefix, good, bad in pairs:
        head = ([] if bos is None else [bos]) + [int(x) for x in m.tokenizer.encode(prefix, add_special_tokens=False)]
        for comp in (good, bad):
            tail = [int(x) for x in m.tokenizer.encode(" " + comp, add_special_tokens=False)]
            if not tail:
                raise InputError(f"the completion {comp!r} tokenizes to no tokens for this tokenizer")
            rows.append(head + tail)
            spans.append((len(head), len(head) + len(tail)))
    out = np.zeros(len(rows))
    pad = pad_id(m.tokenizer)
    order = sorted(range(0, len(rows), 2), key=lambda i: len(rows[i]))     # pairs stay together
    flat = [j for i in order for j in (i, i + 1)]
    for s in range(0, len(flat), batch_size):
        idx = flat[s:s + batch_size]
        width = max(len(rows[j]) for j in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        for r, j in enumerate(idx):
            ids[r, :len(rows[j])] = torch.tensor(rows[j])
        # unembed only the positions that predict a completion token (the union over the batch's rows)
        keep = sorted({q for j in idx for q in range(spans[j][0] - 1, spans[j][1] - 1)})
        where = {q: k for k, q in enumerate(keep)}
        with torch.no_grad(), instrumented(m, edits=list(edits)):
            logits = m.model(input_ids=ids.to(m.device), use_cache=False,
                             logits_to_keep=torch.tensor(keep, device=m.device)).logits
        logp = torch.log_softmax(logits.float(), -1).cpu()
        for r, j in enumerate(idx):
            a, b = spans[j]
            cols = torch.tensor([where[q] for q in range(a - 1, b - 1)])
            out[j] = float(logp[r, cols, torch.tensor(rows[j][a:b])].sum())
    return out[0::2] - out[1::2]
