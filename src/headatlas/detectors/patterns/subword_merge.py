"""Subword-merge heads (Correia et al. 2019, arXiv 1909.00015; Ferrando & Voita 2024,
arXiv 2403.00824): heads that attend from a later piece of a multi-token word to its earlier pieces.

Data: carrier sentences holding long English words (``data/long_words.txt``) kept only where the
model's tokenizer splits them into >= 3 pieces.

Score: from each non-initial piece of such a word (piece ``j >= 1``), the attention mass on the same
word's earlier pieces (distances ``1..j``), averaged over queries.

Matched control (per query): the mass that a word-*initial* token ``c`` of the same text (the one
nearest to the query) puts on the tokens at exactly the same distances ``1..j`` (which then belong to
other words). A head that attends by relative position (a previous-token head, a fixed-offset head)
gives both the same mass and cancels out; only attention that stays inside the word raises the score.

Effect: per prompt (a text, the resampling unit), the mean over its queries of target minus control
mass; averaged over prompts. Null: sign flips of the per-prompt differences (target and control are
exchangeable for a head that ignores word boundaries). Label: q <= 0.05 and effect >= ``MIN_EFFECT``.
``details["previous_token_overlap"]`` lists labelled heads that the ``previous_token`` detector also
labels (when it ran in the same scan). No behavioural metric: the head type is defined by its pattern.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ... import stats
from ...errors import InputError
from ...tasks.text import WordSeq, check_english, pack
from ...tasks.words import subword_rows
from ..base import Detector, DetectorResult, LabelRule, ScanConfig, register
from .spans import SpanSet, collect_masses

if TYPE_CHECKING:
    from ...models import LoadedModel

DEFAULT_ROWS, QUICK_ROWS, PER_ROW = 24, 12, 4
MIN_EFFECT = 0.15
RULE = LabelRule(statistic=("mass from a word's later piece on its earlier pieces minus the mass from the nearest "
                            "word-initial token on the tokens at the same distances (mean over prompts)"),
                 direction="greater", min_effect=MIN_EFFECT)


def subword_items(seqs: list[WordSeq], offset: int, rng: np.random.Generator, min_pieces: int = 2
                  ) -> tuple[SpanSet, SpanSet, np.ndarray]:
    """Target spans (the earlier pieces of the query's own word, distances ``1..j``) and matched control
    spans (the tokens at the same distances from the nearest word-initial token of another word, whose
    keys all belong to other words). Returns ``(target, control, row of each item)``."""
    tq: list[tuple[int, int, int, int]] = []
    cq: list[tuple[int, int, int, int]] = []
    rows: list[int] = []
    for r, s in enumerate(seqs):
        starts = [a for a, _ in s.spans]
        for a, b in s.spans:
            if b - a < min_pieces:
                continue
            for q in range(a + 1, b):
                depth = q - a                                 # keys at distances 1..depth
                ctrl = [c for c in starts if c - depth >= 0 and c != a]
                if not ctrl:
                    continue
                gap = [abs(c - q) for c in ctrl]
                near = [c for c, g in zip(ctrl, gap) if g == min(gap)]
                c = near[int(rng.integers(len(near)))] if len(near) > 1 else near[0]
                n = len(rows)
                tq.extend((n, r, q + offset, k + offset) for k in range(a, q))
                cq.extend((n, r, c + offset, c - d + offset) for d in range(1, depth + 1))
                rows.append(r)
    return SpanSet.build(tq, len(rows)), SpanSet.build(cq, len(rows)), np.array(rows, dtype=np.int64)


def evaluate_masses(target: np.ndarray, control: np.ndarray, rows: np.ndarray, n_rows: int, seed: int,
                    n_perm: int = stats.N_PERM):
    """Everything after the forward pass (pure numpy): ``target``/``control`` ``[n_items, L, H]``.
    Returns ``(tested, scores, control_mean, d [L, B, H])``."""
    d = stats.items_per_prompt(target - control, rows, n_rows)
    scores = np.nanmean(stats.items_per_prompt(target, rows, n_rows), axis=1)
    control_mean = np.nanmean(stats.items_per_prompt(control, rows, n_rows), axis=1)
    draws = stats.signflip_null(d, n_perm, rng=stats.rng_for(seed, "subword_merge:null"))
    tested = stats.evaluate(d, draws, RULE, seed=seed, salt="subword_merge", scores=scores)
    return tested, scores, control_mean, d


def previous_token_overlap(cfg: ScanConfig, labelled: list[tuple[int, int]], effect: np.ndarray) -> dict:
    """The labelled heads that ``previous_token`` also labels, and how previous-token heads fare here."""
    prev = cfg.results.get("previous_token")
    if prev is None or prev.skipped:
        return {"previous_token": "not run in this scan"}
    p = [(int(a), int(b)) for a, b in prev.labelled]
    mine = set(labelled)
    return {"previous_token_labelled": len(p),
            "previous_token_overlap": [[a, b] for a, b in p if (a, b) in mine],
            "previous_token_effect_here": {f"L{a}H{b}": round(float(effect[a, b]), 4) for a, b in p}}


def run(m: LoadedModel, cfg: ScanConfig) -> DetectorResult:
    tok = m.tokenizer
    check_english(tok)
    n_rows = int(cfg.n_prompts or (QUICK_ROWS if cfg.quick else DEFAULT_ROWS))
    per_row = PER_ROW
    seqs = subword_rows(tok, n_rows, per_row, seed=cfg.seed)
    while max(len(s) for s in seqs) + 1 > m.info.n_ctx and per_row > 1:
        per_row -= 1
        seqs = subword_rows(tok, n_rows, per_row, seed=cfg.seed)
    ids, off = pack(tok, seqs, n_ctx=m.info.n_ctx)
    target, control, rows = subword_items(seqs, off, stats.rng_for(cfg.seed, "subword_merge:controls"))
    if len(rows) < 10:
        raise InputError(f"only {len(rows)} word-internal queries; need at least 10")
    masses = collect_masses(m, ids, {"target": target, "control": control}, cfg)
    tested, scores, control_mean, d = evaluate_masses(masses["target"], masses["control"], rows, n_rows, cfg.seed)
    details = {"n_queries": int(len(rows)), **previous_token_overlap(cfg, tested.labelled, tested.effect)}
    return stats.result(
        "subword_merge", tested, scores=scores, rule=RULE, null_mean=control_mean, null_std=tested.null_spread,
        data_description=(f"{n_rows} texts of {per_row} carrier sentences, each with a shipped long word split into "
                          f">= 3 tokens; {len(rows)} queries (every non-initial piece); score = attention mass on the "
                          "same word's earlier pieces"),
        null_description=("null mean: mass from the nearest word-initial token onto the tokens at the same distances "
                          "(other words); null std and p: sign flips of the per-prompt paired differences "
                          f"({tested.n_null} draws)"),
        n_prompts=d.shape[1], seed=cfg.seed, extras={"control_mass": control_mean}, details=details)


DETECTOR = register(Detector(
    name="subword_merge", evidence="pattern", metric="", stage="ICI", method="attention pattern (matched same-distance control)",
    summary="attention from a word's later piece to its earlier pieces vs the same distances across a word boundary",
    citation="Correia et al. 2019, arXiv 1909.00015; Ferrando & Voita 2024, arXiv 2403.00824", run=run,
    requires=("previous_token",),
    no_causal="subword-merge heads are defined by where their attention goes inside multi-token words; no "
              "behaviour of the model is specific to them, so no ablation check is run",
))
