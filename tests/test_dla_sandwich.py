"""Direct logit attribution through Gemma 2/3's attention-output ("sandwich") norm.

A head's direct effect is its share of what its layer adds to the residual, read through the final
norm linearised at the real final residual. Where the attention output is normalised before the
residual add, the heads' shares (``out_h * c_post / rms(a)``) must sum to the norm's real output
exactly, so the per-head DLA summed over heads (and sources) must equal the readout of the layer's
real contribution. Without the post-norm factor the sum misses by the norm's scale (checked too)."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_model

import headatlas
from headatlas.methods import dla


def _randomise_post_norms(m) -> None:
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for pn in m.layout.attn_out_norms:
            if pn is not None:
                pn.weight.copy_(torch.randn(pn.weight.shape, generator=g) * 0.5)


def _layer_contribution(m, ids: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The real residual contribution of ``layer``'s attention block ``[B, S, M]`` and the final residual."""
    pn = m.layout.attn_out_norms[layer] if m.layout.attn_out_norms else None
    module = pn if pn is not None else getattr(m.layout.attention_modules[layer], m.layout.out_proj_name)
    got: list[torch.Tensor] = []
    h = module.register_forward_hook(lambda _m, _a, out: got.append(out.detach().float()))
    try:
        with torch.no_grad(), dla.capture_final_residual(m) as res:
            m.model(input_ids=ids, use_cache=False)
    finally:
        h.remove()
    return got[0], res[0]


@pytest.mark.parametrize("kind", ["gemma3", "llama"])
def test_head_dla_sums_to_the_layer_contribution(kind):
    m = headatlas.load(tiny_model(kind))
    if kind == "gemma3":
        assert all(pn is not None for pn in m.layout.attn_out_norms)
        _randomise_post_norms(m)
    else:
        assert all(pn is None for pn in m.layout.attn_out_norms)
    m._readout = None
    r = dla.readout(m)
    ids = torch.randint(3, 60, (3, 12), generator=torch.Generator().manual_seed(0))
    q = torch.tensor([11, 7, 9])
    tgt = torch.tensor([5, 17, 40])
    d = dla.dla_by_source(m, ids, q, {"t": tgt}, batch_size=2)
    for layer in range(m.info.n_layers):
        contrib, final = _layer_contribution(m, ids, layer)
        rows = torch.arange(3)
        x = final[rows, q]
        want = (r.normalise(contrib[rows, q], x) * r.W_U[tgt]).sum(-1)            # [B]
        got = d.total("t")[:, layer].sum(-1)                                        # [B]
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_direct_logit_effect_needs_and_uses_the_post_norm_input():
    m = headatlas.load(tiny_model("gemma3"))
    _randomise_post_norms(m)
    m._readout = None
    ids = torch.randint(3, 60, (2, 10), generator=torch.Generator().manual_seed(1))
    tgt = torch.tensor([4, 9])
    from headatlas.instrument import Taps, instrumented

    with torch.no_grad(), dla.capture_final_residual(m) as res, instrumented(m, taps=Taps(z=True)) as rec:
        m.model(input_ids=ids, use_cache=False)
    layer = 1
    z, x, a = rec.z(layer)[:, -1], res[0][:, -1], res.attn_in[layer][0][:, -1]
    with pytest.raises(ValueError, match="attention output"):
        dla.direct_logit_effect(m, layer, z, x, tgt)
    per_head = dla.direct_logit_effect(m, layer, z, x, tgt, attn_in=a)            # [B, H]
    contrib, _ = _layer_contribution(m, ids, layer)
    r = dla.readout(m)
    want = (r.normalise(contrib[:, -1], x) * r.W_U[tgt]).sum(-1)
    torch.testing.assert_close(per_head.sum(-1), want, rtol=1e-4, atol=1e-5)
    # the factor matters: without it the heads' sum is off (the post norm rescales the attention output)
    raw = dla.logit_effects(dla.head_outputs(z, m.W_O(layer)), x, tgt, r)["logit"].sum(-1)
    assert not torch.allclose(raw, want, rtol=1e-2, atol=1e-3)
