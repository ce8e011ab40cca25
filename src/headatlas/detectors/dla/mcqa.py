"""Multiple-choice heads of Lieberum et al. 2023 (arXiv 2307.09458), in the paper's order: first the
*output heads* of a multiple-choice prompt, then how their attention over the option letters is shaped.

Data: ``tasks/mcqa.py`` (arithmetic questions, four lettered options, correct letter balanced; each
prompt has an answer-swapped twin). All statistics come from one declared shared pass
(:data:`MCQA_PASS`: one forward per batch with values and the final position's attention rows,
:func:`headatlas.methods.dla.dla_by_source`, and one attribution-patching run), shared by ``constant``,
``single_letter`` and ``correct_letter`` within a scan.

1. Output heads: per prompt, the head's direct logit attribution (DLA) at the final token to
   ``logit(correct letter) - mean logit(other letters)`` (the answer letters as the model would write
   them, e.g. " A"). Null (answer swap): the correct letter is replaced by a letter drawn at random per
   prompt (shared by all heads), i.e. the head's DLA contrast for a letter that is not the answer;
   p add-one over ``N_PERM`` draws, BH q over all heads; an output head needs q <= 0.05 and an effect
   >= ``MIN_OUTPUT`` logits (``extras["output_effect"]``, ``extras["output_q"]``, ``extras["output_head"]``).
   Confirmation by patching (when output heads were found): attribution patching of every head
   (answer-swapped twin -> prompt, ``logit(correct) - logit(twin's correct)``); ``details["patching"]``
   gives the rank correlation with the output effect, the overlap of the top heads and each output
   head's patching effect.
2. Attention over the K letters ``a`` from the final token (``m = sum(a)``), for output heads only:
   - ``constant``: per prompt ``m * H(a / m) / log K`` (mass on the letters, spread evenly) minus the
     same on K random non-letter positions of the options block (mean of ``N_DRAWS`` draws); null:
     sign flips of the per-prompt differences; label also needs letter mass >= ``MIN_MASS``.
   - ``single_letter``: per prompt and letter, attention on the letter minus the mean over the other
     letters, left out where the letter is the answer; statistic: the best letter's mean over prompts
     (``extras["letter"]``). Null: the letter labels permuted within each prompt, best letter taken in
     every draw (max-statistic null).
   - ``correct_letter`` (v3): the answer-swap contrast of the attention on the letters,
     ``((a_P[k] - a_T[k]) + (a_T[k2] - a_P[k2])) / 2`` for a prompt ``P`` with answer letter ``k`` and its
     twin ``T`` (answer ``k2``, the same question and values rotated): how much more the head attends to
     a letter when it is the answer than to the same letter, in the same prompt layout, when it is not.
     A fixed-letter preference cancels exactly. Null: sign flips of the per-prompt contrasts (which of
     the pair is the prompt is a coin flip of the generator). (v2 scored the correct letter against the
     other letters of the same prompt with a random-letter null; that contrast is ``extras
     ["letter_contrast"]``.)
Every label also needs ``output_head == 1``. Causal check (all three): mean-ablating the labelled
heads lowers the MCQA logit difference (correct letter minus mean other letters) on held-out prompts
(seed + 1000) more than layer-matched random head sets.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ... import stats
from ...atlas.records import CausalCheck
from ...errors import InputError
from ...methods.dla import dla_by_source
from ...tasks.mcqa import MCQABatch, mcqa_batch
from ...tasks.text import check_english
from ..base import Detector, DetectorResult, LabelRule, ScanConfig, SharedPass, register
from ..causal import ablation_check

if TYPE_CHECKING:
    from ...models import LoadedModel

N_DRAWS = 8
MIN_OUTPUT = 0.05       # logits: the smallest output-head effect worth a label
MIN_MASS = 0.3          # constant heads: mass on the letters
EVAL_SEED_OFFSET = 1000
TOP = 10                # top heads compared between DLA and patching

OUTPUT_RULE = LabelRule(statistic=("direct logit attribution at the final token to logit(correct letter) - mean "
                                   "logit(other letters), minus the same for a letter drawn at random"),
                        direction="greater", min_effect=MIN_OUTPUT)
CONSTANT_RULE = LabelRule(statistic=("letter mass x normalised entropy over the letters, minus the same on random "
                                     "non-letter option positions (output heads only)"),
                          direction="greater", min_effect=0.2,
                          extra_min=(("output_head", 1.0), ("letter_mass", MIN_MASS)))
SINGLE_RULE = LabelRule(statistic=("best letter's attention minus the mean over the other letters, on prompts whose "
                                   "answer is another letter (output heads only)"),
                        direction="greater", min_effect=0.1, extra_min=(("output_head", 1.0),))
CORRECT_RULE = LabelRule(statistic=("attention on a letter when it is the answer minus on the same letter of the "
                                    "answer-swapped twin when it is not (output heads only)"),
                         direction="greater", min_effect=0.1, extra_min=(("output_head", 1.0),))


def answer_letter_ids(tokenizer: Any, batch: MCQABatch) -> torch.Tensor:
    """``[K]`` the tokens the model writes as its answer after ``Answer:``: " A" when that is one token
    (GPT-style vocabularies), else the bare letter."""
    out = []
    for j, tid in enumerate(batch.letter_ids.tolist()):
        t = tokenizer.encode(" " + tokenizer.decode([tid]), add_special_tokens=False)
        out.append(t[0] if len(t) == 1 else tid)
    return torch.tensor(out)


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
        B, K = self.attn.shape[1], self.attn.shape[-1]
        return (f"{B} arithmetic multiple-choice prompts (seed {self.seed}) with {K} lettered options, correct letter "
                f"balanced; final token ('Answer:'); model accuracy {self.accuracy:.2f}, mean logit difference "
                f"{self.clean_metric:+.3f}; {len(self.output.labelled)} output heads")


def _n_prompts(cfg: ScanConfig) -> int:
    n = cfg.n_prompts or (16 if cfg.quick else 32)
    if n < 12:
        raise InputError("the MCQA detectors need at least 12 prompts (the resampling unit of their nulls)")
    return n


def at_slot(x: np.ndarray, slot: np.ndarray) -> np.ndarray:
    """``x [L, B, H, K]``, ``slot [B]`` -> ``[L, B, H]`` the entry of each prompt's slot."""
    pick = np.broadcast_to(slot[None, :, None, None], x.shape[:3] + (1,))
    return np.take_along_axis(x, pick, axis=3)[..., 0]


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
    tok = m.tokenizer
    check_english(tok)
    n = _n_prompts(cfg)
    batch = mcqa_batch(tok, n, seed=cfg.seed)
    if batch.ids.shape[1] > m.info.n_ctx:
        raise InputError(f"MCQA prompts need {batch.ids.shape[1]} positions; the model has {m.info.n_ctx}")
    answers = answer_letter_ids(tok, batch)
    K = answers.numel()
    d = dla_by_source(m, batch.ids, batch.final_pos, {str(j): answers[j].repeat(n) for j in range(K)},
                      batch_size=cfg.batch_size)
    letter_dla = torch.stack([d.total(str(j)) for j in range(K)], -1).permute(1, 0, 2, 3).double().numpy()
    rows = torch.arange(n)
    lp = batch.letter_pos                                                   # [B, K]
    # the output contrast carried by the letter positions alone
    at_letters = torch.stack([d.values[str(j)][rows[:, None], :, :, lp].sum(1) for j in range(K)], -1)  # [B, L, H, K]
    at_letters = at_letters.permute(1, 0, 2, 3).double().numpy()
    attn = d.attention[rows[:, None], :, :, lp].permute(2, 0, 3, 1).double().numpy()          # [L, B, H, K]
    rng = random.Random(cfg.seed + 1)
    ctrl = []
    for _ in range(N_DRAWS):
        pos = []
        for r in range(n):
            lo, hi = (int(x) for x in batch.option_region[r])
            pool = sorted(set(range(lo, hi)) - set(lp[r].tolist()))
            pos.append(sorted(rng.sample(pool, K)))
        ctrl.append(d.attention[rows[:, None], :, :, torch.tensor(pos)].permute(2, 0, 3, 1).double().numpy())
    tw = dla_by_source(m, batch.swapped_ids, batch.final_pos, {}, batch_size=cfg.batch_size).attention
    attn_twin = tw[rows[:, None], :, :, batch.swapped_letter_pos].permute(2, 0, 3, 1).double().numpy()
    correct = batch.correct.numpy()
    tested, scores = output_test(letter_dla, correct, seed=cfg.seed)
    from_letters = at_slot(stats.slot_contrast(at_letters), correct)
    clean, acc = _model_metric(m, batch, answers, cfg)
    patching = _patching_agreement(m, batch, answers, tested, cfg)
    return MCQAStats(batch=batch, letter_dla=letter_dla, from_letters=from_letters, attn=attn, attn_twin=attn_twin,
                     attn_control=np.stack(ctrl), output=tested, output_scores=scores, patching=patching,
                     clean_metric=clean, accuracy=acc, seed=cfg.seed)


