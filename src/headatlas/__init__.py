"""headatlas: map every attention head of a decoder-only LLM to its function.

The public names are imported lazily (PEP 562), so ``import headatlas`` is cheap and reading an atlas
(``headatlas.Atlas.load``) never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from .version import __version__ as __version__

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "AtlasFileError": ".errors", "BundledModelMissingError": ".errors", "HeadAtlasError": ".errors",
    "InputError": ".errors", "ModelNotFoundError": ".errors", "UnsupportedArchitectureError": ".errors",
    "HeadEdit": ".instrument", "Taps": ".instrument", "instrumented": ".instrument",
    "DEFAULT_MODEL": ".models", "LoadedModel": ".models", "ModelInfo": ".models", "bundled_names": ".models",
    "load": ".models",
    "ablate_heads": ".methods", "patch_heads": ".methods", "patch_heads_by_position": ".methods",
    "path_patch": ".methods", "steer": ".methods",
    "probe": ".methods.probing", "iti": ".methods.probing",
    "gate": ".methods.gating",
    "Atlas": ".atlas", "LabelRule": ".atlas", "CausalCheck": ".atlas",
    "scan": ".scan",
    "specificity": ".detectors.specificity",
    "compare": ".compare", "Comparison": ".compare",
    "sweep": ".sweep",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'headatlas' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
