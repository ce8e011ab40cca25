"""ModelInfo: the sizes of a loaded model, read from its config in one place."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ModelInfo:
    """Sizes and identity of a decoder-only model.

    ``n_heads`` counts query heads; ``n_kv_heads`` key/value heads (GQA: query head ``h``
    reads kv head ``h // (n_heads // n_kv_heads)``).
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

    @property
    def n_heads_total(self) -> int:
        return self.n_layers * self.n_heads

    @property
    def group_size(self) -> int:
        """Query heads per kv head."""
        return self.n_heads // self.n_kv_heads

    def kv_head(self, head: int) -> int:
        """The kv head that query head ``head`` reads."""
        return head // self.group_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _first(config: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def info_from_config(config: Any, *, name: str, dtype: str, device: str) -> ModelInfo:
    """Read layer/head sizes from a (text) config. The only place that knows config field names."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_layers = int(_first(text, "num_hidden_layers", "n_layer", "num_layers"))
    n_heads = int(_first(text, "num_attention_heads", "n_head", "num_heads"))
    n_kv = int(_first(text, "num_key_value_heads", "n_kv_heads", "num_kv_heads", default=n_heads))
    d_model = int(_first(text, "hidden_size", "n_embd", "d_model"))
    d_head = int(_first(text, "head_dim", default=d_model // n_heads))
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
        d_head=d_head,
        d_model=d_model,
        vocab_size=vocab,
        n_ctx=n_ctx,
        dtype=dtype,
        device=device,
    )
