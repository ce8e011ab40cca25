"""Learned head gating (Causal Head Gating, Nam et al. 2025): facilitating heads on repeated random tokens.

Method-defined, not a survey head type (``places_stage=False``); the stage is LR because the gated task
is the in-context copying of a repeated block (the behaviour induction heads serve). Steps:

1. Gates (:func:`headatlas.methods.gating.gate`) are fitted on ``[BOS] + block + block`` random-token
   prompts (loss: predicting the second copy), toward 0 (G-) and toward 1 (G+), over seeds. Score per
   head: G- averaged over seeds (the facilitation score, in [0, 1]); ``extras`` carry G+, the spreads and
   the unregularised gates; ``details["classes"]`` CHG's classes.
2. Effect, on held-out prompts (another seed) and their non-repeated twins (same length, no token equal
   to the one a block earlier): per prompt, the rise of the loss on the second block when the head's
   gate closes, starting from the seed-mean G- gates, minus the same on the twin. The (at most 16) heads
   with the highest G- >= 0.5 are closed exactly (one forward per head and prompt; only they can be
   labelled: ``extras["exact"]``); for the others the first-order change ``-g * dloss/dg`` stands in. Null: sign flips of the per-prompt
   differences (repeat and twin are exchangeable for a head whose contribution ignores repetition).
3. Label: q <= 0.05, effect >= 0.1 nats, G- >= 0.5 (the fit kept it), and closing it raises the loss on the
   repeat by >= 0.1 nats on its own (``extras["closing_task"]``): facilitating, and for the repeat more
   than for unrepeated tokens. 0.1 nats per target token is well below one induction head's share of the
   repeat loss on smollm2 (mean-ablating its 10 induction heads raises it by 6.25 nats,
   docs/atlas-smollm2-135m.md); a smaller change is not worth calling the head a part of the task's circuit.

A model that does not use the repeat (loss on the second copy not below the twin's by >= 0.5 nats) is
skipped as "not found". Causal check: mean-ablating the labelled heads raises the repeat loss on fresh
prompts against layer-matched random sets (``behaviours.repeat_loss_check``). When ``induction`` or
``previous_token`` ran in the same scan, ``details["agreement"]`` holds the overlap and Jaccard index of
their labels with this detector's labels and with the facilitating class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ... import stats
from ...instrument import instrumented
from ...methods.gating import (
    CLASSES,
    closing_effects,
    first_target,
    gate,
    gate_edits,
    per_prompt_loss,
    target_mask,
)
from ...tasks.repeats import fit_block_len, repeated_tokens, token_pool
from ...tasks.vocab import bos_id
from ..base import NOT_FOUND, Detector, DetectorResult, LabelRule, ScanConfig, register
from ..behaviours import repeat_loss_behaviour, repeat_loss_check

if TYPE_CHECKING:
    from ...models import LoadedModel

MIN_EFFECT = 0.1          # nats per target token
MIN_GATE = 0.5
MAX_EXACT = 16            # at most this many heads (the highest G- among those >= MIN_GATE) are closed exactly
MIN_GAP = 0.5             # the model must predict the repeat better than the twin by this many nats
EVAL_SALT = 7919          # held-out prompts: seed + EVAL_SALT
LAM = 0.01
RULE = LabelRule(statistic=("rise of the repeat loss when the head's gate closes (from the G- gates) minus the same "
                            "on the non-repeated twin, nats per token (mean over held-out prompts)"),
                 direction="greater", min_effect=MIN_EFFECT, min_score=MIN_GATE,
                 extra_min=(("closing_task", MIN_EFFECT), ("exact", 1.0)))
COMPARE = ("induction", "previous_token", "duplicate_token")


@dataclass(frozen=True)
class Settings:
    n_fit: int
    n_eval: int
    block: int
    steps: int
    init_steps: int
    n_seeds: int

    @staticmethod
    def of(cfg: ScanConfig) -> Settings:
        if cfg.quick:
            return Settings(n_fit=4, n_eval=8, block=8, steps=16, init_steps=8, n_seeds=1)
        n = int(cfg.n_prompts or 16)
        return Settings(n_fit=max(2, n // 8), n_eval=n, block=10, steps=30, init_steps=15, n_seeds=2)


def exact_closing(m: LoadedModel, ids: torch.Tensor, mask: torch.Tensor, gates: np.ndarray,
                  heads: list[tuple[int, int]], batch_size: int) -> np.ndarray:
    """``[len(heads), B]`` the loss change of each prompt when each head's gate goes from ``gates`` to 0."""
    G = torch.as_tensor(gates, dtype=torch.float32)
    B = ids.shape[0]
    first = first_target(mask)
    rows = [(None, b) for b in range(B)] + [(i, b) for i in range(len(heads)) for b in range(B)]
    losses = np.zeros(len(rows))
    with torch.no_grad():
        for s in range(0, len(rows), batch_size):
            part = rows[s:s + batch_size]
            g = G[None].repeat(len(part), 1, 1)
            for r, (i, _) in enumerate(part):
                if i is not None:
                    g[r, heads[i][0], heads[i][1]] = 0.0
            b_idx = torch.tensor([b for _, b in part])
            x = ids[b_idx]
            with instrumented(m, edits=gate_edits(g.to(ids.device), m.info.attention_layers)):
                logits = m.model(input_ids=x, use_cache=False, logits_to_keep=x.shape[1] - first).logits
            losses[s:s + len(part)] = per_prompt_loss(logits, x[:, first:], mask[b_idx][:, first:]).double().cpu().numpy()
    base = losses[:B]
    return losses[B:].reshape(len(heads), B) - base[None]


