"""``headatlas probe``: per-head linear probes (held-out accuracy, shuffled-label null, p, q) from the shell."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from ..models import DEFAULT_MODEL
from . import app
from .common import console, load_model, safe, user_errors


@app.command("probe")
def probe_cmd(model: str = typer.Argument(DEFAULT_MODEL, help="bundled name, HF id, folder or .gguf file"),
              data: Optional[Path] = typer.Option(None, help="JSONL {text, label 0|1, group} or TruthfulQA CSV/JSONL; "
                                                             "default: the package's true/false statements"),
              position: int = typer.Option(-1, help="token probed in each text (-1: the last token)"),
              folds: int = typer.Option(5, help="grouped cross-validation folds"),
              n_perm: Optional[int] = typer.Option(None, help="shuffled-label permutations (default 9999 ridge, 100 logistic)"),
              method: str = typer.Option("ridge", help="ridge (closed form, fast) or logistic (scikit-learn, slow)"),
              top: int = typer.Option(10, help="rows of the top-heads table"),
              seed: int = typer.Option(0),
              out: Path = typer.Option(Path("headatlas-out"), help="folder for probe.json, probe.csv, probe.html"),
              device: Optional[str] = typer.Option(None), dtype: Optional[str] = typer.Option(None)) -> None:
    """Probe every head's output for a binary label; print the top heads and write the per-head table."""
    from ..checks import check_choice, check_count, check_seed
    from ..methods.probing import load_probe_data, probe
    from ..outdir import atomic_write_text, prepare_out
    from ..methods.arguments import MAX_FOLDS, MAX_PERM
    from .methods import write_heatmap

    with user_errors():
        check_choice(method, "--method", ("ridge", "logistic"))
        check_count(top, "--top")
        check_count(folds, "--folds", minimum=2, maximum=MAX_FOLDS)
        check_seed(seed, "--seed")
        if n_perm is not None:
            check_count(n_perm, "--n-perm", maximum=MAX_PERM[method])
        dataset = load_probe_data(data) if data is not None else None   # bad files fail before the model loads
        out = prepare_out(out)
        m = load_model(model, device, dtype)
        with Progress(TextColumn("capturing z"), BarColumn(), TextColumn("{task.completed}/{task.total} texts"),
                      TimeElapsedColumn(), console=console) as bar:
            task = bar.add_task("probe", total=None)
            res = probe(m, dataset, position, n_folds=folds, n_perm=n_perm, method=method, seed=seed,  # type: ignore[arg-type]
                        progress=lambda done, total: bar.update(task, completed=done, total=total))
    table = Table("head", "accuracy", "null", "p", "q",
                  title=Text(f"top heads ({res.n_items} items, {res.n_groups} groups, {res.n_folds}-fold grouped CV, "
                        f"{res.n_perm} permutations)"))
    for layer, head in res.top(min(top, res.accuracy.size)):
        table.add_row(f"L{layer}H{head}", f"{res.accuracy[layer, head]:.3f}",
                      f"{res.null_mean[layer, head]:.3f}±{res.null_std[layer, head]:.3f}",
                      f"{res.p[layer, head]:.4f}", f"{res.q[layer, head]:.4f}")
    console.print(table)
    console.print(f"{int(((res.q <= 0.05) & (res.effect > 0)).sum())} heads with q <= 0.05")
    with user_errors():
        df = res.to_dataframe()
        atomic_write_text(out / "probe.csv", df.to_csv(index=False), what="probe table")
        payload = res.to_json()
        payload["model"] = model
        for row in payload["heads"]:
            for k, v in row.items():
                if isinstance(v, float) and not math.isfinite(v):
                    row[k] = None
        atomic_write_text(out / "probe.json", json.dumps(payload, indent=1, allow_nan=False), what="probe json")
        html = write_heatmap(res.effect, out / "probe.html", f"{model}: probe accuracy minus null", "accuracy - null")
    console.print(f"wrote {safe(out / 'probe.csv')}, {safe(out / 'probe.json')} and {safe(html)}")
