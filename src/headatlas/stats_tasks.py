"""Statistics for head types claimed *across tasks*: a per-task test with prompt-level sign flips inside
each task, and a partial-conjunction test across tasks.

Why not pool the prompts of all tasks: when every prompt of a task shares one ingredient (the function-vector
detector patches the *task's* mean head output into each of its prompts), the prompts of a task are not
independent replicates of "the head helps in-context tasks". A head that helps one task strongly and no
other gets a tiny p from pooled prompt-level flips. Flipping whole tasks instead is honest but powerless (6
tasks: the smallest p is 1/64). The design here splits the claim in two:

- **task-specific** (head helps task ``t``): within task ``t`` the source vector is fixed and its prompts are
  the replicates, so prompt-level sign flips inside the task are legitimate; one p per task and head;
- **general** (head helps at least ``u`` of the ``T`` tasks): the Simes partial-conjunction p-value of the
  per-task p-values (Benjamini & Heller 2008, :func:`headatlas.stats.partial_conjunction_p`), valid because
  the tasks' prompts and permutations are independent. Its effect is the ``u``-th largest task effect (``u``
  tasks reach at least this much), with a bootstrap CI that resamples prompts within each task.

Axes: ``T`` tasks, ``L`` layers, ``B`` prompts (all tasks, concatenated), ``H`` heads, ``R`` null draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import stats
from .atlas.records import LabelRule

NULL_SUMMARY_DRAWS = 999      # per-task draws kept to describe the null of the general statistic


def majority(n_tasks: int) -> int:
    """The smallest number of tasks that is more than half of ``n_tasks``."""
    return n_tasks // 2 + 1


@dataclass(frozen=True)
class AcrossTasks:
    """Per-task tests and the general (partial-conjunction) test, ``[T, L, H]`` and ``[L, H]`` arrays."""

    tasks: list[str]
    min_tasks: int                  # u: the general claim is "at least u of the T tasks"
    task_effect: np.ndarray         # [T, L, H] mean effect per task
    task_p: np.ndarray              # [T, L, H] prompt-level sign-flip p inside each task
    task_q: np.ndarray              # [T, L, H] BH over heads, per task
    tested: stats.Tested            # the general test: effect = u-th largest task effect, p = partial conjunction


def _task_draws(per_prompt: np.ndarray, sel: np.ndarray, n_perm: int, seed: int, salt: str) -> np.ndarray:
    return stats.signflip_null(per_prompt[:, sel], n_perm, rng=stats.rng_for(seed, salt))


def uth_largest(x: np.ndarray, u: int) -> np.ndarray:
    """``[T, ...]`` -> ``[...]``: the ``u``-th largest value over the task axis (NaN counts as -inf)."""
    s = np.sort(np.where(np.isnan(x), -np.inf, x), axis=0)
    return s[x.shape[0] - u]


def evaluate_across_tasks(per_prompt: np.ndarray, task_of: np.ndarray, rule: LabelRule, *, seed: int, salt: str,
                          scores: np.ndarray, extras: dict[str, np.ndarray] | None = None,
                          min_tasks: int | None = None, n_perm: int = stats.N_PERM,
                          n_boot: int = stats.N_BOOT) -> AcrossTasks:
    """Test every head in each task and across tasks.

    ``per_prompt [L, B, H]`` effects, ``task_of [B]`` each prompt's task; ``rule`` (direction ``greater``)
    labels the general claim: BH q of the partial-conjunction p <= ``rule.fdr``, the ``u``-th largest task
    effect >= ``rule.min_effect`` and the rule's side conditions (``scores``, ``extras``). ``min_tasks``
    (``u``) defaults to a majority of the tasks. Stability: the fraction of within-task bootstrap resamples in
    which at least ``u`` tasks clear their own null's critical value at the detector's cut-off and the ``u``-th
    largest task effect still reaches the rule's minimum."""
    if rule.direction != "greater":
        raise ValueError("the across-tasks test is one-sided (direction 'greater')")
    task_of = np.asarray(task_of)
    tasks = list(dict.fromkeys(task_of.tolist()))
    T = len(tasks)
    u = majority(T) if min_tasks is None else int(min_tasks)
    sels = [task_of == t for t in tasks]
    effect_t = np.stack([np.nanmean(per_prompt[:, s], axis=1) for s in sels])                     # [T, L, H]
    p_t, spread_t, summary = [], [], []
    for t, s, e in zip(tasks, sels, effect_t):       # one task's draws at a time: memory [R, L, H], not [T, R, L, H]
        d = _task_draws(per_prompt, s, n_perm, seed, f"{salt}:task:{t}")
        p_t.append(stats.permutation_p(e, d, "greater"))
        spread_t.append(np.nanstd(d, axis=0))
        summary.append(d[:NULL_SUMMARY_DRAWS])
    p_t = np.stack(p_t)
    q_t = np.stack([stats.bh_q(p) for p in p_t])
    effect = uth_largest(effect_t, u)
    p = stats.partial_conjunction_p(p_t, u)
    q = stats.bh_q(np.where(np.isfinite(effect), p, np.nan))
    usable = np.isfinite(effect) & ((np.stack(spread_t) > 0).sum(0) >= u)                       # a live null in u tasks
    ok = stats.apply_rule(rule, effect=effect, q=q, scores=scores, extras=extras, usable=usable)
    boot_t = np.stack([stats.bootstrap(per_prompt[:, s], None, n_boot, rng=stats.rng_for(seed, f"{salt}:boot:{t}"))
                       for t, s in zip(tasks, sels)])                                             # [T, n, L, H]
    boot = uth_largest(boot_t, u)
    with np.errstate(invalid="ignore"):
        ci_low, ci_high = np.nanquantile(boot, 0.025, axis=0), np.nanquantile(boot, 0.975, axis=0)
    passed = p[ok]
    p_cut = float(passed.max()) if passed.size else rule.fdr / max(1, int(np.isfinite(p).sum()))
    crit = np.stack([np.quantile(_task_draws(per_prompt, s, n_perm, seed, f"{salt}:task:{t}"), 1.0 - p_cut, axis=0)
                     for t, s in zip(tasks, sels)])                                               # [T, L, H] (same draws)
    with np.errstate(invalid="ignore"):
        clear = ((boot_t >= crit[:, None]).sum(0) >= u) & (boot >= rule.min_effect)
    fixed = stats.side_conditions(rule, scores, extras) & usable
    stability = np.where(np.isfinite(effect), (clear & fixed[None]).mean(0), np.nan)
    general_null = uth_largest(np.stack(summary), u)
    labelled = sorted(((int(a), int(b)) for a, b in zip(*np.nonzero(ok))),
                      key=lambda lh: (float(q[lh]), -float(effect[lh])))
    tested = stats.Tested(effect=effect, p_value=p, q_value=q, ci_low=ci_low, ci_high=ci_high, stability=stability,
                          null_centre=np.nanmean(general_null, axis=0), null_spread=np.nanstd(general_null, axis=0),
                          labelled=labelled, n_null=int(n_perm),
                          degenerate=[(int(a), int(b)) for a, b in zip(*np.nonzero(np.isfinite(effect) & ~usable))])
    return AcrossTasks(tasks=tasks, min_tasks=u, task_effect=effect_t, task_p=p_t, task_q=q_t, tested=tested)


def task_specific(across: AcrossTasks, rule: LabelRule, usable: np.ndarray | None = None
                  ) -> dict[str, list[dict[str, float | str]]]:
    """Per task, the heads that pass the rule *in that task* (BH q over heads inside the task, task effect >=
    the rule's minimum, ``usable``) but are not labelled general: ``{task: [{"head", "effect", "p", "q"}]}``."""
    general = set(across.tested.labelled)
    out: dict[str, list[dict[str, float | str]]] = {}
    for i, t in enumerate(across.tasks):
        e, p, q = across.task_effect[i], across.task_p[i], across.task_q[i]
        with np.errstate(invalid="ignore"):
            mask = np.isfinite(q) & (q <= rule.fdr) & (e >= rule.min_effect)
        if usable is not None:
            mask &= usable
        heads = sorted(((int(a), int(b)) for a, b in zip(*np.nonzero(mask)) if (int(a), int(b)) not in general),
                       key=lambda lh: -float(e[lh]))
        out[t] = [{"head": f"L{a}H{b}", "effect": float(e[a, b]), "p": float(p[a, b]), "q": float(q[a, b])}
                  for a, b in heads]
    return out
