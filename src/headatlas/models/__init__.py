"""Loading models and describing their heads. The only package that knows architecture names."""

from .bundled import BUNDLED, DEFAULT_MODEL, bundled_names
from .info import ModelInfo
from .cache import cache_dir
from .loading import LoadedModel, load

__all__ = ["BUNDLED", "DEFAULT_MODEL", "LoadedModel", "ModelInfo", "bundled_names", "cache_dir", "load"]
