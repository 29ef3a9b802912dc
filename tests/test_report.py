"""eval/report.py: reading finished runs and writing the report, on hand-made run folders."""

import json
import os

import numpy as np
import pytest

from eval import plots, report, runs
from eval.stats import t_interval


def test_dose_response_groups_arms_that_differ_only_in_lambda(tmp_path):
    eff = {"dispersion": "none", "dispersion_weight": 0.1, "n_layer": 2}
    meta = {"config": {"baseline": "ce"}, "arms": {
        "ce": {"effective": eff}, "a1": {"effective": {**eff, "dispersion": "angular", "dispersion_weight": 1.0}},
        "a01": {"effective": {**eff, "dispersion": "angular", "dispersion_weight": 0.1}},
        "a03": {"effective": {**eff, "dispersion": "angular", "dispersion_weight": 0.3}},
        "deep": {"effective": {**eff, "dispersion": "angular", "n_layer": 4}}}}
    arm = lambda cos: {"seeds": [0], "mean_cos_last": (cos, np.nan), "spearman": (0.0, np.nan),  # noqa: E731
                       "avg_acc": (0.25, np.nan), "val_loss": (5.0, np.nan)}
    summary = {"arms": {"ce": arm(0.9), "a1": arm(0.2), "a01": arm(0.7), "a03": arm(0.5), "deep": arm(0.1)}}
    (group,) = report.dose_response(meta, {}, summary)
    assert [(p["arm"], p["lambda"]) for p in group["points"]] == [("ce", 0.0), ("a01", 0.1), ("a03", 0.3), ("a1", 1.0)]
    assert group["rank_corr_with_lambda"]["mean_cos_last"] == pytest.approx(-1.0)
    assert os.path.getsize(plots.plot_dose_response([group], str(tmp_path / "dose.png"))) > 0


# ---------------------------------------------------------------------- the best checkpoint

def test_best_checkpoint_is_the_first_lowest_val_loss_after_iteration_0(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (
        {"iter": 0, "val_loss": 1.0}, {"iter": 1, "loss": 0.5}, {"iter": 2, "val_loss": 3.0},
        {"iter": 4, "val_loss": 2.5}, {"iter": 6, "val_loss": 2.5}, {"iter": 8, "val_loss": 2.7})))
    assert runs.best_checkpoint(str(tmp_path)) is None  # no ckpt_best.pt: not trained with keep_best
    (tmp_path / "ckpt_best.pt").write_bytes(b"")
    assert runs.best_checkpoint(str(tmp_path)) == {"iter": 4, "val_loss": 2.5}


# ---------------------------------------------------------------------- hand-made experiment folders

LAYERS = 3


def write_run(exp, arm, seed, acc, ce=5.0, cos=(0.1, 0.3, 0.5), wikitext_ppl=None, lambada=(900.0, 0.0),
              medmcqa_fallback=False):
    """One finished run folder as the runner leaves it. acc: {task: list of 0/1 per item}; tasks
    named 'tqa*' are scored without choices (no chance level, like truthfulqa_mc2)."""
    run = exp / arm / f"seed{seed}"
    (run / "eval").mkdir(parents=True)
    (run / "condensation").mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (
        {"iter": 5, "loss": ce + 2.0, "ce": ce + 0.5}, {"iter": 10, "loss": ce + 1.0, "ce": ce + 0.2, "val_loss": ce})))
    with open(run / "eval" / "items.jsonl", "w") as f:
        for task, values in acc.items():
            for i, a in enumerate(values):
                rec = {"task": task, "doc_id": i, "acc": float(a)}
                if not task.startswith("tqa"):
                    rec.update(lls=[-1.0, -2.0, -3.0, -4.0], pred=0 if a else 1, gold=0)
                f.write(json.dumps(rec) + "\n")
    results = {t: {"acc": float(np.mean(v)), "num_fewshot": 0, "split": "validation"} for t, v in acc.items()}
    if medmcqa_fallback:
        results["medmcqa"].update(num_fewshot=1, fewshot_split="validation", fewshot_matches_lm_eval=False)
    if wikitext_ppl is not None:
        results["wikitext"] = {"word_perplexity": wikitext_ppl, "num_fewshot": 0, "split": "test"}
    results["lambada_openai"] = {"perplexity": lambada[0], "acc": lambada[1], "num_fewshot": 0, "split": "test"}
    (run / "eval" / "results.json").write_text(json.dumps(results))
    layers = [{"layer": i, "layer_fraction": i / (LAYERS - 1), "mean_cos": c, "mean_cos_shared": c / 2,
               "mean_cos_centered": c / 3, "hist": [1.0, 0.0]} for i, c in enumerate(cos)]
    (run / "condensation" / "condensation.json").write_text(json.dumps(
        {"layers": layers, "hist_edges": [-1.0, 0.0, 1.0], "spearman": 1.0, "kendall": 1.0}))
    (run / "done.json").write_text(json.dumps({"spec": {}, "final_iter": 10, "best": None, "seconds": {"train": 1.0},
                                               "hardware": {"cpu": "test", "cpu_count": 2, "gpus": [], "torch": "x"},
                                               "finished": "2026-12-02T00:00:00"}))


