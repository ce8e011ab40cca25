"""Multiple-choice heads of Lieberum et al. 2023 (arXiv 2307.09458), in the paper's order: first the
*output heads* of a multiple-choice prompt, then how their attention over the option letters is shaped.

Data: the MCQA family's one data pass (:data:`headatlas.detectors.dla.mcqa_ep.EP_PASS`: the scan's MCQA
format, ``tasks/mcqa.py``, by default prototypical colours with 4 lettered options, correct letter balanced,
each prompt with an answer-swapped twin; the skill gate; one :func:`headatlas.methods.dla.dla_by_source`
pass over the prompts and one over the twins). On it :data:`MCQA_PASS` adds the output-head test and,
when output heads were found, attribution patching; both are shared by ``constant``, ``single_letter`` and
``correct_letter`` (and ``amplification``, ``correct``) within a scan. The heads are defined by the correct
letter, so a model at chance on the format is "not found" for all of them (the skill gate, see
:mod:`headatlas.detectors.dla.mcqa_ep`). (Up to v2/v3 these three read their own pass over arithmetic
0-shot prompts, where even a model that answers the colour questions can be at chance, and had no gate.)

1. Output heads: per prompt, the head's direct logit attribution (DLA) at the final token to
   ``logit(correct letter) - mean logit(other letters)`` (the answer letters as the model would write
   them, e.g. " A"). Null (answer swap): the correct letter is replaced by a letter drawn at random per
   prompt (shared by all heads), i.e. the head's DLA contrast for a letter that is not the answer;
   p add-one over ``N_PERM`` draws, BH q over all heads; an output head needs q <= 0.05 and an effect
   >= ``MIN_OUTPUT`` logits (``extras["output_effect"]``, ``extras["output_q"]``, ``extras["output_head"]``).
   Confirmation by patching (when output heads were found): attribution patching of every head (each
   prompt's head output patched into its answer-swapped twin, ``logit(correct) - logit(twin's correct)``,
   in chunks of ``batch_size`` prompts); ``details["patching"]`` gives the rank correlation with the
   output effect, the overlap of the top heads and each output head's patching effect.
2. Attention over the K letters ``a`` from the final token (``m = sum(a)``), for output heads only:
   - ``constant``: per prompt ``m * H(a / m) / log K`` (mass on the letters, spread evenly) minus the
     same on K random non-letter positions of the options block (mean of ``N_DRAWS`` draws); null:
     sign flips of the per-prompt differences; label also needs letter mass >= ``MIN_MASS`` and (v3) even
     letters: the head's ``correct_letter`` score (answer-swap contrast, absolute) and ``single_letter``
     score (best letter's preference) both below those rules' floors (0.1). ``m * H / log K`` alone is high
     for a head with 60% of its attention on the answer and 10% on each other letter; on
     qwen2.5-coder-1.5b v2 labelled the correct-letter head L22H7 constant.
   - ``single_letter``: per prompt and letter, attention on the letter minus the mean over the other
     letters, left out where the letter is the answer; statistic: the best letter's mean over prompts
     (``extras["letter"]``). Null: the letter labels permuted within each prompt, best letter taken in
     every draw (max-statistic null).
   - ``correct_letter``: the answer-swap contrast of the attention on the letters,
     ``((a_P[k] - a_T[k]) + (a_T[k2] - a_P[k2])) / 2`` for a prompt ``P`` with answer letter ``k`` and its
     twin ``T`` (answer ``k2``, the same question and values rotated): how much more the head attends to
     a letter when it is the answer than to the same letter, in the same prompt layout, when it is not.
     A fixed-letter preference cancels exactly. Null: sign flips of the per-prompt contrasts (which of
     the pair is the prompt is a coin flip of the generator). (v2 scored the correct letter against the
     other letters of the same prompt with a random-letter null; that contrast is ``extras
     ["letter_contrast"]``.)
Every label also needs ``output_head == 1``. Causal check (all three):
:func:`headatlas.detectors.dla.mcqa_ep.ep_check`, mean-ablating the labelled heads lowers the MCQA logit
difference (correct letter minus mean other letters) on held-out prompts of the same format (seed + 1000)
more than layer-matched random head sets.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ... import stats
from ...atlas.records import CausalCheck
from ...tasks.mcqa import MCQABatch
from ..base import Detector, DetectorResult, LabelRule, ScanConfig, SharedPass, register
from ..behaviours import Behaviour
from ..causal import set_check
from ..options import Option
from .mcqa_ep import (EP_OPTIONS, EP_PASS, _letter_logits, answer_letter_ids, at_slot, ep_behaviour, ep_check, ep_stats,
                      format_behaviour, mcqa_logit_diff, swap_contrast)

__all__ = ["CONSTANT", "CORRECT_LETTER", "MCQA_PASS", "SINGLE_LETTER", "answer_letter_ids", "at_slot", "mcqa_check",
           "mcqa_logit_diff", "mcqa_stats", "swap_contrast"]

if TYPE_CHECKING:
    from ...models import LoadedModel

N_DRAWS = 8
MIN_OUTPUT = 0.05       # logits: the smallest output-head effect worth a label
MIN_MASS = 0.3          # constant heads: mass on the letters
CHECK_FORMAT = ("arithmetic", 0, 4)     # (topic, shots, n_options) of mcqa_batch's defaults: the letter heads' prompts
TOP = 10                # top heads compared between DLA and patching

OUTPUT_RULE = LabelRule(statistic=("direct logit attribution at the final token to logit(correct letter) - mean "
                                   "logit(other letters), minus the same for a letter drawn at random"),
                        direction="greater", min_effect=MIN_OUTPUT)
SINGLE_RULE = LabelRule(statistic=("best letter's attention minus the mean over the other letters, on prompts whose "
                                   "answer is another letter (output heads only)"),
                        direction="greater", min_effect=0.1, extra_min=(("output_head", 1.0),))
CORRECT_RULE = LabelRule(statistic=("attention on a letter when it is the answer minus on the same letter of the "
                                    "answer-swapped twin when it is not (output heads only)"),
                         direction="greater", min_effect=0.1, extra_min=(("output_head", 1.0),))
CONSTANT_RULE = LabelRule(statistic=("letter mass x normalised entropy over the letters, minus the same on random "
                                     "non-letter option positions (output heads whose letter attention neither "
                                     "follows the answer nor prefers one letter)"),
                          direction="greater", min_effect=0.2,
                          extra_min=(("output_head", 1.0), ("letter_mass", MIN_MASS), ("even_letters", 1.0)))


def evenness(a: np.ndarray, axis: int = -1) -> np.ndarray:
    """``m * H(a / m) / log K`` over ``axis`` (``K`` entries): 1 when all attention is split evenly over
    the K positions, 0 with no mass or all of it on one."""
    a = np.moveaxis(a, axis, -1)
    K = a.shape[-1]
    m = a.sum(-1, keepdims=True)
    p = np.where(m > 0, a / np.maximum(m, 1e-12), 0.0)
    ent = -(np.where(p > 0, p * np.log(np.maximum(p, 1e-12)), 0.0)).sum(-1)
    return m[..., 0] * ent / np.log(K)


def letter_contrast_excluding(a: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """``a [L, B, H, K]`` -> each letter's attention minus the mean over the other letters, NaN where
    the letter is the prompt's answer (correct-letter heads do not count as single-letter heads)."""
    c = stats.slot_contrast(a)
    mask = np.arange(a.shape[-1])[None, :] == correct[:, None]          # [B, K]
    return np.where(mask[None, :, None, :], np.nan, c)


