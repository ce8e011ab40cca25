"""In-context heads (Yu & Ananiadou 2024, arXiv 2402.02872): the heads whose last-token output writes the label
an in-context mapping assigns.

``in_context``: foo/bar classification prompts (``tasks/icl.py`` :func:`class_batch`, the label mapping drawn
per prompt). Class pairs the model classifies at chance (accuracy < :data:`MIN_PAIR_ACCURACY`) are dropped;
if the remaining accuracy is not above chance (one-sided binomial p > 0.05): ``not found``. Score: each
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
from ...instrument import Taps, instrumented
from ...methods import engine
from ...methods.dla import capture_final_residual, direct_logit_effect
from ...tasks.icl import class_batch
from ..base import NOT_FOUND, Detector, DetectorResult, LabelRule, ScanConfig, register
from ..causal import ablation_check, effect_map_result

if TYPE_CHECKING:
    from ...models import LoadedModel

K_SHOT = 8
MIN_PAIR_ACCURACY = 0.6
MIN_DLA = 0.1               # logits
CHANCE_ALPHA = 0.05         # ICL accuracy must beat chance at this level (one-sided binomial)
EVAL_SEED_OFFSET = 1000

IC_RULE = LabelRule(statistic=("direct logit attribution at the last token to logit(correct label) - logit(other "
                               "label), foo/bar classification with a per-prompt label mapping"),
                    direction="greater", min_effect=MIN_DLA)


def _n(cfg: ScanConfig, quick: int, full: int) -> int:
    return int(cfg.n_prompts) if cfg.n_prompts else (quick if cfg.quick else full)


def _kept_rows(ld: torch.Tensor, pair: torch.Tensor) -> tuple[torch.Tensor, dict[str, float], list[int]]:
    acc = {}
    keep = []
    from ...tasks.icl import PAIRS
    for p in sorted(set(pair.tolist())):
        s = pair == p
        a = float((ld[s] > 0).float().mean())
        acc["/".join(PAIRS[p])] = a
        if a >= MIN_PAIR_ACCURACY:
            keep.append(p)
    return torch.isin(pair, torch.tensor(keep, dtype=pair.dtype)), acc, keep


def run_in_context(m: LoadedModel, cfg: ScanConfig) -> DetectorResult:
    n = _n(cfg, 6, 48)
    b = class_batch(m.tokenizer, n, K_SHOT if not cfg.quick else 4, seed=cfg.seed)
    L = m.info.n_layers
    per = []
    lds = []
    for s in range(0, n, cfg.batch_size):
        e = min(s + cfg.batch_size, n)
        with torch.no_grad(), capture_final_residual(m) as resid, instrumented(m, taps=Taps(z=True)) as rec:
            lg = engine.logits_of(m, b.ids[s:e].to(m.device), True)[:, -1].float().cpu()
            r = resid[-1][:, -1]
            c, o = b.correct[s:e], b.other[s:e]
            a_in = {l: resid.attn_in[l][-1][:, -1] for l in resid.attn_in}   # sandwich-norm inputs (Gemma 2/3)
            per.append(torch.stack([(direct_logit_effect(m, l, rec.z(l)[:, -1], r, c.to(r.device), a_in.get(l))
                                     - direct_logit_effect(m, l, rec.z(l)[:, -1], r, o.to(r.device), a_in.get(l)))
                                    .float().cpu() for l in range(L)]))
        lds.append(lg.gather(1, c[:, None])[:, 0] - lg.gather(1, o[:, None])[:, 0])
    ld = torch.cat(lds)
    per_prompt = torch.cat(per, dim=1).double().numpy()
    keep, acc, kept_pairs = _kept_rows(ld, b.pair)
    n_keep = int(keep.sum())
    hits = int((ld[keep] > 0).sum())
    binom_p = float(sps.binomtest(hits, n_keep, 0.5, alternative="greater").pvalue) if n_keep else 1.0
    overall = hits / n_keep if n_keep else float("nan")
    if not n_keep or binom_p > CHANCE_ALPHA:
        raise InputError(f"{NOT_FOUND}foo/bar ICL classification is at chance (per class pair accuracy "
                         f"{', '.join(f'{k} {v:.2f}' for k, v in acc.items())}; kept pairs: {hits}/{n_keep} correct, "
                         f"binomial p = {binom_p:.3g})")
    res = effect_map_result(
        "in_context", per_prompt[:, keep.numpy()], IC_RULE, seed=cfg.seed,
        data_description=(f"{n_keep} foo/bar classification prompts ({K_SHOT if not cfg.quick else 4}-shot, Q:/A: "
                          "template, label mapping drawn per prompt) of the class pairs the model classifies above "
                          f"{MIN_PAIR_ACCURACY}; score = DLA at the last token to logit(correct) - logit(other label)"),
        null_description=("sign flips of the per-prompt DLA contrasts (swapping the label mapping flips the contrast "
                          "of a head that does not read it)"),
        details={"accuracy_per_pair": acc, "kept_pairs": kept_pairs, "accuracy": overall, "binomial_p": binom_p,
                 "mean_logit_diff": float(ld[keep].mean())})
    return res


def ic_check(m: LoadedModel, cfg: ScanConfig, result: DetectorResult) -> CausalCheck:
    n = _n(cfg, 6, 16)
    seed = cfg.seed + EVAL_SEED_OFFSET
    pairs = result.details.get("kept_pairs")
    b = class_batch(m.tokenizer, n, K_SHOT if not cfg.quick else 4, seed=seed, pairs=pairs)

    def fn(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        last = logits[:, -1]
        c, o = b.correct.to(last.device)[rows], b.other.to(last.device)[rows]
        return last.gather(1, c[:, None])[:, 0] - last.gather(1, o[:, None])[:, 0]
    return ablation_check(m, result.labelled, b.ids, fn, metric="logit(correct label) - logit(other label)",
                          expected="decrease", seed=cfg.seed, kind="zero", batch_size=cfg.batch_size, keep_last=1,
                          description=(f"foo/bar classification logit difference at the last token of {n} held-out "
                                       f"prompts (seed {seed}) of the class pairs kept for detection, zero ablation"))


IN_CONTEXT = register(Detector(
    name="in_context", evidence="dla", metric="in-context task", stage="LR", method="direct logit attribution + zero ablation",
    summary="a head whose last-token output writes the label the in-context mapping assigns (foo/bar classification)",
    citation="Yu & Ananiadou 2024, arXiv 2402.02872", run=run_in_context, causal=ic_check, default=False))
