"""In-context heads (Yu & Ananiadou 2024, arXiv 2402.02872): the heads whose last-token output writes the label
an in-context mapping assigns.

``in_context``: foo/bar classification prompts (``tasks/icl.py`` :func:`class_batch`, the label mapping drawn
per prompt). Class pairs are selected on their own prompts (seed + :data:`SELECT_SEED_OFFSET`, logits only):
pairs the model classifies at chance there (accuracy < :data:`MIN_PAIR_ACCURACY`) are dropped. The detection
prompts (seed) are then drawn from the kept pairs only, and the behaviour test runs on them: if their accuracy
is not above chance (one-sided binomial p > 0.05): ``not found``. (Version 2 kept pairs by their accuracy on
the very prompts its binomial test then used: a model at chance passed that gate 12.5% of the time.) Score: each
head's direct logit attribution at the last position to ``logit(correct label) - logit(other label)``;
null: sign flips per prompt (swapping the mapping swaps the two labels and flips the contrast of a head that
does not read the mapping). Causal check: zero-ablating the labelled heads lowers the logit difference on
held-out prompts (seed + 1000, the class pairs kept for detection) more than layer-matched random sets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from scipy import stats as sps

from ...atlas.records import CausalCheck
from ...errors import InputError
from ...instrument import Taps, instrumented, stack_layers
from ...methods import engine
from ...methods.dla import capture_final_residual, direct_logit_effect
from ...tasks.icl import class_batch
from ..base import NOT_FOUND, Detector, DetectorResult, LabelRule, ScanConfig, register
from ..behaviours import Behaviour, HeadOp, at_positions, per_prompt, token_logit_diff
from ..causal import effect_map_result, set_check

if TYPE_CHECKING:
    from ...models import LoadedModel

K_SHOT = 8
MIN_PAIR_ACCURACY = 0.6
MIN_DLA = 0.1               # logits
CHANCE_ALPHA = 0.05         # ICL accuracy must beat chance at this level (one-sided binomial)
EVAL_SEED_OFFSET = 1000
SELECT_SEED_OFFSET = 2000   # the prompts that select the class pairs (never the detection or held-out ones)

IC_RULE = LabelRule(statistic=("direct logit attribution at the last token to logit(correct label) - logit(other "
                               "label), foo/bar classification with a per-prompt label mapping"),
                    direction="greater", min_effect=MIN_DLA)


def _n(cfg: ScanConfig, quick: int, full: int) -> int:
    return int(cfg.n_prompts) if cfg.n_prompts else (quick if cfg.quick else full)


def select_pairs(ld: torch.Tensor, pair: torch.Tensor) -> tuple[list[int], dict[str, float]]:
    """The class pairs whose accuracy (``ld [B] > 0``: logit(correct) - logit(other)) reaches
    :data:`MIN_PAIR_ACCURACY` on these prompts, and every pair's accuracy."""
    from ...tasks.icl import PAIRS

    acc, keep = {}, []
    for p in sorted(set(pair.tolist())):
        a = float((ld[pair == p] > 0).float().mean())
        acc["/".join(PAIRS[p])] = a
        if a >= MIN_PAIR_ACCURACY:
            keep.append(p)
    return keep, acc


def above_chance(ld: torch.Tensor) -> tuple[int, int, float]:
    """``(correct, n, one-sided binomial p)`` of ``ld [B] > 0`` against chance (0.5)."""
    n, hits = int(ld.numel()), int((ld > 0).sum())
    return hits, n, float(sps.binomtest(hits, n, 0.5, alternative="greater").pvalue) if n else 1.0


def _last_logit_diff(m: LoadedModel, b, batch_size: int) -> torch.Tensor:
    out = []
    for s in range(0, b.ids.shape[0], batch_size):
        lg = engine.logits_of(m, b.ids[s:s + batch_size].to(m.device), True)[:, -1].float().cpu()
        c, o = b.correct[s:s + batch_size], b.other[s:s + batch_size]
        out.append(lg.gather(1, c[:, None])[:, 0] - lg.gather(1, o[:, None])[:, 0])
    return torch.cat(out)


