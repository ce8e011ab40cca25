"""How far each head moved between two same-shaped models: its weights (:func:`weight_delta`, relative
Frobenius change of its q/k/v/o slices) and its output on fixed prompts (:func:`activation_delta`). These
need both models loaded (torch); :func:`headatlas.compare` records them in a
:class:`~headatlas.atlas.comparison.Comparison`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .atlas.comparison import check_same_shape
from .errors import InputError

PROJECTIONS = ("q", "k", "v", "o")
N_ACT_PROMPTS, ACT_LEN = 8, 32


# ----------------------------------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------------------------------
def _proj_names(m: Any) -> tuple[str, str, str, str]:
    spec = m.layout.spec
    if spec is not None:
        return spec.q, spec.k, spec.v, spec.o
    return "q_proj", "k_proj", "v_proj", m.layout.out_proj_name


def head_slices(m: Any, layer: int) -> dict[str, list[np.ndarray]]:
    """Per projection, the ``[n_heads]`` parameter slices of each query head of ``layer`` (float64 arrays).

    ``q``: the head's rows of W_Q (and of its bias); ``k``/``v``: the rows of the head's kv group (GQA: every
    query head of a group gets the same k/v slice); ``o``: the head's columns of W_O (the output bias is
    shared by all heads and left out). GPT-2's fused ``c_attn`` (Conv1D, ``[d_model, 3 d_model]``) is split
    into its q, k, v thirds."""
    import torch

    info = m.info
    H, KV, d, d_qk = info.n_heads, info.n_kv_heads, info.d_head, info.d_head_qk
    group = max(1, H // max(1, KV))
    module = m.layout.module(layer)
    qn, kn, vn, on = _proj_names(m)

    def weight_rows(name: str, part: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``[out, in]`` rows (nn.Linear layout) of projection ``name`` and its bias (``part``: GPT-2 third)."""
        proj = getattr(module, name, None)
        if proj is None or getattr(proj, "weight", None) is None:
            raise InputError(f"{type(module).__name__} of layer {layer} has no projection {name!r}")
        w = proj.weight.detach()
        conv = type(proj).__name__ == "Conv1D"
        if conv:
            w = w.t()
        b = getattr(proj, "bias", None)
        b = None if b is None else b.detach()
        if part is not None:
            n = w.shape[0] // 3
            w = w[part * n:(part + 1) * n]
            b = None if b is None else b[part * n:(part + 1) * n]
        if w.device.type == "meta":
            raise InputError("weight deltas need the weights in memory; this model is offloaded (device_map with "
                             "'disk'); load it without offloading to compare weights")
        return w.to("cpu", torch.float64), (None if b is None else b.to("cpu", torch.float64))

    fused = qn == kn == vn
    out: dict[str, list[np.ndarray]] = {}
    for proj, name, part, n_rows_heads, width in (("q", qn, 0, H, d_qk), ("k", kn, 1, KV, d_qk), ("v", vn, 2, KV, d)):
        w, b = weight_rows(name, part if fused else None)
        slices = []
        for h in range(H):
            idx = h if n_rows_heads == H else h // group
            rows = w[idx * width:(idx + 1) * width]
            parts = [rows.reshape(-1)] + ([] if b is None else [b[idx * width:(idx + 1) * width]])
            slices.append(torch.cat(parts).numpy())
        out[proj] = slices
    wo, _ = weight_rows(on, None)    # [d_model, H * d]
    out["o"] = [wo[:, h * d:(h + 1) * d].reshape(-1).numpy() for h in range(H)]
    return out


