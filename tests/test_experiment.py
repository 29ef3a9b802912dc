"""experiment.py: config checks, the statistics, keeping the best checkpoint, and a tiny grid end to end."""

import itertools
import json
import os
import time

import numpy as np
import pytest
import torch

import experiment
from experiment import ExperimentError, load_experiment, mean_std, paired_bootstrap


def write_config(path, **settings):
    path.write_text("".join(f"{k} = {v!r}\n" for k, v in settings.items()))
    return str(path)


# ---------------------------------------------------------------------- config

@pytest.mark.parametrize("settings, message", [
    ({"seedz": [0]}, "unknown config key 'seedz'; did you mean seeds"),
    ({"arms": {"ce": {}, "a": {"dispersion_wieght": 0.1}}},
     "arm 'a': 'dispersion_wieght' is not a train.py setting; did you mean dispersion_weight"),
    ({"arms": {"ce": {}, "a": {"dispersion_weight": "big"}}}, "arm 'a': dispersion_weight='big' has type str, expected float"),
    ({"arms": {"ce": {}, "a": {"dispersion": "angualr"}}}, "arm 'a': dispersion='angualr'; choose one of"),
    ({"arms": {"ce": {}, "a": {"out_dir": "x"}}}, "arm 'a': 'out_dir' is set by the experiment runner"),
    ({"base_overrides": {"n_layr": 2}}, "base_overrides: 'n_layr' is not a train.py setting; did you mean n_layer"),
    ({"baseline": "cee"}, "baseline='cee' is not an arm"),
    ({"seeds": [0, 0]}, "repeats a seed"),
    ({"arms": {"ce": {}, "a/b": {}}}, "arm name 'a/b'"),
])
def test_config_errors_name_the_problem(tmp_path, settings, message):
    with pytest.raises(ExperimentError) as e:
        load_experiment([write_config(tmp_path / "exp.py", **settings)])
    assert message in str(e.value)


def test_good_config_gives_each_arm_its_effective_settings(tmp_path):
    cfg, plan = load_experiment([write_config(tmp_path / "exp.py", base_overrides={"n_layer": 2},
                                              arms={"ce": {}, "a": {"dispersion": "angular", "dispersion_layers": "1,2"}})])
    assert plan["a"]["effective"]["n_layer"] == 2 and plan["ce"]["effective"]["n_layer"] == 2
    assert plan["a"]["effective"]["dispersion_layers"] == "1,2" and plan["ce"]["effective"]["dispersion"] == "none"
    # the command line train.py gets reads back to the same values
    cmd = experiment.train_command({**cfg, "launcher": "torchrun --standalone --nproc_per_node=8", "select_by_val": False},
                                   experiment.run_spec(cfg, plan, "a", 3), "/x/a/seed3", resume=False)
    assert cmd[:4] == ["torchrun", "--standalone", "--nproc_per_node=8", os.path.join(experiment.REPO, "train.py")]
    assert "--dispersion_layers='1,2'" in cmd and "--seed=3" in cmd and "--always_save_checkpoint=True" in cmd
    import train
    from configurator import load_config
    assert load_config(train._defaults, cmd[4:], train._types)["dispersion_layers"] == "1,2"


# ---------------------------------------------------------------------- statistics

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
    (group,) = experiment.dose_response(meta, {}, summary)
    assert [(p["arm"], p["lambda"]) for p in group["points"]] == [("ce", 0.0), ("a01", 0.1), ("a03", 0.3), ("a1", 1.0)]
    assert group["rank_corr_with_lambda"]["mean_cos_last"] == pytest.approx(-1.0)
    assert os.path.getsize(experiment.plot_dose_response([group], str(tmp_path / "dose.png"))) > 0


# ---------------------------------------------------------------------- the best checkpoint

def test_best_checkpoint_is_the_first_lowest_val_loss_after_iteration_0(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (
        {"iter": 0, "val_loss": 1.0}, {"iter": 1, "loss": 0.5}, {"iter": 2, "val_loss": 3.0},
        {"iter": 4, "val_loss": 2.5}, {"iter": 6, "val_loss": 2.5}, {"iter": 8, "val_loss": 2.7})))
    assert experiment.best_checkpoint(str(tmp_path)) is None  # no ckpt_best.pt: not trained with keep_best
    (tmp_path / "ckpt_best.pt").write_bytes(b"")
    assert experiment.best_checkpoint(str(tmp_path)) == {"iter": 4, "val_loss": 2.5}


