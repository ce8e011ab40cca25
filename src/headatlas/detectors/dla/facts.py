"""Subject, relation and mixed heads of factual recall (Chughtai, Cooney, Nanda 2024, "Summing up the
facts: additive mechanisms behind factual recall in LLMs", arXiv 2402.07321; survey §4.9, §6.1).

Data: ``tasks.facts`` (authored triples in six relations: capital, language, landmark city, sport,
currency, continent). Only facts the model gets right are used: the attribute's first token must
rank first among the relation's distinct attribute tokens at the prompt's last position (a
multiple-choice accuracy over the relation's answers); the result reports how many were kept, and
their top-1 accuracy over the whole vocabulary. A seeded third of the kept facts of each relation is
held out for the causal check.

Measure (one shared pass, :data:`FACTS_PASS`; :func:`headatlas.methods.dla.dla_by_source`): each head's
direct logit attribution (DLA) at the last position, split by source position, to the attribute's
logit and to ``K`` matched control attributes:

- ``subject effect`` per prompt = the DLA moved from the **subject's tokens** to ``logit(attribute)``
  minus its mean to ``K`` *same-relation* controls (other subjects' answers to the same question:
  the part of the subject's contribution that singles out this subject's answer);
- ``relation effect`` per prompt = the DLA moved from the **relation tokens** (every non-BOS,
  non-subject token of the prompt) to ``logit(attribute)`` minus its mean to ``K`` *other-relation*
  controls (answers of another relation: the part that singles out the right kind of answer).

Null: sign flips per prompt (under a head's null its contrast is exchangeable between the attribute
and a control drawn from the same pool: every attribute is also some prompt's control), ``stats.N_PERM``
draws, add-one p, BH q over all heads. Effects are means over prompts in logits; ``MIN_DLA`` = 0.1
logits (as the mover detector: a tenth of a logit, ~10% odds, is the smallest direct push worth a label
in a 100M-parameter model).

Labels (a partition):

- ``mixed`` (EP): both effects pass (each q <= 0.05 and >= ``MIN_DLA``): an intersection-union test,
  p = max(p_subject, p_relation), BH over heads; the score is min(subject effect, relation effect);
- ``subject`` (ICI): the subject effect passes and the head is not mixed;
- ``relation`` (ICI): the relation effect passes and the head is not mixed.

Caveat (documented, as in the paper): relation tokens after the subject (``" is"`` in
``"The capital city of France is"``) can carry subject information in their residual; "from relation
tokens" is a statement about source positions, not about the information they carry.

The raw split (no controls) is in extras: ``dla_subject``, ``dla_relation``, ``dla_bos`` (the DLA to
``logit(attribute)`` moved from the subject's tokens, the relation tokens and BOS; they sum to
``dla_total``). Causal check: mean-ablating the labelled heads lowers log p(attribute) on the held-out
facts more than layer-matched random head sets.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ... import stats
from ...atlas.records import CausalCheck
from ...errors import InputError
from ...methods.dla import dla_by_source
from ...tasks.facts import FactBatch, controls, fact_batch, split
from ..base import NOT_FOUND, Detector, DetectorResult, LabelRule, ScanConfig, SharedPass, register
from ..causal import ablation_check

if TYPE_CHECKING:
    from ...models import LoadedModel

MIN_DLA = 0.1
K_CONTROLS = 4
MIN_PROMPTS = 12
CITATION = "Chughtai, Cooney, Nanda 2024, arXiv 2402.07321"
SUBJECT_RULE = LabelRule(statistic="DLA from the subject's tokens to logit(attribute) minus to same-relation control "
                                   "attributes (mean over facts, logits); not mixed", min_effect=MIN_DLA,
                         extra_min=(("not_mixed", 1.0),))
RELATION_RULE = LabelRule(statistic="DLA from the relation tokens to logit(attribute) minus to other-relation control "
                                    "attributes (mean over facts, logits); not mixed", min_effect=MIN_DLA,
                          extra_min=(("not_mixed", 1.0),))
MIXED_RULE = LabelRule(statistic="min(subject effect, relation effect) (logits); intersection-union test, "
                                 "p = max(p_subject, p_relation)", min_effect=MIN_DLA)


@dataclass
class FactsPass:
    """What the three detectors share: per-prompt maps ``[L, B, H]`` on the detection facts and bookkeeping."""

    subject: np.ndarray          # subject effect per prompt
    relation: np.ndarray         # relation effect per prompt
    raw: dict[str, np.ndarray]   # dla_subject / dla_relation / dla_bos / dla_total per prompt (attribute only)
    batch: FactBatch             # all facts
    correct: list[int]           # rows the model gets right
    detect_rows: list[int]
    eval_rows: list[int]
    info: dict[str, Any]


def last_logits(m: LoadedModel, batch: FactBatch, batch_size: int) -> torch.Tensor:
    """``[B, vocab]`` logits at each prompt's last position (float32, CPU)."""
    out = []
    for s in range(0, batch.ids.shape[0], batch_size):
        e = min(s + batch_size, batch.ids.shape[0])
        keep = int(batch.ids.shape[1] - batch.last[s:e].min())          # unembed only the positions needed
        with torch.no_grad():
            lg = m.model(input_ids=batch.ids[s:e].to(m.device), use_cache=False, logits_to_keep=keep).logits
        pos = batch.last[s:e] - (batch.ids.shape[1] - keep)
        out.append(lg[torch.arange(e - s), pos.to(lg.device)].float().cpu())
    return torch.cat(out)


