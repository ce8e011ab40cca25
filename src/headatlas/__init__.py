"""headatlas: map every attention head of a decoder-only LLM to its function."""

from .errors import (AtlasFileError, BundledModelMissingError, HeadAtlasError, InputError, ModelNotFoundError,
                     UnsupportedArchitectureError)
from .instrument import HeadEdit, Taps, instrumented
from .models import DEFAULT_MODEL, LoadedModel, ModelInfo, bundled_names, load
from .methods import ablate_heads, patch_heads, patch_heads_by_position, path_patch, steer  # causal methods

__version__ = "0.1.0"

from .atlas import Atlas  # noqa: E402  (after __version__: Atlas records it)
from .scan import scan  # noqa: E402
from .sweep import sweep  # noqa: E402  (a callable module too: see sweep.py)

__all__ = ["Atlas", "AtlasFileError", "BundledModelMissingError", "DEFAULT_MODEL", "HeadAtlasError", "HeadEdit", "InputError",
           "LoadedModel", "ModelInfo", "ModelNotFoundError", "Taps", "UnsupportedArchitectureError", "__version__", "ablate_heads",
           "bundled_names", "instrumented", "load", "patch_heads", "patch_heads_by_position", "path_patch", "scan",
           "steer", "sweep"]
