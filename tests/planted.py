"""A tiny GPT-2 with hand-planted heads whose function is known: the detectors' ground truth.

The residual stream is a sum of one-hot subspaces (``d_model = 768``, 4 heads of ``d_head = 192``):

- ``TOK`` (64 dims): the current token's identity (token embedding)
- ``POS`` (128 dims): the position (learned absolute position embedding)
- ``PREV`` (64 dims): the previous token's identity, written by the previous-token head
- ``OUT`` (64 dims): read by the (untied) unembedding; written by the induction head
- ``JUNK``: where the other planted heads write (read by nothing)

LayerNorms have weight 1 and bias 0: they only centre (a tiny uniform shift) and rescale each
position, which keeps the subspaces intact (``sigma_*`` below calibrate the sizes). MLPs are
zero. Heads (layer, head):

- (0, 1) previous-token: query position ``i`` matches key position ``i - 1``; OV writes the key's token into ``PREV``
- (0, 2) duplicate-token: query token matches key token, minus a self match; OV writes into ``JUNK``
- (0, 3) positional, offset -2: query position ``i`` matches key position ``i - 2``; OV writes into ``JUNK``
- (1, 1) attention sink: every query matches key position 0; OV writes into ``JUNK``
- (1, 2) induction: query ``TOK`` matches key ``PREV`` (the key follows an earlier copy of the
  query's token); OV copies the key's token into ``OUT``, i.e. predicts it
- (0, 0), (1, 0), (1, 3): random, with small weights (near-uniform attention, tiny writes)

``BETA`` is the attention logit of a match (others get 0): attention on a match is ~1 - n e^-BETA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tiny import N_CTX, VOCAB, ToyTokenizer
from transformers import GPT2Config, GPT2LMHeadModel

D_MODEL, N_HEAD = 768, 4
D_HEAD = D_MODEL // N_HEAD
TOK, POS, PREV, OUT = 0, 64, 192, 256          # subspace starts
JUNK = 320                                      # 320..767
BETA = 30.0


@dataclass(frozen=True)
class Planted:
    previous_token: tuple[int, int] = (0, 1)
    duplicate_token: tuple[int, int] = (0, 2)
    positional: tuple[int, int] = (0, 3)
    attention_sink: tuple[int, int] = (1, 1)
    induction: tuple[int, int] = (1, 2)
    random: tuple[tuple[int, int], ...] = ((0, 0), (1, 0), (1, 3))
    positional_offset: int = -2


PLANTED = Planted()


def _ln_scale(n_units: float) -> float:
    """``1 / sigma`` of a residual made of ``n_units`` orthogonal unit one-hots (LayerNorm's scale)."""
    mean = n_units / D_MODEL
    var = n_units / D_MODEL - mean ** 2
    return 1.0 / var ** 0.5


def planted_model(seed: int = 0) -> tuple[GPT2LMHeadModel, ToyTokenizer]:
    """The planted GPT-2 (float32, eval mode, sdpa attention) and the 64-token toy tokenizer."""
    cfg = GPT2Config(vocab_size=VOCAB, n_positions=N_CTX, n_embd=D_MODEL, n_layer=2, n_head=N_HEAD,
                     bos_token_id=ToyTokenizer.bos_token_id, eos_token_id=ToyTokenizer.eos_token_id,
                     tie_word_embeddings=False, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     attn_implementation="sdpa")
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    s0 = _ln_scale(2.0)        # layer 0 input: TOK + POS
    s1 = _ln_scale(4.5)        # layer 1 input: + PREV + the other layer-0 writes (about 2.5 units)
    a0 = (BETA * D_HEAD ** 0.5) ** 0.5 / s0   # q.k = a^2 s^2 / sqrt(d_head) = BETA for a match
    a1 = (BETA * D_HEAD ** 0.5) ** 0.5 / s1
    t = torch.arange(VOCAB)
    p = torch.arange(N_CTX)
    with torch.no_grad():
        for prm in model.parameters():
            prm.zero_()
        tr = model.transformer
        tr.wte.weight[t, TOK + t] = 1.0
        tr.wpe.weight[p, POS + p] = 1.0
        for block in tr.h:
            for ln in (block.ln_1, block.ln_2):
                ln.weight.fill_(1.0)
        tr.ln_f.weight.fill_(1.0)
        model.lm_head.weight[t, OUT + t] = 4.0

        def qkv(layer: int, head: int):
            w = tr.h[layer].attn.c_attn.weight          # Conv1D [in, 3 * d_model]
            base = head * D_HEAD
            return (w[:, base:base + D_HEAD], w[:, D_MODEL + base:D_MODEL + base + D_HEAD],
                    w[:, 2 * D_MODEL + base:2 * D_MODEL + base + D_HEAD])

        def out(layer: int, head: int):
            return tr.h[layer].attn.c_proj.weight[head * D_HEAD:(head + 1) * D_HEAD]  # [d_head, d_model]

        def copy_token(layer: int, head: int, target: int, scale: float) -> None:
            """OV: read the key's token from TOK, write it into ``target + token``."""
            _, _, v = qkv(layer, head)
            v[TOK + t, t] = 1.0
            out(layer, head)[t, target + t] = 1.0 / scale

        def offset_head(layer: int, head: int, back: int, a: float) -> None:
            q, k, _ = qkv(layer, head)
            q[POS + p, p] = a
            k[POS + p[:-back], p[back:]] = a           # key position j lands on dim j + back

        # layer 0
        offset_head(0, 1, 1, a0)
        copy_token(0, 1, PREV, s0)
        q, k, _ = qkv(0, 2)
        q[TOK + t, t] = a0
        k[TOK + t, t] = a0
        q[POS + p, VOCAB + p] = a0
        k[POS + p, VOCAB + p] = -a0                     # minus the self match
        copy_token(0, 2, JUNK, s0)
        offset_head(0, 3, 2, a0)
        copy_token(0, 3, JUNK + VOCAB, s0)
        # layer 1
        q, k, _ = qkv(1, 1)
        q[TOK + t, 0] = a1                              # every position holds one token: a constant query
        k[POS + 0, 0] = a1
        copy_token(1, 1, JUNK + 2 * VOCAB, s1)
        q, k, _ = qkv(1, 2)
        q[TOK + t, t] = a1
        k[PREV + t, t] = a1
        copy_token(1, 2, OUT, s1)
        for layer, head in PLANTED.random:
            for w in qkv(layer, head):
                w.copy_(torch.randn(w.shape, generator=g) * 0.02)
            o = out(layer, head)
            o.copy_(torch.randn(o.shape, generator=g) * 0.001)
    return model, ToyTokenizer()