def exact_heads(gates: np.ndarray) -> list[tuple[int, int]]:
    """The heads closed exactly: gate >= MIN_GATE, the MAX_EXACT highest (ties by layer, head)."""
    open_ = [(int(a), int(b)) for a, b in zip(*np.nonzero(gates >= MIN_GATE))]
    return sorted(sorted(open_, key=lambda lh: -float(gates[lh]))[:MAX_EXACT])


def closing_map(m: LoadedModel, ids: torch.Tensor, mask: torch.Tensor, gates: np.ndarray, batch_size: int) -> np.ndarray:
    """``[L, B, H]`` per-prompt closing effects: exact for :func:`exact_heads`, first order otherwise."""
    out = closing_effects(m, ids, gates, targets=torch.cat([torch.zeros(ids.shape[0], 1, dtype=torch.bool), mask], 1),
                          batch_size=batch_size)
    open_heads = exact_heads(gates)
    if open_heads:
        exact = exact_closing(m, ids, mask, gates, open_heads, batch_size)
        for i, (layer, head) in enumerate(open_heads):
            out[layer, :, head] = exact[i]
    return out


def _agreement(cfg: ScanConfig, labelled: list[tuple[int, int]], facilitating: list[tuple[int, int]]) -> dict:
    out = {}
    for name in COMPARE:
        r = cfg.results.get(name)
        if r is None or r.skipped:
            continue
        theirs = [tuple(x) for x in r.labelled]
        out[name] = {"their_labels": len(theirs),
                     "overlap_labels": len(set(theirs) & set(labelled)), "jaccard_labels": stats.jaccard(theirs, labelled),
                     "overlap_facilitating": len(set(theirs) & set(facilitating)),
                     "jaccard_facilitating": stats.jaccard(theirs, facilitating)}
    return out