def _best(values: np.ndarray) -> np.ndarray:
    return np.nanmax(np.nanmean(values, axis=1), axis=-1)


def permuted_best_null(x: np.ndarray, n: int = stats.N_PERM, *, rng: np.random.Generator,
                       chunk: int = 64) -> np.ndarray:
    """Null draws ``[R, L, H]`` of :func:`_best` with the ``K`` letter labels permuted within each
    prompt (one permutation per prompt, shared by all heads): :func:`stats.permute_candidates_null`
    for this statistic, vectorised over chunks of draws."""
    L, B, H, K = x.shape
    finite = np.isfinite(x)
    val = np.where(finite, x, 0.0)
    out = np.empty((n, L, H))
    for s in range(0, n, chunk):
        r = min(chunk, n - s)
        perm = np.argsort(rng.random((r, B, K)), axis=2)                  # [r, B, K]
        vp = np.moveaxis(val, (1, 3), (0, 1))[np.arange(B)[None, :, None], perm]   # [r, B, K, L, H]
        fp = np.moveaxis(finite, (1, 3), (0, 1))[np.arange(B)[None, :, None], perm]
        with np.errstate(invalid="ignore"):
            mean = vp.sum(1) / fp.sum(1)                                   # [r, K, L, H]
        out[s:s + r] = np.nanmax(mean, axis=1)
    return out


