"""
How often the report's star appears when there is no effect (the false-star rate, nominal 5%),
and how often when there is one (power), for the rules of eval/stats.py, in simulated
experiments with discrete item scores. Replaces bench/interval_calibration.py.

The simulated benchmark (a probit item-response model; every number below is a flag):
  - T = 5 tasks of N items each; task t has a base ability mu_t (probit; accuracies ~30-70%),
    item i a difficulty b_i ~ N(0, 1.5^2), drawn afresh in every trial (a new benchmark sample);
  - run (arm, seed) has an ability shift r ~ N(0, 0.03^2) shared by its tasks plus N(0, 0.03^2)
    per task: what another seed changes;
  - run (arm, seed) answers item i correctly when mu_t + r - b_i (+ c_i + shift for the arm)
    + noise > 0, noise ~ N(0, 1) of which a share rho = 0.6 is common to the two arms of a seed
    (same init and data order): the arms disagree on ~15% of items, and with 20-50 items the
    per-seed mean differences tie often;
  - the arm x item effect c_i ~ N(kappa_t, tau^2) (tau = 0.5 in the 'item x arm' rows), kappa_t
    set so that it averages to exactly zero accuracy over the benchmark (all items, all runs):
    on the N items drawn the arms differ, on new items they do not;
  - shift: a true effect, chosen to move the 5-task average by +2 or +5 accuracy points.
Per cell (items x seeds), the rates of: (a) the old rule (the t-interval over per-seed means
excludes 0, the tie case included), (b) the new 'these items' star (eval.stats.seed_test), (c) the
new 'new items' star (eval.stats.item_test), and the exact sign-flip test alone; for task 0
('task') and for the 5-task average ('average'). Also per-run metrics: a continuous one (val CE:
normal per-seed differences) and a discrete one (Spearman rho of a 5-layer profile with depth).

    python bench/stats_calibration.py          # ~4 min on 2 CPU cores; writes bench/results/stats_calibration.json
    python bench/stats_calibration.py --trials 1000 --out /tmp/quick.json    # a quicker look
    python bench/stats_calibration.py --markdown bench/results/stats_calibration.json   # its tables, for the docs

It measures and prints; tests/test_stats.py asserts (on a small version of the same simulation).
"""

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from eval.stats import item_test, seed_test, t_interval  # noqa: E402

MODEL = dict(mus=(0.0, -0.8, -0.3, 0.4, 0.9), item_sd=1.5, run_sd=0.03, run_task_sd=0.03, shared=0.6)
ITEMS, SEEDS = (20, 50, 200, 500), (2, 3, 5, 10)


def _norm_cdf(x):
    return 0.5 * (1 + np.vectorize(math.erf)(np.asarray(x, dtype=np.float64) / math.sqrt(2)))


def latent_var(model, tau=0.0):
    """The variance of the latent score around mu_t over items, runs and noise (probit scale)."""
    return 1 + model["run_sd"] ** 2 + model["run_task_sd"] ** 2 + model["item_sd"] ** 2 + tau ** 2


def kappa(model, tau):
    """(T,) the mean of the arm x item effect that makes its accuracy effect average to zero over
    the benchmark: P(correct) over everything is Phi(mu / sqrt(latent var)) for the baseline and
    Phi((mu + kappa) / sqrt(latent var + tau^2)) for the arm."""
    mus = np.asarray(model["mus"])
    return mus * (math.sqrt(latent_var(model, tau) / latent_var(model)) - 1)


def effect_pp(model, shift):
    """(T,) the true accuracy effect (in points) of a probit shift of the arm, per task."""
    mus, sd = np.asarray(model["mus"]), math.sqrt(latent_var(model))
    return 100 * (_norm_cdf((mus + shift) / sd) - _norm_cdf(mus / sd))


