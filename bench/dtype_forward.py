"""float32 vs bfloat16 forward time of one bundled model, interleaved in one process (the README's
bfloat16 row): the model is loaded once in float32 and converted in place between timings, so both
dtypes run on the same machine state (peak RSS 10.9 GB for qwen2.5-coder-1.5b: the memory-mapped
float32 cache stays resident beside the converted weights).

    OMP_NUM_THREADS=2 .venv/bin/python bench/dtype_forward.py MODEL OUT.json [--rounds 2]

After the first conversion the float32 weights are the bfloat16 values widened (exact), which changes the
numbers the model computes but not the work of a forward pass.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import headatlas


def forward_seconds(model, ids: torch.Tensor) -> float:
    with torch.no_grad():
        t0 = time.perf_counter()
        model(input_ids=ids, use_cache=False)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    m = headatlas.load(a.model, device="cpu")
    ids = torch.randint(100, min(m.info.vocab_size, 30000), (8, 64), generator=torch.Generator().manual_seed(0))
    forward_seconds(m.model, ids[:1, :8])            # warm-up
    times: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    for _ in range(a.rounds):
        for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
            m.model.to(dtype)
            times[name].append(forward_seconds(m.model, ids))
    res = {"model": a.model, "threads": torch.get_num_threads(), "batch": list(ids.shape), "seconds": times,
           "ratio_bf16_over_f32": sum(times["bfloat16"]) / sum(times["float32"])}
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
