"""Answer-promoting multiple-choice heads (stage EP): ``amplification`` (Lieberum et al. 2023, arXiv
2307.09458) here, and the data pass of the whole MCQA family (:data:`EP_PASS`): ``amplification``,
``correct`` (Wiegreffe et al. 2024, arXiv 2407.15018; patching in
:mod:`headatlas.detectors.patching.mcqa_correct`), ``constant``, ``single_letter``, ``correct_letter``
(:mod:`headatlas.detectors.dla.mcqa`) and ``content_gatherer``'s receivers read these prompts.

Data: ``tasks/mcqa.py`` lettered questions with answer-swapped twins (the same prefix, question and
option values, rotated so that the answer sits under another letter). Default format: prototypical
colours after 3 solved examples, ``K = 4`` letters (``options["mcqa_topic"]`` = ``"colors"`` |
``"arithmetic"``, ``options["mcqa_shots"]`` = 0..8, ``options["mcqa_options"]`` = 2..4); the final token
is ``:`` of ``Answer:``.

Skill gate: every head of the family is defined by the *correct* letter (which letter it raises, attends
to, or carries), which only exists when the model knows the answer. The pass first reads the answer
letters' logits on the prompts; when the accuracy is not above chance (one-sided binomial test, p > 0.05)
the detectors raise ``InputError("not found: the model answers N% ...")`` (``options
["mcqa_require_skill"]=False`` runs them anyway, e.g. in tests). Otherwise it reads the twins' letter
logits and runs one :func:`headatlas.methods.dla.dla_by_source` pass over the prompts and one over the
twins, keeping each letter's DLA, its part read from the letter positions and the final token's attention
rows (:class:`EPStats`).

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
from ...tasks.mcqa import LETTERS, TOPICS, MCQABatch, mcqa_batch
from ...tasks.text import check_english
from ..base import NOT_FOUND, Detector, DetectorResult, LabelRule, ScanConfig, SharedPass, register
from ..behaviours import Behaviour, HeadOp, at_positions, per_prompt
from ..causal import set_check
from ..options import Option

if TYPE_CHECKING:
    from ...models import LoadedModel

MIN_DLA = 0.05                 # logits: the smallest swap contrast worth an amplification label
MAX_OPTION_ATTENTION = 0.1     # an amplifier reads (almost) nothing from the options block
MIN_PATCH = 0.1                # logits of logit(k) - logit(k2): the smallest patching effect worth a label
GATE_ALPHA = 0.05
EVAL_SEED_OFFSET = 1000        # held-out check prompts: seed + this
DEFAULT_TOPIC, DEFAULT_SHOTS, DEFAULT_OPTIONS = "colors", 3, 4
EP_OPTIONS = (
    Option("mcqa_topic", "choice", DEFAULT_TOPIC, "what the questions ask", choices=TOPICS),
    Option("mcqa_shots", "int", DEFAULT_SHOTS, "solved examples before each question", low=0, high=8),
    Option("mcqa_options", "int", DEFAULT_OPTIONS, "lettered options per question", low=2, high=len(LETTERS)),
    Option("mcqa_require_skill", "bool", True, "report 'not found' unless the model answers above chance"),
)

AMP_RULE = LabelRule(statistic=("DLA swap contrast at the final token: the head's DLA to logit(letter) - mean "
                                "logit(other letters) when the letter is the answer minus when the same letter "
                                "is not (answer-swapped twin), with little attention to the options"),
                     direction="greater", min_effect=MIN_DLA, extra_min=(("low_option_attention", 1.0),))

def answer_letter_ids(tokenizer: Any, batch: MCQABatch) -> torch.Tensor:
    """``[K]`` the tokens the model writes as its answer after ``Answer:``: " A" when that is one token
    (GPT-style vocabularies), else the bare letter."""
    out = []
    for j, tid in enumerate(batch.letter_ids.tolist()):
        t = tokenizer.encode(" " + tokenizer.decode([tid]), add_special_tokens=False)
        out.append(t[0] if len(t) == 1 else tid)
    return torch.tensor(out)


def at_slot(x: np.ndarray, slot: np.ndarray) -> np.ndarray:
    """``x [L, B, H, K]``, ``slot [B]`` -> ``[L, B, H]`` the entry of each prompt's slot."""
    pick = np.broadcast_to(slot[None, :, None, None], x.shape[:3] + (1,))
    return np.take_along_axis(x, pick, axis=3)[..., 0]


