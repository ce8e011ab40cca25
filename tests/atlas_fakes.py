"""Fake detectors for the atlas / scan / CLI tests, registered only inside a test (the real
detectors are tested elsewhere): they let the atlas be tested independently of them.

- ``fake_prev`` (ICI): a real computation: mean attention from position i to i-1 on seeded random
  tokens, against the mean attention to a random earlier position (the matched control), via a pattern
  reducer; p, q, CI and stability from :mod:`headatlas.stats` (sign-flip null of the per-prompt
  differences, so ``quick``'s 4 prompts cannot reach q <= 0.05: labels need more prompts).
- ``fake_planted`` (LR) / ``fake_planted_kr`` (KR): scores are an array passed in ``ScanConfig.options``,
  tested against null draws N(0, 0.1) per head (a planted 0.9 is labelled, 0 is not).
- ``fake_skip``: its data cannot fit (InputError) -> a skipped result.
- ``fake_boom``: a bug (RuntimeError) -> must propagate.
Each call is counted in ``CALLS`` (resume tests).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from headatlas import stats
from headatlas.detectors import base
from headatlas.detectors.base import Detector, DetectorResult, LabelRule, ScanConfig
from headatlas.detectors.options import Option
from headatlas.errors import InputError
from headatlas.instrument import Taps, instrumented

CALLS: Counter = Counter()


def _prev_run(m, cfg: ScanConfig) -> DetectorResult:
    CALLS["fake_prev"] += 1
    L, H = m.info.n_layers, m.info.n_heads
    n = cfg.n_prompts or (4 if cfg.quick else 8)
    seq = min(24, m.info.n_ctx)
    g = torch.Generator().manual_seed(cfg.seed)
    vocab = min(m.info.vocab_size, 64)
    ids = torch.randint(3, vocab, (n, seq), generator=g)
    # null: for every query i >= 2, one random key in [0, i-2] (not the previous token)
    rand_k = torch.stack([torch.randint(0, max(1, i - 1), (n,), generator=g) for i in range(2, seq)], dim=1)
    prev_pp = np.zeros((L, n, H))
    null_pp = np.zeros((L, n, H))
    q = torch.arange(2, seq)
    done = 0
    for start in range(0, n, cfg.batch_size):
        batch = ids[start:start + cfg.batch_size]
        rk = rand_k[start:start + batch.shape[0]]                       # [B, Q']

        def reducer(layer, pattern, call, _rk=rk):
            p = pattern.float()                                         # [B, H, Q, K]
            prev = p[:, :, q, q - 1].mean(-1)                           # [B, H]
            nul = torch.stack([p[b][:, q, _rk[b]] for b in range(p.shape[0])]).mean(-1)  # [B, H]
            return prev, nul

        with torch.no_grad(), instrumented(m, taps=Taps(reducer=reducer)) as rec:
            m.model(batch)
        for layer in range(L):
            prev, nul = rec.reduced[layer][0]
            prev_pp[layer, start:start + batch.shape[0]] = prev.numpy()
            null_pp[layer, start:start + batch.shape[0]] = nul.numpy()
        done += batch.shape[0]
        cfg.tick(done, n)
    score = prev_pp.mean(1)
    rule = LabelRule(statistic="attention to the previous token minus attention to a random earlier key",
                     direction="greater", min_effect=0.1, min_score=0.3)
    d = prev_pp - null_pp
    draws = stats.signflip_null(d, 999, rng=stats.rng_for(cfg.seed, "fake_prev:null"))
    tested = stats.evaluate(d, draws, rule, seed=cfg.seed, salt="fake_prev", scores=score, n_boot=200)
    return stats.result("fake_prev", tested, scores=score, rule=rule, data_description=f"{n} random-token rows of {seq}",
                        null_description="attention to a random earlier key (sign-flip null of the paired differences)",
                        n_prompts=n, seed=cfg.seed, extras={"offset": np.ones((L, H), dtype=np.int64)},
                        details={"seq": seq}, null_mean=null_pp.mean(1), null_std=null_pp.std(1))


def _planted(name: str):
    def run(m, cfg: ScanConfig) -> DetectorResult:
        CALLS[name] += 1
        L, H = m.info.n_layers, m.info.n_heads
        scores = np.asarray(cfg.options.get(name, np.zeros((L, H))), dtype=float)
        rule = LabelRule(statistic="planted score", direction="greater", min_effect=0.5)
        draws = stats.rng_for(cfg.seed, name).normal(0.0, 0.1, size=(999, L, H))
        tested = stats.evaluate(scores[:, None, :], draws, rule, seed=cfg.seed, salt=name, scores=scores, n_boot=50)
        return stats.result(name, tested, scores=scores, rule=rule, data_description="planted array",
                            null_description="N(0, 0.1) draws per head", n_prompts=1, seed=cfg.seed,
                            extras={"twice": 2 * scores}, details={"top": tuple(tested.labelled[:1]), "note": "planted"})
    return run


def _skip(m, cfg):
    CALLS["fake_skip"] += 1
    raise InputError(f"needs 100000 positions; the model has {m.info.n_ctx}")


def _boom(m, cfg):
    CALLS["fake_boom"] += 1
    raise RuntimeError("a bug inside the detector")


def _scores_option(name: str) -> Option:
    return Option(name, "array", None, "the planted scores [n_layers, n_heads] (default: zeros)")


_NO_CAUSAL = "a test detector: no behaviour to ablate against"
FAKES = {
    "fake_prev": Detector("fake_prev", "ICI", "attention pattern", "attention to the previous token", "test", _prev_run,
                          no_causal=_NO_CAUSAL),
    "fake_planted": Detector("fake_planted", "LR", "planted", "scores passed in options", "test", _planted("fake_planted"),
                             no_causal=_NO_CAUSAL, options=(_scores_option("fake_planted"),)),
    "fake_planted_kr": Detector("fake_planted_kr", "KR", "planted", "scores passed in options", "test",
                                _planted("fake_planted_kr"), no_causal=_NO_CAUSAL,
                                options=(_scores_option("fake_planted_kr"),)),
    "fake_skip": Detector("fake_skip", "ICI", "none", "data never fits", "test", _skip, no_causal=_NO_CAUSAL),
    "fake_boom": Detector("fake_boom", "EP", "none", "always fails", "test", _boom, no_causal=_NO_CAUSAL),
}


@pytest.fixture
def fake_registry(monkeypatch):
    """Replace the detector registry by the fakes for one test (real detectors are out of the way)."""
    monkeypatch.setattr(base, "_REGISTRY", dict(FAKES))
    CALLS.clear()
    return base._REGISTRY
