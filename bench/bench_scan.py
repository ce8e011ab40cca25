"""The whole detector battery vs the plain forward passes over the same prompts; per-detector time and the share
of it spent in forward passes.

How: a forward pre-hook on the model records every batch each detector runs (input ids, attention mask,
KV-cache length) and the wall time spent inside the model's top-level forwards, while ``headatlas.scan`` runs;
then the batches of the statistics phase are replayed through the plain model (no instrumentation, no scoring,
``torch.inference_mode``), in the same order, with a KV cache where the scan used one. The ratio scan time /
replay time is the overhead of the detectors over the floor of their forward passes (permutation nulls and
bootstrap CIs included), target <= 3x. The causal battery runs after every detector's statistics (its own
column): its edited runs are stacked passes whose rows join at later layers, which a replay of the top-level
calls cannot redo, so for the checks only the time inside forwards is reported.

Coverage check: a pre-hook on layer 0's attention counts the query tokens it sees; the recorded
top-level forwards must account for all of them in the statistics phase (a detector that ran layers by hand
would show up as coverage < 100%, and its work would be missing from the replay).

Run: ``python bench/bench_scan.py [--model smollm2-135m] [--detectors a,b|all] [--quick] [--seed 0]``.
Writes the "scan" section of bench/RESULTS.md (``--no-write`` to only print).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import headatlas  # noqa: E402
from collect import machine_line, write_section  # noqa: E402
from headatlas.scan import ScanProgress  # noqa: E402


@dataclass
class Call:
    """One recorded forward: what to feed the plain model to redo it."""

    tag: str
    input_ids: torch.Tensor | None
    inputs_embeds_shape: tuple[int, ...] | None
    attention_mask: torch.Tensor | None
    past_len: int          # tokens already in the KV cache when the call ran (0: no cache / fresh)
    use_cache: bool
    decoder_only: bool     # called on the decoder (no LM head)
    logits_to_keep: Any = None   # generation computes only the last position's logits

    @property
    def tokens(self) -> int:
        shape = self.input_ids.shape if self.input_ids is not None else self.inputs_embeds_shape
        return int(shape[0] * shape[1])


@dataclass
class Recorder:
    """Records top-level forwards (and decoder-only forwards not nested in one), tagged by detector."""

    tag: str = ""
    calls: list[Call] = field(default_factory=list)
    layer0_tokens: dict[str, int] = field(default_factory=dict)
    forward_s: dict[str, float] = field(default_factory=dict)    # tag -> seconds inside top-level forwards
    _depth: int = 0
    _t0: float = 0.0


def _cache_len(cache: Any) -> int:
    if cache is None:
        return 0
    try:
        return int(cache.get_seq_length())
    except Exception:  # legacy tuple caches
        try:
            return int(cache[0][0].shape[-2])
        except Exception:
            return 0


@contextlib.contextmanager
def record_forwards(m: Any) -> Iterator[Recorder]:
    rec = Recorder()
    model = m.model
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None

    def make_pre(decoder_only: bool):
        def pre(module, args, kwargs):
            nested = rec._depth > 0
            rec._depth += 1
            if nested:
                return
            rec._t0 = time.perf_counter()
            ids = kwargs.get("input_ids", args[0] if args else None)
            embeds = kwargs.get("inputs_embeds")
            mask = kwargs.get("attention_mask")
            past = kwargs.get("past_key_values", kwargs.get("cache"))   # the name differs across transformers versions
            rec.calls.append(Call(
                tag=rec.tag,
                input_ids=ids.detach().cpu().clone() if isinstance(ids, torch.Tensor) else None,
                inputs_embeds_shape=tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else None,
                attention_mask=mask.detach().cpu().clone() if isinstance(mask, torch.Tensor) else None,
                past_len=_cache_len(past),
                use_cache=bool(kwargs.get("use_cache")) or past is not None,
                decoder_only=decoder_only,
                logits_to_keep=kwargs.get("logits_to_keep"),
            ))
        return pre

    def post(module, args, kwargs, output):
        rec._depth -= 1
        if rec._depth == 0:
            rec.forward_s[rec.tag] = rec.forward_s.get(rec.tag, 0.0) + time.perf_counter() - rec._t0

    def layer0(module, args, kwargs):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        if isinstance(hidden, torch.Tensor):
            rec.layer0_tokens[rec.tag] = rec.layer0_tokens.get(rec.tag, 0) + int(hidden.shape[0] * hidden.shape[1])

    handles = [model.register_forward_pre_hook(make_pre(False), with_kwargs=True),
               model.register_forward_hook(post, with_kwargs=True, always_call=True),
               m.layout.attention_modules[0].register_forward_pre_hook(layer0, with_kwargs=True)]
    if decoder is not None and decoder is not model:
        handles += [decoder.register_forward_pre_hook(make_pre(True), with_kwargs=True),
                    decoder.register_forward_hook(post, with_kwargs=True, always_call=True)]
    try:
        yield rec
    finally:
        for h in handles:
            h.remove()


class Tagger(ScanProgress):
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        self.stat_s: dict[str, float] = {}
        self.check_s: dict[str, float] = {}

    def start(self, name: str, index: int, total: int) -> None:
        self.rec.tag = name
        print(f"[{index + 1}/{total}] {name} ...", flush=True)

    def finish(self, name: str, seconds: float, status: str) -> None:
        print(f"    {status} in {seconds:.1f} s", flush=True)
        self.stat_s[name] = seconds

    def check_start(self, name: str, index: int, total: int) -> None:
        self.rec.tag = check_tag(name)
        print(f"[check {index + 1}/{total}] {name} ...", flush=True)

    def check_finish(self, name: str, seconds: float, status: str) -> None:
        print(f"    check {status} in {seconds:.1f} s", flush=True)
        self.check_s[name] = seconds


def check_tag(name: str) -> str:
    return f"{name}:causal"


def _cache_kwarg(model: Any) -> str:
    import inspect

    params = inspect.signature(model.forward).parameters
    return "past_key_values" if "past_key_values" in params else "cache"


def replay(m: Any, calls: list[Call]) -> tuple[float, int]:
    """Run the recorded batches through the plain model; returns (seconds, calls not replayable)."""
    from transformers import DynamicCache

    model = m.model
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    cache_kw = _cache_kwarg(model)
    cache, unreplayable = None, 0
    device = m.device
    t0 = time.perf_counter()
    with torch.inference_mode():
        for c in calls:
            kw: dict[str, Any] = {}
            if c.input_ids is not None:
                kw["input_ids"] = c.input_ids.to(device)
            elif c.inputs_embeds_shape is not None:
                kw["inputs_embeds"] = torch.zeros(c.inputs_embeds_shape, dtype=m.dtype, device=device)
            else:
                unreplayable += 1
                continue
            if c.attention_mask is not None:
                kw["attention_mask"] = c.attention_mask.to(device)
            if c.use_cache:
                if c.past_len == 0 or cache is None or _cache_len(cache) != c.past_len:
                    if c.past_len != 0:
                        unreplayable += 1   # a cache we cannot rebuild: run without it
                        cache = None
                        kw["use_cache"] = False
                    else:
                        cache = DynamicCache()
                if cache is not None:
                    kw[cache_kw], kw["use_cache"] = cache, True
            else:
                kw["use_cache"] = False
            if c.logits_to_keep is not None and not c.decoder_only:
                kw["logits_to_keep"] = c.logits_to_keep
            (decoder if c.decoder_only else model)(**kw)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, unreplayable


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--detectors", default=None, help="comma-separated or 'all' (default: the default set)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (bench/gpu.sh)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--section", default="scan", help="RESULTS.md section to write (e.g. 'battery' for --detectors all)")
    ap.add_argument("--title", default="the whole detector battery vs its plain forward passes")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    m = headatlas.load(args.model, device=args.device)
    load0 = os.getloadavg()[0]
    with record_forwards(m) as rec:
        tagger = Tagger(rec)
        t0 = time.perf_counter()
        atlas = headatlas.scan(m, args.detectors, seed=args.seed, quick=args.quick, batch_size=args.batch_size,
                               progress=tagger, resume=False)
        total_scan = time.perf_counter() - t0
    load1 = os.getloadavg()[0]
    rows, tot = [], {"calls": 0, "tokens": 0, "plain": 0.0, "bad": 0, "stat": 0.0, "check": 0.0, "fwd": 0.0}
    for name in atlas.detectors:
        calls = [c for c in rec.calls if c.tag == name]
        plain, bad = replay(m, calls)
        tokens = sum(c.tokens for c in calls)
        seen = rec.layer0_tokens.get(name, 0)
        covered = tokens / seen if seen else float("nan")
        stat_s, check_s = tagger.stat_s.get(name, 0.0), tagger.check_s.get(name, 0.0)
        fwd = rec.forward_s.get(name, 0.0) + rec.forward_s.get(check_tag(name), 0.0)
        r = atlas.result(name)
        status = "skipped" if r.skipped else ("distributed" if r.details.get("distributed") else
                                              f"{len(r.labelled)} labelled")
        rows.append((name, status, len(calls), tokens, covered, stat_s, plain, check_s, fwd))
        for k, v in (("calls", len(calls)), ("tokens", tokens), ("plain", plain), ("bad", bad), ("stat", stat_s),
                     ("check", check_s), ("fwd", fwd)):
            tot[k] += v
    lines = [
        f"## {args.section}: {args.title}",
        "",
        f"Model `{args.model}` ({m.info.n_layers} x {m.info.n_heads} heads), float32, "
        + (f"CUDA: {torch.cuda.get_device_name(m.device)}; " if m.device.type == "cuda" else f"CPU: {machine_line()}; ")
        + f"load "
        f"average {load0:.1f} before, {load1:.1f} after (a shared machine: compare ratios, not seconds).",
        f"`python bench/bench_scan.py --detectors {args.detectors or '(default)'}{' --quick' if args.quick else ''} "
        f"--seed {args.seed} --batch-size {args.batch_size}`; wall time of the whole scan {total_scan:.0f} s. "
        "Statistics: every forward the detector ran was recorded and replayed through the plain model (no "
        "instrumentation, no scoring, inference mode) in the same order; ratio = statistics time / replay time "
        "(permutation nulls and bootstrap CIs included; target <= 3x); coverage = recorded tokens / tokens seen by "
        "layer 0's attention. Check: the causal check's seconds (phase 2 of the scan). Forwards: the share of the "
        "detector's seconds (statistics + check) spent inside the model's forward passes; the rest is statistics, "
        "data and Python.",
        "",
        "| detector | result | forwards | tokens | coverage | statistics s | plain s | ratio | check s | in forwards |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, status, n, tok, cov, st, p, ch, fwd in rows:
        cov_s = "-" if math.isnan(cov) else f"{cov:.0%}"
        r_s = f"{st / p:.2f}x" if n and p > 0 else "- (shared data)"
        share = f"{fwd / (st + ch):.0%}" if st + ch > 0 else "-"
        lines.append(f"| {name} | {status} | {n} | {tok:,} | {cov_s} | {st:.1f} | {p:.1f} | {r_s} | {ch:.1f} | {share} |")
    seen_all = sum(v for k, v in rec.layer0_tokens.items() if not k.endswith(":causal"))
    cov_all = f"{tot['tokens'] / seen_all:.0%}" if seen_all else "-"
    ratio = tot["stat"] / tot["plain"] if tot["plain"] > 0 else float("nan")
    share = tot["fwd"] / (tot["stat"] + tot["check"]) if tot["stat"] + tot["check"] > 0 else float("nan")
    lines += [f"| **all** | | {tot['calls']} | {tot['tokens']:,} | {cov_all} | {tot['stat']:.1f} | {tot['plain']:.1f} | "
              f"**{ratio:.2f}x** | {tot['check']:.1f} | {share:.0%} |", "",
              "A detector with no forwards of its own reuses data another detector computed earlier in the scan"
              " (its time is then only its scoring).", ""]
    if tot["bad"]:
        lines.append(f"{tot['bad']} recorded call(s) could not be replayed exactly (KV cache or embeddings); see bench_scan.py.")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(args.section, text)


if __name__ == "__main__":
    main()
