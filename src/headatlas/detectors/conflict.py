"""Memory heads (KR) and context heads (ICI) under knowledge conflict (Jin et al. 2024, "Cutting off the
head ends the conflict", arXiv 2402.18154; the per-head DLA variant of Yu, Merullo & Pavlick 2023,
arXiv 2310.15910).

Data (``tasks/conflict.py``): authored facts; only those the model answers right closed book are kept
(top-1 next token = the attribute's first token; :func:`known_facts`). Conflict prompts put another fact's
attribute of the same relation in a context sentence ("Context: The capital city of France is Rome.
Q: What is the capital city of France? A: The capital city of France is"), in *pairs* that swap the two
answers' roles (each answer token is the memory answer in one prompt and the context answer in the
other).

Behaviour (``details["behaviour"]``): per prompt ``LD = logit(memory) - logit(context)`` at the last
token; the memory-answer rate (``LD > 0``), the context-answer rate, and the top-1 rates.

Score (one shared pass, :data:`CONFLICT_PASS`): per prompt, every head's direct logit attribution
(:func:`headatlas.methods.dla.dla_by_source`, final norm linearised at the real residual) to ``LD``.
``memory``: the mean over prompts of that contrast (significantly positive); ``context``: the mean of its
negative, ``logit(context) - logit(memory)`` (significantly positive).

Null (why it is valid): the null hypothesis is that a head's direct effect does not depend on which of
the two answers is the model's memory and which the context's, i.e. that the labels "memory" and
"context" are exchangeable for the head. Swapping the two labels of a prompt negates its contrast exactly
(``DLA(a) - DLA(b) -> DLA(b) - DLA(a)``), so under the null each prompt's contrast is as likely with
either sign: the null distribution of the mean is that of random sign flips of the per-prompt contrasts
(:func:`headatlas.detectors.causal.effect_map_result`, ``stats.N_PERM`` draws, add-one p, BH q over all
heads). The paired design keeps heads with a fixed preference for some answer tokens (frequency priors)
from looking like memory heads: their contributions cancel within a pair, and their spread widens the null.

Label: q <= 0.05 and effect >= ``MIN_EFFECT`` logits (a head that moves ``LD`` by 0.1 logit carries a
few percent of the model's typical |LD| of 1-3 logits on these prompts).

Causal check: mean ablation (over the held-out prompts, per position) of the labelled set and 20
layer-matched random sets on held-out conflict pairs (another seed: another matching of the same known
facts, so other counterfactuals) -- removing memory heads should lower ``LD`` (``expected="decrease"``),
removing context heads should raise it. The memory-answer rate before and after ablation (and the random
sets' median) goes into the check's ``note`` and ``details["causal_rates"]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

from .. import stats
from ..atlas.records import CausalCheck
from ..errors import InputError
from ..instrument import HeadEdit
from ..methods.dla import dla_by_source
from ..tasks.conflict import ConflictBatch, Fact, all_facts, closed_book_ids, conflict_batch
from ..tasks.text import check_english
from .base import NOT_FOUND, Detector, DetectorResult, LabelRule, ScanConfig, SharedPass, register
from .causal import _edits, _position_means, _run_edits, effect_map_result, matched_random_sets

if TYPE_CHECKING:
    from ..models import LoadedModel

MIN_EFFECT = 0.1          # logits of logit(memory) - logit(context) moved by one head
MIN_PAIRS = 8             # fewer conflict pairs than this: the sign-flip null has too few units
EVAL_SEED_OFFSET = 1000   # causal-check prompts use another matching of the facts
N_RANDOM = 20
CAUSAL_PAIRS = 12         # held-out pairs of the causal check (22 ablated runs over them)
CAUSAL_PAIRS_QUICK = 6

MEMORY_RULE = LabelRule(statistic=("direct logit attribution at the last token to logit(memory answer) - "
                                   "logit(context answer) on knowledge-conflict prompts (mean over prompts)"),
                        direction="greater", min_effect=MIN_EFFECT)
CONTEXT_RULE = LabelRule(statistic=("direct logit attribution at the last token to logit(context answer) - "
                                    "logit(memory answer) on knowledge-conflict prompts (mean over prompts)"),
                         direction="greater", min_effect=MIN_EFFECT)


# ------------------------------------------------------------------------------------------ behaviour

def last_logits(m: LoadedModel, ids: torch.Tensor, last: torch.Tensor, batch_size: int,
                edits: list | None = None) -> torch.Tensor:
    """``[B, V]`` float32 logits at each prompt's ``last`` position (optionally with head edits)."""
    from ..instrument import instrumented

    out = []
    for s in range(0, ids.shape[0], batch_size):
        e = min(s + batch_size, ids.shape[0])
        n = int(last[s:e].max()) + 1
        keep = n - int(last[s:e].min())            # unembed only the positions that hold a last token
        with torch.no_grad(), instrumented(m, edits=edits or []):
            lg = m.model(input_ids=ids[s:e, :n].to(m.device), use_cache=False, logits_to_keep=keep).logits
        out.append(lg[torch.arange(e - s), (last[s:e] - (n - keep)).to(lg.device)].float().cpu())
    return torch.cat(out)


