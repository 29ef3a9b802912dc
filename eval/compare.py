"""
The comparisons of an experiment, from its finished runs (eval/runs.py): per arm the mean and std
over seeds, and every arm against its baseline, paired by seed, as eval/stats.py's records (estimate,
interval, p-values, star and why). docs/statistics.md says what each covers.

Multiplicity: the experiment's `primary` comparisons (by default val CE, the benchmark average and
the last-layer mean cosine, for every arm against its baseline) form one family whose stars are
Holm-corrected across arms and metrics; every other comparison in the report is exploratory, its
star decided by its Benjamini-Hochberg q-value over all of them. The benchmark average's primary
record is the "new items" one (the claim that an arm helps on the benchmark, not only on the items
drawn).
"""

import json
import math

import numpy as np

from eval.runs import SCALARS
from eval.stats import adjust, compare_items, compare_runs, mean_std, paired_bootstrap, spearman

PRIMARY_CHOICES = (*SCALARS, "avg_acc")
STRENGTH = ("strength/push", "strength/coherence", "strength/step_cos", "strength/push_ratio",
            "strength/angular_push", "strength/angular_step_cos")


def finite(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def baseline_of(cfg, arm):
    """The arm `arm` is compared with: its entry in `baselines`, else the experiment's `baseline`."""
    return cfg.get("baselines", {}).get(arm, cfg["baseline"])


def summarize(meta, runs, which):
    """Per-arm means and stds over seeds, and paired differences with the baseline, for one
    checkpoint choice ('final' or 'best'). Every difference pairs an arm's run with the baseline's
    run of the same seed, over the seeds both have ('seeds' of each delta). Per-run figures get a
    compare_runs record; benchmark accuracies compare_items records per task and for their average
    ('these_items' and 'new_items'), and the within-run (item) bootstrap interval ('acc_items',
    'avg_acc_items', never starred). The benchmark average is over the tasks every finished run
    scored ('common_units'), for the arms' means and for the differences alike."""
    cfg = meta["config"]
    finished = [run for arm_runs in runs.values() for run in arm_runs.values()]
    units = []
    for run in finished:
        units += [u for u in run[which]["acc"] if u not in units]
    common = [u for u in units if all(u in run[which]["acc"] for run in finished)]
    out = {"units": units, "common_units": common, "arms": {}, "deltas": {}, "chance": {}, "n_items": {}}
    for run in runs.get(cfg["baseline"], {}).values():
        out["chance"] = run[which]["chance"]
        out["n_items"] = {u: len(v) for u, v in run[which]["items"].items()}
        break
    out["chance_units"] = [u for u in common if out["chance"].get(u) is not None]

    def average(run, over):  # the run's mean accuracy over the tasks `over`
        return float(np.mean([run[which]["acc"][u] for u in over])) if over else None
    for arm in cfg["arms"]:
        arm_runs = runs.get(arm, {})
        seeds = sorted(arm_runs)
        pick = lambda f: mean_std([f(arm_runs[s]) for s in seeds])  # noqa: E731
        depth = max([len(arm_runs[s][which]["probe"]["layers"]) for s in seeds], default=0)
        out["arms"][arm] = {
            "seeds": seeds,
            **{key: pick(lambda r, k=key: r[which][k]) for key in SCALARS},
            "avg_acc": pick(lambda r: average(r, common)),
            "avg_acc_chance_units": pick(lambda r: average(r, out["chance_units"])),
            "mean_cos_layers": [mean_std([arm_runs[s][which]["probe"]["layers"][i]["mean_cos"] for s in seeds
                                          if i < len(arm_runs[s][which]["probe"]["layers"])]) for i in range(depth)],
            "acc": {u: mean_std([arm_runs[s][which]["acc"].get(u) for s in seeds]) for u in units},
            "per_seed": {s: {**{key: arm_runs[s][which][key] for key in SCALARS}, "avg_acc": average(arm_runs[s], common),
                             "acc": arm_runs[s][which]["acc"],
                             "iter": arm_runs[s]["final_iter"] if which == "final" else arm_runs[s].get("best_iter")}
                         for s in seeds},
        }
        ref = baseline_of(cfg, arm)
        common_seeds = sorted(set(arm_runs) & set(runs.get(ref, {})))
        if arm == ref or not common_seeds:
            continue
        delta = {"seeds": common_seeds, "vs": ref}
        for key in SCALARS:
            pairs = [(s, arm_runs[s][which][key] - runs[ref][s][which][key]) for s in common_seeds
                     if finite(arm_runs[s][which][key]) and finite(runs[ref][s][which][key])]
            if pairs:
                delta[key] = compare_runs([d for _, d in pairs])
                delta[key + "_seeds"] = [s for s, _ in pairs]
        diffs, n_items = {}, {}
        for u in common:
            # pair by (seed, item): only items scored in every run of both arms
            keys = set.intersection(*[set(runs[a][s][which]["items"].get(u, {})) for a in (arm, ref)
                                      for s in common_seeds])
            if keys:
                keys = sorted(keys)
                diffs[u] = np.array([[runs[arm][s][which]["items"][u][k] - runs[ref][s][which]["items"][u][k]
                                      for k in keys] for s in common_seeds])  # (S, N)
                n_items[u] = len(keys)
        if diffs:
            seeds_ci = compare_items(diffs)
            items_ci = paired_bootstrap(diffs, cfg["n_boot"], cfg["boot_seed"], resample_seeds=False)
            delta.update(acc=seeds_ci["tasks"], avg_acc=seeds_ci["average"], n_items=n_items,
                         acc_items=items_ci["tasks"], avg_acc_items=items_ci["average"])
        out["deltas"][arm] = delta
    out["effect_differences"] = effect_differences(cfg, runs, which)
    adjust_families(out, cfg.get("primary", ["val_loss", "avg_acc", "mean_cos_last"]))
    return out


def adjust_families(summary, primary):
    """The multiplicity correction, in place: Holm over the primary records (each arm's `primary`
    metrics; the benchmark average's 'new_items' record), Benjamini-Hochberg over all the others."""
    slots = []  # (holder dict, key, is_primary) for every record of the summary
    for arm, delta in summary["deltas"].items():
        for key in SCALARS:
            if key in delta:
                slots.append((delta, key, key in primary))
        if "avg_acc" in delta:
            slots.append((delta["avg_acc"], "new_items", "avg_acc" in primary))
            slots.append((delta["avg_acc"], "these_items", False))
            for task in delta["acc"].values():
                slots += [(task, "these_items", False), (task, "new_items", False)]
    for row in summary["effect_differences"].get("arms", {}).values():
        slots += [(row, key, False) for key in SCALARS if key in row]
    for method, want in (("holm", True), ("bh", False)):
        chosen = [(holder, key) for holder, key, is_primary in slots if is_primary == want]
        for (holder, key), record in zip(chosen, adjust([h[k] for h, k in chosen], method)):
            holder[key] = record
    summary["primary"] = list(primary)


def effect_differences(cfg, runs, which):
    """With `baselines`: does an arm's effect depend on where it is applied? Each arm with its own
    baseline has a per-seed effect e(s) = arm(s) - its baseline(s); the reference effect is that of the
    arm whose own baseline is the experiment's `baseline` (e.g. angular vs CE at the widest MLP). For
    every other such arm: e(s) - e_ref(s), over the seeds all four runs have, as compare_runs records.
    {} without baselines or without exactly one reference arm."""
    own = cfg.get("baselines") or {}
    refs = [a for a, b in own.items() if b == cfg["baseline"]]
    if len(refs) != 1:
        return {}
    ref = refs[0]
    out = {"reference": ref, "arms": {}}
    for arm, base in own.items():
        if arm == ref:
            continue
        four = (arm, base, ref, cfg["baseline"])
        seeds = sorted(set.intersection(*[set(runs.get(a, {})) for a in four]))
        row = {"vs": base, "seeds": seeds}
        for key in SCALARS:
            vals = [[runs[a][s][which][key] for a in four] for s in seeds]
            vals = [v for v in vals if all(finite(x) for x in v)]
            if vals:
                row[key] = compare_runs([(v[0] - v[1]) - (v[2] - v[3]) for v in vals])
        out["arms"][arm] = row
    return out


def dose_response(meta, runs, summary):
    """Arms that differ only in dispersion_weight, by lambda, with the baseline at lambda = 0 when
    it differs from them only by having no auxiliary loss. Groups with at least two lambdas > 0."""
    arms = meta["arms"]
    ignore = ("dispersion_weight", "dispersion")
    groups = {}
    for name, spec in arms.items():
        eff = spec["effective"]
        if eff["dispersion"] == "none":
            continue
        key = json.dumps({k: v for k, v in eff.items() if k != "dispersion_weight"}, sort_keys=True)
        groups.setdefault(key, []).append((eff["dispersion_weight"], name))
    base = meta["config"]["baseline"]
    base_rest = {k: v for k, v in arms[base]["effective"].items() if k not in ignore}
    out = []
    for members in groups.values():
        if len({w for w, _ in members}) < 2:
            continue
        members = sorted(members)
        rest = {k: v for k, v in arms[members[0][1]]["effective"].items() if k not in ignore}
        if arms[base]["effective"]["dispersion"] == "none" and rest == base_rest:
            members = [(0.0, base)] + members
        points = []
        for weight, name in members:
            s = summary["arms"][name]
            points.append({"arm": name, "lambda": weight, "seeds": len(s["seeds"]), "mean_cos_last": s["mean_cos_last"],
                           "spearman": s["spearman"], "avg_acc": s["avg_acc"], "val_loss": s["val_loss"]})
        variant = arms[members[-1][1]]["effective"]["dispersion"]
        done = [p for p in points if p["seeds"]]
        trend = {k: spearman([p["lambda"] for p in done], [p[k][0] for p in done]) if len(done) >= 3 else None
                 for k in ("mean_cos_last", "spearman", "avg_acc", "val_loss")}
        out.append({"variant": variant, "points": points, "rank_corr_with_lambda": trend})
    return out


def strength(runs):
    """{arm: {figure: (mean, std) over seeds}}: each run's strength/* figures (train.py's
    strength_window) averaged over its windows, for the arms whose runs logged them."""
    out = {}
    for arm, arm_runs in runs.items():
        per_seed = {}
        for seed, run in arm_runs.items():
            windows = [r for r in run["metrics"] if "strength/push" in r]
            for key in STRENGTH:
                values = [w[key] for w in windows if finite(w.get(key))]
                if values:
                    per_seed.setdefault(key, []).append(float(np.mean(values)))
        if per_seed:
            out[arm] = {key: mean_std(values) for key, values in per_seed.items()}
            out[arm]["windows"] = len([r for r in next(iter(arm_runs.values()))["metrics"] if "strength/push" in r])
    return out