def _letter_logits(logits: torch.Tensor, final_pos: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """``[b, K]`` the answer letters' logits at each prompt's final position."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, final_pos.to(logits.device)][:, answers.to(logits.device)]


def mcqa_logit_diff(batch: MCQABatch, answers: torch.Tensor):
    """Behaviour fn ``(logits [b, S, V], rows [b]) -> [b]``: logit(correct) - mean logit(other letters)."""
    def fn(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        ll = _letter_logits(logits, batch.final_pos[rows.cpu()], answers)
        c = ll.gather(1, batch.correct[rows.cpu()].to(ll.device)[:, None])[:, 0]
        return c - (ll.sum(1) - c) / (ll.shape[1] - 1)
    return fn


def _model_metric(m: LoadedModel, batch: MCQABatch, answers: torch.Tensor, cfg: ScanConfig) -> tuple[float, float]:
    diffs, hits = [], []
    fn = mcqa_logit_diff(batch, answers)
    for s in range(0, batch.ids.shape[0], cfg.batch_size):
        e = min(s + cfg.batch_size, batch.ids.shape[0])
        with torch.no_grad():
            logits = m.model(input_ids=batch.ids[s:e].to(m.device), use_cache=False).logits.float()
        rows = torch.arange(s, e)
        diffs.append(fn(logits, rows).cpu())
        hits.append(_letter_logits(logits, batch.final_pos[s:e], answers).argmax(1).cpu() == batch.correct[s:e])
    return float(torch.cat(diffs).mean()), float(torch.cat(hits).float().mean())


def _patching_agreement(m: LoadedModel, batch: MCQABatch, answers: torch.Tensor, tested: stats.Tested,
                        cfg: ScanConfig) -> dict[str, Any]:
    """Attribution patching of every head (twin -> prompt) against the output effect."""
    from scipy.stats import spearmanr

    from ...methods.metrics import user_metric
    from ...methods.patching import patching_map

    if cfg.options.get("mcqa_patching", True) is False:
        return {"skipped": "mcqa_patching=False"}
    if not tested.labelled and not cfg.options.get("mcqa_patching_always", False):
        return {"skipped": "no output heads to confirm (patching runs when the DLA test finds output heads, or with "
                           "options['mcqa_patching_always'])"}
    corr, twin = batch.correct, batch.swapped_correct

    def metric(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        ll = _letter_logits(logits, batch.final_pos[rows.cpu()], answers)
        r = rows.cpu()
        return (ll.gather(1, corr[r].to(ll.device)[:, None]) - ll.gather(1, twin[r].to(ll.device)[:, None]))[:, 0]

    pm = patching_map(m, batch.ids.to(m.device), batch.swapped_ids.to(m.device),
                      metric=user_metric(metric, name="mcqa_swap", last_only=False), method="attribution")
    effect = pm.values - pm.corrupted_metric
    eff = tested.effect
    ok = np.isfinite(eff) & np.isfinite(effect)
    rho = float(spearmanr(eff[ok], effect[ok]).statistic) if ok.sum() > 2 else float("nan")
    top = lambda x: {(int(i // x.shape[1]), int(i % x.shape[1])) for i in np.argsort(-x, axis=None)[:TOP]}  # noqa: E731
    out_set = set(tested.labelled)
    return {"method": "attribution (first-order) patching, answer-swapped twin -> prompt, metric logit(correct) - "
                      "logit(twin's correct) at the final token",
            "clean_metric": pm.clean_metric, "corrupted_metric": pm.corrupted_metric,
            "spearman_with_output_effect": rho, "top": TOP,
            "top_overlap": len(top(np.nan_to_num(eff, nan=-np.inf)) & top(effect)),
            "output_heads_patching_effect": {f"L{a}H{b}": float(effect[a, b]) for a, b in sorted(out_set)},
            "top_patching": [[a, b, float(effect[a, b])] for a, b in sorted(top(effect), key=lambda lh: -effect[lh])]}


MCQA_PASS: SharedPass[MCQAStats] = SharedPass(
    name="mcqa", compute=compute_mcqa,
    key=lambda m, cfg: (cfg.seed, _n_prompts(cfg), cfg.batch_size, bool(cfg.options.get("mcqa_patching", True)),
                        bool(cfg.options.get("mcqa_patching_always", False)), str(m.dtype), str(m.device)))


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


def run_constant(m: LoadedModel, cfg: ScanConfig) -> DetectorResult:
    st = mcqa_stats(m, cfg)
    target = evenness(st.attn)                                          # [L, B, H]
    control = np.mean([evenness(c) for c in st.attn_control], axis=0)
    diff = target - control
    draws = stats.signflip_null(diff, rng=stats.rng_for(cfg.seed, "constant:null"))
    return _result("constant", st, diff, draws, CONSTANT_RULE, cfg, extras={"evenness": target.mean(1)},
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


def swap_contrast(x_prompt: np.ndarray, x_twin: np.ndarray, correct: np.ndarray, twin_correct: np.ndarray
                  ) -> np.ndarray:
    """``x_* [L, B, H, K]`` per-letter values of prompts and their answer-swapped twins, ``correct`` /
    ``twin_correct [B]`` their answer letters -> ``[L, B, H]``:
    ``((x_P[k] - x_T[k]) + (x_T[k2] - x_P[k2])) / 2`` (a letter when it is the answer minus the same
    letter when it is not; 0 for any head whose values do not follow the answer)."""
    return 0.5 * ((at_slot(x_prompt, correct) - at_slot(x_twin, correct))
                  + (at_slot(x_twin, twin_correct) - at_slot(x_prompt, twin_correct)))


def run_correct_letter(m: LoadedModel, cfg: ScanConfig) -> DetectorResult:
    st = mcqa_stats(m, cfg)
    per_prompt = swap_contrast(st.attn, st.attn_twin, st.correct_np(), st.batch.swapped_correct.numpy())
    draws = stats.signflip_null(per_prompt, rng=stats.rng_for(cfg.seed, "correct_letter:signflip"))
    v2 = at_slot(stats.slot_contrast(st.attn), st.correct_np()).mean(1)
    return _result("correct_letter", st, per_prompt, draws, CORRECT_RULE, cfg, extras={"letter_contrast": v2},
                   data=("score = attention on a letter when it is the answer minus on the same letter of the "
                         "answer-swapped twin when it is not (both directions, averaged)"),
                   null="sign flips of the per-prompt swap contrasts")


def mcqa_check(m: LoadedModel, cfg: ScanConfig, result: DetectorResult, *, kind: str = "mean") -> CausalCheck:
    """Ablate the labelled heads: does the MCQA logit difference fall more than for random heads?"""
    n = 8 if cfg.quick else 16
    seed = cfg.seed + EVAL_SEED_OFFSET
    batch = mcqa_batch(m.tokenizer, n, seed=seed)
    answers = answer_letter_ids(m.tokenizer, batch)
    return ablation_check(m, result.labelled, batch.ids, mcqa_logit_diff(batch, answers),
                          metric="MCQA logit difference (correct letter - mean other letters)", expected="decrease",
                          seed=cfg.seed, kind=kind, batch_size=cfg.batch_size,
                          description=(f"logit(correct letter) - mean logit(other letters) at the final token of {n} "
                                       f"held-out MCQA prompts (seed {seed}), {kind} ablation over those prompts per "
                                       "position"))


_CITE = "Lieberum et al. 2023, arXiv 2307.09458"
CONSTANT = register(Detector(
    name="constant", evidence="dla", metric="MCQA logit difference", stage="KR", method="DLA output heads + attention pattern (MCQA)",
    summary="an MCQA output head whose final-token attention is spread evenly over the option letters",
    citation=_CITE, run=run_constant, uses=(MCQA_PASS,), causal=mcqa_check))
SINGLE_LETTER = register(Detector(
    name="single_letter", evidence="dla", metric="MCQA logit difference", stage="KR", method="DLA output heads + attention pattern (MCQA)",
    summary="an MCQA output head whose final-token attention sits on one fixed option letter regardless of the answer",
    citation=_CITE, run=run_single_letter, uses=(MCQA_PASS,), causal=mcqa_check))
CORRECT_LETTER = register(Detector(
    name="correct_letter", evidence="dla", metric="MCQA logit difference", stage="LR", method="DLA output heads + attention pattern (MCQA)",
    summary="an MCQA output head whose final-token attention goes to the correct option letter",
    citation=_CITE, run=run_correct_letter, uses=(MCQA_PASS,), causal=mcqa_check, version=3))