def keep_last(last: torch.Tensor, seq_len: int) -> int:
    """How many final positions of a ``[B, seq_len]`` batch must be unembedded to cover every ``last``."""
    return seq_len - int(last.min())


def known_facts(m: LoadedModel, facts: list[Fact], batch_size: int) -> tuple[list[Fact], dict[str, tuple[int, int]]]:
    """The facts the model answers right closed book (top-1 next token = the attribute's first token),
    and ``relation -> (kept, total)``."""
    ids, last = closed_book_ids(m.tokenizer, facts)
    if ids.shape[1] > m.info.n_ctx:
        raise InputError(f"closed-book prompts need {ids.shape[1]} positions; the model has {m.info.n_ctx}")
    top = last_logits(m, ids, last, batch_size).argmax(-1)
    kept = [f for f, t in zip(facts, top.tolist()) if t == f.token]
    counts: dict[str, tuple[int, int]] = {}
    for f in facts:
        k, n = counts.get(f.relation, (0, 0))
        counts[f.relation] = (k + (f in kept), n + 1)
    return kept, counts


def conflict_ld(batch: ConflictBatch) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Behaviour fn ``(logits [b, S, V], rows [b]) -> [b]``: logit(memory) - logit(context) at the last token."""
    S = batch.ids.shape[1]

    def fn(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        r = rows.cpu()   # logits hold the last logits.shape[1] positions of the padded batch
        pos = batch.last[r] - (S - logits.shape[1])
        lg = logits[torch.arange(len(r), device=logits.device), pos.to(logits.device)]
        return (lg.gather(1, batch.memory[r].to(lg.device)[:, None])
                - lg.gather(1, batch.context[r].to(lg.device)[:, None]))[:, 0]
    return fn


def behaviour(logits: torch.Tensor, batch: ConflictBatch) -> dict[str, float]:
    """Answer rates from last-token logits ``[B, V]``."""
    rows = torch.arange(logits.shape[0])
    ld = (logits[rows, batch.memory] - logits[rows, batch.context]).double()
    top = logits.argmax(-1)
    return {"memory_rate": float((ld > 0).double().mean()), "context_rate": float((ld < 0).double().mean()),
            "mean_logit_diff": float(ld.mean()), "top1_memory": float((top == batch.memory).double().mean()),
            "top1_context": float((top == batch.context).double().mean()), "n_prompts": int(len(rows))}


# ------------------------------------------------------------------------------------------ shared pass

@dataclass
class ConflictStats:
    batch: ConflictBatch
    kept: list[Fact]
    contrast: np.ndarray          # [L, B, H] DLA to logit(memory) - logit(context)
    attn_context: np.ndarray      # [L, B, H] last token's attention on the context answer's first token
    behaviour: dict[str, float]
    seed: int

    def describe(self) -> str:
        kept = ", ".join(f"{r} {k}/{n}" for r, (k, n) in self.batch.closed_book.items())
        b = self.behaviour
        return (f"{len(self.batch)} knowledge-conflict prompts ({len(self.batch) // 2} answer-swapped pairs, seed "
                f"{self.seed}) over facts the model answers right closed book ({kept}); model answers with the "
                f"memory answer on {b['memory_rate']:.2f} and the context answer on {b['context_rate']:.2f} of "
                f"prompts (mean logit(memory) - logit(context) {b['mean_logit_diff']:+.2f})")


def _max_pairs(cfg: ScanConfig) -> int | None:
    if cfg.n_prompts:
        return max(1, cfg.n_prompts // 2)
    return 12 if cfg.quick else None


def context_positions(batch: ConflictBatch) -> torch.Tensor:
    """``[B]`` the position of the context answer's first token (its first occurrence in the prompt)."""
    hits = batch.ids == batch.context[:, None]
    if not bool(hits.any(1).all()):
        raise InputError("a context answer's first token does not occur in its conflict prompt")
    return hits.float().argmax(1)


