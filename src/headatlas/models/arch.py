"""Architecture facts: the one table that knows module names of specific architectures.

headatlas reads and writes heads through transformers' attention-function registry, so an
architecture is supported when its attention layers call that registry. What remains
architecture-specific is where the output projection (W_O) and the final norm live; both are
found generically, with this table as the list of what is tested.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UnsupportedArchitectureError

@dataclass(frozen=True)
class ArchSpec:
    """Where an architecture keeps the pieces headatlas reads, as dotted paths.

    ``q``, ``k``, ``v``, ``o``: the projections inside each attention module (GPT-2 fuses q/k/v in
    ``c_attn``); ``final_norm``: the norm before the unembedding, relative to the model;
    ``unembed``: the language-model head, relative to the model; ``attn_out_norm``: a norm applied to
    the attention block's output before it joins the residual stream (Gemma 2/3's "sandwich" norm),
    relative to the decoder layer, or None. A path that does not resolve on a loaded model raises
    :class:`UnsupportedArchitectureError` naming it (never a silent ``None``)."""

    model_type: str
    q: str = "q_proj"
    k: str = "k_proj"
    v: str = "v_proj"
    o: str = "o_proj"
    final_norm: str = "model.norm"
    unembed: str = "lm_head"
    attn_out_norm: str | None = None


# The architectures the test-suite exercises on tiny random models. Others whose attention goes
# through the registry are found generically (the runtime check in instrument/ guards them).
ARCHS: dict[str, ArchSpec] = {
    "llama": ArchSpec("llama"),
    "qwen2": ArchSpec("qwen2"),
    "gemma3_text": ArchSpec("gemma3_text", attn_out_norm="post_attention_layernorm"),
    "gpt2": ArchSpec("gpt2", q="c_attn", k="c_attn", v="c_attn", o="c_proj", final_norm="transformer.ln_f"),
}
TESTED_ARCHITECTURES: dict[str, str] = {k: v.o for k, v in ARCHS.items()}
_OUT_PROJ_NAMES = ("o_proj", "c_proj", "out_proj", "dense", "wo")
_FINAL_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "final_norm")


@dataclass(frozen=True)
class AttentionLayout:
    """Where the heads live in a loaded model."""

    attention_modules: tuple[nn.Module, ...]   # index = layer
    out_proj_name: str
    final_norm: nn.Module | None = None
    unembed: nn.Module | None = None
    spec: ArchSpec | None = None               # the table row, or None for a generically found architecture
    attn_out_norms: tuple[nn.Module | None, ...] = ()   # per layer: the norm on the attention output, if any


def supports_attention_interface(model: nn.Module) -> bool:
    return bool(getattr(type(model), "_supports_attention_backend", False))


def attention_modules(model: nn.Module) -> tuple[nn.Module, ...]:
    """The self-attention modules ordered by ``layer_idx``."""
    found: dict[int, nn.Module] = {}
    for module in model.modules():
        idx = getattr(module, "layer_idx", None)
        if idx is None or not type(module).__name__.endswith("Attention"):
            continue
        if getattr(module, "is_cross_attention", False):
            continue
        found.setdefault(int(idx), module)
    return tuple(found[i] for i in sorted(found))


def check_decoder_only(model: nn.Module) -> None:
    """Refuse encoders (BERT-like, bidirectional attention), encoder-decoders (T5, BART) and models
    without a language-model head: headatlas maps the heads of decoder-only causal LMs."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", "?")
    what = f"{type(model).__name__} (model_type={model_type!r})"
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedArchitectureError(f"{what} is an encoder-decoder model, not a decoder-only causal LM; "
                                           "headatlas maps decoder-only models (Llama, GPT-2, Gemma, Qwen, ...)")
    bidirectional = [m for m in model.modules() if getattr(m, "is_causal", None) is False
                     and type(m).__name__.endswith("Attention") and getattr(m, "layer_idx", None) is not None]
    if bidirectional:
        raise UnsupportedArchitectureError(f"{what} is not a decoder-only causal LM: its attention "
                                           f"({type(bidirectional[0]).__name__}) is bidirectional (an encoder); "
                                           "headatlas maps decoder-only models (Llama, GPT-2, Gemma, Qwen, ...)")
    get_out = getattr(model, "get_output_embeddings", None)
    if not callable(get_out) or get_out() is None:
        raise UnsupportedArchitectureError(f"{what} has no language-model head; load it as a causal LM "
                                           "(AutoModelForCausalLM) so that its logits can be read")


