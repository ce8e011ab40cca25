"""Syntactic heads (Voita et al. 2019, arXiv 1905.09418; Clark et al. 2019): heads whose strongest
attention follows a dependency relation.

Data: templated sentences with arcs known by construction (``data/syntax.json``; relations det,
amod, nsubj, obj, advmod, case, obl, nmod, aux, cop). Decoder-only attention only looks back, so
each arc is scored from its *later* word (its last piece is the query) to its earlier word
(dependent -> head when the head comes first, head -> dependent otherwise). Attention is pooled
over each earlier word's pieces; candidates are the earlier words of the same sentence.

Score per relation: the fraction of arcs whose top-attended candidate word is the arc's other word.
Null: Voita's fixed-offset baseline, i.e. always pointing at the relation's most frequent relative
word offset. Per head the reported relation is the one with the largest margin over its baseline;
``null_std`` is the standard error of the paired (head correct - baseline correct) difference.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from ..errors import InputError
from ..tasks.syntax import Arc, syntax_rows
from ..tasks.text import WordSeq, check_english, pack
from .base import Detector, DetectorResult, ScanConfig, label_heads, register
from .spans import SpanSet, collect_masses

MIN_SCORE, MIN_Z, MIN_MARGIN = 0.4, 4.0, 0.15
MIN_ARCS = 15


def candidate_spans(seqs: list[WordSeq], arcs: list[list[Arc]], offset: int) -> tuple[SpanSet, list[Arc], np.ndarray, int]:
    """Spans ``item = arc * max_slots + slot`` for every candidate word ``slot`` (earlier words of the
    arc's sentence, slot 0 = the sentence's first word). Returns ``(spans, flat_arcs,
    target_slot [n_arcs], max_slots)``."""
    flat: list[tuple[int, Arc]] = [(r, a) for r, row in enumerate(arcs) for a in row]
    max_slots = max((a.later - a.sentence_start for _, a in flat), default=1)
    quads = []
    target = np.zeros(len(flat), dtype=np.int64)
    for i, (r, a) in enumerate(flat):
        s = seqs[r]
        q = s.spans[a.later][1] - 1 + offset
        for slot, w in enumerate(range(a.sentence_start, a.later)):
            quads.extend((i * max_slots + slot, r, q, k + offset) for k in range(*s.spans[w]))
        target[i] = a.earlier - a.sentence_start
    return SpanSet.build(quads, len(flat) * max_slots), [a for _, a in flat], target, max_slots


def top_word_correct(word_mass: np.ndarray, n_valid: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``word_mass [n_arcs, max_slots, ...]`` pooled attention per candidate word; slots ``>= n_valid``
    are ignored. Returns ``[n_arcs, ...]`` booleans: the top word is the target."""
    slots = np.arange(word_mass.shape[1])
    invalid = slots[None, :] >= n_valid[:, None]
    masked = np.where(invalid.reshape(invalid.shape + (1,) * (word_mass.ndim - 2)), -np.inf, word_mass)
    top = masked.argmax(axis=1)
    return top == target.reshape((-1,) + (1,) * (word_mass.ndim - 2))


def fixed_offset_baseline(flat_arcs: list[Arc], relations: list[str]) -> tuple[np.ndarray, dict[str, int]]:
    """Per arc, whether its relation's most frequent word offset points at the right word."""
    modes = {r: Counter(a.offset for a in flat_arcs if a.relation == r).most_common(1)[0][0] for r in relations}
    return np.array([a.offset == modes[a.relation] for a in flat_arcs]), modes