def correctness(batch: FactBatch, logits: torch.Tensor) -> tuple[list[int], dict[str, Any]]:
    """Rows whose attribute ranks first among its relation's attribute tokens, and accuracies per relation."""
    ok, per = [], {}
    top1 = logits.argmax(-1)
    for i, (a, r) in enumerate(zip(batch.attribute.tolist(), batch.relation)):
        cand = batch.candidates[r]
        if cand[int(logits[i, cand].argmax())] == a:
            ok.append(i)
        d = per.setdefault(r, {"n": 0, "choice_correct": 0, "top1_correct": 0})
        d["n"] += 1
        d["choice_correct"] += int(cand[int(logits[i, cand].argmax())] == a)
        d["top1_correct"] += int(int(top1[i]) == a)
    return ok, per


def split_maps(m: LoadedModel, batch: FactBatch, same: torch.Tensor, other: torch.Tensor, batch_size: int
               ) -> dict[str, np.ndarray]:
    """Per prompt ``[L, B, H]``: the subject and relation effects and the raw split of the attribute's DLA."""
    k = same.shape[1]
    targets = {"a": batch.attribute}
    targets.update({f"s{j}": same[:, j] for j in range(k)})
    targets.update({f"o{j}": other[:, j] for j in range(k)})
    d = dla_by_source(m, batch.ids, batch.last, targets, batch_size=batch_size)
    a = d.values["a"]                                                           # [B, L, H, S]
    ctrl_same = sum(d.values[f"s{j}"] for j in range(k)) / k
    ctrl_other = sum(d.values[f"o{j}"] for j in range(k)) / k
    sm = batch.subject_mask[:, None, None, :].float()
    rm = batch.relation_mask[:, None, None, :].float()
    bos = torch.zeros_like(batch.subject_mask)
    bos[:, 0] = ~(batch.subject_mask[:, 0] | batch.relation_mask[:, 0])
    bm = bos[:, None, None, :].float()

    def lbh(x: torch.Tensor) -> np.ndarray:
        return x.permute(1, 0, 2).double().numpy()

    return {"subject": lbh(((a - ctrl_same) * sm).sum(-1)), "relation": lbh(((a - ctrl_other) * rm).sum(-1)),
            "dla_subject": lbh((a * sm).sum(-1)), "dla_relation": lbh((a * rm).sum(-1)),
            "dla_bos": lbh((a * bm).sum(-1)), "dla_total": lbh(a.sum(-1))}


