"""Statistics behind every head label: null distributions, p and q values, bootstrap CIs, stability.

Everything here works on numbers a detector already captured (numpy, no model, no torch), so nulls
by permutation never rerun the model. Axes: ``L`` layers, ``B`` prompts (the resampling unit), ``H``
heads, ``K`` candidates of a best-of choice (relations, letters, offsets), ``R`` null draws.

The usual path for a detector:

1. per-prompt effects ``d [L, B, H]`` (score minus its matched control per prompt), or
   ``[L, B, H, K]`` for a best-of statistic (the head's best of ``K`` candidates);
2. null draws of the *same* statistic, e.g. :func:`signflip_null` (paired controls: under the null
   the score and its control are exchangeable within a prompt, so each prompt's difference may flip
   sign; a best-of statistic takes the same max over ``K`` in every draw) or
   :func:`permute_candidates_null` (candidate labels exchangeable within a prompt);
3. :func:`evaluate` turns observed statistic + null draws into p (add-one), q (Benjamini-Hochberg via
   scipy), a bootstrap CI over prompts, stability under prompt resampling and the labels of a
   :class:`~headatlas.atlas.records.LabelRule`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .atlas.records import DetectorResult, LabelRule

N_PERM = 9999        # permutation draws where they are cheap (p floor 1e-4)
N_BOOT = 1000        # bootstrap resamples of prompts
_CHUNK = 512         # null draws per chunk (bounds memory for best-of statistics)

Statistic = Callable[[np.ndarray], np.ndarray]   # per-prompt values [L, B, H(, K)] -> [L, H]


def rng_for(seed: int, salt: str) -> np.random.Generator:
    """A generator for one purpose of one detector: ``(seed, salt)`` always gives the same stream."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *salt.encode()])


def mean_over_prompts(d: np.ndarray) -> np.ndarray:
    """``[L, B, H]`` -> ``[L, H]`` (NaN-aware), or ``[L, B, H, K]`` -> best of ``K`` of the means ``[L, H]``."""
    m = np.nanmean(d, axis=1)
    return np.nanmax(m, axis=-1) if d.ndim == 4 else m


def best_candidate(d: np.ndarray) -> np.ndarray:
    """``[L, B, H, K]`` -> ``[L, H]`` index of the candidate with the best mean over prompts."""
    m = np.nanmean(d, axis=1)
    return np.nanargmax(np.where(np.isnan(m), -np.inf, m), axis=-1)


def items_per_prompt(values: np.ndarray, rows: np.ndarray, n_rows: int) -> np.ndarray:
    """``values [n_items, L, H]`` (one value per scored item, e.g. a word) -> ``[L, B, H]``: the mean over
    each prompt's items, for the ``B`` prompts that have one (prompts without an item carry no evidence)."""
    L, H = values.shape[1:]
    total = np.zeros((n_rows, L, H))
    count = np.zeros(n_rows)
    np.add.at(total, rows, values)
    np.add.at(count, rows, 1)
    with np.errstate(invalid="ignore"):
        out = np.transpose(total / count[:, None, None], (1, 0, 2))
    return out[:, count > 0]


def cluster_index(groups: np.ndarray | None, B: int) -> tuple[np.ndarray, int] | None:
    """``groups [B]`` (any hashable labels: a relation pair, a task, ...) -> ``(index [B] in 0..G-1, G)``;
    ``None`` stays ``None`` (every prompt is its own unit)."""
    if groups is None:
        return None
    g = np.asarray(groups)
    if g.shape != (B,):
        raise ValueError(f"groups must have one label per prompt ({B}), got shape {g.shape}")
    _, idx = np.unique(g, return_inverse=True)
    return idx.reshape(B), int(idx.max()) + 1 if B else 0