def relation_scores(correct: np.ndarray, base: np.ndarray, rel_idx: np.ndarray, n_rel: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``correct [n_arcs, L, H]`` (bool), ``base [n_arcs]`` (bool), ``rel_idx [n_arcs]`` ->
    ``acc [R, L, H]``, ``baseline [R]``, ``se [R, L, H]`` (standard error of the paired difference)."""
    acc = np.zeros((n_rel,) + correct.shape[1:])
    se = np.zeros_like(acc)
    baseline = np.zeros(n_rel)
    for r in range(n_rel):
        sel = rel_idx == r
        c = correct[sel].astype(float)
        b = base[sel].astype(float)
        acc[r] = c.mean(axis=0)
        baseline[r] = b.mean()
        d = c - b.reshape((-1,) + (1,) * (c.ndim - 1))
        se[r] = d.std(axis=0, ddof=1) / np.sqrt(len(d)) if len(d) > 1 else np.nan
    return acc, baseline, se


def run(model, config: ScanConfig) -> DetectorResult:
    tok = model.tokenizer
    check_english(tok)
    n_rows = config.n_prompts or (8 if config.quick else 32)
    per_row = 4
    seqs, arcs = syntax_rows(tok, n_rows, per_row, seed=config.seed)
    while max(len(s) for s in seqs) + 1 > model.info.n_ctx and per_row > 1:
        per_row -= 1
        seqs, arcs = syntax_rows(tok, n_rows, per_row, seed=config.seed)
    ids, off = pack(tok, seqs, n_ctx=model.info.n_ctx)
    spans, flat, target, max_slots = candidate_spans(seqs, arcs, off)
    counts = Counter(a.relation for a in flat)
    relations = sorted(r for r, c in counts.items() if c >= MIN_ARCS)
    if not relations:
        raise InputError(f"no relation has {MIN_ARCS} arcs; increase the number of prompts")
    keep = np.array([a.relation in relations for a in flat])
    mass = collect_masses(model, ids, {"words": spans}, config)["words"]          # [n_arcs*slots, L, H]
    L, H = mass.shape[1:]
    word_mass = mass.reshape(len(flat), max_slots, L, H)
    n_valid = np.array([a.later - a.sentence_start for a in flat])
    correct = top_word_correct(word_mass, n_valid, target)[keep]
    kept = [a for a, k in zip(flat, keep) if k]
    base, modes = fixed_offset_baseline(kept, relations)
    rel_idx = np.array([relations.index(a.relation) for a in kept])
    acc, baseline, se = relation_scores(correct, base, rel_idx, len(relations))
    best = (acc - baseline[:, None, None]).argmax(axis=0)                            # [L, H]
    li, hi = np.indices((L, H))
    score, null_mean, null_std = acc[best, li, hi], baseline[best], se[best, li, hi]
    labelled = label_heads(score, null_mean, null_std, min_score=MIN_SCORE, min_z=MIN_Z, min_margin=MIN_MARGIN)
    extras = {"best_relation": best.astype(float)}
    extras.update({f"acc_{r}": acc[i] for i, r in enumerate(relations)})
    return DetectorResult(
        name="syntactic", scores=score, null_mean=null_mean, null_std=null_std, labelled=labelled,
        min_score=MIN_SCORE, min_z=MIN_Z,
        data_description=(f"{n_rows} rows of {per_row} templated sentences with known dependency arcs "
                          f"({len(kept)} arcs); per relation, fraction of arcs whose top-attended earlier word "
                          "(pooled over pieces, query = last piece of the later word) is the arc's other word; "
                          "score = the head's best relation (extras best_relation indexes details relations)"),
        null_description=("fixed-offset baseline of the same relation (always the most frequent word offset); "
                          "null_std = standard error of the paired difference over arcs"),
        n_prompts=n_rows, seed=config.seed, extras=extras,
        details={"relations": relations, "baseline": {r: float(b) for r, b in zip(relations, baseline)},
                 "modal_offset": {r: int(modes[r]) for r in relations},
                 "n_arcs": {r: int(counts[r]) for r in relations}, "min_margin": MIN_MARGIN,
                 "best_relation_of_labelled": {f"L{l}H{h}": relations[int(best[l, h])] for l, h in labelled}},
    )


DETECTOR = register(Detector(
    name="syntactic", stage="ICI", method="attention pattern",
    summary="top attention follows a dependency relation (best relation per head) vs the fixed-offset baseline",
    citation="Voita et al. 2019, arXiv 1905.09418; Clark et al. 2019, W19-4828", run=run,
))