def fake_benchmarks(root):
    """A few rows of PIQA and ARC-Easy in the Hugging Face layout eval/tasks.py reads."""
    piqa = [{"goal": f"How do I open jar {i}?", "sol1": "Twist the lid.", "sol2": "Eat the lid.", "label": i % 2}
            for i in range(4)]
    arc = [{"id": str(i), "question": f"What is {i} plus one?", "answerKey": "B",
            "choices": {"text": [str(i), str(i + 1), "seven"], "label": ["A", "B", "C"]}} for i in range(4)]
    for folder, split, rows in (("piqa", "validation", piqa), ("arc_easy", "test", arc)):
        (root / folder).mkdir(parents=True)
        (root / folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


TINY = {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32, "vocab_size": 50257, "batch_size": 4,
        "gradient_accumulation_steps": 1, "device": "cpu", "dtype": "float32", "compile": False, "max_iters": 4,
        "eval_interval": 2, "eval_iters": 1, "warmup_iters": 1}


def tiny_experiment(tmp_path, dataset, **settings):
    """An experiment config over a tiny model, the fake benchmarks and a short probe text."""
    text = tmp_path / "probe.txt"
    text.write_text("The quick brown fox jumps over the lazy dog near the river bank. " * 40)
    return write_config(tmp_path / "exp.py", **{
        "base_overrides": {"dataset": str(dataset), **TINY}, "exp_dir": str(tmp_path / "exp"),
        "tasks": "piqa,arc_easy", "eval_data_dir": str(fake_benchmarks(tmp_path / "bench")), "eval_device": "cpu",
        "probe_text": str(text), "probe_n_seq": 2, "probe_seq_len": 16, "n_boot": 200, "threads": 1, **settings})


def test_tiny_grid_end_to_end(shared, tiny_dataset, tmp_path, capsys):
    exp_dir = tmp_path / "exp"
    config = tiny_experiment(tmp_path, tiny_dataset, seeds=[0, 1],
                             arms={"ce": {}, "angular": {"dispersion": "angular", "dispersion_weight": 1.0}})

    assert experiment.main([config]) == 0
    for arm in ("ce", "angular"):
        for seed in (0, 1):
            run = exp_dir / arm / f"seed{seed}"
            assert (run / "done.json").exists() and (run / "eval" / "items.jsonl").exists()
            assert (run / "condensation" / "condensation.json").exists() and (run / "ckpt_best.pt").exists()
    report = (exp_dir / "report.md").read_text()
    assert "Runs finished: 4 of 4" in report and "Δ avg acc vs ce" in report and "arc_easy" in report
    data = json.loads((exp_dir / "report.json").read_text())
    final = data["summaries"]["final"]
    assert final["arms"]["angular"]["seeds"] == [0, 1] and len(final["arms"]["ce"]["acc"]["piqa"]) == 2
    est, lo, hi = final["deltas"]["angular"]["avg_acc"]
    assert lo <= est <= hi
    assert (exp_dir / "heatmaps.png").exists() and (exp_dir / "deltas.png").exists()
    # same-seed arms read the same batches: CE's and angular's first logged cross-entropy agree
    first_ce = {arm: [json.loads(line)["ce"] for line in open(exp_dir / arm / "seed0" / "metrics.jsonl") if '"ce"' in line][0]
                for arm in ("ce", "angular")}
    assert first_ce["ce"] == pytest.approx(first_ce["angular"], abs=1e-6)

    # rerun: everything finished is skipped, nothing is trained or evaluated again
    capsys.readouterr()
    t0 = time.time()
    assert experiment.main([config]) == 0
    out = capsys.readouterr().out
    assert out.count("already done, skipped") == 4 and "training" not in out and time.time() - t0 < 30
    # a run that stopped after training (no done.json, no eval): only the missing stages run again
    import shutil
    (exp_dir / "ce" / "seed1" / "done.json").unlink()
    shutil.rmtree(exp_dir / "ce" / "seed1" / "eval")
    assert experiment.main([config]) == 0
    out = capsys.readouterr().out
    assert "ce seed 1: training already finished" in out and out.count("already done, skipped") == 3
    assert (exp_dir / "ce" / "seed1" / "done.json").exists() and (exp_dir / "ce" / "seed1" / "eval" / "items.jsonl").exists()

    # the report alone, rebuilt from the finished runs, is the same report
    report = (exp_dir / "report.md").read_text()
    (exp_dir / "report.md").unlink()
    assert experiment.main(["report", str(exp_dir)]) == 0
    assert (exp_dir / "report.md").read_text() == report

    # other settings in the same folder: refused, not mixed in
    assert experiment.main([config, "--eval_limit=1"]) == 2
    assert "made with other settings" in capsys.readouterr().err


def test_checkpoint_selected_by_val_loss_is_evaluated_too(shared, tiny_dataset, tmp_path):
    """A run whose lowest val loss came before the end: its ckpt_best.pt gets its own benchmarks
    and probe, and the report a section for it. (Training is faked: the run folder is prepared.)"""
    import train
    from model import GPT, GPTConfig, model_config_to_dict
    config = tiny_experiment(tmp_path, tiny_dataset, seeds=[0], arms={"ce": {}})
    run = tmp_path / "exp" / "ce" / "seed0"
    run.mkdir(parents=True)
    for name, it in (("ckpt_best.pt", 2), ("ckpt.pt", 4)):
        torch.manual_seed(it)
        model = GPT(GPTConfig(**{k: TINY[k] for k in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")}))
        train.write_checkpoint(str(run / name), {"model": model.state_dict(), "model_args": model_config_to_dict(model.config),
                                                 "iter_num": it})
    (run / "metrics.jsonl").write_text('{"iter": 2, "val_loss": 5.0}\n{"iter": 4, "val_loss": 6.0}\n')

    assert experiment.main([config]) == 0
    assert (run / "eval_best" / "items.jsonl").exists() and (run / "condensation_best" / "condensation.json").exists()
    report = (tmp_path / "exp" / "report.md").read_text()
    assert "it is the final checkpoint in 0 of 1 runs" in report and "## Checkpoint selected by validation loss" in report
    best = json.loads((tmp_path / "exp" / "report.json").read_text())["summaries"]["best"]["arms"]["ce"]
    assert best["val_loss"][0] == 5.0 and best["per_seed"]["0"]["iter"] == 2
