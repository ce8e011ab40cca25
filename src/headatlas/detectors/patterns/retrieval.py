"""Retrieval heads (ICI; Wu et al. 2024, arXiv 2404.15574; reference code nightdessert/Retrieval_Head).

Data (``tasks/needle.py``): needle-in-a-haystack prompts of exactly one length each, holding
``K = 1 + n_distractors`` facts of one form ("The secret code for the {colour} {thing} is
{code}."), one of which (drawn uniformly) is the needle; the prompt ends at Wu et al.'s question
(inside the chat template when the tokenizer has one), so the answer is not primed by the
needle's own prefix. All facts of a prompt have the same token length.

Score (Wu et al.'s retrieval score): the prompt minus its last token is prefilled (sdpa, KV
cache, no pattern; blocks of ``PREFILL_CHUNK`` tokens for long prompts); then the answer is
decoded greedily for as many steps as the sentence answer "The secret code for the {key} is
{code}" has (enough for a model that answers with the code alone or in a sentence), with a
pattern reducer that keeps only each head's top-1 key position of the step's single query
(``[B, H, 1, S]`` patterns, never ``[S, S]``). At a step, a head hits when its top-1 position
lies in the needle and the generated token equals the token there; the prompt's score is hits /
decode steps. A prompt counts only when the generated answer recalls >= ``min_recall`` of the
code's tokens (the paper's ROUGE filter).

Matched control: the same hit count against each fact slot, position-aligned (a hit on fact ``k``
is a top-1 position at offset ``j`` of fact ``k`` while the generated token equals the needle's
token at offset ``j``; for the needle this is the score itself). A head that copies from
distractors, or from a fact at a fixed rank, or that attends to the facts' shared wording,
scores on the controls too. Per prompt, effect = needle hits minus the mean hits of the other
facts (``stats.slot_contrast``); null: the needle's slot drawn at random among the ``K`` facts per
prompt (``stats.random_slot_null``; valid because the needle is drawn uniformly among the facts).

Induction overlap: ``requires=("induction",)``; ``details`` lists the labelled heads that are also
induction heads and the Jaccard of the two label sets.

Causal check: mean ablation (zero as an option) of the labelled set and layer-matched random sets
on fresh needle prompts (another seed): the teacher-forced log-prob of the needle's code; the
greedy success (exact code generated) with and without the labelled set ablated goes to
``details["causal_greedy"]``.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ... import stats
from ...atlas.records import CausalCheck, DetectorResult, LabelRule
from ...errors import InputError
from ...instrument import Taps, instrumented
from ...methods.ablation import ablation_edits
from ...tasks.needle import N_DISTRACTORS, NeedleCase, needle_cases
from ...tasks.text import check_english, pad_id
from ..base import Detector, ScanConfig, register
from ..options import Option
from ..behaviours import Behaviour, HeadOp, per_prompt
from ..causal import set_check

if TYPE_CHECKING:
    from ...models import LoadedModel

MIN_EFFECT = 0.1          # the paper's retrieval-score threshold, here on score minus control
MIN_RECALL = 0.5
OPTIONS = (
    Option("retrieval_prompts", "int", None, "needle prompts (default: the scan's n_prompts, else 16; 8 quick)",
           low=2, high=10_000),
    Option("retrieval_lengths", "ints", None, "prompt lengths in tokens, cycled over the prompts (default 300; 200 "
           "quick; each capped at the model's context - 8)", low=32, high=1_000_000),
    Option("retrieval_distractors", "int", N_DISTRACTORS, "distractor facts per prompt besides the needle (the null)",
           low=1, high=64),
    Option("min_recall", "float", MIN_RECALL, "answer recall a prompt needs to count (greedy answer vs the needle's "
           "code)", low=0.0, high=1.0),
)
EVAL_SEED_OFFSET = 1000   # causal-check prompts never reuse the detection seed
EVAL_LENGTH = 240         # causal-check prompts (22 ablated passes over them: kept short)
PREFILL_CHUNK = 2048      # longer prompts are prefilled in blocks (never one [S, S] attention)
RULE = LabelRule(statistic=("retrieval score (top-1 copy hits in the needle per answer token) minus the mean of the "
                            "same position-aligned hits in the distractor facts (mean over kept prompts)"),
                 direction="greater", min_effect=MIN_EFFECT)


# ------------------------------------------------------------------------------------------ decoding

def _top1_reducer(state: dict[str, int]):
    """Reducer: each head's top-1 key position (absolute) for each query, ``[B, H, q]`` int64.
    ``state["total"]`` holds the number of tokens seen after this call (keys of a sliding-window cache
    are the last ``K`` of them)."""

    def reduce(layer: int, pattern: torch.Tensor, call: Any) -> torch.Tensor:
        K = pattern.shape[-1]
        return (pattern.argmax(dim=-1) + (state["total"] - K)).cpu()

    return reduce


def _cache_kw(model) -> str:
    import inspect

    params = inspect.signature(type(model.model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cached_forward(model, ids: torch.Tensor, cache, keep: int):
    """One cached forward of ``ids [B, q]``; returns ``(logits [B, keep, V], cache)``."""
    kw = {} if cache is None else {_cache_kw(model): cache}
    out = model.model(ids, use_cache=True, logits_to_keep=keep, **kw)
    new = getattr(out, "cache", None)
    return out.logits, (new if new is not None else out.past_key_values)


def greedy_top1(model, ids: torch.Tensor, n_steps: int, edits: list | None = None,
                prefill_chunk: int | None = None, timings: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefill ``ids[:, :-1]`` (``[B, S]``, sdpa, no pattern), then decode greedily ``n_steps`` tokens,
    feeding ``ids[:, -1]`` first. Returns ``(generated [B, n], top1 [B, n, L, H])``: ``top1[b, j]`` is
    each head's top-1 position for the query that produced ``generated[b, j]``. ``edits`` apply to the
    whole run (ablations); ``prefill_chunk`` prefills in blocks of that many tokens (long prompts: one
    block's attention is ``[B, H, chunk, S]`` at most); ``timings`` receives prefill and decode seconds."""
    L = model.info.n_layers
    B, S = ids.shape
    ids = ids.to(model.device)
    cache = None
    t0 = time.perf_counter()
    with torch.no_grad():
        with instrumented(model, edits=edits or []):
            step = S - 1 if not prefill_chunk else int(prefill_chunk)
            for a in range(0, S - 1, step):
                _, cache = cached_forward(model, ids[:, a:min(a + step, S - 1)], cache, 1)
        t1 = time.perf_counter()
        state = {"total": S - 1}
        nxt = ids[:, -1:]
        gen = []
        with instrumented(model, edits=edits or [], taps=Taps(reducer=_top1_reducer(state))) as rec:
            for _ in range(n_steps):
                state["total"] += 1
                logits, cache = cached_forward(model, nxt, cache, 1)
                nxt = logits[:, -1].argmax(-1, keepdim=True)
                gen.append(nxt.cpu())
    if timings is not None:
        timings["prefill"] = timings.get("prefill", 0.0) + t1 - t0
        timings["decode"] = timings.get("decode", 0.0) + time.perf_counter() - t1
    per_layer = {layer: torch.cat(rec.reduced[layer], dim=-1) for layer in model.info.attention_layers}  # [B, H, n]
    none = torch.full_like(next(iter(per_layer.values())), -1)   # a hybrid's layers without heads: no position
    per_layer = [per_layer.get(layer, none) for layer in range(L)]
    top1 = torch.stack(per_layer).permute(1, 3, 0, 2)                              # [B, n, L, H]
    return torch.cat(gen, dim=1), top1


