"""
The finished runs of an experiment folder (experiment.py's grid of arms x seeds), read back for the
report: per run, its final checkpoint's (and the val-selected checkpoint's) per-item benchmark scores,
language-modelling figures and condensation probe.

What it reads, per run EXP/<arm>/seed<S>/: done.json (written last by the runner), metrics.jsonl
(train.py's log), eval/items.jsonl and eval/results.json (eval/benchmarks.py), condensation/
condensation.json (eval/condensation.py), and the same for the checkpoint selected by val loss
(eval_best/, condensation_best/). The arms and seeds are those of EXP/experiment.json; any other
folder is ignored.
"""

import os

import numpy as np

from eval.tasks import read_jsonl
from files import read_json, read_metrics

BASE = "base"  # the base run's folder in an experiment folder (so no arm may be called that)


def run_dir_of(exp_dir, arm, seed):
    """EXP/<arm>/seed<S>; the base run: EXP/base, or EXP/base/seed<S> for one base per seed (seed not None)."""
    return os.path.join(exp_dir, BASE) if arm == BASE and seed is None else os.path.join(exp_dir, arm, f"seed{seed}")


def best_checkpoint(run_dir):
    """{'iter', 'val_loss'} of the checkpoint train.py kept as ckpt_best.pt (keep_best=True): the
    first eval after iteration 0 with the lowest val loss (train.py keeps a strictly lower one)."""
    if not os.path.exists(os.path.join(run_dir, "ckpt_best.pt")):
        return None
    evals = [r for r in read_metrics(os.path.join(run_dir, "metrics.jsonl")) if "val_loss" in r and r["iter"] > 0]
    best = min(evals, key=lambda r: r["val_loss"])  # min returns the first of equal values
    return {"iter": best["iter"], "val_loss": best["val_loss"]}


def unit_of(task):
    """The report's tasks: the 57 MMLU subjects are pooled into mmlu (lm-eval's aggregate is
    their size-weighted mean, i.e. the accuracy over all MMLU items)."""
    return "mmlu" if task.startswith("mmlu_") else task


def read_items(path):
    """{unit: {(task, doc_id): acc}} and {unit: chance accuracy or None} of an items.jsonl."""
    items, chance = {}, {}
    for rec in read_jsonl(path):
        if not isinstance(rec.get("acc"), (int, float)):
            continue  # perplexity-only tasks (wikitext)
        unit = unit_of(rec["task"])
        items.setdefault(unit, {})[(rec["task"], rec["doc_id"])] = float(rec["acc"])
        # uniform guessing scores 1/(number of choices) where acc is "the argmax is the gold"
        plain = "lls" in rec and "pred" in rec and rec["acc"] == float(rec["pred"] == rec.get("gold"))
        chance.setdefault(unit, []).append(1.0 / len(rec["lls"]) if plain else None)
    chance = {u: (None if None in c else float(np.mean(c))) for u, c in chance.items()}
    return items, chance


# per-run figures compared across arms (besides the benchmark accuracies): key -> label, digits
SCALARS = {"val_loss": ("val CE", 3), "mean_cos_last": ("last-layer mean_cos", 3), "spearman": ("Spearman ρ", 2),
           "wikitext_word_perplexity": ("WikiText-103 word ppl", 1), "lambada_perplexity": ("LAMBADA ppl", 1),
           "lambada_acc": ("LAMBADA acc", 3)}


def read_checkpoint_results(run_dir, eval_name, probe_name, val_loss):
    """What the report needs of one evaluated checkpoint of a run: per-item accuracies, chance,
    the language-modelling figures of results.json, the probe, and its val loss (CE)."""
    items, chance = read_items(os.path.join(run_dir, eval_name, "items.jsonl"))
    results = read_json(os.path.join(run_dir, eval_name, "results.json")) or {}
    probe = read_json(os.path.join(run_dir, probe_name, "condensation.json"))
    acc = {u: float(np.mean(list(v.values()))) for u, v in items.items()}
    metric = lambda task, key: results.get(task, {}).get(key)  # noqa: E731  (None: not scored)
    return {"items": items, "chance": chance, "acc": acc, "avg_acc": float(np.mean(list(acc.values()))) if acc else None,
            "val_loss": val_loss, "mean_cos_last": probe["layers"][-1]["mean_cos"], "spearman": probe["spearman"],
            "kendall": probe["kendall"], "probe": probe,
            "wikitext_word_perplexity": metric("wikitext", "word_perplexity"),
            "lambada_perplexity": metric("lambada_openai", "perplexity"), "lambada_acc": metric("lambada_openai", "acc"),
            "shots": {t: {k: v for k, v in res.items() if k in ("num_fewshot", "split", "fewshot_split",
                                                                 "fewshot_matches_lm_eval")}
                      for t, res in results.items() if isinstance(res, dict) and "num_fewshot" in res}}


