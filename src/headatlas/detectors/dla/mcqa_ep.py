"""Answer-promoting multiple-choice heads (stage EP): ``amplification`` (Lieberum et al. 2023, arXiv
2307.09458) here, and the shared pass of ``correct`` (Wiegreffe et al. 2024, arXiv 2407.15018), whose patching
lives in :mod:`headatlas.detectors.patching.mcqa_correct`.

Data: ``tasks/mcqa.py`` lettered questions with answer-swapped twins (the same prefix, question and
option values, rotated so that the answer sits under another letter). Default format: prototypical
colours after 3 solved examples, ``K = 4`` letters (``options["mcqa_topic"]`` = ``"colors"`` |
``"arithmetic"``, ``options["mcqa_shots"]`` = 0..8, ``options["mcqa_options"]`` = 2..4); the final token
is ``:`` of ``Answer:``.

Skill gate: both heads are defined by how they raise the *correct* letter, which only exists when the
model knows the answer. The pass first reads the answer letters' logits on the prompts and their twins;
when the accuracy on the prompts is not above chance (one-sided binomial test, p > 0.05) the detectors
raise ``InputError("not found: the model answers N% ...")`` (``options["mcqa_require_skill"]=False``
runs them anyway, e.g. in tests).

Per prompt ``b`` with answer letter ``k`` (its twin's answer ``k2``), ``c_X[j]`` = a head's direct logit
attribution (DLA, :func:`headatlas.methods.dla.dla_by_source`) at the final token of prompt ``X`` to
``logit(letter j) - mean logit(other letters)``:

- swap contrast ``s = ((c_P[k] - c_T[k]) + (c_T[k2] - c_P[k2])) / 2``: how much more the head writes a
  letter when that letter is the answer than when the same letter, at the same place, is not. A letter
  bias (always " A") cancels exactly. Null: sign flips of ``s`` (prompt and twin are exchangeable: which
  of the two is called the prompt is a coin flip of the generator).
- ``amplification``: score = mean ``s`` (logits); label: q <= 0.05, effect >= ``MIN_DLA`` and
  ``low_option_attention == 1``: the final token's mean attention on the current question's options
  block (letters and their values, prompt and twin) is <= ``MAX_OPTION_ATTENTION`` (``extras
  ["option_attention"]``). Heads with the same DLA effect that do read the options are listed in
  ``details["readers"]`` (correct-letter-like output heads, not amplifiers).
- ``correct``: exact activation patching (:func:`headatlas.methods.patching.patching_map`) of each head's
  output at the final position only, between each prompt and its twin in both directions: per prompt
  ``e = ((M_P(P) - M_P(P[h <- T])) + (M_T(T) - M_T(T[h <- P]))) / 2`` with ``M_P = logit(k) - logit(k2)``
  and ``M_T = -M_P``: how much of the model's preference for the right letter the head's final-token
  output carries. Null: sign flips of ``e``; label: q <= 0.05, effect >= ``MIN_PATCH`` and a positive DLA
  swap contrast (``extras["dla_swap"] > 0``: the head raises the correct letter itself, as in Wiegreffe's
  vocabulary projection).

Causal check (both): mean-ablating the labelled heads lowers ``logit(correct letter) - mean logit(other
letters)`` on held-out prompts of the same format (seed + 1000) more than layer-matched random sets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ... import stats
from ...atlas.records import CausalCheck
from ...errors import InputError
from ...methods.dla import capture_final_residual, dla_by_source, readout
from ...tasks.mcqa import MCQABatch, mcqa_batch
from ...tasks.text import check_english
from ..base import NOT_FOUND, Detector, DetectorResult, LabelRule, ScanConfig, SharedPass, register
from ..causal import ablation_check
from .mcqa import answer_letter_ids, mcqa_logit_diff, swap_contrast

if TYPE_CHECKING:
    from ...models import LoadedModel

MIN_DLA = 0.05                 # logits: the smallest swap contrast worth an amplification label
MAX_OPTION_ATTENTION = 0.1     # an amplifier reads (almost) nothing from the options block
MIN_PATCH = 0.1                # logits of logit(k) - logit(k2): the smallest patching effect worth a label
GATE_ALPHA = 0.05
EVAL_SEED_OFFSET = 1000
DEFAULT_TOPIC, DEFAULT_SHOTS, DEFAULT_OPTIONS = "colors", 3, 4

AMP_RULE = LabelRule(statistic=("DLA swap contrast at the final token: the head's DLA to logit(letter) - mean "
                                "logit(other letters) when the letter is the answer minus when the same letter "
                                "is not (answer-swapped twin), with little attention to the options"),
                     direction="greater", min_effect=MIN_DLA, extra_min=(("low_option_attention", 1.0),))

def mcqa_format(cfg: ScanConfig) -> tuple[str, int, int]:
    """``(topic, shots, n_options)`` of the prompts from the scan options."""
    return (str(cfg.options.get("mcqa_topic", DEFAULT_TOPIC)), int(cfg.options.get("mcqa_shots", DEFAULT_SHOTS)),
            int(cfg.options.get("mcqa_options", DEFAULT_OPTIONS)))


def _n_prompts(cfg: ScanConfig) -> int:
    n = cfg.n_prompts or (16 if cfg.quick else 32)
    if n < 12:
        raise InputError("the MCQA EP detectors need at least 12 prompts (the resampling unit of their nulls)")
    return n


def binomial_above_chance(hits: int, n: int, chance: float) -> float:
    """One-sided binomial p of at least ``hits`` correct out of ``n`` at ``chance``."""
    from scipy.stats import binom

    return float(binom.sf(hits - 1, n, chance))


def letter_logits(m: LoadedModel, ids: torch.Tensor, final_pos: torch.Tensor, answers: torch.Tensor,
                  batch_size: int) -> torch.Tensor:
    """``[B, K]`` the answer letters' logits at each prompt's final position (right padding is never
    unembedded: the final residual is read, normed and projected on the K letters only)."""
    r = readout(m)
    norm = m.final_norm()
    cap = getattr(getattr(m.model, "config", None), "final_logit_softcapping", None)
    out = []
    for s in range(0, ids.shape[0], batch_size):
        e = min(s + batch_size, ids.shape[0])
        with torch.no_grad(), capture_final_residual(m) as res:
            m.model(input_ids=ids[s:e].to(m.device), use_cache=False, logits_to_keep=1)
            x = res[0][torch.arange(e - s), final_pos[s:e]]
            h = norm(x.to(next(norm.parameters()).dtype)).float() if norm is not None else x
            ll = h.to(r.W_U.device) @ r.W_U[answers.to(r.W_U.device)].t()
        if cap:
            ll = torch.tanh(ll / cap) * cap
        out.append(ll.cpu().double())
    return torch.cat(out)


@dataclass
class EPStats:
    """The shared pass (numpy float64; ``L`` layers, ``B`` prompts, ``H`` heads, ``K`` letters)."""

    batch: MCQABatch
    answers: torch.Tensor        # [K] the answer tokens
    dla_prompt: np.ndarray       # [L, B, H, K] DLA contrast per letter on the prompts
    dla_twin: np.ndarray         # [L, B, H, K] the same on the twins
    swap: np.ndarray             # [L, B, H] swap contrast
    option_attention: np.ndarray  # [L, B, H] final-token attention on the options block (mean of prompt, twin)
    letter_attention: np.ndarray  # [L, B, H] final-token attention on the K letters (mean of prompt, twin)
    accuracy: float
    twin_accuracy: float
    logit_diff: float
    topic: str
    shots: int
    seed: int
    not_found: str | None = None  # the skill gate's reason (kept in the pass, so a scan pays the gate once)

    def describe(self) -> str:
        B, K = self.swap.shape[1], self.dla_prompt.shape[-1]
        return (f"{B} {self.topic} multiple-choice prompts after {self.shots} solved examples (seed {self.seed}) with "
                f"{K} lettered options and their answer-swapped twins; final token ('Answer:'); model accuracy "
                f"{self.accuracy:.2f} (twins {self.twin_accuracy:.2f}, chance {1 / K:.2f}), mean logit(correct) - "
                f"mean logit(others) {self.logit_diff:+.3f}")

    def common_details(self) -> dict[str, Any]:
        return {"model_accuracy": self.accuracy, "twin_accuracy": self.twin_accuracy, "model_logit_diff": self.logit_diff,
                "format": {"topic": self.topic, "shots": self.shots}, "example": self.batch.texts[0]}


def _attention_on(attn: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """``attn [B, L, H, S]``, ``region [B, 2]`` ``[start, end)`` -> ``[B, L, H]`` the mass inside."""
    S = attn.shape[-1]
    pos = torch.arange(S)[None, :]
    mask = (pos >= region[:, :1]) & (pos < region[:, 1:])
    return (attn * mask[:, None, None, :]).sum(-1)


def _letters_on(attn: torch.Tensor, letter_pos: torch.Tensor) -> torch.Tensor:
    rows = torch.arange(attn.shape[0])
    return attn[rows[:, None], :, :, letter_pos].sum(1)                  # [B, L, H]


def compute_ep(m: LoadedModel, cfg: ScanConfig) -> EPStats:
    tok = m.tokenizer
    check_english(tok)
    n = _n_prompts(cfg)
    topic, shots, n_options = mcqa_format(cfg)
    batch = mcqa_batch(tok, n, seed=cfg.seed, topic=topic, shots=shots, n_options=n_options)
    if batch.ids.shape[1] > m.info.n_ctx:
        raise InputError(f"MCQA prompts need {batch.ids.shape[1]} positions; the model has {m.info.n_ctx}")
    answers = answer_letter_ids(tok, batch)
    K = answers.numel()
    bs = cfg.batch_size
    ll_p = letter_logits(m, batch.ids, batch.final_pos, answers, bs)
    hits = int((ll_p.argmax(1) == batch.correct).sum())
    acc = hits / n
    c = ll_p.gather(1, batch.correct[:, None])[:, 0]
    diff = float((c - (ll_p.sum(1) - c) / (K - 1)).mean())
    p_gate = binomial_above_chance(hits, n, 1 / K)
    if p_gate > GATE_ALPHA and cfg.options.get("mcqa_require_skill", True):
        reason = (f"{NOT_FOUND}the model answers {100 * acc:.0f}% of {n} {topic} MCQA prompts ({shots}-shot, {K} "
                  f"options; chance {100 / K:.0f}%, binomial p = {p_gate:.2g}; mean logit(correct) - mean "
                  f"logit(others) {diff:+.3f}): no correct letter to amplify")
        empty = np.zeros((0,))
        return EPStats(batch=batch, answers=answers, dla_prompt=empty, dla_twin=empty, swap=empty,
                       option_attention=empty, letter_attention=empty, accuracy=acc, twin_accuracy=float("nan"),
                       logit_diff=diff, topic=topic, shots=shots, seed=cfg.seed, not_found=reason)
    ll_t = letter_logits(m, batch.swapped_ids, batch.final_pos, answers, bs)
    tacc = float((ll_t.argmax(1) == batch.swapped_correct).double().mean())

    def side(ids: torch.Tensor, letter_pos: torch.Tensor) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        d = dla_by_source(m, ids, batch.final_pos, {str(j): answers[j].repeat(n) for j in range(K)}, batch_size=bs)
        dla = torch.stack([d.total(str(j)) for j in range(K)], -1).permute(1, 0, 2, 3).double().numpy()
        return (stats.slot_contrast(dla), _attention_on(d.attention, batch.option_region),
                _letters_on(d.attention, letter_pos))

    cp, op, lp = side(batch.ids, batch.letter_pos)
    ct, ot, lt = side(batch.swapped_ids, batch.swapped_letter_pos)
    correct, twin = batch.correct.numpy(), batch.swapped_correct.numpy()
    to_np = lambda x: x.permute(1, 0, 2).double().numpy()       # noqa: E731  [B, L, H] -> [L, B, H]
    return EPStats(batch=batch, answers=answers, dla_prompt=cp, dla_twin=ct, swap=swap_contrast(cp, ct, correct, twin),
                   option_attention=0.5 * (to_np(op) + to_np(ot)), letter_attention=0.5 * (to_np(lp) + to_np(lt)),
                   accuracy=acc, twin_accuracy=tacc, logit_diff=diff, topic=topic, shots=shots, seed=cfg.seed)


EP_PASS: SharedPass[EPStats] = SharedPass(
    name="mcqa_ep", compute=compute_ep,
    key=lambda m, cfg: (cfg.seed, _n_prompts(cfg), cfg.batch_size, mcqa_format(cfg),
                        bool(cfg.options.get("mcqa_require_skill", True)), str(m.dtype), str(m.device)))


def amplification_result(swap: np.ndarray, option_attention: np.ndarray, *, seed: int, data_description: str,
                         letter_attention: np.ndarray | None = None, details: dict[str, Any] | None = None,
                         n_perm: int = stats.N_PERM) -> DetectorResult:
    """The ``amplification`` result from per-prompt swap contrasts and option attention ``[L, B, H]``."""
    att = option_attention.mean(1)
    extras = {"option_attention": att, "low_option_attention": (att <= MAX_OPTION_ATTENTION).astype(float)}
    if letter_attention is not None:
        extras["letter_attention"] = letter_attention.mean(1)
    draws = stats.signflip_null(swap, n_perm, rng=stats.rng_for(seed, "amplification:signflip"))
    scores = stats.mean_over_prompts(swap)
    tested = stats.evaluate(swap, draws, AMP_RULE, seed=seed, salt="amplification", scores=scores, extras=extras)
    res = stats.result("amplification", tested, scores=scores, rule=AMP_RULE, data_description=data_description,
                       null_description=f"sign flips of the per-prompt swap contrasts ({tested.n_null} draws)",
                       n_prompts=swap.shape[1], seed=seed, extras=extras, details=details)
    readers = [(a, b) for a, b in zip(*np.nonzero((tested.q_value <= AMP_RULE.fdr) & (tested.effect >= MIN_DLA)))
               if att[a, b] > MAX_OPTION_ATTENTION]
    res.details["readers"] = [{"head": f"L{a}H{b}", "dla_swap": float(tested.effect[a, b]),
                               "option_attention": float(att[a, b])} for a, b in readers]
    res.details["max_option_attention"] = MAX_OPTION_ATTENTION
    return res


def ep_stats(m: LoadedModel, cfg: ScanConfig) -> EPStats:
    """The shared pass; raises the skill gate's ``not found`` when the model is at chance."""
    st = cfg.shared(EP_PASS, m)
    if st.not_found:
        raise InputError(st.not_found)
    return st


