"""``headatlas info MODEL`` and ``headatlas models``."""

from __future__ import annotations

import typer
from rich.table import Table

from ..models import BUNDLED, DEFAULT_MODEL
from . import app
from .common import console, load_model, safe, user_errors


@app.command("models")
def models_cmd() -> None:
    """List the bundled models (loadable offline by short name)."""
    table = Table("name", "package", "what")
    for m in BUNDLED.values():
        table.add_row(m.name + (" (default)" if m.name == DEFAULT_MODEL else ""), m.pip_install, m.description)
    console.print(table)


@app.command("info")
def info_cmd(model: str = typer.Argument(DEFAULT_MODEL, help="bundled name, HF id, folder or .gguf file"),
             device: str = typer.Option(None, help="cpu, cuda, cuda:1 ..."),
             dtype: str = typer.Option(None, help="float32 (default), bfloat16, float16")) -> None:
    """Load a model and print its layer/head sizes."""
    with user_errors():
        m = load_model(model, device, dtype)
    table = Table("field", "value")
    for k, v in m.info.to_dict().items():
        table.add_row(safe(k), safe(v))   # a model's config is untrusted text
    console.print(table)
