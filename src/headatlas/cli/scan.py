"""``headatlas scan MODEL``, ``headatlas detectors`` and ``headatlas report ATLAS.json``."""

from __future__ import annotations

import contextlib
import math
import signal
import threading
from pathlib import Path
from typing import Any, Iterator, List

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich import box
from rich.table import Table
from rich.text import Text

from ..checks import check_count
from ..detectors.options import describe_default, parse_cli_options
from ..models import DEFAULT_MODEL
from ..scan import ScanProgress
from . import app
from .common import console, load_model, safe, terminal_text, user_errors

out_console = Console()


class RichScanProgress(ScanProgress):
    """One rich progress bar per detector (its ``ScanConfig.progress`` ticks drive the bar); the causal battery,
    which runs after every detector's statistics, adds its status to the same line."""

    def __init__(self, progress: Progress, names: list[str]) -> None:
        self.progress = progress
        self.tasks = {n: progress.add_task(n, total=None, start=False) for n in names}
        self.done: dict[str, str] = {}

    def start(self, name: str, index: int, total: int) -> None:
        self.progress.start_task(self.tasks[name])
        self.progress.update(self.tasks[name], description=f"[bold]{safe(name)}[/] ({index + 1}/{total})")

    def update(self, name: str, done: int, total: int) -> None:
        self.progress.update(self.tasks[name], completed=done, total=max(total, 1))

    def finish(self, name: str, seconds: float, status: str) -> None:
        task = self.tasks[name]
        total = self.progress.tasks[task].total or 1
        colour = "green" if status == "done" else ("cyan" if status == "resumed" else "yellow")
        short = status if len(status) < 60 else status[:57] + "..."
        self.progress.update(task, total=total, completed=total,
                             description=f"[bold]{safe(name)}[/] [{colour}]{safe(short)}[/] ({seconds:.1f} s)")
        self.progress.stop_task(task)
        self.done[name] = f"[{colour}]{short}[/] ({seconds:.1f} s)"

    def check_start(self, name: str, index: int, total: int) -> None:
        task = self.tasks[name]
        self.progress.update(task, description=f"[bold]{name}[/] {self.done.get(name, '')}; causal check "
                                               f"({index + 1}/{total}) ...")

    def check_finish(self, name: str, seconds: float, status: str) -> None:
        colour = "green" if status == "done" else "cyan"
        self.progress.update(self.tasks[name], description=f"[bold]{name}[/] {self.done.get(name, '')}; causal check "
                                                           f"[{colour}]{status}[/] ({seconds:.1f} s)")

    def specificity_update(self, done: int, total: int, what: str) -> None:
        if "specificity" not in self.tasks:
            self.tasks["specificity"] = self.progress.add_task("specificity", total=max(total, 1))
        label = "done" if done >= total else f"{safe(what)} ..."
        self.progress.update(self.tasks["specificity"], completed=done, total=max(total, 1),
                             description=f"[bold]specificity matrix[/] (each confirmed set on every metric): {label}")


def default_out(model: str) -> Path:
    """``./atlas-<model>`` where ``<model>`` is the short name, or the last part of a path/id."""
    stem = Path(model.rstrip("/\\")).name or "model"
    if stem.lower().endswith(".gguf"):
        stem = stem[: -len(".gguf")]
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in stem)
    return Path(f"atlas-{safe}")


def summary_table(atlas, top: int) -> Table:
    """One line per detector (never wrapped: a long cell ends in "..."; the report holds the details): stage,
    labels (how many confirmed), the top labelled heads with their scores, and the causal check. Every string from
    the atlas is printed as written (no rich markup, no terminal control characters)."""
    title = Text(terminal_text(f"headatlas: {atlas.model_name}"), no_wrap=True, overflow="ellipsis")
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, expand=True, pad_edge=False,
                  caption="details per head: the HTML report", caption_justify="left")
    width = max([len(terminal_text(n)) for n in atlas.detectors] + [8])
    table.add_column("detector", no_wrap=True, width=min(width, 20), overflow="ellipsis")
    table.add_column("stage", no_wrap=True, width=5)
    table.add_column("labels", no_wrap=True, width=11, overflow="ellipsis")
    table.add_column("top heads (score)", no_wrap=True, overflow="ellipsis", ratio=3, min_width=8)
    table.add_column("causal check", no_wrap=True, overflow="ellipsis", ratio=2, min_width=8)
    for name in atlas.detectors:
        table.add_row(*_summary_row(atlas, name, top))
    return table


def _summary_row(atlas, name: str, top: int) -> list[Text]:
    r = atlas.result(name)
    cells = [Text(terminal_text(name), style="bold"), Text(terminal_text(atlas.meta[name].stage))]
    if r.skipped:
        return cells + [Text("skipped", style="yellow"), Text(terminal_text(r.skipped), style="dim"), Text("")]
    dist = atlas.distributed().get(name)
    if dist:
        return cells + [Text("distributed", style="cyan"),
                        Text(f"{dist['n_pass']} of {dist['n_heads']} heads pass the statistic (no labels)", style="dim"),
                        _causal_cell(r.causal)]
    tops = atlas.top_heads(name, top)
    if not tops:
        hint = terminal_text(atlas.best_head_hint(name).strip().removeprefix("(").removesuffix(")"))
        return cells + [Text("none found", style="magenta"), Text(hint, style="dim"), _causal_cell(r.causal)]
    counts = atlas.status_counts(name)
    labels = f"{len(r.labelled)}" + (f" ({counts['confirmed']} conf)" if counts.get("confirmed") else "")
    heads = ", ".join(f"{e.name} {e.score:.3g}" for e in tops)
    more = len(r.labelled) - len(tops)
    return cells + [Text(labels), Text(heads + (f" +{more}" if more > 0 else "")), _causal_cell(r.causal)]


