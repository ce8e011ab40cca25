"""Retrieval heads (Wu et al. 2024, arXiv 2404.15574; reference code nightdessert/Retrieval_Head).

Needle-in-a-haystack prompts (``tasks/needle.py``) at several lengths and depths. The prompt minus
its last token is prefilled once (plain attention, KV cache, no pattern); then:

- **faithful** (the paper's score): greedy decoding of the answer, one token per step, with a
  pattern reducer that keeps only each head's top-1 attended position of the step's query. A head
  scores ``+1/|answer|`` at a step when that position lies in the needle sentence *and* the token
  generated at that step equals the token at that position (it copy-pastes). A test counts only
  when the generated answer recalls >= ``min_recall`` of the code's tokens (the paper's ROUGE filter).
- **teacher-forced** (fast): one forward pass over ``[last prompt token] + answer[:-1]`` on the
  same prefilled cache, same rule with the true answer tokens, on every test (no filter).

Null: the same hit count with the needle span replaced by random same-length spans of the
haystack (copy hits by chance). ``null_std`` is the standard error over kept tests of the paired
difference. Memory: patterns exist only for the decode queries (``[1, H, q, S]`` with q <= the
answer length) and are reduced at once to ``[1, H, q]`` positions; nothing ``[S, S]`` is built.
"""

from __future__ import annotations

import copy
import inspect
import random
import time
from collections import Counter
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..instrument import Taps, instrumented
from ..tasks.needle import NeedleCase, needle_cases
from ..tasks.text import check_english
from .base import Detector, DetectorResult, ScanConfig, label_heads, register

MIN_SCORE, MIN_Z, MIN_MARGIN = 0.1, 3.0, 0.1   # 0.1 is the paper's retrieval-head threshold
N_NULL_SPANS = 8
TOP_K = 10


def _top1_reducer(state: dict[str, int]):
    """Reducer: the absolute position of each head's top-1 key for each query, ``[B, H, q]`` (int64).
    ``state["total"]`` must hold the number of tokens seen after this call (keys of a sliding
    window cache are the last ``K`` of them)."""

    def reduce(layer: int, pattern: torch.Tensor, call: Any) -> torch.Tensor:
        K = pattern.shape[-1]
        return (pattern.argmax(dim=-1) + (state["total"] - K)).cpu()

    return reduce


def _stack(rec, n_layers: int) -> torch.Tensor:
    """Recorded top-1 positions -> ``[n_queries, n_layers, n_heads]`` (batch row 0)."""
    per_layer = [torch.cat(rec.reduced[layer], dim=-1)[0] for layer in range(n_layers)]   # [H, n]
    return torch.stack(per_layer).permute(2, 0, 1)


