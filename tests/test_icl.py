"""function_vector and in_context detectors (tasks/icl.py, detectors/patching/function_vector.py, detectors/dla/in_context.py)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from english_tiny import english_tiny_model

import headatlas
from headatlas.detectors import ScanConfig
from headatlas.detectors.dla import in_context as icmod
from headatlas.detectors.patching import function_vector as fvmod
from headatlas.errors import InputError
from headatlas.instrument import HeadEdit, instrumented
from headatlas.tasks import icl


@functools.lru_cache(maxsize=1)
def icl_tokenizer():
    """A BPE tokenizer trained on the ICL data, so every task word is one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    words = {w for items in icl.TASKS.values() for xy in items for w in xy}
    words |= {w for ws in icl.CLASSES.values() for w in ws} | set(icl.LABELS)
    corpus = [f"Q: {w}\nA: {w}\n\n" for w in sorted(words)] * 20
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=4000, special_tokens=["<pad>", "<bos>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def icl_model(seed: int = 0):
    return headatlas.load(english_tiny_model(n_ctx=256, seed=seed, tokenizer=icl_tokenizer()), device="cpu")


@pytest.fixture(scope="module")
def m():
    return icl_model()


def test_task_writer_single_tokens_and_shuffled_keep_query(m):
    tok = m.tokenizer
    tasks = icl.icl_tasks(tok, seed=0)
    assert {t.name for t in tasks} == set(icl.TASKS)
    for t in tasks:
        for (x, y), xi, yi in zip(t.words, t.x.tolist(), t.y.tolist()):
            assert tok.encode(" " + x, add_special_tokens=False) == [xi]
            assert tok.encode(" " + y, add_special_tokens=False) == [yi]
        assert not set(t.detect) & set(t.heldout)
        b = icl.icl_batch(tok, t, 6, 4, seed=3)
        assert b.clean.shape == b.shuffled.shape and b.clean.shape[1] == icl.template(tok).length(4)
        # the query (last tokens) is the same; only labels move, and every demonstration's label changed
        assert torch.equal(b.clean[:, b.label_pos[-1] + 1:], b.shuffled[:, b.label_pos[-1] + 1:])
        diff = (b.clean != b.shuffled).nonzero()[:, 1].unique().tolist()
        assert set(diff) <= set(b.label_pos)
        assert bool((b.clean[:, b.label_pos] != b.shuffled[:, b.label_pos]).all())
        assert torch.equal(torch.sort(b.clean[:, b.label_pos], 1).values, torch.sort(b.shuffled[:, b.label_pos], 1).values)
        assert torch.equal(b.zero[:, 1:], b.clean[:, -(b.zero.shape[1] - 1):])
        # the answer is the query's label
        for row, q in enumerate(b.query.tolist()):
            a_len = len(icl.template(tok).a)
            assert int(b.answer[row]) == int(t.y[q]) and int(b.clean[row, -(a_len + 1)]) == int(t.x[q])
        held = icl.icl_batch(tok, t, 4, 4, seed=3, split="heldout")
        assert set(held.query.tolist()) <= set(t.heldout)


def test_task_writer_drops_multi_token_items():
    class Tok:
        bos_token_id = None

        def encode(self, text, add_special_tokens=False):
            return [1] if text in (" hot", " cold", "Q:", "\nA:", "\n\n") else [1, 2]
    with pytest.raises(InputError, match="single tokens"):
        icl.icl_tasks(Tok(), seed=0)


def test_class_batch_mapping_flips(m):
    b = icl.class_batch(m.tokenizer, 24, 4, seed=1)
    foo, bar = (m.tokenizer.encode(" " + w, add_special_tokens=False)[0] for w in icl.LABELS)
    assert set(b.correct.tolist()) <= {foo, bar} and bool((b.correct != b.other).all())
    assert 0 < int(b.flip.sum()) < 24 and set(b.pair.tolist()) == {0, 1, 2}


def test_exact_mean_patch_equals_hand_patch(m):
    tasks = icl.icl_tasks(m.tokenizer, seed=0)
    b = icl.icl_batch(m.tokenizer, tasks[0], 3, 4, seed=0)
    mean, _ = fvmod.mean_last_z(m, b.clean, 8)
    heads = [(1, 2), (0, 1), (1, 0)]
    eff, p0 = fvmod.exact_mean_patch(m, b.shuffled, b.answer, mean, heads, 8)
    S = b.shuffled.shape[1]
    for j, (l, h) in enumerate(heads):
        src = torch.zeros(1, S, m.info.n_heads, m.info.d_head)
        src[0, -1] = mean[l]
        edit = HeadEdit(l, [h], "patch", source=src, positions=[S - 1], source_rows=[0, 0, 0])
        with torch.no_grad(), instrumented(m, edits=[edit]):
            lg = m.model(input_ids=b.shuffled).logits[:, -1].float()
        p = lg.softmax(-1).gather(1, b.answer[:, None])[:, 0]
        assert torch.allclose(eff[j], p - p0, atol=1e-6)
    assert eff.abs().max() > 0


def test_attribution_is_first_order_of_exact(m):
    """With a source a small step away from each head's own output, attribution == exact to first order;
    with the source equal to the output it is exactly zero."""
    tasks = icl.icl_tasks(m.tokenizer, seed=0)
    b = icl.icl_batch(m.tokenizer, tasks[1], 1, 4, seed=0)
    own, _ = fvmod.mean_last_z(m, b.shuffled, 8)             # one prompt: its own last-token z
    zero = fvmod.attribution_effects(m, b.shuffled, b.answer, own, 8)
    assert float(zero.abs().max()) < 1e-6
    g = torch.Generator().manual_seed(0)
    step = own + 1e-2 * torch.randn(own.shape, generator=g)
    attr = fvmod.attribution_effects(m, b.shuffled, b.answer, step, 8)[:, 0]      # [L, H]
    heads = [(l, h) for l in range(m.info.n_layers) for h in range(m.info.n_heads)]
    exact, _ = fvmod.exact_mean_patch(m, b.shuffled, b.answer, step, heads, 8)
    ex = exact[:, 0].reshape(m.info.n_layers, m.info.n_heads)
    assert float(ex.abs().max()) > 0
    assert float((attr - ex).abs().max()) <= 0.1 * float(ex.abs().max())


def test_function_vector_random_model_not_found(m):
    with pytest.raises(InputError, match="^not found: "):
        fvmod.run_function_vector(m, ScanConfig(seed=0, quick=True))


def test_function_vector_full_path_on_random_model(m, monkeypatch):
    """With the accuracy gate off, the whole pipeline runs: only exactly patched heads can be labelled,
    the random model gets no labels, p-values are finite and reruns are identical."""
    monkeypatch.setattr(fvmod, "MIN_ACCURACY", 0.0)
    r1 = fvmod.run_function_vector(m, ScanConfig(seed=0, quick=True))
    r2 = fvmod.run_function_vector(m, ScanConfig(seed=0, quick=True))
    assert np.isfinite(r1.p_value).all() and np.array_equal(r1.p_value, r2.p_value)
    assert np.array_equal(r1.scores, r2.scores)
    assert r1.labelled == []
    assert int(r1.extras["exact"].sum()) == min(8, m.info.n_layers * m.info.n_heads)
    assert set(r1.details["kept_tasks"]) == set(icl.TASKS)
    assert r1.details["agreement"]["n_exact"] == 8


def test_function_vector_check_adds_the_vector(m, monkeypatch):
    """The causal check adds the function vector: a planted 'labelled' set gives a CausalCheck with 20
    random sets, and the vector changes p(answer) (nonzero effect)."""
    monkeypatch.setattr(fvmod, "MIN_ACCURACY", 0.0)
    cfg = ScanConfig(seed=0, quick=True)
    res = fvmod.run_function_vector(m, cfg)
    res.labelled = [(0, 1), (1, 2)]
    c = fvmod.fv_check(m, cfg, res)
    assert c.kind == "add" and len(c.random_effects) == 20 and c.effect != 0 and 0 < c.p_value <= 1


def test_in_context_random_model(m, monkeypatch):
    with pytest.raises(InputError, match="^not found: "):
        icmod.run_in_context(m, ScanConfig(seed=0, quick=True))
    monkeypatch.setattr(icmod, "MIN_PAIR_ACCURACY", 0.0)
    monkeypatch.setattr(icmod, "CHANCE_ALPHA", 1.0)
    r = icmod.run_in_context(m, ScanConfig(seed=0, quick=True))
    assert np.isfinite(r.p_value).all() and r.labelled == []


def test_in_context_dla_sums_to_logit_diff_direct_part(m, monkeypatch):
    """Known answer: the per-head DLA contrasts are exact direct effects — flipping which label is
    'correct' flips every head's contrast."""
    monkeypatch.setattr(icmod, "MIN_PAIR_ACCURACY", 0.0)
    monkeypatch.setattr(icmod, "CHANCE_ALPHA", 1.0)
    cfg = ScanConfig(seed=0, quick=True)
    r = icmod.run_in_context(m, cfg)
    b = icl.class_batch(m.tokenizer, 6, 4, seed=0)
    swapped = icl.ClassBatch(ids=b.ids, correct=b.other, other=b.correct, flip=b.flip, pair=b.pair, dropped=b.dropped)
    monkeypatch.setattr(icmod, "class_batch", lambda *a, **k: swapped)
    r2 = icmod.run_in_context(m, cfg)
    assert np.allclose(r.scores, -r2.scores, atol=1e-6)


@pytest.mark.slow
def test_smollm2_country_capital_is_learned_in_context():
    m = headatlas.load("smollm2-135m")
    tasks = icl.icl_tasks(m.tokenizer, seed=0)
    assert len(tasks) == 6
    b = icl.icl_batch(m.tokenizer, tasks[2], 8, 8, seed=0)   # country_capital
    acc = fvmod._accuracy(fvmod.last_logits(m, b.clean, 8), b.answer)
    zero = fvmod._accuracy(fvmod.last_logits(m, b.zero, 8), b.answer)
    assert acc >= 0.75 and zero <= 0.25
