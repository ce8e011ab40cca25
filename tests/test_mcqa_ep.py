"""MCQA EP heads (amplification, correct): the colour / few-shot prompts, the answer-swap contrast, the
letter-logit read-out and the patching effects (exactness), planted heads, the skill gate, random weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import headatlas
from headatlas.detectors import NOT_FOUND, ScanConfig, get
from headatlas.detectors.dla.mcqa_ep import EP_PASS, MAX_OPTION_ATTENTION, amplification_result, letter_logits, swap_contrast
from headatlas.detectors.patching.mcqa_correct import correct_result, patch_effects
from headatlas.errors import InputError
from headatlas.instrument import HeadEdit, Taps, instrumented
from headatlas.tasks.mcqa import COLOR_ITEMS, mcqa_batch

NOSKILL = {"mcqa_require_skill": False}


@pytest.fixture(scope="module")
def english():
    from english_tiny import english_tiny_model

    return headatlas.load(english_tiny_model(n_ctx=512), device="cpu")


# ---------------------------------------------------------------- data


@pytest.mark.parametrize("topic,shots", [("colors", 0), ("colors", 3), ("arithmetic", 2)])
def test_mcqa_formats_twins_and_shots(english, topic, shots):
    tok = english.tokenizer
    b = mcqa_batch(tok, 12, seed=1, topic=topic, shots=shots)
    assert sorted(b.correct.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert (b.swapped_correct != b.correct).all()
    for r in range(12):
        f = int(b.final_pos[r])
        text, twin = tok.decode(b.ids[r, :f + 1]), tok.decode(b.swapped_ids[r, :f + 1])
        assert text.endswith("Answer:") and twin.endswith("Answer:")
        assert text.count("Answer:") == shots + 1 and text.count("Question:") == shots + 1
        assert [tok.decode([int(b.ids[r, p])]) for p in b.letter_pos[r]] == ["A", "B", "C", "D"]
        q = text.split("Question:")[-1].split("\n")
        qt = twin.split("Question:")[-1].split("\n")
        assert q[0] == qt[0] and q[1 + int(b.correct[r])][3:] == qt[1 + int(b.swapped_correct[r])][3:]
        assert text.rsplit("Question:", 1)[0] == twin.rsplit("Question:", 1)[0]      # the same solved examples
        if topic == "colors":
            obj = q[0].split("color is ")[1].rstrip("?")
            answer, also = COLOR_ITEMS[obj]
            assert q[1 + int(b.correct[r])][3:] == answer
            assert not {x[3:] for x in q[1:5]} & set(also)                          # no second right answer
            assert f"color is {obj}?" not in text.rsplit("Question:", 1)[0]         # never one of the shots
    # the solved examples are right
    shots_text = b.texts[0].rsplit("Question:", 1)[0]
    for block in [x for x in shots_text.split("\n\n") if x]:
        lines = block.split("\n")
        letter = lines[-1].split(": ")[1]
        if topic == "colors":
            obj = lines[0].split("color is ")[1].rstrip("?")
            assert lines[1 + "ABCD".index(letter)][3:] == COLOR_ITEMS[obj][0]
        else:
            a, c = lines[0].split("is ")[1].rstrip("?").split(" + ")
            assert int(lines[1 + "ABCD".index(letter)][3:]) == int(a) + int(c)
    with pytest.raises(InputError):
        mcqa_batch(tok, 4, seed=0, topic="history")
    with pytest.raises(InputError):
        mcqa_batch(tok, 4, seed=0, shots=9)


# ---------------------------------------------------------------- exactness


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_letter_logits_equal_the_models_logits(kind):
    from tiny import tiny_model

    m = headatlas.load(tiny_model(kind), device="cpu")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 64, (5, 12), generator=g)
    fpos = torch.tensor([11, 7, 9, 4, 11])
    answers = torch.tensor([5, 9, 17, 30])
    got = letter_logits(m, ids, fpos, answers, batch_size=2)
    with torch.no_grad():
        ref = m.model(input_ids=ids).logits.double()[torch.arange(5), fpos][:, answers]
    assert torch.allclose(got, ref, atol=1e-4, rtol=1e-4)


def test_patch_effects_equal_manual_patching(english):
    b = mcqa_batch(english.tokenizer, 2, seed=0, topic="colors", shots=1)
    from headatlas.detectors.dla.mcqa import answer_letter_ids

    answers = answer_letter_ids(english.tokenizer, b)
    eff = patch_effects(english, b, answers)                        # [L, 2, H]
    L, H = english.info.n_layers, english.info.n_heads
    assert eff.shape == (L, 2, H)
    r = 1
    f = int(b.final_pos[r])
    P, T = b.ids[r:r + 1, :f + 1], b.swapped_ids[r:r + 1, :f + 1]
    k, k2 = int(answers[b.correct[r]]), int(answers[b.swapped_correct[r]])

    def metric(ids, edits, a, c):
        with torch.no_grad(), instrumented(english, edits=edits):
            lg = english.model(input_ids=ids).logits[0, -1].double()
        return float(lg[a] - lg[c])

    def z_of(ids):
        with torch.no_grad(), instrumented(english, taps=Taps(z=True)) as rec:
            english.model(input_ids=ids)
        return [rec.z(la) for la in range(L)]

    zP, zT = z_of(P), z_of(T)
    for layer, head in [(0, 0), (L - 1, H - 1), (1, 2)]:
        one = metric(P, [], k, k2) - metric(P, [HeadEdit(layer, [head], "patch", source=zT[layer], positions=[f])], k, k2)
        two = metric(T, [], k2, k) - metric(T, [HeadEdit(layer, [head], "patch", source=zP[layer], positions=[f])], k2, k)
        assert eff[layer, r, head] == pytest.approx(0.5 * (one + two), abs=2e-4)


def test_swap_contrast_cancels_letter_bias():
    B, K = 8, 4
    correct = np.arange(B) % K
    twin = (correct + 1) % K
    bias = np.zeros((1, B, 1, K))
    bias[..., 0] = 3.0                                       # always letter A, prompt and twin alike
    assert np.allclose(swap_contrast(bias, bias, correct, twin), 0.0)
    follow_p = np.zeros((1, B, 1, K))
    follow_t = np.zeros((1, B, 1, K))
    follow_p[0, np.arange(B), 0, correct] = 1.0
    follow_t[0, np.arange(B), 0, twin] = 1.0
    assert np.allclose(swap_contrast(follow_p, follow_t, correct, twin), 1.0)
    assert np.allclose(swap_contrast(follow_t, follow_p, correct, twin), -1.0)


# ---------------------------------------------------------------- planted statistics


def _planted(B: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """[L=2, B, H=4]: (1, 0) raises the answer (swap contrast 0.5) reading nothing from the options;
    (1, 1) the same while attending to the options (a reader); (1, 2) lowers the answer; the rest noise."""
    rng = np.random.default_rng(seed)
    swap = rng.normal(0, 0.05, (2, B, 4))
    att = np.abs(rng.normal(0.03, 0.01, (2, B, 4)))
    swap[1, :, 0] += 0.5
    swap[1, :, 1] += 0.5
    att[1, :, 1] = 0.6
    swap[1, :, 2] -= 0.5
    return swap, att


def test_amplification_planted():
    swap, att = _planted()
    r = amplification_result(swap, att, seed=0, data_description="planted", n_perm=999)
    assert r.labelled == [(1, 0)]
    assert r.effect[1, 0] == pytest.approx(0.5, abs=0.05) and r.q_value[1, 0] <= 0.05
    assert [x["head"] for x in r.details["readers"]] == ["L1H1"] and r.extras["option_attention"][1, 1] > MAX_OPTION_ATTENTION
    assert r.p_value[1, 2] > 0.5
    again = amplification_result(swap, att, seed=0, data_description="planted", n_perm=999)
    assert np.array_equal(again.p_value, r.p_value)
    rng = np.random.default_rng(5)
    r0 = amplification_result(rng.normal(0, 0.1, swap.shape), att, seed=0, data_description="noise", n_perm=999)
    assert r0.labelled == []


def test_correct_planted_needs_patching_effect_and_positive_dla():
    rng = np.random.default_rng(1)
    B = 16
    eff = rng.normal(0, 0.05, (2, B, 4))
    swap = rng.normal(0, 0.05, (2, B, 4))
    eff[1, :, 0] += 0.8
    swap[1, :, 0] += 0.4             # carries the answer and writes it: correct head
    eff[0, :, 3] += 0.8
    swap[0, :, 3] -= 0.4             # carries it but writes against it directly: not labelled
    eff[1, :, 2] += 0.05             # a real but tiny effect: below MIN_PATCH
    r = correct_result(eff, swap, seed=0, data_description="planted", n_perm=999)
    assert r.labelled == [(1, 0)]
    assert r.q_value[0, 3] <= 0.05 and r.extras["dla_positive"][0, 3] == 0
    assert r.effect[1, 0] == pytest.approx(0.8, abs=0.05)


# ---------------------------------------------------------------- end to end on tiny models


@pytest.mark.parametrize("seed", [0, 1])
def test_random_weights_skip_or_label_nothing(seed):
    from english_tiny import english_tiny_model

    m = headatlas.load(english_tiny_model(n_ctx=512, seed=seed), device="cpu")
    from headatlas.detectors.base import ScanCache

    gated = ScanConfig(seed=seed, quick=True, cache=ScanCache())
    for name in ("amplification", "correct"):                # one gate pass for both
        with pytest.raises(InputError, match=f"^{NOT_FOUND}the model answers"):
            get(name).run(m, gated)
    assert len([k for k in gated.cache.values if k[0] == EP_PASS.name]) == 1
    cfg = ScanConfig(seed=seed, quick=True, options=NOSKILL)
    for name in ("amplification", "correct"):
        r = get(name).run(m, cfg)
        assert r.labelled == [], (name, seed, r.labelled)
        assert np.isfinite(r.p_value).all() and (r.p_value > 0).all() and r.n_null > 0


def test_same_seed_bit_identical_one_shared_pass_and_causal_check(english):
    from headatlas.detectors.base import ScanCache

    cache = ScanCache()
    cfg = ScanConfig(seed=3, quick=True, cache=cache, options=NOSKILL)
    first = {name: get(name).run(english, cfg) for name in ("amplification", "correct")}
    assert len([k for k in cache.values if k[0] == EP_PASS.name]) == 1
    again = ScanConfig(seed=3, quick=True, options=NOSKILL)
    for name, r1 in first.items():
        r2 = get(name).run(english, again)
        for f in ("scores", "effect", "p_value", "q_value", "null_mean", "null_std"):
            assert np.array_equal(getattr(r1, f), getattr(r2, f), equal_nan=True), (name, f)
        assert r1.data_description and "colors" in r1.data_description
    r = first["amplification"]
    r.labelled = [(1, 0)]
    c = get("amplification").causal(english, cfg, r)
    assert c.kind == "mean" and len(c.random_effects) == 20 and 0 < c.p_value <= 1 and c.expected == "decrease"
    assert np.isfinite(c.effect) and c.n_prompts == 8 and "colors" in c.description


@pytest.mark.slow
def test_smollm2_is_at_chance_so_amplification_is_not_found():
    m = headatlas.load("smollm2-135m")
    with pytest.raises(InputError, match=f"^{NOT_FOUND}the model answers") as e:
        get("amplification").run(m, ScanConfig(seed=0, quick=True))
    assert "chance 25%" in str(e.value)


def test_correct_letter_v3_scores_the_answer_swap_contrast_of_attention(english):
    """correct_letter reads the twins' attention on their own letter positions, and its score is the swap
    contrast of the letter attention (a fixed-letter preference cancels)."""
    from headatlas.detectors.dla.mcqa import mcqa_stats, swap_contrast as swap_mcqa
    from headatlas.methods.dla import dla_by_source

    cfg = ScanConfig(seed=5, quick=True)
    st = mcqa_stats(english, cfg)
    b = st.batch
    att = dla_by_source(english, b.swapped_ids[:3], b.final_pos[:3], {}).attention        # [3, L, H, S]
    for r in range(3):
        ref = att[r][:, :, b.swapped_letter_pos[r]].double().numpy()                      # [L, H, K]
        assert np.allclose(st.attn_twin[:, r], ref, atol=1e-6)
    res = get("correct_letter").run(english, cfg)
    assert get("correct_letter").version == 3
    per = swap_mcqa(st.attn, st.attn_twin, b.correct.numpy(), b.swapped_correct.numpy())
    assert np.allclose(res.scores, per.mean(1)) and "letter_contrast" in res.extras
    assert swap_contrast is swap_mcqa
