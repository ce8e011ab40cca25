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


def _layer_tokens(v: torch.Tensor, src: torch.Tensor, W_U: torch.Tensor, mean_u: torch.Tensor,
                  special: torch.Tensor, k: int) -> list[dict[str, Any]]:
    """``v [N, Hs, d_model]`` read-out vectors of ``Hs`` heads on ``N`` sources -> per head the top ``k``
    promoted / suppressed ``(token id, z, source index)`` and the copying numbers (ids, not strings)."""
    N, Hs, _ = v.shape
    V = W_U.shape[0]
    mu = v @ mean_u                                                          # [N, Hs] mean logit over the vocab
    flat = v.reshape(N * Hs, -1)
    best = torch.empty(Hs, V)
    best_src = torch.empty(Hs, V, dtype=torch.long)
    worst = torch.empty(Hs, V)
    worst_src = torch.empty(Hs, V, dtype=torch.long)
    sq = torch.zeros(Hs, dtype=torch.float64)
    self_c = torch.einsum("nhm,nm->nh", v, W_U[src]) - mu                   # [N, Hs]
    above = torch.zeros(N, Hs)
    for s in range(0, V, CHUNK):
        c = (flat @ W_U[s:s + CHUNK].t()).view(N, Hs, -1) - mu[..., None]   # [N, Hs, C] centred logits
        sq += torch.einsum("nhc,nhc->h", c, c).double()
        above += (c > self_c[..., None]).sum(-1)
        hi, lo = c.max(0), c.min(0)
        best[:, s:s + CHUNK], best_src[:, s:s + CHUNK] = hi.values, hi.indices
        worst[:, s:s + CHUNK], worst_src[:, s:s + CHUNK] = lo.values, lo.indices
    best[:, special], worst[:, special] = float("-inf"), float("inf")      # special tokens are never listed
    sd = (sq / (N * V)).sqrt().float().clamp_min(1e-12)                     # [Hs]
    out = []
    for j in range(Hs):
        top = best[j].topk(k)
        bot = worst[j].topk(k, largest=False)
        out.append({"promoted": [(int(t), float(z) / float(sd[j]), int(best_src[j, t])) for z, t in zip(top.values, top.indices)],
                    "suppressed": [(int(t), float(z) / float(sd[j]), int(worst_src[j, t])) for z, t in zip(bot.values, bot.indices)],
                    "self_z": float(self_c[:, j].mean()) / float(sd[j]),
                    "copy_top10": float((above[:, j] < 10).float().mean())})
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
            for h, rec in zip(hs, _layer_tokens(v, src.to(W_U.device), W_U, r.mean_u, special, k)):
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
