"""Syntactic heads (Voita et al. 2019, arXiv 1905.09418; Clark et al. 2019, W19-4828): heads whose
strongest attention follows a dependency relation.

Data: templated sentences with arcs known by construction (``data/syntax.json``, dealt from shuffled
decks). Decoder-only attention only looks back, so each arc is scored from its *later* word (its last
piece is the query) to its earlier word. Attention is pooled over each earlier word's pieces; the
candidates are the earlier words of the arc's own sentence, and the head's pick is the candidate with
the most attention (Voita's argmax).

Matched control (per arc): another earlier word of the same sentence of the *same word class* as the
gold word (a noun for nsubj, a determiner for det, ...), the one nearest to the gold word's distance
from the query (ties broken by a seeded draw). Arcs without such a word are not scored. Per arc, the
paired difference is ``[pick == gold] - [pick == control]``: a head that attends by word class, by
"first noun of the sentence" or by distance picks the control as often as the gold word on data where
the gold word is the farther of the two in about half of the arcs. The templates are built for that:
half of the sentences with a second noun before the verb put it first (fronted prepositional phrase,
fronted object), so the first noun is not the subject. A relation is tested only where that balance
holds (``POSITION_BALANCE``); the others are listed in ``details["untested_relations"]``.

Statistic (best of the ``K`` tested relations): per prompt (a row of sentences, the resampling unit)
and relation, the mean paired difference over its arcs; the head's effect is the best relation's mean
over prompts. Null: sign flips per prompt shared by every relation and head, with the same max over
relations in every draw (max-statistic null). Score: the head's accuracy (``pick == gold``) on the
best relation's arcs. Label: q <= 0.05, effect >= ``MIN_EFFECT``, and the accuracy beats Voita's
fixed-offset baseline (always the relation's most frequent word offset) by ``MIN_OFFSET_MARGIN``
(``extras["offset_margin"]``), so a previous-token or fixed-offset head does not pass a relation whose
arcs sit mostly at one distance. ``extras["relation"]`` names each head's best relation.
No behavioural metric: syntactic heads are defined by their attention pattern.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

from ... import stats
from ...errors import InputError
from ...tasks.syntax import Arc, syntax_batch
from ...tasks.text import WordSeq, check_english, pack
from ..base import Detector, DetectorResult, LabelRule, ScanConfig, register
from .spans import SpanSet, collect_masses

if TYPE_CHECKING:
    from ...models import LoadedModel

DEFAULT_ROWS, QUICK_ROWS, PER_ROW = 32, 12, 4
MIN_ARCS = 15                 # controlled arcs a relation needs to be tested
POSITION_BALANCE = (0.3, 0.7)  # share of a relation's controlled arcs whose gold word is the farther one
MIN_EFFECT = 0.3
MIN_OFFSET_MARGIN = 0.1
RULE = LabelRule(statistic=("best relation's mean over prompts of [argmax word == gold] - [argmax word == matched "
                            "control word] (same class, nearest distance)"),
                 direction="greater", min_effect=MIN_EFFECT, extra_min=(("offset_margin", MIN_OFFSET_MARGIN),))


def candidate_spans(seqs: list[WordSeq], arcs: list[list[Arc]], offset: int
                    ) -> tuple[SpanSet, list[tuple[int, Arc]], np.ndarray, int]:
    """Spans ``item = arc * max_slots + slot`` for every candidate word ``slot`` (earlier words of the
    arc's sentence, slot 0 = the sentence's first word). Returns ``(spans, flat [(row, arc)],
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
    return SpanSet.build(quads, len(flat) * max_slots), flat, target, max_slots


def matched_controls(flat: list[tuple[int, Arc]], classes: list[tuple[str, ...]], rng: np.random.Generator
                     ) -> np.ndarray:
    """Per arc, the control's candidate slot (``-1``: none): an earlier word of the arc's sentence, not
    the gold word, of the gold word's class, nearest to the gold word's distance from the query."""
    out = np.full(len(flat), -1, dtype=np.int64)
    for i, (r, a) in enumerate(flat):
        cls = classes[r]
        d_gold = a.later - a.earlier
        cands = [w for w in range(a.sentence_start, a.later) if w != a.earlier and cls[w] == cls[a.earlier]]
        if not cands:
            continue
        gap = [abs((a.later - w) - d_gold) for w in cands]
        best = [w for w, g in zip(cands, gap) if g == min(gap)]
        w = best[int(rng.integers(len(best)))] if len(best) > 1 else best[0]
        out[i] = w - a.sentence_start
    return out


def top_slot(word_mass: np.ndarray, n_valid: np.ndarray) -> np.ndarray:
    """``word_mass [n_arcs, max_slots, ...]`` pooled attention per candidate word (slots ``>= n_valid``
    ignored) -> ``[n_arcs, ...]`` the slot of the most-attended candidate."""
    slots = np.arange(word_mass.shape[1])
    invalid = slots[None, :] >= n_valid[:, None]
    masked = np.where(invalid.reshape(invalid.shape + (1,) * (word_mass.ndim - 2)), -np.inf, word_mass)
    return masked.argmax(axis=1)


def per_prompt(values: np.ndarray, rows: np.ndarray, rel: np.ndarray, n_rows: int, n_rel: int) -> np.ndarray:
    """``values [n_arcs, L, H]`` -> ``[L, n_rows, H, n_rel]``: mean over each row's arcs of each relation
    (NaN where a row has none)."""
    L, H = values.shape[1:]
    total = np.zeros((n_rows, n_rel, L, H))
    count = np.zeros((n_rows, n_rel))
    np.add.at(total, (rows, rel), values)
    np.add.at(count, (rows, rel), 1)
    with np.errstate(invalid="ignore"):
        mean = total / count[:, :, None, None]
    return np.transpose(mean, (2, 0, 3, 1))


def relation_table(flat: list[tuple[int, Arc]], ctrl: np.ndarray) -> dict[str, dict[str, float]]:
    """Per relation: arcs, controlled arcs, share of controlled arcs whose gold word is the farther one,
    and the modal word offset of the controlled arcs with its share (Voita's fixed-offset baseline)."""
    out: dict[str, dict[str, float]] = {}
    target = np.array([a.earlier - a.sentence_start for _, a in flat])
    for rel in sorted({a.relation for _, a in flat}):
        idx = [i for i, (_, a) in enumerate(flat) if a.relation == rel]
        ok = [i for i in idx if ctrl[i] >= 0]
        farther = [target[i] < ctrl[i] for i in ok]
        offsets = Counter(flat[i][1].offset for i in ok)
        mode, n_mode = offsets.most_common(1)[0] if ok else (0, 0)
        out[rel] = {"arcs": len(idx), "controlled": len(ok), "gold_farther": float(np.mean(farther)) if ok else np.nan,
                    "modal_offset": int(mode), "offset_baseline": n_mode / len(ok) if ok else np.nan}
    return out


def relations_to_test(table: dict[str, dict[str, float]]) -> tuple[list[str], dict[str, str]]:
    """Relations with enough controlled arcs whose gold word is not mostly the nearer or the farther one."""
    lo, hi = POSITION_BALANCE
    keep, why = [], {}
    for rel, t in table.items():
        if t["controlled"] < MIN_ARCS:
            why[rel] = f"{int(t['controlled'])} arcs with a same-class control (< {MIN_ARCS})"
        elif not (lo <= t["gold_farther"] <= hi):
            why[rel] = (f"gold word is the farther of gold/control in {t['gold_farther']:.2f} of its arcs (outside "
                        f"{lo}-{hi}): position alone would separate them")
        else:
            keep.append(rel)
    return keep, why


def score_arcs(top: np.ndarray, target: np.ndarray, ctrl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``top [n_arcs, L, H]`` -> gold hits and paired differences ``[n_arcs, L, H]`` (float)."""
    shape = (-1,) + (1,) * (top.ndim - 1)
    gold = (top == target.reshape(shape)).astype(float)
    return gold, gold - (top == ctrl.reshape(shape)).astype(float)


def evaluate_arcs(top: np.ndarray, flat: list[tuple[int, Arc]], target: np.ndarray, ctrl: np.ndarray,
                  n_rows: int, seed: int, n_perm: int = stats.N_PERM):
    """Everything after the forward pass (pure numpy; the tests call it on planted patterns).

    ``top [n_arcs, L, H]``: each head's picked slot per arc. Returns ``(tested, scores, extras, details,
    d [L, B, H, K], relations)``."""
    table = relation_table(flat, ctrl)
    relations, untested = relations_to_test(table)
    if not relations:
        raise InputError("no relation has enough position-balanced arcs with a matched control; "
                         f"increase the number of prompts ({untested})")
    use = np.array([ctrl[i] >= 0 and a.relation in relations for i, (_, a) in enumerate(flat)])
    rows = np.array([r for r, _ in flat])[use]
    rel = np.array([relations.index(a.relation) for i, (_, a) in enumerate(flat) if use[i]])
    gold, diff = score_arcs(top[use], target[use], ctrl[use])
    K = len(relations)
    d = per_prompt(diff, rows, rel, n_rows, K)                            # [L, B, H, K]
    L, H = top.shape[1:]
    acc = np.stack([gold[rel == k].mean(0) for k in range(K)], -1)       # [L, H, K] over arcs
    eff_k = np.nanmean(d, axis=1)                                         # [L, H, K]
    best = stats.best_candidate(d)                                        # [L, H]
    pick = best[..., None]
    scores = np.take_along_axis(acc, pick, -1)[..., 0]
    base = np.array([table[r]["offset_baseline"] for r in relations])
    margin = scores - base[best]
    extras: dict[str, np.ndarray] = {
        "relation": np.array(relations)[best], "relation_index": best.astype(float), "offset_margin": margin,
        "offset_baseline": base[best]}
    for k, r in enumerate(relations):
        extras[f"acc_{r}"] = acc[..., k]
        extras[f"effect_{r}"] = eff_k[..., k]
    draws = stats.signflip_null(d, n_perm, rng=stats.rng_for(seed, "syntactic:null"))
    tested = stats.evaluate(d, draws, RULE, seed=seed, salt="syntactic", scores=scores, extras=extras)
    would = stats.apply_rule(LabelRule(statistic="", min_effect=RULE.min_effect), effect=tested.effect,
                             q=tested.q_value, scores=scores)
    details = {
        "relations": relations, "untested_relations": untested,
        "relation_table": {r: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in t.items()}
                           for r, t in table.items()},
        "min_offset_margin": MIN_OFFSET_MARGIN, "position_balance": list(POSITION_BALANCE),
        "relation_of_labelled": {f"L{a}H{b}": relations[int(best[a, b])] for a, b in tested.labelled},
        "fixed_offset_only": [[int(a), int(b)] for a, b in zip(*np.nonzero(would))
                              if (int(a), int(b)) not in set(tested.labelled)],
        "n_arcs_tested": int(use.sum()),
    }
    return tested, scores, extras, details, d, relations


def run(m: LoadedModel, cfg: ScanConfig) -> DetectorResult:
    tok = m.tokenizer
    check_english(tok)
    n_rows = int(cfg.n_prompts or (QUICK_ROWS if cfg.quick else DEFAULT_ROWS))
    per_row = PER_ROW
    batch = syntax_batch(tok, n_rows, per_row, seed=cfg.seed)
    while max(len(s) for s in batch.seqs) + 1 > m.info.n_ctx and per_row > 1:
        per_row -= 1
        batch = syntax_batch(tok, n_rows, per_row, seed=cfg.seed)
    ids, off = pack(tok, batch.seqs, n_ctx=m.info.n_ctx)
    spans, flat, target, max_slots = candidate_spans(batch.seqs, batch.arcs, off)
    ctrl = matched_controls(flat, batch.classes, stats.rng_for(cfg.seed, "syntactic:controls"))
    # fail before the forward pass when no relation can be tested
    relations, untested = relations_to_test(relation_table(flat, ctrl))
    if not relations:
        raise InputError("no relation has enough position-balanced arcs with a matched control; "
                         f"increase the number of prompts ({untested})")
    mass = collect_masses(m, ids, {"words": spans}, cfg)["words"]          # [n_arcs*slots, L, H]
    L, H = mass.shape[1:]
    n_valid = np.array([a.later - a.sentence_start for _, a in flat])
    top = top_slot(mass.reshape(len(flat), max_slots, L, H), n_valid)
    tested, scores, extras, details, d, relations = evaluate_arcs(top, flat, target, ctrl, n_rows, cfg.seed)
    control_acc = _control_accuracy(top, flat, ctrl, relations, extras["relation_index"].astype(int))
    details["templates"] = len({t for row in batch.templates for t in row})
    return stats.result(
        "syntactic", tested, scores=scores, rule=RULE, null_mean=control_acc,
        null_std=tested.null_spread,
        data_description=(f"{n_rows} rows of {per_row} templated sentences with dependency arcs known by construction "
                          f"({details['n_arcs_tested']} arcs of {len(relations)} relations with a same-class control); "
                          "argmax over the earlier words of the sentence (attention pooled over pieces, query = last "
                          "piece of the later word); score = accuracy on the head's best relation "
                          "(extras['relation'])"),
        null_description=("null mean: the head's argmax accuracy on the matched control words of its best relation; "
                          "null std and p: sign flips of the per-prompt paired differences, shared across relations, "
                          f"best relation taken in every draw ({tested.n_null} draws)"),
        n_prompts=n_rows, seed=cfg.seed, extras=extras, details=details)


def _control_accuracy(top: np.ndarray, flat: list[tuple[int, Arc]], ctrl: np.ndarray, relations: list[str],
                      best: np.ndarray) -> np.ndarray:
    """``[L, H]`` how often each head picks the control word on the arcs of its best relation."""
    L, H = top.shape[1:]
    out = np.full((L, H), np.nan)
    for k, r in enumerate(relations):
        idx = [i for i, (_, a) in enumerate(flat) if a.relation == r and ctrl[i] >= 0]
        hit = (top[idx] == ctrl[idx][:, None, None]).mean(0)
        out = np.where(best == k, hit, out)
    return out


DETECTOR = register(Detector(
    name="syntactic", evidence="pattern", metric="", stage="ICI", method="attention pattern (argmax vs matched control)",
    summary="top attention follows a dependency relation (best relation per head) vs a same-class, "
            "distance-matched control word",
    citation="Voita et al. 2019, arXiv 1905.09418; Clark et al. 2019, W19-4828", run=run,
    no_causal="syntactic heads are defined by where their attention goes on parsed text; the model has no "
              "behaviour specific to one dependency relation to ablate against, so no ablation check is run",
))