def _cache_kw(model) -> str:
    """The forward keyword for a KV cache: ``cache`` (transformers >= 5.2x) or ``past_key_values``."""
    params = inspect.signature(type(model.model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cached_forward(model, ids: torch.Tensor, cache, keep: int):
    """One cached forward of ``ids [1, q]``; returns ``(logits [1, keep, V], cache)``."""
    kw = {} if cache is None else {_cache_kw(model): cache}
    out = model.model(ids, use_cache=True, logits_to_keep=keep, **kw)
    new = getattr(out, "cache", None)
    return out.logits, (new if new is not None else out.past_key_values)


def prefill(model, ids: torch.Tensor):
    """Run ``ids [S]`` (no taps) and return the KV cache."""
    with torch.no_grad():
        return cached_forward(model, ids[None].to(model.device), None, 1)[1]


def greedy_top1(model, ids: torch.Tensor, n_steps: int, cache) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decoding after ``cache`` holds ``ids[:-1]``: feeds ``ids[-1]`` and then each generated
    token. Returns ``(generated [n_steps], top1 [n_steps, L, H])`` where ``top1[j]`` is each head's
    top-1 position for the query that produced ``generated[j]``."""
    L = model.info.n_layers
    state = {"total": int(ids.numel()) - 1}
    nxt = ids[-1:].to(model.device)
    gen = []
    with torch.no_grad(), instrumented(model, taps=Taps(reducer=_top1_reducer(state))) as rec:
        for _ in range(n_steps):
            state["total"] += 1
            logits, cache = cached_forward(model, nxt[None], cache, 1)
            nxt = logits[0, -1].argmax().reshape(1)
            gen.append(int(nxt))
    return torch.tensor(gen), _stack(rec, L)


def teacher_forced_top1(model, ids: torch.Tensor, answer: torch.Tensor, cache) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward of ``[ids[-1]] + answer[:-1]`` after ``cache`` holds ``ids[:-1]``. Returns
    ``(predicted [n], top1 [n, L, H])`` for the ``n = len(answer)`` answer positions."""
    L = model.info.n_layers
    chunk = torch.cat([ids[-1:], answer[:-1]]).to(model.device)
    state = {"total": int(ids.numel()) - 1 + chunk.numel()}
    with torch.no_grad(), instrumented(model, taps=Taps(reducer=_top1_reducer(state))) as rec:
        logits, _ = cached_forward(model, chunk[None], cache, chunk.numel())
    return logits[0].argmax(-1).cpu(), _stack(rec, L)


def copy_hits(top1: torch.Tensor, tokens: torch.Tensor, ids: torch.Tensor, span: tuple[int, int],
              norm: int) -> np.ndarray:
    """Retrieval score of one test: ``top1 [n, L, H]`` positions, ``tokens [n]`` the token emitted at
    each step, ``ids [S]`` the prompt. A hit is ``span[0] <= top1 < span[1]`` and ``ids[top1] ==
    tokens[step]``; returns ``hits.sum(steps) / norm`` as ``[L, H]``."""
    if top1.dim() != 3 or top1.shape[0] != tokens.numel():
        raise ValueError(f"top1 must be [steps, L, H] with steps = {tokens.numel()}, got {tuple(top1.shape)}")
    inside = (top1 >= span[0]) & (top1 < span[1])
    at = ids[top1.clamp(0, ids.numel() - 1)]
    hit = inside & (at == tokens.reshape(-1, 1, 1))
    return hit.sum(0).double().numpy() / max(1, norm)


def null_spans(case: NeedleCase, length: int, n: int, rng: random.Random) -> list[tuple[int, int]]:
    """``n`` random spans of ``length`` tokens inside the haystack (never touching needle or question)."""
    ranges = [(a, b - length) for a, b in case.haystack if b - a >= length]
    if not ranges:
        raise InputError("the haystack is shorter than the needle: no null span fits")
    weights = [b - a + 1 for a, b in ranges]
    out = []
    for _ in range(n):
        a, b = rng.choices(ranges, weights)[0]
        s = rng.randint(a, b)
        out.append((s, s + length))
    return out


def recall(generated: torch.Tensor, answer: tuple[int, ...]) -> float:
    """Fraction of the answer's tokens (as a multiset) found among the generated tokens."""
    g, a = Counter(generated.tolist()), Counter(answer)
    return sum(min(c, g[t]) for t, c in a.items()) / max(1, sum(a.values()))


def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Share of the top-``k`` heads of ``a`` that are also top-``k`` in ``b``."""
    ta = set(np.argsort(-a.ravel(), kind="stable")[:k].tolist())
    tb = set(np.argsort(-b.ravel(), kind="stable")[:k].tolist())
    return len(ta & tb) / k


def _lengths(model, config: ScanConfig) -> tuple[list[int], list[float]]:
    opts = config.options
    lengths = opts.get("retrieval_lengths") or ((256, 512) if config.quick else (500, 1000, 2000))
    depths = opts.get("retrieval_depths") or ((0.25, 0.75) if config.quick else (0.2, 0.8))
    cap = model.info.n_ctx - 8
    fitted = sorted({min(int(n), cap) for n in lengths})
    return fitted, [float(d) for d in depths]


def run(model, config: ScanConfig) -> DetectorResult:
    tok = model.tokenizer
    check_english(tok)
    lengths, depths = _lengths(model, config)
    min_recall = float(config.options.get("min_recall", 0.5))
    cases = needle_cases(tok, lengths, depths, seed=config.seed)
    rng = random.Random(config.seed + 1)
    L, H = model.info.n_layers, model.info.n_heads
    faithful, f_null, tf, tf_null, recalls, kept = [], [], [], [], [], []
    tf_correct = 0
    secs = {"prefill": 0.0, "teacher_forced": 0.0, "faithful": 0.0}
    for i, case in enumerate(cases):
        answer = torch.tensor(case.answer_ids)
        n = answer.numel()
        spans = null_spans(case, case.needle_span[1] - case.needle_span[0], N_NULL_SPANS, rng)
        t0 = time.perf_counter()
        cache = prefill(model, case.ids[:-1])
        t1 = time.perf_counter()
        pred, top_tf = teacher_forced_top1(model, case.ids, answer, copy.deepcopy(cache))
        t2 = time.perf_counter()
        tf_correct += int((pred == answer).all())
        tf.append(copy_hits(top_tf, answer, case.ids, case.needle_span, n))
        tf_null.append(np.mean([copy_hits(top_tf, answer, case.ids, s, n) for s in spans], axis=0))
        t3 = time.perf_counter()
        gen, top_g = greedy_top1(model, case.ids, n, cache)
        secs["prefill"] += t1 - t0
        secs["teacher_forced"] += t2 - t1
        secs["faithful"] += time.perf_counter() - t3
        recalls.append(recall(gen, case.answer_ids))
        if recalls[-1] >= min_recall:
            kept.append(i)
            faithful.append(copy_hits(top_g, gen, case.ids, case.needle_span, n))
            f_null.append(np.mean([copy_hits(top_g, gen, case.ids, s, n) for s in spans], axis=0))
        config.tick(i + 1, len(cases))
    if not kept:
        raise InputError(f"the model recalled the needle in none of {len(cases)} tests (answer recall "
                         f"{', '.join(f'{r:.2f}' for r in recalls)} < {min_recall}): no faithful retrieval score")
    f, fn = np.stack(faithful), np.stack(f_null)
    score, null_mean = f.mean(0), fn.mean(0)
    null_std = ((f - fn).std(0, ddof=1) / np.sqrt(len(f))) if len(f) > 1 else np.full((L, H), np.nan)
    tfm, tfn = np.stack(tf).mean(0), np.stack(tf_null).mean(0)
    labelled = label_heads(score, null_mean, null_std, min_score=MIN_SCORE, min_z=MIN_Z, min_margin=MIN_MARGIN)
    tf_only_kept = np.stack(tf)[kept].mean(0)
    details = {
        "lengths": [int(c.ids.numel()) for c in cases], "depths": [c.depth for c in cases],
        "recall": [round(r, 3) for r in recalls], "kept_tests": len(kept), "n_tests": len(cases),
        "min_recall": min_recall, "min_margin": MIN_MARGIN,
        "teacher_forced_all_correct": tf_correct,
        "seconds": {k: round(v, 2) for k, v in secs.items()},
        f"top{TOP_K}_overlap_faithful_vs_teacher_forced": top_k_overlap(score, tfm, TOP_K),
        f"top{TOP_K}_overlap_on_kept_tests": top_k_overlap(score, tf_only_kept, TOP_K),
        "pearson_faithful_vs_teacher_forced": float(np.corrcoef(score.ravel(), tfm.ravel())[0, 1])
        if score.std() > 0 and tfm.std() > 0 else float("nan"),
        "teacher_forced_labelled": label_heads(tfm, tfn, np.full_like(tfm, 1e-6), min_score=MIN_SCORE, min_z=0,
                                               min_margin=MIN_MARGIN),
    }
    return DetectorResult(
        name="retrieval", scores=score, null_mean=null_mean, null_std=null_std, labelled=labelled,
        min_score=MIN_SCORE, min_z=MIN_Z,
        data_description=(f"{len(cases)} needle-in-a-haystack prompts (lengths {sorted(set(details['lengths']))} tokens, "
                          f"depths {sorted(set(depths))}), needle = a random 5-digit code; faithful score over the "
                          f"{len(kept)} tests whose greedy answer recalls >= {min_recall} of the code: per decode step, "
                          "+1/|answer| when the head's top-1 position is in the needle and holds the generated token"),
        null_description=(f"the same copy-hit count on {N_NULL_SPANS} random haystack spans of the needle's length per "
                          "test; null_std = standard error over kept tests of the paired difference"),
        n_prompts=len(cases), seed=config.seed,
        extras={"teacher_forced": tfm, "teacher_forced_null": tfn}, details=details,
    )


DETECTOR = register(Detector(
    name="retrieval", stage="ICI", method="retrieval score (needle in a haystack)",
    summary="top-1 attention copies needle tokens during greedy answer generation (faithful) + teacher-forced",
    citation="Wu et al. 2024, arXiv 2404.15574", run=run,
))
