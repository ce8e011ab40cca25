"""Scan a bundled model into docs/atlas-<model>/ and write docs/atlas-<model>.md from the numbers.

Every sentence of the write-up is generated from the atlas the scan produced (and, for "before",
from the atlas committed earlier, read back from git and migrated from schema 1), so the docs
cannot claim more than the code measured:

- per detector: labels, the top heads with score, effect [CI], p, q and stability, "none found" with
  the best head's numbers, the skip reason;
- the causal check of every detector that has one (labelled set vs layer-matched random sets);
- label stability across seeds: a second scan with seed 1 (no causal checks) and the Jaccard index of
  the label sets per detector;
- before -> after: the labels of the previous atlas (``--before`` or git ``HEAD:docs/atlas-<model>/atlas.json``)
  and which of them did not survive.

    python bench/atlas_writeup.py --model smollm2-135m [--before old.json] [--no-seed1]
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import headatlas
from headatlas import stats
from headatlas.atlas import Atlas
from headatlas.errors import HeadAtlasError

ROOT = Path(__file__).resolve().parents[1]


def _f(x: float, digits: int = 3) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.{digits}g}"


def _heads(hs) -> str:
    return ", ".join(f"L{a}H{b}" for a, b in hs) or "none"


def _before(model: str, path: str | None) -> Atlas | None:
    if path:
        return Atlas.load(path)
    rel = f"docs/atlas-{model}/atlas.json"
    try:
        text = subprocess.run(["git", "show", f"HEAD:{rel}"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout
    except subprocess.CalledProcessError:
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        fh.write(text)
    try:
        return Atlas.load(fh.name)
    except HeadAtlasError as exc:
        print(f"previous atlas unreadable: {exc}", file=sys.stderr)
        return None


def detector_rows(a: Atlas, top: int = 5) -> list[str]:
    lines = ["| detector | stage | labelled | top heads: score, effect [95% CI], p, q, stability |", "|---|---|---:|---|"]
    for name in a.detectors:
        r, st = a.result(name), a.meta[name].stage
        if r.skipped:
            lines.append(f"| {name} | {st} | - | skipped: {r.skipped} |")
            continue
        tops = a.top_heads(name, top)
        if not tops:
            lines.append(f"| {name} | {st} | 0 | none found{a.best_head_hint(name)} |")
            continue
        cells = "; ".join(f"{e.name} {_f(e.score)}, {_f(e.effect)} [{_f(e.ci_low)}, {_f(e.ci_high)}], p {_f(e.p_value, 2)},"
                          f" q {_f(e.q_value, 2)}, stab {_f(e.stability, 2)}" for e in tops)
        more = len(r.labelled) - len(tops)
        lines.append(f"| {name} | {st} | {len(r.labelled)} | {cells}{f'; +{more} more' if more > 0 else ''} |")
    return lines


def causal_rows(a: Atlas) -> list[str]:
    lines = ["| detector | metric (expected) | intervention | heads | clean | change (tested) | random: median [min, max] | "
             "p | q (atlas BH) | labels: confirmed / unconfirmed |", "|---|---|---|---:|---:|---:|---|---:|---:|---|"]
    notes = []
    for name in a.detectors:
        c = a.result(name).causal
        if c is None:
            continue
        if not c.ran:
            notes.append(f"- {name}: {c.note}")
            continue
        rnd = c.random_effects
        sets = f"{len(rnd)} sets{', all there are' if c.exhaustive else ''}"
        counts = a.status_counts(name)
        lines.append(f"| {name} | {c.metric} ({c.expected}) | {c.intervention} | {len(c.heads)} | {_f(c.baseline)} | "
                     f"{c.effect:+.3g} | {c.random_median:+.3g} [{min(rnd):+.3g}, {max(rnd):+.3g}] ({sets}) | "
                     f"{_f(c.p_value, 2)} | {_f(c.q_value, 2)} | {counts['confirmed']} / {counts['unconfirmed']} |")
    return lines + ([""] + ["No causal check:"] + notes if notes else [])


def stability_rows(a: Atlas, b: Atlas) -> list[str]:
    lines = ["| detector | labels seed 0 | labels seed 1 | Jaccard |", "|---|---:|---:|---:|"]
    for name in a.detectors:
        if a.result(name).skipped or name not in b.detectors:
            continue
        la, lb = a.labelled(name), b.labelled(name)
        lines.append(f"| {name} | {len(la)} | {len(lb)} | {stats.jaccard(la, lb):.2f} |")
    return lines


RENAMED = {"mover": "name_mover"}   # old detector name -> its name now (compared under the new name)


def before_after_rows(old: Atlas, new: Atlas) -> list[str]:
    """Per detector: labels before and after, the labels kept, lost and gained, and which labels (kept or new) the
    new atlas holds only as unconfirmed (their detector's causal check did not pass after BH across the atlas)."""
    lines = ["| detector | before | after (confirmed) | kept | did not survive | new | unconfirmed now |",
             "|---|---:|---:|---|---|---|---|"]
    old_names = {RENAMED.get(n, n): n for n in old.detectors}
    for name in sorted(set(old_names) | set(new.detectors)):
        o = set(old.labelled(old_names[name])) if name in old_names else set()
        live = name in new.detectors and not new.result(name).skipped
        n = set(new.labelled(name)) if live else set()
        conf = set(new.labelled(name, status="confirmed")) if live else set()
        unconf = sorted(set(new.labelled(name, status="unconfirmed")) if live else set())
        gone = sorted(o - n)
        lines.append(f"| {name} | {len(o)} | {len(n)} ({len(conf)}) | {len(o & n)} | "
                     f"{_heads(gone[:12])}{' ...' if len(gone) > 12 else ''} | {_heads(sorted(n - o)[:8])} | "
                     f"{_heads(unconf[:8])}{' ...' if len(unconf) > 8 else ''} |")
    return lines


def confirmed_rows(a: Atlas) -> list[str]:
    """The stage map of confirmed (and attention-defined) heads first, with the detectors that put them there; then
    what the atlas also holds but has not confirmed."""
    lines = []
    counts = a.stage_counts()
    for st, hs in a.stage_heads().items():
        by = [f"{n} ({_heads(a.labelled(n, status=s)[:8])})" for n in a.detectors if a.meta[n].stage == st
              for s in ("confirmed", "attention-defined") if a.labelled(n, status=s)]
        c = counts.get(st, {})
        lines.append(f"- **{st}**: {len(hs)} heads" + (f" — {'; '.join(by)}" if by else
                                                        " — no confirmed or attention-defined head")
                     + f" (unconfirmed labels in this stage: {c.get('unconfirmed', 0)})")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--before", default=None, help="previous atlas.json (default: git HEAD's docs atlas)")
    ap.add_argument("--no-seed1", action="store_true", help="skip the seed-1 stability scan")
    ap.add_argument("--seed1-detectors", default="previous_token,duplicate_token,induction,positional,attention_sink",
                    help="detectors rescanned with seed 1 for the stability table ('all' for every one)")
    ap.add_argument("--fresh", action="store_true", help="recompute every detector (default: resume from partial/)")
    ap.add_argument("--detectors", default=None)
    args = ap.parse_args()

    old = _before(args.model, args.before)
    out = ROOT / "docs" / f"atlas-{args.model}"
    m = headatlas.load(args.model, device="cpu")
    a = headatlas.scan(m, args.detectors, seed=0, out=out, resume=not args.fresh)
    seconds = sum(a.timings.values())
    seed1 = None if args.seed1_detectors == "all" else args.seed1_detectors
    b = None if args.no_seed1 else headatlas.scan(m, seed1, seed=1, causal=False)
    info = a.model
    sh = a.stage_heads(status=("confirmed", "unconfirmed", "attention-defined"))
    text = [f"# Atlas of {args.model}", "",
            f"Generated by `python bench/atlas_writeup.py --model {args.model}` from the atlas in "
            f"`docs/atlas-{args.model}/` ({info.get('architecture')}, {a.n_layers} layers x {a.n_heads} heads; seed 0; "
            f"whole scan with nulls and causal checks {seconds:.0f} s of detector time on this machine's CPU, which "
            "other processes shared while it ran). Every number below is read from that atlas.", "",
            "A label is: q <= 0.05 (Benjamini-Hochberg over all heads of the detector, from an add-one permutation "
            "p-value against the detector's null distribution) and the effect clears the rule's minimum; each "
            "detector's rule is printed in the HTML report and stored in the JSON.", "",
            "## Confirmed heads by stage", "",
            "A head counts in a stage when a detector of that stage labels it and the label is *confirmed* (the "
            "detector's causal check beats layer-matched random sets drawn from a pool with no head of its metric "
            "family, at BH q <= 0.05 across every check of this atlas) or *attention-defined* (the pattern is the "
            "claim; no behaviour to check). Unconfirmed labels are listed below but place no head.", "",
            *confirmed_rows(a), "",
            "## Heads per detector", "", *detector_rows(a), "",
            "## Causal checks (labelled set vs layer-matched random sets of the same size)", "", *causal_rows(a), "",
            "## Stage map, every label", "",
            "Heads counted in every stage they are labelled in, whatever their status (attention sinks place no "
            "head); compare with the confirmed map at the top:", "",
            *[f"- {st}: {len(hs)} heads" + (f" ({_heads(hs[:12])}{' ...' if len(hs) > 12 else ''})" if hs else
                                           " — this model shows no labelled head of this stage's detectors")
              for st, hs in sh.items()], ""]
    if b is not None:
        text += ["## Label stability across seeds (seed 0 vs seed 1, fresh prompts)", "",
                 f"Rescanned with seed 1: {', '.join(b.detectors)}.", "", *stability_rows(a, b), ""]
    if old is not None:
        text += ["## Changes from the previous atlas", "",
                 f"Before: the atlas committed earlier ({len(old.detectors)} detectors). After: this atlas ({len(a.detectors)} detectors). A detector "
                 "absent before shows 0 labels before.", "", *before_after_rows(old, a), ""]
    path = ROOT / "docs" / f"atlas-{args.model}.md"
    path.write_text("\n".join(text))
    print("\n".join(text))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
