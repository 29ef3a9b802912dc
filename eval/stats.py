"""
Statistics on arrays, for the experiment report (eval/report.py): pure functions of numbers,
importing nothing of this project.

  mean_std           mean and sample std (ddof = 1) of the finite values
  t_quantile         Student's t quantile (integer degrees of freedom, exact series, no scipy)
  t_interval         the t-interval of a mean over seeds (df = S - 1), vectorized
  seed_intervals     paired differences per task and their average: a t-interval over the
                     per-seed paired means. What the report stars.
  paired_bootstrap   bootstrap of per-item differences, over items (and optionally seeds)

Why the t-interval over seeds: a training run is the unit that varies. Two runs of the same arm
at different seeds differ by a run-level shift that moves every item (and every task) together,
so the S per-seed means are the S independent observations, whatever the number of items. A
bootstrap that resamples S = 2 or 3 seeds cannot see that variance (there are only 3 or 10
distinct seed draws), and its 95% interval excluded 0 in 11-29% of null experiments at 2 seeds
(tests/test_stats.py simulates them). The t-interval with S - 1 degrees of freedom is exact when
the seed means are normal, which a mean over hundreds of items is close to. One seed gives no
interval: it cannot estimate run-to-run variance.
"""

import math

import numpy as np


def mean_std(values):
    """Mean and sample standard deviation (ddof=1) of the finite values; std is nan below two."""
    a = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if a.size == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else float("nan")