@dataclass
class MCQAStats:
    """The shared pass, per prompt (numpy float64; ``L`` layers, ``B`` prompts, ``H`` heads, ``K`` letters)."""

    batch: MCQABatch
    letter_dla: np.ndarray       # [L, B, H, K] direct effect on each answer letter's logit
    from_letters: np.ndarray     # [L, B, H]  output contrast moved from the letter positions
    attn: np.ndarray             # [L, B, H, K] attention on the letters
    attn_twin: np.ndarray        # [L, B, H, K] the answer-swapped twins' attention on their letters
    attn_control: np.ndarray     # [N_DRAWS, L, B, H, K] attention on random non-letter option positions
    output: stats.Tested         # the output-head test
    output_scores: np.ndarray    # [L, H]
    patching: dict[str, Any]     # agreement with attribution patching
    clean_metric: float          # model's mean logit(correct) - mean logit(others)
    accuracy: float
    seed: int
    data: str                    # the shared EP pass's description of the prompts

    @property
    def output_head(self) -> np.ndarray:
        mask = np.zeros(self.output_scores.shape)
        for lh in self.output.labelled:
            mask[lh] = 1.0
        return mask

    def correct_np(self) -> np.ndarray:
        return self.batch.correct.numpy()

    def common_extras(self) -> dict[str, np.ndarray]:
        return {"output_head": self.output_head, "output_effect": self.output.effect, "output_q": self.output.q_value,
                "letter_mass": self.attn.sum(-1).mean(1),
                "dla_from_letters": self.from_letters.mean(1)}

    def common_details(self) -> dict[str, Any]:
        return {"output_heads": [[int(a), int(b), float(self.output.effect[a, b]), float(self.output.q_value[a, b])]
                                 for a, b in self.output.labelled],
                "output_rule": OUTPUT_RULE.describe(), "patching": self.patching,
                "model_logit_diff": self.clean_metric, "model_accuracy": self.accuracy,
                "letters": "ABCD"[:self.attn.shape[-1]]}

    def describe(self) -> str:
        return f"{self.data}; correct letter balanced; {len(self.output.labelled)} output heads"


def output_test(letter_dla: np.ndarray, correct: np.ndarray, *, seed: int,
                n_perm: int = stats.N_PERM) -> tuple[stats.Tested, np.ndarray]:
    """Output heads from per-prompt DLA to each letter ``[L, B, H, K]``: the contrast at the correct letter
    (minus the mean of the others) against the same contrast at a letter drawn at random per prompt."""
    contrast = stats.slot_contrast(letter_dla)
    per_prompt = at_slot(contrast, correct)
    draws = stats.random_slot_null(contrast, n_perm, rng=stats.rng_for(seed, "mcqa:output"))
    scores = per_prompt.mean(1)
    return stats.evaluate(per_prompt, draws, OUTPUT_RULE, seed=seed, salt="mcqa:output", scores=scores), scores


