"""``headatlas compare A B --out DIR``: the heads of two same-shaped models (or two atlases) side by side."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import List

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from ..scan import ScanProgress
from . import app
from .common import console, quiet_transformers, safe, terminal_text, user_errors
from .scan import RichScanProgress, cli_options, out_console, sigterm_as_exit


def changes_table(comp) -> Table:
    """Per detector: heads gained (b only), lost (a only), kept, and significant changes."""
    table = Table("detector", "gained (b only)", "lost (a only)", "kept", "significant changes",
                  title=Text(terminal_text(f"headatlas compare: {comp.atlas_a.model_name} -> {comp.atlas_b.model_name}")))

    def names(heads):
        return ", ".join(f"L{la}H{h}" for la, h in heads[:8]) + (f" +{len(heads) - 8}" if len(heads) > 8 else "") or "-"

    for d, ch in comp.changes().items():
        table.add_row(Text(terminal_text(d)), Text(names(ch["gained"]), style="green"),
                      Text(names(ch["lost"]), style="red"), str(len(ch["kept"])), str(len(ch["significant"])))
    for d, why in comp.skipped().items():
        table.add_row(Text(terminal_text(d)), Text("not compared: ", style="yellow") + Text(terminal_text(why[:80])),
                      "", "", "")
    return table


class _SideProgress(ScanProgress):
    """The scans of both sides on one rich display: bars named ``a:<detector>`` and ``b:<detector>``."""

    def __init__(self, bar: Progress) -> None:
        self.bar, self.side, self.rich = bar, "a", RichScanProgress(bar, [])

    def begin(self, side: str, names: list[str]) -> None:
        self.side, self.rich = side, RichScanProgress(self.bar, [f"{side}:{n}" for n in names])

    def _key(self, name: str) -> str:
        key = f"{self.side}:{name}"
        if key not in self.rich.tasks:   # a required detector the scan added
            self.rich.tasks[key] = self.bar.add_task(key, total=None, start=False)
        return key

    def start(self, name: str, index: int, total: int) -> None:
        self.rich.start(self._key(name), index, total)

    def update(self, name: str, done: int, total: int) -> None:
        self.rich.update(self._key(name), done, total)

    def finish(self, name: str, seconds: float, status: str) -> None:
        self.rich.finish(self._key(name), seconds, status)


@app.command("compare")
def compare_cmd(
    a: str = typer.Argument(..., help="model A: bundled name, HF id, model folder, .gguf, PEFT adapter folder, or atlas.json"),
    b: str = typer.Argument(..., help="model B (same shape as A), or a second atlas.json"),
    out: Path = typer.Option(..., "--out", "-o", help="output folder (comparison.json, comparison.html, atlas_a/b.json)"),
    detectors: str = typer.Option(None, "--detectors", "-d", help="comma-separated detector names, or 'all' (default: the default set)"),
    seed: int = typer.Option(0, help="seed of every prompt generator (the same for both models)"),
    quick: bool = typer.Option(False, "--quick", help="smallest data that still gives a meaningful null"),
    causal: bool = typer.Option(False, "--causal/--no-causal", help="also run each detector's causal check on both models"),
    base_a: str = typer.Option(None, "--base-a", help="base model of A when A is a PEFT adapter folder (default: its config's)"),
    base_b: str = typer.Option(None, "--base-b", help="base model of B when B is a PEFT adapter folder (default: its config's)"),
    device: str = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: cuda when available)"),
    dtype: str = typer.Option(None, help="float32 (default), bfloat16, float16"),
    batch_size: int = typer.Option(8, "--batch-size", help="rows per forward pass"),
    option: List[str] = typer.Option(None, "--option", "-O", metavar="NAME=VALUE",
                                     help="a detector option for both scans (repeatable; `headatlas detectors "
                                          "--options` lists them)"),
) -> None:
    """Compare the heads of A and B: the same scan on both, per-head score changes tested against both nulls,
    roles gained and lost, and per-head weight and activation deltas. Writes OUT/comparison.json and .html."""
    from ..checks import check_count, check_seed
    from ..compare import compare
    from ..outdir import prepare_out, scan_lock
    from ..scan import resolve_detectors

    with user_errors(), contextlib.ExitStack() as stack:
        names = resolve_detectors(detectors)
        options = cli_options(option, names)
        check_seed(seed, "--seed")
        check_count(batch_size, "--batch-size")
        out_dir = prepare_out(out)             # before the models load: a bad --out fails at once
        stack.enter_context(scan_lock(out_dir))
        stack.enter_context(sigterm_as_exit())
        quiet_transformers()
        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=False) as bar:
            steps = bar.add_task("compare", total=None)
            progress = _SideProgress(bar)

            def on_step(msg: str) -> None:
                bar.update(steps, description=f"[bold]compare[/]: {safe(msg)}")
                if msg.startswith("scanning "):
                    progress.begin(msg.split()[-1], names)

            try:
                comp = compare(a, b, detectors=detectors, seed=seed, quick=quick, causal=causal, base_a=base_a,
                               base_b=base_b, device=device, dtype=dtype, batch_size=batch_size, out=out_dir,
                               options=options,
                               progress=progress, on_step=on_step)
            except KeyboardInterrupt:
                console.print("[yellow]interrupted[/]: nothing written")
                raise typer.Exit(code=130) from None
            bar.update(steps, description="[bold]compare[/]: done", total=1, completed=1)
    out_console.print(changes_table(comp))
    if comp.weight_delta is not None:
        tops = ", ".join(f"L{la}H{h} {v:.3g}" for la, h, v in comp.top_weight_heads(8))
        out_console.print(f"heads whose weights moved most (relative Frobenius change): {tops}")
    for n in comp.notes:
        out_console.print(f"[dim]note: {safe(n)}[/]")
    console.print(f"wrote {out_dir / 'comparison.json'} and {out_dir / 'comparison.html'}")