def t_cdf_two_sided(t, df):
    """P(|T| < t) for Student's t with integer df >= 1 (Abramowitz & Stegun 26.7.3-4: a finite
    series in cos^2 of theta = atan(t / sqrt(df))). t: a number or array, >= 0."""
    if int(df) != df or df < 1:
        raise ValueError(f"df={df}: the series needs a whole number >= 1")
    df = int(df)
    theta = np.arctan(np.asarray(t, dtype=np.float64) / math.sqrt(df))
    c2 = np.cos(theta) ** 2
    if df % 2 == 1:  # odd: (2/pi) (theta + sin cos (1 + 2/3 c2 + 2.4/(3.5) c2^2 + ...)), df - 1 terms / 2
        term, total = np.ones_like(c2), np.ones_like(c2) if df > 1 else np.zeros_like(c2)
        for k in range(1, (df - 1) // 2):
            term = term * c2 * (2 * k) / (2 * k + 1)
            total = total + term
        return 2 / math.pi * (theta + np.sin(theta) * np.cos(theta) * total)
    term, total = np.ones_like(c2), np.ones_like(c2)  # even: sin (1 + 1/2 c2 + 1.3/(2.4) c2^2 + ...)
    for k in range(1, df // 2):
        term = term * c2 * (2 * k - 1) / (2 * k)
        total = total + term
    return np.sin(theta) * total


def t_quantile(p, df):
    """The p-quantile (0.5 < p < 1) of Student's t with integer df, by bisection on the exact CDF."""
    if not 0.5 < p < 1:
        raise ValueError(f"p={p}: give the upper quantile, 0.5 < p < 1")
    level = 2 * p - 1  # P(|T| < t) = 2p - 1
    lo, hi = 0.0, 1.0
    while t_cdf_two_sided(hi, df) < level:
        hi *= 2
    for _ in range(100):  # interval halves each step: far below float64 resolution after 100
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf_two_sided(mid, df) < level else (lo, mid)
    return (lo + hi) / 2


def t_interval(values, level=0.95):
    """(estimate, lo, hi) of the mean over the last axis (the S seeds), values (..., S): the
    mean -/+ t_{(1+level)/2, S-1} * std(ddof=1) / sqrt(S). Arrays of shape (...) each. With one
    seed, lo and hi are nan: one run cannot estimate run-to-run variance."""
    v = np.asarray(values, dtype=np.float64)
    S = v.shape[-1]
    est = v.mean(axis=-1)
    if S < 2:
        nan = np.full_like(est, np.nan)
        return est, nan, nan.copy()
    half = t_quantile((1 + level) / 2, S - 1) * v.std(axis=-1, ddof=1) / math.sqrt(S)
    return est, est - half, est + half


def seed_intervals(diffs, level=0.95):
    """Paired differences with t-intervals over seeds. diffs: {task: array (S, N_task)} of
    per-item differences d[s, i] = arm - baseline at seed s on item i (the same S seeds for
    every task). Per task: the S seed means of d, and their t-interval. The average over tasks:
    per seed, the mean of the task means (one run serves every task, so the tasks' seed
    effects are kept together), then its t-interval.
    Returns {'tasks': {task: (est, lo, hi)}, 'average': (est, lo, hi), 'seed_means': {task: (S,)},
    'average_seed_means': (S,)}; lo, hi nan with one seed."""
    names = list(diffs)
    means = {t: np.asarray(diffs[t], dtype=np.float64).mean(axis=-1) for t in names}  # (S,) each
    S = means[names[0]].shape[0]
    if any(np.asarray(diffs[t]).ndim != 2 or m.shape != (S,) or np.asarray(diffs[t]).shape[1] == 0
           for t, m in means.items()):
        raise ValueError("every task needs an (S, N) array with the same S seeds and N >= 1 items")
    average = np.mean([means[t] for t in names], axis=0)  # (S,)
    triple = lambda v: tuple(float(x) for x in t_interval(v, level))  # noqa: E731
    return {"tasks": {t: triple(means[t]) for t in names}, "average": triple(average),
            "seed_means": means, "average_seed_means": average}


def paired_bootstrap(diffs, n_boot=2000, seed=0, chunk=200, resample_seeds=True):
    """Paired bootstrap of per-item differences. diffs: {task: array (S, N_task)} of per-item
    differences d[s, i] = arm - baseline at seed s on item i (the same S seeds for every task).
    A replicate draws S seeds with replacement, shared by all tasks (one training run serves
    every task), and per task N_task items with replacement; its value is the mean of d over
    the drawn seeds and items, and, for the average, the mean of those over tasks.
    resample_seeds=False keeps the S seeds as they are and resamples items only: the within-run
    (item) uncertainty, what another draw of test items would change for these very runs. With
    seeds resampled it is anti-conservative at few seeds (see the module docstring): the report
    uses seed_intervals for its claims.
    Returns {'tasks': {task: (estimate, lo, hi)}, 'average': (estimate, lo, hi), 'replicates':
    {task: (n_boot,) array}}: the 95% percentile interval of the replicates, deterministic for a
    given seed."""
    rng = np.random.default_rng(seed)
    names = list(diffs)
    d = {t: np.asarray(diffs[t], dtype=np.float64) for t in names}
    S = d[names[0]].shape[0]
    if any(x.ndim != 2 or x.shape[0] != S or x.shape[1] == 0 for x in d.values()):
        raise ValueError("every task needs an (S, N) array with the same S seeds and N >= 1 items")
    reps = {t: [] for t in names}
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        seed_counts = _draw_counts(rng, b, S) if resample_seeds else np.ones((b, S))  # (b, S): how often each seed is drawn
        for t in names:
            n = d[t].shape[1]
            item_counts = _draw_counts(rng, b, n)  # (b, N)
            reps[t].append(((seed_counts @ d[t]) * item_counts).sum(axis=1) / (S * n))  # (b,)
    reps = {t: np.concatenate(r) for t, r in reps.items()}

    def summary(estimate, r):
        lo, hi = np.percentile(r, [2.5, 97.5])
        return float(estimate), float(lo), float(hi)

    out = {"tasks": {t: summary(d[t].mean(), reps[t]) for t in names}}
    out["average"] = summary(np.mean([d[t].mean() for t in names]), np.mean([reps[t] for t in names], axis=0))
    out["replicates"] = reps
    return out


def _draw_counts(rng, b, n):
    """b rows of counts of n indices drawn n times with replacement, (b, n)."""
    draws = rng.integers(0, n, size=(b, n)) + n * np.arange(b)[:, None]
    return np.bincount(draws.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)
