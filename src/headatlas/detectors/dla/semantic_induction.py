"""Semantic induction heads (Ren et al. 2024, "Identifying semantic induction heads to understand
in-context learning", arXiv 2402.13055): heads that, attending back to the *head* word of a semantic
relation, raise the logit of its *tail* (wheel -> car, Paris -> France, hot -> cold).

Data: ``tasks.relations`` (authored pairs in eight relations: part-of, capital-of, hypernym, made-of,
antonym, used-for, lives-in, colour-of), each head word placed in two relation-neutral carriers
(``"We talked about the wheel, and then about the"``); two thirds of each relation's pairs are used
for detection (both carriers), a seeded third is held out for the causal check.

Score (the relation index, per prompt; :func:`headatlas.methods.dla.dla_by_source`): the part of the
head's direct logit attribution at the last position that it moves **from the head word's position**,
on ``logit(tail)`` minus its mean on ``K`` control tails (tails of other pairs of the same relation).
Mean over prompts, in logits; per-relation means of the top five heads and of every labelled head
are in ``details["top_heads"]``. Null: sign flips per prompt (tail and controls come from one pool: every tail
is some prompt's control), ``stats.N_PERM`` draws, add-one p, BH q. Label: q <= 0.05 and effect >=
``MIN_DLA`` (0.1 logits, as for the mover and fact detectors).

Behaviour check before detection: if the model itself does not prefer the tail over the controls
(mean logit(tail) - logit(controls) at the query <= 0 over the detection prompts) the head type is
reported "not found". Causal check: mean-ablating the labelled heads lowers log p(tail) - mean log
p(control tails) on the held-out pairs more than layer-matched random head sets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ... import stats
from ...atlas.records import CausalCheck
from ...errors import InputError
from ...methods.dla import dla_by_source
from ...tasks.relations import RelationBatch, relation_batch, split_pairs, TEMPLATES
from ..base import NOT_FOUND, Detector, DetectorResult, LabelRule, ScanConfig, register
from ..causal import ablation_check

if TYPE_CHECKING:
    from ...models import LoadedModel

MIN_DLA = 0.1
K_CONTROLS = 4
RULE = LabelRule(statistic="DLA moved from the relation's head word to logit(tail) minus to same-relation control "
                           "tails (mean over prompts, logits)", min_effect=MIN_DLA)


def batches(m: LoadedModel, rows: list[tuple[str, int]], seed: int) -> list[RelationBatch]:
    out = []
    for t in range(len(TEMPLATES)):
        b = relation_batch(m.tokenizer, template=t, k=K_CONTROLS, seed=seed + t, rows=rows)
        if b.ids.shape[1] > m.info.n_ctx:
            raise InputError(f"relation prompts need {b.ids.shape[1]} positions; the model has {m.info.n_ctx}")
        out.append(b)
    return out


def measure(m: LoadedModel, b: RelationBatch, batch_size: int) -> dict[str, np.ndarray]:
    """Per prompt ``[L, B, H]``: the relation index, the head's whole contrast and its attention to the head word;
    ``[B]``: the model's own logit(tail) - mean logit(controls) at the query."""
    k = b.controls.shape[1]
    targets = {"t": b.tail, **{f"c{j}": b.controls[:, j] for j in range(k)}}
    d = dla_by_source(m, b.ids, b.query, targets, batch_size=batch_size)
    contrast = d.values["t"] - sum(d.values[f"c{j}"] for j in range(k)) / k      # [B, L, H, S]
    rows = torch.arange(b.ids.shape[0])
    at_head = contrast[rows, :, :, b.head_pos]                                      # [B, L, H]
    keep = int(b.ids.shape[1] - b.query.min())                                      # unembed only what is needed
    with torch.no_grad():
        lg = m.model(input_ids=b.ids.to(m.device), use_cache=False, logits_to_keep=keep).logits
    lg = lg[rows, (b.query - (b.ids.shape[1] - keep)).to(lg.device)].float().cpu()
    model_contrast = lg.gather(1, b.tail[:, None])[:, 0] - lg.gather(1, b.controls).mean(1)
    return {"index": at_head.permute(1, 0, 2).double().numpy(),
            "total": contrast.sum(-1).permute(1, 0, 2).double().numpy(),
            "attention": d.attention[rows, :, :, b.head_pos].permute(1, 0, 2).double().numpy(),
            "model": model_contrast.double().numpy()}


