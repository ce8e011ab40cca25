"""The README's architecture table against reality, on a tiny random model of every listed architecture.

For each architecture: ``exact`` means it loads, every layer has heads, the logits of an instrumented run
without edits are bit-identical to the plain model's, each head's recorded output ``z`` is exactly what
the output projection reads (its slice), and zero-ablating a head equals zeroing its slice of the output
projection's input with a plain PyTorch pre-hook (and changes the logits). ``attention layers only``: the
same on the attention layers of a hybrid, whose other layers have no heads (an edit or a tap there is an
error naming the attention layers). ``refused: ...``: loading raises a headatlas error.

The default run checks a representative subset (every status, the hybrids of issue 19, the table rows of
``models.arch.ARCHS``, MLA); the whole table runs under ``-m slow``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from arch_zoo import readme_table, tiny_arch
from tiny import random_ids, tiny_model

import headatlas
from headatlas.errors import HeadAtlasError, InputError, UnsupportedArchitectureError
from headatlas.instrument import Taps, instrumented, zero
from headatlas.models import arch

TOL = 1e-5
TABLE = readme_table()
FAST = ("llama", "gpt2", "gemma3_text", "qwen2", "opt", "llama4_text", "lfm2", "ctrl", "deepseek_v3", "minimax",
        "qwen3_next", "jamba", "granitemoehybrid", "stablelm", "falcon_h1", "bloom", "bitnet", "jetmoe", "zamba2")
STATUSES = ("exact", "attention layers only")


def _hook_zeroed_logits(m, ids, layer: int, head: int) -> torch.Tensor:
    """Logits with head ``head`` of ``layer`` zeroed by a plain PyTorch pre-hook on the output projection."""
    proj = getattr(m.layout.attention_modules[layer], m.layout.out_proj_name)
    d = m.info.d_head

    def hook(_mod, args):
        x = args[0].clone()
        x[..., head * d:(head + 1) * d] = 0
        return (x,) + tuple(args[1:])

    handle = proj.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            return m.model(ids).logits
    finally:
        handle.remove()


def _projection_inputs(m, ids) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Plain logits and, per attention layer, what its output projection read ``[B, S, H * d_head]``."""
    seen: dict[int, torch.Tensor] = {}
    handles = [getattr(m.layout.attention_modules[la], m.layout.out_proj_name).register_forward_pre_hook(
        lambda _mod, args, la=la: seen.__setitem__(la, args[0].detach().clone())) for la in m.info.attention_layers]
    try:
        with torch.no_grad():
            return m.model(ids).logits, seen
    finally:
        for h in handles:
            h.remove()


def observed_status(model_type: str) -> str:
    """What the architecture does: ``exact``, ``attention layers only``, or ``refused: <the error>``;
    AssertionError when it loads but is not exact (a silent wrong answer: never acceptable)."""
    model, tok = tiny_arch(model_type)
    try:
        m = headatlas.load((model, tok), device="cpu")
    except HeadAtlasError as exc:
        return f"refused: {exc}"
    ids = random_ids(2, 10)
    plain, proj_in = _projection_inputs(m, ids)
    with torch.no_grad(), instrumented(m, taps=Taps(z=True)) as rec:
        out = m.model(ids).logits
    assert torch.equal(out, plain), f"{model_type}: logits without edits differ by {(out - plain).abs().max():.3g}"
    B, S = ids.shape
    for la in m.info.attention_layers:
        assert torch.equal(rec.z(la).reshape(B, S, -1), proj_in[la]), f"{model_type}: layer {la}'s z is not W_O's input"
        ours = _edited_logits(m, ids, [zero(la, 1)])
        ref = _hook_zeroed_logits(m, ids, la, 1)
        assert (ours - ref).abs().max() <= TOL, f"{model_type}: zeroing L{la}H1 differs from the hook"
        assert (ours - plain).abs().max() > 1e-4, f"{model_type}: zeroing L{la}H1 changed nothing"
    for la in m.info.other_layers:
        with pytest.raises(InputError, match="not an attention layer"):
            _edited_logits(m, ids, [zero(la, 1)])
        with pytest.raises(InputError, match="not an attention layer"):
            rec.z(la)
    return "attention layers only" if m.info.is_hybrid else "exact"


def _edited_logits(m, ids, edits) -> torch.Tensor:
    with torch.no_grad(), instrumented(m, edits=edits):
        return m.model(ids).logits


def _check_row(model_type: str) -> None:
    want = TABLE[model_type]
    got = observed_status(model_type)
    if want in STATUSES:
        assert got == want, f"{model_type}: the README says {want!r}, the model is {got!r}"
    else:
        assert want.startswith("refused:") and got.startswith("refused:"), f"{model_type}: README {want!r}, got {got!r}"


def test_the_table_lists_installed_architectures_and_only_known_statuses():
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    assert len(TABLE) >= 60
    assert set(TABLE) <= set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES), set(TABLE) - set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    for model_type, status in TABLE.items():
        assert status in STATUSES or status.startswith("refused: "), (model_type, status)
    for model_type in (*arch.ARCHS, *arch.REFUSED):
        assert model_type in TABLE, f"{model_type} has a row in models.arch but is not in the README's table"
    assert set(FAST) <= set(TABLE)


@pytest.mark.parametrize("model_type", FAST)
def test_architecture_row(model_type):
    _check_row(model_type)


@pytest.mark.slow
@pytest.mark.parametrize("model_type", sorted(set(TABLE) - set(FAST)))
def test_architecture_row_full_sweep(model_type):
    _check_row(model_type)