def compute_conflict(m: LoadedModel, cfg: ScanConfig) -> ConflictStats:
    tok = m.tokenizer
    check_english(tok)
    facts = all_facts(tok)
    kept, counts = known_facts(m, facts, cfg.batch_size)
    batch = conflict_batch(tok, kept, seed=cfg.seed, closed_book=counts, max_pairs=_max_pairs(cfg)) \
        if len(kept) >= 2 else None
    n_pairs = 0 if batch is None else len(batch) // 2
    if n_pairs < MIN_PAIRS:
        raise InputError(f"{NOT_FOUND}the model answers {len(kept)}/{len(facts)} authored facts right closed book "
                         f"(top-1 next token), giving {n_pairs} knowledge-conflict pairs; at least {MIN_PAIRS} "
                         "are needed")
    if batch.ids.shape[1] > m.info.n_ctx:
        raise InputError(f"conflict prompts need {batch.ids.shape[1]} positions; the model has {m.info.n_ctx}")
    d = dla_by_source(m, batch.ids, batch.last, {"memory": batch.memory, "context": batch.context},
                      batch_size=cfg.batch_size)
    contrast = (d.total("memory") - d.total("context")).permute(1, 0, 2).double().numpy()
    pos = context_positions(batch)
    attn = d.attention[torch.arange(len(batch)), :, :, pos].permute(1, 0, 2).double().numpy()
    beh = behaviour(last_logits(m, batch.ids, batch.last, cfg.batch_size), batch)
    return ConflictStats(batch=batch, kept=kept, contrast=contrast, attn_context=attn, behaviour=beh, seed=cfg.seed)


CONFLICT_PASS: SharedPass[ConflictStats] = SharedPass(
    name="conflict", compute=compute_conflict,
    key=lambda m, cfg: (cfg.seed, _max_pairs(cfg), cfg.batch_size, str(m.dtype), str(m.device)))


def _result(name: str, st: ConflictStats, per_prompt: np.ndarray, rule: LabelRule, cfg: ScanConfig) -> DetectorResult:
    extras = {"attn_context_answer": st.attn_context.mean(1),
              "dla_memory_minus_context": st.contrast.mean(1)}
    details: dict[str, Any] = {
        "behaviour": dict(st.behaviour), "closed_book": {r: list(v) for r, v in st.batch.closed_book.items()},
        "facts_kept": len(st.kept), "pairs": len(st.batch) // 2,
        "examples": [f"{f.subject} ({f.relation}): memory {f.attribute!r}, context {c!r}"
                     for f, c in list(zip(st.batch.facts, st.batch.context_text))[:6]]}
    return effect_map_result(
        name, per_prompt, rule, seed=cfg.seed, extras=extras, details=details,
        data_description=f"{st.describe()}; score = mean over prompts of the head's {rule.statistic.split(' on ')[0]}",
        null_description=("role swap: each prompt's contrast negated at random (exchanging which answer is memory and "
                          f"which context negates it exactly; {stats.N_PERM} sign-flip draws, add-one p, BH q)"))


def memory_result(st: ConflictStats, cfg: ScanConfig) -> DetectorResult:
    """The ``memory`` result from the shared pass (pure: no model)."""
    return _result("memory", st, st.contrast, MEMORY_RULE, cfg)


def context_result(st: ConflictStats, cfg: ScanConfig) -> DetectorResult:
    """The ``context`` result from the shared pass: the same contrast, negated (pure: no model)."""
    return _result("context", st, -st.contrast, CONTEXT_RULE, cfg)


def run_memory(m: LoadedModel, cfg: ScanConfig) -> DetectorResult:
    return memory_result(cfg.shared(CONFLICT_PASS, m), cfg)


def run_context(m: LoadedModel, cfg: ScanConfig) -> DetectorResult:
    return context_result(cfg.shared(CONFLICT_PASS, m), cfg)


# ------------------------------------------------------------------------------------------ causal check

@dataclass
class SetRuns:
    """Per-prompt behaviour ``[B]`` clean, with the labelled set edited, and with each random set edited."""

    clean: np.ndarray
    labelled: np.ndarray
    random: list[np.ndarray]
    sets: list[list[tuple[int, int]]]


def edited_set_runs(m: LoadedModel, heads: Sequence[tuple[int, int]], ids: torch.Tensor,
                    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                    edits_for: Callable[[list[tuple[int, int]]], list[HeadEdit]], *, seed: int, salt: str,
                    batch_size: int, keep: int | None = None, n_random: int = N_RANDOM) -> SetRuns:
    """Run ``fn`` clean, with ``edits_for(heads)`` and with ``edits_for`` of ``n_random`` layer-matched random
    sets (``keep``: unembed only the last ``keep`` positions, see :func:`causal.ablation_check`)."""
    heads = [(int(a), int(b)) for a, b in heads]
    sets = matched_random_sets(heads, m.info.n_layers, m.info.n_heads, n_random, stats.rng_for(seed, salt),
                               m.info.attention_layers)
    run = lambda hs: _run_edits(m, ids, fn, edits_for(hs), batch_size, keep)  # noqa: E731
    return SetRuns(clean=run([]), labelled=run(heads), random=[run(s) for s in sets], sets=sets)


