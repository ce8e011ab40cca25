"""Causal head gating: headatlas vs the paper's package (`nam-causal-head-gating` 0.1.0), same fits, same gates.

    python bench/bench_gating_peer.py                   # writes bench/results/gating_peer.md (+ bench/RESULTS.md)
    python bench/bench_gating_peer.py --device cuda     # on a GPU (bench/gpu.sh): gating_peer-cuda.md

Matched settings (the gating detector's): smollm2-135m, 2 prompts of ``[BOS] + 10 + 10`` random tokens (loss on
the second block), 2 seeds (gate vectors), 15 unregularised + 30 G- + 30 G+ Adam steps, lr 0.25 in every
stage, lam 0.01 per head, the same seeded starting logits (written into the peer's ``mask_logits``), no
gradient clipping and no learning-rate schedule in the peer (its defaults clip at norm 1; Adam is otherwise
invariant to the peer's mean-instead-of-sum scaling, so its ``l1_weight`` is ``lam * n_layers * n_heads``).
Interleaved rounds (A B C D A B C D ...), medians; each time is the whole fit of every stage and seed:

- headatlas ``gate(..., batch_fits=True)``: the seeds, then every seed's G- and G+, as batch rows of one
  forward per step (one gate vector per row), the loss unembedded at the scored positions only, float32;
- headatlas ``gate(..., batch_fits=False)``: one fit after another (before issue 21);
- the peer's ``CHGTrainer.fit`` as it ships: all seeds in one batch, stages one after another, every
  position unembedded, under ``torch.amp.autocast`` (bfloat16 matrix products on a CPU);
- the same with autocast off (float32, the matched precision).

Agreement: Spearman of the seed-mean G- and G+ of headatlas against the peer's; the peer names its G+ stage
"positive"/"necessary" and its G- stage "negative"/"sufficient" (see docs/gating.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from collect import interleaved, machine_line, write_section  # noqa: E402

import headatlas  # noqa: E402
from headatlas.methods.gating import INIT_LOGIT, INIT_NOISE, gate  # noqa: E402
from headatlas.tasks.repeats import repeated_tokens  # noqa: E402

MODEL = "smollm2-135m"


def starts(L: int, H: int, seed: int, n_seeds: int) -> torch.Tensor:
    """The starting logits headatlas's ``gate`` draws for each seed."""
    return torch.stack([INIT_LOGIT + INIT_NOISE * torch.randn(L, H, generator=torch.Generator().manual_seed(
        seed * 1000 + s)) for s in range(n_seeds)])


def peer_fit(model, tokenizer, ids: torch.Tensor, targets: torch.Tensor, start: torch.Tensor, *, lam: float, lr: float,
             init_steps: int, steps: int, autocast: bool) -> dict[str, np.ndarray]:
    """The peer's final masks ``[n_seeds, L, H]``: ``{"unregularized", "necessary" (its "positive" stage: G+), "sufficient" (its "negative" stage: G-)}``."""
    from causal_head_gating.core.trainer import CHGTrainer
    from causal_head_gating.data.datasets import MaskedSequenceDataset

    L, H = start.shape[1:]
    data = MaskedSequenceDataset(pad_token_id=-1, input_ids=ids, loss_masks=targets)
    trainer = CHGTrainer(model, data, num_masks=start.shape[0], batch_size=ids.shape[0], l1_weight=lam * L * H,
                         lr=lr, lr_reg=lr, grad_norm=None)
    if not autocast:   # autocast for the other device type leaves this device's products in float32
        trainer._device_type = "cpu" if trainer._device_type == "cuda" else "cuda"
    with torch.no_grad():
        trainer.mask_logits.copy_(start.to(trainer.mask_logits.device))
    for _ in trainer.fit(num_updates=init_steps, num_reg_updates=steps, verbose=False):
        pass
    return {k: v.double().numpy() for k, v in trainer.get_final_masks().items()}