def write_experiment(exp, arms, seeds, **extra):
    exp.mkdir(parents=True, exist_ok=True)
    cfg = {"arms": {a: {} for a in arms}, "seeds": seeds, "baseline": "ce", "select_by_val": False, "n_boot": 200,
           "boot_seed": 0, "tasks": "paper10", "num_fewshot": 0, "paper_protocol": False, "eval_limit": None,
           "probe_n_seq": 2, "probe_seq_len": 8, "base_config": "", "base_overrides": {}}
    eff = {"dispersion": "none", "dispersion_weight": 0.1}
    (exp / "experiment.json").write_text(json.dumps({"config": cfg, "arms": {a: {"effective": eff} for a in arms},
                                                     "probe_text": "valid.raw", **extra}))


def build(exp):
    report.build_report(str(exp))
    return (exp / "report.md").read_text(), json.loads((exp / "report.json").read_text())


def triple(record):
    """(estimate, lo, hi) of a comparison record (eval/stats.py), nan where report.json holds null."""
    return [float("nan") if record[k] is None else record[k] for k in ("estimate", "lo", "hi")]


def test_deltas_use_seed_t_intervals_and_the_seeds_both_arms_have(tmp_path):
    """The arm has seeds 0-2, the baseline 0-1: every delta pairs over 0, 1 only, says so, and its
    interval is the t-interval over the two per-seed differences (not a bootstrap)."""
    exp = tmp_path / "exp"
    write_experiment(exp, ["ce", "a"], [0, 1, 2])
    n = 40
    for seed in (0, 1):
        write_run(exp, "ce", seed, {"piqa": [1] * 20 + [0] * 20}, ce=5.0 + seed)
    shifts = {0: 4, 1: 8, 2: 20}  # extra correct items of arm a over ce at each seed
    for seed, k in shifts.items():
        write_run(exp, "a", seed, {"piqa": [1] * (20 + k) + [0] * (20 - k)}, ce=4.9 + seed - 0.05 * seed)
    text, data = build(exp)
    d = data["summaries"]["final"]["deltas"]["a"]
    assert d["seeds"] == [0, 1]
    expected = t_interval(np.array([4, 8]) / n)
    assert triple(d["avg_acc"]["these_items"]) == pytest.approx([float(x) for x in expected])
    assert triple(d["acc"]["piqa"]["these_items"]) == pytest.approx([float(x) for x in expected])
    assert triple(d["val_loss"]) == pytest.approx([float(x) for x in t_interval([-0.1, -0.15])])
    # the new-items interval is never narrower than the these-items one
    new = triple(d["avg_acc"]["new_items"])
    assert new[1] <= expected[1] + 1e-12 and new[2] >= expected[2] - 1e-12
    # the item bootstrap is there, named, and never starred; the seed set is printed
    assert "Within-run (item) uncertainty" in text and "a (seeds 0, 1)" in text
    item_table = text.split("Within-run (item) uncertainty")[1]
    assert "] *" not in item_table.split("\n\n")[1] and "]" in item_table.split("\n\n")[1]
    assert "| Δ seeds |" in text