def run(m: LoadedModel, cfg: ScanConfig) -> DetectorResult:
    st = Settings.of(cfg)
    pool = token_pool(m.tokenizer).numel()
    block = fit_block_len(pool, m.info.n_ctx, n_repeats=2, want=st.block, has_bos=bos_id(m.tokenizer) is not None,
                          minimum=4)
    fit = repeated_tokens(m.tokenizer, st.n_fit, block, 2, torch.Generator().manual_seed(int(cfg.seed)))
    ev = repeated_tokens(m.tokenizer, st.n_eval, block, 2, torch.Generator().manual_seed(int(cfg.seed) + EVAL_SALT))
    targets = fit.repeat_positions()
    mask = target_mask(ev.ids, targets)
    L, H = m.info.n_layers, m.info.n_heads
    rep, twin = _mean_loss(m, ev.ids, mask), _mean_loss(m, ev.null_ids, mask)
    if not twin - rep >= MIN_GAP:
        raise _not_found(rep, twin)
    g = gate(m, fit.ids, targets=targets, seed=int(cfg.seed), n_seeds=st.n_seeds, steps=st.steps,
             init_steps=st.init_steps, lam=LAM)
    gm = g.minus
    task = closing_map(m, ev.ids, mask, gm, cfg.batch_size)
    ctrl = closing_map(m, ev.null_ids, mask, gm, cfg.batch_size)
    diff = task - ctrl
    exact = np.zeros((L, H))
    for lh in exact_heads(gm):
        exact[lh] = 1.0
    extras = {"closing_task": task.mean(1), "closing_twin": ctrl.mean(1), "g_minus_std": g.minus_spread,
              "g_plus": g.plus, "g_plus_std": g.plus_spread, "g_zero": g.g_zero.mean(0), "exact": exact}
    draws = stats.signflip_null(diff, rng=stats.rng_for(cfg.seed, "gating:null"))
    tested = stats.evaluate(diff, draws, RULE, seed=cfg.seed, salt="gating", scores=gm, extras=extras)
    classes = {c: [list(x) for x in g.heads(c)] for c in CLASSES}
    details = {"classes": classes, "lam": g.lam, "steps": g.steps, "init_steps": st.init_steps, "lr": g.lr,
               "n_seeds": st.n_seeds, "n_fit_prompts": st.n_fit, "block_len": block,
               "loss_clean_fit": g.loss_clean, "loss_g_minus": [float(x) for x in g.loss_minus],
               "loss_g_plus": [float(x) for x in g.loss_plus], "loss_repeat_eval": rep, "loss_twin_eval": twin,
               "exact_heads": [list(x) for x in exact_heads(gm)], "n_open": int((gm >= MIN_GATE).sum()),
               "agreement": _agreement(cfg, list(tested.labelled), g.heads("facilitating"))}
    return stats.result(
        "gating", tested, scores=gm, rule=RULE, null_mean=np.zeros((L, H)), null_std=g.minus_spread,
        data_description=(f"gates fitted on {st.n_fit} [BOS] + {block} + {block} random-token prompts (seed {cfg.seed}; "
                          f"loss on the repeat; {st.n_seeds} seeds x ({st.init_steps} unregularised + {st.steps} G- + "
                          f"{st.steps} G+ Adam steps), lam={LAM}); effects on {st.n_eval} held-out prompts (seed "
                          f"{cfg.seed + EVAL_SALT}) and their non-repeated twins"),
        null_description=("score: G- gate (seed mean; null_std = its spread over seeds; an irrelevant head's G- is 0); "
                          f"p: sign-flip permutations of the per-prompt repeat-minus-twin closing effects "
                          f"({tested.n_null} draws)"),
        n_prompts=st.n_eval, seed=int(cfg.seed), extras=extras, details=details)


def _mean_loss(m: LoadedModel, ids: torch.Tensor, mask: torch.Tensor) -> float:
    first = first_target(mask)
    with torch.no_grad():
        logits = m.model(input_ids=ids.to(m.device), use_cache=False, logits_to_keep=ids.shape[1] - first).logits
    return float(per_prompt_loss(logits, ids[:, first:].to(m.device), mask[:, first:]).mean())


def _not_found(rep: float, twin: float) -> Exception:
    from ...errors import InputError

    return InputError(f"{NOT_FOUND}the model does not use the repeat: loss on the second copy {rep:.2f} nats vs "
                      f"{twin:.2f} on non-repeated twins (gating needs a gap >= {MIN_GAP})")


DETECTOR = register(Detector(
    name="gating", evidence="patching", metric="repeat loss", stage="LR", method="learned head gating (causal head gating)",
    summary="kept open by a gate fit pushed toward 0 on repeated tokens: closing it raises the repeat loss more than on "
            "unrepeated tokens",
    citation="Nam et al. 2025, Causal Head Gating, arXiv 2505.13737; Voita et al. 2019, arXiv 1905.09418",
    run=run, causal=repeat_loss_check, behaviour=repeat_loss_behaviour, places_stage=False, default=False,
))