def frozen_copy(device: str):
    """A fresh copy of the model with every parameter frozen (as the peer's CHGAnalyzer sets it up)."""
    m = headatlas.load(MODEL, device=device)
    m.model.eval()
    for p in m.model.parameters():
        p.requires_grad_(False)
    return m


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--block", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--init-steps", type=int, default=15)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--lam", type=float, default=0.01)
    ap.add_argument("--lr", type=float, default=0.25)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    m = headatlas.load(MODEL, device=args.device)
    L, H = m.info.n_layers, m.info.n_heads
    b = repeated_tokens(m.tokenizer, args.prompts, args.block, 2, torch.Generator().manual_seed(args.seed))
    ids, targets = b.ids.to(m.device), b.repeat_positions()
    tmask = (targets[None].expand(ids.shape[0], -1) if targets.dim() == 1 else targets).to(m.device)
    start = starts(L, H, args.seed, args.seeds)
    kw = dict(targets=targets, seed=args.seed, n_seeds=args.seeds, steps=args.steps, init_steps=args.init_steps,
              lam=args.lam, lr=args.lr)
    todo = [("headatlas `gate`, seeds and G-/G+ as batch rows (float32)", lambda: gate(m, ids, batch_fits=True, **kw)),
            ("headatlas `gate`, one fit after another (float32; before)", lambda: gate(m, ids, batch_fits=False, **kw))]
    if importlib.util.find_spec("causal_head_gating") is not None:
        peer = frozen_copy(args.device)
        pkw = dict(lam=args.lam, lr=args.lr, init_steps=args.init_steps, steps=args.steps)
        todo += [("nam-causal-head-gating 0.1.0 as shipped (autocast: bfloat16 on CPU, float16 on CUDA)",
                  lambda: peer_fit(peer.model, peer.tokenizer, ids, tmask, start, autocast=True, **pkw)),
                 ("nam-causal-head-gating 0.1.0, autocast off (float32)",
                  lambda: peer_fit(peer.model, peer.tokenizer, ids, tmask, start, autocast=False, **pkw))]
    else:
        print("nam-causal-head-gating is not installed (pip install -e .[bench]); timing headatlas only", flush=True)
    cpu: dict[str, list[float]] = {}
    secs, out = interleaved(todo, args.repeats, m.device, cpu)
    ours_name = todo[0][0]
    ours = out[ours_name]
    med = {n: float(np.median(v)) for n, v in secs.items()}
    cmed = {n: float(np.median(v)) for n, v in cpu.items()}
    lines = [
        "## gating vs nam-causal-head-gating" + (" (CUDA)" if m.device.type == "cuda" else ""),
        "",
        f"`python bench/bench_gating_peer.py --threads {args.threads} --repeats {args.repeats} --init-steps "
        f"{args.init_steps} --steps {args.steps}{' --device cuda' if m.device.type == 'cuda' else ''}`: {MODEL}, "
        f"{args.prompts} prompts of [BOS] + {args.block} + {args.block} random tokens, {args.seeds} seeds, "
        f"{args.init_steps} + {args.steps} + {args.steps} steps, lr {args.lr}, lam {args.lam} per head; "
        f"{'CUDA ' + torch.cuda.get_device_name(m.device) if m.device.type == 'cuda' else 'CPU (' + machine_line() + ')'}; "
        f"{args.repeats} interleaved rounds, medians of wall and CPU time (ratios only: the machine is shared).",
        "",
        "| method | median wall s (runs) | x headatlas batched (wall) | median CPU s | x headatlas batched (CPU) "
        "| Spearman G- / G+ vs headatlas batched | max abs gate diff G- / G+ |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for n, _ in todo:
        res = out[n]
        if isinstance(res, dict):
            gm, gp = res["sufficient"].mean(0), res["necessary"].mean(0)
        else:
            gm, gp = res.minus, res.plus
        rho = (spearmanr(gm.ravel(), ours.minus.ravel())[0], spearmanr(gp.ravel(), ours.plus.ravel())[0])
        diff = (np.abs(gm - ours.minus).max(), np.abs(gp - ours.plus).max())
        ratio = "-" if n == ours_name else f"**{med[n] / med[ours_name]:.2f}x**"
        cratio = "-" if n == ours_name else f"**{cmed[n] / cmed[ours_name]:.2f}x**"
        runs = ", ".join(f"{t:.1f}" for t in secs[n])
        agree = "-" if n == ours_name else f"{rho[0]:.4f} / {rho[1]:.4f}"
        dcell = "-" if n == ours_name else f"{diff[0]:.1e} / {diff[1]:.1e}"
        lines.append(f"| {n} | {med[n]:.1f} ({runs}) | {ratio} | {cmed[n]:.1f} | {cratio} | {agree} | {dcell} |")
    fac = set(zip(*np.nonzero((ours.minus >= 0.5) & (ours.plus >= 0.5))))
    lines += ["", f"headatlas batched: {len(fac)} facilitating heads (G- and G+ >= 0.5), clean loss {ours.loss_clean:.3f}, "
              f"G- loss {ours.loss_minus.mean():.3f}, G+ loss {ours.loss_plus.mean():.3f}."]
    for n, _ in todo[2:]:
        res = out[n]
        pf = set(zip(*np.nonzero((res["sufficient"].mean(0) >= 0.5) & (res["necessary"].mean(0) >= 0.5))))
        jac = len(fac & pf) / max(1, len(fac | pf))
        lines.append(f"{n}: {len(pf)} facilitating heads by the same rule, Jaccard with headatlas {jac:.3f}.")
    text = "\n".join(lines)
    print(text)
    write_section("gating_peer" + ("-cuda" if m.device.type == "cuda" else ""), text)


if __name__ == "__main__":
    main()