def test_an_arm_with_its_own_baseline_is_paired_with_that_arm(tmp_path):
    """baselines={"a_narrow": "ce_narrow"}: a_narrow's deltas pair it with ce_narrow (not with the
    experiment's baseline ce), and the tables say which arm each delta is against."""
    exp = tmp_path / "exp"
    write_experiment(exp, ["ce", "ce_narrow", "a_narrow"], [0, 1])
    meta = json.loads((exp / "experiment.json").read_text())
    meta["config"]["baselines"] = {"a_narrow": "ce_narrow"}
    (exp / "experiment.json").write_text(json.dumps(meta))
    for seed in (0, 1):
        write_run(exp, "ce", seed, {"piqa": [1, 0]}, ce=5.0 + seed)
        write_run(exp, "ce_narrow", seed, {"piqa": [1, 0]}, ce=6.0 + seed)
        write_run(exp, "a_narrow", seed, {"piqa": [1, 0]}, ce=5.9 + seed - 0.1 * seed)
    text, data = build(exp)
    deltas = data["summaries"]["final"]["deltas"]
    assert deltas["a_narrow"]["vs"] == "ce_narrow" and deltas["ce_narrow"]["vs"] == "ce"
    assert triple(deltas["a_narrow"]["val_loss"]) == pytest.approx([float(x) for x in t_interval([-0.1, -0.2])])
    same = deltas["ce_narrow"]["val_loss"]  # +1.0 at both seeds: no spread, so no t-test and no star
    assert same["estimate"] == pytest.approx(1.0) and same["star"] is False and same["lo"] is None
    assert "| vs ce_narrow; 0, 1 |" in text and "`a_narrow` vs `ce_narrow`" in text


def test_difference_of_effects_pairs_four_runs_per_seed(tmp_path):
    """Arms a (vs ce, the experiment's baseline) and a_n (vs ce_n): the report gives, per seed,
    (a_n − ce_n) − (a − ce) and its t-interval: does the term help more in the narrow model?"""
    exp = tmp_path / "exp"
    write_experiment(exp, ["ce", "a", "ce_n", "a_n"], [0, 1])
    meta = json.loads((exp / "experiment.json").read_text())
    meta["config"]["baselines"] = {"a": "ce", "a_n": "ce_n"}
    (exp / "experiment.json").write_text(json.dumps(meta))
    for seed in (0, 1):
        write_run(exp, "ce", seed, {"piqa": [1, 0]}, ce=5.0 + seed)
        write_run(exp, "a", seed, {"piqa": [1, 0]}, ce=4.9 + seed)
        write_run(exp, "ce_n", seed, {"piqa": [1, 0]}, ce=6.0 + seed)
        write_run(exp, "a_n", seed, {"piqa": [1, 0]}, ce=5.7 + seed - 0.1 * seed)
    text, data = build(exp)
    eff = data["summaries"]["final"]["effect_differences"]
    assert eff["reference"] == "a" and list(eff["arms"]) == ["a_n"]
    assert triple(eff["arms"]["a_n"]["val_loss"]) == pytest.approx([float(x) for x in t_interval([-0.2, -0.3])])
    assert "| (a_n − ce_n) − (a − ce) |" in text


def test_one_seed_gives_no_interval_no_star_and_says_why(tmp_path):
    exp = tmp_path / "exp"
    write_experiment(exp, ["ce", "a"], [0])
    write_run(exp, "ce", 0, {"piqa": [0] * 40})
    write_run(exp, "a", 0, {"piqa": [1] * 40}, ce=4.0)  # a huge difference, but one seed
    text, data = build(exp)
    record = data["summaries"]["final"]["deltas"]["a"]["avg_acc"]["new_items"]
    assert record["estimate"] == pytest.approx(1.0) and record["lo"] is None and record["hi"] is None  # nan -> null
    assert "one seed cannot estimate run-to-run variance" in text
    assert "+100.0 (1 seed: no interval)" in text and "-1.000 (1 seed: no interval)" in text
    assert "] *" not in text and ") *" not in text  # a starred cell ends in ' *'
    assert "+100.0 [+100.0, +100.0]" in text  # the item bootstrap: within-run, unstarred