def signflip_null(d: np.ndarray, n: int = N_PERM, *, rng: np.random.Generator,
                  statistic: str = "mean", groups: np.ndarray | None = None) -> np.ndarray:
    """Null draws ``[R, L, H]`` of the mean (or best-of-``K`` mean) of paired differences ``d``.

    ``d [L, B, H]`` or ``[L, B, H, K]``: per prompt, score minus its matched control. Under the null
    the two are exchangeable within a prompt, so each prompt's differences flip sign together (one
    sign per prompt, shared by every head and candidate: the heads' draws stay jointly consistent).
    A best-of statistic (``K`` axis) takes the max over ``K`` in every draw, as the observed one does.
    NaN entries (a prompt with nothing to score) count as 0 and are left out of the mean's count.

    ``groups [B]``: the unit of replication when it is not the prompt (cluster sign flips): prompts that
    share a label (the two carriers of one relation pair, the prompts of one answer-word pair) are not
    independent, so they flip together, one sign per group. ``None``: one sign per prompt.
    """
    if statistic != "mean":
        raise ValueError(f"unknown statistic {statistic!r}")
    L, B = d.shape[0], d.shape[1]
    clusters = cluster_index(groups, B)
    finite = np.isfinite(d)
    x = np.where(finite, d, 0.0)
    count = finite.sum(axis=1)                                          # [L, H(, K)]
    flat = np.moveaxis(x, 1, 0).reshape(B, -1)                           # [B, L*H*K]
    if clusters is not None:                                             # sum each group's prompts: [G, L*H*K]
        idx, G = clusters
        summed = np.zeros((G, flat.shape[1]))
        np.add.at(summed, idx, flat)
        flat, B = summed, G
    out = []
    for start in range(0, n, _CHUNK):
        r = min(_CHUNK, n - start)
        signs = rng.integers(0, 2, size=(r, B)) * 2.0 - 1.0
        draws = (signs @ flat).reshape((r, L) + x.shape[2:]) / np.maximum(count, 1)
        if d.ndim == 4:
            draws = draws.max(axis=-1)
        out.append(draws)
    return np.concatenate(out, axis=0)


def slot_contrast(x: np.ndarray) -> np.ndarray:
    """``[L, B, H, K]`` -> ``[L, B, H, K]``: each slot's value minus the mean of the other slots of the
    same prompt (NaN-aware): how much more a head gives slot ``k`` than a typical other slot."""
    finite = np.isfinite(x)
    total = np.where(finite, x, 0.0).sum(-1, keepdims=True)
    count = finite.sum(-1, keepdims=True)
    others = (total - np.where(finite, x, 0.0)) / np.maximum(count - finite, 1)
    return x - others


def random_slot_null(contrast: np.ndarray, n: int = N_PERM, *, rng: np.random.Generator) -> np.ndarray:
    """Null draws ``[R, L, H]`` of the mean over prompts of one slot's contrast, where the slot is drawn
    at random per prompt (shared by all heads): the statistic a head gets when the slot it is scored on
    (the previous token, the first token, ...) is just one of the ``K`` comparable slots.
    ``contrast [L, B, H, K]`` from :func:`slot_contrast`."""
    L, B, H, K = contrast.shape
    c = np.moveaxis(contrast, (1, 3), (0, 1)).reshape(B, K, L * H)         # [B, K, L*H]
    finite = np.isfinite(c)
    vals, fin = np.where(finite, c, 0.0), finite.astype(float)
    all_finite = bool(finite.all())
    out = []
    rows = np.arange(B)[None, :]
    for start in range(0, n, _CHUNK):
        r = min(_CHUNK, n - start)
        idx = rng.integers(0, K, size=(r, B))
        total = vals[rows, idx].sum(1)                                        # [r, L*H]
        count = float(B) if all_finite else fin[rows, idx].sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(np.where(count > 0, total / np.maximum(count, 1), np.nan).reshape(r, L, H))
    return np.concatenate(out, axis=0)


