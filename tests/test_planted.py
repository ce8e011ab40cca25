"""Ground truth: a tiny GPT-2 with planted heads (tests/planted.py). The core detectors must label
exactly the planted heads, and the planted induction head must carry the repeat-loss drop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from planted import PLANTED, planted_model

import headatlas
from headatlas.detectors import ScanConfig, get
from headatlas.detectors.patterns import scoring as patterns
from headatlas.instrument import Taps, instrumented, zero
from headatlas.tasks.repeats import repeated_tokens

CORE = ("previous_token", "duplicate_token", "induction", "positional", "attention_sink")
BLOCK = 40


@pytest.fixture(scope="module")
def planted():
    return headatlas.load(planted_model(seed=0))


@pytest.fixture(scope="module")
def batch(planted):
    return repeated_tokens(planted.tokenizer, 4, BLOCK, 3, torch.Generator().manual_seed(123))


def _repeat_losses(m, ids: torch.Tensor, edits=()) -> tuple[float, float]:
    """Mean next-token loss on the first block and on the repeats."""
    with torch.no_grad(), instrumented(m, edits=list(edits)):
        logits = m.model(ids).logits.float()
    lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
    return float(-lp[:, :BLOCK].mean()), float(-lp[:, BLOCK + 1:].mean())


def test_planted_heads_behave_as_designed(planted, batch):
    """Check the construction itself before trusting it as ground truth."""
    ids = batch.ids
    with torch.no_grad(), instrumented(planted, taps=Taps(pattern=True)) as rec:
        planted.model(ids)
    S = ids.shape[1]
    q = torch.arange(2, S)
    p0, p1 = rec.pattern(0), rec.pattern(1)
    assert float(p0[:, PLANTED.previous_token[1], q, q - 1].min()) > 0.99
    assert float(p0[:, PLANTED.positional[1], q, q - 2].min()) > 0.99
    later = torch.arange(1 + BLOCK, S)
    dup = (p0[:, PLANTED.duplicate_token[1]] * patterns.duplicate_mask(ids)).sum(-1)    # [B, S]
    ind = (p1[:, PLANTED.induction[1]] * patterns.induction_mask(ids)).sum(-1)
    assert float(dup[:, later].min()) > 0.99 and float(ind[:, later].min()) > 0.99
    assert float(p1[:, PLANTED.attention_sink[1], :, 0].min()) > 0.99
    for layer, head in PLANTED.random:
        assert float(rec.pattern(layer)[:, head, 4:].max()) < 0.6   # diffuse (query 0 sees one key)


@pytest.mark.parametrize("name", CORE)
def test_detectors_label_exactly_the_planted_heads(planted, name):
    r = get(name).run(planted, ScanConfig(seed=0, quick=True))
    assert r.labelled == [getattr(PLANTED, name)]
    planted_head = getattr(PLANTED, name)
    assert r.q_value[planted_head] <= 0.05 and r.ci_low[planted_head] > r.rule.min_effect
    for lh in PLANTED.random:
        assert r.effect[lh] < r.rule.min_effect and lh not in r.labelled
    if name == "positional":
        assert int(r.extras["offset"][PLANTED.positional]) == PLANTED.positional_offset
        # the previous-token head is an offset -1 positional head, left to previous_token by rule
        assert int(r.extras["offset"][PLANTED.previous_token]) == -1
        assert r.details["offset_minus_1"] == [list(PLANTED.previous_token)]
    if name == "induction":
        copying = r.extras["copying"]
        assert copying[PLANTED.induction] > 3.0
        others = np.delete(copying.ravel(), PLANTED.induction[0] * 4 + PLANTED.induction[1])
        assert np.abs(others).max() < 1.0


def test_the_scan_backs_the_planted_heads_causally(planted):
    """The scan's causal checks: mean-ablating the planted induction / previous-token head raises the
    loss on repeated random tokens more than every random head set drawn."""
    a = headatlas.scan(planted, ["induction", "previous_token"], seed=0, quick=True)
    for name in ("induction", "previous_token"):
        c = a.result(name).causal
        assert c is not None and c.kind == "mean" and c.heads == (getattr(PLANTED, name),)
        assert c.beats_every_random_set and c.effect > 1.0, (name, c)
    # the report's token view: the labelled head's attention on one of the detector's own prompts
    view = a.result("induction").details["token_view"]
    assert list(view["heads"]) == ["L1H2"] and len(view["tokens"]) == 64
    rows = view["heads"]["L1H2"]
    assert all(abs(sum(r) - 1.0) < 0.01 for r in rows[1:])     # rows are rounded for the page
    block = 40   # the planted induction head attends to the token after the earlier copy
    q = 1 + block + 5
    assert max(range(len(rows[q])), key=rows[q].__getitem__) == q - block + 1


def test_labels_hold_for_other_seeds(planted):
    for seed in (1, 2):
        for name in CORE:
            r = get(name).run(planted, ScanConfig(seed=seed, quick=True))
            assert r.labelled == [getattr(PLANTED, name)], (name, seed)


def test_ablating_the_induction_head_removes_the_repeat_loss_drop(planted, batch):
    first, rest = _repeat_losses(planted, batch.ids)
    assert rest < 0.1 * first                      # the planted circuit predicts the repeats
    _, rest_ind = _repeat_losses(planted, batch.ids, [zero(*PLANTED.induction)])
    _, rest_prev = _repeat_losses(planted, batch.ids, [zero(*PLANTED.previous_token)])
    assert rest_ind > 0.5 * first and rest_prev > 0.5 * first      # both halves of the circuit matter
    for lh in PLANTED.random:
        _, rest_rand = _repeat_losses(planted, batch.ids, [zero(*lh)])
        assert rest_rand < rest + 0.05