def shift_for(model, target_pp):
    """The probit shift whose 5-task average accuracy effect is target_pp points (bisection)."""
    lo, hi = 0.0, 5.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if effect_pp(model, mid).mean() < target_pp else (lo, mid)
    return (lo + hi) / 2


def simulate(rng, trials, S, N, model=MODEL, tau=0.0, shift=0.0):
    """Per-item differences arm - baseline of `trials` simulated experiments: a list over the T
    tasks of (trials, S, N) float32 arrays in {-1, 0, 1}."""
    T = len(model["mus"])
    mus = np.asarray(model["mus"])
    kap = kappa(model, tau)
    a, b = math.sqrt(model["shared"]), math.sqrt(1 - model["shared"])
    run = {arm: rng.normal(0, model["run_sd"], (trials, S, 1)) for arm in (0, 1)}  # shared by the tasks of a run
    out = []
    for t in range(T):
        base = (mus[t] - rng.normal(0, model["item_sd"], (trials, 1, N))).astype(np.float32)  # (trials, 1, N)
        arm_item = (kap[t] + tau * rng.standard_normal((trials, 1, N))).astype(np.float32) if tau else 0.0
        common = a * rng.standard_normal((trials, S, N), dtype=np.float32)  # the two arms of a seed share it
        y = []
        for arm in (0, 1):
            r = (run[arm] + rng.normal(0, model["run_task_sd"], (trials, S, 1))).astype(np.float32)
            z = base + r + common + b * rng.standard_normal((trials, S, N), dtype=np.float32)
            if arm == 1:
                z += arm_item + np.float32(shift)
            y.append(z > 0)
        out.append(y[1].astype(np.float32) - y[0].astype(np.float32))
    return out


def star_counts(diffs, level=0.95):
    """{'task': {rule: count}, 'average': {...}} of starred trials: the old rule, the new these-items
    and new-items stars, the sign-flip test alone, Satterthwaite's interval alone (what the
    new-items interval would be without its these-items floor), and the zero-spread nonzero
    differences."""
    out = {}
    for scope, tasks in (("task", diffs[:1]), ("average", diffs)):
        r = item_test(tasks, level)
        means = np.mean([d.mean(-1) for d in tasks], axis=0)  # (trials, S)
        est, lo, hi = t_interval(means, level)
        these = r["these_items"]
        out[scope] = {"old_t": int(((lo > 1e-9) | (hi < -1e-9)).sum()),
                      "these_items": int(these["star"].sum()),
                      "new_items": int(r["new_items"]["star"].sum()),
                      "sign_flip": int((these["p_exact"] <= 1 - level).sum()),
                      "satterthwaite_alone": int((r["new_items"]["p_satterthwaite"] <= 1 - level).sum()),
                      "ties": int((~these["spread"] & (est != 0)).sum())}
    return out


