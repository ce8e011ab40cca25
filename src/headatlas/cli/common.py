"""Helpers shared by CLI commands: clean error reporting and model loading with a spinner."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

import typer
from rich.console import Console
from rich.text import Text

from ..errors import HeadAtlasError

console = Console(stderr=True)


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
    with console.status(f"loading {spec} ..."):
        return load(spec, device=device, dtype=dtype)
