"""
The experiment report: read the finished runs of an experiment folder (experiment.py's grid of
arms x seeds) and write report.md, report.json and the figures beside them.

    python -m eval.report out-experiment-cpu          # same as: python experiment.py report out-experiment-cpu

What it reads of each run is said in eval/runs.py; the statistics are eval/compare.py's.
"""

import json
import math
import os
import sys

import numpy as np

from errors import MissingFileError, run_cli
from eval.compare import baseline_of, dose_response, finite, strength, summarize
from eval.plots import draw_figures
from eval.runs import SCALARS, collect_runs, read_base_run, unit_of
from eval.stats import record_text
from files import atomic, read_json, write_json


# ---------------------------------------------------------------------- formatting

def _pm(ms, scale=1.0, digits=1, signed=False):
    m, s = ms
    if m is None or not math.isfinite(m):
        return "—"
    text = f"{m * scale:+.{digits}f}" if signed else f"{m * scale:.{digits}f}"
    return text + (f" ± {s * scale:.{digits}f}" if s is not None and math.isfinite(s) else "")


def _ci(record, scale=1.0, digits=3):
    """A comparison's cell: '+1.2 [-0.3, +2.7] q=0.4 (sign-flip 0.25)', ' *' where starred (eval/stats.py)."""
    return record_text(record, scale, digits) if record else "—"


def _bootstrap_ci(est, scale=100.0, digits=1):
    """The item bootstrap's '+1.2 [-0.3, +2.7]': within-run uncertainty, never starred."""
    if est is None:
        return "—"
    e, lo, hi = est
    return f"{e * scale:+.{digits}f} [{lo * scale:+.{digits}f}, {hi * scale:+.{digits}f}]"


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
    return all(finite(a) and abs(a - c) <= band for a in accs)