def run_in_context(m: LoadedModel, cfg: ScanConfig) -> DetectorResult:
    n = _n(cfg, 6, 48)
    k = K_SHOT if not cfg.quick else 4
    sel = class_batch(m.tokenizer, n, k, seed=cfg.seed + SELECT_SEED_OFFSET)
    with torch.no_grad():
        kept_pairs, acc = select_pairs(_last_logit_diff(m, sel, cfg.batch_size), sel.pair)
    if not kept_pairs:
        raise InputError(f"{NOT_FOUND}foo/bar ICL classification is at chance for every class pair (accuracy "
                         f"{', '.join(f'{k} {v:.2f}' for k, v in acc.items())} on {n} selection prompts, "
                         f"seed {cfg.seed + SELECT_SEED_OFFSET}; {MIN_PAIR_ACCURACY} needed)")
    b = class_batch(m.tokenizer, n, k, seed=cfg.seed, pairs=kept_pairs)
    L = m.info.n_layers
    per = []
    lds = []
    for s in range(0, n, cfg.batch_size):
        e = min(s + cfg.batch_size, n)
        with torch.no_grad(), capture_final_residual(m) as resid, instrumented(m, taps=Taps(z=True)) as rec:
            lg = engine.logits_of(m, b.ids[s:e].to(m.device), True)[:, -1].float().cpu()
            r = resid[-1][:, -1]
            c, o = b.correct[s:e], b.other[s:e]
            a_in = {l: resid.attn_in[l][-1][:, -1] for l in resid.attn_in}   # sandwich-norm inputs (models/arch.py table)
            per.append(stack_layers({l: (direct_logit_effect(m, l, rec.z(l)[:, -1], r, c.to(r.device), a_in.get(l))
                                         - direct_logit_effect(m, l, rec.z(l)[:, -1], r, o.to(r.device), a_in.get(l)))
                                        .float().cpu() for l in m.info.attention_layers}, L))
        lds.append(lg.gather(1, c[:, None])[:, 0] - lg.gather(1, o[:, None])[:, 0])
    ld = torch.cat(lds)
    per_prompt = torch.cat(per, dim=1).double().numpy()
    hits, n_det, binom_p = above_chance(ld)
    _, det_acc = select_pairs(ld, b.pair)
    if binom_p > CHANCE_ALPHA:
        raise InputError(f"{NOT_FOUND}foo/bar ICL classification is at chance on the detection prompts of the kept "
                         f"pairs ({hits}/{n_det} correct, binomial p = {binom_p:.3g}; selection accuracy "
                         f"{', '.join(f'{k} {v:.2f}' for k, v in acc.items())})")
    res = effect_map_result(
        "in_context", per_prompt, IC_RULE, seed=cfg.seed,
        data_description=(f"{n_det} foo/bar classification prompts ({k}-shot, Q:/A: template, label mapping drawn "
                          f"per prompt) of the class pairs the model classifies above {MIN_PAIR_ACCURACY} on {n} "
                          f"separate selection prompts (seed {cfg.seed + SELECT_SEED_OFFSET}); score = DLA at the last "
                          "token to logit(correct) - logit(other label)"),
        null_description=("sign flips of the per-prompt DLA contrasts (swapping the label mapping flips the contrast "
                          "of a head that does not read it)"),
        details={"accuracy_per_pair": det_acc, "selection_accuracy_per_pair": acc, "kept_pairs": kept_pairs,
                 "accuracy": hits / n_det, "binomial_p": binom_p, "mean_logit_diff": float(ld.mean()),
                 "selection": f"{n} prompts, seed {cfg.seed + SELECT_SEED_OFFSET} (not used for detection)"})
    return res


def ic_behaviour(m: LoadedModel, cfg: ScanConfig, result: DetectorResult) -> Behaviour:
    """The foo/bar classification logit difference at the last token of held-out prompts of the kept class pairs."""
    n = _n(cfg, 6, 16)
    seed = cfg.seed + EVAL_SEED_OFFSET
    b = class_batch(m.tokenizer, n, K_SHOT if not cfg.quick else 4, seed=seed, pairs=result.details.get("kept_pairs"))
    S = b.ids.shape[1]
    fn = at_positions(torch.full((b.ids.shape[0],), S - 1), S, 1, token_logit_diff(b.correct, b.other))
    return Behaviour(family="in-context task", metric="logit(correct label) - logit(other label)", expected="decrease",
                     ids=b.ids, score=per_prompt(fn), keep=1, intervention=HeadOp("zero"),
                     description=(f"foo/bar classification logit difference at the last token of {n} held-out prompts "
                                  f"(seed {seed}) of the class pairs kept for detection, zero ablation"))


def ic_check(m: LoadedModel, cfg: ScanConfig, result: DetectorResult) -> CausalCheck:
    return set_check(m, cfg, result, ic_behaviour(m, cfg, result))


IN_CONTEXT = register(Detector(
    name="in_context", evidence="dla", metric="in-context task", stage="LR", method="direct logit attribution + zero ablation",
    summary="a head whose last-token output writes the label the in-context mapping assigns (foo/bar classification)",
    citation="Yu & Ananiadou 2024, arXiv 2402.02872", run=run_in_context, causal=ic_check, behaviour=ic_behaviour, default=False,
    version=3))
