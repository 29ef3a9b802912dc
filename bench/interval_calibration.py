"""
How often the report's 95% intervals exclude 0 when there is no effect (the false-positive rate),
for the t-interval over seeds (eval/stats.seed_intervals, what the report stars) and for the old
bootstrap over items x seeds. Null experiments as in tests/test_stats.py: two arms with no true
difference, each (arm, seed) run with a run-level accuracy shift ~ N(0, sigma^2) shared by all
tasks, `tasks` tasks of `items` items, arms disagreeing on 2q of the items.

    python bench/interval_calibration.py                      # ~1 min on 2 shared CPU cores
    python bench/interval_calibration.py --boot-trials 1000   # tighter bootstrap rates, slower

It measures and prints; it asserts nothing (tests/test_stats.py does).
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from eval.stats import paired_bootstrap, t_interval  # noqa: E402
from test_stats import simulate_null  # noqa: E402  (the one definition of the simulated null)


def item_arrays(n_plus, n_minus, n_items):
    """{task: (S, N)} per-item differences of one trial from its counts of +1 and -1 items."""
    S, T = n_plus.shape
    out = {}
    for t in range(T):
        d = np.zeros((S, n_items))
        for s in range(S):
            d[s, :n_plus[s, t]] = 1.0
            d[s, n_plus[s, t]:n_plus[s, t] + n_minus[s, t]] = -1.0
        out[t] = d
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", type=int, default=5)
    p.add_argument("--items", type=int, default=500)
    p.add_argument("--t-trials", type=int, default=20000)
    p.add_argument("--boot-trials", type=int, default=300)
    p.add_argument("--n-boot", type=int, default=400)
    args = p.parse_args()
    print(f"{args.tasks} tasks x {args.items} items; FPR of the average's 95% interval; "
          f"t: {args.t_trials} trials, bootstrap: {args.boot_trials} trials x {args.n_boot} replicates")
    print(f"{'q':>5} {'sigma':>6} {'S':>2}  {'t over seeds':>12}  {'bootstrap items x seeds':>23}")
    for q in (0.02, 0.1):
        for sigma in (0.005, 0.01):
            for S in (2, 3, 5):
                rng = np.random.default_rng(100 + S)
                n_plus, n_minus = simulate_null(rng, args.t_trials, S, args.tasks, args.items, sigma, q)
                _, lo, hi = t_interval(((n_plus - n_minus) / args.items).mean(axis=2))  # (trials, S) seed means
                fpr_t = np.mean((lo > 0) | (hi < 0))
                rng = np.random.default_rng(S)
                n_plus, n_minus = simulate_null(rng, args.boot_trials, S, args.tasks, args.items, sigma, q)
                misses = 0
                for k in range(args.boot_trials):
                    _, lo, hi = paired_bootstrap(item_arrays(n_plus[k], n_minus[k], args.items), args.n_boot, seed=k)["average"]
                    misses += lo > 0 or hi < 0
                print(f"{q:>5} {sigma:>6} {S:>2}  {100 * fpr_t:>11.1f}%  {100 * misses / args.boot_trials:>22.1f}%")


if __name__ == "__main__":
    main()
