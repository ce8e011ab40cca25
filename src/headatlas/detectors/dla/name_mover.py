"""Name mover heads (detector ``name_mover``; Wang et al. 2022, arXiv 2211.00593): on IOI prompts the final position (END)
attends to the indirect object (IO) and the head's output raises logit(IO) - logit(S) directly.

Data: ``tasks.ioi.ioi_batch`` (two templates, ABBA/BABA balanced) and their ABC corrupted twins.

Per prompt and head (one forward per batch, :func:`headatlas.methods.dla.dla_by_source`):

- the direct logit attribution (DLA) at END to ``logit(IO) - logit(S)`` through the linearised final
  norm, split by source position (``extras["dla_from_io"]``, ``extras["dla_from_s"]``: the parts moved
  from the IO token and from both S tokens);
- the attention from END to IO and to S1, the other name of the first clause (its matched control:
  ABBA/BABA balance puts it at IO's positions as often as IO).

Label (the rule): the DLA effect (mean over prompts) >= ``MIN_DLA`` logits with BH q <= 0.05 under a
sign-flip null (swapping IO and S flips the contrast's sign), **and** ``attends_io``: END's attention to
IO exceeds its attention to S1 by >= ``MIN_ATTN`` with BH q <= 0.05 under its own sign-flip null.
Heads that attend to IO that way but write *against* it (effect <= -``MIN_DLA``, per-head p <= 0.05 in
the ``less`` direction; BH ``q_less`` given too) are listed in ``details["negative"]`` with their numbers
(negative name movers: the ``negative_name_mover`` detector, :mod:`headatlas.detectors.dla.negative_name_mover`, tests them
with their own rule and BH q), never dropped silently; heads with a significant positive direct effect that do
not attend to IO (e.g. ones that move S and write against it) are listed in
``details["direct_without_io_attention"]`` with the part of their DLA moved from IO and from S. ``details["patching"]``: agreement with :func:`headatlas.methods.patching.patching_map`
on the same prompts (ABC -> clean, denoise; attribution patching unless ``options["mover_patching"] =
"exact"``): Spearman correlation of the DLA effect with the patching effect, overlap of the top heads,
and each label's patching effect and rank. Causal check: mean-ablating the labelled heads lowers the
IOI logit difference on held-out prompts (seed + 1000) more than layer-matched random head sets.

The IOI forward passes (:data:`IOI_PASS`, shared pass ``ioi_dla``) are shared with ``negative_name_mover``.
Version 3: renamed from ``mover`` (same rule and numbers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ... import stats
from ...atlas.records import CausalCheck
from ...errors import InputError
from ...methods.dla import dla_by_source
from ...tasks.ioi import TEMPLATES, IOIBatch, ioi_batch
from ..base import Detector, DetectorResult, LabelRule, ScanConfig, SharedPass, register
from ..causal import ablation_check

if TYPE_CHECKING:
    from ...models import LoadedModel

MIN_DLA = 0.1      # logits of logit(IO) - logit(S)
MIN_ATTN = 0.05    # attention END -> IO above END -> S1
N_TEMPLATES = 2
EVAL_SEED_OFFSET = 1000
TOP = 10
RULE = LabelRule(statistic="direct logit attribution at END to logit(IO) - logit(S) (mean over prompts)",
                 direction="greater", min_effect=MIN_DLA, extra_min=(("attends_io", 1.0),))


def _n_prompts(cfg: ScanConfig) -> int:
    n = cfg.n_prompts or (16 if cfg.quick else 32)
    if n < 12:
        raise InputError("the IOI detectors (name_mover, negative_name_mover) need at least 12 prompts (the resampling unit of its sign-flip null)")
    return n


def ioi_batches(m: LoadedModel, n: int, seed: int, n_templates: int = N_TEMPLATES) -> list[IOIBatch]:
    """Up to ``n_templates`` batches of ``n // n_templates`` prompts from the first templates that tokenize evenly."""
    per = max(2, n // n_templates)
    out = []
    for t in range(len(TEMPLATES)):
        if len(out) == n_templates:
            break
        try:
            b = ioi_batch(m.tokenizer, per, seed=seed + t, template=t)
        except InputError:
            continue   # this template does not tokenize evenly here: try the next one
        if b.clean_ids.shape[1] > m.info.n_ctx:
            raise InputError(f"IOI prompts need {b.clean_ids.shape[1]} positions; the model has {m.info.n_ctx}")
        out.append(b)
    if not out:
        ioi_batch(m.tokenizer, per, seed=seed, template=0)   # its own error says why (e.g. too few names)
        raise InputError("no IOI template tokenizes to equal lengths with this tokenizer")
    return out


def measure(m: LoadedModel, batch: IOIBatch, batch_size: int) -> dict[str, np.ndarray]:
    """Per prompt ``[L, B, H]``: DLA to IO - S (total, from IO, from S1+S2) and attention END -> IO, S1, S2."""
    n = batch.clean_ids.shape[0]
    d = dla_by_source(m, batch.clean_ids, batch.end_pos, {"io": batch.io_ids, "s": batch.s_ids}, batch_size=batch_size)
    diff = d.values["io"] - d.values["s"]                                    # [B, L, H, S]
    rows = torch.arange(n)

    def at(x: torch.Tensor, pos: torch.Tensor) -> np.ndarray:
        return x[rows, :, :, pos].permute(1, 0, 2).double().numpy()          # [L, B, H]

    return {"dla": diff.sum(-1).permute(1, 0, 2).double().numpy(), "dla_io": at(diff, batch.io_pos),
            "dla_s": at(diff, batch.s1_pos) + at(diff, batch.s2_pos), "attn_io": at(d.attention, batch.io_pos),
            "attn_s1": at(d.attention, batch.s1_pos), "attn_s2": at(d.attention, batch.s2_pos)}


def _ioi_pass(m: LoadedModel, cfg: ScanConfig) -> tuple[list[IOIBatch], dict[str, np.ndarray]]:
    """The IOI batches of this scan and their per-prompt DLA / attention arrays ``[L, B, H]`` (:func:`measure`)."""
    batches = ioi_batches(m, _n_prompts(cfg), cfg.seed)
    parts = []
    for i, b in enumerate(batches):
        parts.append(measure(m, b, cfg.batch_size))
        cfg.tick(i + 1, len(batches) + 1)
    return batches, {k: np.concatenate([p[k] for p in parts], axis=1) for k in parts[0]}


IOI_PASS: SharedPass[tuple[list[IOIBatch], dict[str, np.ndarray]]] = SharedPass(
    "ioi_dla", _ioi_pass, lambda m, cfg: (cfg.seed, _n_prompts(cfg), cfg.batch_size))


def attends_io(per: dict[str, np.ndarray], seed: int, n_perm: int = stats.N_PERM) -> dict[str, np.ndarray]:
    """``attends_io`` (1.0 / 0.0) and the attention numbers behind it, ``[L, H]`` each: END's attention to IO
    exceeds its attention to S1 by >= ``MIN_ATTN`` with BH q <= 0.05 under a sign-flip null."""
    attn_diff = per["attn_io"] - per["attn_s1"]
    a_draws = stats.signflip_null(attn_diff, n_perm, rng=stats.rng_for(seed, "mover:attention"))
    a_eff = attn_diff.mean(1)
    a_q = stats.bh_q(stats.permutation_p(a_eff, a_draws, "greater"))
    attends = (a_q <= RULE.fdr) & (a_eff >= MIN_ATTN) & (np.nanstd(a_draws, axis=0) > 0)
    return {"attends_io": attends.astype(float), "io_attention": per["attn_io"].mean(1),
            "io_attention_excess": a_eff, "io_attention_q": a_q, "attn_s": (per["attn_s1"] + per["attn_s2"]).mean(1),
            "dla_from_io": per["dla_io"].mean(1), "dla_from_s": per["dla_s"].mean(1)}


def mover_result(per: dict[str, np.ndarray], *, seed: int, data_description: str,
                 details: dict[str, Any] | None = None, patch_effect: np.ndarray | None = None,
                 n_perm: int = stats.N_PERM) -> DetectorResult:
    """The mover result from per-prompt arrays ``[L, B, H]`` (``dla``, ``dla_io``, ``dla_s``, ``attn_io``,
    ``attn_s1``, ``attn_s2``) and, optionally, a patching effect map ``[L, H]`` to compare with."""
    dla = per["dla"]
    extras = attends_io(per, seed, n_perm)
    attends = extras["attends_io"] > 0
    a_eff = extras["io_attention_excess"]
    draws = stats.signflip_null(dla, n_perm, rng=stats.rng_for(seed, "mover:signflip"))
    scores = dla.mean(1)
    tested = stats.evaluate(dla, draws, RULE, seed=seed, salt="mover", scores=scores, extras=extras)
    p_less = stats.permutation_p(tested.effect, draws, "less")
    q_less = stats.bh_q(p_less)
    # negative movers: attend to IO (as above) but write against it; a report, not a label (per-head p <= 0.05)
    negative_mask = attends & (p_less <= RULE.fdr) & (tested.effect <= -MIN_DLA)
    negative = sorted(zip(*np.nonzero(negative_mask)), key=lambda lh: float(tested.effect[lh]))
    direct = stats.apply_rule(LabelRule(statistic="", min_effect=MIN_DLA), effect=tested.effect, q=tested.q_value,
                              scores=scores) & ~attends

    def numbers(a: int, b: int) -> dict[str, Any]:
        return {"head": f"L{a}H{b}", "dla": float(tested.effect[a, b]), "p": float(tested.p_value[a, b]),
                "p_less": float(p_less[a, b]), "q_less": float(q_less[a, b]),
                "io_attention": float(extras["io_attention"][a, b]), "io_attention_excess": float(a_eff[a, b]),
                "s_attention": float(extras["attn_s"][a, b]), "dla_from_io": float(extras["dla_from_io"][a, b]),
                "dla_from_s": float(extras["dla_from_s"][a, b])}

    det = dict(details or {})
    det.update({"min_dla": MIN_DLA, "min_attention_excess": MIN_ATTN,
                "negative_rule": (f"attends_io and DLA <= -{MIN_DLA} with per-head sign-flip p_less <= {RULE.fdr} "
                                  "(q_less: BH over all heads, also given)"),
                "negative": [numbers(int(a), int(b)) for a, b in negative],
                "direct_without_io_attention": [numbers(int(a), int(b)) for a, b in
                                                sorted(zip(*np.nonzero(direct)), key=lambda lh: -float(tested.effect[lh]))],
                "attends_only": [[int(a), int(b)] for a, b in zip(*np.nonzero(attends))
                                 if (int(a), int(b)) not in set(tested.labelled) and not negative_mask[a, b]]})
    if patch_effect is not None:
        det["patching"] = dict(det.get("patching", {}), **agreement(tested.effect, patch_effect, tested.labelled))
    return stats.result(
        "name_mover", tested, scores=scores, rule=RULE, data_description=data_description,
        null_description=(f"sign flips of the per-prompt DLA contrasts (swapping IO and S flips logit(IO) - logit(S); "
                          f"{tested.n_null} draws); attention: END -> IO minus END -> S1, sign flips likewise"),
        n_prompts=dla.shape[1], seed=seed, extras=extras, details=det)


def agreement(effect: np.ndarray, patch: np.ndarray, labelled: list[tuple[int, int]]) -> dict[str, Any]:
    """Rank correlation and top-head overlap of a DLA effect map and a patching effect map ``[L, H]``."""
    from scipy.stats import spearmanr

    ok = np.isfinite(effect) & np.isfinite(patch)
    rho = float(spearmanr(effect[ok], patch[ok]).statistic) if ok.sum() > 2 else float("nan")
    order = np.argsort(-np.where(np.isfinite(patch), patch, -np.inf), axis=None)
    rank = {(int(i // patch.shape[1]), int(i % patch.shape[1])): r + 1 for r, i in enumerate(order)}
    top_p = {lh for lh, r in rank.items() if r <= TOP}
    e_order = np.argsort(-np.where(np.isfinite(effect), effect, -np.inf), axis=None)[:TOP]
    top_e = {(int(i // effect.shape[1]), int(i % effect.shape[1])) for i in e_order}
    return {"spearman_dla_vs_patching": rho, "top": TOP, "top_overlap": len(top_p & top_e),
            "top_patching": [[a, b, float(patch[a, b])] for a, b in sorted(top_p, key=lambda lh: rank[lh])],
            "labelled_patching": {f"L{a}H{b}": {"effect": float(patch[a, b]), "rank": rank[(a, b)]}
                                  for a, b in labelled}}


def _patching(m: LoadedModel, batches: list[IOIBatch], method: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Patching effect ``[L, H]`` (patched - corrupted, logits; prompt-weighted over the templates)."""
    from ...methods.patching import patching_map

    total, n, info = None, 0, []
    for b in batches:
        pm = patching_map(m, b.clean_ids.to(m.device), b.corrupted_ids.to(m.device), b.io_ids, b.s_ids, method=method)
        eff = (pm.values - pm.corrupted_metric) * b.clean_ids.shape[0]
        total = eff if total is None else total + eff
        n += b.clean_ids.shape[0]
        info.append({"template": b.template, "clean": pm.clean_metric, "corrupted": pm.corrupted_metric})
    return total / n, {"method": f"{method} patching (denoise: ABC twin with one head's clean z), metric "
                                 "logit(IO) - logit(S) at END, effect = patched - corrupted (logits)",
                       "baselines": info}


def run(m: LoadedModel, cfg: ScanConfig) -> DetectorResult:
    batches, per = cfg.shared(IOI_PASS, m)
    method = str(cfg.options.get("mover_patching", "attribution"))
    patch, pinfo = (None, {}) if method == "none" else _patching(m, batches, method)
    cfg.tick(len(batches) + 1, len(batches) + 1)
    used = [b.template for b in batches]
    return mover_result(per, seed=cfg.seed, patch_effect=patch, details={"templates": used, "patching": pinfo},
                        data_description=(f"{per['dla'].shape[1]} IOI prompts (seed {cfg.seed}) from {len(used)} "
                                          "templates (ABBA/BABA balanced); END = the final token"))


def ioi_check(m: LoadedModel, cfg: ScanConfig, result: DetectorResult, *, kind: str = "mean",
              expected: str = "decrease") -> CausalCheck:
    """Ablate the labelled heads: does the IOI logit difference fall (``expected="decrease"``; rise for
    negative name movers) more than for random heads?"""
    seed = cfg.seed + EVAL_SEED_OFFSET
    b = ioi_batches(m, 8 if cfg.quick else 16, seed, n_templates=1)[0]
    io, s = b.io_ids, b.s_ids

    def logit_diff(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        last = logits[:, -1]
        r = rows.cpu()
        return last.gather(1, io[r].to(last.device)[:, None])[:, 0] - last.gather(1, s[r].to(last.device)[:, None])[:, 0]

    return ablation_check(m, result.labelled, b.clean_ids, logit_diff, metric="IOI logit difference (IO - S)",
                          expected=expected, seed=cfg.seed, kind=kind, batch_size=cfg.batch_size,
                          description=(f"logit(IO) - logit(S) at END of {b.clean_ids.shape[0]} held-out IOI prompts "
                                       f"(seed {seed}, template {b.template!r}), {kind} ablation over those prompts "
                                       "per position"))


DETECTOR = register(Detector(
    name="name_mover", evidence="dla", metric="IOI logit difference", stage="ICI", method="direct logit attribution + attention (IOI)",
    summary="END attends to the indirect object and the head's output raises logit(IO) - logit(S) directly",
    citation="Wang et al. 2022, arXiv 2211.00593", run=run, causal=ioi_check, uses=(IOI_PASS,), version=3,
))
