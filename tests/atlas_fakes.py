"""Fake detectors for the atlas / scan / CLI tests, registered only inside a test (the real
detectors are tested elsewhere): they let the atlas be tested independently of them.

- ``fake_prev`` (ICI): a real computation: mean attention from position i to i-1 on seeded random
  tokens, against the mean attention to a random earlier position (the null), via a pattern reducer.
- ``fake_planted`` (LR) / ``fake_planted_kr`` (KR): scores are an array passed in ``ScanConfig.options``.
- ``fake_skip``: its data cannot fit (InputError) -> a skipped result.
- ``fake_boom``: a bug (RuntimeError) -> must propagate.
Each call is counted in ``CALLS`` (resume tests).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from headatlas.detectors import base
from headatlas.detectors.base import Detector, DetectorResult, ScanConfig, label_heads
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
    score = np.zeros((L, H))
    null = np.zeros((L, H, n))
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
            score[layer] += prev.sum(0).numpy()
            null[layer, :, start:start + batch.shape[0]] = nul.t().numpy()
        done += batch.shape[0]
        cfg.tick(done, n)
    score /= n
    null_mean, null_std = null.mean(-1), null.std(-1) + 1e-3
    labelled = label_heads(score, null_mean, null_std, min_score=0.3, min_z=3.0)
    return DetectorResult(name="fake_prev", scores=score, null_mean=null_mean, null_std=null_std, labelled=labelled,
                          min_score=0.3, min_z=3.0, data_description=f"{n} random-token rows of {seq}",
                          null_description="attention to a random earlier key", n_prompts=n, seed=cfg.seed,
                          extras={"offset": np.ones((L, H), dtype=np.int64)}, details={"seq": seq})


def _planted(name: str):
    def run(m, cfg: ScanConfig) -> DetectorResult:
        CALLS[name] += 1
        L, H = m.info.n_layers, m.info.n_heads
        scores = np.asarray(cfg.options.get(name, np.zeros((L, H))), dtype=float)
        null_mean, null_std = np.zeros((L, H)), np.full((L, H), 0.1)
        labelled = label_heads(scores, null_mean, null_std, min_score=0.5, min_z=3.0)
        return DetectorResult(name=name, scores=scores, null_mean=null_mean, null_std=null_std, labelled=labelled,
                              min_score=0.5, min_z=3.0, data_description="planted array", null_description="zero +- 0.1",
                              n_prompts=1, seed=cfg.seed, extras={"twice": 2 * scores},
                              details={"top": tuple(labelled[:1]), "note": "planted"})
    return run


def _skip(m, cfg):
    CALLS["fake_skip"] += 1
    raise InputError(f"needs 100000 positions; the model has {m.info.n_ctx}")


def _boom(m, cfg):
    CALLS["fake_boom"] += 1
    raise RuntimeError("a bug inside the detector")


FAKES = {
    "fake_prev": Detector("fake_prev", "ICI", "attention pattern", "attention to the previous token", "test", _prev_run),
    "fake_planted": Detector("fake_planted", "LR", "planted", "scores passed in options", "test", _planted("fake_planted")),
    "fake_planted_kr": Detector("fake_planted_kr", "KR", "planted", "scores passed in options", "test",
                                _planted("fake_planted_kr")),
    "fake_skip": Detector("fake_skip", "ICI", "none", "data never fits", "test", _skip),
    "fake_boom": Detector("fake_boom", "EP", "none", "always fails", "test", _boom),
}


@pytest.fixture
def fake_registry(monkeypatch):
    """Replace the detector registry by the fakes for one test (real detectors are out of the way)."""
    monkeypatch.setattr(base, "_REGISTRY", dict(FAKES))
    CALLS.clear()
    return base._REGISTRY
