"""Tiny random models of every architecture in the README's architecture table (no downloads, CPU).

``tiny_arch(model_type)`` builds the installed transformers' causal LM of that type from a small config:
4 layers, 4 query heads of width 16 (2 kv heads), d_model 64, a 64-token vocabulary, plus the few
architecture-specific sizes in :data:`OVERRIDES` (hybrids get a mix of attention and other layers, with
layer 0 not an attention layer where the architecture allows it). Attention weights are widened so that
patterns are peaked and a zeroed head visibly changes the logits.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from tiny import ToyTokenizer

README = Path(__file__).resolve().parents[1] / "README.md"

SIZES = dict(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, max_position_embeddings=128, moe_intermediate_size=32,
             num_experts=4, num_local_experts=4, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1,
             shared_intermediate_size=32, pad_token_id=0, bos_token_id=1, eos_token_id=2)
_HYBRID = ["linear_attention", "full_attention", "linear_attention", "full_attention"]
_MLA = dict(q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16,
            num_key_value_heads=4, head_dim=8)   # MLA configs call the rotary part head_dim
_MAMBA2 = dict(mamba_n_heads=8, mamba_d_head=16, mamba_d_state=16, mamba_chunk_size=16, mamba_expand=2)
OVERRIDES: dict[str, dict] = {
    "codegen": dict(rotary_dim=8),
    "ctrl": dict(dff=128),
    "gptj": dict(rotary_dim=8),
    "gpt_neo": dict(attention_types=[[["global", "local"], 2]], window_size=8),
    "persimmon": dict(partial_rotary_factor=0.5),
    "deepseek_v2": dict(_MLA, first_k_dense_replace=1, n_group=1, topk_group=1),
    "deepseek_v3": dict(_MLA, first_k_dense_replace=1, n_group=1, topk_group=1),
    "minicpm3": dict(_MLA),
    "glm4_moe_lite": dict(_MLA, first_k_dense_replace=1, n_group=1, topk_group=1),
    "sarvam_mla": dict(_MLA, first_k_dense_replace=1, n_group=1, topk_group=1),
    "youtu": dict(_MLA),
    "longcat_flash": dict(_MLA, zero_expert_num=1),
    "minimax": dict(layer_types=_HYBRID, block_size=4),
    "qwen3_next": dict(layer_types=_HYBRID, linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2,
                       linear_num_value_heads=4, decoder_sparse_step=1),
    "qwen3_5_text": dict(layer_types=_HYBRID, linear_key_head_dim=16, linear_value_head_dim=16,
                         linear_num_key_heads=2, linear_num_value_heads=4),
    "kimi_linear": dict(_MLA, layer_types=_HYBRID, linear_head_dim=16, linear_num_heads=4),
    "bailing_hybrid": dict(_MLA, layer_types=_HYBRID, first_k_dense_replace=1, n_group=1, topk_group=1),
    "olmo_hybrid": dict(layer_types=_HYBRID, linear_key_head_dim=16, linear_value_head_dim=16,
                        linear_num_key_heads=2, linear_num_value_heads=4),
    "jamba": dict(attn_layer_period=2, attn_layer_offset=1, mamba_d_state=8, mamba_expand=1, expert_layer_period=2,
                  expert_layer_offset=1),
    "bamba": dict(_MAMBA2, attn_layer_indices=[1, 3]),
    "falcon_h1": dict(_MAMBA2, mamba_d_ssm=128),
    "granitemoehybrid": dict(_MAMBA2, layer_types=["linear_attention", "full_attention", "linear_attention",
                                                   "full_attention"]),
    "nemotron_h": dict(layers_block_type=["linear_attention", "full_attention", "mlp", "full_attention"],
                       mamba_num_heads=8, mamba_head_dim=16, ssm_state_size=16, n_groups=1, chunk_size=16),
    "lfm2": dict(layer_types=["conv", "full_attention", "conv", "full_attention"]),
    "lfm2_moe": dict(layer_types=["conv", "full_attention", "conv", "full_attention"], num_dense_layers=1),
    "lfm3": dict(layer_types=["conv", "full_attention", "conv", "full_attention"]),
    "recurrent_gemma": dict(block_types=["recurrent", "attention"], lru_width=64, attention_window_size=16),
    "zamba2": dict(layers_block_type=["mamba", "hybrid", "mamba", "hybrid"], mamba_d_state=16, mamba_ngroups=1,
                   mamba_headdim=16, n_mamba_heads=8, adapter_rank=8, attention_head_dim=16),
    "zamba": dict(attn_layer_period=2, attn_layer_offset=1, mamba_d_state=8, mamba_expand=1, attention_head_dim=32),
    "mimo_v2_flash": dict(v_head_dim=16),
    "mamba2": dict(num_heads=8, head_dim=16, n_groups=1, state_size=16, chunk_size=16),
    "gemma4_text": dict(vocab_size_per_layer_input=64, hidden_size_per_layer_input=8, global_head_dim=32,  # wider global heads, as in Gemma 4
                        sliding_window=8),
    "gemma3n_text": dict(num_kv_shared_layers=2, layer_types=["sliding_attention", "full_attention"] * 2,
                         vocab_size_per_layer_input=64, hidden_size_per_layer_input=8, laurel_rank=8,
                         activation_sparsity_pattern=[0.0] * 4, altup_num_inputs=2),
}


def _has(config, name: str) -> bool:
    try:
        return hasattr(config, name)
    except RuntimeError:    # a per-layer attribute of a heterogeneous config
        return True


def tiny_config(model_type: str, overrides: dict | None = None):
    from transformers import AutoConfig

    base = AutoConfig.for_model(model_type)
    extra = OVERRIDES.get(model_type, {}) if overrides is None else overrides
    known = set(getattr(base, "attribute_map", {}))
    read_only = {k for k in SIZES if isinstance(getattr(type(base), k, None), property)
                 and getattr(type(base), k).fset is None}
    kw = {k: v for k, v in SIZES.items() if (_has(base, k) or k in known) and k not in read_only}
    return AutoConfig.for_model(model_type, **{**kw, **extra})


def model_class(model_type: str):
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type])


def tiny_arch(model_type: str, seed: int = 0, overrides: dict | None = None):
    """``(model, ToyTokenizer())``: a random float32 model of ``model_type`` in eval mode (``overrides``
    replace the architecture's entry of :data:`OVERRIDES`)."""
    cfg = tiny_config(model_type, overrides)
    torch.manual_seed(seed)
    model = model_class(model_type)(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and p.is_floating_point():
                std = 0.3 if re.search(r"(^|[._])(q|k|c_attn|query|key|W[qk])\w*($|\.)", name) else 0.1
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model, ToyTokenizer()


def readme_table() -> dict[str, str]:
    """The README's architecture table: model_type -> status (``exact``, ``attention layers only``, or
    ``refused: <why>``), from its rows ``| status | `type`, `type`, ... |``."""
    text = README.read_text(encoding="utf-8")
    start = text.index("<!-- architectures -->")
    end = text.index("<!-- /architectures -->")
    table: dict[str, str] = {}
    for line in text[start:end].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not cells[1].startswith("`"):
            continue
        for model_type in re.findall(r"`([^`]+)`", cells[1]):
            assert model_type not in table, f"{model_type} is listed twice in the README's architecture table"
            table[model_type] = cells[0]
    return table
