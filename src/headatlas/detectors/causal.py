"""Causal checks for labels, and per-head effect maps turned into detector results.

A label is a claim that the model's behaviour depends on the head. :func:`ablation_check` ablates
the labelled set (mean ablation by default, zero as an option) and ``n_random`` random sets of the
same size drawn from matched layers (each labelled head is replaced by a random unlabelled head of
the same layer, or of the nearest layer that has one), and compares the change of a behavioural
metric. The p-value is the rank of the labelled change among the random ones:
``(1 + #{random change at least as large in the expected direction}) / (1 + n_random)``.

:func:`effect_map_result` turns any method's per-head, per-prompt effects (patching, attribution,
DLA) into a :class:`DetectorResult` with a sign-flip null, p, q, CI and labels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch

from .. import stats
from ..atlas.records import CausalCheck, DetectorResult, LabelRule
from ..instrument import HeadEdit, Taps, instrumented

if TYPE_CHECKING:
    from ..models import LoadedModel

N_RANDOM = 20
BehaviourFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]   # (logits [b, S, V], rows [b]) -> [b]


def matched_random_sets(heads: Sequence[tuple[int, int]], n_layers: int, n_heads: int, n_sets: int,
                        rng: np.random.Generator, layers: Sequence[int] | None = None) -> list[list[tuple[int, int]]]:
    """``n_sets`` random head sets, each the size of ``heads``, layer-matched: every labelled head in
    layer ``l`` is replaced by a distinct unlabelled head of layer ``l`` (or of the nearest layer with
    one left). When the model has fewer unlabelled heads than labelled ones, labelled heads fill in.
    ``layers``: the layers with heads (a hybrid's ``info.attention_layers``; default all)."""
    labelled = set(map(tuple, heads))
    out = []
    for _ in range(n_sets):
        free = {la: [h for h in range(n_heads) if (la, h) not in labelled]
                for la in (range(n_layers) if layers is None else layers)}
        for la in free:
            rng.shuffle(free[la])
        chosen: list[tuple[int, int]] = []
        for la, _h in heads:
            for dist in range(n_layers):
                cands = [x for x in (la - dist, la + dist) if free.get(x)]
                if cands:
                    x = cands[int(rng.integers(len(cands)))]
                    chosen.append((x, free[x].pop()))
                    break
            else:   # every unlabelled head is taken: fill with labelled heads not yet chosen
                rest = [lh for lh in sorted(labelled) if lh not in chosen]
                chosen.append(rest[int(rng.integers(len(rest)))])
        out.append(chosen)
    return out


def ablation_check(m: LoadedModel, heads: Sequence[tuple[int, int]], ids: torch.Tensor, fn: BehaviourFn, *,
                   metric: str, expected: str, seed: int, description: str, kind: str = "mean",
                   n_random: int = N_RANDOM, batch_size: int = 8, keep_last: int | None = None) -> CausalCheck:
    """Ablate ``heads`` and ``n_random`` layer-matched random sets on prompts ``ids [B, S]``.

    ``fn(logits, rows) -> [b]`` is the behaviour per prompt (``rows`` index ``ids``); with ``keep_last``
    only the last ``keep_last`` positions are unembedded (``logits [b, keep_last, V]``), which is where a
    large vocabulary costs. ``expected`` is ``"increase"`` (e.g. a loss) or ``"decrease"`` (a log-prob, a
    logit difference) under ablation of the real heads. Mean ablation replaces a head's output by its
    mean over ``ids`` at the same position (one capture pass serves every head set)."""
    if expected not in ("increase", "decrease"):
        raise ValueError(f"expected must be 'increase' or 'decrease', got {expected!r}")
    if kind not in ("mean", "zero"):
        raise ValueError(f"causal checks use mean or zero ablation, not {kind!r}")
    heads = [(int(a), int(b)) for a, b in heads]
    if not heads:
        return CausalCheck(metric=metric, kind="none", note="no heads were labelled: nothing to ablate",
                           description=description)
    means = _position_means(m, ids, batch_size) if kind == "mean" else None

    def run(hs: list[tuple[int, int]]) -> np.ndarray:
        return _run_edits(m, ids, fn, _edits(hs, kind, means), batch_size, keep_last)

    clean = run([])
    labelled = run(heads)
    rng = stats.rng_for(seed, f"causal:{metric}")
    sets = matched_random_sets(heads, m.info.n_layers, m.info.n_heads, n_random, rng, m.info.attention_layers)
    random_changes = [float(np.mean(run(s) - clean)) for s in sets]
    effect = float(np.mean(labelled - clean))
    sign = 1.0 if expected == "increase" else -1.0
    hits = sum(1 for r in random_changes if sign * r >= sign * effect)
    return CausalCheck(metric=metric, kind=kind, heads=tuple(heads), effect=effect,
                       random_effects=tuple(random_changes), p_value=(1 + hits) / (1 + len(random_changes)),
                       n_prompts=int(ids.shape[0]), baseline=float(np.mean(clean)), expected=expected,
                       description=description)


def _position_means(m: LoadedModel, ids: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Per layer, every head's output averaged over the prompts at each position: ``[1, S, H, d_head]``."""
    sums: list[torch.Tensor] = []
    for s in range(0, ids.shape[0], batch_size):
        with torch.no_grad(), instrumented(m, taps=Taps(z=True)) as rec:
            m.model(input_ids=ids[s:s + batch_size].to(m.device), use_cache=False, logits_to_keep=1)
        part = [rec.z(layer).sum(0, keepdim=True) if layer in m.info.attention_layers else torch.zeros(())
                for layer in range(m.info.n_layers)]   # a hybrid's layers without heads: never ablated
        sums = part if not sums else [a + b for a, b in zip(sums, part)]
    return [x / ids.shape[0] for x in sums]


def _edits(heads: list[tuple[int, int]], kind: str, means: list[torch.Tensor] | None) -> list[HeadEdit]:
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    if kind == "zero":
        return [HeadEdit(layer, hs, "zero") for layer, hs in by_layer.items()]
    assert means is not None
    return [HeadEdit(layer, hs, "patch", source=means[layer]) for layer, hs in by_layer.items()]


def _run_edits(m: LoadedModel, ids: torch.Tensor, fn: BehaviourFn, edits: list, batch_size: int,
               keep_last: int | None) -> np.ndarray:
    """``[B]`` the behaviour of every prompt with ``edits`` applied (none: the clean run)."""
    out = []
    kw = {} if keep_last is None else {"logits_to_keep": int(keep_last)}
    for s in range(0, ids.shape[0], batch_size):
        e = min(s + batch_size, ids.shape[0])
        with torch.no_grad(), instrumented(m, edits=edits):
            logits = m.model(input_ids=ids[s:e].to(m.device), use_cache=False, **kw).logits
        out.append(fn(logits.float(), torch.arange(s, e)).detach().cpu().double().numpy())
    return np.concatenate(out)


def effect_map_result(name: str, per_prompt: np.ndarray, rule: LabelRule, *, seed: int, data_description: str,
                      null_description: str | None = None, extras: dict[str, np.ndarray] | None = None,
                      details: dict | None = None, n_perm: int = stats.N_PERM) -> DetectorResult:
    """A result from per-prompt, per-head effects ``[L, B, H]`` of any causal method (patching,
    attribution, direct logit attribution).

    The score is the mean effect; the null flips each prompt's sign (the effect of a head that does
    nothing for this behaviour is symmetric around 0 across prompts: for a contrast such as
    logit(IO) - logit(S), swapping the two answers flips it exactly)."""
    rng = stats.rng_for(seed, f"{name}:signflip")
    draws = stats.signflip_null(per_prompt, n_perm, rng=rng)
    scores = stats.mean_over_prompts(per_prompt)
    tested = stats.evaluate(per_prompt, draws, rule, seed=seed, salt=name, scores=scores, extras=extras)
    return stats.result(name, tested, scores=scores, rule=rule, data_description=data_description,
                        null_description=null_description or (
                            "sign-flip permutations of the per-prompt effects (each prompt's effect may flip "
                            f"sign under the null; {tested.n_null} draws)"),
                        n_prompts=per_prompt.shape[1], seed=seed, extras=extras, details=details)
