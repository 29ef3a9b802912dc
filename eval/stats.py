"""
Statistics on arrays, for the experiment report (eval/report.py): pure functions of numbers,
importing nothing of this project.

  mean_std           mean and sample std (ddof = 1) of the finite values
  paired_bootstrap   paired bootstrap over items x seeds of per-item differences
"""

import math

import numpy as np


def mean_std(values):
    """Mean and sample standard deviation (ddof=1) of the finite values; std is nan below two."""
    a = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if a.size == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else float("nan")


def paired_bootstrap(diffs, n_boot=2000, seed=0, chunk=200):
    """Paired bootstrap over items x seeds. diffs: {task: array (S, N_task)} of per-item
    differences d[s, i] = arm - baseline at seed s on item i (the same S seeds for every task).
    A replicate draws S seeds with replacement, shared by all tasks (one training run serves
    every task), and per task N_task items with replacement; its value is the mean of d over
    the drawn seeds and items, and, for the average, the mean of those over tasks.
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
        seed_counts = _draw_counts(rng, b, S)  # (b, S): how often each seed is drawn
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