def check_supported(model: nn.Module) -> AttentionLayout:
    """Refuse models whose attention does not route through ``AttentionInterface``."""
    model_type = getattr(model.config, "model_type", "?")
    check_decoder_only(model)
    if not supports_attention_interface(model):
        raise UnsupportedArchitectureError(
            f"{type(model).__name__} (model_type={model_type!r}) does not route attention through "
            "transformers' AttentionInterface, so headatlas cannot read or write its heads; "
            f"Tested architectures: {', '.join(sorted(TESTED_ARCHITECTURES))}; any decoder-only model "
            "whose class sets `_supports_attention_backend = True` (Llama, Mistral, Qwen2/3, Gemma 1-3, "
            "GPT-2, GPT-NeoX, Phi, OLMo, ...) should work."
        )
    modules = attention_modules(model)
    if not modules:
        raise UnsupportedArchitectureError(
            f"found no self-attention modules with a layer_idx in {type(model).__name__}"
        )
    name = TESTED_ARCHITECTURES.get(model_type)
    if name is None:
        name = next((n for n in _OUT_PROJ_NAMES if hasattr(modules[0], n)), None)
    if name is None or not hasattr(modules[0], name):
        raise UnsupportedArchitectureError(
            f"cannot find the attention output projection of {type(modules[0]).__name__} "
            f"(looked for {', '.join(_OUT_PROJ_NAMES)})"
        )
    spec = ARCHS.get(model_type)
    if spec is not None:
        for part in (spec.q, spec.k, spec.v, spec.o):
            if not hasattr(modules[0], part):
                raise UnsupportedArchitectureError(f"{type(model).__name__}: the architecture table says attention "
                                                   f"modules have {part!r}, but {type(modules[0]).__name__} has not")
        norm, unembed = _resolve(model, spec.final_norm, "final norm"), _resolve(model, spec.unembed, "unembedding")
    else:
        norm, unembed = final_norm(model), model.get_output_embeddings()
        if norm is None:
            raise UnsupportedArchitectureError(
                f"cannot find the final norm of {type(model).__name__} (looked for {', '.join(_FINAL_NORM_NAMES)} on its "
                "base model); add a row for model_type " + repr(model_type) + " to headatlas.models.arch.ARCHS")
    return AttentionLayout(attention_modules=modules, out_proj_name=name, final_norm=norm, unembed=unembed, spec=spec,
                           attn_out_norms=attention_output_norms(model, modules, spec))


def attention_output_norms(model: nn.Module, modules: tuple[nn.Module, ...],
                           spec: ArchSpec | None) -> tuple[nn.Module | None, ...]:
    """Per layer, the norm applied to the attention output before the residual add (or None).

    From the table when the architecture has a row; otherwise found generically: a decoder layer with
    both ``post_attention_layernorm`` and ``pre_feedforward_layernorm`` is a sandwich-norm layer (Gemma 2
    and 3), whose ``post_attention_layernorm`` normalises the attention output. (In Llama-style layers
    ``post_attention_layernorm`` is the MLP's input norm: it does not touch the attention output.)"""
    names = {id(mod): name for name, mod in model.named_modules()}
    out: list[nn.Module | None] = []
    for mod in modules:
        name = names.get(id(mod), "")
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else None
        if parent is None:
            out.append(None)
            continue
        if spec is not None:
            path = spec.attn_out_norm
            out.append(_resolve(parent, path, "attention-output norm") if path else None)
        elif hasattr(parent, "pre_feedforward_layernorm") and isinstance(getattr(parent, "post_attention_layernorm", None),
                                                                         nn.Module):
            out.append(parent.post_attention_layernorm)
        else:
            out.append(None)
    return tuple(out)


def _resolve(model: nn.Module, path: str, what: str) -> nn.Module:
    obj: object = model
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise UnsupportedArchitectureError(f"{type(model).__name__}: the {what} is not at {path!r} as the "
                                               "architecture table (headatlas.models.arch.ARCHS) says")
    if not isinstance(obj, nn.Module):
        raise UnsupportedArchitectureError(f"{type(model).__name__}: {path!r} is not a module")
    return obj


def out_proj_weight(module: nn.Module, name: str) -> torch.Tensor:
    """W_O as ``[d_model, n_heads * d_head]`` (nn.Linear layout), whatever the layer class."""
    proj = getattr(module, name)
    weight = proj.weight
    if type(proj).__name__ == "Conv1D":  # GPT-2 stores [in, out]
        weight = weight.t()
    return weight


def final_norm(model: nn.Module) -> nn.Module | None:
    base = getattr(model, "base_model", model)
    for n in _FINAL_NORM_NAMES:
        mod = getattr(base, n, None)
        if isinstance(mod, nn.Module):
            return mod
    return None
