"""Negative heads (KR; Yu et al. 2024, "Correcting negative bias in LLMs through negative attention score
alignment", arXiv 2408.00137): heads that attend to the negative answer word named in the instruction
of a yes/no decision, regardless of the question.

Data (``tasks/yesno.py``): easy verifiable yes/no questions (arithmetic, comparison, category), balanced
true/false in groups, each written with both answer orders in the instruction ("Answer Yes or No." /
"Answer No or Yes."), over 14 (positive, negative) answer-word pairs: Yes/No, True/False, Correct/Wrong,
Sure/Never, Yep/Nope, Approve/Reject, Positive/Negative and their lower-case forms (one true/false group per
pair by default).

Score: the paper's negative attention score (survey Eq. NAS), per head and prompt,

    NAS = sum_i (A[i, t_Yes] + A[i, t_No]) * log(A[i, t_No] / A[i, t_Yes])

with ``t_Yes``, ``t_No`` the positions of the answer words in the instruction (a word split into several
tokens: the mean attention over them, so that longer words -- negatives are often longer, "Incorrect" --
do not score by their length) and ``i`` running over the
query positions after the instruction (the question and the final "Answer:" tokens, up to the answer
position). Attention probabilities are clamped at ``EPS`` inside the log. Per item, the two answer
orders are averaged (``NAS_item = (NAS_YesNo + NAS_NoYes) / 2``), then the items of a word pair: a head that attends to the first (or
second) named option has opposite-sign NAS in the two orders, which cancel; a head that attends to the
word "No" wherever it stands keeps its NAS in both. The score is the mean over word pairs.

Why several word pairs: with Yes/No alone, "attends to No more than to Yes" is a property of two fixed
tokens, which any head has by accident (a random-weight head's keys for "No" and "Yes" differ, so its
preference is consistent across questions and a per-question null declares it significant: on the tiny
random models every head was). A negative head in the paper's sense attends to the *negative answer
candidate* named in the instruction; across word pairs an accidental token preference has a random sign.

Null (exact matched control): swapping which instruction word is called negative and which positive in
every prompt of a word pair negates that pair's order-averaged NAS exactly (``(a + b) log(b / a)`` is
antisymmetric). Under the null that the head does not prefer the negative option, the per-pair scores are
symmetric about 0; p is the add-one sign-flip permutation p over word pairs (``stats.N_PERM`` draws; 14
pairs give a smallest exact p of 2^-14), BH q over all heads. The Yes/No pair's own NAS is reported in
``extras["nas_yes_no"]``.
Label: q <= 0.05 and effect >= ``MIN_EFFECT`` (0.1: e.g. 10% of the attention of the question positions
on the two words in total, split 2.7:1 in favour of the negative word).

Word frequency (version 3): the negative word of a natural answer pair is usually the rarer one (Incorrect,
Invalid, Disagree: 10 of the 12 pairs version 2 used on smollm2), so a head that attends to rare words passed
as a negative head. The answer words are now frequency-balanced (``tasks.yesno``: the negative word is the more
frequent one in 3 of 7 pairs, mean Zipf difference negative - positive +0.08) and token-count matched;
``details["word_frequency"]`` gives each usable pair's Zipf gap, and ``details["rare_words"]`` the overlap of
the labels with the ``rare_words`` detector's (required, so it runs first in a scan) and each label's
rare_words effect.

The paper's Yes/No-only ranking is kept as a report, not a label: ``details["top_yes_no"]`` lists the
heads with the largest order-averaged NAS on the Yes/No items (4 groups, 16 prompts) and their sign-flip p
over those items.

Behaviour (``details["behaviour"]``, Yes/No prompts and all pairs): the model's "No" rate (logit(No) >
logit(Yes) at the answer position), mean ``P(No) - P(Yes)``, mean ``logit(No) - logit(Yes)`` and the
accuracy on the balanced items (true and false, both orders).

Causal check: scaling the labelled heads' outputs by ``SCALE`` (0: removed; HeadEdit ``scale``) on
held-out Yes/No items (seed + 1000, 6 groups, 24 prompts) lowers the mean ``logit(No) - logit(Yes)`` (the No bias) more than the same
edit of 99 layer-matched random sets from the clean pool (``expected="decrease"``); the No rate and accuracy before and after
go into the note and ``details["causal_rates"]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ... import stats
from ...atlas.records import CausalCheck
from ...errors import InputError
from ...instrument import Taps, instrumented
from ...tasks.text import check_english
from ...tasks.yesno import OPTION_PAIRS, YesNoBatch, frequency_gaps, yesno_batch
from ..base import Detector, DetectorResult, LabelRule, ScanConfig, register
from ..behaviours import Behaviour, HeadOp, per_prompt
from ..causal import set_check
from .conflict import keep_last

if TYPE_CHECKING:
    from ...models import LoadedModel

EPS = 1e-6
MIN_EFFECT = 0.1
SCALE = 0.0
EVAL_SEED_OFFSET = 1000
YES_NO_GROUPS = 4          # the Yes/No pair gets 4 groups (16 prompts: its NAS and the No bias), other pairs 1
TOP_YES_NO = 5
RULE = LabelRule(statistic=("negative attention score sum_i (A[i,No] + A[i,Yes]) log(A[i,No] / A[i,Yes]) over the "
                            "question positions, averaged over both answer orders, mean over answer-word pairs"),
                 direction="greater", min_effect=MIN_EFFECT)


def nas(a_yes: np.ndarray, a_no: np.ndarray, mask: np.ndarray, eps: float = EPS) -> np.ndarray:
    """Negative attention score summed over query positions.

    ``a_yes``, ``a_no``: ``[..., S]`` attention from each query position to the Yes / No word;
    ``mask``: ``[..., S]`` bool, the query positions summed over (broadcastable). Returns ``[...]``."""
    y = np.maximum(a_yes, eps)
    n = np.maximum(a_no, eps)
    return np.where(mask, (a_yes + a_no) * np.log(n / y), 0.0).sum(-1)


def order_average(per_prompt: np.ndarray, unit: np.ndarray) -> np.ndarray:
    """``[L, B, H]`` per prompt -> ``[L, U, H]`` mean over the prompts of each unit (item, or word pair)."""
    return np.stack([per_prompt[:, unit == u].mean(1) for u in np.unique(unit)], 1)


@dataclass
class YesNoStats:
    batch: YesNoBatch
    nas: np.ndarray           # [L, B, H] per prompt
    mass_no: np.ndarray       # [L, B, H] mean attention of the question positions on the negative word
    mass_yes: np.ndarray
    behaviour: dict[str, Any]
    seed: int


def _rates(gap: torch.Tensor, p_gap: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    says_no = gap > 0
    return {"no_rate": float(says_no.double().mean()), "p_no_minus_p_yes": float(p_gap.double().mean()),
            "logit_no_minus_yes": float(gap.double().mean()), "accuracy": float((says_no != truth).double().mean()),
            "no_rate_on_true": float(says_no[truth].double().mean()),
            "no_rate_on_false": float(says_no[~truth].double().mean()), "n_prompts": int(len(gap))}


def yesno_behaviour(logits: torch.Tensor, batch: YesNoBatch) -> dict[str, Any]:
    """``logits [B, V]`` at the answer position -> No rate, mean P(No) - P(Yes), logit gap and accuracy,
    on the Yes/No prompts (pair 0) and on all pairs."""
    rows = torch.arange(len(batch))
    p = torch.softmax(logits.double(), -1)
    gap = (logits[rows, batch.no_id] - logits[rows, batch.yes_id]).double()
    p_gap = p[rows, batch.no_id] - p[rows, batch.yes_id]
    yn = batch.pair == 0
    out: dict[str, Any] = {"yes_no": _rates(gap[yn], p_gap[yn], batch.truth[yn]),
                           "all_pairs": _rates(gap, p_gap, batch.truth)}
    out.update({k: v for k, v in out["yes_no"].items() if k != "n_prompts"})
    return out


def _n_groups(cfg: ScanConfig, quick_default: int = 1, full_default: int = 1) -> int:
    if cfg.n_prompts:
        return max(1, cfg.n_prompts // (4 * len(OPTION_PAIRS)))
    return quick_default if cfg.quick else full_default


def capture_nas(m: LoadedModel, batch: YesNoBatch, batch_size: int, seed: int) -> YesNoStats:
    """One forward per ``batch_size`` prompts keeping, per layer, the attention of every query on the two
    answer words (the mean over each word's tokens) and the answer-position logits."""
    B, S = batch.ids.shape
    if S > m.info.n_ctx:
        raise InputError(f"yes/no prompts need {S} positions; the model has {m.info.n_ctx}")
    L = m.info.n_layers
    a_yes = np.zeros((L, B, m.info.n_heads, S))
    a_no = np.zeros_like(a_yes)
    logits = []
    k = keep_last(batch.last, S)
    for s0 in range(0, B, batch_size):
        s1 = min(B, s0 + batch_size)
        wm = torch.stack([batch.yes_mask[s0:s1], batch.no_mask[s0:s1]], 1).float()        # [b, 2, S]
        wm = wm / wm.sum(-1, keepdim=True).clamp_min(1.0)      # a split word: the mean over its tokens

        def keep(layer: int, pattern: torch.Tensor, call: Any, wm=wm) -> torch.Tensor:
            w = wm.to(pattern.device, pattern.dtype)
            return torch.einsum("bhqk,bwk->bwhq", pattern, w).detach().float().cpu()      # [b, 2, H, S]

        with torch.no_grad(), instrumented(m, taps=Taps(reducer=keep)) as rec:
            lg = m.model(input_ids=batch.ids[s0:s1].to(m.device), use_cache=False, logits_to_keep=k).logits
        logits.append(lg[torch.arange(s1 - s0), (batch.last[s0:s1] - (S - k)).to(lg.device)].float().cpu())
        for layer in m.info.attention_layers:
            x = rec.reduced[layer][0].double().numpy()
            a_yes[layer, s0:s1] = x[:, 0]
            a_no[layer, s0:s1] = x[:, 1]
    m.info.nan_other_layers(a_yes)   # a hybrid's layers without heads
    m.info.nan_other_layers(a_no)
    pos = np.arange(S)
    mask = (pos[None, :] >= batch.q_start.numpy()[:, None]) & (pos[None, :] <= batch.last.numpy()[:, None])  # [B, S]
    m3 = mask[None, :, None, :]
    n_q = mask.sum(1)[None, :, None]
    return YesNoStats(batch=batch, nas=nas(a_yes, a_no, m3), mass_no=np.where(m3, a_no, 0.0).sum(-1) / n_q,
                      mass_yes=np.where(m3, a_yes, 0.0).sum(-1) / n_q,
                      behaviour=yesno_behaviour(torch.cat(logits), batch), seed=seed)


def compute_yesno(m: LoadedModel, cfg: ScanConfig) -> YesNoStats:
    check_english(m.tokenizer)
    batch = yesno_batch(m.tokenizer, _n_groups(cfg), seed=cfg.seed, first_pair_groups=YES_NO_GROUPS)
    return capture_nas(m, batch, cfg.batch_size, cfg.seed)


def run_negative(m: LoadedModel, cfg: ScanConfig) -> DetectorResult:
    r = negative_result(compute_yesno(m, cfg), cfg)
    r.details["rare_words"] = rare_words_overlap(cfg, r.labelled)
    return r


def word_frequency(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Zipf(negative) - Zipf(positive) of each pair, and how often the negative word is the rarer one."""
    gaps = frequency_gaps(pairs)
    return {"zipf_negative_minus_positive": {f"{a}/{b}": round(g, 2) for (a, b), g in zip(pairs, gaps)},
            "negative_rarer_in": f"{sum(g < 0 for g in gaps)} of {len(gaps)} pairs",
            "mean_gap": round(float(np.mean(gaps)), 3) if gaps else None}


def rare_words_overlap(cfg: ScanConfig, labelled: list[tuple[int, int]]) -> dict[str, Any]:
    """The labels that ``rare_words`` also labels, and the rare_words effect of every label (a negative head
    that is a rare-word head may be reading frequency, not negativity)."""
    rw = cfg.results.get("rare_words")
    if rw is None or rw.skipped:
        return {"note": "rare_words did not run in this scan" if rw is None else f"rare_words skipped: {rw.skipped}"}
    theirs = {(int(a), int(b)) for a, b in rw.labelled}
    return {"rare_words_labelled": len(theirs), "overlap": [f"L{a}H{b}" for a, b in labelled if (a, b) in theirs],
            "rare_words_effect": {f"L{a}H{b}": round(float(rw.effect[a, b]), 4) for a, b in labelled}}


def negative_result(st: YesNoStats, cfg: ScanConfig) -> DetectorResult:
    """The ``negative`` result from captured NAS values (pure: no model)."""
    b = st.batch
    pair = b.pair.numpy()
    per_pair = order_average(st.nas, pair)                                              # [L, P, H]
    if per_pair.shape[1] < 2:
        raise InputError("the negative detector needs at least two answer-word pairs the tokenizer can tell apart")
    no_first = b.no_first.numpy()
    positional = order_average(np.where(no_first[None, :, None], -st.nas, st.nas), pair)
    draws = stats.signflip_null(per_pair, rng=stats.rng_for(cfg.seed, "negative:signflip"))
    scores = stats.mean_over_prompts(per_pair)
    yn = pair == 0
    extras = {"attn_no": st.mass_no.mean(1), "attn_yes": st.mass_yes.mean(1),
              "nas_yes_no": st.nas[:, yn].mean(1) if yn.any() else np.full(scores.shape, np.nan),
              "nas_second_minus_first": positional.mean(1)}
    tested = stats.evaluate(per_pair, draws, RULE, seed=cfg.seed, salt="negative", scores=scores, extras=extras)
    top_yes_no = yes_no_only(st, cfg.seed)
    beh = st.behaviour
    data = (f"{len(b)} yes/no prompts (seed {cfg.seed}): {per_pair.shape[1]} answer-word pairs (Yes/No, True/False, "
            f"...) x true and false items (arithmetic, comparison, category) x both answer orders; on Yes/No the model "
            f"says No on {beh['no_rate']:.2f} (accuracy {beh['accuracy']:.2f}, mean P(No) - P(Yes) "
            f"{beh['p_no_minus_p_yes']:+.3f}); score = NAS averaged over the two orders and over each pair's items, "
            "mean over pairs")
    return stats.result("negative", tested, scores=scores, rule=RULE, data_description=data,
                        null_description=("negative/positive words swapped per answer-word pair (negates the pair's "
                                          f"order-averaged NAS exactly): sign flips over pairs ({tested.n_null} draws)"),
                        n_prompts=len(b), seed=cfg.seed, extras=extras,
                        details={"behaviour": beh, "n_pairs": int(per_pair.shape[1]), "pairs": [list(p) for p in b.pairs],
                                 "pairs_dropped": [list(p) for p in b.dropped], "word_frequency": word_frequency(b.pairs),
                                 "query_positions": "after the instruction up to the answer position",
                                 "top_yes_no": top_yes_no})


def yes_no_only(st: YesNoStats, seed: int, top: int = TOP_YES_NO) -> list[dict[str, Any]]:
    """The paper's Yes/No-only ranking (not a label): the ``top`` heads by mean order-averaged NAS over the
    Yes/No items, each with the sign-flip p over those items. This null does not separate an accidental
    preference for the token "No" from a negative head (a random-weight model passes it), hence no labels."""
    b = st.batch
    yn = (b.pair == 0).numpy()
    if not yn.any():
        return []
    per_item = order_average(st.nas[:, yn], b.item.numpy()[yn])                         # [L, I, H]
    eff = per_item.mean(1)
    p = stats.permutation_p(eff, stats.signflip_null(per_item, rng=stats.rng_for(seed, "negative:yes_no")), "greater")
    order = np.argsort(-np.nan_to_num(eff, nan=-np.inf), axis=None)[:top]
    return [{"head": [int(a), int(h)], "nas_yes_no": float(eff[a, h]), "p_items": float(p[a, h]),
             "n_items": int(per_item.shape[1])} for a, h in (np.unravel_index(i, eff.shape) for i in order)]


def no_gap(batch: YesNoBatch):
    """Behaviour fn ``(logits [b, S, V], rows [b]) -> [b]``: logit(No) - logit(Yes) at the answer position."""
    S = batch.ids.shape[1]

    def fn(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        r = rows.cpu()   # logits hold the last logits.shape[1] positions of the padded batch
        pos = batch.last[r] - (S - logits.shape[1])
        lg = logits[torch.arange(len(r), device=logits.device), pos.to(logits.device)]
        ar = torch.arange(len(r), device=lg.device)
        return lg[ar, batch.no_id[r].to(lg.device)] - lg[ar, batch.yes_id[r].to(lg.device)]
    return fn


def negative_behaviour(m: LoadedModel, cfg: ScanConfig, result: DetectorResult | None = None) -> Behaviour:
    """Mean logit(No) - logit(Yes) at the answer position of held-out balanced Yes/No items (seed + 1000); scaling
    negative heads' outputs by ``SCALE`` lowers the No bias."""
    seed = cfg.seed + EVAL_SEED_OFFSET
    batch = yesno_batch(m.tokenizer, 3 if cfg.quick else 6, seed=seed, pairs=OPTION_PAIRS[:1])
    return Behaviour(family="yes/no bias", metric="logit(No) - logit(Yes)", expected="decrease", ids=batch.ids,
                     score=per_prompt(no_gap(batch)), keep=keep_last(batch.last, batch.ids.shape[1]),
                     intervention=HeadOp("scale", factor=SCALE),
                     description=(f"mean logit(No) - logit(Yes) at the answer position of {len(batch)} held-out balanced "
                                  f"yes/no prompts (seed {seed}); heads' outputs scaled by {SCALE:g}"))


def negative_check(m: LoadedModel, cfg: ScanConfig, result: DetectorResult) -> CausalCheck:
    beh = negative_behaviour(m, cfg, result)
    truth = yesno_batch(m.tokenizer, 3 if cfg.quick else 6, seed=cfg.seed + EVAL_SEED_OFFSET,
                        pairs=OPTION_PAIRS[:1]).truth.numpy()

    def report(clean: np.ndarray, tested: np.ndarray, random: np.ndarray) -> str:
        no_rate = lambda x: float(np.mean(x > 0))  # noqa: E731
        acc = lambda x: float(np.mean((x > 0) != truth))  # noqa: E731
        r = {"no_rate_clean": no_rate(clean), "no_rate_edited": no_rate(tested),
             "no_rate_random_median": float(np.median([no_rate(x) for x in random])),
             "accuracy_clean": acc(clean), "accuracy_edited": acc(tested),
             "accuracy_random_median": float(np.median([acc(x) for x in random]))}
        result.details["causal_rates"] = r
        return (f"No rate {r['no_rate_clean']:.2f} -> {r['no_rate_edited']:.2f} (random sets: median "
                f"{r['no_rate_random_median']:.2f}); accuracy {r['accuracy_clean']:.2f} -> {r['accuracy_edited']:.2f}")
    return set_check(m, cfg, result, beh, report=report)


def _example(m: LoadedModel, cfg: ScanConfig) -> torch.Tensor:
    b = yesno_batch(m.tokenizer, 1, seed=cfg.seed, pairs=OPTION_PAIRS[:1])
    return b.ids[0, :int(b.last[0]) + 1]


NEGATIVE = register(Detector(
    name="negative", evidence="dla", metric="yes/no bias", stage="KR", method="scoring (negative attention score)",
    summary="attends from the question to the word 'No' named in a yes/no instruction, whatever the question",
    citation="Yu et al. 2024, arXiv 2408.00137", run=run_negative, causal=negative_check, behaviour=negative_behaviour, example=_example,
    requires=("rare_words",), default=False, version=3))
