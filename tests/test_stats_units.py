"""The unit of replication in the nulls: cluster sign flips, cluster bootstrap, partial conjunction across tasks."""

from __future__ import annotations

import numpy as np
import pytest

from headatlas import stats
from headatlas.stats_tasks import evaluate_across_tasks, majority, uth_largest
from headatlas.atlas.records import LabelRule


def test_cluster_signflips_flip_whole_groups():
    """Two groups: every draw is +-(group sum) +- (other group sum), over the prompt count: at most 4 values."""
    d = np.array([1.0, 2.0, 10.0, 20.0, 30.0])[None, :, None]        # [L=1, B=5, H=1]
    groups = np.array(["a", "a", "b", "b", "b"])
    draws = stats.signflip_null(d, 2000, rng=np.random.default_rng(0), groups=groups)[:, 0, 0]
    expected = {round(s * 3 + t * 60, 9) / 5 for s in (-1, 1) for t in (-1, 1)}
    assert {round(x, 9) for x in draws} <= {round(x, 9) for x in expected} and len(set(np.round(draws, 9))) == 4
    per_prompt = stats.signflip_null(d, 2000, rng=np.random.default_rng(0))[:, 0, 0]
    assert len(set(np.round(per_prompt, 9))) > 4                      # one sign per prompt: many more values
    with pytest.raises(ValueError, match="one label per prompt"):
        stats.signflip_null(d, 10, rng=np.random.default_rng(0), groups=groups[:3])


def test_cluster_bootstrap_resamples_whole_groups():
    """Prompts of a group are equal, groups differ: a cluster resample's mean is a mix of whole groups."""
    v = np.array([0.0, 0.0, 1.0, 1.0])[None, :, None]
    boot = stats.bootstrap(v, n=500, rng=np.random.default_rng(1), groups=np.array([0, 0, 1, 1]))[:, 0, 0]
    assert set(np.round(boot, 9)) <= {0.0, 0.5, 1.0}
    custom = stats.bootstrap(v, stats.mean_over_prompts, n=200, rng=np.random.default_rng(1),
                             groups=np.array([0, 0, 1, 1]))[:, 0, 0]
    assert set(np.round(custom, 9)) <= {0.0, 0.5, 1.0}


def test_partial_conjunction_by_hand():
    p = np.array([0.01, 0.02, 0.5])
    assert stats.partial_conjunction_p(p, 1) == pytest.approx(0.03)        # Simes: min(3*0.01, 1.5*0.02, 0.5)
    assert stats.partial_conjunction_p(p, 2) == pytest.approx(0.04)        # min(2*0.02, 1*0.5)
    assert stats.partial_conjunction_p(p, 3) == pytest.approx(0.5)         # intersection-union: the largest p
    assert stats.partial_conjunction_p(np.array([np.nan, 0.01]), 2) == 1.0  # a task without a p cannot count
    with pytest.raises(ValueError):
        stats.partial_conjunction_p(p, 4)


def test_across_tasks_is_valid_under_the_null_and_finds_a_general_effect():
    rng = np.random.default_rng(0)
    T, n, H = 6, 16, 200
    x = rng.normal(0, 1, (1, T * n, H))
    x[0, :, 0] += 1.5                                                      # head 0 helps every task
    task_of = np.repeat(np.arange(T), n)
    rule = LabelRule(statistic="effect", min_effect=0.5)
    out = evaluate_across_tasks(x, task_of, rule, seed=0, salt="t", scores=x.mean(1), n_perm=9999, n_boot=200)
    assert out.min_tasks == majority(T) == 4
    assert out.tested.labelled == [(0, 0)]
    assert float(np.mean(out.tested.p_value[0, 1:] < 0.05)) <= 0.05
    assert np.allclose(out.tested.effect, uth_largest(out.task_effect, 4))
    assert out.task_p.shape == (T, 1, H) and 0 <= out.tested.stability[0, 0] <= 1