def test_chance_row_averages_the_same_tasks_as_the_accuracy_row(tmp_path):
    """piqa and arc have a chance level (4 choices: 25%), tqa none: the all-task average has no
    chance figure, and a second row averages chance and accuracy over piqa and arc alone."""
    exp = tmp_path / "exp"
    write_experiment(exp, ["ce"], [0])
    write_run(exp, "ce", 0, {"piqa": [1] * 10 + [0] * 10, "arc": [1] * 5 + [0] * 15, "tqa": [1] * 20})
    text, _ = build(exp)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| **average")}
    assert rows["**average, all 3 tasks**"][1].startswith("—") and rows["**average, all 3 tasks**"][3] == "58.3"
    assert rows["**average, the 2 tasks with a chance level**"][1] == "25.0"
    assert rows["**average, the 2 tasks with a chance level**"][3] == "37.5"  # (50 + 25) / 2, not 58.3


def test_language_modelling_table_and_condensation(tmp_path):
    exp = tmp_path / "exp"
    write_experiment(exp, ["ce", "a"], [0, 1])
    for seed in (0, 1):
        write_run(exp, "ce", seed, {"piqa": [1, 0]}, ce=5.0 + seed, wikitext_ppl=1000.0 + seed, lambada=(800.0, 0.01))
        write_run(exp, "a", seed, {"piqa": [1, 0]}, ce=4.8 + seed, wikitext_ppl=950.0 + 3 * seed, lambada=(700.0, 0.02),
                  cos=(0.1, 0.2, 0.4))
    text, data = build(exp)
    assert "### Language modelling" in text
    d = data["summaries"]["final"]["deltas"]["a"]
    assert triple(d["wikitext_word_perplexity"]) == pytest.approx([float(x) for x in t_interval([-50.0, -48.0])])
    assert d["lambada_perplexity"]["estimate"] == pytest.approx(-100.0)
    assert d["lambada_acc"]["estimate"] == pytest.approx(0.01)
    lm_rows = text.split("### Language modelling")[1].split("\n\n")[2].splitlines()
    a_row = [c.strip() for c in next(r for r in lm_rows if r.startswith("| a |")).split("|")[1:-1]]
    assert a_row[1] == "5.300 ± 0.707" and a_row[3] == "951.5 ± 2.1" and a_row[-1] == "0, 1"
    # condensation per layer, mean over seeds, and the definition named
    assert "| a | 0.100 | 0.200 | 0.400 |" in text and "diagonal (1) included" in text and "pair_cos" in text


def test_wikitext_not_scored_is_said(tmp_path):
    exp = tmp_path / "exp"
    write_experiment(exp, ["ce"], [0])
    write_run(exp, "ce", 0, {"piqa": [1, 0]})
    text, _ = build(exp)
    assert "WikiText-103 word perplexity was not scored: add `wikitext`" in text


def test_medmcqa_shots_from_the_scored_split_are_flagged(tmp_path):
    exp = tmp_path / "exp"
    write_experiment(exp, ["ce"], [0])
    write_run(exp, "ce", 0, {"piqa": [1, 0], "medmcqa": [1, 0]}, medmcqa_fallback=True)
    text, _ = build(exp)
    header = text.split("| arm | train.py settings")[0]
    assert "medmcqa: shots drawn from its scored split `validation`" in header
    assert "not available offline" in header


