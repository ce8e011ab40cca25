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

from ..errors import InputError, InputTypeError, ModelNotFoundError, UnsupportedArchitectureError
from .arch import AttentionLayout, check_supported, not_attention_message, out_proj_weight
from .bundled import BUNDLED, bundled_names
from .cache import cache_dir
from .info import ModelInfo, info_from_config
from .placement import Placement, check_covers_config, check_placement, dispatch, module_device, pin

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
    _readout: Any = field(default=None, repr=False)   # methods.dla.Readout, computed on first use
    _decoder_layers: Any = field(default=False, repr=False)   # models.suffix.decoder_layers (False: not looked up)

    @property
    def device(self) -> torch.device:
        """Where inputs go: the input embedding's device (its execution device when accelerate
        dispatched the model with ``device_map``, so offloaded weights never report ``meta``)."""
        try:
            embed = self.model.get_input_embeddings()
        except (AttributeError, NotImplementedError):  # a model without the standard accessor
            embed = None
        return module_device(embed if isinstance(embed, nn.Module) else self.model)

    @property
    def device_map(self) -> dict[str, Any] | None:
        """The accelerate device map (module name -> device, ``"cpu"`` or ``"disk"``), or None."""
        return getattr(self.model, "hf_device_map", None)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def W_O(self, layer: int) -> torch.Tensor:
        """Output projection of ``layer`` as ``[n_heads, d_head, d_model]``: head h writes ``z_h @ W_O[h]``."""
        module = self.layout.module(layer)
        w = out_proj_weight(module, self.layout.out_proj_name)
        if w.device.type == "meta":  # offloaded (device_map with "cpu"/"disk"): a copy on its execution device
            from accelerate.utils import align_module_device

            with align_module_device(getattr(module, self.layout.out_proj_name)):
                w = out_proj_weight(module, self.layout.out_proj_name).detach().clone()
        n, d = self.info.n_heads, self.info.d_head
        return w.t().reshape(n, d, -1)

    def unembed(self) -> nn.Module:
        """The language-model head (``[d_model] -> [vocab]``)."""
        return self.model.get_output_embeddings()

    def final_norm(self) -> nn.Module | None:
        """The norm before the unembedding (``None`` only for an architecture the table says has none)."""
        return self.layout.final_norm

    def check_head(self, layer: int, head: int) -> None:
        """InputError unless ``(layer, head)`` is a head: a layer with softmax heads and a head index in range."""
        if int(layer) not in self.info.attention_layers:
            raise InputError(not_attention_message(int(layer), self.info.attention_layers, self.info.n_layers))
        if not 0 <= int(head) < self.info.n_heads:
            raise InputError(f"head {head} out of range: the model has {self.info.n_heads} heads per layer (0..{self.info.n_heads - 1})")


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """float32 (default), bfloat16 or float16, by name or as a ``torch.dtype``; InputError otherwise."""
    names = ", ".join(sorted(_DTYPES))
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise InputError(f"dtype {dtype} is not supported; use one of {names}")
        return dtype
    if not isinstance(dtype, str):
        raise InputTypeError(f"dtype must be a string or a torch.dtype, got {type(dtype).__name__} {dtype!r}; use one of {names}")
    try:
        return _DTYPES[dtype.strip().lower().removeprefix("torch.")]
    except KeyError:
        raise InputError(f"unknown dtype {dtype!r}; use one of {names}") from None


