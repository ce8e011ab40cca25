"""What the probing detectors share: the probe settings of a scan (folds, shuffled-label draws) and the run
function that turns a shared pass's :class:`~headatlas.methods.probing.ProbeResult` into the detector's result.

Every probing detector's shared pass captures ``z`` at its own positions, fits the per-head probes with
:func:`fit_probes` and keeps the result in a field ``probe``; :func:`probe_run` builds the detector's ``run``
from the pass, the label rule and a ``describe(pass, cfg) -> (data_description, details)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ... import stats
from ...methods.probing import ProbeResult, probe_detector_result, probe_features
from ..base import DetectorResult, LabelRule, ScanConfig, SharedPass

if TYPE_CHECKING:
    from ...models import LoadedModel

QUICK_PERM = 199          # shuffled-label draws in quick scans (tests); a full scan uses stats.N_PERM (p floor 1e-4)



def fit_probes(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, cfg: ScanConfig, *,
               position: int | str, source: str, strata: np.ndarray | None = None) -> ProbeResult:
    """Per-head probes on ``features [N, L, H, D]`` with the scan's settings: grouped 5-fold CV (4 when quick) and
    ``stats.N_PERM`` shuffled-label draws (:data:`QUICK_PERM` when quick), seeded by the scan."""
    return probe_features(features, labels, groups, n_folds=4 if cfg.quick else 5,
                          n_perm=QUICK_PERM if cfg.quick else stats.N_PERM, seed=cfg.seed, position=position,
                          source=source, strata=strata)


Describe = Callable[[Any, ScanConfig], "tuple[str, dict[str, Any]]"]


def probe_run(name: str, shared: SharedPass[Any], rule: LabelRule,
              describe: Describe) -> Callable[["LoadedModel", ScanConfig], DetectorResult]:
    """The ``run`` of probing detector ``name``: fetch the shared pass, describe its data, score its probe."""
    def run(m: "LoadedModel", cfg: ScanConfig) -> DetectorResult:
        p = cfg.shared(shared, m)
        data, details = describe(p, cfg)
        return probe_detector_result(name, p.probe, rule, data_description=data, details=details)

    run.__name__ = f"run_{name}"
    return run
