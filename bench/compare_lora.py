"""Compare smollm2-135m with itself plus a LoRA adapter that un-learns induction in one layer.

LoRA (r=8) on q_proj and k_proj of layer 18 only (the layer of smollm2's strongest induction heads, L18H6
and L18H7 in docs/atlas-smollm2-135m.md), trained for a few steps by gradient ASCENT on the next-token loss
of the repeated half of repeated random-token sequences (tasks/repeats.py, training seed 1000; the scans
use their own seeds). The adapter is saved to a folder and compared with headatlas.compare (base vs the
adapter folder with an explicit base), with the induction and previous_token detectors.

Run: OMP_NUM_THREADS=1 .venv/bin/python bench/compare_lora.py [--steps 12] [--out /tmp/compare-lora]
Prints the training losses, the compare summary, the top weight-delta heads, the induction score changes of
the layer-18 heads and the timings (weight delta vs one scan).
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

import headatlas
from headatlas.tasks.repeats import repeated_tokens

LAYER = 18


def train_adapter(m, folder: str, *, steps: int, layer: int = LAYER, seed: int = 1000, lr: float = 3e-3,
                  batch: int = 4, block: int = 16) -> list[float]:
    """Train a LoRA on ``layer``'s q/k to RAISE the repeat loss; save it to ``folder``; returns the losses."""
    import peft

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)                         # the LoRA A matrices' initialisation
    cfg = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj"], layers_to_transform=[layer],
                          lora_dropout=0.0)
    model = peft.get_peft_model(copy.deepcopy(m.model), cfg)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        ids = repeated_tokens(m.tokenizer, batch, block, 2, g).ids
        logits = model(input_ids=ids).logits
        lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None])[..., 0]
        loss = -lp[:, block + 1:].mean()            # next-token loss on the repeated half
        opt.zero_grad()
        (-loss).backward()                          # ascent: un-learn copying the earlier block
        opt.step()
        losses.append(float(loss.detach()))
    model.save_pretrained(folder)
    return losses


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--out", default="/tmp/compare-lora")
    ap.add_argument("--detectors", default="induction,previous_token")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    base = headatlas.load("smollm2-135m", device="cpu")
    print(f"load {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    losses = train_adapter(base, f"{args.out}/adapter", steps=args.steps)
    print(f"train {time.perf_counter() - t0:.1f} s; repeat loss per step: {' '.join(f'{x:.2f}' for x in losses)}")
    t0 = time.perf_counter()
    comp = headatlas.compare(base, f"{args.out}/adapter", base_b=base, detectors=args.detectors, quick=True,
                             out=f"{args.out}/cmp")
    print(f"compare {time.perf_counter() - t0:.1f} s; timings {({k: round(v, 2) for k, v in comp.timings.items()})}")
    print(comp.summary(top=9))
    wd = comp.weight_delta
    print("layers with a non-zero weight delta:", sorted({int(x) for x in np.nonzero(wd)[0]}))
    for p, v in comp.weight_parts.items():
        print(f"  {p}: max {v.max():.4g} at L{int(v.argmax()) // comp.n_heads}H{int(v.argmax()) % comp.n_heads}")
    df = comp.to_dataframe()
    for d in comp.detectors:
        sub = df[(df["detector"] == d) & ((df["layer"] == LAYER) | df["significant"] | df["labelled_a"] | df["labelled_b"])]
        print(f"\n{d}: layer {LAYER} heads and every labelled / significant head")
        print(sub[["layer", "head", "score_a", "score_b", "delta", "z", "q_change", "significant", "labelled_a",
                   "labelled_b", "weight_delta", "activation_delta"]].to_string(index=False, float_format="%.4g"))
    act = comp.activation_delta
    print("\nactivation delta: max outside layers >= 18:", f"{act[:LAYER].max():.3g}",
          "; layer 18 mean", f"{act[LAYER].mean():.3g}", "; layers > 18 mean", f"{act[LAYER + 1:].mean():.3g}")


if __name__ == "__main__":
    main()
