"""Rare-words heads (Voita et al. 2019, arXiv 1905.09418): heads whose top attention points to the
rarest word of the context.

Data: passages of three natural English sentences shipped with the package (``data/sentences.txt``),
word frequencies from ``wordfreq`` (Zipf scale). For each query (the last piece of a word), the
*rarest* earlier word (excluding the query word and the word just before it, so previous-token
heads are not counted) must be clearly rare (Zipf <= 4, at least 0.5 below the next rarest).

Score (Voita's): the fraction of queries whose most-attended earlier word (attention pooled over the
word's pieces; candidates: every word before the adjacent one) is the rarest word.

Matched control (per query): a word of the same prefix with the same number of tokens, clearly
frequent (Zipf >= rarest + 1.5) but not one of the most frequent function words (Zipf <= 6: not
"the", "of", "with", ...; those draw little attention for reasons unrelated to rarity, so a head
that merely prefers content words would pass against them), at the closest word distance to the
rarest word. Per query, the
paired difference is ``[pick == rarest] - [pick == control]``: a head that attends by distance, by
token count or at random picks both equally often. Effect: per prompt (a passage, the resampling
unit) the mean over its queries, averaged over prompts. Null: sign flips of the per-prompt
differences. Label: q <= 0.05 and effect >= ``MIN_EFFECT``. ``extras["mass_effect"]`` is the same
contrast on attention mass. No behavioural metric: the head type is defined by its pattern.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import numpy as np

from ... import stats
from ...errors import InputError
from ...tasks.text import WordSeq, check_english, concat, encode_text, pack, sentences
from ...tasks.words import zipf
from ..base import Detector, DetectorResult, LabelRule, ScanConfig, register
from .spans import SpanSet, collect_masses

if TYPE_CHECKING:
    from ...models import LoadedModel

MAX_RARE_ZIPF = 4.0     # at most ~10 occurrences per million words
MIN_GAP = 0.5           # the rarest word must be this much rarer than the next rarest
CONTROL_GAP = 1.5       # the control word is at least 30x more frequent than the rarest ...
CONTROL_MAX_ZIPF = 6.0  # ... but not a very frequent function word (the, of, and, with: Zipf > 6)
DEFAULT_ROWS, QUICK_ROWS, PER_ROW = 32, 12, 3
MIN_EFFECT = 0.2
RULE = LabelRule(statistic=("[argmax word == rarest word] - [argmax word == matched frequent control word] "
                            "(mean over queries, then over prompts)"), direction="greater", min_effect=MIN_EFFECT)


def rare_word_items(seqs: list[WordSeq], offset: int, rng: random.Random,
                    freq=zipf) -> tuple[SpanSet, list[dict], int]:
    """Candidate spans of every usable query of every row: ``item = query * max_slots + slot`` where
    slot ``j`` is word ``j`` of the row (every word before the word adjacent to the query).

    Returns ``(spans, items, max_slots)``; ``items[i]`` holds ``row``, the query/rare/control words and
    their slots ``rare_slot``, ``control_slot`` and ``n_slots`` (valid candidates). Positions are
    shifted by ``offset`` (1 when BOS is prepended).
    """
    found: list[tuple[int, int, int, int]] = []          # (row, query word, rare, control)
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
            ctrl = [j for j in cands if j != rare and z[rare] + CONTROL_GAP <= z[j] <= CONTROL_MAX_ZIPF
                    and sizes[j] == sizes[rare]]
            if not ctrl:
                continue
            best = min(abs(j - rare) for j in ctrl)
            c = rng.choice([j for j in ctrl if abs(j - rare) == best])
            found.append((r, i, rare, c))
    max_slots = max((i - 1 for _, i, _, _ in found), default=1)
    quads: list[tuple[int, int, int, int]] = []
    items: list[dict] = []
    for n, (r, i, rare, c) in enumerate(found):
        s = seqs[r]
        q = s.spans[i][1] - 1 + offset
        for j in range(i - 1):
            quads.extend((n * max_slots + j, r, q, k + offset) for k in range(*s.spans[j]))
        items.append({"row": r, "query": s.words[i], "rare": s.words[rare], "control": s.words[c],
                      "rare_slot": rare, "control_slot": c, "n_slots": i - 1})
    return SpanSet.build(quads, len(items) * max_slots), items, max_slots


def evaluate_words(word_mass: np.ndarray, items: list[dict], n_rows: int, seed: int, n_perm: int = stats.N_PERM):
    """Everything after the forward pass (pure numpy). ``word_mass [n_items, max_slots, L, H]``: pooled
    attention on each candidate word. Returns ``(tested, scores, control_frac, mass_effect, d [L, B, H])``."""
    n_valid = np.array([it["n_slots"] for it in items])
    rare = np.array([it["rare_slot"] for it in items])[:, None, None]
    ctrl = np.array([it["control_slot"] for it in items])[:, None, None]
    rows = np.array([it["row"] for it in items])
    invalid = np.arange(word_mass.shape[1])[None, :] >= n_valid[:, None]
    top = np.where(invalid[:, :, None, None], -np.inf, word_mass).argmax(axis=1)      # [n_items, L, H]
    hit_rare, hit_ctrl = (top == rare).astype(float), (top == ctrl).astype(float)
    d = stats.items_per_prompt(hit_rare - hit_ctrl, rows, n_rows)
    scores = np.nanmean(stats.items_per_prompt(hit_rare, rows, n_rows), axis=1)
    control_frac = np.nanmean(stats.items_per_prompt(hit_ctrl, rows, n_rows), axis=1)
    m_rare = np.take_along_axis(word_mass, rare[:, None], axis=1)[:, 0]
    m_ctrl = np.take_along_axis(word_mass, ctrl[:, None], axis=1)[:, 0]
    mass_effect = np.nanmean(stats.items_per_prompt(m_rare - m_ctrl, rows, n_rows), axis=1)
    draws = stats.signflip_null(d, n_perm, rng=stats.rng_for(seed, "rare_words:null"))
    tested = stats.evaluate(d, draws, RULE, seed=seed, salt="rare_words", scores=scores)
    return tested, scores, control_frac, mass_effect, d


def passages(tokenizer, n_rows: int, seed: int, per_row: int = PER_ROW) -> list[WordSeq]:
    """``n_rows`` passages of ``per_row`` random shipped sentences (seeded)."""
    rng = random.Random(seed)
    pool = [encode_text(tokenizer, t) for t in sentences()]
    return [concat(rng.sample(pool, per_row), tokenizer) for _ in range(n_rows)]


def run(m: LoadedModel, cfg: ScanConfig) -> DetectorResult:
    tok = m.tokenizer
    check_english(tok)
    n_rows = int(cfg.n_prompts or (QUICK_ROWS if cfg.quick else DEFAULT_ROWS))
    per_row = PER_ROW
    seqs = passages(tok, n_rows, cfg.seed, per_row)
    while max(len(s) for s in seqs) + 1 > m.info.n_ctx and per_row > 1:
        per_row -= 1
        seqs = passages(tok, n_rows, cfg.seed, per_row)
    ids, off = pack(tok, seqs, n_ctx=m.info.n_ctx)
    spans, items, max_slots = rare_word_items(seqs, off, random.Random(cfg.seed + 1))
    if len(items) < 10:
        raise InputError(f"only {len(items)} queries have a clearly rarest earlier word; need at least 10")
    mass = collect_masses(m, ids, {"words": spans}, cfg)["words"]
    L, H = mass.shape[1:]
    tested, scores, control_frac, mass_effect, d = evaluate_words(mass.reshape(len(items), max_slots, L, H), items,
                                                                   n_rows, cfg.seed)
    rare_counts: dict[str, int] = {}
    for it in items:
        rare_counts[it["rare"]] = rare_counts.get(it["rare"], 0) + 1
    return stats.result(
        "rare_words", tested, scores=scores, rule=RULE, null_mean=control_frac, null_std=tested.null_spread,
        data_description=(f"{n_rows} passages of {per_row} shipped English sentences ({ids.shape[1]} tokens max); "
                          f"{len(items)} queries (word-final pieces) whose rarest earlier word (wordfreq Zipf <= "
                          f"{MAX_RARE_ZIPF}, gap >= {MIN_GAP}) is not the adjacent word; score = fraction of queries "
                          "whose most-attended earlier word (pooled over pieces) is the rarest word"),
        null_description=("null mean: the fraction of queries whose most-attended word is the matched control (a "
                          f"frequent word, rarest + {CONTROL_GAP} <= Zipf <= {CONTROL_MAX_ZIPF}, same token count, nearest in word distance); "
                          f"null std and p: sign flips of the per-prompt paired differences ({tested.n_null} draws)"),
        n_prompts=d.shape[1], seed=cfg.seed, extras={"mass_effect": mass_effect},
        details={"n_queries": len(items), "rare_words": dict(sorted(rare_counts.items(), key=lambda kv: -kv[1])[:20])},
    )


DETECTOR = register(Detector(
    name="rare_words", evidence="pattern", metric="", stage="ICI", method="attention pattern (argmax vs matched control)",
    summary="its top attention points to the context's rarest word (wordfreq) more often than to a matched "
            "frequent word",
    citation="Voita et al. 2019, arXiv 1905.09418", run=run,
    no_causal="rare-words heads are defined by where their attention goes; no behaviour of the model is specific "
              "to them, so no ablation check is run",
))