def test_folders_that_are_not_arms_are_ignored_and_the_base_run_is_named(tmp_path):
    exp = tmp_path / "exp"
    write_experiment(exp, ["ce"], [0], base={"out_dir": str(exp / "base")})
    write_run(exp, "ce", 0, {"piqa": [1, 0]})
    write_run(exp, "base", 0, {"piqa": [1, 1]})  # a finished run folder that is no arm of the grid
    text, data = build(exp)
    assert list(data["summaries"]["final"]["arms"]) == ["ce"] and "| base |" not in text
    assert "Base run: the arms start from a pretraining run" in text and str(exp / "base") in text


def test_the_base_run_figures_are_shown_beside_the_arms(tmp_path):
    """With a base stage (EXP/base finished and evaluated), the language-modelling and condensation
    tables get a 'base (before mid-training)' row with its own figures and no delta."""
    exp = tmp_path / "exp"
    write_experiment(exp, ["ce"], [0], base={"dir": "base", "spec": {}})
    write_run(exp, "ce", 0, {"piqa": [1, 0]}, wikitext_ppl=900.0)
    write_run(exp, "tmp", 0, {"piqa": [1, 1]}, ce=7.25, wikitext_ppl=1234.5, cos=(0.11, 0.22, 0.33))
    os.rename(exp / "tmp" / "seed0", exp / "base")
    text, data = build(exp)
    lm = text.split("### Language modelling")[1]
    row = next(r for r in lm.splitlines() if r.startswith("| base (before mid-training) |"))
    assert "7.250" in row and "1234.5" in row
    assert "| base (before mid-training) | 0.110 | 0.220 | 0.330 | 1.00 |" in text
    assert data["summaries"]["final"]["base_run"]["val_loss"] == pytest.approx(7.25)
    assert "are the `base (before mid-training)` rows" in text


def test_training_figure_plots_cross_entropy_not_the_total_loss(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iter": 0, "loss": 9.0, "ce": 6.0}\n{"iter": 2, "loss": 8.0, "ce": 5.0, "val_loss": 5.5}\n')
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, p: figures.append(fig) or p)
    assert plots.plot_training([str(path)], ["run"], str(tmp_path / "t.png"))[0] == "loss"
    ax = figures[0].axes[0]
    train, val = ax.get_lines()[:2]
    assert list(train.get_ydata()) == [6.0, 5.0] and list(val.get_ydata()) == [5.5]
    assert "run train CE" == train.get_label() and ax.get_ylabel().startswith("cross-entropy")


def test_the_header_gives_each_task_its_own_limit():
    cfg = {"eval_limit": 20, "eval_limits": {"lambada_openai": 500, "mmlu": 5, "wikitext": None}}
    assert report._limits_text(cfg, None) == "limit 20 per task (lambada_openai 500, mmlu 5 per subject, wikitext all)"
    # an older experiment.json without eval_limits: the per-task limits it recorded, where they differ
    assert report._limits_text({"eval_limit": None}, {"piqa": None, "arc_easy": 7}) == "full sets (arc_easy 7)"


# ---------------------------------------------------------------------- stars and families (docs/statistics.md)

def test_the_same_difference_at_every_seed_gets_no_star(tmp_path):
    """20 items, 2 seeds, the arm 5 items ahead at both: the old rule starred its zero-width interval;
    now there is no spread for a t-test and 2 seeds are too few for the exact test."""
    exp = tmp_path / "exp"
    write_experiment(exp, ["ce", "a"], [0, 1])
    for seed in (0, 1):
        write_run(exp, "ce", seed, {"piqa": [1] * 10 + [0] * 10}, ce=5.0 + seed)
        write_run(exp, "a", seed, {"piqa": [1] * 15 + [0] * 5}, ce=5.0 + seed)
    text, data = build(exp)
    d = data["summaries"]["final"]["deltas"]["a"]
    for record in (d["acc"]["piqa"]["these_items"], d["avg_acc"]["these_items"]):
        assert record["estimate"] == pytest.approx(0.25) and record["star"] is False
        assert record["p_exact"] == pytest.approx(0.5)  # 2 seeds: the exact sign-flip test's smallest p
    assert "no spread over 2 seeds" in text


