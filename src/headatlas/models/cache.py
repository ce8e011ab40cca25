"""Where headatlas keeps what it derives from model files: joined bundled GGUF files and de-quantized
safetensors copies. ``$HEADATLAS_CACHE`` when set, else ``$XDG_CACHE_HOME/headatlas``, else
``~/.cache/headatlas``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The headatlas cache folder (module docstring); not created here."""
    own = os.environ.get("HEADATLAS_CACHE", "").strip()
    if own:
        return Path(own).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg and Path(xdg).expanduser().is_absolute() else Path.home() / ".cache"
    return base / "headatlas"