def compute_facts(m: LoadedModel, cfg: ScanConfig) -> FactsPass:
    batch = fact_batch(m.tokenizer)
    if batch.ids.shape[1] > m.info.n_ctx:
        raise InputError(f"fact prompts need {batch.ids.shape[1]} positions; the model has {m.info.n_ctx}")
    bs = max(cfg.batch_size, 16)
    logits = last_logits(m, batch, bs)
    correct, per = correctness(batch, logits)
    sub = batch.subset(correct) if correct else batch
    det_local, ev_local = split(sub, seed=cfg.seed) if correct else ([], [])
    det_rows = [correct[i] for i in det_local]
    ev_rows = [correct[i] for i in ev_local]
    info = {"n_facts": int(batch.ids.shape[0]), "n_correct": len(correct), "per_relation": per,
            "multi_token_attributes": batch.multi_token, "n_detect": len(det_rows), "n_eval": len(ev_rows)}
    if len(det_rows) < MIN_PROMPTS:
        raise InputError(f"{NOT_FOUND}the model gets {len(correct)}/{batch.ids.shape[0]} authored facts right "
                         f"(attribute ranked first among its relation's answers), leaving {len(det_rows)} for detection "
                         f"(need >= {MIN_PROMPTS})")
    det = batch.subset(det_rows)
    same, other = controls(det, K_CONTROLS, seed=cfg.seed)
    maps = split_maps(m, det, same, other, cfg.batch_size)
    raw = {k: v for k, v in maps.items() if k.startswith("dla_")}
    return FactsPass(subject=maps["subject"], relation=maps["relation"], raw=raw, batch=batch, correct=correct,
                     detect_rows=det_rows, eval_rows=ev_rows, info=info)


FACTS_PASS: SharedPass[FactsPass] = SharedPass(
    name="facts_dla", compute=compute_facts,
    key=lambda m, cfg: (cfg.seed, cfg.batch_size, str(m.dtype), str(m.device)))


def _draws(per: np.ndarray, seed: int, n_perm: int) -> np.ndarray:
    # one sign per prompt, the same sequence for both effects (same salt, same B): the draws stay jointly consistent
    return stats.signflip_null(per, n_perm, rng=stats.rng_for(seed, "facts:signflip"))


