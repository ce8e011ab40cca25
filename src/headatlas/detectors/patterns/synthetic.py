"""The two seeded forward passes the pattern detectors share, reduced to per-head statistics.

One batch of ``[BOS] + block * n_repeats`` random-token sequences (:mod:`headatlas.tasks.repeats`)
and its non-repeated twin are run once each, with a per-layer pattern reducer (full patterns
are never kept for all layers). Every statistic is kept per prompt, ``[n_layers, n_prompts,
n_heads, ...]``, so the detectors can average over prompts and take spreads for their nulls.
The passes are a declared :class:`~headatlas.detectors.base.SharedPass` (:data:`SYNTHETIC`): within
one scan (one :class:`~headatlas.detectors.base.ScanCache`) the five pattern detectors share one
computation per (seed, sizes, dtype, device); nothing is cached on the model between scans.

Statistics (``W`` = ``window``, offsets counted backwards from the query):
- on the non-repeated twin (queries ``i > W``): ``offset_mass [.., W+1]`` attention on key ``i - j``;
  ``key_mass [.., W+1]`` attention on key ``j`` (``j = 0`` is the first token / BOS);
  ``argmax [.., W+2]`` where the top key sits (``i - j``, or elsewhere); ``prev_excl_first`` the
  previous-token share of the non-first-token attention (TransformerLens ``exclude_bos``);
  ``dup_null``/``ind_null`` the duplicate/induction masses measured at the positions they occupy
  in the repeated twin;
- on the repeated sequences (queries in repeats 2+): ``dup`` mass on earlier copies, ``ind`` mass
  on the tokens after earlier copies, ``argmax_rep`` as above, and ``copying``/``copying_logit``:
  each head's direct effect (:mod:`.ov`) on the logit of the token an induction head would copy,
  standardised over the vocabulary / raw (minus the vocabulary mean).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ... import stats
from ...atlas.records import DetectorResult, LabelRule
from ...errors import InputError
from ...instrument import Taps, instrumented, stack_layers
from ...tasks.repeats import RepeatBatch, fit_block_len, repeated_tokens, token_pool
from ...tasks.vocab import bos_id
from ...methods import dla as ov
from . import scoring as patterns
from ..base import ScanConfig, SharedPass
from ..options import Option

if TYPE_CHECKING:
    from ...models import LoadedModel

DEFAULT_PROMPTS = 16   # prompts are the resampling unit of the sign-flip nulls: 2^16 sign patterns
QUICK_PROMPTS = 12
BLOCK_LEN = 40
N_REPEATS = 3
WINDOW = 8
COPY_QUERIES = 16   # queries per prompt for the OV copying score (a mean; 16 x prompts samples)

# the options of the detectors that share these passes (previous_token, duplicate_token, induction, positional,
# attention_sink): one name, one meaning for all five
SYNTHETIC_OPTIONS = (
    Option("window", "int", WINDOW, "relative offsets 0..window scored by the positional and previous-token "
           "statistics", low=1, high=64),
    Option("block_len", "int", BLOCK_LEN, "length of the random block repeated 3 times (the longest that fits the "
           "model's context and vocabulary, up to this)", low=4, high=4096),
)


def check_synthetic_options(values: dict[str, Any]) -> None:
    """The repeated block must be longer than the scored window (``block_len >= window + 2``)."""
    window, block = values.get("window", WINDOW), values.get("block_len", BLOCK_LEN)
    if block < window + 2:
        raise InputError(f"option 'block_len' ({block}) must be at least window + 2 = {window + 2}: the scored offsets "
                         "must fit inside one block")


@dataclass(frozen=True)
class SyntheticSpec:
    """Sizes of the shared data (the cache key, with the model's dtype and device)."""

    seed: int
    n_prompts: int
    block_len: int
    n_repeats: int
    window: int
    batch_size: int


@dataclass
class SyntheticStats:
    """Per-layer, per-prompt, per-head statistics (numpy float64), see the module docstring."""

    spec: SyntheticSpec
    batch: RepeatBatch
    offset_mass: np.ndarray       # [L, B, H, W+1]
    key_mass: np.ndarray          # [L, B, H, W+1]
    argmax: np.ndarray            # [L, B, H, W+2]
    argmax_rep: np.ndarray        # [L, B, H, W+2]
    prev_excl_first: np.ndarray   # [L, B, H]
    dup: np.ndarray               # [L, B, H]
    dup_null: np.ndarray          # [L, B, H]
    ind: np.ndarray               # [L, B, H]
    ind_null: np.ndarray          # [L, B, H]
    copying: np.ndarray           # [L, B, H]  (NaN when the model has no readable unembedding)
    copying_logit: np.ndarray     # [L, B, H]

    def describe(self) -> str:
        """The repeated data and its twin (duplicate-token, induction, positional)."""
        return (f"{self.batch.describe()}, and as many non-repeated random sequences of the same length "
                f"(seed {self.spec.seed})")

    def describe_random(self) -> str:
        """The non-repeated data (previous-token, attention-sink, positional)."""
        bos = "[BOS] + " if self.batch.start else ""
        n = self.batch.seq_len - self.batch.start
        return (f"{self.batch.batch} sequences of {bos}{n} random ordinary tokens, none repeated at the block "
                f"distance {self.batch.block_len} (seed {self.spec.seed})")


def spec_for(m: LoadedModel, cfg: ScanConfig) -> SyntheticSpec:
    """Fit the data to the model's vocabulary and context (InputError when it cannot fit)."""
    n = int(cfg.n_prompts or (QUICK_PROMPTS if cfg.quick else DEFAULT_PROMPTS))
    window = int(cfg.options.get("window", WINDOW))
    pool = token_pool(m.tokenizer).numel()
    has_bos = bos_id(m.tokenizer) is not None
    want = int(cfg.options.get("block_len", BLOCK_LEN))
    block = fit_block_len(pool, m.info.n_ctx, n_repeats=N_REPEATS, want=want, has_bos=has_bos,
                          minimum=window + 2)
    return SyntheticSpec(seed=int(cfg.seed), n_prompts=n, block_len=block, n_repeats=N_REPEATS, window=window,
                         batch_size=max(1, int(cfg.batch_size)))


def _null_reducer(window: int, rep_ids: torch.Tensor):
    """Reducer for the non-repeated twin; ``rep_ids`` the repeated rows of the same chunk."""
    S = rep_ids.shape[1]
    queries = torch.arange(S) > window
    dup_m, ind_m = patterns.duplicate_mask(rep_ids), patterns.induction_mask(rep_ids)
    prev = torch.ones(S, S, dtype=torch.bool).tril(-1) & ~torch.ones(S, S, dtype=torch.bool).tril(-2)

    def reduce(layer: int, pattern: torch.Tensor, call) -> dict[str, torch.Tensor]:
        dev = pattern.device
        q = queries.to(dev)
        return {
            "offset_mass": patterns.offset_mass(pattern, [-j for j in range(window + 1)], q).cpu(),
            "key_mass": patterns.key_mass(pattern, list(range(window + 1)), q).cpu(),
            "argmax": patterns.argmax_offset_fractions(pattern, window, q).cpu(),
            "prev_excl_first": patterns.mul_score(pattern, prev.to(dev), q, exclude_first=True).cpu(),
            "dup_null": patterns.mask_mass(pattern, dup_m.to(dev)).cpu(),
            "ind_null": patterns.mask_mass(pattern, ind_m.to(dev)).cpu(),
        }

    return reduce


def _repeat_reducer(window: int, rep_ids: torch.Tensor, start: int, block_len: int):
    S = rep_ids.shape[1]
    dup_m, ind_m = patterns.duplicate_mask(rep_ids), patterns.induction_mask(rep_ids)
    queries = torch.arange(S) >= start + block_len

    def reduce(layer: int, pattern: torch.Tensor, call) -> dict[str, torch.Tensor]:
        dev = pattern.device
        return {
            "dup": patterns.mask_mass(pattern, dup_m.to(dev)).cpu(),
            "ind": patterns.mask_mass(pattern, ind_m.to(dev)).cpu(),
            "argmax_rep": patterns.argmax_offset_fractions(pattern, window, queries.to(dev)).cpu(),
        }

    return reduce


def _copying(m: LoadedModel, rec, store: ov.ResidualStore, rep_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[L, B, H]`` standardised and raw direct effect of each head on the induction target's logit,
    averaged over up to ``COPY_QUERIES`` evenly spaced queries that have a target in every row."""
    r = ov.readout(m)
    dev = r.W_U.device
    targets = patterns.induction_targets(rep_ids)                  # [B, S]
    pos = torch.nonzero((targets >= 0).all(0)).flatten()
    if pos.numel() > COPY_QUERIES:
        pos = pos[torch.linspace(0, pos.numel() - 1, COPY_QUERIES).round().long()]
    tgt, res = targets[:, pos].to(dev), store[0][:, pos].to(dev)
    zs, logits = {}, {}
    for layer in m.info.attention_layers:
        a_in = store.attn_in[layer][0][:, pos] if layer in store.attn_in else None
        out = ov.residual_outputs(m, layer, rec.z(layer)[:, pos], a_in)                   # [B, P, H, M]
        eff = ov.logit_effects(out, res, tgt, r)
        zs[layer] = eff["z"].mean(1)
        logits[layer] = eff["logit"].sub(eff["mean"]).mean(1)
    L = m.info.n_layers
    return stack_layers(zs, L).cpu(), stack_layers(logits, L).cpu()


def _stack(chunks: list[dict[int, dict[str, torch.Tensor]]], name: str, n_layers: int) -> np.ndarray:
    """Concatenate one statistic over batch chunks and stack layers: ``[L, B, ...]``."""
    per_layer = {layer: torch.cat([c[layer][name] for c in chunks], 0) for layer in chunks[0]}
    return stack_layers(per_layer, n_layers).double().numpy()   # NaN rows: a hybrid's layers without heads


def _run_chunk(m: LoadedModel, ids: torch.Tensor, reducer, *, with_z: bool):
    taps = Taps(reducer=reducer, z=with_z)
    with torch.no_grad(), ov.capture_final_residual(m) as resid, instrumented(m, taps=taps) as rec:
        m.model(ids.to(m.device))
    reduced = {layer: vals[0] for layer, vals in rec.reduced.items()}
    return reduced, rec, (resid if resid else None)


def compute_synthetic(m: LoadedModel, cfg: ScanConfig) -> SyntheticStats:
    """Run the two shared passes for ``cfg`` (use :func:`synthetic_stats` to share them within a scan)."""
    spec = spec_for(m, cfg)
    g = torch.Generator().manual_seed(spec.seed)
    batch = repeated_tokens(m.tokenizer, spec.n_prompts, spec.block_len, spec.n_repeats, g)
    L = m.info.n_layers
    null_chunks, rep_chunks, cz, cl = [], [], [], []
    starts = list(range(0, spec.n_prompts, spec.batch_size))
    for i, b0 in enumerate(starts):
        rep = batch.ids[b0:b0 + spec.batch_size]
        null = batch.null_ids[b0:b0 + spec.batch_size]
        red, _, _ = _run_chunk(m, null, _null_reducer(spec.window, rep), with_z=False)
        null_chunks.append(red)
        red, rec, resid = _run_chunk(m, rep, _repeat_reducer(spec.window, rep, batch.start, batch.block_len),
                                     with_z=True)
        rep_chunks.append(red)
        z, lg = _copying(m, rec, resid, rep)
        cz.append(z)
        cl.append(lg)
        del rec
        cfg.tick(i + 1, len(starts))
    stats = SyntheticStats(
        spec=spec, batch=batch,
        offset_mass=_stack(null_chunks, "offset_mass", L), key_mass=_stack(null_chunks, "key_mass", L),
        argmax=_stack(null_chunks, "argmax", L), argmax_rep=_stack(rep_chunks, "argmax_rep", L),
        prev_excl_first=_stack(null_chunks, "prev_excl_first", L),
        dup=_stack(rep_chunks, "dup", L), dup_null=_stack(null_chunks, "dup_null", L),
        ind=_stack(rep_chunks, "ind", L), ind_null=_stack(null_chunks, "ind_null", L),
        copying=torch.cat(cz, 1).double().numpy(), copying_logit=torch.cat(cl, 1).double().numpy(),
    )
    return stats


SYNTHETIC: SharedPass[SyntheticStats] = SharedPass(
    name="synthetic", compute=compute_synthetic,
    key=lambda m, cfg: (spec_for(m, cfg), str(m.dtype), str(m.device)))


def synthetic_stats(m: LoadedModel, cfg: ScanConfig) -> SyntheticStats:
    """The shared random-token passes for ``cfg``, computed once per scan (:data:`SYNTHETIC`)."""
    return cfg.shared(SYNTHETIC, m)


def mean_std(values: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) std over ``axes`` of ``[L, B, H, ...]`` values, ignoring NaN."""
    return np.nanmean(values, axis=axes), np.nanstd(values, axis=axes)


def twin_result(name: str, st: SyntheticStats, score: np.ndarray, twin: np.ndarray, rule: LabelRule, seed: int, *,
                what: str, extras: dict[str, np.ndarray] | None = None, details: dict | None = None) -> DetectorResult:
    """The result of a repeat-vs-twin detector (duplicate token, induction): per prompt, the head's ``score``
    ``[L, B, H]`` on the repeats minus ``twin``, the same mass at the same key positions of the non-repeated
    twin; p from sign flips of those differences; null mean/std: ``twin`` over prompts. ``what`` names the
    mass in the null's description."""
    diff = score - twin
    draws = stats.signflip_null(diff, rng=stats.rng_for(seed, f"{name}:null"))
    scores = score.mean(1)
    tested = stats.evaluate(diff, draws, rule, seed=seed, salt=name, scores=scores, extras=extras)
    null_mean, null_std = mean_std(twin, (1,))
    return stats.result(
        name, tested, scores=scores, rule=rule, null_mean=null_mean, null_std=null_std,
        data_description=f"{st.describe()}; queries in repeats 2+",
        null_description=(f"null mean/std: the {what} on the non-repeated twin sequences at the same key positions; "
                          f"p: sign-flip permutations of the per-prompt differences ({tested.n_null} draws)"),
        n_prompts=st.spec.n_prompts, seed=st.spec.seed, extras=extras, details=details)


def example_prompt(m: LoadedModel, cfg: ScanConfig) -> torch.Tensor:
    """The first repeated random-token sequence of the shared data (the pattern detectors' token view)."""
    return synthetic_stats(m, cfg).batch.ids[0]
