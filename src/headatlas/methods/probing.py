"""Per-head linear probes on head outputs ``z`` and inference-time intervention (ITI): the entry point.

After Li et al. 2023 (ITI, arXiv 2306.03341): one forward per batch of labelled texts captures every
head's output ``z`` (the input of ``o_proj``, ``d_head`` features) at one position (default ``-1``: the
last real token of each text); a linear probe per head predicts the label; the score is the held-out
accuracy under cross-validation grouped by item (a statement and its negation never straddle train and
test), with a shuffled-label null per head.

The pieces live in their own modules and are re-exported here: the labelled-text record and its readers
(:mod:`headatlas.tasks.labelled`), the forward passes (:mod:`.probe_capture`), the probe fits, null and
result (:mod:`.probe_fit`), and ITI (:mod:`.iti`). :func:`probe` runs them end to end.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from .. import stats

from ..tasks.labelled import ProbeData, as_probe_data, check_probe_data, load_probe_data, probe_data
from ..tasks.statements import statement_probe_data
from .inputs import as_loaded
from .iti import ITI, iti
from .probe_capture import (Captured, capture_heads, completion_logodds, completion_rows, resolve_positions,
                            token_rows)
from .probe_fit import (N_PERM, N_PERM_LOGISTIC, ProbeMethod, ProbeResult, grouped_folds, mass_mean_directions,
                        permute_labels, probe_correct, probe_detector_result, probe_features)


def probe(model: Any, dataset: Any = None, position: int = -1, *, n_folds: int = 5, n_perm: int | None = None,
          method: ProbeMethod = "ridge", ridge: float = 1.0, C: float = 1.0, seed: int = 0, batch_size: int = 16,
          progress: Callable[[int, int], None] | None = None) -> ProbeResult:
    """Probe every head of ``model`` for the labels of ``dataset``.

    ``dataset``: :class:`ProbeData`, a JSONL/CSV path (:func:`load_probe_data`), a list of
    ``{"text", "label", "group"}`` dicts, or ``None`` for the package's true/false statements
    (:mod:`headatlas.tasks.statements`, each true/false pair one group). ``position``: the token whose
    ``z`` is probed (``-1``: each text's last token). Returns a :class:`ProbeResult`
    (``.accuracy``, ``.null_mean``, ``.p``, ``.q``, ``.to_dataframe()``, ``.top(k)``, ``.direction``).
    The settings are checked before the model loads (:func:`headatlas.methods.arguments.check_probe_args`: ``n_perm`` at
    most 100000 ridge / 10000 logistic, and the null's arrays under 2 GiB; ``ridge`` and ``C`` in (0, 1e6])."""
    from .arguments import check_probe_args, check_probe_size

    check_probe_args(dataset=dataset, position=position, n_folds=n_folds, n_perm=n_perm, method=method, ridge=ridge,
                     C=C, seed=seed, batch_size=batch_size, progress=progress)
    data = None if dataset is None else as_probe_data(dataset)   # a bad file fails before the model loads
    m = as_loaded(model)
    if data is None:
        data = statement_probe_data(m.tokenizer, seed=seed)
    check_probe_size(n_perm if n_perm is not None else (N_PERM if method == "ridge" else N_PERM_LOGISTIC), len(data),
                     m.info.n_layers * m.info.n_heads)
    rows = token_rows(m, data.texts)
    pos = resolve_positions(rows, position)
    cap = capture_heads(m, rows, pos, batch_size=batch_size, progress=progress)
    res = probe_features(cap.features, data.labels, data.groups, n_folds=n_folds, n_perm=n_perm, seed=seed,
                         method=method, ridge=ridge, C=C, position=position, source=data.source)
    return _mask_other_layers(res, m.info.other_layers)


def _mask_other_layers(res: ProbeResult, other: tuple[int, ...]) -> ProbeResult:
    """``res`` with NaN for a hybrid's layers without heads (``other``), q-values over the real heads only."""
    if not other:
        return res
    rows = list(other)
    out = {}
    for name in ("accuracy", "null_mean", "null_std", "effect", "p", "correct", "direction", "sigma"):
        a = getattr(res, name).astype(np.float64, copy=True)
        a[rows] = np.nan
        out[name] = a
    null = res.null.astype(np.float64, copy=True)
    null[:, rows] = np.nan
    return dataclasses.replace(res, **out, null=null, q=stats.bh_q(out["p"]))


__all__ = ["Captured", "ITI", "N_PERM", "N_PERM_LOGISTIC", "ProbeData", "ProbeMethod", "ProbeResult", "as_probe_data",
           "capture_heads", "check_probe_data", "completion_logodds", "completion_rows", "grouped_folds", "iti", "load_probe_data",
           "mass_mean_directions", "permute_labels", "probe", "probe_correct", "probe_data", "probe_detector_result",
           "probe_features", "resolve_positions", "token_rows"]