def swap_contrast(x_prompt: np.ndarray, x_twin: np.ndarray, correct: np.ndarray, twin_correct: np.ndarray
                  ) -> np.ndarray:
    """``x_* [L, B, H, K]`` per-letter values of prompts and their answer-swapped twins, ``correct`` /
    ``twin_correct [B]`` their answer letters -> ``[L, B, H]``:
    ``((x_P[k] - x_T[k]) + (x_T[k2] - x_P[k2])) / 2`` (a letter when it is the answer minus the same
    letter when it is not; 0 for any head whose values do not follow the answer)."""
    return 0.5 * ((at_slot(x_prompt, correct) - at_slot(x_twin, correct))
                  + (at_slot(x_twin, twin_correct) - at_slot(x_prompt, twin_correct)))


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
    """The shared pass of the whole MCQA family (numpy float64 unless noted; ``L`` layers, ``B`` prompts,
    ``H`` heads, ``K`` letters, ``S`` positions): the skill gate, then one :func:`dla_by_source` pass over
    the prompts and one over their twins."""

    batch: MCQABatch
    answers: torch.Tensor        # [K] the answer tokens
    letter_dla: np.ndarray       # [L, B, H, K] direct effect on each answer letter's logit, prompts
    letter_dla_twin: np.ndarray  # [L, B, H, K] the same on the twins
    from_letters: np.ndarray     # [L, B, H, K] the part of letter_dla read from the K letter positions
    attn: torch.Tensor           # [B, L, H, S] float32: the final token's attention rows, prompts
    attn_twin: torch.Tensor      # [B, L, H, S] float32: the same on the twins
    swap: np.ndarray             # [L, B, H] swap contrast of the DLA contrasts
    option_attention: np.ndarray  # [L, B, H] final-token attention on the options block (mean of prompt, twin)
    letter_attention: np.ndarray  # [L, B, H] final-token attention on the K letters (mean of prompt, twin)
    accuracy: float
    twin_accuracy: float
    logit_diff: float
    topic: str
    shots: int
    seed: int
    not_found: str | None = None  # the skill gate's reason (kept in the pass, so a scan pays the gate once)

    @property
    def dla_prompt(self) -> np.ndarray:
        """``[L, B, H, K]`` DLA to ``logit(letter) - mean logit(other letters)`` on the prompts."""
        return stats.slot_contrast(self.letter_dla)

    def describe(self) -> str:
        B, K = self.swap.shape[1], self.letter_dla.shape[-1]
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