# ------------------------------------------------------------------------------------------ scoring

def slot_hits(top1: torch.Tensor, generated: torch.Tensor, case: NeedleCase) -> np.ndarray:
    """Copy hits of one prompt per fact slot, ``[L, H, K]`` (counts over the decode steps).

    ``top1 [n, L, H]`` positions, ``generated [n]``. A hit on fact ``k`` at step ``j``: the head's top-1
    position is ``fact_start[k] + o`` with ``0 <= o < fact_len`` and the needle's token at offset ``o``
    equals ``generated[j]``. For the needle slot this is Wu et al.'s rule (the token there is the one
    generated); for a distractor it is the same rule position-aligned."""
    if top1.dim() != 3 or top1.shape[0] != generated.numel():
        raise ValueError(f"top1 must be [steps, L, H] with steps = {generated.numel()}, got {tuple(top1.shape)}")
    n0, n1 = case.needle_span
    needle_tok = case.ids[n0:n1]
    flen = n1 - n0
    out = []
    for a, _b in case.fact_spans:
        off = top1 - a
        inside = (off >= 0) & (off < flen)
        tok = needle_tok[off.clamp(0, flen - 1)]
        hit = inside & (tok == generated.reshape(-1, 1, 1))
        out.append(hit.sum(0))
    return torch.stack(out, dim=-1).double().numpy()


