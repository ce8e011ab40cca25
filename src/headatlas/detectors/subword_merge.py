"""Subword-merge heads (Correia et al. 2019, arXiv 1909.00015; Ferrando & Voita 2024,
arXiv 2403.00824): heads that attend from a later piece of a multi-token word to its earlier pieces.

Data: carrier sentences holding long English words (``data/long_words.txt``) kept only where the
model's tokenizer splits them into >= 3 pieces.

Score: from each piece at index >= 2 inside such a word, the attention mass on the same word's
pieces at distance >= 2 (the immediately previous piece is left out, so previous-token heads do not
count). Null (paired, per query): the mass that a word-*initial* token of the same row puts on the
tokens at exactly the same distances (which then belong to other words). A head that attends by
relative position scores the same on both; only within-word attention raises the score.
"""

from __future__ import annotations

import random

from ..errors import InputError
from ..tasks.text import WordSeq, check_english, pack
from ..tasks.words import subword_rows
from .base import Detector, DetectorResult, ScanConfig, label_heads, register
from .spans import SpanSet, collect_masses, paired_stats

MIN_SCORE, MIN_Z, MIN_MARGIN = 0.25, 4.0, 0.15


def subword_items(seqs: list[WordSeq], offset: int, rng: random.Random,
                  min_pieces: int = 3) -> tuple[SpanSet, SpanSet, int]:
    """Target spans (earlier pieces at distance >= 2 of the query's own word) and matched control
    spans (same distances from a word-initial token). Returns ``(target, control, n_items)``."""
    tq: list[tuple[int, int, int, int]] = []
    cq: list[tuple[int, int, int, int]] = []
    n = 0
    for r, s in enumerate(seqs):
        starts = [a for a, _ in s.spans]
        for a, b in s.spans:
            if b - a < min_pieces:
                continue
            for q in range(a + 2, b):
                depth = q - a                      # keys at distances 2..depth
                ctrl = [c for c in starts if c - depth >= 0 and c != a]
                if not ctrl:
                    continue
                c = rng.choice(ctrl)
                tq.extend((n, r, q + offset, k + offset) for k in range(a, q - 1))
                cq.extend((n, r, c + offset, c - d + offset) for d in range(2, depth + 1))
                n += 1
    return SpanSet.build(tq, n), SpanSet.build(cq, n), n


def run(model, config: ScanConfig) -> DetectorResult:
    tok = model.tokenizer
    check_english(tok)
    n_rows = config.n_prompts or (6 if config.quick else 24)
    per_row = 4
    seqs = subword_rows(tok, n_rows, per_row, seed=config.seed)
    while max(len(s) for s in seqs) + 1 > model.info.n_ctx and per_row > 1:
        per_row -= 1
        seqs = subword_rows(tok, n_rows, per_row, seed=config.seed)
    ids, off = pack(tok, seqs, n_ctx=model.info.n_ctx)
    target, control, n = subword_items(seqs, off, random.Random(config.seed + 1))
    if n < 10:
        raise InputError(f"only {n} word-internal queries at depth >= 2; need at least 10")
    m = collect_masses(model, ids, {"target": target, "control": control}, config)
    score, null_mean, null_std = paired_stats(m["target"], m["control"])
    labelled = label_heads(score, null_mean, null_std, min_score=MIN_SCORE, min_z=MIN_Z, min_margin=MIN_MARGIN)
    return DetectorResult(
        name="subword_merge", scores=score, null_mean=null_mean, null_std=null_std, labelled=labelled,
        min_score=MIN_SCORE, min_z=MIN_Z,
        data_description=(f"{n_rows} texts of {per_row} carrier sentences, each with a shipped long word split into "
                          f">= 3 tokens; {n} queries (word pieces at index >= 2); score = attention mass on the same "
                          "word's pieces at distance >= 2"),
        null_description=("paired: mass from a word-initial token of the same text onto the tokens at the same "
                          "distances (other words); null_std = standard error of the paired difference"),
        n_prompts=n_rows, seed=config.seed, details={"n_queries": n, "min_margin": MIN_MARGIN},
    )


DETECTOR = register(Detector(
    name="subword_merge", stage="ICI", method="attention pattern",
    summary="attention from a word's later piece to its earlier pieces (distance >= 2) vs same-distance tokens",
    citation="Correia et al. 2019, arXiv 1909.00015; Ferrando & Voita 2024, arXiv 2403.00824", run=run,
))
