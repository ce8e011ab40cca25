"""``headatlas sweep SPEC [SPEC ...]``: scan many models x seeds as Ray tasks (see :mod:`headatlas.sweep`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import typer

from ..errors import InputError
from . import app
from .common import console, quiet_transformers, safe, user_errors


def parse_max_memory(text: str | None) -> dict[int | str, str] | None:
    """``"0=70GiB,1=70GiB,cpu=200GiB"`` -> ``{0: "70GiB", 1: "70GiB", "cpu": "200GiB"}``."""
    if text is None:
        return None
    out: dict[int | str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, size = part.partition("=")
        if not sep or not key.strip() or not size.strip():
            raise InputError(f"--max-memory {text!r}: write device=size pairs such as 0=70GiB,1=70GiB,cpu=200GiB")
        k = key.strip()
        out[int(k) if k.isdigit() else k] = size.strip()
    return out


def parse_device_map(text: str | None) -> str | dict[str, Any] | None:
    """``auto`` (or another plan name) as is; a JSON object (``{"model.layers.0": 0, "": "cpu"}``) as a dict."""
    if text is None or not text.strip().startswith("{"):
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"--device-map is not valid JSON ({exc.msg}); use auto or a JSON object of module -> device") from None
    return value


@app.command("sweep")
def sweep_cmd(
    specs: List[str] = typer.Argument(..., help="models: bundled names, HF ids (id@revision), folders, .gguf files, "
                                                "or folders of checkpoints"),
    out: Path = typer.Option(..., "--out", "-o", help="sweep folder: <model>-s<seed>/, sweep.csv, sweep.json, sweep.html"),
    detectors: str = typer.Option(None, "--detectors", "-d", help="comma-separated detector names (default: all)"),
    seeds: str = typer.Option("0", "--seeds", help="seeds, e.g. 0,1,2 or 0-3"),
    address: str = typer.Option(None, "--address", help="join a Ray cluster: auto or ray://host:10001 "
                                                        "(default: start a local one)"),
    num_cpus: int = typer.Option(None, "--num-cpus", help="CPUs of the local cluster (default: all)"),
    cpus_per_task: float = typer.Option(1.0, "--cpus-per-task", help="Ray CPUs each (model, seed) task declares"),
    gpus_per_task: float = typer.Option(None, "--gpus-per-task", help="Ray GPUs each task declares "
                                                                      "(default: 1 if the cluster has GPUs, else 0)"),
    device: str = typer.Option(None, help="device each task loads its model on (default: cuda when available)"),
    dtype: str = typer.Option(None, help="float32 (default), bfloat16, float16"),
    device_map: str = typer.Option(None, "--device-map", help="auto, balanced, sequential, or a JSON module->device map "
                                                              "(models larger than one device)"),
    max_memory: str = typer.Option(None, "--max-memory", help="with --device-map: e.g. 0=70GiB,1=70GiB,cpu=200GiB"),
    offload_folder: Path = typer.Option(None, "--offload-folder", help="with --device-map: where 'disk' weights go"),
    quick: bool = typer.Option(False, "--quick", help="smallest data that still gives a meaningful null"),
    batch_size: int = typer.Option(8, "--batch-size", help="rows per forward pass"),
    n_prompts: Optional[int] = typer.Option(None, "--n-prompts", help="prompts per detector (default: each detector's own)"),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="reuse finished atlases and OUT/*/partial"),
) -> None:
    """Scan every SPEC with every seed as Ray tasks; write OUT/sweep.csv, OUT/sweep.json and OUT/sweep.html."""
    from ..sweep import expand_specs, parse_seeds, sweep

    def report(task: dict[str, Any]) -> None:
        what = safe(f"{task['model']} seed {task['seed']}")
        if task["status"] == "failed":
            console.print(f"[bold red]failed[/] {what}: {safe(task['error'])}", highlight=False)
        else:
            seconds = f" ({task['seconds']:.1f} s)" if task.get("seconds") else ""
            colour = "green" if task["status"] == "done" else "cyan"
            console.print(f"[{colour}]{safe(task['status'])}[/] {what}{seconds}", highlight=False)

    with user_errors():
        models = expand_specs(specs)
        n = len(models) * len(parse_seeds(seeds))
        quiet_transformers()
        where = address or "a local Ray cluster"
        console.print(f"sweeping {len(models)} model(s) x {len(parse_seeds(seeds))} seed(s) = {n} task(s) on {safe(where)} "
                      f"-> {safe(out)}", highlight=False)
        result = sweep(specs, detectors, out=out, seeds=seeds, address=address, num_cpus=num_cpus,
                       cpus_per_task=cpus_per_task, gpus_per_task=gpus_per_task, quick=quick, batch_size=batch_size,
                       n_prompts=n_prompts, device=device, dtype=dtype, device_map=parse_device_map(device_map),
                       max_memory=parse_max_memory(max_memory), offload_folder=offload_folder, resume=resume,
                       progress=report)
    failed = result.failed
    console.print(f"wrote {safe(result.out / 'sweep.csv')} ({len(result.table)} rows), sweep.json and sweep.html; "
                  f"{len(result.tasks) - len(failed)} of {len(result.tasks)} task(s) finished", highlight=False)
    if failed:
        console.print(f"[bold red]{len(failed)} task(s) failed[/]; see {safe(result.out / 'sweep.json')} "
                      "(error, traceback)", highlight=False)
        raise typer.Exit(code=1)
