"""``headatlas.load``: a bundled short name, a Hugging Face id, a local folder, a ``.gguf`` file,
or an already loaded ``(model, tokenizer)`` pair -> :class:`LoadedModel`."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelNotFoundError, UnsupportedArchitectureError
from .arch import AttentionLayout, check_supported, final_norm, out_proj_weight
from .bundled import BUNDLED, bundled_names
from .info import ModelInfo, info_from_config

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


@dataclass
class LoadedModel:
    """A loaded causal LM with what headatlas needs to address its heads.

    Attributes: ``model`` (the Hugging Face model, in eval mode), ``tokenizer``, ``info``
    (:class:`ModelInfo`), ``layout`` (its attention modules, one per layer).
    """

    model: Any
    tokenizer: Any
    info: ModelInfo
    layout: AttentionLayout
    source: str = ""
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def W_O(self, layer: int) -> torch.Tensor:
        """Output projection of ``layer`` as ``[n_heads, d_head, d_model]``: head h writes ``z_h @ W_O[h]``."""
        w = out_proj_weight(self.layout.attention_modules[layer], self.layout.out_proj_name)
        n, d = self.info.n_heads, self.info.d_head
        return w.t().reshape(n, d, -1)

    def unembed(self) -> nn.Module:
        """The language-model head (``[d_model] -> [vocab]``)."""
        return self.model.get_output_embeddings()

    def final_norm(self) -> nn.Module | None:
        return final_norm(self.model)

    def check_head(self, layer: int, head: int) -> None:
        from ..errors import InputError

        if not 0 <= int(layer) < self.info.n_layers:
            raise InputError(f"layer {layer} out of range: the model has {self.info.n_layers} layers (0..{self.info.n_layers - 1})")
        if not 0 <= int(head) < self.info.n_heads:
            raise InputError(f"head {head} out of range: the model has {self.info.n_heads} heads per layer (0..{self.info.n_heads - 1})")


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(sorted(_DTYPES))}") from None


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cache_dir() -> Path:
    """Where de-quantized GGUF models are cached (``$HEADATLAS_CACHE`` or ``~/.cache/headatlas``)."""
    return Path(os.environ.get("HEADATLAS_CACHE", Path.home() / ".cache" / "headatlas"))


def _gguf_cache_folder(path: Path) -> Path:
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:16]
    return cache_dir() / "gguf" / f"{path.stem}-{key}"


def _from_pretrained(folder: str, *, gguf_file: str | None, dtype: torch.dtype, local_only: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw: dict[str, Any] = {"local_files_only": local_only}
    if gguf_file:
        kw["gguf_file"] = gguf_file
    tok = AutoTokenizer.from_pretrained(folder, **kw)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa", **kw)
    return model, tok


def _load_gguf(path: Path, dtype: torch.dtype, use_cache: bool):
    """Load a GGUF file (de-quantized to float32 by transformers); cache it as safetensors."""
    if not path.is_file():
        raise ModelNotFoundError(f"GGUF file not found: {path}")
    with path.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ModelNotFoundError(f"{path} is not a GGUF file (bad magic bytes)")
    cached = _gguf_cache_folder(path)
    if use_cache and (cached / "config.json").is_file():
        try:
            return _from_pretrained(str(cached), gguf_file=None, dtype=dtype, local_only=True)
        except Exception as exc:  # a damaged cache is rebuilt, never trusted
            log.warning("ignoring damaged cache %s (%s)", cached, exc)
            shutil.rmtree(cached, ignore_errors=True)
    try:
        model, tok = _from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32, local_only=True)
    except Exception as exc:
        raise ModelNotFoundError(f"could not load GGUF file {path}: {exc}") from exc
    if use_cache:
        _write_cache(model, tok, cached)
    return model.to(dtype), tok


def _write_cache(model, tok, folder: Path) -> None:
    """Save the de-quantized weights as safetensors (atomic: a temp folder, then a rename)."""
    from safetensors.torch import save_model

    tmp: Path | None = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        config["dtype"] = "float32"
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tok.save_pretrained(tmp)
        os.replace(tmp, folder)
    except Exception as exc:  # caching is an optimisation: never fail a load because of it
        log.warning("could not cache the de-quantized model in %s: %s", folder, exc)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _load_from_spec(spec: str, dtype: torch.dtype, use_cache: bool) -> tuple[Any, Any, str]:
    if spec in BUNDLED:
        path = BUNDLED[spec].locate()
        model, tok = _load_gguf(path, dtype, use_cache)
        return model, tok, spec
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf" or path.is_file():
        model, tok = _load_gguf(path, dtype, use_cache)
        return model, tok, str(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is a folder but holds no config.json: not a Hugging Face model folder")
        try:
            model, tok = _from_pretrained(str(path), gguf_file=None, dtype=dtype, local_only=True)
        except Exception as exc:
            raise ModelNotFoundError(f"could not load the model folder {path}: {exc}") from exc
        return model, tok, str(path)
    if spec.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"no such file or folder: {spec}")
    bundled = ", ".join(bundled_names())
    if "/" not in spec and "-" in spec and spec.split("-")[0] in {n.split("-")[0] for n in bundled_names()}:
        raise ModelNotFoundError(f"unknown bundled model {spec!r}; bundled models: {bundled}")
    try:  # a Hugging Face hub id: works where the hub (or its local cache) is reachable
        model, tok = _from_pretrained(spec, gguf_file=None, dtype=dtype, local_only=False)
    except Exception as exc:
        raise ModelNotFoundError(
            f"could not load {spec!r} as a Hugging Face hub id ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}).\n"
            "If this machine is offline, save the model to a local folder and pass its path, "
            f"pass a .gguf file, or use a bundled model: {bundled}"
        ) from exc
    return model, tok, spec


def load(spec: Any = "smollm2-135m", *, device: str | torch.device | None = None,
         dtype: str | torch.dtype | None = None, cache: bool = True) -> LoadedModel:
    """Load a causal LM for head analysis.

    ``spec``: a bundled short name (``"smollm2-135m"``, ``"gemma3-270m"``), a Hugging Face id,
    a local model folder, a path to a ``.gguf`` file, an already loaded ``(model, tokenizer)``
    pair, or a :class:`LoadedModel` (returned as is). ``dtype`` defaults to float32, ``device``
    to CUDA when available. ``cache`` keeps a de-quantized copy of GGUF files for fast reloads.

    >>> m = load("smollm2-135m")          # doctest: +SKIP
    >>> m.info.n_layers, m.info.n_heads   # doctest: +SKIP
    (30, 9)
    """
    if isinstance(spec, LoadedModel):
        return spec
    torch_dtype = _resolve_dtype(dtype)
    dev = _resolve_device(device)
    if isinstance(spec, tuple):
        if len(spec) != 2 or not isinstance(spec[0], nn.Module):
            raise TypeError("load((model, tokenizer)) expects a (PreTrainedModel, tokenizer) pair")
        model, tok = spec
        name = getattr(model.config, "_name_or_path", "") or type(model).__name__
        if dtype is not None:
            model = model.to(torch_dtype)
    elif isinstance(spec, (str, os.PathLike)):
        model, tok, name = _load_from_spec(str(spec), torch_dtype, cache)
    else:
        raise TypeError(f"cannot load a model from {type(spec).__name__}; pass a name, a path or (model, tokenizer)")
    layout = check_supported(model)
    model = model.to(dev)
    model.eval()
    info = info_from_config(model.config, name=name, dtype=str(next(model.parameters()).dtype).removeprefix("torch."), device=str(dev))
    if len(layout.attention_modules) != info.n_layers:
        raise UnsupportedArchitectureError(
            f"config says {info.n_layers} layers but {len(layout.attention_modules)} attention modules were found"
        )
    return LoadedModel(model=model, tokenizer=tok, info=info, layout=layout, source=name)
