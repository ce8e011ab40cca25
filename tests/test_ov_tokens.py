"""What a head writes (methods/ov_tokens.py) on the planted GPT-2: the planted induction head copies the token it
attends to into the unembedding's subspace, so every source promotes itself; a head whose output nothing reads
promotes nothing."""

from __future__ import annotations

import pytest
import torch
from planted import PLANTED, planted_model

import headatlas
from headatlas.methods.ov_tokens import K, ov_top_tokens


@pytest.fixture(scope="module")
def record():
    torch.manual_seed(0)
    m = headatlas.load(planted_model(seed=0))
    return m, ov_top_tokens(m, [PLANTED.induction, PLANTED.duplicate_token], n_sources=64)


def test_a_copying_head_promotes_its_source(record):
    m, rec = record
    la, h = PLANTED.induction
    w = rec["heads"][f"L{la}H{h}"]
    assert w["copy_top10"] == 1.0 and w["self_z"] > 3
    assert len(w["promoted"]) == K and all(out == src for out, _, src in w["promoted"])
    assert w["promoted"][0][1] > 3 > abs(w["suppressed"][0][1])   # a copying head suppresses nothing much
    assert 50 < rec["n_sources"] <= 64 and "source tokens" in rec["method"]   # the clean vocabulary ids


def test_a_head_nobody_reads_writes_nothing(record):
    m, rec = record
    la, h = PLANTED.duplicate_token     # writes into a subspace the unembedding does not read
    w = rec["heads"][f"L{la}H{h}"]
    assert w["copy_top10"] == 0.0 and abs(w["self_z"]) < 1e-6     # ties count against the source: no copying
    assert all(abs(z) < 1e-6 for _, z, _ in w["promoted"] + w["suppressed"])