def compute_mcqa(m: LoadedModel, cfg: ScanConfig) -> MCQAStats:
    """The output-head test and the letter attention, from the MCQA family's one data pass
    (:data:`headatlas.detectors.dla.mcqa_ep.EP_PASS`: the scan's format, its skill gate, one DLA pass over
    the prompts and one over their twins), plus attribution patching when output heads were found."""
    ep = ep_stats(m, cfg)
    batch, answers = ep.batch, ep.answers
    n, K = batch.ids.shape[0], answers.numel()
    rows = torch.arange(n)
    lp = batch.letter_pos                                                   # [B, K]
    attn = ep.attn[rows[:, None], :, :, lp].permute(2, 0, 3, 1).double().numpy()          # [L, B, H, K]
    rng = random.Random(cfg.seed + 1)
    ctrl = []
    for _ in range(N_DRAWS):
        pos = []
        for r in range(n):
            lo, hi = (int(x) for x in batch.option_region[r])
            pool = sorted(set(range(lo, hi)) - set(lp[r].tolist()))
            pos.append(sorted(rng.sample(pool, K)))
        ctrl.append(ep.attn[rows[:, None], :, :, torch.tensor(pos)].permute(2, 0, 3, 1).double().numpy())
    attn_twin = ep.attn_twin[rows[:, None], :, :, batch.swapped_letter_pos].permute(2, 0, 3, 1).double().numpy()
    correct = batch.correct.numpy()
    tested, scores = output_test(ep.letter_dla, correct, seed=cfg.seed)
    from_letters = at_slot(stats.slot_contrast(ep.from_letters), correct)
    patching = _patching_agreement(m, batch, answers, tested, cfg)
    return MCQAStats(batch=batch, letter_dla=ep.letter_dla, from_letters=from_letters, attn=attn, attn_twin=attn_twin,
                     attn_control=np.stack(ctrl), output=tested, output_scores=scores, patching=patching,
                     clean_metric=ep.logit_diff, accuracy=ep.accuracy, seed=cfg.seed, data=ep.describe())


def attribution_effects(m: LoadedModel, batch: MCQABatch, answers: torch.Tensor, batch_size: int
                        ) -> tuple[np.ndarray, float, float]:
    """Attribution patching of every head from each prompt into its answer-swapped twin (denoising), metric
    ``logit(correct) - logit(twin's correct)`` at the final token, over chunks of ``batch_size`` prompts
    (one forward and one backward each: a 1.5B model on all prompts at once does not fit in memory).
    Returns ``(effect [L, H], clean, corrupted)``: the estimated rise of the prompt-mean metric when the
    head takes the prompt's output, and the prompt-mean metric of prompts and twins."""
    from ...methods.metrics import user_metric
    from ...methods.patching import patching_map

    corr, twin = batch.correct, batch.swapped_correct
    n = batch.ids.shape[0]
    total, clean, corrupted = 0.0, 0.0, 0.0
    for s in range(0, n, batch_size):
        e = min(s + batch_size, n)
        width = int(batch.final_pos[s:e].max()) + 1

        def metric(logits: torch.Tensor, rows: torch.Tensor, s: int = s) -> torch.Tensor:
            r = rows.cpu() + s
            ll = _letter_logits(logits, batch.final_pos[r], answers)
            return (ll.gather(1, corr[r].to(ll.device)[:, None]) - ll.gather(1, twin[r].to(ll.device)[:, None]))[:, 0]

        pm = patching_map(m, batch.ids[s:e, :width].to(m.device), batch.swapped_ids[s:e, :width].to(m.device),
                          metric=user_metric(metric, name="mcqa_swap", last_only=False), method="attribution")
        total = total + (pm.values - pm.corrupted_metric) * (e - s)
        clean += pm.clean_metric * (e - s)
        corrupted += pm.corrupted_metric * (e - s)
    return np.asarray(total) / n, clean / n, corrupted / n


