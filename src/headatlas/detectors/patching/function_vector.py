"""Function-vector heads (Todd et al. 2024, arXiv 2310.15213): the heads that carry a task from the
demonstrations of an in-context prompt to its last token.

``function_vector`` (data: ``tasks/icl.py`` word-mapping tasks, ``Q:/A:`` template, answers scored by their
single token):

1. Per task, 8-shot clean and zero-shot accuracy (argmax == answer token). Tasks with clean accuracy below
   :data:`MIN_ACCURACY` are dropped (``details["dropped_tasks"]``); none left: ``not found``.
2. Per task, each head's MEAN output ``z`` at the last position over the clean prompts.
3. Shuffled-label prompts (same demonstrations, labels permuted, same query): the indirect effect of a head
   on a prompt is ``p(answer | head's z at the last position := its clean task mean) - p(answer)``.
   - Attribution patching ranks every head: the first-order estimate
     ``sum_d (mean_z - z)[l, h, d] * dp/dz[l, h, d]`` per prompt (one forward + backward per prompt batch).
   - Exact patching confirms the top :data:`N_EXACT` heads by attribution AIE (one batched pass with one
     patched head per row, run from the patched layer on, only the last position recomputed).
   The per-prompt effect map ``[L, B, H]`` takes the EXACT effects for those candidates and the attribution
   estimate elsewhere; a label also needs ``exact == 1`` (only exactly patched heads can be labelled).
   ``details["agreement"]``: Spearman between attribution and exact AIE over the candidates and overlap of
   their top 20.
   **The unit of replication is the task**, not the prompt: every prompt of a task is patched with the same
   source (the task's mean head output), so its prompts are replicates of "the head helps *this* task", not
   of "the head helps in-context tasks" (version 2 flipped signs per prompt over all tasks pooled, and a head
   that helps one task only, e.g. smollm2's L29H0 on country_capital, passed as a general FV head with p 1e-4).
   Flipping whole tasks is honest but powerless (6 tasks: p >= 1/64). So (:mod:`headatlas.stats_tasks`):
   - per task: prompt-level sign flips *inside* the task (:data:`N_PER_TASK` prompts, ``stats.N_PERM`` draws),
     a p per head and task, BH q over heads within the task; ``extras["aie_<task>"]`` holds each task's AIE;
   - **general FV head** (the label): at least a majority ``u`` of the ``T`` kept tasks (4 of 6) have an
     effect: the Simes partial-conjunction p of the per-task p-values (Benjamini & Heller 2008; the tasks'
     prompts and permutations are independent), BH q over heads; effect = the ``u``-th largest task AIE (``u``
     tasks reach at least this much), CI from resampling prompts within each task; label: q <= 0.05, effect
     >= :data:`MIN_AIE`, ``exact == 1``;
   - **task-specific heads** (not labels): heads with task q <= 0.05 and task AIE >= :data:`MIN_AIE` in a task
     that are not general, in ``details["task_specific"][task]``; ``extras["n_tasks"]`` counts each head's
     tasks.
   The score (``scores``) stays the AIE pooled over all prompts.
4. Causal check (:func:`fv_check`): the function vector = sum over the top-:data:`FV_HEADS` labelled heads
   of their mean output through ``W_O`` (per task), added to the residual stream at the last position
   entering layer ``n_layers // 3`` (scale 1, Todd's choice; fixed, not tuned) of ZERO-SHOT prompts of
   held-out items; effect = mean change of p(answer). The same layer and scale for 99 layer-matched
   random sets from a pool without any labelled function-vector or in-context head (their own mean outputs).
   ``kind="add"`` (an addition, not an ablation), expected increase.

In-context heads (``in_context``): :mod:`headatlas.detectors.dla.in_context`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from scipy import stats as sps

from ... import stats
from ...atlas.records import CausalCheck
from ...stats_tasks import evaluate_across_tasks, task_specific
from ...errors import InputError
from ...instrument import RowHeadPatch, Taps, instrumented, stack_layers
from ...methods import engine
from ...methods.metrics import prob
from ...tasks.icl import icl_batch, icl_tasks
from ...tasks.text import pad_id
from ..base import NOT_FOUND, Detector, DetectorResult, LabelRule, ScanConfig, SharedPass, register
from ..behaviours import Behaviour, ResidualAdd, at_positions, per_prompt
from ..causal import set_check

if TYPE_CHECKING:
    from ...models import LoadedModel

K_SHOT = 8
N_PER_TASK = 16             # shuffled-label prompts per task (sign flips inside a task: p floor 2^-16 before R draws)
MIN_ACCURACY = 0.5          # a task the model does in context (8-shot)
N_EXACT = 40                # heads confirmed by exact patching
FV_HEADS = 10               # heads summed into the function vector
MIN_AIE = 0.01              # probability units: one percentage point of p(answer)
EVAL_SEED_OFFSET = 1000
TOP_AGREE = 20

FV_RULE = LabelRule(statistic=("average indirect effect at the last token (p(answer) after patching the head's mean "
                               "clean task output into shuffled-label prompts, minus p(answer)) reached in at least a "
                               "majority of the tasks: the u-th largest task AIE, partial-conjunction p over the tasks' "
                               "own tests (exactly patched heads)"),
                    direction="greater", min_effect=MIN_AIE, extra_min=(("exact", 1.0),))


def _n(cfg: ScanConfig, quick: int, full: int) -> int:
    return int(cfg.n_prompts) if cfg.n_prompts else (quick if cfg.quick else full)


def last_logits(m: LoadedModel, ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``[B, V]`` float32 logits at the last position."""
    out = []
    with torch.no_grad():
        for s in range(0, ids.shape[0], batch_size):
            out.append(engine.logits_of(m, ids[s:s + batch_size].to(m.device), True)[:, -1].float().cpu())
    return torch.cat(out)