def collect_runs(exp_dir, meta):
    """{arm: {seed: run}} for the finished runs (done.json present) of the experiment's grid:
    the arms and seeds of its experiment.json, so any other folder (a base run) is ignored."""
    runs = {}
    for arm in meta["config"]["arms"]:
        for seed in meta["config"]["seeds"]:
            run_dir = run_dir_of(exp_dir, arm, seed)
            done = read_json(os.path.join(run_dir, "done.json"))
            if done is None:
                continue
            metrics = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
            val = {r["iter"]: r["val_loss"] for r in metrics if "val_loss" in r}
            run = {"dir": run_dir, "final_iter": done["final_iter"], "val_loss": val.get(done["final_iter"]),
                   "seconds": done["seconds"], "hardware": done["hardware"], "finished": done["finished"],
                   "metrics_path": os.path.join(run_dir, "metrics.jsonl"), "metrics": metrics}
            run["final"] = read_checkpoint_results(run_dir, "eval", "condensation", run["val_loss"])
            if done["best"] is not None:
                run["best_iter"], run["best_val_loss"] = done["best"]["iter"], done["best"]["val_loss"]
                same = done["best"]["iter"] == done["final_iter"]
                # the selected checkpoint's val CE on fresh batches (eval/evaluate.py): the value it was chosen by
                # is the minimum of noisy estimates, so it is biased low
                fresh = (read_json(os.path.join(run_dir, "eval_best", "val_fresh.json")) or {}).get("val_loss")
                run["best"] = run["final"] if same else read_checkpoint_results(
                    run_dir, "eval_best", "condensation_best", fresh)
                run["best"] = {**run["best"], "val_loss_selection": run["best_val_loss"]}
            runs.setdefault(arm, {})[seed] = run
    return runs


def read_base_run(exp_dir, meta):
    """The base run's figures (the checkpoint every arm mid-trains from), or None when the experiment
    has no base stage or its base is not finished and evaluated. With one base per seed, their mean
    (numbers and the probe's per-layer mean_cos; 'n_bases' says how many)."""
    base = meta.get("base")
    if not base:
        return None
    folder = os.path.join(exp_dir, base.get("dir") or "base") if isinstance(base, dict) else os.path.join(exp_dir, "base")
    per_seed = isinstance(base, dict) and base.get("per_seed")
    dirs = [os.path.join(folder, f"seed{s}") for s in meta["config"]["seeds"]] if per_seed else [folder]
    found = []
    for run_dir in dirs:
        done = read_json(os.path.join(run_dir, "done.json"))
        if done is None or not os.path.exists(os.path.join(run_dir, "condensation", "condensation.json")):
            continue
        val = {r["iter"]: r["val_loss"] for r in read_metrics(os.path.join(run_dir, "metrics.jsonl")) if "val_loss" in r}
        out = read_checkpoint_results(run_dir, "eval", "condensation", val.get(done["final_iter"]))
        found.append({**out, "dir": run_dir, "final_iter": done["final_iter"]})
    if not found:
        return None
    if len(found) == 1:
        return {**found[0], "n_bases": 1}
    mean = lambda key: float(np.mean([b[key] for b in found])) if all(b[key] is not None for b in found) else None  # noqa: E731
    out = {**found[0], "dir": folder, "n_bases": len(found)}
    out.update({key: mean(key) for key in ("val_loss", "mean_cos_last", "spearman", "wikitext_word_perplexity",
                                           "lambada_perplexity", "lambada_acc")})
    layers = [{"mean_cos": float(np.mean([b["probe"]["layers"][i]["mean_cos"] for b in found]))}
              for i in range(len(found[0]["probe"]["layers"]))]
    out["probe"] = {**found[0]["probe"], "layers": layers}
    return out
