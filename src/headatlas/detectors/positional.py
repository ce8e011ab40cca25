"""Positional heads (ICI): the top attention sits at a fixed relative offset, whatever the content.

Score (Voita et al. 2019, adapted to causal models): for each head, the backward offset ``j``
(0 = the query itself, ... ``W``) where its argmax attention falls most often on non-repeated
random tokens (``extras["offset"]`` = ``-j``: key ``i - j``), and the fraction of queries at that
offset. "Regardless of content": the same fraction is measured on the repeated sequences
(where content-driven heads move), and the score is the *smaller* of the two fractions
(``extras["frac_random"]``, ``extras["frac_repeated"]``).

Null: the same head's argmax fractions at the other offsets of the window (per prompt and
offset, mean and std): how often a typical other nearby offset wins.

Labels: score >= 0.9 (Voita's "at least 90% of positions"), ``MIN_Z`` above the null, **except
offset -1**: those heads are previous-token heads and are labelled by the ``previous_token``
detector only (their positional scores are still reported; ``details["offset_minus_1"]`` lists
those that would have passed). Offset 0 (attend to self) is labelled here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from . import patterns
from .base import Detector, DetectorResult, ScanConfig, label_heads, register
from .synthetic import synthetic_stats

if TYPE_CHECKING:
    from ..models import LoadedModel

MIN_SCORE = 0.9
MIN_Z = 3.0
EXCLUDED_OFFSETS = (-1,)


def run(m: LoadedModel, cfg: ScanConfig) -> DetectorResult:
    st = synthetic_stats(m, cfg)
    W = st.spec.window
    frac = st.argmax.mean(1)                                       # [L, H, W+2]
    back, _ = patterns.dominant_offset(torch.from_numpy(frac))
    back = back.numpy()                                            # [L, H]
    pick = back[:, None, :, None]
    frac_rand = np.take_along_axis(st.argmax, pick, axis=3)[..., 0]       # [L, B, H]
    frac_rep = np.take_along_axis(st.argmax_rep, pick, axis=3)[..., 0]
    scores = np.minimum(frac_rand.mean(1), frac_rep.mean(1))
    others = st.argmax[..., :W + 1].copy()                          # [L, B, H, W+1]
    np.put_along_axis(others, pick, np.nan, axis=3)
    null_mean, null_std = np.nanmean(others, axis=(1, 3)), np.nanstd(others, axis=(1, 3))
    offset = -back
    passed = label_heads(scores, null_mean, null_std, min_score=MIN_SCORE, min_z=MIN_Z)
    labelled = [lh for lh in passed if int(offset[lh]) not in EXCLUDED_OFFSETS]
    return DetectorResult(
        name="positional", scores=scores, null_mean=null_mean, null_std=null_std,
        labelled=labelled, min_score=MIN_SCORE, min_z=MIN_Z,
        data_description=(f"{st.describe()}; argmax offsets 0..-{W} for queries i > {W} (random) and in "
                          "repeats 2+ (repeated)"),
        null_description=(f"the head's argmax fraction at the other offsets 0..-{W} on the random sequences "
                          "(mean and std over prompts and offsets)"),
        n_prompts=st.spec.n_prompts, seed=st.spec.seed,
        extras={"offset": offset.astype(float), "frac_random": frac_rand.mean(1), "frac_repeated": frac_rep.mean(1)},
        details={"window": W, "excluded_offsets": list(EXCLUDED_OFFSETS),
                 "offset_minus_1": [list(lh) for lh in passed if int(offset[lh]) in EXCLUDED_OFFSETS],
                 "rule": "score = min(argmax fraction at the dominant offset on random, on repeated data); "
                         "offset -1 heads are left to previous_token"},
    )


DETECTOR = register(Detector(
    name="positional", stage="ICI", method="attention-pattern score (argmax offset)",
    summary="its top attention sits at a fixed relative offset regardless of content",
    citation="Voita et al. 2019, arXiv 1905.09418", run=run,
))
