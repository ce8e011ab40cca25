"""Helpers shared by CLI commands: clean error reporting and model loading with a spinner."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from typing import Any, Iterator

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from ..errors import HeadAtlasError

console = Console(stderr=True)

# C0/C1 control characters (ESC starts every ANSI sequence), zero-width and bidirectional-override characters
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def terminal_text(value: Any) -> str:
    """``value`` as text that prints as written: control characters (an ANSI escape from an atlas, a bell, a
    newline inside a name) and bidi overrides are shown as ``\\xNN`` / ``\\uNNNN`` instead of reaching the
    terminal."""
    def show(m: re.Match[str]) -> str:
        c = ord(m.group())
        return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"

    return _UNPRINTABLE.sub(show, str(value))


def safe(value: Any) -> str:
    """``value`` for a string that rich reads as markup: :func:`terminal_text` with its markup escaped, so a
    ``[link=...]`` in a model or detector name prints literally."""
    return escape(terminal_text(value))


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn headatlas errors into one red line ``error: ...`` and exit code 2 (no traceback). The message is
    printed as plain text (never read as rich markup: ``[d_head]`` stays as written) and is not wrapped."""
    try:
        yield
    except HeadAtlasError as exc:
        print_error(str(exc))
        raise typer.Exit(code=2) from None


def print_error(message: str) -> None:
    """``error: <message>`` on stderr, on one line."""
    line = Text("error:", style="bold red")
    line.append(" " + " ".join(message.split()))
    console.print(line, soft_wrap=True, highlight=False)


def quiet_transformers() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers.utils import logging as tlog

    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)


def load_model(spec: str, device: str | None = None, dtype: str | None = None):
    from ..models import load

    quiet_transformers()
    with console.status(f"loading {safe(spec)} ..."):
        return load(spec, device=device, dtype=dtype)