def test_the_readme_counts_match_the_table():
    import re

    from arch_zoo import README

    text = README.read_text(encoding="utf-8")
    got = re.search(r"Counts: (\d+) exact, (\d+) attention layers only, (\d+) refused\.", text)
    statuses = list(TABLE.values())
    want = (statuses.count("exact"), statuses.count("attention layers only"),
            sum(s.startswith("refused") for s in statuses))
    assert got is not None and tuple(int(x) for x in got.groups()) == want


def test_hybrid_info_and_errors_name_the_attention_layers():
    m = headatlas.load(tiny_arch("minimax"), device="cpu")
    assert m.info.attention_layers == (1, 3) and m.info.other_layers == (0, 2) and m.info.is_hybrid
    assert m.info.n_heads_total == 2 * m.info.n_heads and m.info.to_dict()["attention_layers"] == [1, 3]
    assert m.layout.attention_modules[0] is None and m.layout.attention_layers == (1, 3)
    with pytest.raises(InputError, match=r"layer 2 is not an attention layer.*attention layers are 1, 3"):
        m.W_O(2)
    with pytest.raises(InputError, match="layer 0 is not an attention layer"):
        m.check_head(0, 0)
    with pytest.raises(InputError, match="not an attention layer"):
        with instrumented(m, taps=Taps(z=True, layers=[0, 1])):
            pass
    ids = random_ids(1, 8)
    with torch.no_grad(), instrumented(m, taps=Taps(z=True, pattern=True)) as rec:
        m.model(ids)
    assert sorted(rec.layers_seen) == [1, 3]
    z = rec.z_all()
    assert z.shape[0] == 4 and torch.isnan(z[0]).all() and torch.isnan(z[2]).all() and not torch.isnan(z[1]).any()
    assert rec.pattern(3).shape == (1, 4, 8, 8)


def test_mla_head_widths():
    """DeepSeek V3 (multi-head latent attention): a head's output is v_head_dim wide (16 here), its queries
    and keys qk_nope + qk_rope (8 + 8); the recorded tensors and W_O have those widths."""
    m = headatlas.load(tiny_arch("deepseek_v3"), device="cpu")
    cfg = m.model.config
    assert m.info.d_head == cfg.v_head_dim == 16 and m.info.d_head_qk == cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
    with torch.no_grad(), instrumented(m, taps=Taps(z=True, qkv=True)) as rec:
        m.model(random_ids(1, 6))
    assert rec.z(0).shape[-1] == 16 and rec.q(0).shape[-1] == m.info.d_head_qk and rec.v(0).shape[-1] == 16
    assert m.W_O(0).shape == (4, 16, 64)


def test_mla_sizes_vectors_by_the_output_width():
    """Where v_head_dim differs from the q/k width, tools that size a vector per head (steering, add) use the
    output width."""
    from arch_zoo import OVERRIDES
    from headatlas.methods.steering import head_directions, steering_edits

    model, tok = tiny_arch("deepseek_v3", overrides=dict(OVERRIDES["deepseek_v3"], v_head_dim=24))
    m = headatlas.load((model, tok), device="cpu")
    assert (m.info.d_head, m.info.d_head_qk) == (24, 16)
    ids = random_ids(2, 6)
    d = head_directions(m, ids, random_ids(2, 6, seed=1))
    assert d.shape == (4, 4, 24)
    plain = _edited_logits(m, ids, [])
    steered = _edited_logits(m, ids, steering_edits(m, d, [(1, 2)], 4.0))
    assert (steered - plain).abs().max() > 1e-4


def test_an_attention_layer_that_skips_the_registry_is_an_error_not_a_no_op():
    """A layer counted as attention that runs its own attention code would take edits silently: the run
    raises instead."""
    model, tok = tiny_model("llama")
    m = headatlas.load((model, tok), device="cpu")
    module = m.layout.attention_modules[1]

    def own_attention(hidden_states, *args, **kwargs):   # no registry call: the layer adds nothing
        return torch.zeros_like(hidden_states), None

    module.forward = own_attention
    try:
        with pytest.raises(UnsupportedArchitectureError, match="layers 1 ran but did not call"):
            with torch.no_grad(), instrumented(m, edits=[zero(1, 0)]):
                m.model(random_ids(1, 6))
    finally:
        del module.forward


def test_every_tested_architecture_resolves_its_table_row():
    for model_type, spec in arch.ARCHS.items():
        m = headatlas.load(tiny_arch(model_type), device="cpu")
        assert m.layout.spec is spec and spec.model_type == m.info.model_type
        assert m.final_norm() is not None and m.layout.unembed is m.model.get_output_embeddings()
        first = m.layout.attention_modules[m.info.attention_layers[0]]
        for part in (spec.q, spec.k, spec.v, spec.o):
            assert hasattr(first, part)


def test_a_wrong_table_row_fails_loudly(monkeypatch):
    hf, tok = tiny_model("llama")
    bad = dataclasses.replace(arch.ARCHS["llama"], final_norm="model.no_such_norm")
    monkeypatch.setitem(arch.ARCHS, "llama", bad)
    with pytest.raises(UnsupportedArchitectureError, match="final norm is not at 'model.no_such_norm'"):
        headatlas.load((hf, tok))


def test_z_reducer_sees_the_edited_head_outputs():
    m = headatlas.load(tiny_model("llama"))
    ids = torch.randint(3, 60, (2, 12), generator=torch.Generator().manual_seed(0))
    taps = Taps(z=True, z_reducer=lambda layer, z, call: z[:, -1].mean(0))        # [H, d_head] per layer
    with torch.no_grad(), instrumented(m, taps=taps) as rec:
        m.model(ids)
    for layer in range(m.info.n_layers):
        torch.testing.assert_close(rec.z_reduced[layer][0], rec.z(layer)[:, -1].mean(0))
    with pytest.raises(headatlas.HeadAtlasError, match="z_reducer"):
        Taps(z_reducer=5)
