"""Coherence heads (Guo et al. SIGIR 2024, ASMR): heads whose output linearly predicts whether the model answers
a non-English question in the question's language.

Data (authored, :data:`CONCEPTS`): short questions in French and Spanish ("Question : De quelle couleur est la
neige ? Réponse :") whose one-word answer differs between the question's language and English ("blanche" vs
"white"). Label (forced choice, teacher-forced): 1 when the model gives the answer in the question's language
a higher log-probability than the same answer in English. Features: ``z`` at the prompt's last token. Each
question is its own group; the null permutes labels within a language (so a head that only tells French from
Spanish gains nothing). Concepts are split 3/4 (probe) and 1/4 (held out for the causal check).

Score: held-out balanced probe accuracy (grouped 5-fold CV); null: 9,999 permutations; BH q; label: q <= 0.05 and
accuracy >= null mean + 0.1. Refuses ("not found: ...") when fewer than ``MIN_CLASS`` probe questions fall in
either class (e.g. a model that always prefers the English answer).

Causal check (ASMR steers probe directions, ITI-style): the top labelled heads shifted 5 sigma along their
mass-mean coherence direction raise ``log P(answer in the question's language) - log P(English answer)`` on
the held-out concepts' questions more than 20 layer-matched random sets with their own directions.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ...errors import InputError
from ...methods.probing import ProbeResult, capture_heads, completion_logodds, resolve_positions, token_rows
from ...tasks.text import check_english
from ..base import NOT_FOUND, Detector, LabelRule, ScanConfig, SharedPass, register
from .common import fit_probes, probe_run
from .truthfulness import iti_behaviour, iti_check

if TYPE_CHECKING:
    from ...models import LoadedModel

MIN_CLASS = 8
PROMPT = {"fr": "Question : {q} Réponse :", "es": "Pregunta: {q} Respuesta:"}

# (French question, French answer, Spanish question, Spanish answer, English answer)
CONCEPTS = (
    ("De quelle couleur est la neige ?", "blanche", "¿De qué color es la nieve?", "blanca", "white"),
    ("De quelle couleur est l'herbe ?", "verte", "¿De qué color es la hierba?", "verde", "green"),
    ("De quelle couleur est le ciel ?", "bleu", "¿De qué color es el cielo?", "azul", "blue"),
    ("De quelle couleur est le sang ?", "rouge", "¿De qué color es la sangre?", "roja", "red"),
    ("De quelle couleur est le charbon ?", "noir", "¿De qué color es el carbón?", "negro", "black"),
    ("De quelle couleur est une banane ?", "jaune", "¿De qué color es un plátano?", "amarillo", "yellow"),
    ("Quel est le contraire de chaud ?", "froid", "¿Cuál es el contrario de caliente?", "frío", "cold"),
    ("Quel est le contraire de jour ?", "nuit", "¿Cuál es el contrario de día?", "noche", "night"),
    ("Quel est le contraire de grand ?", "petit", "¿Cuál es el contrario de grande?", "pequeño", "small"),
    ("Quel est le contraire de bon ?", "mauvais", "¿Cuál es el contrario de bueno?", "malo", "bad"),
    ("Quel est le contraire de rapide ?", "lent", "¿Cuál es el contrario de rápido?", "lento", "slow"),
    ("Quel est le contraire de vieux ?", "jeune", "¿Cuál es el contrario de viejo?", "joven", "young"),
    ("Quel est le contraire de ouvert ?", "fermé", "¿Cuál es el contrario de abierto?", "cerrado", "closed"),
    ("Quel est le contraire de riche ?", "pauvre", "¿Cuál es el contrario de rico?", "pobre", "poor"),
    ("Quel est le contraire de haut ?", "bas", "¿Cuál es el contrario de arriba?", "abajo", "down"),
    ("Quel nombre vient après un ?", "deux", "¿Qué número viene después de uno?", "dos", "two"),
    ("Quel nombre vient après deux ?", "trois", "¿Qué número viene después de dos?", "tres", "three"),
    ("Quel nombre vient après trois ?", "quatre", "¿Qué número viene después de tres?", "cuatro", "four"),
    ("Quel nombre vient après quatre ?", "cinq", "¿Qué número viene después de cuatro?", "cinco", "five"),
    ("Quel nombre vient après six ?", "sept", "¿Qué número viene después de seis?", "siete", "seven"),
    ("Quel nombre vient après sept ?", "huit", "¿Qué número viene después de siete?", "ocho", "eight"),
    ("Quel nombre vient après huit ?", "neuf", "¿Qué número viene después de ocho?", "nueve", "nine"),
    ("Quel nombre vient après neuf ?", "dix", "¿Qué número viene después de nueve?", "diez", "ten"),
    ("Quel animal fait miaou ?", "chat", "¿Qué animal hace miau?", "gato", "cat"),
    ("Quel animal aboie ?", "chien", "¿Qué animal ladra?", "perro", "dog"),
    ("Quel animal fait meuh ?", "vache", "¿Qué animal hace mu?", "vaca", "cow"),
    ("Quel jour vient après lundi ?", "mardi", "¿Qué día viene después del lunes?", "martes", "Tuesday"),
    ("Quel jour vient après mardi ?", "mercredi", "¿Qué día viene después del martes?", "miércoles", "Wednesday"),
    ("Quel jour vient après vendredi ?", "samedi", "¿Qué día viene después del viernes?", "sábado", "Saturday"),
    ("Quel jour vient après samedi ?", "dimanche", "¿Qué día viene después del sábado?", "domingo", "Sunday"),
    ("Quel fruit est jaune et courbé ?", "banane", "¿Qué fruta es amarilla y curva?", "plátano", "banana"),
    ("Quelle boisson donne la vache ?", "lait", "¿Qué bebida da la vaca?", "leche", "milk"),
    ("Que boit-on quand on a soif ?", "eau", "¿Qué bebemos cuando tenemos sed?", "agua", "water"),
    ("Quel astre brille le jour ?", "soleil", "¿Qué astro brilla de día?", "sol", "sun"),
    ("Quel astre brille la nuit ?", "lune", "¿Qué astro brilla de noche?", "luna", "moon"),
    ("Quelle saison est la plus froide ?", "hiver", "¿Qué estación es la más fría?", "invierno", "winter"),
    ("Quelle saison est la plus chaude ?", "été", "¿Qué estación es la más caliente?", "verano", "summer"),
)


def items(seed: int, split: str) -> list[tuple[str, str, str, int]]:
    """``(prompt, answer in the question's language, English answer, language 0=fr/1=es)``, concepts split
    3/4 (``"probe"``) / 1/4 (``"heldout"``) by ``seed``."""
    idx = list(range(len(CONCEPTS)))
    random.Random(f"coherence:{seed}").shuffle(idx)
    cut = (3 * len(idx)) // 4
    chosen = idx[:cut] if split == "probe" else idx[cut:]
    out = []
    for i in chosen:
        fq, fa, sq, sa, en = CONCEPTS[i]
        for lang, q, a in ((0, fq, fa), (1, sq, sa)):
            if a.lower() != en.lower():
                out.append((PROMPT["fr" if lang == 0 else "es"].format(q=q), a, en, lang))
    return out


@dataclass
class CoherencePass:
    probe: ProbeResult
    features: np.ndarray
    labels: np.ndarray
    logodds: np.ndarray
    heldout: list[tuple[str, str, str]]
    n: int


def _compute(m: "LoadedModel", cfg: ScanConfig) -> CoherencePass:
    check_english(m.tokenizer)
    its = items(cfg.seed, "probe")
    held = [(p, a, e) for p, a, e, _ in items(cfg.seed, "heldout")]
    if cfg.quick:
        its, held = its[:24], held[:6]
    lo = completion_logodds(m, [(p, a, e) for p, a, e, _ in its], batch_size=max(cfg.batch_size, 16))
    labels = (lo > 0).astype(int)
    k = int(labels.sum())
    need = 4 if cfg.quick else MIN_CLASS
    if min(k, len(its) - k) < need:
        raise InputError(f"{NOT_FOUND}the model prefers the answer in the question's language (French/Spanish) over the "
                         f"English one in {k}/{len(its)} questions; a probe needs at least {need} in each class")
    rows = token_rows(m, [p for p, *_ in its])
    cap = capture_heads(m, rows, resolve_positions(rows, -1), batch_size=max(cfg.batch_size, 16))
    lang = np.array([x[3] for x in its])
    pr = fit_probes(cap.features, labels, np.arange(len(its)), cfg, position=-1, source="French/Spanish questions",
                    strata=lang)
    return CoherencePass(pr, cap.features, labels, lo, held, len(its))


COH_PASS: SharedPass[CoherencePass] = SharedPass("coherence_questions", _compute, lambda m, cfg: (cfg.seed, cfg.quick))


RULE = LabelRule(statistic="held-out balanced accuracy of a linear probe on z at the question's last token predicting whether "
                           "the model prefers the answer in the question's language over English, minus its "
                           "shuffled-label null mean", direction="greater", min_effect=0.1)


def _describe(cp: CoherencePass, cfg: ScanConfig) -> tuple[str, dict]:
    return (f"{cp.n} French/Spanish questions (authored); label = the answer in the question's language is more "
            f"likely than the English one ({int(cp.labels.sum())}/{cp.n}); z at the last token",
            {"in_language": int(cp.labels.sum()), "n_questions": cp.n})


run = probe_run("coherence", COH_PASS, RULE, _describe)


language_behaviour = iti_behaviour(COH_PASS, family="answer language",
                                   metric="log P(answer in the question's language) - log P(English answer)",
                                   direction="mass-mean direction", items="questions")
causal = iti_check(language_behaviour)


DETECTOR = register(Detector(
    name="coherence", evidence="probing", metric="answer language", stage="EP", method="probing",
    summary="a linear probe on the head's output predicts whether the model answers in the question's language",
    citation="Guo et al. SIGIR 2024, ASMR (doi 10.1145/3626772.3657819)",
    run=run, uses=(COH_PASS,), causal=causal, behaviour=language_behaviour, default=False, version=3))
