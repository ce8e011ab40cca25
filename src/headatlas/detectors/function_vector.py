"""Function-vector heads (Todd et al. 2024, arXiv 2310.15213) and in-context heads (Yu & Ananiadou 2024,
arXiv 2402.02872): the heads that carry a task, or a label mapping, from the demonstrations of an
in-context prompt to its last token.

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
   estimate elsewhere; p-values come from sign flips of that map, and a label also needs ``exact == 1``
   (only exactly patched heads can be labelled). ``details["agreement"]``: Spearman between attribution and
   exact AIE over the candidates and overlap of their top 20.
4. Causal check (:func:`fv_check`): the function vector = sum over the top-:data:`FV_HEADS` labelled heads
   of their mean output through ``W_O`` (per task), added to the residual stream at the last position
   entering layer ``n_layers // 3`` (scale 1, Todd's choice; fixed, not tuned) of ZERO-SHOT prompts of
   held-out items; effect = mean change of p(answer). The same layer and scale for >= 20 layer-matched
   random sets (their own mean outputs). ``kind="add"`` (an addition, not an ablation), expected increase.

``in_context``: foo/bar classification prompts (``tasks/icl.py`` :func:`class_batch`, the label mapping drawn
per prompt). Class pairs the model classifies at chance (accuracy < :data:`MIN_PAIR_ACCURACY`) are dropped;
if the remaining accuracy is not above chance (one-sided binomial p > 0.05): ``not found``. Score: each
head's direct logit attribution at the last position to ``logit(correct label) - logit(other label)``;
null: sign flips per prompt (swapping the mapping swaps the two labels and flips the contrast of a head that
does not read the mapping). Causal check: zero-ablating the labelled heads lowers the logit difference on
held-out prompts (seed + 1000, the class pairs kept for detection) more than layer-matched random sets.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy import stats as sps

from .. import stats
from ..atlas.records import CausalCheck
from ..errors import InputError
from ..instrument import RowHeadPatch, Taps, instrumented, stack_layers
from ..methods import engine
from ..methods.dla import capture_final_residual, direct_logit_effect
from ..methods.metrics import prob
from ..models.suffix import decoder_layers
from ..tasks.icl import ICLBatch, class_batch, icl_batch, icl_tasks
from .base import NOT_FOUND, Detector, DetectorResult, LabelRule, ScanConfig, SharedPass, register
from .causal import ablation_check, effect_map_result, matched_random_sets

if TYPE_CHECKING:
    from ..models import LoadedModel

K_SHOT = 8
MIN_ACCURACY = 0.5          # a task the model does in context (8-shot)
N_EXACT = 40                # heads confirmed by exact patching
FV_HEADS = 10               # heads summed into the function vector
MIN_AIE = 0.01              # probability units: one percentage point of p(answer)
MIN_PAIR_ACCURACY = 0.6
MIN_DLA = 0.1               # logits
CHANCE_ALPHA = 0.05         # ICL accuracy must beat chance at this level (one-sided binomial)
EVAL_SEED_OFFSET = 1000
TOP_AGREE = 20

FV_RULE = LabelRule(statistic=("average indirect effect at the last token: p(answer) after patching the head's mean "
                               "clean output into shuffled-label prompts, minus p(answer) (exactly patched heads)"),
                    direction="greater", min_effect=MIN_AIE, extra_min=(("exact", 1.0),))
IC_RULE = LabelRule(statistic=("direct logit attribution at the last token to logit(correct label) - logit(other "
                               "label), foo/bar classification with a per-prompt label mapping"),
                    direction="greater", min_effect=MIN_DLA)


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
    from ..methods.attribution import _inputs_require_grad
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

    kept: list[str]
    means: dict[str, torch.Tensor]
    accuracy: dict[str, dict[str, float]]
    dropped: dict[str, str]
    attribution: np.ndarray                     # [L, B, H]
    exact: np.ndarray                           # [L, B, H] (NaN where not patched exactly)
    candidates: list[tuple[int, int]]
    n_per_task: int
    seconds: dict[str, float] = field(default_factory=dict)
    tasks: dict[str, Any] = field(default_factory=dict)


def compute_fv(m: LoadedModel, cfg: ScanConfig) -> FVStats:
    tok = m.tokenizer
    n = _n(cfg, 4, 12)
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


def run_function_vector(m: LoadedModel, cfg: ScanConfig) -> DetectorResult:
    st = cfg.shared(FV_PASS, m)
    per_prompt = np.where(np.isnan(st.exact), st.attribution, st.exact)
    exact_flag = (~np.isnan(st.exact[:, 0, :])).astype(float)
    res = effect_map_result(
        "function_vector", per_prompt, FV_RULE, seed=cfg.seed,
        data_description=(f"{len(st.kept)} ICL tasks ({', '.join(st.kept)}), {st.n_per_task} shuffled-label prompts "
                          f"each ({K_SHOT if not cfg.quick else 4}-shot, Q:/A: template); effect = p(answer) with the "
                          "head's mean clean last-token output patched in minus p(answer); exact patching for the "
                          f"top {len(st.candidates)} heads by attribution patching, attribution estimate elsewhere "
                          "(only exactly patched heads can be labelled)"),
        extras={"exact": exact_flag, "attribution_aie": st.attribution.mean(1)},
        details={"accuracy": st.accuracy, "dropped_tasks": st.dropped, "kept_tasks": st.kept,
                 "agreement": _agreement(st), "seconds": st.seconds,
                 "p_values_from": "exact patching for the candidates; attribution patching for the other heads"})
    return res


def _add_at_layer(m: LoadedModel, layer: int, vec: torch.Tensor):
    """Context: add ``vec [B, d_model]`` to the residual stream at the last position entering ``layer``."""
    layers = decoder_layers(m)
    if layers is None:
        raise InputError("the function-vector check needs the model's decoder layers (not found for this model)")

    def hook(_mod, args, kwargs):
        if args:
            h = args[0].clone()
            h[:, -1] += vec.to(device=h.device, dtype=h.dtype)
            return (h,) + tuple(args[1:]), kwargs
        h = kwargs["hidden_states"].clone()
        h[:, -1] += vec.to(device=h.device, dtype=h.dtype)
        return args, {**kwargs, "hidden_states": h}
    return layers[layer].register_forward_pre_hook(hook, with_kwargs=True)


def function_vector_of(m: LoadedModel, mean: torch.Tensor, heads: list[tuple[int, int]]) -> torch.Tensor:
    """Sum over ``heads`` of their mean output through ``W_O``: ``[d_model]`` (``mean [L, H, d_head]``)."""
    out = None
    for l, h in heads:
        v = mean[l, h].float() @ m.W_O(l)[h].detach().float().cpu()
        out = v if out is None else out + v
    return out


def fv_check(m: LoadedModel, cfg: ScanConfig, result: DetectorResult) -> CausalCheck:
    """Add the labelled heads' function vector to zero-shot prompts of held-out items: does p(answer) rise
    more than with the function vectors of layer-matched random head sets?"""
    metric = "p(answer) on zero-shot held-out prompts"
    order = sorted(result.labelled, key=lambda lh: -float(result.scores[lh[0], lh[1]]))
    heads = [(int(a), int(b)) for a, b in order[:FV_HEADS]]
    if not heads:
        return CausalCheck(metric=metric, kind="none", note="no heads were labelled: no function vector to add")
    st = cfg.shared(FV_PASS, m)
    layer = m.info.n_layers // 3
    n = _n(cfg, 4, 12)
    seed = cfg.seed + EVAL_SEED_OFFSET
    zb: dict[str, ICLBatch] = {t: icl_batch(m.tokenizer, st.tasks[t], n, K_SHOT if not cfg.quick else 4, seed=seed,
                                            split="heldout") for t in st.kept}

    def run(hs: list[tuple[int, int]] | None) -> float:
        vals = []
        for t in st.kept:
            b = zb[t]
            if hs is None:
                lg = last_logits(m, b.zero, cfg.batch_size)
            else:
                fv = function_vector_of(m, st.means[t], hs)
                handle = _add_at_layer(m, layer, fv[None])
                try:
                    lg = last_logits(m, b.zero, cfg.batch_size)
                finally:
                    handle.remove()
            vals.append(lg.softmax(-1).gather(1, b.answer[:, None])[:, 0])
        return float(torch.cat(vals).mean())

    base = run(None)
    effect = run(heads) - base
    rng = stats.rng_for(cfg.seed, "causal:function_vector")
    sets = matched_random_sets(heads, m.info.n_layers, m.info.n_heads, 20, rng, m.info.attention_layers)
    rand = [run(s) - base for s in sets]
    hits = sum(1 for r in rand if r >= effect)
    return CausalCheck(metric=metric, kind="add", heads=tuple(heads), effect=effect, random_effects=tuple(rand),
                       p_value=(1 + hits) / (1 + len(rand)), n_prompts=n * len(st.kept), baseline=base,
                       expected="increase",
                       description=(f"function vector (sum of the top {len(heads)} labelled heads' mean last-token "
                                    f"outputs through W_O, per task) ADDED at scale 1 to the residual stream entering "
                                    f"layer {layer} at the last position of {n} zero-shot prompts per task of held-out "
                                    f"items (seed {seed}); random sets: same layer and scale, their own mean outputs"))


# ---- in-context heads ----

def _kept_rows(ld: torch.Tensor, pair: torch.Tensor) -> tuple[torch.Tensor, dict[str, float], list[int]]:
    acc = {}
    keep = []
    from ..tasks.icl import PAIRS
    for p in sorted(set(pair.tolist())):
        s = pair == p
        a = float((ld[s] > 0).float().mean())
        acc["/".join(PAIRS[p])] = a
        if a >= MIN_PAIR_ACCURACY:
            keep.append(p)
    return torch.isin(pair, torch.tensor(keep, dtype=pair.dtype)), acc, keep


def run_in_context(m: LoadedModel, cfg: ScanConfig) -> DetectorResult:
    n = _n(cfg, 6, 48)
    b = class_batch(m.tokenizer, n, K_SHOT if not cfg.quick else 4, seed=cfg.seed)
    L = m.info.n_layers
    per = []
    lds = []
    for s in range(0, n, cfg.batch_size):
        e = min(s + cfg.batch_size, n)
        with torch.no_grad(), capture_final_residual(m) as resid, instrumented(m, taps=Taps(z=True)) as rec:
            lg = engine.logits_of(m, b.ids[s:e].to(m.device), True)[:, -1].float().cpu()
            r = resid[-1][:, -1]
            c, o = b.correct[s:e], b.other[s:e]
            a_in = {l: resid.attn_in[l][-1][:, -1] for l in resid.attn_in}   # sandwich-norm inputs (Gemma 2/3)
            per.append(stack_layers({l: (direct_logit_effect(m, l, rec.z(l)[:, -1], r, c.to(r.device), a_in.get(l))
                                         - direct_logit_effect(m, l, rec.z(l)[:, -1], r, o.to(r.device), a_in.get(l)))
                                        .float().cpu() for l in m.info.attention_layers}, L))
        lds.append(lg.gather(1, c[:, None])[:, 0] - lg.gather(1, o[:, None])[:, 0])
    ld = torch.cat(lds)
    per_prompt = torch.cat(per, dim=1).double().numpy()
    keep, acc, kept_pairs = _kept_rows(ld, b.pair)
    n_keep = int(keep.sum())
    hits = int((ld[keep] > 0).sum())
    binom_p = float(sps.binomtest(hits, n_keep, 0.5, alternative="greater").pvalue) if n_keep else 1.0
    overall = hits / n_keep if n_keep else float("nan")
    if not n_keep or binom_p > CHANCE_ALPHA:
        raise InputError(f"{NOT_FOUND}foo/bar ICL classification is at chance (per class pair accuracy "
                         f"{', '.join(f'{k} {v:.2f}' for k, v in acc.items())}; kept pairs: {hits}/{n_keep} correct, "
                         f"binomial p = {binom_p:.3g})")
    res = effect_map_result(
        "in_context", per_prompt[:, keep.numpy()], IC_RULE, seed=cfg.seed,
        data_description=(f"{n_keep} foo/bar classification prompts ({K_SHOT if not cfg.quick else 4}-shot, Q:/A: "
                          "template, label mapping drawn per prompt) of the class pairs the model classifies above "
                          f"{MIN_PAIR_ACCURACY}; score = DLA at the last token to logit(correct) - logit(other label)"),
        null_description=("sign flips of the per-prompt DLA contrasts (swapping the label mapping flips the contrast "
                          "of a head that does not read it)"),
        details={"accuracy_per_pair": acc, "kept_pairs": kept_pairs, "accuracy": overall, "binomial_p": binom_p,
                 "mean_logit_diff": float(ld[keep].mean())})
    return res


def ic_check(m: LoadedModel, cfg: ScanConfig, result: DetectorResult) -> CausalCheck:
    n = _n(cfg, 6, 16)
    seed = cfg.seed + EVAL_SEED_OFFSET
    pairs = result.details.get("kept_pairs")
    b = class_batch(m.tokenizer, n, K_SHOT if not cfg.quick else 4, seed=seed, pairs=pairs)

    def fn(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        last = logits[:, -1]
        c, o = b.correct.to(last.device)[rows], b.other.to(last.device)[rows]
        return last.gather(1, c[:, None])[:, 0] - last.gather(1, o[:, None])[:, 0]
    return ablation_check(m, result.labelled, b.ids, fn, metric="logit(correct label) - logit(other label)",
                          expected="decrease", seed=cfg.seed, kind="zero", batch_size=cfg.batch_size, keep_last=1,
                          description=(f"foo/bar classification logit difference at the last token of {n} held-out "
                                       f"prompts (seed {seed}) of the class pairs kept for detection, zero ablation"))


FUNCTION_VECTOR = register(Detector(
    name="function_vector", stage="LR", method="activation patching (mean-activation replacement, AIE)",
    summary=("a head whose mean task output, patched into shuffled-label ICL prompts, restores the answer; the sum "
             "of the top heads' outputs is a function vector"),
    citation="Todd et al. 2024, arXiv 2310.15213", run=run_function_vector, uses=(FV_PASS,), causal=fv_check,
    default=False))
IN_CONTEXT = register(Detector(
    name="in_context", stage="LR", method="direct logit attribution + zero ablation",
    summary="a head whose last-token output writes the label the in-context mapping assigns (foo/bar classification)",
    citation="Yu & Ananiadou 2024, arXiv 2402.02872", run=run_in_context, causal=ic_check, default=False))
