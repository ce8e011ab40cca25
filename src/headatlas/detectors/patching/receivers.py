"""The receivers of a path-patching detector: the heads an earlier detector labelled."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ...errors import InputError
from ..base import NOT_FOUND, ScanConfig


def labelled_receivers(cfg: ScanConfig, detector: str, heads: str) -> list[tuple[int, int]]:
    """The heads ``detector`` labelled in this scan, sorted; ``InputError("not found: ...")`` when it labelled
    none (or was skipped) or all of them sit in layer 0, where no earlier head can send to them. ``heads``
    names them in the message (e.g. ``"name mover heads"``)."""
    res = cfg.result(detector)
    if res.skipped or not res.labelled:
        why = f" ({detector} was skipped: {res.skipped})" if res.skipped else ""
        raise InputError(f"{NOT_FOUND}no {heads} were labelled, so there are no receivers to path-patch into{why}")
    receivers = sorted((int(a), int(b)) for a, b in res.labelled)
    if max(layer for layer, _ in receivers) == 0:
        raise InputError(f"{NOT_FOUND}the {heads} are all in layer 0: no earlier head can send to them")
    return receivers


def senders_before(receivers: list[tuple[int, int]], n_layers: int, n_heads: int,
                   attention_layers: Sequence[int] | None = None) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Every head in a layer before the last receiver's: the list and a ``[n_layers, n_heads]`` mask
    (``attention_layers``: a hybrid's layers with heads; default all)."""
    last = max(layer for layer, _ in receivers)
    layers = [la for la in (range(n_layers) if attention_layers is None else attention_layers) if la < last]
    mask = np.zeros((n_layers, n_heads), dtype=bool)
    mask[layers] = True
    return [(la, h) for la in layers for h in range(n_heads)], mask