def evaluate_first_slot(slots: np.ndarray, rule: LabelRule, *, seed: int, salt: str,
                        n: int = N_PERM) -> tuple[np.ndarray, "Tested", np.ndarray, np.ndarray]:
    """Test slot 0 of ``slots [L, B, H, K]`` against the other ``K - 1`` comparable slots.

    The score is slot 0's mean over prompts; the effect is its :func:`slot_contrast`; the null draws the
    scored slot at random per prompt (:func:`random_slot_null`). Returns ``(scores, tested, null_mean,
    null_std)`` with the null mean/std of the other slots (per head, over prompts and slots)."""
    scores = slots[..., 0].mean(1)
    contrast = slot_contrast(slots)
    draws = random_slot_null(contrast, n, rng=rng_for(seed, f"{salt}:null"))
    tested = evaluate(contrast[..., 0], draws, rule, seed=seed, salt=salt, scores=scores)
    others = slots[..., 1:]
    return scores, tested, np.nanmean(others, axis=(1, 3)), np.nanstd(others, axis=(1, 3))


def permute_candidates_null(x: np.ndarray, statistic: Statistic | None = None, n: int = N_PERM, *,
                            rng: np.random.Generator) -> np.ndarray:
    """Null draws ``[R, L, H]``: within each prompt the ``K`` candidate labels are permuted (one
    permutation per prompt, shared by all heads), then the statistic is recomputed: by default the
    best candidate's mean over prompts (:func:`mean_over_prompts` of ``[L, B, H, K]``, vectorised);
    a custom ``statistic(x_perm) -> [L, H]`` is recomputed draw by draw (slower).

    For best-of scores whose candidates are exchangeable under the null (e.g. the offset a positional
    head prefers): a head with a fixed preference loses it once each prompt's labels are shuffled."""
    L, B, H, K = x.shape
    if statistic is not None:
        out = np.empty((n, L, H))
        for i in range(n):
            perm = np.argsort(rng.random((B, K)), axis=1)
            out[i] = statistic(np.take_along_axis(x, perm[None, :, None, :], axis=3))
        return out
    c = np.moveaxis(x, (1, 3), (0, 1)).reshape(B, K, L * H)                # [B, K, L*H]
    finite = np.isfinite(c)
    vals, fin = np.where(finite, c, 0.0), finite.astype(float)
    rows = np.arange(B)[None, :, None]
    all_finite = bool(finite.all())
    chunk = max(1, _CHUNK // max(1, K // 4))
    out = []
    for start in range(0, n, chunk):
        r = min(chunk, n - start)
        perm = np.argsort(rng.random((r, B, K)), axis=2)                     # [r, B, K]
        total = vals[rows, perm].sum(1)                                      # [r, K, L*H]
        count = float(B) if all_finite else fin[rows, perm].sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, total / np.maximum(count, 1), -np.inf)
        best = mean.max(axis=1)
        out.append(np.where(np.isfinite(best), best, np.nan).reshape(r, L, H))
    return np.concatenate(out, axis=0)


def permutation_p(observed: np.ndarray, draws: np.ndarray, direction: str) -> np.ndarray:
    """Add-one permutation p-values ``[L, H]``: ``(1 + #{draws at least as extreme}) / (1 + R)``.

    ``greater``: draws >= observed; ``less``: draws <= observed; ``two-sided``: ``|draw - c| >= |obs - c|``
    with ``c`` the median of the head's draws. NaN where the observed value is NaN."""
    R = draws.shape[0]
    obs = observed[None]
    if direction == "greater":
        hits = (draws >= obs - 1e-12).sum(0)
    elif direction == "less":
        hits = (draws <= obs + 1e-12).sum(0)
    elif direction == "two-sided":
        c = _quantile(draws, 0.5)[None]
        hits = (np.abs(draws - c) >= np.abs(obs - c) - 1e-12).sum(0)
    else:
        raise ValueError(f"unknown direction {direction!r}")
    p = (1.0 + hits) / (1.0 + R)
    return np.where(np.isfinite(observed), p, np.nan)