def recall(generated: torch.Tensor, answer: tuple[int, ...]) -> float:
    """Fraction of the answer's tokens (as a multiset) found among the generated tokens."""
    g, a = Counter(generated.tolist()), Counter(answer)
    return sum(min(c, g[t]) for t, c in a.items()) / max(1, sum(a.values()))


def _settings(m: LoadedModel, cfg: ScanConfig) -> tuple[int, list[int], int]:
    opts = cfg.options
    n = int(opts.get("retrieval_prompts") or cfg.n_prompts or (8 if cfg.quick else 16))
    lengths = opts.get("retrieval_lengths") or ((200,) if cfg.quick else (300,))
    cap = m.info.n_ctx - 8
    return n, sorted({min(int(x), cap) for x in lengths}), int(opts.get("retrieval_distractors", N_DISTRACTORS))


def _batches(cases: list[NeedleCase], size: int):
    """Indices of cases grouped by prompt and answer length, ``size`` per batch (seeded order kept)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, c in enumerate(cases):
        groups.setdefault((c.ids.numel(), len(c.response_ids)), []).append(i)
    for idx in groups.values():
        for s in range(0, len(idx), size):
            yield idx[s:s + size]


def decode_cases(m: LoadedModel, cases: list[NeedleCase], batch_size: int, edits: list | None = None,
                 progress=None, timings: dict | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(generated [n], top1 [n, L, H])`` per case (``n`` = the length of its full answer sentence).
    Prompts longer than ``PREFILL_CHUNK`` tokens are prefilled in blocks of that size, one prompt per pass."""
    out: list[Any] = [None] * len(cases)
    done = 0
    long = any(c.ids.numel() > PREFILL_CHUNK for c in cases)
    for idx in _batches(cases, 1 if long else max(1, batch_size)):
        ids = torch.stack([cases[i].ids for i in idx])
        gen, top1 = greedy_top1(m, ids, len(cases[idx[0]].response_ids), edits=edits,
                                prefill_chunk=PREFILL_CHUNK if ids.shape[1] > PREFILL_CHUNK else None, timings=timings)
        for r, i in enumerate(idx):
            out[i] = (gen[r], top1[r])
        done += len(idx)
        if progress is not None:
            progress(done, len(cases))
    return out


def _exact(generated: torch.Tensor, case: NeedleCase) -> bool:
    """The greedy answer holds the needle's code exactly (as a contiguous run of its tokens)."""
    g, a = generated.tolist(), list(case.answer_ids)
    return any(g[i:i + len(a)] == a for i in range(len(g) - len(a) + 1))


def _head_names(heads) -> list[str]:
    return [f"L{a}H{b}" for a, b in heads]