def mean_last_z(m: LoadedModel, ids: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean head output at the last position over ``ids``: ``[L, H, d_head]``; and the last logits ``[B, V]``."""
    L = m.info.n_layers
    total = None
    logits = []
    for s in range(0, ids.shape[0], batch_size):
        with torch.no_grad(), instrumented(m, taps=Taps(z=True)) as rec:
            logits.append(engine.logits_of(m, ids[s:s + batch_size].to(m.device), True)[:, -1].float().cpu())
            part = stack_layers({l: rec.z(l)[:, -1].sum(0).float().cpu() for l in m.info.attention_layers}, L)
        total = part if total is None else total + part
    return total / ids.shape[0], torch.cat(logits)


def attribution_effects(m: LoadedModel, ids: torch.Tensor, answer: torch.Tensor, source: torch.Tensor,
                        batch_size: int) -> torch.Tensor:
    """First-order estimate of each head's per-prompt patching effect on p(answer) at the last position:
    ``[L, B, H]`` = ``sum_d (source[l, h] - z[b, -1, h]) * dp_b/dz[b, -1, h]``; ``source [L, H, d_head]``."""
    L = m.info.n_layers
    out = []
    from ...methods.attribution import _inputs_require_grad
    for s in range(0, ids.shape[0], batch_size):
        e = min(s + batch_size, ids.shape[0])
        with torch.enable_grad(), _inputs_require_grad(m), instrumented(m, taps=Taps(z=True, grad=True)) as rec:
            logits = engine.logits_of(m, ids[s:e].to(m.device), True)[:, -1].float()
            p = logits.softmax(-1).gather(1, answer[s:e].to(logits.device)[:, None])[:, 0]
            attn = m.info.attention_layers
            zs = [rec.z(l) for l in attn]
            grads = torch.autograd.grad(p.sum(), zs, allow_unused=True)
        rows = {}
        for i, (l, g) in enumerate(zip(attn, grads)):
            if g is None:
                rows[l] = torch.zeros(e - s, m.info.n_heads)
                continue
            z_last = zs[i].detach()[:, -1].float().cpu()
            rows[l] = ((source[l][None] - z_last) * g[:, -1].float().cpu()).sum(-1)
        out.append(stack_layers(rows, L))   # NaN rows: a hybrid's layers without heads
    return torch.cat(out, dim=1)


def exact_mean_patch(m: LoadedModel, ids: torch.Tensor, answer: torch.Tensor, source: torch.Tensor,
                     heads: list[tuple[int, int]], batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact per-prompt effects ``[len(heads), B]`` of replacing head ``(l, h)``'s output at the last position
    with ``source[l, h]`` (``[L, H, d_head]``), on p(answer); and the unpatched p ``[B]``.

    One patched head per batch row; runs start at the patched layer from the cached residual stream and,
    where the model allows, recompute only the last position (keys and values of the earlier positions
    come from the base run). Models without the suffix runner take full forward passes."""
    B, S = ids.shape
    met = prob(answer.to(m.device))
    if not heads:
        return torch.zeros(0, B), last_logits(m, ids, batch_size).softmax(-1).gather(1, answer[:, None])[:, 0]
    src = torch.zeros(m.info.n_layers, 1, S, m.info.n_heads, m.info.d_head)
    src[:, 0, -1] = source
    order = sorted(range(len(heads)), key=lambda i: heads[i][0])
    layer_of = torch.tensor([heads[i][0] for i in order]).repeat_interleave(B)
    head_of = torch.tensor([heads[i][1] for i in order]).repeat_interleave(B)
    prompt_of = torch.arange(B).repeat(len(heads))
    vals = torch.empty(len(heads) * B)
    if engine.supports_stacked(m):
        base = engine.base_run(m, ids.to(m.device), met, keep_kv=engine.prefix_limit(m) >= S - 1)
        prefix = S - 1 if base.k is not None else 0
        cap = max(batch_size, engine.max_rows(m, S - prefix))
        for s in range(0, len(vals), cap):
            e = min(s + cap, len(vals))
            lay, hh, pp = layer_of[s:e], head_of[s:e], prompt_of[s:e]

            def make(layer: int, local: torch.Tensor, hh: torch.Tensor = hh) -> list[Any]:
                return [RowHeadPatch(layer=layer, rows=local.to(m.device), heads=hh[local].to(m.device),
                                     source=src[layer], source_rows=torch.zeros_like(local).to(m.device),
                                     positions=[S - 1])]
            vals[s:e] = engine.run_stacked_rows(m, base, lay, pp, make, met, prefix=prefix).float().cpu()
        p0 = base.metric.float().cpu()
    else:
        p0 = last_logits(m, ids, batch_size).softmax(-1).gather(1, answer[:, None])[:, 0]
        for j, i in enumerate(order):
            l, h = heads[i]
            edit = RowHeadPatch(layer=l, rows=torch.arange(B), heads=torch.full((B,), h), source=src[l],
                                source_rows=torch.zeros(B, dtype=torch.long), positions=[S - 1])
            with torch.no_grad(), instrumented(m, edits=[edit]):
                lg = engine.logits_of(m, ids.to(m.device), True)[:, -1].float().cpu()
            vals[j * B:(j + 1) * B] = lg.softmax(-1).gather(1, answer[:, None])[:, 0]
    eff = torch.empty(len(heads), B)
    for j, i in enumerate(order):
        eff[i] = vals[j * B:(j + 1) * B] - p0
    return eff, p0


def _accuracy(logits: torch.Tensor, answer: torch.Tensor) -> float:
    return float((logits.argmax(-1) == answer).float().mean())


@dataclass
class FVStats:
    """The function-vector pass: kept tasks, per-task mean outputs ``[L, H, d_head]``, accuracies, effects."""

    kept: list[str]                             # tasks in the order of the prompts: n_per_task prompts each
    means: dict[str, torch.Tensor]
    accuracy: dict[str, dict[str, float]]
    dropped: dict[str, str]
    attribution: np.ndarray                     # [L, B, H]
    exact: np.ndarray                           # [L, B, H] (NaN where not patched exactly)
    candidates: list[tuple[int, int]]
    n_per_task: int
    seconds: dict[str, float] = field(default_factory=dict)
    tasks: dict[str, Any] = field(default_factory=dict)

    def task_of(self) -> np.ndarray:
        """``[B]`` the task of each prompt of the effect maps."""
        return np.repeat(np.array(self.kept), self.n_per_task)


def compute_fv(m: LoadedModel, cfg: ScanConfig) -> FVStats:
    tok = m.tokenizer
    n = _n(cfg, 4, N_PER_TASK)
    k = 4 if cfg.quick else K_SHOT
    tasks = icl_tasks(tok, seed=cfg.seed)
    t0 = time.perf_counter()
    accuracy, dropped, means, batches = {}, {}, {}, {}
    for task in tasks:
        b = icl_batch(tok, task, n, k, seed=cfg.seed)
        mean, clean_logits = mean_last_z(m, b.clean, cfg.batch_size)
        zero_logits = last_logits(m, b.zero, cfg.batch_size)
        acc = _accuracy(clean_logits, b.answer)
        accuracy[task.name] = {"clean": acc, "zero_shot": _accuracy(zero_logits, b.answer),
                               "dropped_items": task.dropped}
        if acc < MIN_ACCURACY:
            dropped[task.name] = f"{k}-shot accuracy {acc:.2f} < {MIN_ACCURACY}"
            continue
        means[task.name] = mean
        batches[task.name] = b
    t_clean = time.perf_counter() - t0
    if not means:
        accs = ", ".join(f"{t} {a['clean']:.2f}" for t, a in accuracy.items())
        raise InputError(f"{NOT_FOUND}the model solves none of the {len(tasks)} ICL tasks {k}-shot "
                         f"(accuracy >= {MIN_ACCURACY} needed; accuracies {accs})")
    kept = list(means)
    attr = torch.cat([attribution_effects(m, batches[t].shuffled, batches[t].answer, means[t], cfg.batch_size)
                      for t in kept], dim=1)                                         # [L, B, H]
    t_attr = time.perf_counter() - t0 - t_clean
    aie = attr.mean(1)
    n_heads = int(torch.isfinite(aie).sum())   # NaN rows: a hybrid's layers without heads (never candidates)
    n_exact = min(N_EXACT, n_heads) if not cfg.quick else min(8, n_heads)
    top = torch.argsort(torch.nan_to_num(aie, nan=float("-inf")).flatten(), descending=True, stable=True)[:n_exact]
    cand = [(int(i) // m.info.n_heads, int(i) % m.info.n_heads) for i in top]
    exact = torch.full_like(attr, float("nan"))
    parts = [exact_mean_patch(m, batches[t].shuffled, batches[t].answer, means[t], cand, cfg.batch_size)[0]
             for t in kept]
    eff = torch.cat(parts, dim=1)                                                    # [n_exact, B]
    for j, (l, h) in enumerate(cand):
        exact[l, :, h] = eff[j]
    t_exact = time.perf_counter() - t0 - t_clean - t_attr
    return FVStats(kept=kept, means=means, accuracy=accuracy, dropped=dropped, attribution=attr.double().numpy(),
                   exact=exact.double().numpy(), candidates=cand, n_per_task=n,
                   seconds={"clean_and_zero_shot": t_clean, "attribution": t_attr, "exact": t_exact},
                   tasks={t.name: t for t in tasks})


FV_PASS: SharedPass[FVStats] = SharedPass(
    name="function_vector", compute=compute_fv,
    key=lambda m, cfg: (cfg.seed, cfg.n_prompts, cfg.quick, cfg.batch_size, str(m.dtype), str(m.device)))


def _agreement(st: FVStats) -> dict[str, Any]:
    a = st.attribution.mean(1)
    ca = np.array([a[l, h] for l, h in st.candidates])
    ce = np.array([st.exact[l, :, h].mean() for l, h in st.candidates])
    rho = float(sps.spearmanr(ca, ce).statistic) if len(ca) > 2 and np.std(ce) > 0 else math.nan
    k = min(TOP_AGREE, len(ca))
    top_a = {st.candidates[i] for i in np.argsort(-ca, kind="stable")[:k]}
    top_e = {st.candidates[i] for i in np.argsort(-ce, kind="stable")[:k]}
    return {"n_exact": len(ca), "spearman_attribution_vs_exact": rho, f"top{k}_overlap": len(top_a & top_e),
            "attribution_aie": {f"L{l}H{h}": float(v) for (l, h), v in zip(st.candidates, ca)},
            "exact_aie": {f"L{l}H{h}": float(v) for (l, h), v in zip(st.candidates, ce)}}


def fv_result(per_prompt: np.ndarray, task_of: np.ndarray, exact: np.ndarray, *, seed: int, data_description: str,
              details: dict[str, Any] | None = None, extras: dict[str, np.ndarray] | None = None,
              n_perm: int = stats.N_PERM) -> DetectorResult:
    """The function-vector result from per-prompt effects ``[L, B, H]``, each prompt's task ``task_of [B]`` and
    ``exact [L, H]`` (1.0 where the effects are exact): general FV heads by the across-task test, task-specific
    heads in ``details["task_specific"]`` (module docstring)."""
    ex = {"exact": np.asarray(exact, dtype=float), **(extras or {})}
    scores = np.nanmean(per_prompt, axis=1)
    across = evaluate_across_tasks(per_prompt, task_of, FV_RULE, seed=seed, salt="function_vector", scores=scores,
                                   extras=ex, n_perm=n_perm)
    tested = across.tested
    for i, t in enumerate(across.tasks):
        ex[f"aie_{t}"] = across.task_effect[i]
    with np.errstate(invalid="ignore"):
        ex["n_tasks"] = ((across.task_q <= FV_RULE.fdr) & (across.task_effect >= MIN_AIE)).sum(0).astype(float)
    det = dict(details or {})
    det.update({"min_tasks": across.min_tasks, "n_tasks": len(across.tasks),
                "general_rule": (f"a general FV head helps at least {across.min_tasks} of the {len(across.tasks)} "
                                 f"tasks: Simes partial-conjunction p of the per-task sign-flip p-values, BH q <= "
                                 f"{FV_RULE.fdr}, the {across.min_tasks}-th largest task AIE >= {MIN_AIE}, exact"),
                "task_specific": task_specific(across, FV_RULE, usable=ex["exact"] > 0),
                "labelled_by_task": {f"L{a}H{b}": {t: float(across.task_effect[i, a, b])
                                                   for i, t in enumerate(across.tasks)} for a, b in tested.labelled}})
    n_per = int(per_prompt.shape[1] // max(1, len(across.tasks)))
    return stats.result(
        "function_vector", tested, scores=scores, rule=FV_RULE, data_description=data_description,
        null_description=(f"per task: sign flips of that task's per-prompt effects ({n_per} prompts, {tested.n_null} "
                          f"draws); across tasks: Simes partial conjunction of the {len(across.tasks)} task p-values "
                          f"(at least {across.min_tasks} tasks); null mean/std: the {across.min_tasks}-th largest "
                          "task mean under the tasks' flips"),
        n_prompts=per_prompt.shape[1], seed=seed, extras=ex, details=det)


def run_function_vector(m: LoadedModel, cfg: ScanConfig) -> DetectorResult:
    st = cfg.shared(FV_PASS, m)
    per_prompt = np.where(np.isnan(st.exact), st.attribution, st.exact)
    exact_flag = (~np.isnan(st.exact[:, 0, :])).astype(float)
    return fv_result(
        per_prompt, st.task_of(), exact_flag, seed=cfg.seed,
        data_description=(f"{len(st.kept)} ICL tasks ({', '.join(st.kept)}), {st.n_per_task} shuffled-label prompts "
                          f"each ({K_SHOT if not cfg.quick else 4}-shot, Q:/A: template); effect = p(answer) with the "
                          "head's mean clean last-token output patched in minus p(answer); exact patching for the "
                          f"top {len(st.candidates)} heads by attribution patching, attribution estimate elsewhere "
                          "(only exactly patched heads can be labelled)"),
        extras={"attribution_aie": st.attribution.mean(1)},
        details={"accuracy": st.accuracy, "dropped_tasks": st.dropped, "kept_tasks": st.kept,
                 "agreement": _agreement(st), "seconds": st.seconds,
                 "p_values_from": "exact patching for the candidates; attribution patching for the other heads"})


def function_vector_of(m: LoadedModel, mean: torch.Tensor, heads: list[tuple[int, int]]) -> torch.Tensor:
    """Sum over ``heads`` of their mean output through ``W_O``: ``[d_model]`` (``mean [L, H, d_head]``)."""
    out = None
    for l, h in heads:
        v = mean[l, h].float() @ m.W_O(l)[h].detach().float().cpu()
        out = v if out is None else out + v
    return out


def fv_behaviour(m: LoadedModel, cfg: ScanConfig, result: DetectorResult | None = None) -> Behaviour:
    """p(answer) on zero-shot prompts of held-out items of every kept task (seed + 1000), with a head set's function
    vector (per task: the sum of its heads' mean last-token outputs through ``W_O``) added at the last position of
    the residual stream entering layer ``n_layers // 3``."""
    st = cfg.shared(FV_PASS, m)
    layer = m.info.n_layers // 3
    n = _n(cfg, 4, 12)
    seed = cfg.seed + EVAL_SEED_OFFSET
    batches = [icl_batch(m.tokenizer, st.tasks[t], n, K_SHOT if not cfg.quick else 4, seed=seed, split="heldout")
               for t in st.kept]
    W = max(b.zero.shape[1] for b in batches)
    ids = torch.cat([torch.nn.functional.pad(b.zero, (0, W - b.zero.shape[1]), value=pad_id(m.tokenizer))
                     for b in batches])
    last = torch.cat([torch.full((b.zero.shape[0],), b.zero.shape[1] - 1) for b in batches])
    task = torch.cat([torch.full((b.zero.shape[0],), i) for i, b in enumerate(batches)])
    answer = torch.cat([b.answer for b in batches])
    keep = W - int(last.min())

    def prob_answer(lg: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return lg.softmax(-1).gather(1, answer[p].to(lg.device)[:, None])[:, 0]

    def vector(heads: Sequence[tuple[int, int]]) -> torch.Tensor:
        return torch.stack([function_vector_of(m, st.means[t], list(heads)) for t in st.kept])   # [n_tasks, d_model]

    return Behaviour(family="in-context task", metric="p(answer) on zero-shot held-out prompts", expected="increase",
                     ids=ids, score=per_prompt(at_positions(last, W, keep, prob_answer)), keep=keep,
                     intervention=ResidualAdd(layer, vector, group=task, position=last),
                     description=(f"function vector (sum of the tested heads' mean last-token outputs through W_O, per "
                                  f"task) ADDED at scale 1 to the residual stream entering layer {layer} at the last "
                                  f"position of {n} zero-shot prompts per task of held-out items (seed {seed}); random "
                                  "sets: same layer and scale, their own mean outputs"))


def fv_check(m: LoadedModel, cfg: ScanConfig, result: DetectorResult) -> CausalCheck:
    """Add the labelled heads' function vector to zero-shot prompts of held-out items: does p(answer) rise
    more than with the function vectors of layer-matched random head sets?"""
    order = sorted(result.labelled, key=lambda lh: -float(result.scores[lh[0], lh[1]]))
    heads = [(int(a), int(b)) for a, b in order[:FV_HEADS]]
    if not heads:
        return CausalCheck(metric="p(answer) on zero-shot held-out prompts", kind="none",
                           note="no heads were labelled: no function vector to add")
    return set_check(m, cfg, result, fv_behaviour(m, cfg, result), heads=heads)


FUNCTION_VECTOR = register(Detector(
    name="function_vector", evidence="patching", metric="in-context task", stage="LR", method="activation patching (mean-activation replacement, AIE)",
    summary=("a head whose mean task output, patched into shuffled-label ICL prompts, restores the answer; the sum "
             "of the top heads' outputs is a function vector"),
    citation="Todd et al. 2024, arXiv 2310.15213", run=run_function_vector, uses=(FV_PASS,), causal=fv_check, behaviour=fv_behaviour,
    default=False, version=3))
