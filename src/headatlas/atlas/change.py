"""Is a head's change between two atlases of same-shaped models significant? (numbers only, no torch)

With ``e`` a detector's effect (the statistic its label rule tests, in score units), ``s_a, s_b`` the spreads
of each model's null draws of it (``null_std``) and ``[lo, hi]`` each model's 95 % bootstrap CI of the effect
over prompts:

1. ``z = (e_b - e_a) / sqrt(s_a^2 + s_b^2)``: the change measured in the noise a head that does nothing
   shows on these prompts (both models' nulls). Two-sided normal p, Benjamini-Hochberg q over the heads
   of the detector (``q_change``).
2. The two bootstrap CIs are disjoint: the change exceeds the sampling noise of the prompts as well.

``significant = q_change <= fdr and CIs disjoint``. The first condition alone would call a tiny shift of a
head with a very tight null significant; the second alone ignores how far the null reaches; both are
cheap, need no extra forward passes, and hold exactly at ``e_b == e_a`` (a model compared with itself has
nothing significant). Both scans use the same prompts, so the test is conservative (the CIs ignore the
pairing). Where a detector gives no CI (NaN), condition 2 is dropped.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FDR = 0.05


def change_test(ra: Any, rb: Any, *, fdr: float = FDR) -> dict[str, np.ndarray]:
    """Per head of one detector (results ``ra``, ``rb``): ``z``, ``p_change``, ``q_change``, ``ci_disjoint``
    and ``significant`` (see the module docstring)."""
    from scipy.stats import false_discovery_control, norm

    ea, eb = np.asarray(ra.effect, float), np.asarray(rb.effect, float)
    sa, sb = np.asarray(ra.null_std, float), np.asarray(rb.null_std, float)
    diff = eb - ea
    scale = np.sqrt(sa ** 2 + sb ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(diff == 0, 0.0, diff / scale)
    p = np.where(np.isfinite(diff) & ~np.isnan(z), 2.0 * norm.sf(np.abs(z)), np.nan)
    q = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        q[finite] = false_discovery_control(p[finite], method="bh")   # BH over the detector's heads
    lo_a, hi_a, lo_b, hi_b = (np.asarray(x, float) for x in (ra.ci_low, ra.ci_high, rb.ci_low, rb.ci_high))
    have_ci = np.isfinite(lo_a) & np.isfinite(hi_a) & np.isfinite(lo_b) & np.isfinite(hi_b)
    disjoint = np.where(have_ci, (lo_b > hi_a) | (lo_a > hi_b), True)
    with np.errstate(invalid="ignore"):
        sig = np.isfinite(q) & (q <= fdr) & disjoint & (diff != 0)
    return {"z": z, "p_change": p, "q_change": q, "ci_disjoint": disjoint & have_ci, "have_ci": have_ci,
            "significant": sig}