def semantic_result(per: dict[str, np.ndarray], relations: list[str], *, seed: int, data: str,
                    details: dict | None = None, n_perm: int = stats.N_PERM) -> DetectorResult:
    x = per["index"]
    draws = stats.signflip_null(x, n_perm, rng=stats.rng_for(seed, "semantic_induction:signflip"))
    scores = stats.mean_over_prompts(x)
    extras = {"head_word_attention": stats.mean_over_prompts(per["attention"]),
              "total_contrast": stats.mean_over_prompts(per["total"])}
    tested = stats.evaluate(x, draws, RULE, seed=seed, salt="semantic_induction", scores=scores, extras=extras)
    rel = np.array(relations)
    H = scores.shape[1]
    top = list(dict.fromkeys([int(i) for i in np.argsort(-scores, axis=None)[:5]]
                             + [a * H + b for a, b in tested.labelled]))     # the top five and every label
    det = dict(details or {})
    det["top_heads"] = [{"head": f"L{i // H}H{i % H}", "index": float(scores.flat[i]),
                         "by_relation": {r: float(x[i // H, rel == r, i % H].mean()) for r in dict.fromkeys(relations)}}
                        for i in top]
    det["model_tail_minus_controls"] = float(per["model"].mean())
    return stats.result("semantic_induction", tested, scores=scores, rule=RULE, data_description=data,
                        null_description=(f"sign flips of the per-prompt contrasts (tail vs same-relation control "
                                          f"tails; {tested.n_null} draws)"),
                        n_prompts=x.shape[1], seed=seed, extras=extras, details=det)


def run(m: LoadedModel, cfg: ScanConfig) -> DetectorResult:
    det_rows, _ = split_pairs(m.tokenizer, seed=cfg.seed)
    bs = batches(m, det_rows, cfg.seed)
    parts = [measure(m, b, cfg.batch_size) for b in bs]
    cfg.tick(1, 1)
    per = {k: np.concatenate([p[k] for p in parts], axis=1 if k != "model" else 0) for k in parts[0]}
    relations = [r for b in bs for r in b.relation]
    model = float(per["model"].mean())
    if model <= 0:
        raise InputError(f"{NOT_FOUND}the model does not prefer the tail over same-relation control tails after the "
                         f"head word (mean logit difference {model:.3f} over {per['model'].size} prompts)")
    n = per["index"].shape[1]
    return semantic_result(per, relations, seed=cfg.seed,
                           data=(f"{n} prompts: {len(det_rows)} (head, tail) pairs in {len(set(relations))} "
                                 f"relations x {len(bs)} carriers (seed {cfg.seed}); {bs[0].multi_token} pairs have a "
                                 "multi-token head (read at its last token) or tail (scored by its first token)"),
                           details={"relations": sorted(set(relations)), "n_pairs": len(det_rows)})


def semantic_check(m: LoadedModel, cfg: ScanConfig, result: DetectorResult, *, kind: str = "mean") -> CausalCheck:
    """Ablate the labelled heads on the held-out pairs: does log p(tail) - mean log p(control tails) fall?"""
    _, ev_rows = split_pairs(m.tokenizer, seed=cfg.seed)
    bs = batches(m, ev_rows, cfg.seed + 1000)
    b = bs[0]        # one carrier (its prompts differ only in the head word): mean ablation per position
    keep = int(b.ids.shape[1] - b.query.min())
    last = b.query - (b.ids.shape[1] - keep)

    def contrast(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        r = rows.cpu()
        lp = torch.log_softmax(logits[torch.arange(len(r)), last[r].to(logits.device)].float(), -1)
        return (lp.gather(1, b.tail[r].to(lp.device)[:, None])[:, 0]
                - lp.gather(1, b.controls[r].to(lp.device)).mean(1))

    return ablation_check(m, result.labelled, b.ids, contrast, metric="log p(tail) - mean log p(control tails)",
                          expected="decrease", seed=cfg.seed, kind=kind, batch_size=max(cfg.batch_size, 16), keep_last=keep,
                          description=(f"{b.ids.shape[0]} held-out (head, tail) pairs in carrier {TEMPLATES[0]!r}, "
                                       f"controls = {K_CONTROLS} tails of the same relation (seed {cfg.seed + 1000}); "
                                       f"{kind} ablation per position"))


def _example(m: LoadedModel, cfg: ScanConfig) -> torch.Tensor:
    return relation_batch(m.tokenizer, template=0, k=1, seed=cfg.seed).ids[0]


DETECTOR = register(Detector(
    name="semantic_induction", evidence="dla", metric="relation tail log-prob", stage="ICI", method="direct logit attribution from the head word (relation index)",
    summary="attending back to a relation's head word (wheel, Paris, hot), the head raises its tail (car, France, cold)",
    citation="Ren et al. 2024, arXiv 2402.13055", run=run, causal=semantic_check, example=_example, default=False,
))