def _resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> cuda when available, else cpu; else a device that exists here (InputError otherwise)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)) or isinstance(device, bool):
        raise InputTypeError(f"device must be a string such as 'cpu' or 'cuda:0' (or a torch.device), got "
                             f"{type(device).__name__} {device!r}")
    try:
        dev = torch.device(device.strip() if isinstance(device, str) else device)
    except (RuntimeError, ValueError, TypeError):
        raise InputError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r}: this torch sees no CUDA GPU (torch.cuda.is_available() is False); "
                             "use --device cpu or install a CUDA build of torch")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise InputError(f"device {device!r}: there are only {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
        return dev
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(f"device {device!r}: MPS is not available on this machine; use cpu")
        return dev
    raise InputError(f"device {device!r} is not supported; use cpu, cuda, cuda:N or mps")


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (error messages of headatlas stay on one line)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _gguf_cache_folder(path: Path, dtype: torch.dtype = torch.float32) -> Path:
    """The de-quantized copy of ``path`` in ``dtype``: one folder per GGUF file (path, size, mtime) and dtype
    (float32 keeps the unsuffixed name of earlier versions; ``-bfloat16``, ``-float16`` otherwise)."""
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:16]
    suffix = "" if dtype == torch.float32 else "-" + _dtype_name(dtype)
    return cache_dir() / "gguf" / f"{path.stem}-{key}{suffix}"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _from_pretrained(folder: str, *, gguf_file: str | None, dtype: torch.dtype, local_only: bool,
                     hf_kw: dict[str, Any] | None = None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw: dict[str, Any] = {"local_files_only": local_only}
    if gguf_file:
        kw["gguf_file"] = gguf_file
    tok = AutoTokenizer.from_pretrained(folder, **kw)
    if hf_kw and "revision" in hf_kw:  # hf_kw: device_map, max_memory, offload_folder, revision (see load)
        tok = AutoTokenizer.from_pretrained(folder, revision=hf_kw["revision"], **kw)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa", **kw, **(hf_kw or {}))
    return model, tok


def _load_gguf(path: Path, dtype: torch.dtype, use_cache: bool):
    """Load a GGUF file, de-quantized by transformers straight into ``dtype``; cache it as safetensors in
    that dtype (a bfloat16 cache is half the size of a float32 one). A missing ``dtype`` cache is built
    from the float32 cache when there is one (no de-quantization), else from the GGUF file."""
    if not path.is_file():
        raise ModelNotFoundError(f"GGUF file not found: {path}")
    with path.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ModelNotFoundError(f"{path} is not a GGUF file (bad magic bytes)")
    cached = _gguf_cache_folder(path, dtype)
    sources = [cached] + ([_gguf_cache_folder(path)] if dtype != torch.float32 else [])
    for folder in sources if use_cache else []:
        if not (folder / "config.json").is_file():
            continue
        try:
            model, tok = _from_pretrained(str(folder), gguf_file=None, dtype=dtype, local_only=True)
        except Exception as exc:  # a damaged cache is rebuilt, never trusted
            log.warning("ignoring damaged cache %s (%s)", folder, exc)
            shutil.rmtree(folder, ignore_errors=True)
            continue
        if folder != cached:
            _write_cache(model, tok, cached)
        return model, tok
    try:
        model, tok = _from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype, local_only=True)
    except Exception as exc:
        damage = _gguf_damage(path)
        if damage:
            raise ModelNotFoundError(f"could not load GGUF file {path}: it is truncated or corrupt ({damage}); "
                                     "download or assemble it again") from exc
        raise ModelNotFoundError(f"could not load GGUF file {path} ({first_line(exc)}); check that transformers "
                                 "supports its architecture") from exc
    if use_cache:
        _write_cache(model, tok, cached)
    return model.to(dtype), tok


def _gguf_damage(path: Path) -> str:
    """Why ``path`` is not a whole GGUF file ("" when its header and tensor data are consistent)."""
    try:
        from gguf import GGUFReader

        GGUFReader(str(path))
    except Exception as exc:  # gguf raises ValueError/IndexError/struct.error on a cut-off file
        return first_line(exc)
    return ""


def _check_model_folder(path: Path) -> None:
    """A Hugging Face model folder needs a config, weights and a tokenizer: say which one is missing."""
    if not (path / "config.json").is_file():
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        hint = f"; to load the GGUF file inside, pass its path ({path / ggufs[0]})" if ggufs else ""
        raise ModelNotFoundError(f"{path} is a folder but holds no config.json: not a Hugging Face model folder{hint}")
    if not any(next(path.glob(pat), None) for pat in _WEIGHT_FILES):
        raise ModelNotFoundError(f"{path} holds config.json but no weights (*.safetensors or *.bin); save the model "
                                 "there with model.save_pretrained(folder)")
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelNotFoundError(f"{path} holds no tokenizer ({', '.join(_TOKENIZER_FILES[:3])}); save it there with "
                                 "tokenizer.save_pretrained(folder)")


_WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.safetensors.index.json", "*.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "spiece.model",
                    "vocab.txt")


