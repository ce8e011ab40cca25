"""Learned head gating (headatlas.gate) and the ``gating`` detector."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from planted import PLANTED, planted_model
from tiny import tiny_model

import headatlas
from headatlas.detectors import NOT_FOUND, ScanConfig, gating
from headatlas.errors import HeadAtlasError, InputError
from headatlas.instrument import instrumented
from headatlas.methods.gating import classify, closing_effects, gate, gate_edits, per_prompt_loss, target_mask
from headatlas.tasks.repeats import repeated_tokens


@pytest.fixture(scope="module")
def tiny():
    return headatlas.load(tiny_model("llama"))


@pytest.fixture(scope="module")
def rep(tiny):
    return repeated_tokens(tiny.tokenizer, 3, 6, 2, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_gates_at_one_change_nothing_with_and_without_grad(kind):
    m = headatlas.load(tiny_model(kind))
    ids = repeated_tokens(m.tokenizer, 2, 6, 2, torch.Generator().manual_seed(1)).ids
    with torch.no_grad():
        plain = m.model(ids).logits
    theta = torch.full((m.info.n_layers, m.info.n_heads), 50.0, requires_grad=True)   # sigmoid(50) == 1.0 in float32
    gates = torch.sigmoid(theta)
    assert bool((gates == 1).all())
    with instrumented(m, edits=gate_edits(gates)):
        gated = m.model(ids).logits
    torch.testing.assert_close(gated.detach(), plain, rtol=0, atol=1e-6)
    gated.sum().backward()
    assert theta.grad is not None and torch.isfinite(theta.grad).all()


def test_gradients_reach_the_gates_and_a_closed_head_is_zero(tiny, rep):
    L, H = tiny.info.n_layers, tiny.info.n_heads
    g = torch.full((L, H), 0.7, requires_grad=True)
    with instrumented(tiny, edits=gate_edits(g)):
        tiny.model(rep.ids).logits.float().pow(2).mean().backward()
    assert g.grad is not None and float(g.grad.abs().sum()) > 0
    # a gate of 0 equals zero ablation of the head
    closed = torch.ones(L, H)
    closed[1, 0] = 0.0
    from headatlas.instrument import zero
    with torch.no_grad():
        with instrumented(tiny, edits=gate_edits(closed)):
            a = tiny.model(rep.ids).logits
        with instrumented(tiny, edits=[zero(1, 0)]):
            b = tiny.model(rep.ids).logits
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_gate_fits_are_seeded_frozen_and_shaped(tiny, rep):
    params = list(tiny.model.parameters())
    for p in params:
        p.grad = None                      # left by other tests' backward passes
    before = [p.requires_grad for p in params]
    kw = dict(targets=rep.repeat_positions(), n_seeds=2, steps=4, init_steps=2, lam=0.01)
    a = gate(tiny, rep.ids, seed=3, **kw)
    b = gate(tiny, rep.ids, seed=3, **kw)
    c = gate(tiny, rep.ids, seed=4, **kw)
    assert [p.requires_grad for p in params] == before and all(p.grad is None for p in params)
    L, H = tiny.info.n_layers, tiny.info.n_heads
    assert a.g_minus.shape == a.g_plus.shape == a.g_zero.shape == (2, L, H)
    np.testing.assert_array_equal(a.g_minus, b.g_minus)
    np.testing.assert_array_equal(a.g_plus, b.g_plus)
    assert not np.array_equal(a.g_minus, c.g_minus)
    # the regulariser pulls the two fits apart: G- below G+ on (almost) every head
    assert (a.minus < a.plus).mean() > 0.9
    df = a.to_dataframe()
    assert list(df.columns) == ["layer", "head", "g_minus", "g_minus_std", "g_plus", "g_plus_std", "class"]
    assert len(df) == L * H and set(df["class"]) <= {"facilitating", "interfering", "irrelevant", "mixed"}
    assert a.n_targets == 3 * 6 and "seeds" in a.summary()


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_batched_fits_equal_fits_one_at_a_time(kind):
    """Seeds and the G-/G+ stages as batch rows of one forward (one gate vector per row) give the same gates,
    losses and traces as fitting each seed and stage alone, to float tolerance."""
    m = headatlas.load(tiny_model(kind))
    rep = repeated_tokens(m.tokenizer, 3, 6, 2, torch.Generator().manual_seed(2))
    kw = dict(targets=rep.repeat_positions(), n_seeds=3, steps=6, init_steps=3, lam=0.02, seed=1)
    rows = gate(m, rep.ids, batch_fits=True, **kw)
    alone = gate(m, rep.ids, batch_fits=False, **kw)
    for name in ("g_minus", "g_plus", "g_zero", "loss_minus", "loss_plus", "trace_minus"):
        np.testing.assert_allclose(getattr(rows, name), getattr(alone, name), rtol=0, atol=1e-5, err_msg=name)
    assert rows.loss_clean == alone.loss_clean
    assert not np.allclose(rows.g_minus[0], rows.g_minus[1])      # the seeds are different fits


def test_fit_losses_per_row_gates_equal_single_runs(tiny, rep):
    """One forward with F gate vectors as rows == F forwards with one gate vector each (the loss counts
    only the scored positions, which are the only ones unembedded)."""
    from headatlas.methods.gating import _fit_losses, _task_loss

    L, H = tiny.info.n_layers, tiny.info.n_heads
    mask = target_mask(rep.ids, rep.repeat_positions())
    gates = torch.rand(4, L, H, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        rows = _fit_losses(tiny, rep.ids, mask, gates)
        alone = torch.stack([_task_loss(tiny, rep.ids, mask, g) for g in gates])
        logits = tiny.model(rep.ids).logits
        full = per_prompt_loss(logits, rep.ids, mask, reduce=True)
    torch.testing.assert_close(rows, alone, rtol=0, atol=1e-5)
    ones = _task_loss(tiny, rep.ids, mask, torch.ones(L, H))
    torch.testing.assert_close(ones, full, rtol=0, atol=1e-5)


def test_classes_follow_the_two_fits():
    minus = np.array([[0.9, 0.1, 0.1, 0.8]])
    plus = np.array([[0.95, 0.2, 0.9, 0.3]])
    assert classify(minus, plus).tolist() == [["facilitating", "interfering", "irrelevant", "mixed"]]


def test_closing_effects_are_per_prompt_gradients(tiny, rep):
    L, H = tiny.info.n_layers, tiny.info.n_heads
    gates = np.full((L, H), 0.8)
    tg = rep.repeat_positions()
    both = closing_effects(tiny, rep.ids, gates, targets=tg, batch_size=2)        # [L, B, H]
    assert both.shape == (L, 3, H)
    one = closing_effects(tiny, rep.ids[2:3], gates, targets=tg)
    np.testing.assert_allclose(both[:, 2:3], one, rtol=1e-4, atol=1e-7)
    # first order: closing gate (0, 1) by a small step changes the loss by about effect * step / g
    mask = target_mask(rep.ids, tg)
    g = torch.tensor(gates, dtype=torch.float32)

    def loss(gg):
        with torch.no_grad(), instrumented(tiny, edits=gate_edits(gg)):
            return per_prompt_loss(tiny.model(rep.ids).logits, rep.ids, mask).double().numpy()

    eps = 1e-2
    g2 = g.clone()
    g2[0, 1] -= eps
    fd = (loss(g2) - loss(g)) / eps * 0.8                    # d loss / d(-g) * g
    np.testing.assert_allclose(both[0, :, 1], fd, rtol=0.05, atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=0), "steps"), (dict(lam=-1.0), "lam"), (dict(lam=float("nan")), "lam"), (dict(lr=0.0), "lr"),
    (dict(n_seeds=0), "n_seeds"), (dict(targets=torch.zeros(13, dtype=torch.bool)), "no token"),
    (dict(targets=torch.ones(5, dtype=torch.bool)), "targets must be"), (dict(targets=[1, 0]), "bool"),
])
def test_bad_arguments_are_clear_errors(tiny, rep, kwargs, match):
    with pytest.raises(HeadAtlasError, match=match):
        gate(tiny, rep.ids, **kwargs)


def test_bad_prompts_are_clear_errors(tiny):
    with pytest.raises(InputError, match="no prompts"):
        gate(tiny, [])
    with pytest.raises(InputError, match="at least 2 tokens"):
        gate(tiny, torch.tensor([[3]]))
    with pytest.raises(InputError, match="gates must be"):
        closing_effects(tiny, torch.tensor([[3, 4, 5]]), np.ones((1, 1)))


def test_random_models_are_not_found_and_score_no_labels_when_forced(monkeypatch):
    m = headatlas.load(tiny_model("llama", seed=2))
    with pytest.raises(InputError, match=NOT_FOUND):
        gating.run(m, ScanConfig(seed=0, quick=True))
    monkeypatch.setattr(gating, "MIN_GAP", -math.inf)      # score anyway: the statistics must label nothing
    r = gating.run(m, ScanConfig(seed=0, quick=True))
    assert r.labelled == [] and np.isfinite(r.p_value).all() and r.n_null > 0
    r2 = gating.run(m, ScanConfig(seed=0, quick=True))
    np.testing.assert_array_equal(r.scores, r2.scores)
    np.testing.assert_array_equal(r.p_value, r2.p_value)


def test_planted_model_gates_keep_the_induction_circuit():
    """Only the previous-token head (0, 1) and the induction head (1, 2) make the repeat predictable:
    they are the labels; the random heads are irrelevant."""
    m = headatlas.load(planted_model(seed=0))
    r = gating.run(m, ScanConfig(seed=0, quick=True))
    assert set(r.labelled) == {PLANTED.induction, PLANTED.previous_token}
    assert list(PLANTED.induction) in r.details["classes"]["facilitating"]
    for head in PLANTED.random:
        assert list(head) in r.details["classes"]["irrelevant"] and head not in r.labelled
    assert r.extras["closing_task"][PLANTED.induction] > 1.0      # closing the induction head costs > 1 nat
    assert r.details["exact_heads"] and r.details["loss_repeat_eval"] < r.details["loss_twin_eval"] - 1


@pytest.mark.slow
def test_smollm2_gating_finds_a_sparse_repeat_circuit():
    m = headatlas.load("smollm2-135m")
    b = repeated_tokens(m.tokenizer, 2, 8, 2, torch.Generator().manual_seed(0))
    g = gate(m, b.ids, targets=b.repeat_positions(), n_seeds=1, steps=12, init_steps=4, lam=0.01, lr=0.6)
    open_ = g.minus >= 0.5
    assert 0 < open_.sum() < 0.5 * open_.size          # a few heads are kept, most are closed
    assert float(g.loss_minus[0]) < g.loss_clean + 0.5   # and they still predict the repeat as the whole model does
