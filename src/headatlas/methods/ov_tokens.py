"""What a head writes: the top promoted and suppressed output tokens of its OV circuit through the unembedding
(the way Neuronpedia lists a feature's logits), for the atlas's head pages (:mod:`headatlas.atlas.writes`).

For each head and each of ``n_sources`` source tokens ``s`` (distinct tokens of the package sentences, in order;
seeded random clean vocabulary ids when the tokenizer does not read English), the head's output when it attends
fully to ``s`` is read out on the whole vocabulary: ``C[s, t]`` = logit of ``t`` minus the mean logit over the
vocabulary (:mod:`headatlas.methods.ov_circuit`: the MLP0-effective embedding of ``s``, the head's value and
output projections, any attention-output norm, the final norm's weight; the final norm's scale is left out, so
``C`` is divided by its standard deviation over all ``(s, t)``: a z that compares across heads). Then per head:

- ``promoted``: the ``k`` output tokens with the largest ``max_s C[s, t]``, each with the source that promotes it
  most; ``suppressed``: the ``k`` with the smallest ``min_s C[s, t]``, with their source (special tokens excluded);
- ``self_z``: the mean over sources of ``C[s, s]`` (> 0: the head copies what it attends to; < 0: it suppresses
  it, as negative name movers do); ``copy_top10``: the fraction of sources whose own token is among its top 10.

Cost: one forward of ``n_sources`` one-token sequences, then ``n_sources x d_model x vocab`` multiply-adds per
head (64 sources on smollm2's 49k vocabulary: ~1.8 GFLOP a head).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch

from .ov_circuit import effective_embeddings, ov_outputs, ov_readout, ov_z

if TYPE_CHECKING:
    from ..models import LoadedModel

N_SOURCES = 64
K = 10
CHUNK = 8192
METHOD = ("OV circuit through the unembedding: for {n} source tokens (distinct tokens of the package sentences), "
          "the head's output when it attends fully to the source (MLP0-effective embedding, value and output "
          "projections, attention-output norm, final norm's weight), read out on the whole vocabulary and centred per "
          "source; z = that logit over its spread across all source x vocabulary pairs. Promoted: the output tokens "
          "with the largest z over the sources (with the source that gives it); suppressed: the smallest.")


def source_tokens(m: LoadedModel, n: int = N_SOURCES, seed: int = 0) -> torch.Tensor:
    """``[<= n]`` distinct token ids: the package sentences' tokens in order (English tokenizers), else seeded
    random clean vocabulary ids."""
    from ..errors import InputError
    from ..tasks.text import check_english, sentences
    from ..tasks.vocab import clean_token_ids

    tok = m.tokenizer
    try:
        check_english(tok)
        ids: list[int] = []
        for s in sentences():
            for i in tok.encode(s, add_special_tokens=False):
                if int(i) not in ids:
                    ids.append(int(i))
            if len(ids) >= n:
                break
        return torch.tensor(ids[:n], dtype=torch.long)
    except InputError:
        pool = clean_token_ids(tok)
        g = torch.Generator().manual_seed(int(seed))
        return pool[torch.randperm(len(pool), generator=g)[:n]]


def _layer_tokens(v: torch.Tensor, src: torch.Tensor, W_U: torch.Tensor, mean_u: torch.Tensor, gram: torch.Tensor,
                  special: torch.Tensor, k: int) -> list[dict[str, Any]]:
    """``v [N, Hs, d_model]`` read-out vectors of ``Hs`` heads on ``N`` sources -> per head the top ``k``
    promoted / suppressed ``(token id, z, source index)`` and the copying numbers (ids, not strings).

    One pass over the vocabulary in chunks: the centred logits ``C = v @ W_U^T - mu`` (``mu`` folded into the
    product as an extra column), their max and min over the sources, and how many tokens reach each source's own
    logit (itself included; ties count against it, so a head that writes nothing copies nothing).
    The spread needs no pass: ``mean_t C^2 = v^T (W_U^T W_U / V) v - mu^2`` (``gram``); the source of each listed
    token is found afterwards from its own column."""
    N, Hs, _ = v.shape
    V = W_U.shape[0]
    mu = v @ mean_u                                                          # [N, Hs] mean logit over the vocab
    var = (torch.einsum("nhm,mk,nhk->nh", v, gram, v) - mu ** 2).clamp_min(0)
    sd = var.mean(0).sqrt().clamp_min(1e-12)                                 # [Hs] spread over all (s, t)
    flat = torch.cat([v.reshape(N * Hs, -1), -mu.reshape(N * Hs, 1)], 1)     # [N*Hs, d_model + 1]
    best, worst = torch.empty(Hs, V), torch.empty(Hs, V)
    self_c = torch.einsum("nhm,nm->nh", v, W_U[src]) - mu                   # [N, Hs]
    above = torch.zeros(N, Hs)
    for s in range(0, V, CHUNK):
        w = W_U[s:s + CHUNK]
        c = (flat @ torch.cat([w, torch.ones(w.shape[0], 1, dtype=w.dtype, device=w.device)], 1).t()).view(N, Hs, -1)
        above += (c >= self_c[..., None]).sum(-1)                           # ties count against the source
        lo, hi = torch.aminmax(c, dim=0)
        best[:, s:s + CHUNK], worst[:, s:s + CHUNK] = hi, lo
    best[:, special], worst[:, special] = float("-inf"), float("inf")      # special tokens are never listed
    out = []
    for j in range(Hs):
        rec: dict[str, Any] = {"self_z": float(self_c[:, j].mean() / sd[j]),
                               "copy_top10": float((above[:, j] <= 10).float().mean())}   # itself + < 10 others
        for key, top in (("promoted", best[j].topk(k)), ("suppressed", worst[j].topk(k, largest=False))):
            cols = v[:, j] @ W_U[top.indices].t() - mu[:, j, None]           # [N, k]: the listed tokens' logits
            srcs = (cols.argmax(0) if key == "promoted" else cols.argmin(0)).tolist()
            rec[key] = [(int(t), float(z / sd[j]), int(i)) for z, t, i in zip(top.values, top.indices, srcs)]
        out.append(rec)
    return out


def ov_top_tokens(m: LoadedModel, heads: Sequence[tuple[int, int]], *, n_sources: int = N_SOURCES, k: int = K,
                  seed: int = 0) -> dict[str, Any]:
    """The ``writes`` record of :mod:`headatlas.atlas.writes` for ``heads`` ``[(layer, head), ...]``."""
    from .dla import readout

    heads = sorted({(int(a), int(b)) for a, b in heads})
    src = source_tokens(m, n_sources, seed)
    record: dict[str, Any] = {"method": METHOD.format(n=len(src)), "n_sources": int(len(src)), "k": int(k), "heads": {}}
    if not heads or not len(src):
        return record
    r = readout(m)
    W_U = r.W_U
    special = torch.zeros(W_U.shape[0], dtype=torch.bool)
    ids = [i for i in (getattr(m.tokenizer, "all_special_ids", None) or []) if 0 <= int(i) < W_U.shape[0]]
    special[ids] = True
    special = special.to(W_U.device)
    with torch.no_grad():
        out = ov_outputs(m, ov_z(m, effective_embeddings(m, src)))          # [L, N, H, d_model]
        decode = {}
        for layer in sorted({la for la, _ in heads}):
            hs = [h for la, h in heads if la == layer]
            v = ov_readout(m, out[layer][:, hs])                             # [N, Hs, d_model]
            for h, rec in zip(hs, _layer_tokens(v, src.to(W_U.device), W_U, r.mean_u, r.gram, special, k)):
                for key in ("promoted", "suppressed"):
                    for t, _, s in rec[key]:
                        decode.setdefault(t, None)
                        decode.setdefault(int(src[s]), None)
                record["heads"][f"L{layer}H{h}"] = rec
    text = {t: m.tokenizer.decode([t]) for t in decode}
    for rec in record["heads"].values():
        for key in ("promoted", "suppressed"):
            rec[key] = [[text[t], round(z, 3), text[int(src[s])]] for t, z, s in rec[key]]
        rec["self_z"], rec["copy_top10"] = round(rec["self_z"], 3), round(rec["copy_top10"], 3)
    return record