def _checkpoint_section(meta, summary, title, which):
    cfg = meta["config"]
    base = cfg["baseline"]
    arms = summary["arms"]
    deltas = summary["deltas"]
    lines = [f"## {title}", ""]
    primary = ", ".join(SCALARS.get(k, ("benchmark average",))[0] for k in summary.get("primary", []))
    lines.append("Mean ± std over seeds (std with ddof = 1). Δ columns: arm − baseline, each run paired with the "
                 "baseline's run of the same seed, over the seeds both have (the `Δ seeds` column); 95% t-interval "
                 "over those per-seed differences (df = seeds − 1), then its p-value: `p_Holm` for the primary "
                 f"comparisons ({primary}; Holm over every arm and primary metric), `q` (Benjamini-Hochberg) for every "
                 "other, exploratory one; `sign-flip` is the exact sign-flip test's p over the seeds. * marks a "
                 "difference whose corrected p is at most 0.05; no star from a zero-spread difference or from one "
                 "seed (docs/statistics.md). The benchmark average's Δ here is the claim on new items (seeds and "
                 "items resampled); the per-task table below has both claims.")
    lines.append("")

    per_arm = bool(cfg.get("baselines"))  # arms with their own baselines: a column says which

    def delta_cell(arm, key, scale=1.0, digits=3):
        record = deltas.get(arm, {}).get(key)
        if key == "avg_acc" and record:
            record = record["new_items"]
        return "" if arm == baseline_of(cfg, arm) else _ci(record, scale, digits)

    def delta_seeds(arm):
        if arm == baseline_of(cfg, arm):
            return ""
        text = _seeds_text(deltas.get(arm, {}).get("seeds"))
        return f"vs {baseline_of(cfg, arm)}; {text}" if per_arm else text

    rows = [[f"**{arm}**" if arm == base else arm, _seeds_text(s["seeds"]), _pm(s["val_loss"], digits=3),
             delta_cell(arm, "val_loss"), _pm(s["mean_cos_last"], digits=3), delta_cell(arm, "mean_cos_last"),
             _pm(s["spearman"], digits=2), delta_cell(arm, "spearman", digits=2), _pm(s["avg_acc"], 100.0),
             delta_cell(arm, "avg_acc", 100.0, 1), delta_seeds(arm)] for arm, s in arms.items()]
    val_name = "val CE" if which == "final" else "val CE (fresh batches)"
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
            scored = finite(s[key][0])
            row += [_pm(s[key], scale, digits) if scored else "not scored",
                    delta_cell(arm, key, scale, digits) if scored else ""]
        rows.append(row + [delta_seeds(arm)])
    base_run = summary.get("base_run") if which == "final" else None
    if base_run:  # where every arm started from
        row = ["base (before mid-training)"]
        for key, scale, digits in lm:
            row += [_pm((base_run[key], None), scale, digits) if finite(base_run[key]) else "not scored", ""]
        rows.append(row + [""])
    header = ["arm"]
    for key, _, _ in lm:
        name = SCALARS[key][0] + (" (%)" if key == "lambada_acc" else "")
        header += [name, f"Δ {name} [95% CI]"]
    lines.append(_markdown_table(header + ["Δ vs; seeds" if per_arm else "Δ seeds"], rows))
    lines.append("")
    if not any(finite(s["wikitext_word_perplexity"][0]) for s in arms.values()):
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
                  "over the seeds all four runs have; 95% t-interval over seeds, its Benjamini–Hochberg q-value, and a "
                  "star by the same rule as above (never from the interval alone). A negative "
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
        known, common = summary["chance_units"], summary["common_units"]
        rows.append([f"**average, {'all ' if len(common) == len(units) else 'the '}{len(common)} tasks"
                     f"{'' if len(common) == len(units) else ' every run scored'}**", "",
                     f"{100 * np.mean([chance[u] for u in common]):.1f}" if len(known) == len(common) else "— (not defined for all)",
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
            lines.append(f"Paired Δ accuracy vs {'each arm’s baseline' if per_arm else base} (pp). `these items`: the "
                         "95% t-interval over the per-seed paired means (the same items, another seed); `new items`: "
                         "the seeds x items interval (another draw of items from the benchmark as well); q: "
                         "Benjamini-Hochberg over the report's exploratory comparisons; * where q <= 0.05:")
            lines.append("")
            rows = []
            for u in units:
                for claim in ("these_items", "new_items"):
                    rows.append([f"{u}, {claim.replace('_', ' ')}"]
                                + [_ci(deltas[a]["acc"][u][claim], 100.0, 1) if u in deltas[a]["acc"] else "—"
                                   for a in others])
            for claim in ("these_items", "new_items"):
                rows.append([f"**average, {claim.replace('_', ' ')}**"]
                            + [_ci(deltas[a]["avg_acc"][claim], 100.0, 1) for a in others])
            lines.append(_markdown_table(["task"] + names, rows))
            lines.append("")
            lines.append(f"Within-run (item) uncertainty of the same Δ (pp): 95% bootstrap interval over items with "
                         f"the runs held fixed ({cfg['n_boot']} replicates, seed {cfg['boot_seed']}). It says how much "
                         "another draw of test items would move these runs' difference, not whether another seed "
                         "would reproduce it, so it is never starred:")
            lines.append("")
            rows = [[u] + [_bootstrap_ci(deltas[a]["acc_items"][u]) if u in deltas[a]["acc_items"] else "—"
                           for a in others] for u in units]
            rows.append(["**average**"] + [_bootstrap_ci(deltas[a]["avg_acc_items"]) for a in others])
            lines.append(_markdown_table(["task"] + names, rows))
            lines.append("")
    return lines


def _strength_section(cfg, pushes):
    """How hard each auxiliary term pushed the weights, over windows of steps (train.py's strength_window)."""
    if not pushes:
        return []
    window = cfg["base_overrides"].get("strength_window", "W")
    lines = ["## How hard each term pushes the weights", "",
             f"Per window of {window} optimizer steps (train.py's `strength_window`), from the term's parameter "
             "gradients a_t: push = ||sum of the window's a_t|| (what AdamW's momentum, which sums about ten steps, "
             "sees), coherence = push / (steps × mean ||a_t||) (1: every step pushes the same way; about 1/√steps for "
             "unrelated directions), step cos = the mean cosine of consecutive a_t. A control also measures the "
             "angular term on its own batches: `push ratio` = its push / that push (1: as hard over the window). "
             "Mean ± std over seeds of each run's mean over its windows. Pushes of different runs are on different "
             "trajectories (a treatment disperses its states, a control does not), so compare a control with its "
             "own angular figures, not with the treatment arm's push.", ""]
    rows = [[arm, _pm(p.get("strength/push", (None, None)), digits=4), _pm(p.get("strength/coherence", (None, None)), digits=3),
             _pm(p.get("strength/step_cos", (None, None)), digits=3),
             _pm(p["strength/push_ratio"], digits=3) if "strength/push_ratio" in p else "",
             _pm(p["strength/angular_step_cos"], digits=3) if "strength/angular_step_cos" in p else "", p["windows"]]
            for arm, p in pushes.items()]
    lines.append(_markdown_table(["arm", "push", "coherence", "step cos", "push ratio (vs angular, same batches)",
                                  "angular step cos", "windows"], rows))
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
    pushes = strength(runs)
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
             "over the seeds both have (printed beside it): its 95% interval is a t-interval over the per-seed paired "
             "differences, so run-to-run variance is in it. A star needs the t-test to reject, never comes from "
             "a zero-spread difference, and survives the multiplicity correction: Holm over the primary comparisons "
             f"({', '.join(cfg.get('primary', []))}, every arm), Benjamini-Hochberg over all the others "
             "(exploratory). In simulated null experiments with discrete item scores, ties, shared item noise and "
             "an arm x item effect, at 20-500 items and 2-10 seeds, the star rule's false-star rate stayed at or "
             "below 5.6% at nominal 5% (bench/stats_calibration.py, docs/statistics.md). Accuracy Δs also show a "
             f"within-run (item) bootstrap interval ({cfg['n_boot']} replicates), never starred.")
    bases = meta.get("base") or {}
    L.append("- What the intervals cover: " + (
        "every seed mid-trains its own base, pretrained with that seed, so pretraining variance is in them"
        if isinstance(bases, dict) and bases.get("per_seed") else
        "mid-training variance only: every arm and seed mid-trains the same base (or starts from the same "
        "defaults), so another pretraining run could move every arm together; `base_per_seed=True` puts that "
        "variance in" if bases else "the variance of training from scratch, seed to seed") + ".")
    n_paired = sorted({len(d["seeds"]) for s in summaries.values() for d in s["deltas"].values()})
    if 1 in n_paired:
        L.append("- Comparisons over one seed carry no interval and no star: one seed cannot estimate run-to-run "
                 "variance (another seed may move an arm by more than the difference shown).")
    base_run = meta.get("base")
    if base_run:
        where = (base_run.get("out_dir") or base_run.get("dir")) if isinstance(base_run, dict) else base_run
        n_bases = base_figures["n_bases"] if base_figures else 0
        what = (f"one pretraining run per seed (`{where or 'base'}/seed<S>`), which that seed's runs start from"
                if isinstance(base_run, dict) and base_run.get("per_seed") else f"a pretraining run (`{where or 'base'}`)")
        L.append(f"- Base run: the arms start from {what}; it is not an arm and is not compared"
                 + (f"; its own figures (iteration {base_figures['final_iter']}{f', mean of {n_bases} bases' if n_bases > 1 else ''}) "
                    "are the `base (before mid-training)` rows" if base_figures else "") + ".")
    L.append("")
    L.append(_markdown_table(["arm", "train.py settings"], [[a, _settings_text(s)] for a, s in cfg["arms"].items()]))
    L.append("")
    missing = [f"{a}/seed{s}" for a in cfg["arms"] for s in cfg["seeds"] if s not in runs.get(a, {})]
    if missing:
        L += [f"Not finished (left out): {', '.join(missing)}", ""]
    if runs:
        L += _checkpoint_section(meta, summaries["final"], "Final checkpoint", "final")
        L += _strength_section(cfg, pushes)
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
                        "deltas": "Paired accuracy differences with their 95% intervals on new items (seeds and items resampled; a point alone: one seed)",
                        "dose_response": "Dose–response against λ (mean ± std over seeds)"}
            for key, name in figures.items():
                L += [f"{captions[key]}:", "", f"![{key}]({name})", ""]
    L += ["## How to read this", "",
          "- Accuracy is lm-eval's `acc` (TruthfulQA-MC2: the probability mass on true answers); the average is "
          "the unweighted mean over the tasks, MMLU counted once (pooled over its subjects). `chance` is uniform "
          "guessing, where defined; where it is not defined for every task, a second average row takes the same "
          "tasks for chance and for accuracy.",
          "- A star marks a difference whose test rejects at 5 % after the multiplicity correction (Holm for the "
          "primary comparisons, Benjamini–Hochberg q for the rest), never a zero-spread difference alone. An "
          "interval that excludes 0 without a star is weak evidence: among many intervals, one in 20 excludes 0 by "
          "chance. With few seeds the t-intervals are wide (at 2 seeds t = 12.7).",
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
              "dose_response": doses, "strength": pushes, "figures": figures}
    write_json(os.path.join(exp_dir, "report.json"), report)
    path = os.path.join(exp_dir, "report.md")
    with atomic(path) as f:
        f.write("\n".join(L))
    return path


USAGE = ("python -m eval.report EXP_DIR (or python experiment.py report EXP_DIR) rebuilds the report of EXP_DIR "
         "from its finished runs.")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv in (["-h"], ["--help"]):
        print(f"usage: {USAGE}")
        return 0
    if len(argv) != 1 or argv[0].startswith("-"):
        print(f"usage: {USAGE}", file=sys.stderr)
        return 2
    print(f"wrote {build_report(argv[0])}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
