"""``headatlas patch``, ``headatlas ablate`` and ``headatlas steer``: the causal methods from the shell."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..models import DEFAULT_MODEL
from . import app
from .common import console, load_model, user_errors

MODEL_ARG = typer.Argument(DEFAULT_MODEL, help="bundled name, HF id, folder or .gguf file")


def write_heatmap(values, path: Path, title: str, colorbar: str) -> Path:
    """A layer x head heatmap as a self-contained HTML file (plotly)."""
    import plotly.graph_objects as go

    from ..outdir import atomic_write_text

    L, H = values.shape
    fig = go.Figure(go.Heatmap(z=values, x=[f"H{h}" for h in range(H)], y=[f"L{l}" for l in range(L)],
                               colorscale="RdBu", zmid=0, colorbar={"title": colorbar},
                               hovertemplate="L%{y} %{x}: %{z:.4f}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="head", yaxis_title="layer", height=max(400, 22 * L + 150),
                      yaxis={"autorange": "reversed"})
    html = fig.to_html(include_plotlyjs=True, config={"showSendToCloud": False, "displaylogo": False})
    return atomic_write_text(path, html, what="heatmap")


@app.command("patch")
def patch_cmd(model: str = MODEL_ARG,
              clean: list[str] = typer.Option(..., help="clean prompt (repeat for a batch)"),
              corrupted: list[str] = typer.Option(..., help="corrupted prompt, same token length (repeat for a batch)"),
              answer: list[str] = typer.Option(..., help="answer token, e.g. ' Mary' (once, or once per prompt)"),
              wrong: list[str] = typer.Option(..., help="wrong-answer token, e.g. ' John'"),
              method: str = typer.Option("exact", help="exact or attribution"),
              direction: str = typer.Option("denoise", help="denoise (clean z into the corrupted run) or noise"),
              normalize: bool = typer.Option(True, help="report (patched - corrupted) / (clean - corrupted)"),
              top: int = typer.Option(10, help="rows of the top-heads table"),
              out: Path = typer.Option(Path("headatlas-out"), help="folder for patching.html and patching.json"),
              device: Optional[str] = typer.Option(None), dtype: Optional[str] = typer.Option(None)) -> None:
    """Patch every head in turn (activation or attribution patching); print the top heads, write a heatmap."""
    from ..checks import check_choice, check_count
    from ..methods import patching_map
    from ..outdir import atomic_write_text, prepare_out

    with user_errors():
        check_choice(method, "--method", ("exact", "attribution"))
        check_choice(direction, "--direction", ("denoise", "noise"))
        check_count(top, "--top")
        out = prepare_out(out)  # before the model loads: a bad --out fails at once
        m = load_model(model, device, dtype)
        with Progress(TextColumn("patching"), BarColumn(), TextColumn("{task.completed}/{task.total} runs"),
                      TimeElapsedColumn(), console=console) as bar:
            task = bar.add_task("patch", total=None)
            pm = patching_map(m, clean, corrupted, answer if len(answer) > 1 else answer[0],
                              wrong if len(wrong) > 1 else wrong[0], method=method, direction=direction,
                              normalize=normalize, progress=lambda done, total: bar.update(task, completed=done, total=total))
    label = "normalised effect" if normalize else "logit diff"
    table = Table("head", label, title=f"top heads ({method} {direction}, {pm.n_prompts} prompt(s), {pm.seconds:.1f} s)")
    for layer, head, v in pm.top(top):
        table.add_row(f"L{layer}H{head}", f"{v:+.4f}")
    console.print(f"clean logit diff {pm.clean_metric:+.4f}, corrupted {pm.corrupted_metric:+.4f}")
    console.print(table)
    with user_errors():
        html = write_heatmap(pm.values, out / "patching.html", f"{model}: {method} patching ({direction})", label)
        atomic_write_text(out / "patching.json", json.dumps({
            "model": model, "method": method, "direction": direction, "normalized": normalize, "metric": pm.metric,
            "clean_metric": pm.clean_metric, "corrupted_metric": pm.corrupted_metric, "clean": clean,
            "corrupted": corrupted, "answer": answer, "wrong": wrong,
            "values": [[v if math.isfinite(v) else None for v in row] for row in pm.values.tolist()]}, indent=1,
            allow_nan=False))
    console.print(f"wrote {html} and {out / 'patching.json'}")


@app.command("ablate")
def ablate_cmd(model: str = MODEL_ARG,
               heads: str = typer.Option(..., help="heads as LAYER.HEAD list, e.g. '9.6,10.0' or 'L9H6 L10H0'"),
               prompt: list[str] = typer.Option(..., help="prompt (repeat for a batch of equal token length)"),
               kind: str = typer.Option("zero", help="zero, mean or resample"),
               reference: list[str] = typer.Option([], help="reference prompts for mean / resample"),
               answer: Optional[str] = typer.Option(None, help="with --wrong: also report the logit difference"),
               wrong: Optional[str] = typer.Option(None),
               seed: int = typer.Option(0), device: Optional[str] = typer.Option(None),
               dtype: Optional[str] = typer.Option(None)) -> None:
    """Ablate heads; print the prompts' loss (and a logit difference) before and after."""
    from ..checks import check_choice, check_seed
    from ..errors import InputError
    from ..methods import ablation_effect, logit_diff
    from ..methods.inputs import encode, parse_heads, token_ids

    with user_errors():
        hs = parse_heads(heads)  # before the model loads: bad flags fail at once
        check_choice(kind, "--kind", ("zero", "mean", "resample"))
        check_seed(seed, "--seed")
        if (answer is None) != (wrong is None):
            raise InputError("give both --answer and --wrong (their logit difference is reported), or neither")
        m = load_model(model, device, dtype)
        ref = reference or None
        effects = [ablation_effect(m, hs, prompt, kind=kind, reference=ref, seed=seed)]
        if answer is not None and wrong is not None:
            n = encode(m, prompt).shape[0]
            met = logit_diff(token_ids(m, answer, n), token_ids(m, wrong, n, "wrong answer"))
            effects.append(ablation_effect(m, hs, prompt, met, kind=kind, reference=ref, seed=seed))
    table = Table("metric", "base", "ablated", "change", title=f"{kind} ablation of {', '.join(f'L{a}H{b}' for a, b in hs)}")
    for e in effects:
        table.add_row(e.metric, f"{e.base:.4f}", f"{e.ablated:.4f}", f"{e.change:+.4f}")
    console.print(table)


