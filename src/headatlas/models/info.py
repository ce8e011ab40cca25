"""ModelInfo: the sizes of a loaded model, read from its config in one place."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class ModelInfo:
    """Sizes and identity of a decoder-only model.

    ``n_heads`` counts query heads; ``n_kv_heads`` key/value heads (GQA: query head ``h``
    reads kv head ``h // (n_heads // n_kv_heads)``). ``d_head`` is the width of one head's output
    ``z`` (what the output projection reads; ``v_head_dim`` under multi-head latent attention) and
    ``d_head_qk`` the width of its queries and keys (equal to ``d_head`` except under MLA).
    ``attention_layers``: the model layers that have softmax heads (all of them, except in hybrids
    whose other layers are state-space, linear-attention or convolution layers). Per-head arrays stay
    ``[n_layers, n_heads]``, indexed by model layer; rows of the other layers are NaN.
    """

    name: str
    architecture: str
    model_type: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int
    vocab_size: int
    n_ctx: int
    dtype: str
    device: str
    d_head_qk: int = 0                          # 0: same as d_head
    attention_layers: tuple[int, ...] = field(default=())   # (): every layer

    def __post_init__(self) -> None:
        if not self.d_head_qk:
            object.__setattr__(self, "d_head_qk", self.d_head)
        layers = tuple(int(x) for x in self.attention_layers) or tuple(range(self.n_layers))
        object.__setattr__(self, "attention_layers", layers)

    @property
    def n_heads_total(self) -> int:
        """Heads of the attention layers (``len(attention_layers) * n_heads``)."""
        return len(self.attention_layers) * self.n_heads

    @property
    def is_hybrid(self) -> bool:
        """Whether some layers have no softmax heads."""
        return len(self.attention_layers) != self.n_layers

    @property
    def other_layers(self) -> tuple[int, ...]:
        """The layers without softmax heads (empty for an ordinary transformer)."""
        attn = set(self.attention_layers)
        return tuple(la for la in range(self.n_layers) if la not in attn)

    def is_attention_layer(self, layer: int) -> bool:
        return layer in self.attention_layers

    def nan_other_layers(self, values: Any) -> Any:
        """``values`` (a numpy array or tensor whose first axis is the model layer) with the rows of layers
        without heads set to NaN (in place; returned for chaining)."""
        if self.other_layers:
            values[list(self.other_layers)] = float("nan")
        return values

    @property
    def group_size(self) -> int:
        """Query heads per kv head."""
        return self.n_heads // self.n_kv_heads

    def kv_head(self, head: int) -> int:
        """The kv head that query head ``head`` reads."""
        return head // self.group_size

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["attention_layers"] = list(self.attention_layers)
        return out


def _first(config: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        try:
            value = getattr(config, name, None)
        except RuntimeError as exc:   # a heterogeneous config: the size differs from layer to layer
            raise UnsupportedArchitectureError(
                f"{type(config).__name__}: {name} differs from layer to layer ({type(exc).__name__}); headatlas needs "
                "one head count and head size for every layer") from None
        if value is not None:
            return value
    return default


def text_config(config: Any) -> Any:
    """The config of the language model (the config itself, or a multimodal config's text part)."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def n_layers_from_config(config: Any) -> int:
    return int(_first(text_config(config), "num_hidden_layers", "n_layer", "num_layers"))


def head_widths(config: Any) -> tuple[int, int]:
    """``(d_head, d_head_qk)`` from a config: the output (value) width of a head and its query/key width.
    Multi-head latent attention (DeepSeek V2/V3 and kin) has ``v_head_dim`` for the output and
    ``qk_nope_head_dim + qk_rope_head_dim`` for queries and keys (its ``head_dim`` is the rotary part only)."""
    text = text_config(config)
    n_heads = int(_first(text, "num_attention_heads", "n_head", "num_heads"))
    d_model = int(_first(text, "hidden_size", "n_embd", "d_model"))
    plain = int(_first(text, "head_dim", default=d_model // n_heads))
    nope, rope = getattr(text, "qk_nope_head_dim", None), getattr(text, "qk_rope_head_dim", None)
    qk = int(_first(text, "qk_head_dim", default=(nope + rope) if nope is not None and rope is not None else plain))
    v = int(_first(text, "v_head_dim", default=plain if qk == plain else qk))
    return v, qk


def info_from_config(config: Any, *, name: str, dtype: str, device: str,
                     attention_layers: tuple[int, ...] = ()) -> ModelInfo:
    """Read layer/head sizes from a (text) config. The only place that knows config field names.
    ``attention_layers`` (default: all) comes from the loaded model's layout
    (:func:`headatlas.models.arch.check_supported`)."""
    text = text_config(config)
    n_layers = n_layers_from_config(config)
    n_heads = int(_first(text, "num_attention_heads", "n_head", "num_heads"))
    n_kv = int(_first(text, "num_key_value_heads", "n_kv_heads", "num_kv_heads", default=n_heads))
    if getattr(text, "multi_query", False) and not getattr(text, "new_decoder_architecture", False):
        n_kv = 1   # multi-query attention (GPT-BigCode, Falcon-7B): one key/value head, whatever else the config says
    d_model = int(_first(text, "hidden_size", "n_embd", "d_model"))
    d_v, d_qk = head_widths(config)
    vocab = int(_first(text, "vocab_size"))
    n_ctx = int(_first(text, "max_position_embeddings", "n_positions", "n_ctx", default=2048))
    archs = getattr(config, "architectures", None) or [type(config).__name__.replace("Config", "")]
    return ModelInfo(
        name=name,
        architecture=str(archs[0]),
        model_type=str(getattr(config, "model_type", "unknown")),
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        d_head=d_v,
        d_model=d_model,
        vocab_size=vocab,
        n_ctx=n_ctx,
        dtype=dtype,
        device=device,
        d_head_qk=d_qk,
        attention_layers=tuple(attention_layers),
    )
