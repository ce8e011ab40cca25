"""Rare-words heads (Voita et al. 2019, arXiv 1905.09418): heads that attend to the rarest word
of the context.

Data: passages of three natural English sentences shipped with the package (``data/sentences.txt``),
word frequencies from ``wordfreq`` (Zipf scale). For each query (the last piece of a word), the
*rarest* earlier word (excluding the query word and the word just before it, so previous-token
heads are not counted) must be clearly rare (Zipf <= 4, at least 0.5 below the next rarest).

Score: attention mass from the query onto the rarest word's pieces, averaged over queries.
Null (paired, per query): the mass onto a *control* word of the same prefix with the same number
of tokens, clearly frequent (Zipf >= rarest + 1.5), at the closest word distance to the rarest
word. A head that attends by distance or by token count scores the same on both.
"""

from __future__ import annotations

import random

import numpy as np

from ..errors import InputError
from ..tasks.text import WordSeq, check_english, concat, encode_text, pack, sentences
from ..tasks.words import zipf
from .base import Detector, DetectorResult, ScanConfig, label_heads, register
from .spans import SpanSet, collect_masses, paired_stats

MAX_RARE_ZIPF = 4.0     # at most ~10 occurrences per million words
MIN_GAP = 0.5           # the rarest word must be this much rarer than the next rarest
CONTROL_GAP = 1.5       # the control word is at least 30x more frequent than the rarest
MIN_SCORE, MIN_Z, MIN_MARGIN = 0.2, 4.0, 0.1


def rare_word_items(seqs: list[WordSeq], offset: int, rng: random.Random,
                    freq=zipf) -> tuple[SpanSet, SpanSet, list[dict]]:
    """Target and control spans for every usable query of every row.

    Returns ``(target, control, items)``: ``items[i]`` says which words item ``i`` uses.
    Positions are shifted by ``offset`` (1 when BOS is prepended).
    """
    tq: list[tuple[int, int, int, int]] = []
    cq: list[tuple[int, int, int, int]] = []
    items: list[dict] = []
    for r, s in enumerate(seqs):
        z = [freq(w) for w in s.words]
        sizes = [b - a for a, b in s.spans]
        for i in range(3, len(s.words)):
            if z[i] == float("inf"):
                continue
            cands = [j for j in range(i - 1) if z[j] != float("inf")]
            if len(cands) < 3:
                continue
            order = sorted(cands, key=lambda j: z[j])
            rare, nxt = order[0], order[1]
            if z[rare] > MAX_RARE_ZIPF or z[nxt] - z[rare] < MIN_GAP:
                continue
            if s.words[i].lower() == s.words[rare].lower():
                continue
            ctrl = [j for j in cands if j != rare and z[j] >= z[rare] + CONTROL_GAP and sizes[j] == sizes[rare]]
            if not ctrl:
                continue
            best = min(abs(j - rare) for j in ctrl)
            c = rng.choice([j for j in ctrl if abs(j - rare) == best])
            n = len(items)
            q = s.spans[i][1] - 1 + offset
            tq.extend((n, r, q, k + offset) for k in range(*s.spans[rare]))
            cq.extend((n, r, q, k + offset) for k in range(*s.spans[c]))
            items.append({"row": r, "query": s.words[i], "rare": s.words[rare], "control": s.words[c]})
    return SpanSet.build(tq, len(items)), SpanSet.build(cq, len(items)), items


def passages(tokenizer, n_rows: int, seed: int, per_row: int = 3) -> list[WordSeq]:
    """``n_rows`` passages of ``per_row`` random shipped sentences (seeded)."""
    rng = random.Random(seed)
    pool = [encode_text(tokenizer, t) for t in sentences()]
    return [concat(rng.sample(pool, per_row), tokenizer) for _ in range(n_rows)]


def run(model, config: ScanConfig) -> DetectorResult:
    tok = model.tokenizer
    check_english(tok)
    n_rows = config.n_prompts or (8 if config.quick else 32)
    per_row = 3
    seqs = passages(tok, n_rows, config.seed, per_row)
    while max(len(s) for s in seqs) + 1 > model.info.n_ctx and per_row > 1:
        per_row -= 1
        seqs = passages(tok, n_rows, config.seed, per_row)
    ids, off = pack(tok, seqs, n_ctx=model.info.n_ctx)
    target, control, items = rare_word_items(seqs, off, random.Random(config.seed + 1))
    if len(items) < 10:
        raise InputError(f"only {len(items)} queries have a clearly rarest earlier word; need at least 10")
    m = collect_masses(model, ids, {"target": target, "control": control}, config)
    score, null_mean, null_std = paired_stats(m["target"], m["control"])
    labelled = label_heads(score, null_mean, null_std, min_score=MIN_SCORE, min_z=MIN_Z, min_margin=MIN_MARGIN)
    rare_counts: dict[str, int] = {}
    for it in items:
        rare_counts[it["rare"]] = rare_counts.get(it["rare"], 0) + 1
    return DetectorResult(
        name="rare_words", scores=score, null_mean=null_mean, null_std=null_std, labelled=labelled,
        min_score=MIN_SCORE, min_z=MIN_Z,
        data_description=(f"{n_rows} passages of {per_row} shipped English sentences ({ids.shape[1]} tokens max); "
                          f"{len(items)} queries (word-final pieces) whose rarest earlier word (wordfreq Zipf <= "
                          f"{MAX_RARE_ZIPF}, gap >= {MIN_GAP}) is not the adjacent word; score = attention mass on it"),
        null_description=("paired: mass on a frequent control word (Zipf >= rarest + 1.5) of the same prefix with the "
                          "same token count, nearest in word distance; null_std = standard error of the paired difference"),
        n_prompts=n_rows, seed=config.seed,
        details={"n_queries": len(items), "min_margin": MIN_MARGIN,
                 "rare_words": dict(sorted(rare_counts.items(), key=lambda kv: -kv[1])[:20])},
    )


DETECTOR = register(Detector(
    name="rare_words", stage="ICI", method="attention pattern",
    summary="attention mass on the context's rarest word (wordfreq) vs a frequent word at similar distance",
    citation="Voita et al. 2019, arXiv 1905.09418", run=run,
))