def _write_cache(model, tok, folder: Path) -> None:
    """Save the de-quantized weights as safetensors in their dtype (atomic: a temp folder, then a rename)."""
    from safetensors.torch import save_model

    tmp: Path | None = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        config["dtype"] = _dtype_name(next(model.parameters()).dtype)
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tok.save_pretrained(tmp)
        os.replace(tmp, folder)
    except Exception as exc:  # caching is an optimisation: never fail a load because of it
        log.warning("could not cache the de-quantized model in %s: %s", folder, exc)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _load_from_spec(spec: str, dtype: torch.dtype, use_cache: bool,
                    hf_kw: dict[str, Any] | None = None) -> tuple[Any, Any, str]:
    bundled = ", ".join(bundled_names())
    if not spec.strip():
        raise ModelNotFoundError(f"empty model name; pass a bundled model ({bundled}), a Hugging Face id, a model "
                                 "folder or a .gguf file")
    if spec in BUNDLED:
        path = BUNDLED[spec].locate()
        model, tok = _load_gguf(path, dtype, use_cache)
        return model, tok, spec
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        from .adapter import load_adapter_spec   # a PEFT/LoRA adapter: its base with the adapter merged in

        return load_adapter_spec(path, dtype, use_cache)
    if path.is_dir():
        _check_model_folder(path)
        try:
            model, tok = _from_pretrained(str(path), gguf_file=None, dtype=dtype, local_only=True, hf_kw=hf_kw)
        except Exception as exc:
            raise ModelNotFoundError(f"could not load the model folder {path} ({first_line(exc)})") from exc
        return model, tok, str(path)
    if path.suffix.lower() == ".gguf" or path.is_file():
        model, tok = _load_gguf(path, dtype, use_cache)
        return model, tok, str(path)
    if spec.startswith((".", "/", "~")) or "\\" in spec:
        raise ModelNotFoundError(f"no such file or folder: {spec}")
    if "/" not in spec and "-" in spec and spec.split("-")[0] in {n.split("-")[0] for n in bundled_names()}:
        raise ModelNotFoundError(f"unknown bundled model {spec!r}; bundled models: {bundled}")
    try:  # a Hugging Face hub id: works where the hub (or its local cache) is reachable
        model, tok = _from_pretrained(spec, gguf_file=None, dtype=dtype, local_only=False, hf_kw=hf_kw)
    except Exception as exc:
        raise ModelNotFoundError(
            f"could not load {spec!r} as a Hugging Face hub id ({first_line(exc)}); if this machine is offline, save "
            f"the model to a local folder and pass its path, pass a .gguf file, or use a bundled model: {bundled}"
        ) from exc
    return model, tok, spec


def load(spec: Any = "smollm2-135m", *, device: str | torch.device | None = None,
         dtype: str | torch.dtype | None = None, cache: bool = True, device_map: str | dict[str, Any] | None = None,
         max_memory: dict[int | str, int | str] | None = None, offload_folder: str | os.PathLike | None = None,
         revision: str | None = None) -> LoadedModel:
    """Load a causal LM for head analysis.

    ``spec``: a bundled short name (``"smollm2-135m"``, ``"gemma3-270m"``, ``"qwen2.5-coder-1.5b"``
    with the ``[qwen]`` extra), a Hugging Face id, a local model folder, a path to a ``.gguf`` file,
    an already loaded ``(model, tokenizer)`` pair, or a :class:`LoadedModel` (returned as is).
    ``dtype`` defaults to float32, ``device`` to CUDA when available. ``cache`` keeps a de-quantized
    copy of GGUF files, in ``dtype``, for fast reloads (bfloat16: half the bytes of float32).

    Models larger than one device (see ``models/placement.py``): ``device_map="auto"`` (or
    ``"balanced"``, ``"balanced_low_0"``, ``"sequential"``, or a dict of module name -> GPU index,
    ``"cpu"`` or ``"disk"``) places the modules through accelerate, within ``max_memory`` (e.g.
    ``{0: "70GiB", 1: "70GiB", "cpu": "200GiB"}``); ``"disk"`` modules are read from
    ``offload_folder``. Then ``device`` must stay None and :attr:`LoadedModel.device` is the input
    embedding's device. ``revision`` (a branch, tag or commit) applies to Hugging Face hub ids.

    >>> m = load("smollm2-135m")          # doctest: +SKIP
    >>> m.info.n_layers, m.info.n_heads   # doctest: +SKIP
    (30, 9)
    """
    if isinstance(spec, LoadedModel):
        return spec
    if not isinstance(cache, bool):
        raise InputTypeError(f"cache must be True or False, got {type(cache).__name__} {cache!r}")
    torch_dtype = _resolve_dtype(dtype)
    placement = check_placement(device_map, max_memory, offload_folder, device)
    hf_kw = {**placement.from_pretrained_kwargs(), **_check_revision(spec, revision)}
    dev = _resolve_device(device)
    if isinstance(placement.device_map, dict) and isinstance(spec, (str, os.PathLike)) and str(spec) not in BUNDLED:
        check_covers_config(os.fspath(spec), placement.device_map, revision=revision)  # before loading any weights
    if isinstance(spec, (tuple, list)):
        model, tok = _check_pair(spec)
        name = getattr(model.config, "_name_or_path", "") or type(model).__name__
        if dtype is not None:
            model = model.to(torch_dtype)
    elif isinstance(spec, (str, os.PathLike)):
        model, tok, name = _load_from_spec(os.fspath(spec) if not isinstance(spec, str) else spec, torch_dtype, cache,
                                           hf_kw=hf_kw)
    else:
        raise InputTypeError(f"cannot load a model from {type(spec).__name__} {spec!r:.60}; pass a bundled name "
                             f"({', '.join(bundled_names())}), a Hugging Face id, a folder, a .gguf path or "
                             "(model, tokenizer)")
    layout = check_supported(model)
    model, dev = _place(model, placement, torch_dtype, dev, device, layout)
    model.eval()
    info = model_info(model, layout, name=name, device=str(dev))
    return LoadedModel(model=model, tokenizer=tok, info=info, layout=layout, source=name)