def run_cell(seed, trials, S, N, model, tau=0.0, shift=0.0, budget=3_000_000):
    """Rates over `trials` experiments, simulated in chunks of at most `budget` item scores."""
    rng = np.random.default_rng(seed)
    chunk = max(1, budget // (len(model["mus"]) * S * N))
    total = None
    for start in range(0, trials, chunk):
        c = star_counts(simulate(rng, min(chunk, trials - start), S, N, model, tau, shift))
        total = c if total is None else {k: {r: total[k][r] + c[k][r] for r in c[k]} for k in c}
    return {k: {r: n / trials for r, n in v.items()} for k, v in total.items()}


def spearman_with_depth(x):
    """Spearman rho of each row's profile (..., L) with the layer index (no ties in x)."""
    L = x.shape[-1]
    ranks = x.argsort(-1).argsort(-1)
    return 1 - 6 * ((ranks - np.arange(L)) ** 2).sum(-1) / (L * (L * L - 1))


def scalar_cell(seed, trials, S, kind, level=0.95, shift=0.0):
    """Per-run metrics: 'continuous' (per-seed differences ~ N(shift, 1), like val CE) or
    'spearman5' (rho of a 5-layer profile slope * layer + seed noise + run noise, per arm)."""
    rng = np.random.default_rng(seed)
    if kind == "continuous":
        v = rng.normal(shift, 1.0, (trials, S))
    else:
        base = 0.7 * np.arange(5) + 0.5 * rng.standard_normal((trials, S, 5))  # what the two arms of a seed share
        v = (spearman_with_depth(base + rng.standard_normal((trials, S, 5)) + shift * np.arange(5))
             - spearman_with_depth(base + rng.standard_normal((trials, S, 5))))
    est, lo, hi = t_interval(v, level)
    r = seed_test(v, level)
    return {"old_t": float(((lo > 1e-9) | (hi < -1e-9)).mean()), "these_runs": float(r["star"].mean()),
            "sign_flip": float((r["p_exact"] <= 1 - level).mean()), "ties": float((~r["spread"] & (est != 0)).mean())}


def pct(x):
    return f"{100 * x:5.1f}"


def markdown(result):
    """The compact tables of docs/statistics.md from a result JSON: false stars without and with the
    arm x item effect, power, and the per-run metrics (rates in %)."""
    cells = result["cells"]
    f = lambda x: f"{100 * x:.1f}"  # noqa: E731
    out = []
    for case, title in (("null", "No effect, no arm x item effect: false stars (%)"),
                        ("null, item x arm", "No effect on the benchmark, arm x item effect: false stars for the claim "
                                             "'new items' (%)")):
        out += [f"**{title}**", "", "| items | seeds | task: old | these items | new items | average: old | these items "
                "| new items | ties (task) |", "|---|---|---|---|---|---|---|---|---|"]
        for c in (c for c in cells if c["case"] == case):
            t, a = c["task"], c["average"]
            out.append(f"| {c['items']} | {c['seeds']} | {f(t['old_t'])} | {f(t['these_items'])} | {f(t['new_items'])} | "
                       f"{f(a['old_t'])} | {f(a['these_items'])} | {f(a['new_items'])} | {f(t['ties'])} |")
        out.append("")
    effects = sorted({c["case"] for c in cells if not c["case"].startswith("null")}, key=lambda x: float(x.split()[0]))
    if effects:
        out += ["**Power (%): stars under a true effect, each cell old rule / these items / new items** (the "
                "sign-flip test alone: 0 below 6 seeds)", "",
                "| items | seeds | " + " | ".join(f"{e}, {s}" for e in effects for s in ("task", "average")) + " |",
                "|---|---|" + "---|" * (2 * len(effects))]
        for N in ITEMS:
            for S in SEEDS:
                row = [c for e in effects for c in cells if c["case"] == e and c["items"] == N and c["seeds"] == S]
                three = [" / ".join(f(c[s][r]) for r in ("old_t", "these_items", "new_items"))
                         for c in row for s in ("task", "average")]
                out.append(f"| {N} | {S} | " + " | ".join(three) + " |")
        out.append("")
    out += ["**Per-run metrics: false stars (%)**", "", "| metric | seeds | old t | these runs | sign-flip | ties |",
            "|---|---|---|---|---|---|"]
    out += [f"| {c['metric']} | {c['seeds']} | {f(c['old_t'])} | {f(c['these_runs'])} | {f(c['sign_flip'])} | "
            f"{f(c['ties'])} |" for c in result["scalars"]]
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--markdown", metavar="JSON", help="print the tables of a saved result as markdown, and exit")
    p.add_argument("--trials", type=int, default=10000, help="experiments per cell (items x seeds)")
    p.add_argument("--scalar-trials", type=int, default=20000)
    p.add_argument("--tau", type=float, default=0.5, help="sd of the arm x item effect (probit) in its rows")
    p.add_argument("--effects", type=float, nargs="*", default=[2.0, 5.0], help="true effects (5-task average, points)")
    p.add_argument("--shared", type=float, default=MODEL["shared"],
                   help="share of item noise common to the arms of a seed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                 "stats_calibration.json"))
    args = p.parse_args()
    if args.markdown:
        with open(args.markdown) as f:
            print(markdown(json.load(f)))
        return
    model = {**MODEL, "shared": args.shared}
    t0 = time.time()
    se = math.sqrt(0.05 * 0.95 / args.trials)
    print(f"{args.trials} experiments per cell (Monte Carlo standard error of a 5% rate: {100 * se:.2f} points); "
          f"5 tasks; star rates in %, nominal 5%")
    cols = ("old_t", "these_items", "new_items", "sign_flip", "ties")
    head = "  ".join(f"{'[' + s + '] old these  new exact ties':>34}" for s in ("task", "average"))
    rows, cells = [], [("null", 0.0, 0.0), ("null, item x arm", args.tau, 0.0)]
    cells += [(f"+{e:g} pts", 0.0, e) for e in args.effects]
    for k, (label, tau, eff) in enumerate(cells):
        shift = shift_for(model, eff) if eff else 0.0
        print(f"\n{label}: tau={tau}, shift={shift:.4f} (true effect: task {effect_pp(model, shift)[0]:.2f}, "
              f"average {effect_pp(model, shift).mean():.2f} points)")
        print(f"{'items':>5} {'seeds':>5}  {head}")
        for N in ITEMS:
            for S in SEEDS:
                r = run_cell([args.seed, k, N, S], args.trials, S, N, model, tau, shift)
                rows.append({"case": label, "tau": tau, "shift": shift, "items": N, "seeds": S,
                             "effect_task_pts": float(effect_pp(model, shift)[0]),
                             "effect_average_pts": float(effect_pp(model, shift).mean()), **r})
                line = "  ".join(f"{'':>9}" + " ".join(pct(r[s][c]) for c in cols) for s in ("task", "average"))
                print(f"{N:>5} {S:>5}  {line}", flush=True)
    scalars = []
    print(f"\nper-run metrics, {args.scalar_trials} experiments per cell: old t, 'these runs' star, sign-flip, ties (%)")
    for kind in ("continuous", "spearman5"):
        for S in SEEDS:
            r = scalar_cell([args.seed, 99, S, kind == "spearman5"], args.scalar_trials, S, kind)
            scalars.append({"metric": kind, "seeds": S, **r})
            print(f"{kind:>10} S={S:>2}  " + " ".join(pct(r[c]) for c in ("old_t", "these_runs", "sign_flip", "ties")))
    nulls = [r for r in rows if r["case"].startswith("null")]
    top = lambda rule, rs: max(r[s][rule] for r in rs for s in ("task", "average"))  # noqa: E731
    plain = [r for r in nulls if r["tau"] == 0]
    worst = {"these_items (no item x arm effect)": top("these_items", plain),
             "new_items (with and without)": top("new_items", nulls),
             "satterthwaite_alone (with and without)": top("satterthwaite_alone", nulls),
             "old_t (no item x arm effect)": top("old_t", plain),
             "these_runs (per-run metrics)": max(r["these_runs"] for r in scalars)}
    print("\nlargest false-star rate: " + ", ".join(f"{k} {pct(v).strip()}%" for k, v in worst.items()))
    seconds = time.time() - t0
    print(f"{seconds:.0f} s")
    result = {"command": "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]),
              "numpy": np.__version__, "python": platform.python_version(), "platform": platform.platform(),
              "cpus": os.cpu_count(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "seconds": round(seconds, 1), "trials_per_cell": args.trials, "scalar_trials": args.scalar_trials,
              "mc_se_of_5pct": se, "level": 0.95, "model": {**model, "tau": args.tau, "tasks": len(model["mus"])},
              "rates": "fractions of experiments starred; 'task' is task 0 (accuracy ~50%), 'average' the 5-task average",
              "cells": rows, "scalars": scalars, "largest_false_star_rate": worst}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
