"""Real model: smollm2-135m on IOI prompts (slow: run with -m slow)."""

from __future__ import annotations

import numpy as np
import pytest

from headatlas.methods import patching_map
from headatlas.tasks.ioi import ioi_batch

pytestmark = pytest.mark.slow


def test_ioi_patching_map_is_concentrated_and_attribution_agrees(smollm2):
    batch = ioi_batch(smollm2.tokenizer, 4, seed=3)
    kw = dict(answer=batch.io_ids, wrong=batch.s_ids, normalize=True)
    exact = patching_map(smollm2, batch.clean_ids, batch.corrupted_ids, **kw)
    assert exact.clean_metric > exact.corrupted_metric + 1.0  # the model does IOI
    effects = np.abs(exact.values).ravel()
    top5 = np.sort(effects)[::-1][:5]
    assert top5.min() > 5 * np.median(effects)  # a few heads carry the effect
    attr = patching_map(smollm2, batch.clean_ids, batch.corrupted_ids, method="attribution", **kw)
    r = np.corrcoef(exact.values.ravel(), attr.values.ravel())[0, 1]
    print(f"attribution vs exact r = {r:.3f}")
    assert r > 0.5
