"""Page weight and load timing of the HTML report, before and after: the report as a revision renders it (default
``24090f6``, the last commit before issue 18's report) against the working tree's, on the same atlases, measured in
the same headless Chromium (1400 x 900), interleaved, median of ``--repeats`` loads each.

Timing: ``report_timing.measure`` (first contentful paint, largest contentful paint, DOMContentLoaded, the page
script's ready mark, "interactive" = end of the last long task before a 1.5 s quiet window, total blocking time).
The old revision renders through a subprocess with its own source tree (``git archive``); an atlas key it does not
know (``writes``) is dropped for it.

Run: ``python bench/bench_report.py [--atlas PATH ...] [--base REV] [--repeats 5]`` (default atlases: the two
shipped in docs/). Writes the "report" section of bench/RESULTS.md (``--no-write`` to only print).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from collect import write_section  # noqa: E402
from report_timing import browser, measure  # noqa: E402

RENDER = """
import json, sys
from headatlas.atlas import Atlas
doc = json.load(open(sys.argv[1]))
if sys.argv[3] == "strip":
    doc.pop("writes", None)
open(sys.argv[2], "w").write(Atlas.from_dict(doc, sys.argv[1]).to_html())
"""
KEYS = ("bytes", "fcp", "lcp", "dcl", "ready", "interactive", "blocking", "n_long")


def render(src: Path, atlas: Path, out: Path, strip: bool) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), *filter(None, [os.environ.get("PYTHONPATH")])])}
    subprocess.run([sys.executable, "-c", RENDER, str(atlas), str(out), "strip" if strip else "keep"], check=True, env=env)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--atlas", action="append", type=Path, default=None)
    ap.add_argument("--base", default="24090f6")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    atlases = args.atlas or [ROOT / "docs" / "atlas-smollm2-135m" / "atlas.json", ROOT / "docs" / "atlas-gemma3-270m" / "atlas.json"]
    tmp = Path(tempfile.mkdtemp(prefix="bench-report-"))
    base_src = tmp / "base"
    base_src.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.base, "src"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(base_src)], input=archive, check=True)
    pages = []
    for atlas in atlases:
        name = atlas.parent.name if atlas.name == "atlas.json" else atlas.stem
        for label, src, strip in ((f"before ({args.base})", base_src / "src", True), ("after", ROOT / "src", False)):
            out = tmp / f"{name}-{label.split()[0]}.html"
            render(src, atlas, out, strip)
            pages.append((name, label, out))
    drv = browser(1400, 900)
    runs: dict[tuple[str, str], list[dict]] = {(n, lab): [] for n, lab, _ in pages}
    try:
        for _ in range(args.repeats):          # interleaved: every page once per round
            for name, label, path in pages:
                runs[(name, label)].append(measure(drv, path))
    finally:
        drv.quit()
    rows = []
    for (name, label), rs in runs.items():
        med = {k: statistics.median(r[k] if r[k] is not None else float("nan") for r in rs) for k in KEYS}
        rows.append((name, label, med))
        print(name, label, json.dumps({k: round(v) for k, v in med.items()}))
    lines = ["## report: page weight and load time (bench_report)", "",
             f"`python bench/bench_report.py --repeats {args.repeats}`: each atlas's report as revision {args.base} "
             "renders it (before) and as this tree renders it (after), opened in headless Chromium at 1400 x 900 "
             f"(file://, offline), interleaved, median of {args.repeats} loads. Milliseconds from navigation start. "
             "The machine is shared with other jobs (2 cores): compare before with after, not with other machines. "
             "Budget (issue 18): <= 3 MB, first meaningful paint < 1 s, interactive < 2 s.", "",
             "| atlas | report | size (MB) | first contentful paint | largest contentful paint | DOMContentLoaded | "
             "script ready | interactive | total blocking time | long tasks |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, label, m in rows:
        lines.append(f"| {name} | {label} | {m['bytes'] / 1e6:.2f} | {m['fcp']:.0f} | {m['lcp']:.0f} | {m['dcl']:.0f} | "
                     f"{m['ready']:.0f} | {m['interactive']:.0f} | {m['blocking']:.0f} | {m['n_long']:.0f} |")
    lines += ["", "Interactive: the end of the last long task (> 50 ms) before a 1.5 s window without one, at least "
              "DOMContentLoaded and the page script's ready mark (Lighthouse's time-to-interactive without network)."]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("report", text)


if __name__ == "__main__":
    main()