def run(m: LoadedModel, cfg: ScanConfig) -> DetectorResult:
    check_english(m.tokenizer)
    n, lengths, n_distr = _settings(m, cfg)
    if n_distr < 1:
        raise InputError("the retrieval null needs at least one distractor fact per prompt")
    min_recall = float(cfg.options.get("min_recall", MIN_RECALL))
    cases = needle_cases(m.tokenizer, n, lengths, seed=cfg.seed, n_distractors=n_distr)
    decoded = decode_cases(m, cases, cfg.batch_size, progress=cfg.tick)
    L, H = m.info.n_layers, m.info.n_heads
    recalls, exact, kept, hits = [], [], [], []
    for case, (gen, top1) in zip(cases, decoded):
        recalls.append(recall(gen, case.answer_ids))
        exact.append(_exact(gen, case))
        if recalls[-1] >= min_recall:
            kept.append(case)
            x = slot_hits(top1, gen, case) / gen.numel()                     # [L, H, K]
            order = [case.needle_index] + [k for k in range(x.shape[-1]) if k != case.needle_index]
            hits.append(x[..., order])                                       # needle first
    if len(kept) < 2:
        raise InputError(f"the model recalled the needle (answer recall >= {min_recall}) in {len(kept)} of "
                         f"{len(cases)} prompts (recall {', '.join(f'{r:.2f}' for r in recalls)}): too few for a "
                         "retrieval score with a null")
    x = np.stack(hits, axis=1)                                              # [L, B, H, K]
    contrast = stats.slot_contrast(x)
    d = contrast[..., 0]                                                     # [L, B, H]
    scores = x[..., 0].mean(1)
    control = x[..., 1:].mean(axis=(1, 3))
    draws = stats.random_slot_null(contrast, rng=stats.rng_for(cfg.seed, "retrieval:null"))
    tested = stats.evaluate(d, draws, RULE, seed=cfg.seed, salt="retrieval", scores=scores)
    labelled = list(tested.labelled)
    details: dict[str, Any] = {
        "n_prompts": len(cases), "kept_prompts": len(kept), "min_recall": min_recall,
        "prompt_tokens": sorted({int(c.ids.numel()) for c in cases}), "n_facts": 1 + n_distr,
        "answer_tokens": sorted({len(c.answer_ids) for c in cases}),
        "depths": [c.depth for c in cases], "recall": [round(r, 3) for r in recalls],
        "greedy_exact": int(sum(exact)),
    }
    if not labelled:
        best = np.unravel_index(np.nanargmax(np.where(np.isfinite(tested.effect), tested.effect, -np.inf)), (L, H))
        b = (int(best[0]), int(best[1]))
        details["best_head"] = {"head": _head_names([b])[0], "score": float(scores[b]), "control": float(control[b]),
                                "effect": float(tested.effect[b]), "p_value": float(tested.p_value[b]),
                                "q_value": float(tested.q_value[b])}
    if "induction" in cfg.results:
        ind = cfg.results["induction"]
        both = sorted(set(labelled) & set(map(tuple, ind.labelled)))
        details["induction_overlap"] = {"heads": _head_names(both), "n_retrieval": len(labelled),
                                        "n_induction": len(ind.labelled),
                                        "jaccard": round(stats.jaccard(labelled, ind.labelled), 4)}
    else:
        details["induction_overlap"] = "induction was not run in this scan"
    return stats.result(
        "retrieval", tested, scores=scores, rule=RULE, null_mean=control,
        null_std=np.nanstd(draws, axis=0),
        data_description=(f"{len(cases)} needle-in-a-haystack prompts of {details['prompt_tokens']} tokens, each with "
                          f"{1 + n_distr} facts 'The secret code for the <colour> <thing> is <5-digit code>.' at random "
                          "sentence boundaries (one, drawn uniformly, is the needle), ending at the question (Wu et "
                          f"al.'s form, chat template when the tokenizer has one); greedy answers as long as the full "
                          "answer sentence 'The secret code for the <key> is <code>'; "
                          f"{len(kept)} prompts kept (answer recall >= {min_recall}); score: per decode step, "
                          "+1/|code| when the head's top-1 position is in the needle and holds the generated token"),
        null_description=("null_mean: the same position-aligned copy hits on the distractor facts (mean); p: the "
                          "needle's slot drawn at random among the prompt's facts ("
                          f"{tested.n_null} draws) for the needle-minus-other-facts contrast"),
        n_prompts=len(kept), seed=cfg.seed, extras={"control": control}, details=details)


# ------------------------------------------------------------------------------------------ causal check

def _code_start(generated: list[int], code: tuple[int, ...]) -> int | None:
    """Where ``code`` starts in the generated tokens (None when it is not there)."""
    for i in range(len(generated) - len(code) + 1):
        if tuple(generated[i:i + len(code)]) == code:
            return i
    return None


def answer_prefixes(cases: list[NeedleCase], decoded) -> tuple[list[tuple[int, ...]], str]:
    """Per case, the tokens the model itself puts before the code: the clean greedy answer up to the code
    when it holds the code (e.g. nothing for a model that answers with the code, "The secret code for
    the <key> is" for one that answers in a sentence); otherwise the sentence form."""
    out, own = [], 0
    for c, (g, _) in zip(cases, decoded):
        i = _code_start(g.tolist(), c.answer_ids)
        if i is None:
            out.append(tuple(c.response_ids[:-len(c.answer_ids)]))
        else:
            out.append(tuple(g.tolist()[:i]))
            own += 1
    return out, f"the model's own greedy words before the code ({own} of {len(cases)} prompts; the others the " \
                "sentence 'The secret code for the <key> is')"