def test_primary_comparisons_are_holm_corrected_and_the_rest_bh(tmp_path):
    exp = tmp_path / "exp"
    write_experiment(exp, ["ce", "a", "b"], [0, 1, 2])
    for seed in (0, 1, 2):
        write_run(exp, "ce", seed, {"piqa": [1] * 10 + [0] * 10}, ce=5.0 + seed)
        write_run(exp, "a", seed, {"piqa": [1] * 11 + [0] * 9}, ce=4.5 + seed + 0.01 * seed, cos=(0.1, 0.2, 0.3 + 0.01 * seed))
        write_run(exp, "b", seed, {"piqa": [1] * 9 + [0] * 11}, ce=5.1 + seed, cos=(0.1, 0.3, 0.5 - 0.01 * seed))
    _, data = build(exp)
    summary = data["summaries"]["final"]
    assert summary["primary"] == ["val_loss", "avg_acc", "mean_cos_last"]
    for arm in ("a", "b"):
        d = summary["deltas"][arm]
        assert d["val_loss"]["family"] == d["mean_cos_last"]["family"] == d["avg_acc"]["new_items"]["family"] == "holm"
        assert d["val_loss"]["family_size"] == 6  # 3 primary metrics x 2 arms
        assert d["spearman"]["family"] == d["avg_acc"]["these_items"]["family"] == "bh"
        assert d["acc"]["piqa"]["new_items"]["family"] == "bh"
    # val CE moves by -0.5 +- 0.01 at every seed for arm a: starred even after Holm
    assert summary["deltas"]["a"]["val_loss"]["star"] is True
    assert summary["deltas"]["a"]["val_loss"]["p_adj"] >= summary["deltas"]["a"]["val_loss"]["p"]


def test_the_average_covers_the_tasks_every_run_scored(tmp_path):
    """One run lacks arc: the arms' averages and the Δ average are over piqa alone, and the table says so."""
    exp = tmp_path / "exp"
    write_experiment(exp, ["ce", "a"], [0, 1])
    for seed in (0, 1):
        write_run(exp, "ce", seed, {"piqa": [1, 0, 1, 0], "arc": [1, 1, 1, 1]})
        write_run(exp, "a", seed, {"piqa": [1, 1, 1, 0], **({"arc": [0, 0, 0, 0]} if seed == 0 else {})})
    text, data = build(exp)
    summary = data["summaries"]["final"]
    assert summary["common_units"] == ["piqa"]
    assert summary["arms"]["ce"]["avg_acc"][0] == pytest.approx(0.5) and summary["arms"]["a"]["avg_acc"][0] == pytest.approx(0.75)
    assert summary["deltas"]["a"]["avg_acc"]["these_items"]["estimate"] == pytest.approx(0.25)
    assert "**average, the 1 tasks every run scored**" in text


def test_strength_figures_are_averaged_over_windows_and_seeds(tmp_path):
    exp = tmp_path / "exp"
    write_experiment(exp, ["ce", "ctrl"], [0, 1])
    for seed in (0, 1):
        write_run(exp, "ce", seed, {"piqa": [1, 0]})
        write_run(exp, "ctrl", seed, {"piqa": [1, 0]})
        with open(exp / "ctrl" / f"seed{seed}" / "metrics.jsonl", "a") as f:
            for k, ratio in enumerate((0.9, 1.1)):
                f.write(json.dumps({"iter": 4 + k, "strength/push": 1.0 + seed, "strength/coherence": 0.8,
                                    "strength/step_cos": 0.7, "strength/push_ratio": ratio + 0.1 * seed,
                                    "strength/angular_push": 1.0, "strength/angular_step_cos": 0.75}) + "\n")
    text, data = build(exp)
    figures = data["strength"]["ctrl"]
    assert figures["strength/push"][0] == pytest.approx(1.5) and figures["strength/push_ratio"][0] == pytest.approx(1.05)
    assert figures["windows"] == 2 and "ce" not in data["strength"]
    assert "## How hard each term pushes the weights" in text and "| ctrl | 1.5000 ± 0.7071 |" in text
