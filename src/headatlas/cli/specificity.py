"""``headatlas specificity ATLAS``: compute the specificity matrix of a saved atlas and store it in the atlas."""

from __future__ import annotations

import math
from pathlib import Path
from typing import List

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from . import app
from .common import console, load_model, safe, terminal_text, user_errors


def matrix_table(rec) -> Table:
    """The z table: one row per ablated set (its size), one column per metric family; a row's own family cell
    (its own check re-measured) in bold. Every string from the atlas is printed as written."""
    table = Table(title="specificity matrix: z of each metric when a confirmed set is ablated", title_justify="left",
                  box=box.SIMPLE_HEAD, caption="z = (effect - median of the metric's random sets) / their std, signed "
                  "so that + = the way that family's own heads move it; bold: the row's own check",
                  caption_justify="left")
    table.add_column("ablated set", no_wrap=True)
    for f in rec.families:
        table.add_column(Text(terminal_text(f)), justify="right")
    z = rec.z()
    for i, r in enumerate(rec.rows):
        own = rec.references[r].family
        cells = [Text(f"{x:+.1f}" if math.isfinite(x) else "-", style="bold" if f == own else
                      ("yellow" if math.isfinite(x) and abs(x) >= 3 else "dim")) for f, x in zip(rec.families, z[i])]
        table.add_row(Text(terminal_text(f"{r} ({len(rec.heads[r])} heads)")), *cells)
    return table


def print_matrix(rec) -> None:
    from .scan import out_console

    if not rec.rows:
        out_console.print(Text(terminal_text("specificity matrix: empty (" + "; ".join(rec.notes[:1]) + ")")))
        return
    out_console.print(matrix_table(rec))
    for n in rec.notes:
        console.print(Text(terminal_text(f"note: {n}"), style="dim"))


def atlas_json_path(path: Path) -> Path:
    return path / "atlas.json" if path.is_dir() else path


@app.command("specificity")
def specificity_cmd(
    atlas: Path = typer.Argument(..., metavar="ATLAS", help="an atlas.json written by `headatlas scan`, or its folder"),
    model: str = typer.Option(None, "--model", "-m", help="the atlas's model (default: the model the atlas records)"),
    device: str = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: cuda when available)"),
    dtype: str = typer.Option(None, help="float32 (default), bfloat16, float16"),
    batch_size: int = typer.Option(None, "--batch-size", help="rows per clean pass (default: the scan's)"),
    option: List[str] = typer.Option(None, "--option", "-O", metavar="NAME=VALUE",
                                     help="the scan's detector options (needed when it used any; the atlas stores "
                                          "their names only)"),
) -> None:
    """Ablate every confirmed set of a saved atlas and measure every metric family; store the matrix in the atlas
    (ATLAS.json and the .html next to it, rewritten atomically) and print it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from ..atlas import Atlas
    from ..checks import check_count
    from ..detectors import base
    from ..detectors.options import parse_cli_options
    from ..detectors.specificity import check_model, compute, config_for
    from ..errors import InputError
    from ..outdir import scan_lock, write_atlas_pair
    from ..atlas import schema

    with user_errors():
        path = atlas_json_path(atlas)
        a = Atlas.load(path)
        if batch_size is not None:
            check_count(batch_size, "--batch-size")
        options = parse_cli_options(option, base.all_detectors())
        cfg = config_for(a, batch_size=batch_size, options=options)
        spec = model or str(a.model.get("source") or "")
        if not spec:
            raise InputError(f"{path} does not record its model's source; pass it with --model")
        with scan_lock(path.parent):
            m = load_model(spec, device, dtype)
            check_model(m, a)
            console.print(f"specificity matrix of [bold]{safe(a.model_name)}[/] ({safe(path)})")
            with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), console=console) as bar:
                task = bar.add_task("planning", total=None)

                def tick(done: int, total: int, what: str) -> None:
                    bar.update(task, completed=done, total=max(total, 1), description=safe(what))

                rec = compute(m, cfg, a, progress=tick)
            a.set_specificity(rec)
            write_atlas_pair(path, schema.dumps(a.to_dict()) + "\n", path.with_suffix(".html"), a.to_html())
    print_matrix(rec)
    console.print(f"wrote {path} and {path.with_suffix('.html')}")