def run_amplification(m: LoadedModel, cfg: ScanConfig) -> DetectorResult:
    st = ep_stats(m, cfg)
    return amplification_result(st.swap, st.option_attention, letter_attention=st.letter_attention, seed=cfg.seed,
                                data_description=(f"{st.describe()}; score = mean over prompts of the DLA swap "
                                                  "contrast; option attention = final-token attention on the "
                                                  "question's options block"),
                                details=st.common_details())


def ep_check(m: LoadedModel, cfg: ScanConfig, result: DetectorResult, *, kind: str = "mean") -> CausalCheck:
    """Ablate the labelled heads on held-out prompts of the same format: does the MCQA logit difference
    fall more than for layer-matched random heads?"""
    n = 8 if cfg.quick else 16
    seed = cfg.seed + EVAL_SEED_OFFSET
    topic, shots, n_options = mcqa_format(cfg)
    batch = mcqa_batch(m.tokenizer, n, seed=seed, topic=topic, shots=shots, n_options=n_options)
    answers = answer_letter_ids(m.tokenizer, batch)
    return ablation_check(m, result.labelled, batch.ids, mcqa_logit_diff(batch, answers),
                          metric="MCQA logit difference (correct letter - mean other letters)", expected="decrease",
                          seed=cfg.seed, kind=kind, batch_size=cfg.batch_size,
                          description=(f"logit(correct letter) - mean logit(other letters) at the final token of {n} "
                                       f"held-out {topic} MCQA prompts ({shots}-shot, seed {seed}), {kind} ablation "
                                       "over those prompts per position"))


_LIEBERUM = "Lieberum et al. 2023, arXiv 2307.09458"
AMPLIFICATION = register(Detector(
    name="amplification", evidence="dla", metric="MCQA logit difference", stage="EP", method="DLA with answer-swapped contrast + attention pattern (MCQA)",
    summary="raises the correct option letter's logit at the final token without reading the options",
    citation=_LIEBERUM, run=run_amplification, uses=(EP_PASS,), causal=ep_check))
