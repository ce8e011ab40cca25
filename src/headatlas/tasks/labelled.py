"""Labelled texts for probes: the :class:`ProbeData` record and the readers that build it.

A record is a tuple of texts with a 0/1 label and a group per text (items of one group, e.g. a statement and
its negation, stay on one side of every train/test split). Readers: dicts (:func:`probe_data`), JSONL or CSV
files including TruthfulQA's (:func:`load_probe_data`), or any of these (:func:`as_probe_data`). This module
sits under ``tasks`` so that the task generators (e.g. :mod:`headatlas.tasks.statements`) build records
without importing the methods that fit probes on them.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..checks import check_binary, check_hashable, check_integral
from ..errors import InputError, InputTypeError


@dataclass(frozen=True)
class ProbeData:
    """Labelled texts: ``texts[i]`` has ``labels[i]`` (0 or 1) and belongs to group ``groups[i]`` (items of
    one group, e.g. a statement and its negation, stay on one side of every train/test split)."""

    texts: tuple[str, ...]
    labels: np.ndarray   # [N] int 0/1
    groups: np.ndarray   # [N] int
    source: str = ""

    def __post_init__(self) -> None:
        n = len(self.texts)
        labels = np.asarray(self.labels)
        groups = np.asarray(self.groups)
        if labels.shape != (n,) or groups.shape != (n,):
            raise InputError(f"probe data: {n} texts but {labels.shape[0] if labels.ndim else 0} labels and "
                             f"{groups.shape[0] if groups.ndim else 0} groups; give one label and group per text")
        object.__setattr__(self, "labels", check_binary(labels, f"{self.source or 'probe data'}: labels"))
        object.__setattr__(self, "groups", check_integral(groups, f"{self.source or 'probe data'}: groups"))

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: Sequence[int] | np.ndarray) -> "ProbeData":
        idx = np.asarray(idx, dtype=int)
        return ProbeData(tuple(self.texts[i] for i in idx), self.labels[idx], self.groups[idx], self.source)


def _group_ids(raw: Sequence[Any]) -> np.ndarray:
    """Any hashable group keys -> consecutive ints in order of first appearance."""
    seen: dict[Any, int] = {}
    return np.array([seen.setdefault(g if not isinstance(g, list) else tuple(g), len(seen)) for g in raw], dtype=int)


def probe_data(records: Iterable[dict[str, Any]], *, source: str = "records") -> ProbeData:
    """:class:`ProbeData` from dicts ``{"text": str, "label": 0|1, "group": any (optional)}`` (an item
    without a group is its own group). InputError naming the record on a missing key or a bad label."""
    texts, labels, groups = [], [], []
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise InputTypeError(f"{source}: record {i + 1} must be an object with text and label, got {type(r).__name__}")
        missing = [k for k in ("text", "label") if k not in r]
        if missing:
            raise InputError(f"{source}: record {i + 1} lacks {', '.join(missing)} (keys: {sorted(r)})")
        text, label = r["text"], r["label"]
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"{source}: record {i + 1}: text must be a non-empty string, got {text!r:.40}")
        if isinstance(label, bool) or label not in (0, 1):
            raise InputError(f"{source}: record {i + 1}: label must be 0 or 1, got {label!r:.40}")
        texts.append(text)
        labels.append(int(label))
        groups.append(check_hashable(r.get("group", f"__item{i}"), f"{source}: record {i + 1}: group"))
    data = ProbeData(tuple(texts), np.array(labels, dtype=int), _group_ids(groups), source)
    check_probe_data(data)
    return data


def check_probe_data(data: ProbeData, *, min_per_class: int = 4) -> None:
    """InputError unless both classes have at least ``min_per_class`` items."""
    if len(data) == 0:
        raise InputError(f"{data.source or 'probe data'}: no items")
    counts = np.bincount(data.labels, minlength=2)
    if counts.min() < min_per_class:
        raise InputError(f"{data.source or 'probe data'}: a probe needs both labels, at least {min_per_class} items "
                         f"each; got {counts[0]} with label 0 and {counts[1]} with label 1")


def _split_answers(cell: Any) -> list[str]:
    if isinstance(cell, list):
        return [str(a).strip() for a in cell if str(a).strip()]
    return [a.strip() for a in str(cell or "").split(";") if a.strip()]


def _truthfulqa(rows: list[dict[str, Any]], source: str) -> ProbeData:
    """TruthfulQA rows (the CSV's ``Question``/``Correct Answers``/``Incorrect Answers``, or the Hugging Face
    columns ``question``/``correct_answers``/``incorrect_answers`` that honest_llama reads) -> one
    ``"Q: {question} A: {answer}"`` item per answer, label 1 for correct answers, grouped by question."""
    recs = []
    for i, r in enumerate(rows):
        q = r.get("Question", r.get("question"))
        good = _split_answers(r.get("Correct Answers", r.get("correct_answers")))
        bad = _split_answers(r.get("Incorrect Answers", r.get("incorrect_answers")))
        if not q:
            raise InputError(f"{source}: row {i + 1} has no question")
        for a, lab in [(a, 1) for a in good] + [(a, 0) for a in bad]:
            recs.append({"text": f"Q: {q} A: {a}", "label": lab, "group": i})
    return probe_data(recs, source=source)


def load_probe_data(path: str | Path) -> ProbeData:
    """Read a user's probing data.

    - JSONL (``.jsonl``/``.json`` lines): one object per line ``{"text": ..., "label": 0|1, "group": ...}``;
      TruthfulQA objects (``question``, ``correct_answers``, ``incorrect_answers``) are read as below.
    - CSV: TruthfulQA's ``TruthfulQA.csv`` (``Question``, ``Correct Answers``, ``Incorrect Answers``,
      answers separated by ``;``), or a CSV with ``text,label[,group]`` columns.
    InputError on a missing or empty file, a non-JSON line (with its number), missing keys, labels other
    than 0/1, or a single class."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"probe data file {str(p)!r} does not exist")
    try:
        raw = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read probe data {str(p)!r}: {exc}") from None
    if not raw.strip():
        raise InputError(f"probe data file {str(p)!r} is empty")
    source = p.name
    if p.suffix.lower() == ".csv":
        rows = list(csv.DictReader(raw.splitlines()))
        if not rows:
            raise InputError(f"{source}: no rows under the CSV header")
        cols = set(rows[0])
        if {"Question", "Correct Answers", "Incorrect Answers"} <= cols:
            return _truthfulqa(rows, source)
        if {"text", "label"} <= cols:
            recs = []
            for i, r in enumerate(rows):
                try:
                    lab = int(str(r["label"]).strip())
                except ValueError:
                    raise InputError(f"{source}: row {i + 2}: label must be 0 or 1, got {r['label']!r:.40}") from None
                rec = {"text": r["text"], "label": lab}
                if r.get("group") not in (None, ""):
                    rec["group"] = r["group"]
                recs.append(rec)
            return probe_data(recs, source=source)
        raise InputError(f"{source}: CSV columns {sorted(cols)} are neither text,label[,group] nor TruthfulQA's "
                         "Question, Correct Answers, Incorrect Answers")
    objs = []
    for n, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            objs.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise InputError(f"{source}: line {n} is not JSON ({exc.msg}): {line[:60]!r}") from None
    if objs and all(isinstance(o, dict) and "question" in o and "text" not in o for o in objs):
        return _truthfulqa(objs, source)
    return probe_data(objs, source=source)


def as_probe_data(dataset: Any) -> ProbeData:
    """A :class:`ProbeData`, a path to a JSONL/CSV file, or a list of ``{"text", "label", "group"}`` dicts."""
    if isinstance(dataset, ProbeData):
        check_probe_data(dataset)
        return dataset
    if isinstance(dataset, (str, Path)):
        return load_probe_data(dataset)
    if isinstance(dataset, (list, tuple)):
        return probe_data(dataset)
    raise InputTypeError(f"dataset must be ProbeData, a path to a .jsonl/.csv file or a list of "
                         f"{{'text', 'label', 'group'}} dicts, got {type(dataset).__name__}")


__all__ = ["ProbeData", "as_probe_data", "check_probe_data", "load_probe_data", "probe_data"]
