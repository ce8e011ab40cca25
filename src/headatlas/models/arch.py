"""Architecture facts: the one table that knows module names of specific architectures.

headatlas reads and writes heads through transformers' attention-function registry, so a layer has
heads headatlas can address when its attention module calls that registry (``ALL_ATTENTION_FUNCTIONS``).
Hybrid models (Jamba, Qwen3-Next, MiniMax, LFM2, ...) mix such layers with state-space, linear-attention
or convolution layers: their *attention layers* are the layers whose module calls the registry, and only
those have heads. What remains architecture-specific is where the output projection (W_O) and the final
norm live; both are found generically, with :data:`ARCHS` as the list of what is tested and
:data:`REFUSED` as the architectures that call the registry but whose heads headatlas cannot address
exactly. The README's architecture table lists every architecture checked by ``tests/test_arch_table.py``.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InputError, UnsupportedArchitectureError
from .info import n_layers_from_config


@dataclass(frozen=True)
class ArchSpec:
    """Where an architecture keeps the pieces headatlas reads, as dotted paths.

    ``q``, ``k``, ``v``, ``o``: the projections inside each attention module (GPT-2 fuses q/k/v in
    ``c_attn``); ``final_norm``: the norm before the unembedding, relative to the model;
    ``unembed``: the language-model head, relative to the model; ``attn_out_norm``: a norm applied to
    the attention block's output before it joins the residual stream (Gemma 2/3's "sandwich" norm),
    relative to the decoder layer, or None; ``final_norm_optional``: the final norm may be absent (OPT-350m
    normalises after each layer instead). A path that does not resolve on a loaded model raises
    :class:`UnsupportedArchitectureError` naming it (never a silent ``None``)."""

    model_type: str
    q: str = "q_proj"
    k: str = "k_proj"
    v: str = "v_proj"
    o: str = "o_proj"
    final_norm: str = "model.norm"
    unembed: str = "lm_head"
    attn_out_norm: str | None = None
    final_norm_optional: bool = False


# The architectures whose pieces are named here (each has a tiny-config exactness test). Others whose
# attention goes through the registry are found generically (the runtime check in instrument/ guards them).
ARCHS: dict[str, ArchSpec] = {
    "llama": ArchSpec("llama"),
    "qwen2": ArchSpec("qwen2"),
    "gemma3_text": ArchSpec("gemma3_text", attn_out_norm="post_attention_layernorm"),
    "gpt2": ArchSpec("gpt2", q="c_attn", k="c_attn", v="c_attn", o="c_proj", final_norm="transformer.ln_f"),
    "llama4_text": ArchSpec("llama4_text"),   # its base_model_prefix ("language_model") is not its attribute ("model")
    "opt": ArchSpec("opt", o="out_proj", final_norm="model.decoder.final_layer_norm", final_norm_optional=True),
    "lfm2": ArchSpec("lfm2", o="out_proj", final_norm="model.embedding_norm"),
    "lfm2_moe": ArchSpec("lfm2_moe", o="out_proj", final_norm="model.embedding_norm"),
    "lfm3": ArchSpec("lfm3", final_norm="model.embedding_norm"),
    "biogpt": ArchSpec("biogpt", o="out_proj", final_norm="biogpt.layer_norm", unembed="output_projection"),
    "ctrl": ArchSpec("ctrl", q="Wq", k="Wk", v="Wv", o="dense", final_norm="transformer.layernorm"),
}

# Architectures whose attention calls the registry but whose heads cannot be read or written exactly
# there: model_type -> why (the error message says it).
REFUSED: dict[str, str] = {
    "diffllama": "differential attention: each layer calls the attention function twice and subtracts the two "
                 "maps through a norm over heads, so a head's output is not one softmax head's",
    "dory": "its layers run several times per forward pass (looped depth), so a head is not identified by its layer",
    "mimo_v2_flash": "its sliding-window layers have twice the key/value heads of its full-attention layers; headatlas "
                     "needs one head layout in every layer",
    "jetmoe": "mixture of attention heads: each token routes to its top-k attention experts, so a slot of the "
              "heads' output is a different head at each token and there is no fixed per-head output projection",
}

_OUT_PROJ_NAMES = ("o_proj", "c_proj", "out_proj", "dense", "wo")
_FINAL_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "final_norm", "norm_f")
_REGISTRY = "ALL_ATTENTION_FUNCTIONS"
_LIBRARY_MODULES = ("torch.", "transformers.modeling_utils", "transformers.modeling_layers")


@dataclass(frozen=True)
class AttentionLayout:
    """Where the heads live in a loaded model. Every per-layer tuple is indexed by model layer."""

    attention_modules: tuple[nn.Module | None, ...]   # index = layer; None: a layer without softmax heads
    out_proj_name: str
    final_norm: nn.Module | None = None
    unembed: nn.Module | None = None
    spec: ArchSpec | None = None               # the table row, or None for a generically found architecture
    attn_out_norms: tuple[nn.Module | None, ...] = ()   # per layer: the norm on the attention output, if any

    @property
    def attention_layers(self) -> tuple[int, ...]:
        """The model layers with softmax heads."""
        return tuple(i for i, mod in enumerate(self.attention_modules) if mod is not None)

    def module(self, layer: int) -> nn.Module:
        """The attention module of ``layer`` (InputError naming the attention layers for another layer)."""
        mod = self.attention_modules[layer] if 0 <= layer < len(self.attention_modules) else None
        if mod is None:
            raise InputError(not_attention_message(layer, self.attention_layers, len(self.attention_modules)))
        return mod


def not_attention_message(layer: int, attention_layers: tuple[int, ...], n_layers: int) -> str:
    """The one-line error for a layer that has no heads (out of range, or not an attention layer)."""
    if not 0 <= layer < n_layers:
        return f"layer {layer} out of range: the model has {n_layers} layers (0..{n_layers - 1})"
    return (f"layer {layer} is not an attention layer (it has no softmax heads); this model's attention layers are "
            f"{format_layers(attention_layers)}")


def format_layers(layers: tuple[int, ...] | list[int]) -> str:
    """``0, 2, 4 .. 30`` style: the layers, with runs of a constant step shortened."""
    layers = list(layers)
    if len(layers) <= 6:
        return ", ".join(map(str, layers))
    step = layers[1] - layers[0]
    if all(b - a == step for a, b in zip(layers, layers[1:])):
        return f"{layers[0]}, {layers[1]} .. {layers[-1]} (every {step})" if step > 1 else f"{layers[0]}..{layers[-1]}"
    return ", ".join(map(str, layers))


@functools.lru_cache(maxsize=None)
def calls_attention_registry(cls: type) -> bool:
    """Whether the code of ``cls`` (or of a model-code base class) calls transformers' attention-function
    registry. Read from the class's source; the instrumented run checks it (a layer counted as attention
    that never calls the registry is an error, never a silent no-op)."""
    for c in cls.__mro__:
        if c is object or c.__module__.startswith(_LIBRARY_MODULES):
            continue
        try:
            if _REGISTRY in inspect.getsource(c):
                return True
        except (OSError, TypeError):   # no source (compiled or interactive): judged by the runtime check
            continue
    return False


def attention_modules(model: nn.Module, n_layers: int) -> tuple[nn.Module | None, ...]:
    """Per model layer, its self-attention module that calls the registry (None for other layers).

    Raises :class:`UnsupportedArchitectureError` when a registry-calling module has no layer of its own
    (``layer_idx`` missing, negative or past the last layer: attention shared across layers, as in
    Zamba) or when two of them claim one layer (recurrent blocks run twice, as in HRM)."""
    found: dict[int, nn.Module] = {}
    for name, module in model.named_modules():
        if getattr(module, "is_cross_attention", False) or not calls_attention_registry(type(module)):
            continue
        idx = getattr(module, "layer_idx", None)
        if idx is None:   # not a layer's attention (a vision tower's, a wrapper's)
            continue
        what = f"{type(model).__name__}: its attention module {name} ({type(module).__name__})"
        if not isinstance(idx, int) or not 0 <= idx < n_layers:
            raise UnsupportedArchitectureError(
                f"{what} has layer_idx={idx!r}, not one of the model's {n_layers} layers: its attention is shared "
                "across layers (or not tied to one), so headatlas cannot address its heads per layer")
        if idx in found:
            raise UnsupportedArchitectureError(
                f"{what} claims layer {idx}, as another attention module does: several attention modules per "
                "layer index, so a head is not identified by its layer")
        found[idx] = module
    return tuple(found.get(i) for i in range(n_layers))


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
    """The model's :class:`AttentionLayout`; refuses models none of whose layers calls the attention-function
    registry, and the architectures of :data:`REFUSED`."""
    model_type = getattr(model.config, "model_type", "?")
    what = f"{type(model).__name__} (model_type={model_type!r})"
    check_decoder_only(model)
    if model_type in REFUSED:
        raise UnsupportedArchitectureError(f"{what} is not supported: {REFUSED[model_type]}")
    modules = attention_modules(model, n_layers_from_config(model.config))
    present = [mod for mod in modules if mod is not None]
    if not present:
        raise UnsupportedArchitectureError(
            f"{what}: none of its layers routes attention through transformers' attention-function registry "
            "(ALL_ATTENTION_FUNCTIONS), so headatlas cannot read or write its heads (a model without softmax "
            "attention, or one with its own attention code); supported: decoder-only models whose attention "
            "modules call the registry (Llama, Mistral, Qwen, Gemma, GPT-2, GPT-NeoX, Phi, OLMo, DeepSeek, and the "
            "attention layers of hybrids such as Jamba or Qwen3-Next; see the README's architecture table)")
    spec = ARCHS.get(model_type)
    name = spec.o if spec is not None else next((n for n in _OUT_PROJ_NAMES if hasattr(present[0], n)), None)
    lacking = [mod for mod in present if name is None or not isinstance(getattr(mod, name, None), nn.Module)]
    if lacking:
        raise UnsupportedArchitectureError(
            f"{what}: cannot find the attention output projection of {type(lacking[0]).__name__} "
            f"(looked for {name if spec is not None else ', '.join(_OUT_PROJ_NAMES)}), so its heads cannot be "
            "addressed one by one")
    if spec is not None:
        for part in (spec.q, spec.k, spec.v, spec.o):
            if not hasattr(present[0], part):
                raise UnsupportedArchitectureError(f"{type(model).__name__}: the architecture table says attention "
                                                   f"modules have {part!r}, but {type(present[0]).__name__} has not")
        norm = _resolve(model, spec.final_norm, "final norm", optional=spec.final_norm_optional)
        unembed = _resolve(model, spec.unembed, "unembedding")
    else:
        norm, unembed = final_norm(model), model.get_output_embeddings()
        if norm is None:
            raise UnsupportedArchitectureError(
                f"cannot find the final norm of {type(model).__name__} (looked for {', '.join(_FINAL_NORM_NAMES)} on its "
                "base model); add a row for model_type " + repr(model_type) + " to headatlas.models.arch.ARCHS")
    return AttentionLayout(attention_modules=modules, out_proj_name=name, final_norm=norm,  # type: ignore[arg-type]
                           unembed=unembed, spec=spec, attn_out_norms=attention_output_norms(model, modules, spec))


def attention_output_norms(model: nn.Module, modules: tuple[nn.Module | None, ...],
                           spec: ArchSpec | None) -> tuple[nn.Module | None, ...]:
    """Per layer, the norm applied to the attention output before the residual add (or None).

    From the table when the architecture has a row; otherwise found generically: a decoder layer with
    both ``post_attention_layernorm`` and ``pre_feedforward_layernorm`` is a sandwich-norm layer (Gemma 2
    and 3), whose ``post_attention_layernorm`` normalises the attention output. (In Llama-style layers
    ``post_attention_layernorm`` is the MLP's input norm: it does not touch the attention output.)"""
    names = {id(mod): name for name, mod in model.named_modules()}
    out: list[nn.Module | None] = []
    for mod in modules:
        name = names.get(id(mod), "") if mod is not None else ""
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


def _resolve(model: nn.Module, path: str, what: str, optional: bool = False) -> nn.Module | None:
    obj: object = model
    parts = path.split(".")
    for i, part in enumerate(parts):
        if optional and i == len(parts) - 1 and hasattr(obj, part) and getattr(obj, part) is None:
            return None    # the table says this architecture may have none (e.g. OPT-350m's final norm)
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
