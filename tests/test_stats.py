"""eval/stats.py: mean and std, the paired bootstrap (against exact enumeration)."""

import itertools

import numpy as np
import pytest

from eval.stats import mean_std, paired_bootstrap


def test_mean_std_uses_ddof_1():
    m, s = mean_std([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5 and s == pytest.approx(np.sqrt(5 / 3))
    m, s = mean_std([0.7])
    assert m == 0.7 and np.isnan(s)


def test_bootstrap_identical_arms_and_constant_shift():
    rng = np.random.default_rng(0)
    zero = {"a": np.zeros((3, 40)), "b": np.zeros((3, 7))}
    out = paired_bootstrap(zero, n_boot=300, seed=1)
    assert out["tasks"]["a"] == (0.0, 0.0, 0.0) and out["average"] == (0.0, 0.0, 0.0)
    # arm = baseline + 0.05 on every item: every replicate is exactly the shift
    base = rng.random((2, 30))
    shifted = paired_bootstrap({"a": (base + 0.05) - base}, n_boot=300, seed=1)
    assert shifted["tasks"]["a"] == pytest.approx((0.05, 0.05, 0.05))


def test_bootstrap_matches_the_exact_resampling_distribution():
    """S = 2 seeds, N = 3 items: all 2^2 x 3^3 equally likely resamples, enumerated."""
    d = np.array([[0.0, 1.0, -1.0], [1.0, 1.0, 0.0]])
    exact = np.array([d[list(s)][:, list(i)].mean() for s in itertools.product(range(2), repeat=2)
                      for i in itertools.product(range(3), repeat=3)])
    out = paired_bootstrap({"t": d}, n_boot=40000, seed=0)
    assert out["tasks"]["t"][0] == pytest.approx(d.mean())
    # every value a replicate can take, with its exact probability (values lie on a 1/6 grid)
    grid = lambda x: np.round(np.asarray(x) * 6).astype(int)  # noqa: E731
    values, counts = np.unique(grid(exact), return_counts=True)
    freq = np.array([(grid(out["replicates"]["t"]) == v).mean() for v in values])
    assert set(np.unique(grid(out["replicates"]["t"]))) <= set(values)
    assert np.abs(freq - counts / len(exact)).max() < 0.01
    lo, hi = out["tasks"]["t"][1:]
    assert np.mean(exact < lo - 1e-9) <= 0.025 + 0.01 and np.mean(exact > hi + 1e-9) <= 0.025 + 0.01
    again = paired_bootstrap({"t": d}, n_boot=500, seed=7)
    assert again["tasks"] == paired_bootstrap({"t": d}, n_boot=500, seed=7)["tasks"]


def test_bootstrap_average_resamples_seeds_jointly():
    """Two tasks with the same seed effect (+1 at seed 0, -1 at seed 1): resampling the seeds
    jointly keeps them correlated, so the average's interval is as wide as each task's."""
    d = np.array([[1.0] * 20, [-1.0] * 20])
    out = paired_bootstrap({"a": d, "b": d.copy()}, n_boot=2000, seed=0)
    assert out["average"][1:] == pytest.approx(out["tasks"]["a"][1:])
    assert out["average"][1] == pytest.approx(-1.0) and out["average"][2] == pytest.approx(1.0)