def model_info(model: Any, layout: AttentionLayout, *, name: str, device: str) -> ModelInfo:
    """The :class:`ModelInfo` of a model whose layout was found, checked against its modules: every attention
    layer's output projection reads ``n_heads * d_head`` features (so a head's slice of it is its output)."""
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    info = info_from_config(model.config, name=name, dtype=dtype, device=device,
                            attention_layers=layout.attention_layers)
    for layer in info.attention_layers:
        proj = getattr(layout.attention_modules[layer], layout.out_proj_name)
        if not isinstance(getattr(proj, "weight", None), torch.Tensor):
            raise UnsupportedArchitectureError(
                f"{type(model).__name__}: the output projection of layer {layer} ({type(proj).__name__}) has no single "
                "weight matrix, so it cannot be split into heads")
        width = out_proj_weight(layout.attention_modules[layer], layout.out_proj_name).shape[1]
        if width != info.n_heads * info.d_head:
            raise UnsupportedArchitectureError(
                f"{type(model).__name__}: the output projection of layer {layer} ({type(proj).__name__}) reads {width} "
                f"features, but the config gives {info.n_heads} heads x d_head {info.d_head}; headatlas cannot split "
                "it into heads")
    return info


def _place(model: Any, placement: Placement, dtype: torch.dtype, dev: torch.device,
           device: Any, layout: AttentionLayout) -> tuple[Any, torch.device]:
    """Move ``model`` to ``dev``, or dispatch it by ``placement`` (unless from_pretrained already did).
    Returns the model and where its inputs go (the input embedding's execution device)."""
    if placement.active:
        if not getattr(model, "hf_device_map", None):
            model = dispatch(model, placement, dtype)
        for module in (layout.final_norm, layout.unembed):  # the readout's weights are read directly
            if module is not None:
                pin(module)
    elif not (getattr(model, "hf_device_map", None) and device is None):  # a pair dispatched by its owner stays
        return model.to(dev), dev
    return model, module_device(model.get_input_embeddings())


def _check_revision(spec: Any, revision: Any) -> dict[str, str]:
    """``revision`` (a branch, tag or commit) applies to Hugging Face hub ids only."""
    if revision is None:
        return {}
    if not isinstance(revision, str) or not revision.strip():
        raise InputError(f"revision must be a non-empty string (a branch, tag or commit), got {revision!r}")
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        if text in BUNDLED:
            raise InputError(f"{text!r} is a bundled model with a single version; drop revision={revision!r} "
                             "(or @revision)")
        if Path(text).expanduser().exists() or text.lower().endswith(".gguf") or text.startswith((".", "/", "~")):
            raise InputError(f"{text!r} is a local path; revision={revision!r} applies to Hugging Face hub ids only: "
                             "point at the folder of the checkpoint you want instead")
        return {"revision": revision.strip()}
    raise InputError(f"revision={revision!r} applies to Hugging Face hub ids only, not to a {type(spec).__name__}")


def _check_pair(spec: tuple | list) -> tuple[Any, Any]:
    """``(model, tokenizer)``: a Hugging Face model (an ``nn.Module`` with a ``config``) and a tokenizer."""
    if len(spec) != 2:
        raise InputTypeError(f"load((model, tokenizer)) expects a pair, got a {type(spec).__name__} of {len(spec)} items")
    model, tok = spec
    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        raise InputTypeError(f"load((model, tokenizer)): the first item must be a Hugging Face model (a "
                             f"PreTrainedModel), got {type(model).__name__}")
    if tok is None or not callable(getattr(tok, "encode", None)) or isinstance(tok, (str, bytes)):
        raise InputTypeError(f"load((model, tokenizer)): the second item must be a tokenizer (with encode/decode), got "
                             f"{type(tok).__name__}")
    return model, tok