def _causal_cell(c) -> Text:
    if c is None:
        return Text("not run", style="dim")
    if not c.ran:
        return Text("no metric", style="dim")
    word, colour = ("confirmed", "green") if c.passed else ("unconfirmed", "yellow")
    return Text(f"{word} q {_num(c.q_value)} ({c.effect:+.3g} vs {c.random_median:+.3g})", style=colour)


def _num(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.2g}"


@app.command("scan")
def scan_cmd(
    model: str = typer.Argument(DEFAULT_MODEL, help="bundled name, HF id, model folder or .gguf file"),
    detectors: str = typer.Option(None, "--detectors", "-d", help="comma-separated detector names, or 'all' (default: the default set, ~6 min on a 135M model on 2 CPU cores)"),
    out: Path = typer.Option(None, "--out", "-o", help="output folder (default ./atlas-<model>)"),
    seed: int = typer.Option(0, help="seed of every prompt generator"),
    device: str = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: cuda when available)"),
    dtype: str = typer.Option(None, help="float32 (default), bfloat16, float16"),
    quick: bool = typer.Option(False, "--quick", help="smallest data that still gives a meaningful null"),
    batch_size: int = typer.Option(8, "--batch-size", help="rows per forward pass"),
    n_prompts: int = typer.Option(None, "--n-prompts", help="prompts per detector (default: each detector's own)"),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="reuse finished detectors from OUT/partial"),
    top: int = typer.Option(5, help="heads per type in the summary table"),
    option: List[str] = typer.Option(None, "--option", "-O", metavar="NAME=VALUE",
                                     help="a detector option, e.g. -O window=4 (repeatable; `headatlas detectors "
                                          "--options` lists them)"),
    specificity: bool = typer.Option(None, "--specificity/--no-specificity",
                                     help="after the causal checks, ablate every confirmed set and measure every "
                                          "metric family (the specificity matrix; default: on with --detectors all)"),
) -> None:
    """Scan every head of MODEL with the registered detectors; write OUT/atlas.json and OUT/atlas.html."""
    from ..checks import check_count, check_seed
    from ..outdir import prepare_out, scan_lock
    from ..scan import resolve_detectors, scan

    with user_errors(), contextlib.ExitStack() as stack:
        names = resolve_detectors(detectors)
        options = cli_options(option, names)
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
        console.print(f"scanning [bold]{safe(m.info.name)}[/] ({m.info.n_layers} layers x {m.info.n_heads} heads) "
                      f"with {len(names)} detector(s), seed {seed}{', quick' if quick else ''} -> {safe(out_dir)}")
        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        try:
            with Progress(*columns, console=console, transient=False) as bar:
                atlas = scan(m, names, seed=seed, quick=quick, out=out_dir, resume=resume, options=options,
                             progress=RichScanProgress(bar, names), batch_size=batch_size, n_prompts=n_prompts,
                             specificity=(detectors or "").strip() == "all" if specificity is None else specificity)
        except KeyboardInterrupt:
            console.print(f"[yellow]interrupted[/]: finished detectors are kept in {out_dir / 'partial'}; "
                          "run the same command again to resume")
            raise typer.Exit(code=130) from None
    out_console.print(summary_table(atlas, top))
    if atlas.specificity_matrix is not None:
        from .specificity import print_matrix

        print_matrix(atlas.specificity_matrix)
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


def cli_options(texts: list[str] | None, names: list[str]) -> dict[str, Any]:
    """``--option NAME=VALUE`` items, parsed by their declared kinds and checked against the detectors that will
    run (``names`` and what they require), before any model loads."""
    from ..detectors import base

    return base.check_options(parse_cli_options(texts, base.all_detectors()), base.scan_order(names))


@app.command("detectors")
def detectors_cmd(options: bool = typer.Option(False, "--options", help="list every detector's options (name, "
                                                                         "kind and range, default, what it sets)")) -> None:
    """List the registered detectors: name, stage, evidence, metric family, method and what each one scores."""
    from ..detectors import STAGES, all_detectors

    dets = all_detectors()
    if not dets:
        out_console.print("no detectors are registered")
        return
    if options:
        out_console.print(options_table(dets))
        return
    table = Table("name", "stage", "default", "evidence", "metric family", "method", "what it scores",
                  caption="stages: " + ", ".join(f"{k} = {v}" for k, v in STAGES.items())
                  + "; default: run by a plain scan (the others: --detectors all, or by name); metric family: what "
                  "the causal check measures ('-': attention-defined); --options lists the detectors' options")
    for d in dets:
        table.add_row(*(Text(terminal_text(x)) for x in (d.name, d.stage, "yes" if d.default else "no", d.evidence,
                                                          d.metric or "-", d.method, d.summary)))
    out_console.print(table)


def options_table(dets) -> Table:
    """One row per (detector, option): the value ``scan(options=...)`` / ``--option NAME=VALUE`` takes."""
    table = Table("detector", "option", "takes", "default", "what it sets",
                  caption="scan(options={name: value}) or headatlas scan --option NAME=VALUE; an option shared by "
                          "several detectors means the same for each")
    for d in dets:
        for o in d.options:
            table.add_row(*(Text(terminal_text(x)) for x in (d.name, o.name, o.describe(), describe_default(o),
                                                              o.help)))
    if not table.row_count:
        table.add_row("-", "-", "-", "-", "no registered detector declares an option")
    return table


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