def set_runs_check(runs: SetRuns, heads: Sequence[tuple[int, int]], *, metric: str, kind: str, expected: str,
                   description: str, note: str = "") -> CausalCheck:
    """A :class:`CausalCheck` from :class:`SetRuns` (p = rank of the labelled change among the random ones)."""
    effect = float(np.mean(runs.labelled - runs.clean))
    rand = [float(np.mean(r - runs.clean)) for r in runs.random]
    sign = 1.0 if expected == "increase" else -1.0
    hits = sum(1 for r in rand if sign * r >= sign * effect)
    return CausalCheck(metric=metric, kind=kind, heads=tuple((int(a), int(b)) for a, b in heads), effect=effect,
                       random_effects=tuple(rand), p_value=(1 + hits) / (1 + len(rand)),
                       n_prompts=int(runs.clean.shape[0]), baseline=float(np.mean(runs.clean)), expected=expected,
                       description=description, note=note)


def rates(runs: SetRuns) -> dict[str, float]:
    """Memory-answer rates (``LD > 0``) clean, with the labelled set ablated, and the random sets' median."""
    rate = lambda x: float(np.mean(x > 0))  # noqa: E731
    return {"memory_rate_clean": rate(runs.clean), "memory_rate_ablated": rate(runs.labelled),
            "memory_rate_random_median": float(np.median([rate(r) for r in runs.random])) if runs.random else float("nan")}


def conflict_check(m: LoadedModel, cfg: ScanConfig, result: DetectorResult, *, expected: str) -> CausalCheck:
    st = cfg.shared(CONFLICT_PASS, m)
    seed = cfg.seed + EVAL_SEED_OFFSET
    batch = conflict_batch(m.tokenizer, st.kept, seed=seed, closed_book=st.batch.closed_book,
                           max_pairs=CAUSAL_PAIRS_QUICK if cfg.quick else CAUSAL_PAIRS)
    metric = "logit(memory answer) - logit(context answer)"
    means = _position_means(m, batch.ids, cfg.batch_size)
    runs = edited_set_runs(m, result.labelled, batch.ids, conflict_ld(batch), lambda hs: _edits(hs, "mean", means),
                           seed=cfg.seed, salt=f"causal:{result.name}", batch_size=cfg.batch_size,
                           keep=keep_last(batch.last, batch.ids.shape[1]))
    r = rates(runs)
    result.details["causal_rates"] = r
    return set_runs_check(
        runs, result.labelled, metric=metric, kind="mean", expected=expected,
        description=(f"{metric} at the last token of {len(batch)} held-out conflict prompts (seed {seed}: another "
                     "answer-swapped matching of the known facts), mean ablation over those prompts per position"),
        note=(f"memory-answer rate {r['memory_rate_clean']:.2f} clean -> {r['memory_rate_ablated']:.2f} with the labelled "
              f"heads ablated (random sets: median {r['memory_rate_random_median']:.2f})"))


def memory_check(m: LoadedModel, cfg: ScanConfig, result: DetectorResult) -> CausalCheck:
    return conflict_check(m, cfg, result, expected="decrease")


def context_check(m: LoadedModel, cfg: ScanConfig, result: DetectorResult) -> CausalCheck:
    return conflict_check(m, cfg, result, expected="increase")


def _example(m: LoadedModel, cfg: ScanConfig) -> torch.Tensor:
    st = cfg.shared(CONFLICT_PASS, m)
    return st.batch.ids[0, :int(st.batch.last[0]) + 1]


_CITE = "Jin et al. 2024, arXiv 2402.18154; Yu, Merullo & Pavlick 2023, arXiv 2310.15910"
MEMORY = register(Detector(
    name="memory", stage="KR", method="direct logit attribution (knowledge conflict)",
    summary="pushes the model's memorised answer over a conflicting answer given in the context",
    citation=_CITE, run=run_memory, uses=(CONFLICT_PASS,), causal=memory_check, example=_example, default=False))
CONTEXT = register(Detector(
    name="context", stage="ICI", method="direct logit attribution (knowledge conflict)",
    summary="pushes the answer given in the context over the model's memorised answer",
    citation=_CITE, run=run_context, uses=(CONFLICT_PASS,), causal=context_check, example=_example, default=False))
