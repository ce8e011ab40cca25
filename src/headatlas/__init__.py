"""headatlas: map every attention head of a decoder-only LLM to its function."""

from .errors import (AtlasFileError, BundledModelMissingError, HeadAtlasError, InputError, ModelNotFoundError,
                     UnsupportedArchitectureError)
from .instrument import HeadEdit, Taps, instrumented
from .models import DEFAULT_MODEL, LoadedModel, ModelInfo, bundled_names, load

__version__ = "0.1.0"

__all__ = ["AtlasFileError", "BundledModelMissingError", "DEFAULT_MODEL", "HeadAtlasError", "HeadEdit", "InputError",
           "LoadedModel", "ModelInfo", "ModelNotFoundError", "Taps", "UnsupportedArchitectureError", "__version__",
           "bundled_names", "instrumented", "load"]