def _answer_batch(cases: list[NeedleCase], prefixes: list[tuple[int, ...]], tokenizer
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``ids [B, S + T - 1]``: prompt + prefix + code[:-1], right-padded, and ``targets [B, T]`` aligned with
    the last ``T`` positions' predictions: the code's tokens, -1 for the forced prefix and padding."""
    S = cases[0].ids.numel()
    T = max(len(p) + len(c.answer_ids) for c, p in zip(cases, prefixes))
    ids = torch.full((len(cases), S + T - 1), pad_id(tokenizer), dtype=torch.long)
    tgt = torch.full((len(cases), T), -1, dtype=torch.long)
    for r, (c, p) in enumerate(zip(cases, prefixes)):
        ans = list(p) + list(c.answer_ids)
        ids[r, :S] = c.ids
        ids[r, S:S + len(ans) - 1] = torch.tensor(ans[:-1], dtype=torch.long)
        tgt[r, len(p):len(ans)] = torch.tensor(c.answer_ids, dtype=torch.long)
    return ids, tgt


def needle_prompts(m: LoadedModel, cfg: ScanConfig, *, kind: str = "mean") -> tuple[Behaviour, list[NeedleCase], Any]:
    """Teacher-forced log-prob of the needle's code on fresh needle prompts (seed + 1000); ablating retrieval heads
    lowers it. Also returns the cases and their clean greedy decodes (for the greedy count)."""
    n, lengths, n_distr = _settings(m, cfg)
    n_eval = 4 if cfg.quick else 6
    length = min(lengths[0], EVAL_LENGTH)
    cases = needle_cases(m.tokenizer, n_eval, [length], seed=cfg.seed + EVAL_SEED_OFFSET, n_distractors=n_distr)
    S = cases[0].ids.numel()
    clean = decode_cases(m, cases, cfg.batch_size)
    prefixes, form = answer_prefixes(cases, clean)
    ids, tgt = _answer_batch(cases, prefixes, m.tokenizer)
    T = tgt.shape[1]

    def code_logprob(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        lp = torch.log_softmax(logits[:, -T:].float(), -1)    # the positions that predict the answer's tokens
        a = tgt[rows.cpu()].to(lp.device)
        got = lp.gather(-1, a.clamp(min=0)[..., None])[..., 0]
        return (got * (a >= 0)).sum(-1)

    beh = Behaviour(family="needle log-prob", metric="needle code log-prob (nats)", expected="decrease", ids=ids,
                    score=per_prompt(code_logprob), keep=T, intervention=HeadOp(kind),
                    description=(f"teacher-forced log-prob of the needle's code on {len(cases)} fresh needle prompts of "
                                 f"{S} tokens with {1 + n_distr} facts (seed {cfg.seed + EVAL_SEED_OFFSET}); forced "
                                 f"before the code: {form}; {kind} ablation"))
    return beh, cases, clean


def needle_behaviour(m: LoadedModel, cfg: ScanConfig, result: DetectorResult | None = None) -> Behaviour:
    """The retrieval check's behaviour (:func:`needle_prompts`; ``result`` is not read)."""
    return needle_prompts(m, cfg)[0]


def needle_logprob_check(m: LoadedModel, cfg: ScanConfig, result: DetectorResult, *, kind: str = "mean") -> CausalCheck:
    """Ablate the labelled heads: does the needle code's log-prob fall more than for random head sets?
    Also counts greedy exact answers with and without the labelled set ablated (``details["causal_greedy"]``)."""
    beh, cases, clean = needle_prompts(m, cfg, kind=kind)
    check = set_check(m, cfg, result, beh)
    if result.labelled and check.ran:
        ids = beh.ids
        # greedy decoding runs past the prompt, so a mean ablation here uses each head's mean over all positions
        edits = ablation_edits(m, list(result.labelled), ids.to(m.device), kind,  # type: ignore[arg-type]
                               reference=ids[:, :-1].to(m.device))
        ablated = decode_cases(m, cases, cfg.batch_size, edits=edits)
        ok = [sum(_exact(g, c) for c, (g, _) in zip(cases, run_)) for run_ in (clean, ablated)]
        result.details["causal_greedy"] = {"n_prompts": len(cases), "exact_clean": int(ok[0]),
                                           "exact_ablated": int(ok[1]), "kind": kind}
        check = replace(check, note=(f"greedy exact answers: {ok[0]}/{len(cases)} clean, "
                                     f"{ok[1]}/{len(cases)} with the labelled heads ablated"))
    return check


DETECTOR = register(Detector(
    name="retrieval", evidence="pattern", metric="needle log-prob", stage="ICI", method="retrieval score (needle in a haystack with distractor facts)",
    summary="during greedy answering, top-1 attention lands on the needle token being copied, more than on distractor facts",
    citation="Wu et al. 2024, arXiv 2404.15574", run=run, requires=("induction",), causal=needle_logprob_check, behaviour=needle_behaviour,
    options=OPTIONS, default=False,   # its needle check alone costs ~5 min on smollm2: run it by name or with all
))