def weight_delta(a: Any, b: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Relative Frobenius change of each head's weights from model ``a`` to model ``b``.

    Returns ``(total [n_layers, n_heads], {"q"|"k"|"v"|"o": [n_layers, n_heads]})`` where, with ``W_p`` a
    head's slice of projection ``p`` (:func:`head_slices`), ``parts[p] = ||W_p^b - W_p^a||_F / ||W_p^a||_F``
    and ``total = sqrt(sum_p ||dW_p||^2) / sqrt(sum_p ||W_p^a||^2)`` (the concatenated slices). GQA: a kv
    group's k/v change is attributed to every query head of the group. A slice that is zero in ``a``
    gives 0 when it is also zero in ``b``, else ``inf``. Exactly 0 for untouched heads (float64, no
    rounding: the difference of equal numbers)."""
    check_same_shape(a.info.to_dict(), b.info.to_dict(), str(a.source), str(b.source))
    L, H = a.info.n_layers, a.info.n_heads
    num = {p: np.full((L, H), np.nan) for p in PROJECTIONS}   # NaN rows: a hybrid's layers without heads
    den = {p: np.full((L, H), np.nan) for p in PROJECTIONS}
    for layer in a.info.attention_layers:
        sa, sb = head_slices(a, layer), head_slices(b, layer)
        for p in PROJECTIONS:
            for h in range(H):
                if sa[p][h].shape != sb[p][h].shape:
                    raise InputError(f"layer {layer} head {h}: the {p} slices differ in size "
                                     f"({sa[p][h].size} vs {sb[p][h].size}); the models are not the same architecture")
                num[p][layer, h] = float(np.sum((sb[p][h] - sa[p][h]) ** 2))
                den[p][layer, h] = float(np.sum(sa[p][h] ** 2))
    parts = {p: _ratio(np.sqrt(num[p]), np.sqrt(den[p])) for p in PROJECTIONS}
    total = _ratio(np.sqrt(sum(num.values())), np.sqrt(sum(den.values())))
    return total, parts


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        r = num / den
    return np.where(num == 0, 0.0, np.where(den == 0, np.inf, r))


# ----------------------------------------------------------------------------------------------------
# activations
# ----------------------------------------------------------------------------------------------------
def activation_prompts(m: Any, *, n: int = N_ACT_PROMPTS, length: int = ACT_LEN, seed: int = 0) -> tuple[Any, str]:
    """``([n, S] token ids, description)``: the first ``n`` package sentences (``data/sentences.txt``), BOS
    first, cut to the shortest one's length (at most ``length`` tokens, so no padding is needed), when the
    tokenizer reads English; else seeded random non-special tokens of the vocabulary."""
    import torch

    from .tasks.text import check_english, sentences
    from .tasks.vocab import bos_id

    tok = m.tokenizer
    length = max(2, min(int(length), int(m.info.n_ctx)))
    try:
        check_english(tok)
        rows = [list(tok.encode(s, add_special_tokens=False)) for s in sentences()[: n]]
        bos = bos_id(tok)
        rows = [([bos] if bos is not None else []) + r for r in rows if r]
        S = min(length, min(len(r) for r in rows))
        ids = torch.tensor([r[:S] for r in rows], dtype=torch.long)
        return ids, f"the first {len(rows)} package sentences (data/sentences.txt), {S} tokens each"
    except InputError:
        g = torch.Generator().manual_seed(int(seed))
        vocab = int(m.info.vocab_size)
        special = set(getattr(tok, "all_special_ids", None) or [])
        pool = torch.tensor([i for i in range(vocab) if i not in special], dtype=torch.long)
        ids = pool[torch.randint(len(pool), (n, length), generator=g)]
        return ids, f"{n} x {length} random non-special tokens (seed {seed}; the tokenizer does not read English)"


def head_outputs(m: Any, ids: Any) -> np.ndarray:
    """``[n_layers, n_heads, B * S * d_head]``: every head's output z (before W_O) on ``ids``, float64."""
    import torch

    from .instrument import Taps, instrumented

    with torch.no_grad(), instrumented(m, taps=Taps(z=True)) as rec:
        m.model(input_ids=ids.to(m.device), use_cache=False)
    return rec.z_all().permute(0, 3, 1, 2, 4).reshape(m.info.n_layers, m.info.n_heads, -1).double().cpu().numpy()


def activation_delta(a: Any, b: Any, ids: Any) -> np.ndarray:
    """``[n_layers, n_heads]``: ``||z_b - z_a||_F / ||z_a||_F`` of each head's output over all prompts and
    positions of ``ids`` (both models read the same token ids). 0 where both are 0, inf where only ``a``'s is."""
    za, zb = head_outputs(a, ids), head_outputs(b, ids)
    return _ratio(np.sqrt(((zb - za) ** 2).sum(-1)), np.sqrt((za ** 2).sum(-1)))