def bh_q(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values over every finite entry of ``p`` (scipy); NaN stays NaN."""
    from scipy.stats import false_discovery_control

    q = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        q[ok] = false_discovery_control(p[ok], method="bh")
    return q


def bootstrap(values: np.ndarray, statistic: Statistic | None = None, n: int = N_BOOT, *,
              rng: np.random.Generator, groups: np.ndarray | None = None) -> np.ndarray:
    """``[n, L, H]``: the statistic recomputed on prompts resampled with replacement (axis 1). The default
    statistic (:func:`mean_over_prompts`, best-of-``K`` for 4-d values) is computed for all resamples at
    once from multinomial prompt counts; a custom one is recomputed resample by resample.
    ``groups [B]``: resample whole groups (cluster bootstrap; see :func:`signflip_null`)."""
    B = values.shape[1]
    L, H = values.shape[0], values.shape[2]
    clusters = cluster_index(groups, B)
    if statistic is not None:
        out = np.empty((n, L, H))
        members = None if clusters is None else [np.flatnonzero(clusters[0] == g) for g in range(clusters[1])]
        for i in range(n):
            if members is None:
                take = rng.integers(0, B, size=B)
            else:
                take = np.concatenate([members[g] for g in rng.integers(0, len(members), size=len(members))])
            out[i] = statistic(values[:, take])
        return out
    finite = np.isfinite(values)
    flat = np.moveaxis(np.where(finite, values, 0.0), 1, 0).reshape(B, -1)
    fin = np.moveaxis(finite.astype(float), 1, 0).reshape(B, -1)
    if clusters is None:
        counts = rng.multinomial(B, np.full(B, 1.0 / B), size=n).astype(float)     # [n, B]
    else:
        idx, G = clusters
        counts = rng.multinomial(G, np.full(G, 1.0 / G), size=n).astype(float)[:, idx]
    with np.errstate(invalid="ignore", divide="ignore"):
        total, count = counts @ flat, counts @ fin
        mean = np.where(count > 0, total / np.maximum(count, 1e-300), np.nan).reshape((n, L) + values.shape[2:])
    if values.ndim == 4:
        mean = np.where(np.isnan(mean), -np.inf, mean).max(axis=-1)
        mean = np.where(np.isfinite(mean), mean, np.nan)
    return mean


def partial_conjunction_p(p: np.ndarray, u: int) -> np.ndarray:
    """Simes partial-conjunction p-values (Benjamini & Heller 2008, Biometrics 64:1215) of "at least ``u``
    of the ``T`` units have an effect", from per-unit p-values ``p [T, ...]`` -> ``[...]``:
    ``min over i = u..T of (T - u + 1) / (i - u + 1) * p_(i)`` (``p_(i)`` the i-th smallest). Valid when
    the units' p-values are independent under the null (separate prompts, separate permutations).
    ``u = T``: the intersection-union test (the largest p); ``u = 1``: Simes' global test. NaN counts as 1."""
    T = p.shape[0]
    if not 1 <= u <= T:
        raise ValueError(f"u must be in 1..{T}, got {u}")
    s = np.sort(np.where(np.isfinite(p), p, 1.0), axis=0)[u - 1:]                # p_(u) .. p_(T)
    w = (T - u + 1) / np.arange(1, T - u + 2, dtype=float)
    return np.minimum(1.0, (w.reshape((-1,) + (1,) * (p.ndim - 1)) * s).min(axis=0))


def _quantile(a: np.ndarray, q: float) -> np.ndarray:
    """``np.quantile`` over axis 0, NaN-aware only where a column has NaN (nanquantile is slow)."""
    bad = ~np.isfinite(a).all(axis=0)
    out = np.quantile(np.where(np.isfinite(a), a, 0.0), q, axis=0)
    if bad.any():
        out[bad] = np.nanquantile(a[:, bad], q, axis=0) if np.isfinite(a[:, bad]).any() else np.nan
    return out


@dataclass(frozen=True)
class Tested:
    """The outcome of :func:`evaluate` for one detector (all ``[L, H]``)."""

    effect: np.ndarray
    p_value: np.ndarray
    q_value: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    stability: np.ndarray
    null_centre: np.ndarray
    null_spread: np.ndarray
    labelled: list[tuple[int, int]]
    n_null: int
    degenerate: list[tuple[int, int]]


def side_conditions(rule: LabelRule, scores: np.ndarray, extras: dict[str, np.ndarray] | None) -> np.ndarray:
    """``[L, H]`` bool: the rule's conditions other than q and effect (score floor, extras)."""
    ok = np.isfinite(scores)
    with np.errstate(invalid="ignore"):
        if rule.min_score is not None:
            ok &= scores >= rule.min_score
        for key, minimum in rule.extra_min:
            v = (extras or {}).get(key)
            if v is None:
                raise KeyError(f"label rule needs extras[{key!r}], which the detector did not provide")
            ok &= np.isfinite(v) & (np.asarray(v) >= minimum)
    return ok


def _effect_passes(rule: LabelRule, effect: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        if rule.direction == "greater":
            return effect >= rule.min_effect
        if rule.direction == "less":
            return effect <= -rule.min_effect
        return np.abs(effect) >= rule.min_effect


def apply_rule(rule: LabelRule, *, effect: np.ndarray, q: np.ndarray, scores: np.ndarray,
               extras: dict[str, np.ndarray] | None = None, usable: np.ndarray | None = None) -> np.ndarray:
    """``[L, H]`` bool: heads that pass ``rule`` (q, effect in the rule's direction, score floor, extras)."""
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(q) & (q <= rule.fdr) & np.isfinite(effect) & _effect_passes(rule, effect)
    ok &= side_conditions(rule, scores, extras)
    if usable is not None:
        ok &= usable
    return ok


def _ranked(mask: np.ndarray, q: np.ndarray, effect: np.ndarray) -> list[tuple[int, int]]:
    heads = [(int(a), int(b)) for a, b in zip(*np.nonzero(mask))]
    return sorted(heads, key=lambda lh: (float(q[lh]), -abs(float(effect[lh]))))


def evaluate(per_prompt: np.ndarray, draws: np.ndarray, rule: LabelRule, *, seed: int, salt: str,
             scores: np.ndarray, statistic: Statistic | None = None,
             extras: dict[str, np.ndarray] | None = None, n_boot: int = N_BOOT,
             groups: np.ndarray | None = None) -> Tested:
    """p, q, CI, stability and labels for observed per-prompt effects and null draws of the statistic.

    - ``per_prompt``: ``[L, B, H]`` (or ``[L, B, H, K]``) values whose ``statistic`` is the effect;
    - ``draws``: ``[R, L, H]`` the same statistic under the null;
    - ``scores``: ``[L, H]`` the detector's score (for the rule's optional score floor).

    A head whose null draws all take one value (zero variance) gets no label: its null is degenerate
    and is listed in ``degenerate`` (the detector reports it) instead of being hidden behind a floor.
    Stability: the fraction of bootstrap resamples of the prompts in which the head still clears the
    critical value of its own null at the detector's BH cut-off, and the rule's effect and score
    conditions. ``groups [B]``: the unit of replication when it is not the prompt; the bootstrap then
    resamples whole groups (draw the null with the same ``groups``, :func:`signflip_null`).
    """
    effect = (statistic or mean_over_prompts)(per_prompt)
    p = permutation_p(effect, draws, rule.direction)
    q = bh_q(p)
    with np.errstate(invalid="ignore"):
        spread = np.nanstd(draws, axis=0)
        centre = np.nanmean(draws, axis=0)
    degenerate_mask = np.isfinite(effect) & ~(spread > 0)
    ok = apply_rule(rule, effect=effect, q=q, scores=scores, extras=extras, usable=~degenerate_mask)
    boot = bootstrap(per_prompt, statistic, n_boot, rng=rng_for(seed, salt + ":bootstrap"), groups=groups)
    with np.errstate(invalid="ignore"):
        ci_low, ci_high = _quantile(boot, 0.025), _quantile(boot, 0.975)
    # critical value at the BH cut-off: the largest p that passes (or the per-head Bonferroni level)
    passed_p = p[ok]
    p_cut = float(passed_p.max()) if passed_p.size else rule.fdr / max(1, int(np.isfinite(p).sum()))
    stability = _stability(boot, draws, rule, p_cut, scores, extras, ~degenerate_mask)
    return Tested(effect=effect, p_value=p, q_value=q, ci_low=ci_low, ci_high=ci_high, stability=stability,
                  null_centre=centre, null_spread=spread, labelled=_ranked(ok, q, effect), n_null=int(draws.shape[0]),
                  degenerate=[(int(a), int(b)) for a, b in zip(*np.nonzero(degenerate_mask))])


def _stability(boot: np.ndarray, draws: np.ndarray, rule: LabelRule, p_cut: float, scores: np.ndarray,
               extras: dict[str, np.ndarray] | None, usable: np.ndarray) -> np.ndarray:
    level = min(max(1.0 - p_cut, 0.0), 1.0)
    with np.errstate(invalid="ignore"):
        if rule.direction == "greater":
            passes = boot >= _quantile(draws, level)[None]
        elif rule.direction == "less":
            passes = boot <= _quantile(draws, 1.0 - level)[None]
        else:
            c = _quantile(draws, 0.5)
            passes = np.abs(boot - c[None]) >= _quantile(np.abs(draws - c[None]), level)[None]
    fixed = side_conditions(rule, scores, extras) & usable
    frac = (passes & _effect_passes(rule, boot) & fixed[None]).mean(axis=0)
    return np.where(np.isfinite(scores), frac, np.nan)


def result(name: str, tested: Tested, *, scores: np.ndarray, rule: LabelRule, data_description: str,
           null_description: str, n_prompts: int, seed: int, extras: dict[str, np.ndarray] | None = None,
           details: dict[str, Any] | None = None, null_mean: np.ndarray | None = None,
           null_std: np.ndarray | None = None) -> DetectorResult:
    """A :class:`DetectorResult` from the outcome of :func:`evaluate`.

    ``null_mean``/``null_std`` default to the centre and spread of the null draws of the statistic;
    detectors whose score has a natural control value (e.g. the control's mean score) pass it instead."""
    det = dict(details or {})
    if tested.degenerate:
        det["null_zero_variance"] = [list(lh) for lh in tested.degenerate]
    return DetectorResult(
        name=name, scores=np.asarray(scores, dtype=float),
        null_mean=tested.null_centre if null_mean is None else np.asarray(null_mean, dtype=float),
        null_std=tested.null_spread if null_std is None else np.asarray(null_std, dtype=float),
        effect=tested.effect, ci_low=tested.ci_low, ci_high=tested.ci_high, p_value=tested.p_value,
        q_value=tested.q_value, stability=tested.stability, labelled=list(tested.labelled), rule=rule,
        data_description=data_description, null_description=null_description, n_prompts=int(n_prompts),
        seed=int(seed), n_null=tested.n_null, extras=dict(extras or {}), details=det)


def jaccard(a: list[tuple[int, int]] | set, b: list[tuple[int, int]] | set) -> float:
    """|a ∩ b| / |a ∪ b| of two head sets (1.0 when both are empty)."""
    sa, sb = set(map(tuple, a)), set(map(tuple, b))
    return 1.0 if not (sa | sb) else len(sa & sb) / len(sa | sb)