@app.command("steer")
def steer_cmd(model: str = MODEL_ARG,
              heads: str = typer.Option(..., help="heads as LAYER.HEAD list, e.g. '9.6,10.0'"),
              positive: list[str] = typer.Option(..., help="prompts of the behaviour to add (repeatable)"),
              negative: list[str] = typer.Option(..., help="prompts of the behaviour to subtract (repeatable)"),
              prompt: str = typer.Option(..., help="prompt to continue"),
              alpha: float = typer.Option(4.0, help="strength; the run also shows -alpha and 0"),
              max_new_tokens: int = typer.Option(20), pool: str = typer.Option("last", help="last or mean"),
              device: Optional[str] = typer.Option(None), dtype: Optional[str] = typer.Option(None)) -> None:
    """Steer heads along (mean z of positive prompts - mean z of negative prompts); print generations."""
    from ..checks import check_choice, check_count, check_finite
    from ..methods import head_directions, steer_generate
    from ..methods.inputs import parse_heads

    with user_errors():
        hs = parse_heads(heads)  # before the model loads: bad flags fail at once
        check_finite(alpha, "--alpha")
        check_count(max_new_tokens, "--max-new-tokens")
        check_choice(pool, "--pool", ("last", "mean"))
        m = load_model(model, device, dtype)
        dirs = head_directions(m, positive, negative, pool=pool)  # type: ignore[arg-type]
        table = Table("alpha", "continuation", title=f"steering {', '.join(f'L{a}H{b}' for a, b in hs)}")
        for a in (0.0, alpha, -alpha):
            table.add_row(f"{a:+g}", steer_generate(m, prompt, dirs, hs, a, max_new_tokens=max_new_tokens))
    console.print(table)
