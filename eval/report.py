"""
The experiment report: read the finished runs of an experiment folder (experiment.py's grid of
arms x seeds) and write report.md, report.json and the figures beside them.

    python -m eval.report out-experiment-cpu          # same as: python experiment.py report out-experiment-cpu

What it reads, per run EXP/<arm>/seed<S>/: done.json (written last by the runner), metrics.jsonl
(train.py's log), eval/items.jsonl and eval/results.json (eval/benchmarks.py), condensation/
condensation.json (eval/condensation.py), and the same for the checkpoint selected by val loss
(eval_best/, condensation_best/). The arms and seeds are those of EXP/experiment.json; any other
folder is ignored.
"""

import json
import math
import os
import sys

import numpy as np

from errors import MissingFileError, run_cli
from eval.condensation import spearman
from eval.plots import draw_figures
from eval.runs import SCALARS, collect_runs, read_base_run, unit_of
from eval.stats import mean_std, paired_bootstrap, seed_intervals, t_interval
from files import atomic, read_json, write_json


# ---------------------------------------------------------------------- the report

def _finite(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def baseline_of(cfg, arm):
    """The arm `arm` is compared with: its entry in `baselines`, else the experiment's `baseline`."""
    return cfg.get("baselines", {}).get(arm, cfg["baseline"])


def summarize(meta, runs, which):
    """Per-arm means and stds over seeds, and paired differences with the baseline, for one
    checkpoint choice ('final' or 'best'). Every difference pairs an arm's run with the
    baseline's run of the same seed, over the seeds both have ('seeds' of each delta), and its
    95% interval is the t-interval over those per-seed differences (eval/stats.seed_intervals):
    none with one seed. Accuracy deltas also carry the within-run (item) bootstrap interval
    ('acc_items', 'avg_acc_items'), which holds the runs fixed and resamples items only."""
    cfg = meta["config"]
    base = cfg["baseline"]
    units = []
    for arm_runs in runs.values():
        for run in arm_runs.values():
            units += [u for u in run[which]["acc"] if u not in units]
    out = {"units": units, "arms": {}, "deltas": {}, "chance": {}, "n_items": {}}
    for run in runs.get(base, {}).values():
        out["chance"] = run[which]["chance"]
        out["n_items"] = {u: len(v) for u, v in run[which]["items"].items()}
        break
    # the tasks with a chance level: their average is shown beside the same tasks' chance average
    out["chance_units"] = [u for u in units if out["chance"].get(u) is not None]
    chance_avg = lambda r: (float(np.mean([r[which]["acc"][u] for u in out["chance_units"]]))  # noqa: E731
                            if out["chance_units"] and all(u in r[which]["acc"] for u in out["chance_units"]) else None)
    for arm in cfg["arms"]:
        arm_runs = runs.get(arm, {})
        seeds = sorted(arm_runs)
        pick = lambda f: mean_std([f(arm_runs[s]) for s in seeds])  # noqa: E731
        depth = max([len(arm_runs[s][which]["probe"]["layers"]) for s in seeds], default=0)
        out["arms"][arm] = {
            "seeds": seeds,
            **{key: pick(lambda r, k=key: r[which][k]) for key in SCALARS},
            "avg_acc": pick(lambda r: r[which]["avg_acc"]),
            "avg_acc_chance_units": pick(chance_avg),
            "mean_cos_layers": [mean_std([arm_runs[s][which]["probe"]["layers"][i]["mean_cos"] for s in seeds
                                          if i < len(arm_runs[s][which]["probe"]["layers"])]) for i in range(depth)],
            "acc": {u: mean_std([arm_runs[s][which]["acc"].get(u) for s in seeds]) for u in units},
            "per_seed": {s: {**{key: arm_runs[s][which][key] for key in SCALARS}, "avg_acc": arm_runs[s][which]["avg_acc"],
                             "acc": arm_runs[s][which]["acc"],
                             "iter": arm_runs[s]["final_iter"] if which == "final" else arm_runs[s].get("best_iter")}
                         for s in seeds},
        }
        ref = baseline_of(cfg, arm)
        if arm == ref:
            continue
        common = sorted(set(arm_runs) & set(runs.get(ref, {})))
        if not common:
            continue
        delta = {"seeds": common, "vs": ref}
        for key in SCALARS:
            pairs = [(s, arm_runs[s][which][key] - runs[ref][s][which][key]) for s in common
                     if _finite(arm_runs[s][which][key]) and _finite(runs[ref][s][which][key])]
            if pairs:
                delta[key] = tuple(float(x) for x in t_interval([d for _, d in pairs]))
                delta[key + "_seeds"] = [s for s, _ in pairs]
        diffs, n_items = {}, {}
        for u in units:
            # pair by (seed, item): only items scored in every run of both arms
            keys = set.intersection(*[set(r[which]["items"].get(u, {})) for arm_ in (arm, ref)
                                      for r in (runs[arm_][s] for s in common)])
            if not keys:
                continue
            keys = sorted(keys)
            diffs[u] = np.array([[runs[arm][s][which]["items"][u][k] - runs[ref][s][which]["items"][u][k]
                                  for k in keys] for s in common])  # (S, N)
            n_items[u] = len(keys)
        if diffs:
            seeds_ci = seed_intervals(diffs)
            items_ci = paired_bootstrap(diffs, cfg["n_boot"], cfg["boot_seed"], resample_seeds=False)
            delta.update(acc=seeds_ci["tasks"], avg_acc=seeds_ci["average"], n_items=n_items,
                         acc_items=items_ci["tasks"], avg_acc_items=items_ci["average"])
        out["deltas"][arm] = delta
    out["effect_differences"] = effect_differences(cfg, runs, which)
    return out


def effect_differences(cfg, runs, which):
    """With `baselines`: does an arm's effect depend on where it is applied? Each arm with its own
    baseline has a per-seed effect e(s) = arm(s) − its baseline(s); the reference effect is that
    of the arm whose own baseline is the experiment's `baseline` (e.g. angular vs CE at the widest
    MLP). For every other such arm: e(s) − e_ref(s), over the seeds all four runs have, with the
    t-interval over seeds. {} without baselines or without exactly one reference arm."""
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
            vals = [v for v in vals if all(_finite(x) for x in v)]
            if vals:
                row[key] = tuple(float(x) for x in t_interval([(v[0] - v[1]) - (v[2] - v[3]) for v in vals]))
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


def _pm(ms, scale=1.0, digits=1, signed=False):
    m, s = ms
    if m is None or not math.isfinite(m):
        return "—"
    text = f"{m * scale:+.{digits}f}" if signed else f"{m * scale:.{digits}f}"
    return text + (f" ± {s * scale:.{digits}f}" if s is not None and math.isfinite(s) else "")


def _ci(est, scale=100.0, digits=1, star=True):
    """'+1.2 [-0.3, +2.7]' with ' *' where the interval excludes 0 (star=False: never); with one
    seed (no interval) the estimate alone, and no star."""
    if est is None:
        return "—"
    e, lo, hi = est
    if not (_finite(lo) and _finite(hi)):
        return f"{e * scale:+.{digits}f} (1 seed: no interval)"
    mark = " *" if star and (lo > 1e-9 or hi < -1e-9) else ""  # the tolerance: rounding noise is no difference
    return f"{e * scale:+.{digits}f} [{lo * scale:+.{digits}f}, {hi * scale:+.{digits}f}]{mark}"


def _limits_text(cfg, limits):
    """'limit 20 per task (lambada_openai 500, mmlu 5 per subject)': the documents scored per task."""
    default = cfg["eval_limit"]
    text = f"limit {default} per task" if default else "full sets"
    special = {}
    for key, limit in cfg.get("eval_limits", {}).items():
        special[key] = "all" if limit is None else (f"{limit} per subject" if key == "mmlu" else str(limit))
    if not special and limits:  # an older experiment.json: its per-task limits, where they differ
        special = {k: str(v) for k, v in limits.items() if v != default}
    return text + (" (" + ", ".join(f"{k} {v}" for k, v in special.items()) + ")" if special else "")


def _seeds_text(seeds):
    return ", ".join(str(s) for s in seeds) if seeds else "—"


def _settings_text(settings):
    return ", ".join(f"{k}={v}" for k, v in settings.items()) or "(base only)"


def _markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _at_chance(summary, unit):
    """Whether every arm's mean accuracy on a task lies within 2 binomial standard errors of its
    chance level (None where chance is not defined)."""
    c, n = summary["chance"].get(unit), summary["n_items"].get(unit)
    if c is None or not n:
        return None
    band = 2 * math.sqrt(c * (1 - c) / n)
    accs = [s["acc"][unit][0] for s in summary["arms"].values() if s["seeds"]]
    return all(_finite(a) and abs(a - c) <= band for a in accs)


def _checkpoint_section(meta, summary, title, which):
    cfg = meta["config"]
    base = cfg["baseline"]
    arms = summary["arms"]
    deltas = summary["deltas"]
    lines = [f"## {title}", ""]
    lines.append("Mean ± std over seeds (std with ddof = 1). Δ columns: arm − baseline, each run paired with the "
                 "baseline's run of the same seed, over the seeds both have (the `Δ seeds` column); 95% interval: "
                 "the t-interval over those per-seed differences (df = seeds − 1); * marks an interval that "
                 "excludes 0. One seed gives no interval and no star.")
    lines.append("")

    per_arm = bool(cfg.get("baselines"))  # arms with their own baselines: a column says which

    def delta_cell(arm, key, scale=1.0, digits=3):
        return "" if arm == baseline_of(cfg, arm) else _ci(deltas.get(arm, {}).get(key), scale, digits)

    def delta_seeds(arm):
        if arm == baseline_of(cfg, arm):
            return ""
        text = _seeds_text(deltas.get(arm, {}).get("seeds"))
        return f"vs {baseline_of(cfg, arm)}; {text}" if per_arm else text

    rows = [[f"**{arm}**" if arm == base else arm, _seeds_text(s["seeds"]), _pm(s["val_loss"], digits=3),
             delta_cell(arm, "val_loss"), _pm(s["mean_cos_last"], digits=3), delta_cell(arm, "mean_cos_last"),
             _pm(s["spearman"], digits=2), delta_cell(arm, "spearman", digits=2), _pm(s["avg_acc"], 100.0),
             delta_cell(arm, "avg_acc", 100.0, 1), delta_seeds(arm)] for arm, s in arms.items()]
    val_name = "val CE" if which == "final" else "best val CE"
    lines.append(_markdown_table(["arm", "seeds", val_name, f"Δ {val_name} [95% CI]", "last-layer mean_cos",
                                  "Δ mean_cos [95% CI]", "Spearman ρ", "Δ ρ [95% CI]", "avg acc (%)",
                                  "Δ avg acc (pp) [95% CI]" if per_arm else f"Δ avg acc vs {base} (pp) [95% CI]",
                                  "Δ vs; seeds" if per_arm else "Δ seeds"], rows))
    lines.append("")

    # language modelling: what moves in a model too small for the benchmarks
    lines += ["### Language modelling", "",
              "Held-out val CE (train.py's `val_loss`, nats/token, at this checkpoint), WikiText-103 word perplexity "
              "(task `wikitext`), LAMBADA (OpenAI) perplexity of the last word and its accuracy (greedy). "
              "Mean ± std over seeds; Δ as above.", ""]
    lm = [("val_loss", 1.0, 3), ("wikitext_word_perplexity", 1.0, 1), ("lambada_perplexity", 1.0, 1),
          ("lambada_acc", 100.0, 1)]
    rows = []
    for arm, s in arms.items():
        row = [f"**{arm}**" if arm == base else arm]
        for key, scale, digits in lm:
            scored = _finite(s[key][0])
            row += [_pm(s[key], scale, digits) if scored else "not scored",
                    delta_cell(arm, key, scale, digits) if scored else ""]
        rows.append(row + [delta_seeds(arm)])
    base_run = summary.get("base_run") if which == "final" else None
    if base_run:  # where every arm started from
        row = ["base (before mid-training)"]
        for key, scale, digits in lm:
            row += [_pm((base_run[key], None), scale, digits) if _finite(base_run[key]) else "not scored", ""]
        rows.append(row + [""])
    header = ["arm"]
    for key, _, _ in lm:
        name = SCALARS[key][0] + (" (%)" if key == "lambada_acc" else "")
        header += [name, f"Δ {name} [95% CI]"]
    lines.append(_markdown_table(header + ["Δ vs; seeds" if per_arm else "Δ seeds"], rows))
    lines.append("")
    if not any(_finite(s["wikitext_word_perplexity"][0]) for s in arms.values()):
        lines += ["WikiText-103 word perplexity was not scored: add `wikitext` to the experiment's `tasks`.", ""]

    depth = max(len(s["mean_cos_layers"]) for s in arms.values())
    if depth:
        lines.append("Condensation per hidden state (0 = embedding output, last = after ln_f): the probe's `mean_cos`, "
                     "the mean of all T × T token cosines of a sequence, the diagonal (1) included "
                     "(eval/condensation.py), mean over seeds; Spearman ρ of mean_cos against depth. "
                     "(train.py's log `disp/layer{i}/pair_cos` is another quantity: it leaves the diagonal out.)")
        lines.append("")
        rows = [[arm] + [f"{s['mean_cos_layers'][i][0]:.3f}" if i < len(s["mean_cos_layers"]) else "—" for i in range(depth)]
                + [_pm(s["spearman"], digits=2), delta_cell(arm, "spearman", digits=2)]
                for arm, s in arms.items() if s["seeds"]]
        if base_run:
            layers = base_run["probe"]["layers"]
            rows.append(["base (before mid-training)"] + [f"{layers[i]['mean_cos']:.3f}" if i < len(layers) else "—"
                                                          for i in range(depth)]
                        + [_pm((base_run["spearman"], None), digits=2), ""])
        lines.append(_markdown_table(["arm"] + [str(i) for i in range(depth)] + ["Spearman ρ", "Δ ρ [95% CI]"], rows))
        lines.append("")

    effects = summary.get("effect_differences") or {}
    if effects.get("arms"):
        ref = effects["reference"]
        lines += [f"### Does the effect depend on the arm's setting? (vs {ref}'s effect)", "",
                  f"Each arm's effect (arm − its own baseline), minus {ref}'s effect ({ref} − {base}), per seed, "
                  "over the seeds all four runs have; 95% t-interval over seeds (* excludes 0). A negative "
                  "Δ val CE here means the arm's term helps more (or hurts less) than it does in "
                  f"{ref}.", ""]
        keys = [("val_loss", 1.0, 3), ("mean_cos_last", 1.0, 3), ("spearman", 1.0, 2), ("wikitext_word_perplexity", 1.0, 1)]
        rows = []
        for arm, row in effects["arms"].items():
            rows.append([f"({arm} − {row['vs']}) − ({ref} − {base})"]
                        + [_ci(row.get(k), scale, digits) for k, scale, digits in keys] + [_seeds_text(row["seeds"])])
        lines.append(_markdown_table(["difference of effects"] + [f"Δ {SCALARS[k][0]}" for k, _, _ in keys] + ["seeds"],
                                     rows))
        lines.append("")

    units = summary["units"]
    if units:
        lines.append(f"Accuracy (%) per task, mean ± std over seeds ({which} checkpoint). `at chance`: every arm's "
                     "accuracy lies within 2 binomial standard errors of the chance level.")
        lines.append("")
        chance = summary["chance"]
        rows = []
        for u in units:
            c, flag = chance.get(u), _at_chance(summary, u)
            rows.append([u, summary["n_items"].get(u, ""), "—" if c is None else f"{100 * c:.1f}",
                         {None: "—", True: "at chance", False: "no"}[flag]]
                        + [_pm(arms[a]["acc"][u], 100.0) for a in arms])
        known = summary["chance_units"]
        rows.append([f"**average, all {len(units)} tasks**", "",
                     f"{100 * np.mean([chance[u] for u in units]):.1f}" if len(known) == len(units) else "— (not defined for all)",
                     ""] + [_pm(arms[a]["avg_acc"], 100.0) for a in arms])
        if known and len(known) < len(units):  # chance and accuracy averaged over the same tasks
            rows.append([f"**average, the {len(known)} tasks with a chance level**", "",
                         f"{100 * np.mean([chance[u] for u in known]):.1f}", ""]
                        + [_pm(arms[a]["avg_acc_chance_units"], 100.0) for a in arms])
        lines.append(_markdown_table(["task", "items", "chance", "at chance", *arms], rows))
        lines.append("")
        others = [a for a in deltas if "acc" in deltas[a]]
        if others:
            names = [f"{a}{' − ' + deltas[a]['vs'] if per_arm else ''} (seeds {_seeds_text(deltas[a]['seeds'])})"
                     for a in others]
            lines.append(f"Paired Δ accuracy vs {'each arm’s baseline' if per_arm else base} (pp), 95% t-interval "
                         "over the per-seed paired means "
                         "(* excludes 0):")
            lines.append("")
            rows = [[u] + [_ci(deltas[a]["acc"][u]) if u in deltas[a]["acc"] else "—" for a in others] for u in units]
            rows.append(["**average**"] + [_ci(deltas[a]["avg_acc"]) for a in others])
            lines.append(_markdown_table(["task"] + names, rows))
            lines.append("")
            lines.append(f"Within-run (item) uncertainty of the same Δ (pp): 95% bootstrap interval over items with "
                         f"the runs held fixed ({cfg['n_boot']} replicates, seed {cfg['boot_seed']}). It says how much "
                         "another draw of test items would move these runs' difference, not whether another seed "
                         "would reproduce it, so it is never starred:")
            lines.append("")
            rows = [[u] + [_ci(deltas[a]["acc_items"][u], star=False) if u in deltas[a]["acc_items"] else "—"
                           for a in others] for u in units]
            rows.append(["**average**"] + [_ci(deltas[a]["avg_acc_items"], star=False) for a in others])
            lines.append(_markdown_table(["task"] + names, rows))
            lines.append("")
    return lines


def build_report(exp_dir):
    """report.md, report.json and PNGs in exp_dir from its finished runs. Returns report.md's path."""
    meta = read_json(os.path.join(exp_dir, "experiment.json"))
    if meta is None:
        raise MissingFileError(f"{exp_dir}: no experiment.json; give the exp_dir of an experiment "
                               "(the folder python experiment.py wrote)")
    cfg = meta["config"]
    runs = collect_runs(exp_dir, meta)
    n_planned = len(cfg["arms"]) * len(cfg["seeds"])
    n_done = sum(len(r) for r in runs.values())
    summaries = {"final": summarize(meta, runs, "final")}
    base_figures = read_base_run(exp_dir, meta)
    if base_figures:
        summaries["final"]["base_run"] = {k: v for k, v in base_figures.items() if k not in ("items",)}
    if cfg["select_by_val"] and runs:
        summaries["best"] = summarize(meta, runs, "best")
    doses = dose_response(meta, runs, summaries["final"]) if runs else []
    figures = draw_figures(exp_dir, meta, runs, summaries["final"], doses) if runs else {}

    hardware_seen = []
    for arm_runs in runs.values():
        for run in arm_runs.values():
            hw = run["hardware"]
            text = f"{hw['cpu']} ({hw['cpu_count']} CPUs)" + (f", {len(hw['gpus'])}× {hw['gpus'][0]}" if hw["gpus"] else "") \
                + f", torch {hw['torch']}"
            if text not in hardware_seen:
                hardware_seen.append(text)
    seconds = {}
    for arm_runs in runs.values():
        for run in arm_runs.values():
            for k, v in run["seconds"].items():
                seconds[k] = seconds.get(k, 0.0) + v
    invocations = []
    if os.path.exists(os.path.join(exp_dir, "invocations.jsonl")):
        with open(os.path.join(exp_dir, "invocations.jsonl")) as f:
            invocations = [json.loads(line) for line in f if line.strip()]
    finished = sorted(run["finished"] for arm_runs in runs.values() for run in arm_runs.values())

    shots = (f"paper protocol: 0-shot, {cfg['num_fewshot']}-shot for ARC-E/C, MedMCQA, MMLU" if cfg["paper_protocol"]
             else f"{cfg['num_fewshot']}-shot")
    # tasks whose shots did not come from lm-eval's few-shot split (offline: MedMCQA's train split is absent)
    fallback = {}
    for arm_runs in runs.values():
        for run in arm_runs.values():
            for task, info in run["final"]["shots"].items():
                if info.get("num_fewshot") and info.get("fewshot_matches_lm_eval") is False:
                    fallback.setdefault(unit_of(task), info.get("split"))
    if fallback:
        shots += (" (" + ", ".join(f"{u}: shots drawn from its scored split `{s}`, the scored item excluded"
                                  for u, s in fallback.items())
                  + ", because lm-eval's few-shot split is not available offline; these shots differ from lm-eval's)")
    L = [f"# Experiment report: {os.path.basename(os.path.normpath(exp_dir))}", ""]
    L.append(f"- Runs finished: {n_done} of {n_planned} ({len(cfg['arms'])} arms × seeds {cfg['seeds']})"
             + (f", {finished[0]} to {finished[-1]}" if finished else ""))
    L.append(f"- Hardware: {'; '.join(hardware_seen) or 'n/a'}")
    if seconds:
        L.append("- Time summed over runs: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items()))
    for inv in invocations[-5:]:  # the wall time of each command, including the runs it skipped
        L.append(f"- Invocation `python experiment.py {' '.join(inv['argv'])}` (finished {inv['finished']}): "
                 f"{inv['seconds'] / 60:.1f} min wall, {inv['done']} run(s) done, {inv['skipped']} skipped, "
                 f"{inv['failed']} failed")
    L.append(f"- Every arm's train.py settings: `{cfg['base_config'] or 'train.py defaults'}` + "
             f"{_settings_text(cfg['base_overrides'])}, then the arm's own (table below)")
    L.append(f"- Benchmarks: `{cfg['tasks']}`, {shots}, {_limits_text(cfg, meta.get('task_limits'))}; "
             f"probe: {cfg['probe_n_seq']} sequences × {cfg['probe_seq_len']} tokens of "
             f"`{os.path.basename(meta.get('probe_text') or '?')}`")
    if cfg.get("baselines"):
        L.append("- Arms compared with an arm of their own instead of the baseline: "
                 + ", ".join(f"`{a}` vs `{b}`" for a, b in cfg["baselines"].items()))
    L.append(f"- Baseline: `{cfg['baseline']}`. Every Δ pairs each run with the baseline's run of the same seed, "
             "over the seeds both have (printed beside it). Its 95% interval is a t-interval over the per-seed paired "
             "differences (df = seeds − 1), so run-to-run variance is in it; * marks one that excludes 0. In "
             "simulated null experiments with a run-level shift it excluded 0 in 4.7–5.3% of trials at 2, 3 and 5 "
             "seeds (bench/interval_calibration.py). Accuracy Δs also show a within-run (item) bootstrap interval "
             f"({cfg['n_boot']} replicates), never starred. Not corrected for the number of arms × tasks compared.")
    n_paired = sorted({len(d["seeds"]) for s in summaries.values() for d in s["deltas"].values()})
    if 1 in n_paired:
        L.append("- Comparisons over one seed carry no interval and no star: one seed cannot estimate run-to-run "
                 "variance (another seed may move an arm by more than the difference shown).")
    base_run = meta.get("base")
    if base_run:
        where = base_run.get("out_dir") or base_run.get("dir") if isinstance(base_run, dict) else base_run
        L.append(f"- Base run: the arms start from a pretraining run (`{where or 'base'}`); it is not an arm and is "
                 "not compared" + (f"; its own figures (iteration {base_figures['final_iter']}) are the "
                                   "`base (before mid-training)` rows" if base_figures else "") + ".")
    L.append("")
    L.append(_markdown_table(["arm", "train.py settings"], [[a, _settings_text(s)] for a, s in cfg["arms"].items()]))
    L.append("")
    missing = [f"{a}/seed{s}" for a in cfg["arms"] for s in cfg["seeds"] if s not in runs.get(a, {})]
    if missing:
        L += [f"Not finished (left out): {', '.join(missing)}", ""]
    if runs:
        L += _checkpoint_section(meta, summaries["final"], "Final checkpoint", "final")
        if "best" in summaries:
            iters = {f"{a}/seed{s}": r.get("best_iter") for a, ar in runs.items() for s, r in ar.items()}
            same = sum(1 for a, ar in runs.items() for r in ar.values() if r.get("best_iter") == r["final_iter"])
            L += [f"Checkpoint with the lowest val loss (selected on validation loss, never on a benchmark): "
                  f"it is the final checkpoint in {same} of {n_done} runs. Iterations: "
                  + ", ".join(f"{k} {v}" for k, v in iters.items()), ""]
            if same < n_done:
                L += _checkpoint_section(meta, summaries["best"], "Checkpoint selected by validation loss", "best")
        if doses:
            L += ["## Dose–response (arms that differ only in λ; the baseline at λ = 0)", ""]
            for g in doses:
                rows = [[p["arm"], p["lambda"], p["seeds"], _pm(p["mean_cos_last"], digits=3), _pm(p["spearman"], digits=2),
                         _pm(p["avg_acc"], 100.0), _pm(p["val_loss"], digits=3)] for p in g["points"]]
                L.append(f"{g['variant']}:")
                L.append("")
                L.append(_markdown_table(["arm", "λ", "seeds", "last-layer mean cos", "Spearman ρ", "avg acc (%)",
                                          "val loss"], rows))
                trend = g["rank_corr_with_lambda"]
                if any(v is not None for v in trend.values()):
                    L.append("")
                    L.append("Rank correlation with λ across the arms' means: "
                             + ", ".join(f"{k} {v:+.2f}" for k, v in trend.items() if v is not None and math.isfinite(v)))
                L.append("")
        if figures:
            L += ["## Figures", ""]
            captions = {"heatmaps": "Condensation heatmaps (final checkpoint, histograms averaged over seeds)",
                        "mean_cos": "Mean token cosine per layer (averaged over seeds)",
                        "training": "Training curves, first seed of each arm: train CE (cross-entropy alone, without the "
                                    "dispersion or control term) and val CE",
                        "deltas": "Paired accuracy differences with 95% t-intervals over seeds (a point alone: one seed)",
                        "dose_response": "Dose–response against λ (mean ± std over seeds)"}
            for key, name in figures.items():
                L += [f"{captions[key]}:", "", f"![{key}]({name})", ""]
    L += ["## How to read this", "",
          "- Accuracy is lm-eval's `acc` (TruthfulQA-MC2: the probability mass on true answers); the average is "
          "the unweighted mean over the tasks, MMLU counted once (pooled over its subjects). `chance` is uniform "
          "guessing, where defined; where it is not defined for every task, a second average row takes the same "
          "tasks for chance and for accuracy.",
          "- An arm differs from the baseline only where its interval excludes 0; with few seeds the t-intervals "
          "are wide (at 2 seeds t = 12.7), and one of 20 intervals misses by chance alone.",
          "- The std over seeds needs at least 2 seeds; with 2 it is itself very uncertain.",
          "- `mean_cos` is the paper's condensation measure (eval/condensation.py): the mean of all token-pair "
          "cosines of a sequence, diagonal included, averaged over the probe's sequences; `last-layer` is the last "
          "hidden state (after ln_f). Spearman ρ > 0 means token similarity rises with depth. train.py's "
          "`disp/layer{i}/pair_cos` excludes the diagonal and is not shown here.",
          "- Tiny models sit at chance on the benchmarks; there the language-modelling table and the condensation "
          "figures are what can differ between arms.", ""]

    report = {"config": cfg, "arms": meta["arms"], "runs_finished": n_done, "runs_planned": n_planned,
              "hardware": hardware_seen, "seconds": seconds, "invocations": invocations, "missing": missing,
              "summaries": {k: {kk: vv for kk, vv in v.items()} for k, v in summaries.items()},
              "dose_response": doses, "figures": figures}
    write_json(os.path.join(exp_dir, "report.json"), report)
    path = os.path.join(exp_dir, "report.md")
    with atomic(path) as f:
        f.write("\n".join(L))
    return path


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m eval.report EXP_DIR   (the exp_dir of an experiment)", file=sys.stderr)
        return 2
    print(f"wrote {build_report(argv[0])}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
