"""Authored data tables shipped as package data (``data/*.json``): word pairs, facts, templates.

The tables live in JSON, not in code, so that the task generators hold only logic; each module reads its own
file once at import (:func:`data_tables`) and keeps tuples (:func:`rows`).
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any, Sequence


@functools.lru_cache(maxsize=16)
def _text(name: str) -> str:
    return resources.files("headatlas").joinpath("data", name).read_text(encoding="utf-8")


def data_tables(name: str) -> dict[str, Any]:
    """The tables of the package data file ``name`` (JSON; keys starting with ``_`` are comments), freshly
    parsed (callers may keep or change them); rows stay lists: convert them with :func:`rows`."""
    return {k: v for k, v in json.loads(_text(name)).items() if not k.startswith("_")}


def rows(table: Sequence[Sequence[str]]) -> tuple[tuple[str, ...], ...]:
    """A JSON table of rows (``[["hot", "cold"], ...]``) as a tuple of tuples."""
    return tuple(tuple(r) for r in table)
