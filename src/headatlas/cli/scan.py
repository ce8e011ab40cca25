"""``headatlas scan MODEL``, ``headatlas detectors`` and ``headatlas report ATLAS.json``."""

from __future__ import annotations

import contextlib
import math
import signal
import threading
from pathlib import Path
from typing import Any, Iterator

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.markup import escape
from rich.table import Table

from ..checks import check_count
from ..models import DEFAULT_MODEL
from ..scan import ScanProgress
from . import app
from .common import console, load_model, user_errors

out_console = Console()


class RichScanProgress(ScanProgress):
    """One rich progress bar per detector (its ``ScanConfig.progress`` ticks drive the bar)."""

    def __init__(self, progress: Progress, names: list[str]) -> None:
        self.progress = progress
        self.tasks = {n: progress.add_task(n, total=None, start=False) for n in names}

    def start(self, name: str, index: int, total: int) -> None:
        self.progress.start_task(self.tasks[name])
        self.progress.update(self.tasks[name], description=f"[bold]{name}[/] ({index + 1}/{total})")

    def update(self, name: str, done: int, total: int) -> None:
        self.progress.update(self.tasks[name], completed=done, total=max(total, 1))

    def finish(self, name: str, seconds: float, status: str) -> None:
        task = self.tasks[name]
        total = self.progress.tasks[task].total or 1
        colour = "green" if status == "done" else ("cyan" if status == "resumed" else "yellow")
        short = status if len(status) < 60 else status[:57] + "..."
        self.progress.update(task, total=total, completed=total,
                             description=f"[bold]{name}[/] [{colour}]{short}[/] ({seconds:.1f} s)")
        self.progress.stop_task(task)


def default_out(model: str) -> Path:
    """``./atlas-<model>`` where ``<model>`` is the short name, or the last part of a path/id."""
    stem = Path(model.rstrip("/\\")).name or "model"
    if stem.lower().endswith(".gguf"):
        stem = stem[: -len(".gguf")]
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in stem)
    return Path(f"atlas-{safe}")


def summary_table(atlas, top: int) -> Table:
    """Per detector: stage, labels, top heads (score, effect, q) and the causal check against random heads."""
    table = Table("detector", "stage", "labelled", "top heads (score, effect, q)", "causal check (ablation)",
                  title=f"headatlas: {atlas.model_name}")
    for name in atlas.detectors:
        r = atlas.result(name)
        stage = atlas.meta[name].stage
        if r.skipped:
            table.add_row(name, stage, "-", f"[yellow]skipped:[/] {escape(r.skipped)}", "")
            continue
        tops = atlas.top_heads(name, top)
        if not tops:
            best = atlas.top_heads(name, 1, labelled_only=False)
            hint = (f" [dim](best {best[0].name}: score {best[0].score:.3g}, effect {best[0].effect:.3g}, "
                    f"q {_num(best[0].q_value)})[/]") if best else ""
            table.add_row(name, stage, "0", f"[magenta]none found[/]{hint}", _causal_cell(r.causal))
            continue
        cells = "\n".join(f"{e.name}  {e.score:.3g}  (effect {e.effect:.3g}, q {_num(e.q_value)})" for e in tops)
        more = len(r.labelled) - len(tops)
        table.add_row(name, stage, str(len(r.labelled)), cells + (f"\n[dim]+{more} more[/]" if more > 0 else ""),
                      _causal_cell(r.causal))
    return table


def _causal_cell(c) -> str:
    if c is None:
        return "[dim]not run[/]"
    if not c.ran:
        return f"[dim]{escape(c.note)}[/]"
    word = "confirmed" if c.passed else "not confirmed"
    colour = "green" if c.passed else "yellow"
    return (f"{escape(c.metric)} ({c.expected} expected): {c.effect:+.3g} vs random median {c.random_median:+.3g} "
            f"({len(c.random_effects)} sets); p {_num(c.p_value)}, q {_num(c.q_value)} [{colour}]{word}[/]")


def _num(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.2g}"


