"""memory / context (knowledge conflict, DLA) and negative (NAS) detectors."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import headatlas
from headatlas.detectors import NOT_FOUND, ScanConfig, get
from headatlas.detectors.dla import conflict as C
from headatlas.detectors.dla import negative as N
from headatlas.errors import InputError
from headatlas.tasks.conflict import ConflictBatch, Fact, all_facts, conflict_batch, match_pairs
from headatlas.tasks.yesno import OPTION_PAIRS, answer_ids, yesno_batch


class WordTokenizer:
    """A stub tokenizer: every word (with its leading space) and punctuation mark is one token."""

    bos_token_id = None
    pad_token_id = 0

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {"<pad>": 0}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [self.vocab.setdefault(p, len(self.vocab)) for p in re.findall(r" ?\w+|\s|[^\w\s]", text)]

    def decode(self, ids) -> str:
        inv = {v: k for k, v in self.vocab.items()}
        return "".join(inv[int(i)] for i in ids)


# ------------------------------------------------------------------------------------------ data

def test_yesno_batch_positions_balance_and_orders():
    tok = WordTokenizer()
    b = yesno_batch(tok, 2, seed=0)
    P = len(OPTION_PAIRS)
    assert len(b) == 8 * P and b.pairs == list(OPTION_PAIRS) and b.dropped == []
    rows = torch.arange(len(b))
    for i in range(len(b)):
        pos_w, neg_w = b.pairs[int(b.pair[i])]
        assert tok.decode(b.ids[i][b.yes_mask[i]].tolist()) == " " + pos_w
        assert tok.decode(b.ids[i][b.no_mask[i]].tolist()) == " " + neg_w
        assert b.no_id[i] == tok.encode(" " + neg_w)[0] and b.yes_id[i] == tok.encode(" " + pos_w)[0]
    first_word = torch.minimum(b.yes_mask.float().argmax(1), b.no_mask.float().argmax(1))
    assert ((b.no_mask.float().argmax(1) == first_word) == b.no_first).all()
    assert (b.q_start > b.no_mask.float().argmax(1)).all() and (b.last > b.q_start).all()
    assert b.truth.float().mean() == 0.5 and b.no_first.float().mean() == 0.5
    for i in b.item.unique():                   # every item once in each order
        r = (b.item == i).nonzero()[:, 0]
        assert len(r) == 2 and set(b.no_first[r].tolist()) == {False, True}
    assert yesno_batch(tok, 2, seed=0).ids.equal(b.ids) and rows.numel() == len(b)


def test_yesno_split_answers_read_by_first_token_or_dropped():
    class Chars(WordTokenizer):      # " Yes" -> " ", "Y", "e", "s": spaced words share their first token
        def encode(self, text, add_special_tokens=False):
            return [self.vocab.setdefault(ch, len(self.vocab)) for ch in text]
    tok = Chars()
    assert answer_ids(tok) == (tok.encode("Y")[0], tok.encode("N")[0])
    b = yesno_batch(tok, 1, seed=0)
    assert ("Yes", "No") in b.dropped                  # 4 vs 3 tokens: not token-count matched
    assert ("Right", "Wrong") in b.pairs and ("positive", "negative") in b.pairs
    k = b.pairs.index(("Right", "Wrong"))
    i = int((b.pair == k).nonzero()[0, 0])
    assert tok.decode(b.ids[i][b.yes_mask[i]].tolist()) == " Right"
    with pytest.raises(InputError, match="same first token"):
        answer_ids(tok, "Right", "Rot")


def test_conflict_pairs_swap_roles():
    tok = WordTokenizer()
    facts = all_facts(tok)
    b = conflict_batch(tok, facts, seed=1)
    assert len(b) % 2 == 0 and len(b) >= 40
    assert (b.memory != b.context).all()
    for k in range(len(b) // 2):
        i, j = 2 * k, 2 * k + 1
        assert b.memory[i] == b.context[j] and b.memory[j] == b.context[i]
        assert b.facts[i].relation == b.facts[j].relation
    pos = C.context_positions(b)
    assert (b.ids[torch.arange(len(b)), pos] == b.context).all() and (pos < b.last).all()
    # another seed gives another matching of the same facts
    assert match_pairs(facts, 1) != match_pairs(facts, 1001)


# ------------------------------------------------------------------------------------------ NAS

def test_nas_equals_hand_computation():
    a_yes = np.array([0.1, 0.2, 0.05, 0.0])
    a_no = np.array([0.3, 0.2, 0.15, 0.5])
    mask = np.array([False, True, True, True])
    eps = N.EPS
    hand = (0.2 + 0.2) * np.log(0.2 / 0.2) + (0.05 + 0.15) * np.log(0.15 / 0.05) + 0.5 * np.log(0.5 / eps)
    assert N.nas(a_yes, a_no, mask) == pytest.approx(hand, rel=1e-12)
    # swapping which word is No negates it exactly
    assert N.nas(a_no, a_yes, mask) == pytest.approx(-hand, rel=1e-12)


def _planted_yesno(seed: int = 0) -> N.YesNoStats:
    """Fake captured attention: head (1, 0) attends to the negative word of every pair wherever it is named;
    head (0, 1) attends to the first-named option (positional); head (0, 2) strongly prefers one word of
    each pair chosen at random (an accidental token preference, as in a random-weight model); every other
    head puts random mass on both words."""
    b = yesno_batch(WordTokenizer(), 1, seed=seed)
    B, S = b.ids.shape
    L, H = 2, 3
    rng = np.random.default_rng(seed)
    a_yes = rng.uniform(0.0, 0.2, (L, B, H, S))
    a_no = rng.uniform(0.0, 0.2, (L, B, H, S))
    a_no[1, :, 0] = rng.uniform(0.2, 0.4, (B, S))
    a_yes[1, :, 0] = rng.uniform(0.0, 0.1, (B, S))
    first, second = rng.uniform(0.3, 0.5, (B, S)), rng.uniform(0.0, 0.1, (B, S))
    nf = b.no_first.numpy()[:, None]
    a_no[0, :, 1] = np.where(nf, first, second)
    a_yes[0, :, 1] = np.where(nf, second, first)
    likes_neg = rng.permutation(np.arange(len(b.pairs)) % 2 == 0)[b.pair.numpy()][:, None]
    hi, lo = rng.uniform(0.3, 0.5, (B, S)), rng.uniform(0.0, 0.05, (B, S))
    a_no[0, :, 2] = np.where(likes_neg, hi, lo)
    a_yes[0, :, 2] = np.where(likes_neg, lo, hi)
    pos = np.arange(S)
    mask = (pos[None] >= b.q_start.numpy()[:, None]) & (pos[None] <= b.last.numpy()[:, None])
    per_prompt = N.nas(a_yes, a_no, mask[None, :, None, :])
    beh = {"no_rate": 0.5, "accuracy": 0.5, "p_no_minus_p_yes": 0.0}
    return N.YesNoStats(batch=b, nas=per_prompt, mass_no=a_no.mean(-1), mass_yes=a_yes.mean(-1), behaviour=beh,
                        seed=seed)


def test_planted_negative_head_labelled_positional_and_token_preference_heads_not():
    st = _planted_yesno()
    r = N.negative_result(st, ScanConfig(seed=0))
    assert r.labelled == [(1, 0)]
    assert r.extras["nas_second_minus_first"][0, 1] < -1.0        # the positional head prefers the first option
    assert abs(r.effect[0, 1]) < 0.3 * r.effect[1, 0]
    assert abs(r.extras["nas_yes_no"][0, 2]) > r.effect[1, 0] / 2  # strong on Yes/No alone, but not across pairs
    assert r.p_value[0, 2] > 0.01 and r.p_value[1, 0] < 1e-3 and np.isfinite(r.p_value).all()


# ------------------------------------------------------------------------------------------ conflict DLA

def _planted_conflict(n_pairs: int = 12, seed: int = 0) -> C.ConflictStats:
    """Fake per-prompt DLA contrasts: head (1, 2) favours the memory answer, head (0, 0) the context answer,
    head (0, 1) favours one answer token of every pair (a frequency prior: opposite signs within a pair)."""
    B, L, H = 2 * n_pairs, 2, 3
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 0.3, (L, B, H))
    x[1, :, 2] += 0.8
    x[0, :, 0] -= 0.8
    prior = np.repeat(rng.choice([-2.0, 2.0], n_pairs), 2) * np.tile([1.0, -1.0], n_pairs)
    x[0, :, 1] = prior + rng.normal(0, 0.05, B)
    f = Fact("capital", "France", "Paris", 1)
    batch = ConflictBatch(ids=torch.ones(B, 4, dtype=torch.long), last=torch.full((B,), 3), memory=torch.ones(B),
                          context=torch.zeros(B), pair=torch.arange(B) // 2, facts=[f] * B, context_text=["Rome"] * B,
                          closed_book={"capital": (B, B)})
    beh = {"memory_rate": 0.5, "context_rate": 0.5, "mean_logit_diff": 0.0}
    return C.ConflictStats(batch=batch, kept=[f], contrast=x, attn_context=np.zeros((L, B, H)), behaviour=beh,
                           seed=seed)


def test_planted_memory_and_context_heads():
    st = _planted_conflict()
    cfg = ScanConfig(seed=0)
    mem, ctx = C.memory_result(st, cfg), C.context_result(st, cfg)
    assert mem.labelled == [(1, 2)] and ctx.labelled == [(0, 0)]
    assert mem.effect[1, 2] > 0.5 and ctx.effect[0, 0] > 0.5
    assert np.allclose(mem.effect, -ctx.effect)
    assert abs(mem.effect[0, 1]) < 0.1                           # the frequency-prior head cancels within pairs


# ------------------------------------------------------------------------------------------ tiny models

@pytest.fixture(scope="module")
def english():
    from english_tiny import english_tiny_model

    return headatlas.load(english_tiny_model(n_ctx=512, seed=0), device="cpu")


def test_random_model_knows_no_facts(english):
    with pytest.raises(InputError) as exc:
        get("memory").run(english, ScanConfig(seed=0, quick=True))
    assert str(exc.value).startswith(NOT_FOUND)


def test_conflict_dla_matches_direct_logit_difference(english):
    """The shared pass's per-head contrasts are the heads' part of the real logit difference: on the
    random model, the sum over heads plus the rest of the residual reproduces LD (checked here through
    linearity: DLA(memory) - DLA(context) equals the DLA of the difference direction)."""
    tok = english.tokenizer
    b = conflict_batch(tok, all_facts(tok)[:12], seed=0)
    from headatlas.methods.dla import dla_by_source
    d = dla_by_source(english, b.ids, b.last, {"m": b.memory, "c": b.context})
    contrast = d.total("m") - d.total("c")
    assert contrast.shape == (len(b), english.info.n_layers, english.info.n_heads)
    assert torch.isfinite(contrast).all() and contrast.abs().sum() > 0
    lg = C.last_logits(english, b.ids, b.last, 4)
    full = english.model(input_ids=b.ids).logits.float()
    assert torch.allclose(lg, full[torch.arange(len(b)), b.last], atol=1e-4)


def test_negative_runs_on_random_model_and_labels_nothing(english):
    cfg = ScanConfig(seed=0, quick=True)
    r = get("negative").run(english, cfg)
    assert r.labelled == [] and np.isfinite(r.p_value).all()
    assert r.details["n_pairs"] >= 2 and 0.0 <= r.details["behaviour"]["no_rate"] <= 1.0
    r2 = get("negative").run(english, cfg)
    assert np.array_equal(r.p_value, r2.p_value) and np.array_equal(r.scores, r2.scores)


def test_negative_causal_check_runs_on_random_model(english):
    cfg = ScanConfig(seed=0, quick=True)
    r = get("negative").run(english, cfg)
    r.labelled = [(1, 0)]                      # pretend one head was labelled: the check must run end to end
    c = get("negative").causal(english, cfg, r)
    assert len(c.random_effects) == 20 and 0 < c.p_value <= 1 and np.isfinite(c.effect)
    assert set(r.details["causal_rates"]) >= {"no_rate_clean", "no_rate_edited", "no_rate_random_median"}


@pytest.mark.slow
def test_smollm2_no_bias_and_negative_scores():
    m = headatlas.load("smollm2-135m")
    r = get("negative").run(m, ScanConfig(seed=0, quick=True))
    beh = r.details["behaviour"]
    assert beh["no_rate"] > 0.5 and beh["yes_no"]["n_prompts"] == 16    # smollm2-135m says No to most items
    assert r.details["n_pairs"] >= 8 and np.isfinite(r.p_value).all()
    assert r.details["top_yes_no"][0]["nas_yes_no"] > 0


@pytest.mark.slow
def test_smollm2_memory_heads_on_a_small_conflict_set():
    m = headatlas.load("smollm2-135m")
    cfg = ScanConfig(seed=0, n_prompts=24)               # 12 answer-swapped pairs
    mem = get("memory").run(m, cfg)
    beh = mem.details["behaviour"]
    assert mem.details["facts_kept"] >= 40 and 0.2 < beh["memory_rate"] < 0.9   # a real conflict: both answers win
    assert (23, 4) in mem.labelled and mem.effect[23, 4] > 0.5
    ctx = get("context").run(m, cfg)                    # same shared pass within the config's cache
    assert not set(ctx.labelled) & set(mem.labelled)