def _patching_agreement(m: LoadedModel, batch: MCQABatch, answers: torch.Tensor, tested: stats.Tested,
                        cfg: ScanConfig) -> dict[str, Any]:
    """Attribution patching of every head (twin -> prompt) against the output effect."""
    from scipy.stats import spearmanr


    if cfg.options.get("mcqa_patching", True) is False:
        return {"skipped": "mcqa_patching=False"}
    if not tested.labelled and not cfg.options.get("mcqa_patching_always", False):
        return {"skipped": "no output heads to confirm (patching runs when the DLA test finds output heads, or with "
                           "options['mcqa_patching_always'])"}
    effect, clean, corrupted = attribution_effects(m, batch, answers, cfg.batch_size)
    eff = tested.effect
    ok = np.isfinite(eff) & np.isfinite(effect)
    rho = float(spearmanr(eff[ok], effect[ok]).statistic) if ok.sum() > 2 else float("nan")
    top = lambda x: {(int(i // x.shape[1]), int(i % x.shape[1])) for i in np.argsort(-x, axis=None)[:TOP]}  # noqa: E731
    out_set = set(tested.labelled)
    return {"method": "attribution (first-order) patching, each head's output from the prompt patched into its "
                      "answer-swapped twin (denoising), metric logit(correct) - logit(twin's correct) at the final "
                      "token",
            "clean_metric": clean, "corrupted_metric": corrupted,
            "spearman_with_output_effect": rho, "top": TOP,
            "top_overlap": len(top(np.nan_to_num(eff, nan=-np.inf)) & top(effect)),
            "output_heads_patching_effect": {f"L{a}H{b}": float(effect[a, b]) for a, b in sorted(out_set)},
            "top_patching": [[a, b, float(effect[a, b])] for a, b in sorted(top(effect), key=lambda lh: -effect[lh])]}


MCQA_OPTIONS = (
    Option("mcqa_patching", "bool", True, "confirm the output heads by attribution patching (answer-swapped twins)"),
    Option("mcqa_patching_always", "bool", False, "run that patching even when the DLA test finds no output head"),
)


MCQA_PASS: SharedPass[MCQAStats] = SharedPass(
    name="mcqa", compute=compute_mcqa,
    key=lambda m, cfg: (EP_PASS.key(m, cfg), bool(cfg.options.get("mcqa_patching", True)),
                        bool(cfg.options.get("mcqa_patching_always", False))))


def mcqa_stats(m: LoadedModel, cfg: ScanConfig) -> MCQAStats:
    return cfg.shared(MCQA_PASS, m)


def _result(name: str, st: MCQAStats, per_prompt: np.ndarray, draws: np.ndarray, rule: LabelRule, cfg: ScanConfig,
            *, statistic=stats.mean_over_prompts, extras: dict[str, np.ndarray] | None = None, data: str,
            null: str, details: dict[str, Any] | None = None) -> DetectorResult:
    ex = st.common_extras() | (extras or {})
    scores = statistic(per_prompt)
    tested = stats.evaluate(per_prompt, draws, rule, seed=cfg.seed, salt=name, scores=scores, extras=ex,
                            statistic=statistic)
    return stats.result(name, tested, scores=scores, rule=rule, data_description=f"{st.describe()}; {data}",
                        null_description=f"{null} ({tested.n_null} draws)", n_prompts=st.attn.shape[1],
                        seed=cfg.seed, extras=ex, details=st.common_details() | (details or {}))


def _shape(st: MCQAStats) -> dict[str, np.ndarray]:
    """``[L, H]`` what keeps a correct-letter or single-letter head from counting as even: its answer-swap
    contrast (``answer_following``, the ``correct_letter`` score), its best letter's preference
    (``letter_preference``, the ``single_letter`` score) and ``even_letters``: 1 when both are below their
    rules' floors (a head can spread its attention over the letters and still put most of it on the answer:
    ``m x H / log K`` alone does not tell them apart)."""
    follow = swap_contrast(st.attn, st.attn_twin, st.correct_np(), st.batch.swapped_correct.numpy()).mean(1)
    pref = _best(letter_contrast_excluding(st.attn, st.correct_np()))
    even = (np.abs(follow) < CORRECT_RULE.min_effect) & (pref < SINGLE_RULE.min_effect)
    return {"answer_following": follow, "letter_preference": pref, "even_letters": even.astype(float)}


def run_constant(m: LoadedModel, cfg: ScanConfig) -> DetectorResult:
    st = mcqa_stats(m, cfg)
    target = evenness(st.attn)                                          # [L, B, H]
    control = np.mean([evenness(c) for c in st.attn_control], axis=0)
    diff = target - control
    draws = stats.signflip_null(diff, rng=stats.rng_for(cfg.seed, "constant:null"))
    return _result("constant", st, diff, draws, CONSTANT_RULE, cfg, extras={"evenness": target.mean(1)} | _shape(st),
                   data="score = mean over prompts of m x normalised entropy over the letters minus the same on K "
                        "random non-letter option positions",
                   null=f"sign flips of the per-prompt differences (control: {N_DRAWS} draws of random non-letter "
                        "positions of the options block)")


def run_single_letter(m: LoadedModel, cfg: ScanConfig) -> DetectorResult:
    st = mcqa_stats(m, cfg)
    x = letter_contrast_excluding(st.attn, st.correct_np())            # [L, B, H, K]
    draws = permuted_best_null(x, rng=stats.rng_for(cfg.seed, "single_letter:null"))
    best = stats.best_candidate(x)
    letters = "ABCD"[:x.shape[-1]]
    res = _result("single_letter", st, x, draws, SINGLE_RULE, cfg, statistic=_best,
                  extras={"letter": best.astype(float)},
                  data="score = best letter's mean (over prompts whose answer is another letter) of its attention "
                       "minus the mean attention on the other letters",
                  null="letter labels permuted within each prompt, best letter taken in every draw (max-statistic)")
    res.details["letter_of_labelled"] = {f"L{a}H{b}": letters[int(best[a, b])] for a, b in res.labelled}
    return res


def run_correct_letter(m: LoadedModel, cfg: ScanConfig) -> DetectorResult:
    st = mcqa_stats(m, cfg)
    per_prompt = swap_contrast(st.attn, st.attn_twin, st.correct_np(), st.batch.swapped_correct.numpy())
    draws = stats.signflip_null(per_prompt, rng=stats.rng_for(cfg.seed, "correct_letter:signflip"))
    v2 = at_slot(stats.slot_contrast(st.attn), st.correct_np()).mean(1)
    return _result("correct_letter", st, per_prompt, draws, CORRECT_RULE, cfg, extras={"letter_contrast": v2},
                   data=("score = attention on a letter when it is the answer minus on the same letter of the "
                         "answer-swapped twin when it is not (both directions, averaged)"),
                   null="sign flips of the per-prompt swap contrasts")


def letters_behaviour(m: LoadedModel, cfg: ScanConfig, result: DetectorResult | None = None, *,
                      kind: str = "mean") -> Behaviour:
    """The MCQA logit difference on held-out prompts of :data:`CHECK_FORMAT` (0-shot arithmetic, the format
    :func:`~headatlas.tasks.mcqa.mcqa_batch` defaults to; ``result`` is not read). The letter heads' own check uses
    the scan's format (:func:`~.mcqa_ep.ep_behaviour`)."""
    return format_behaviour(m, cfg, CHECK_FORMAT, kind=kind)


def mcqa_check(m: LoadedModel, cfg: ScanConfig, result: DetectorResult, *, kind: str = "mean") -> CausalCheck:
    """Ablate the labelled heads on held-out 0-shot arithmetic prompts: does the MCQA logit difference fall more
    than for random heads?"""
    return set_check(m, cfg, result, letters_behaviour(m, cfg, result, kind=kind))


_CITE = "Lieberum et al. 2023, arXiv 2307.09458"
CONSTANT = register(Detector(
    name="constant", evidence="dla", metric="MCQA logit difference", stage="KR", method="DLA output heads + attention pattern (MCQA)",
    summary="an MCQA output head whose final-token attention is spread evenly over the option letters",
    citation=_CITE, run=run_constant, uses=(EP_PASS, MCQA_PASS), options=MCQA_OPTIONS + EP_OPTIONS, causal=ep_check, behaviour=ep_behaviour, version=3))
SINGLE_LETTER = register(Detector(
    name="single_letter", evidence="dla", metric="MCQA logit difference", stage="KR", method="DLA output heads + attention pattern (MCQA)",
    summary="an MCQA output head whose final-token attention sits on one fixed option letter regardless of the answer",
    citation=_CITE, run=run_single_letter, uses=(EP_PASS, MCQA_PASS), options=MCQA_OPTIONS + EP_OPTIONS, causal=ep_check, behaviour=ep_behaviour, version=3))
CORRECT_LETTER = register(Detector(
    name="correct_letter", evidence="dla", metric="MCQA logit difference", stage="LR", method="DLA output heads + attention pattern (MCQA)",
    summary="an MCQA output head whose final-token attention goes to the correct option letter",
    citation=_CITE, run=run_correct_letter, uses=(EP_PASS, MCQA_PASS), options=MCQA_OPTIONS + EP_OPTIONS, causal=ep_check, behaviour=ep_behaviour, version=4))
