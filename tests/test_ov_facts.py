"""Successor, semantic-induction and factual-recall (subject / relation / mixed) detectors: weights-only
OV circuits, the planted successor head, known-answer DLA splits, random weights, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import headatlas
from headatlas.detectors import ScanConfig, get
from headatlas.errors import InputError
from headatlas.methods import ov_circuit
from headatlas.tasks.ordinal import FAMILIES, ordinal_families, sequence_prompts


class WordTokenizer:
    """Whitespace word-level tokenizer over a fixed word list (ids 3..); unknown words split into 2 pieces."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0
    padding_side = "right"

    def __init__(self, words, unknown=()):
        self.words = list(dict.fromkeys(words))
        self.ids = {w: i + 3 for i, w in enumerate(self.words)}
        self.unknown = set(unknown)
        self.vocab_size = len(self.words) + 3

    def __len__(self):
        return self.vocab_size

    def encode(self, text, add_special_tokens=True, **_):
        out = [self.bos_token_id] if add_special_tokens else []
        for w in text.split():
            out += [0, 0] if w in self.unknown or w not in self.ids else [self.ids[w]]
        return out

    def convert_ids_to_tokens(self, ids):
        inv = {i: w for w, i in self.ids.items()}
        return [inv.get(int(i), "<s>") for i in ids] if isinstance(ids, (list, tuple)) else inv.get(int(ids), "<s>")

    def decode(self, ids, **_):
        ids = ids.tolist() if hasattr(ids, "tolist") else ids
        return " ".join(self.convert_ids_to_tokens(list(ids) if isinstance(ids, (list, tuple)) else [ids]))

    @property
    def all_special_ids(self):
        return [0, 1, 2]


ORDINAL_WORDS = [w for items in FAMILIES.values() for w in items]
PLANTED_HEAD = (1, 0)


def planted_successor_model(seed: int = 0):
    """A 2-layer Llama whose head (1, 0) maps every ordinal item to its successor through its OV circuit.

    Residual dims 0..31: a one-hot code of the item's index in its family; 32..38: a one-hot family code;
    the rest small noise. Layer 0 writes nothing (o_proj and MLP down projection zero), so the effective
    embedding is the token embedding. Head (1, 0): W_V reads dims 0..31 into its 32 dims, W_O writes dim k
    to residual dim k + 1 (index k -> k + 1). The unembedding reads the same codes."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = WordTokenizer(ORDINAL_WORDS)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, head_dim=32, max_position_embeddings=64,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    E = torch.randn(len(tok), 64, generator=g) * 0.02
    for f, (name, items) in enumerate(FAMILIES.items()):
        for k, w in enumerate(items):
            E[tok.ids[w], k] += 1.0
            E[tok.ids[w], 32 + f] += 1.0
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(E)
        model.lm_head.weight.copy_(E)
        model.model.layers[0].self_attn.o_proj.weight.zero_()
        model.model.layers[0].mlp.down_proj.weight.zero_()
        attn = model.model.layers[1].self_attn
        v = attn.v_proj.weight                       # [2 * 32, 64]
        v[:32].zero_()
        v[:32, :32] = torch.eye(32)
        o = attn.o_proj.weight                       # [64, 2 * 32]
        o[:, :32].zero_()
        for k in range(31):
            o[k + 1, k] = 1.0
    return headatlas.load((model, tok), device="cpu")


def test_ordinal_families_drop_non_single_tokens():
    tok = WordTokenizer(ORDINAL_WORDS, unknown={"Wednesday", "7"})
    fams = {f.name: f for f in ordinal_families(tok)}
    days = fams["days"]
    assert "Wednesday" not in days.words and days.dropped == ("Wednesday",)
    # no pair crosses the dropped item: Tuesday -> Thursday is not a succession
    succ = {(days.words[i], days.words[j]) for i, j in days.pairs}
    assert ("Tuesday", "Thursday") not in succ and ("Monday", "Tuesday") in succ and len(days.pairs) == 4
    assert len(fams["digits"].pairs) == 7
    rows, targets, names = sequence_prompts(tok, list(fams.values()), 20, length=3, seed=0)
    inv = {i: w for w, i in tok.ids.items()}
    for r, t, n in zip(rows, targets, names):
        words = [inv[i] for i in r + [t]]
        items = list(FAMILIES[n])
        k = items.index(words[0])
        assert words == items[k:k + 4]
    with pytest.raises(InputError):
        ordinal_families(WordTokenizer(["x"]))


def test_ov_z_is_the_value_projection_of_the_normed_input():
    from tiny import tiny_model

    m = headatlas.load(tiny_model("llama"), device="cpu")
    x = torch.randn(5, m.info.d_model, generator=torch.Generator().manual_seed(0))
    z = ov_circuit.ov_z(m, x)
    assert z.shape == (m.info.n_layers, 5, m.info.n_heads, m.info.d_head)
    for la, layer in enumerate(m.model.model.layers):
        with torch.no_grad():
            v = layer.self_attn.v_proj(layer.input_layernorm(x))
        v = v.reshape(5, -1, m.info.d_head)[:, [m.info.kv_head(h) for h in range(m.info.n_heads)]]
        assert torch.allclose(z[la], v, atol=1e-5)
    # the effective embedding is block 0's output for the token alone
    ids = torch.tensor([5, 9, 17])
    eff = ov_circuit.effective_embeddings(m, ids)
    with torch.no_grad():
        ref = m.model(input_ids=ids[:, None], output_hidden_states=True).hidden_states[1][:, 0]
    assert torch.allclose(eff, ref, atol=1e-5)


def test_planted_successor_head_is_labelled_alone():
    m = planted_successor_model()
    r = get("successor").run(m, ScanConfig(seed=0, quick=True))
    assert r.labelled == [PLANTED_HEAD]
    assert r.scores[PLANTED_HEAD] == 1.0 and r.q_value[PLANTED_HEAD] <= 0.05
    others = np.delete(r.scores.ravel(), PLANTED_HEAD[0] * 2 + PLANTED_HEAD[1])
    assert others.max() < 0.5
    assert np.all(np.isfinite(r.p_value))
    # reproducible
    r2 = get("successor").run(m, ScanConfig(seed=0, quick=True))
    assert np.array_equal(r.p_value, r2.p_value) and np.array_equal(r.scores, r2.scores)


def test_successor_null_keeps_a_constant_or_copying_head_at_chance():
    from headatlas.detectors.successor import shuffled_null, successes
    from headatlas.tasks.ordinal import Family

    f = Family("f", tuple("abcdefgh"), tuple(range(8)), " ", tuple((i, i + 1) for i in range(7)))
    succ = np.arange(1, 9) % 8                                   # head 0: successor (perfect)
    copy = np.arange(8)                                          # head 1: copies its input
    const = np.zeros(8, dtype=int)                               # head 2: always item 0
    a = np.stack([succ, copy, const])[None]                      # [1, 3, 8]
    obs = successes([a], [f]).mean(1)[0]
    assert obs.tolist() == [1.0, 0.0, 0.0]
    draws = shuffled_null([a], [f], 2000, np.random.default_rng(0))
    assert draws[:, 0, 1].max() == 0.0                           # a copying head never succeeds
    assert abs(draws[:, 0, 2].mean() - 1 / 8) < 0.02             # a constant head: chance 1/8
    assert (draws[:, 0, 0] >= 1.0).mean() < 0.01                 # a perfect score is rare under shuffling
