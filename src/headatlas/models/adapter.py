"""Loading a base model plus a PEFT (LoRA) adapter folder, offline, as one merged model.

A PEFT adapter folder holds ``adapter_config.json`` and ``adapter_model.safetensors`` (or ``.bin``) but no
``config.json``. :func:`load_adapter` loads the base model (an explicit ``base``, else the config's
``base_model_name_or_path``), applies the adapter with ``peft.PeftModel.from_pretrained`` and merges it into
the weights (``merge_and_unload``): the result is a plain transformers model whose heads headatlas reads
like any other. ``headatlas.load(folder)`` calls it for such a folder (with the base from the config).

Resolving the base offline: an explicit ``base`` (anything :func:`headatlas.load` accepts: a bundled name, a
folder, a ``.gguf``, a ``(model, tokenizer)`` pair or a :class:`LoadedModel`; pairs and loaded models are
deep-copied first, so merging never changes the caller's model); else the config's
``base_model_name_or_path`` when it is a bundled name or a local path; else, when it names the checkpoint a
bundled model was converted from (``HuggingFaceTB/SmolLM2-135M-Instruct`` -> ``smollm2-135m``), that bundled
model (a GGUF conversion: its weights are the de-quantized ones, which is what an adapter trained on the
bundled model expects); else the hub id itself (works only where the hub or its cache is reachable).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError, InputTypeError, ModelNotFoundError

ADAPTER_CONFIG = "adapter_config.json"
_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def is_adapter_folder(path: Any) -> bool:
    """True for a folder holding ``adapter_config.json`` and no ``config.json`` (a PEFT adapter, not a model)."""
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bool):
        return False
    p = Path(os.fspath(path)).expanduser()
    return p.is_dir() and (p / ADAPTER_CONFIG).is_file() and not (p / "config.json").is_file()


def adapter_config(path: str | os.PathLike) -> dict[str, Any]:
    """The adapter's ``adapter_config.json`` as a dict (ModelNotFoundError when missing or unreadable)."""
    p = Path(os.fspath(path)).expanduser()
    cfg = p / ADAPTER_CONFIG
    if not cfg.is_file():
        raise ModelNotFoundError(f"{p} holds no {ADAPTER_CONFIG}: not a PEFT adapter folder")
    try:
        doc = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"{cfg} is not readable JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(doc, dict):
        raise ModelNotFoundError(f"{cfg} does not hold a JSON object")
    if not any((p / w).is_file() for w in _ADAPTER_WEIGHTS):
        raise ModelNotFoundError(f"{p} holds {ADAPTER_CONFIG} but no adapter weights ({' or '.join(_ADAPTER_WEIGHTS)}); "
                                 "save the adapter there with peft_model.save_pretrained(folder)")
    return doc


def base_spec(path: str | os.PathLike) -> str:
    """The base model the adapter names, resolved for offline use (see the module docstring)."""
    from .bundled import BUNDLED

    name = adapter_config(path).get("base_model_name_or_path")
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"{Path(path)}/{ADAPTER_CONFIG} names no base_model_name_or_path; pass the base "
                         "explicitly (load_adapter(folder, base=...), or --base-a/--base-b on the command line)")
    if name in BUNDLED or Path(name).expanduser().exists():
        return name
    for b in BUNDLED.values():
        if b.hf_id.lower() == name.lower():
            return b.name
    return name


def _peft():
    try:
        import peft
    except ImportError:
        raise InputError("loading a PEFT adapter folder needs the peft package: pip install 'headatlas[peft]'") from None
    return peft


def merge_adapter(model: Any, adapter_dir: str | os.PathLike) -> Any:
    """``model`` (a transformers causal LM, changed in place) with the adapter applied and merged;
    returns the merged plain model."""
    peft = _peft()
    try:
        wrapped = peft.PeftModel.from_pretrained(model, os.fspath(adapter_dir), is_trainable=False)
        merged = wrapped.merge_and_unload()
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        text = str(exc).strip().splitlines()
        raise InputError(f"could not apply the adapter {adapter_dir} to its base model "
                         f"({type(exc).__name__}: {text[0] if text else ''}); check that the base is the model "
                         "the adapter was trained on") from None
    return merged.eval()


def _adapter_tokenizer(adapter_dir: Path, fallback: Any) -> Any:
    """The adapter folder's own tokenizer when it saved one, else the base's."""
    if any((adapter_dir / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(adapter_dir), local_files_only=True)
        except (OSError, ValueError):
            return fallback
    return fallback


def load_adapter(adapter_dir: str | os.PathLike, base: Any = None, *, device: str | torch.device | None = None,
                 dtype: str | torch.dtype | None = None) -> Any:
    """Load ``base`` (default: the adapter's ``base_model_name_or_path``), apply the PEFT adapter in
    ``adapter_dir`` and merge it: a :class:`~headatlas.models.LoadedModel` named ``<base>+<adapter folder>``.

    >>> m = load_adapter("lora-out", base="smollm2-135m")   # doctest: +SKIP
    """
    from .loading import LoadedModel, load

    if isinstance(adapter_dir, bool) or not isinstance(adapter_dir, (str, os.PathLike)):
        raise InputTypeError(f"adapter_dir must be a folder path, got {type(adapter_dir).__name__}")
    folder = Path(os.fspath(adapter_dir)).expanduser()
    if not folder.is_dir():
        raise ModelNotFoundError(f"no such adapter folder: {folder}")
    adapter_config(folder)
    spec = base_spec(folder) if base is None else base
    if isinstance(spec, LoadedModel):
        base_model, tok, base_name = copy.deepcopy(spec.model), spec.tokenizer, spec.source or spec.info.name
    elif isinstance(spec, (tuple, list)) and len(spec) == 2:
        base_model, tok = copy.deepcopy(spec[0]), spec[1]
        base_name = getattr(getattr(base_model, "config", None), "_name_or_path", "") or type(base_model).__name__
    else:
        lm = load(spec, device="cpu", dtype=dtype)
        base_model, tok, base_name = lm.model, lm.tokenizer, lm.source
    merged = merge_adapter(base_model, folder)
    m = load((merged, _adapter_tokenizer(folder, tok)), device=device, dtype=dtype)
    name = f"{base_name}+{folder}"
    return dataclasses.replace(m, info=dataclasses.replace(m.info, name=name), source=name)


def load_adapter_spec(path: Path, dtype: torch.dtype, use_cache: bool) -> tuple[Any, Any, str]:
    """``(model, tokenizer, name)`` for ``headatlas.load(adapter_folder)`` (models/loading.py's hook):
    the base named by the adapter's config, loaded with the same dtype, the adapter merged in."""
    from .loading import _load_from_spec

    spec = base_spec(path)
    model, tok, base_name = _load_from_spec(spec, dtype, use_cache)
    merged = merge_adapter(model, path)
    return merged, _adapter_tokenizer(Path(path), tok), f"{base_name}+{path}"