def _p(per: np.ndarray, draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    eff = stats.mean_over_prompts(per)
    return eff, stats.permutation_p(eff, draws, "greater")


def mixed_mask(fp: FactsPass, seed: int, n_perm: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mask, p_mixed, q_mixed)``: heads whose subject and relation effects both pass (IUT)."""
    e_s, p_s = _p(fp.subject, _draws(fp.subject, seed, n_perm))
    e_r, p_r = _p(fp.relation, _draws(fp.relation, seed, n_perm))
    p = np.fmax(p_s, p_r)
    q = stats.bh_q(p)
    eff = np.fmin(e_s, e_r)
    mask = stats.apply_rule(MIXED_RULE, effect=eff, q=q, scores=eff)
    return mask, p, q


def _extras(fp: FactsPass, not_mixed: np.ndarray) -> dict[str, np.ndarray]:
    ex = {k: stats.mean_over_prompts(v) for k, v in fp.raw.items()}
    ex["subject_effect"] = stats.mean_over_prompts(fp.subject)
    ex["relation_effect"] = stats.mean_over_prompts(fp.relation)
    ex["not_mixed"] = not_mixed.astype(float)
    return ex


def _details(fp: FactsPass) -> dict[str, Any]:
    return {**fp.info, "k_controls": K_CONTROLS, "min_dla": MIN_DLA,
            "eval_facts": [list(fp.batch.facts[i]) for i in fp.eval_rows]}


def _data(fp: FactsPass, seed: int) -> str:
    return (f"{len(fp.detect_rows)} authored facts the model gets right ({fp.info['n_correct']}/{fp.info['n_facts']} "
            f"correct; {len(fp.eval_rows)} more held out, seed {seed}), 6 relations; last position")


NULL = ("sign flips of the per-fact contrasts (attribute vs matched control attributes drawn from the same pool; "
        "{n} draws)")


def facts_result(name: str, fp: FactsPass, *, seed: int, n_perm: int = stats.N_PERM) -> DetectorResult:
    """The ``subject``, ``relation`` or ``mixed`` result from the shared pass."""
    mask, p_mix, q_mix = mixed_mask(fp, seed, n_perm)
    extras = _extras(fp, ~mask)
    if name in ("subject", "relation"):
        per = fp.subject if name == "subject" else fp.relation
        rule = SUBJECT_RULE if name == "subject" else RELATION_RULE
        draws = _draws(per, seed, n_perm)
        scores = stats.mean_over_prompts(per)
        tested = stats.evaluate(per, draws, rule, seed=seed, salt=f"facts:{name}", scores=scores, extras=extras)
        return stats.result(name, tested, scores=scores, rule=rule, data_description=_data(fp, seed),
                            null_description=NULL.format(n=tested.n_null), n_prompts=per.shape[1], seed=seed,
                            extras=extras, details=_details(fp))
    if name != "mixed":
        raise ValueError(f"unknown facts detector {name!r}")
    both = np.stack([fp.subject, fp.relation], axis=-1)                        # [L, B, H, 2]

    def min_of_means(x: np.ndarray) -> np.ndarray:
        return np.nanmin(np.nanmean(x, axis=1), axis=-1)

    # joint sign flips (one sign per prompt for both parts) give the null's centre/spread and the bootstrap CI;
    # the p-value is the intersection-union max(p_subject, p_relation) (valid when either part is null)
    s_draws = _draws(fp.subject, seed, n_perm)
    r_draws = _draws(fp.relation, seed, n_perm)
    draws = np.fmin(s_draws, r_draws)
    scores = min_of_means(both)
    t = stats.evaluate(both, draws, MIXED_RULE, seed=seed, salt="facts:mixed", scores=scores, statistic=min_of_means)
    labelled = stats._ranked(mask & (t.null_spread > 0), q_mix, t.effect)
    t = dataclasses.replace(t, p_value=p_mix, q_value=q_mix, labelled=labelled)
    return stats.result("mixed", t, scores=scores, rule=MIXED_RULE, data_description=_data(fp, seed),
                        null_description=("intersection-union: p = max(p_subject, p_relation), each from "
                                          + NULL.format(n=t.n_null)), n_prompts=both.shape[1], seed=seed,
                        extras=extras, details=_details(fp))


def _run(name: str):
    def run(m: LoadedModel, cfg: ScanConfig) -> DetectorResult:
        fp = cfg.shared(FACTS_PASS, m)
        cfg.tick(1, 1)
        return facts_result(name, fp, seed=cfg.seed)
    return run


def facts_check(m: LoadedModel, cfg: ScanConfig, result: DetectorResult, *, kind: str = "mean") -> CausalCheck:
    """Ablate the labelled heads: does log p(attribute) on the held-out facts fall more than for random heads?"""
    fp = cfg.shared(FACTS_PASS, m)
    ev = fp.batch.subset(fp.eval_rows)
    keep = int(ev.ids.shape[1] - ev.last.min())                              # unembed only the positions needed
    last, attr = ev.last - (ev.ids.shape[1] - keep), ev.attribute

    def logp_attr(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        r = rows.cpu()
        lg = logits[torch.arange(len(r)), last[r].to(logits.device)].float()
        return torch.log_softmax(lg, -1).gather(1, attr[r].to(lg.device)[:, None])[:, 0]

    return ablation_check(m, result.labelled, ev.ids, logp_attr, metric="log p(attribute)", expected="decrease",
                          seed=cfg.seed, kind=kind, batch_size=max(cfg.batch_size, 16), keep_last=keep,
                          description=(f"log p of the attribute's first token at the last position of {len(fp.eval_rows)} "
                                       f"held-out facts the model gets right (seed {cfg.seed}); {kind} ablation over those "
                                       "prompts per position (right-padded prompts of unequal length: positions past a "
                                       "prompt's end are padding)"))


def _example(m: LoadedModel, cfg: ScanConfig) -> torch.Tensor:
    b = fact_batch(m.tokenizer)
    return b.ids[0, :int(b.lengths[0])]


SUBJECT = register(Detector(
    name="subject", evidence="dla", metric="attribute log-prob", stage="ICI", method="direct logit attribution split by source position (facts)",
    summary="at the last token, the head moves the subject's information and it raises that subject's attribute directly",
    citation=CITATION, run=_run("subject"), uses=(FACTS_PASS,), causal=facts_check, example=_example, default=False))
RELATION = register(Detector(
    name="relation", evidence="dla", metric="attribute log-prob", stage="ICI", method="direct logit attribution split by source position (facts)",
    summary="at the last token, the head moves the relation tokens' information and raises answers of the right kind",
    citation=CITATION, run=_run("relation"), uses=(FACTS_PASS,), causal=facts_check, example=_example, default=False))
MIXED = register(Detector(
    name="mixed", evidence="dla", metric="attribute log-prob", stage="EP", method="direct logit attribution split by source position (facts)",
    summary="the head's direct push to the attribute comes from both the subject and the relation tokens (additive)",
    citation=CITATION, run=_run("mixed"), uses=(FACTS_PASS,), causal=facts_check, example=_example, default=False))