def _side(m: LoadedModel, ids: torch.Tensor, batch: MCQABatch, letter_pos: torch.Tensor, answers: torch.Tensor,
          batch_size: int) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """One :func:`dla_by_source` pass: ``(letter DLA [L, B, H, K], its part from the letter positions
    [L, B, H, K], attention rows [B, L, H, S])``."""
    n, K = ids.shape[0], answers.numel()
    d = dla_by_source(m, ids, batch.final_pos, {str(j): answers[j].repeat(n) for j in range(K)}, batch_size=batch_size)
    dla = torch.stack([d.total(str(j)) for j in range(K)], -1).permute(1, 0, 2, 3).double().numpy()
    rows = torch.arange(n)
    at = torch.stack([d.values[str(j)][rows[:, None], :, :, letter_pos].sum(1) for j in range(K)], -1)   # [B, L, H, K]
    return dla, at.permute(1, 0, 2, 3).double().numpy(), d.attention


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
        empty, none = np.zeros((0,)), torch.zeros(0)
        return EPStats(batch=batch, answers=answers, letter_dla=empty, letter_dla_twin=empty, from_letters=empty,
                       attn=none, attn_twin=none, swap=empty, option_attention=empty, letter_attention=empty,
                       accuracy=acc, twin_accuracy=float("nan"), logit_diff=diff, topic=topic, shots=shots,
                       seed=cfg.seed, not_found=reason)
    ll_t = letter_logits(m, batch.swapped_ids, batch.final_pos, answers, bs)
    tacc = float((ll_t.argmax(1) == batch.swapped_correct).double().mean())
    dp, fp, ap = _side(m, batch.ids, batch, batch.letter_pos, answers, bs)
    dt, _, at = _side(m, batch.swapped_ids, batch, batch.swapped_letter_pos, answers, bs)
    correct, twin = batch.correct.numpy(), batch.swapped_correct.numpy()
    to_np = lambda x: x.permute(1, 0, 2).double().numpy()       # noqa: E731  [B, L, H] -> [L, B, H]
    region = batch.option_region
    return EPStats(batch=batch, answers=answers, letter_dla=dp, letter_dla_twin=dt, from_letters=fp, attn=ap,
                   attn_twin=at, swap=swap_contrast(stats.slot_contrast(dp), stats.slot_contrast(dt), correct, twin),
                   option_attention=0.5 * (to_np(_attention_on(ap, region)) + to_np(_attention_on(at, region))),
                   letter_attention=0.5 * (to_np(_letters_on(ap, batch.letter_pos))
                                           + to_np(_letters_on(at, batch.swapped_letter_pos))),
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


def mcqa_behaviour(batch: MCQABatch, answers: torch.Tensor, *, kind: str, description: str) -> Behaviour:
    """logit(correct letter) - mean logit(other letters) at each prompt's final position (the MCQA checks)."""
    S = batch.ids.shape[1]
    keep = S - int(batch.final_pos.min())

    def letters(lg: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        ll = lg[:, answers.to(lg.device)]
        c = ll.gather(1, batch.correct[p].to(ll.device)[:, None])[:, 0]
        return c - (ll.sum(1) - c) / (ll.shape[1] - 1)

    return Behaviour(family="MCQA logit difference", metric="MCQA logit difference (correct letter - mean other letters)",
                     expected="decrease", ids=batch.ids, score=per_prompt(at_positions(batch.final_pos, S, keep, letters)),
                     keep=keep, intervention=HeadOp(kind), description=description)


def format_behaviour(m: LoadedModel, cfg: ScanConfig, fmt: tuple[str, int, int], *, kind: str = "mean") -> Behaviour:
    """The MCQA logit difference on held-out prompts (seed + 1000) of format ``fmt`` = ``(topic, shots,
    n_options)``."""
    n = 8 if cfg.quick else 16
    seed = cfg.seed + EVAL_SEED_OFFSET
    topic, shots, n_options = fmt
    batch = mcqa_batch(m.tokenizer, n, seed=seed, topic=topic, shots=shots, n_options=n_options)
    return mcqa_behaviour(batch, answer_letter_ids(m.tokenizer, batch), kind=kind,
                          description=(f"logit(correct letter) - mean logit(other letters) at the final token of {n} "
                                       f"held-out {topic} MCQA prompts ({shots}-shot, {n_options} options, seed "
                                       f"{seed}), {kind} ablation over those prompts per position"))


def ep_behaviour(m: LoadedModel, cfg: ScanConfig, result: DetectorResult | None = None, *,
                 kind: str = "mean") -> Behaviour:
    """The MCQA logit difference on held-out prompts of the scan's format (:func:`mcqa_format`; ``result`` is not
    read): the check of every MCQA detector."""
    return format_behaviour(m, cfg, mcqa_format(cfg), kind=kind)


def ep_check(m: LoadedModel, cfg: ScanConfig, result: DetectorResult, *, kind: str = "mean") -> CausalCheck:
    """Ablate the labelled heads on held-out prompts of the scan's format: does the MCQA logit difference fall more
    than for layer-matched random heads?"""
    return set_check(m, cfg, result, ep_behaviour(m, cfg, result, kind=kind))


_LIEBERUM = "Lieberum et al. 2023, arXiv 2307.09458"
AMPLIFICATION = register(Detector(
    name="amplification", evidence="dla", metric="MCQA logit difference", stage="EP", method="DLA with answer-swapped contrast + attention pattern (MCQA)",
    summary="raises the correct option letter's logit at the final token without reading the options",
    citation=_LIEBERUM, run=run_amplification, uses=(EP_PASS,), options=EP_OPTIONS, causal=ep_check, behaviour=ep_behaviour))