@app.command("scan")
def scan_cmd(
    model: str = typer.Argument(DEFAULT_MODEL, help="bundled name, HF id, model folder or .gguf file"),
    detectors: str = typer.Option(None, "--detectors", "-d", help="comma-separated detector names, or 'all' (default: the default set, ~10 min on a 135M model on 2 CPU cores)"),
    out: Path = typer.Option(None, "--out", "-o", help="output folder (default ./atlas-<model>)"),
    seed: int = typer.Option(0, help="seed of every prompt generator"),
    device: str = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: cuda when available)"),
    dtype: str = typer.Option(None, help="float32 (default), bfloat16, float16"),
    quick: bool = typer.Option(False, "--quick", help="smallest data that still gives a meaningful null"),
    batch_size: int = typer.Option(8, "--batch-size", help="rows per forward pass"),
    n_prompts: int = typer.Option(None, "--n-prompts", help="prompts per detector (default: each detector's own)"),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="reuse finished detectors from OUT/partial"),
    top: int = typer.Option(5, help="heads per type in the summary table"),
) -> None:
    """Scan every head of MODEL with the registered detectors; write OUT/atlas.json and OUT/atlas.html."""
    from ..checks import check_count, check_seed
    from ..outdir import prepare_out, scan_lock
    from ..scan import resolve_detectors, scan

    with user_errors(), contextlib.ExitStack() as stack:
        names = resolve_detectors(detectors)
        check_seed(seed, "--seed")
        check_count(batch_size, "--batch-size")
        if n_prompts is not None:
            check_count(n_prompts, "--n-prompts")
        check_count(top, "--top", minimum=0)
        # --out is checked and locked before the model loads: a bad folder, or a second scan into it, fails at once
        out_dir = prepare_out(out if out is not None else default_out(model))
        stack.enter_context(scan_lock(out_dir))
        stack.enter_context(sigterm_as_exit())
        m = load_model(model, device, dtype)
        console.print(f"scanning [bold]{m.info.name}[/] ({m.info.n_layers} layers x {m.info.n_heads} heads) "
                      f"with {len(names)} detector(s), seed {seed}{', quick' if quick else ''} -> {out_dir}")
        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        try:
            with Progress(*columns, console=console, transient=False) as bar:
                atlas = scan(m, names, seed=seed, quick=quick, out=out_dir, resume=resume,
                             progress=RichScanProgress(bar, names), batch_size=batch_size, n_prompts=n_prompts)
        except KeyboardInterrupt:
            console.print(f"[yellow]interrupted[/]: finished detectors are kept in {out_dir / 'partial'}; "
                          "run the same command again to resume")
            raise typer.Exit(code=130) from None
    out_console.print(summary_table(atlas, top))
    console.print(f"wrote {out_dir / 'atlas.json'} and {out_dir / 'atlas.html'}")


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """While a scan runs, SIGTERM (``kill``) exits through Python's normal unwinding, so temp files are removed
    and the scan lock is released (as for Ctrl-C); the previous handler is restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@app.command("detectors")
def detectors_cmd() -> None:
    """List the registered detectors: name, stage, method and what each one scores."""
    from ..detectors import STAGES, all_detectors

    dets = all_detectors()
    if not dets:
        out_console.print("no detectors are registered")
        return
    table = Table("name", "stage", "default", "method", "what it scores",
                  caption="stages: " + ", ".join(f"{k} = {v}" for k, v in STAGES.items())
                  + "; default: run by a plain scan (the others: --detectors all, or by name)")
    for d in dets:
        table.add_row(d.name, d.stage, "yes" if d.default else "no", d.method, d.summary)
    out_console.print(table)


@app.command("report")
def report_cmd(
    atlas_json: Path = typer.Argument(..., metavar="ATLAS.json", help="an atlas written by `headatlas scan`"),
    out: Path = typer.Option(None, "--out", "-o", help="HTML file to write (default: next to the JSON, .html)"),
    top: int = typer.Option(5, help="heads per type in the summary table"),
) -> None:
    """Re-render the HTML report of a saved atlas and print its summary."""
    from ..atlas import Atlas

    from ..outdir import prepare_out_file

    with user_errors():
        target = prepare_out_file(out if out is not None else atlas_json.with_suffix(".html"))
        atlas = Atlas.load(atlas_json)
        check_count(top, "--top", minimum=0)
        atlas.save_html(target)
    out_console.print(summary_table(atlas, top))
    console.print(f"wrote {target}")
