"""experiment.py's runner: the base run (pretrained once, reused, refused when its settings change),
arms that mid-train from its weights, parallel runs (jobs=2 gives the folders jobs=1 gives),
per-task eval limits, and the wandb names of every run."""

import json
import shutil

import pytest

import experiment
from eval.evaluate import task_limits
from experiment import ExperimentError, load_experiment
from test_experiment import fake_benchmarks, write_config

TINY_BASE = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32, "vocab_size": 50257, "batch_size": 4,
             "gradient_accumulation_steps": 1, "device": "cpu", "dtype": "float32", "compile": False,
             "max_iters": 4, "eval_interval": 2, "eval_iters": 1, "warmup_iters": 1, "seed": 0}
TINY_MIDTRAIN = {"batch_size": 4, "gradient_accumulation_steps": 1, "device": "cpu", "dtype": "float32",
                 "compile": False, "max_iters": 2, "eval_interval": 2, "eval_iters": 1, "warmup_iters": 1}
TIMINGS = ("dt_ms", "mfu", "mem_mb")  # the only metrics that differ between two identical runs


def base_experiment(tmp_path, dataset, name="exp", **settings):
    """A base run and two arms over 2-layer, 32-wide models; fake benchmarks, a short probe text."""
    text = tmp_path / "probe.txt"
    text.write_text("The quick brown fox jumps over the lazy dog near the river bank. " * 40)
    bench = tmp_path / "bench"
    if not bench.exists():
        fake_benchmarks(bench)
    return write_config(tmp_path / f"{name}.py", **{
        "base_run": {"dataset": str(dataset), **TINY_BASE}, "base_overrides": {"dataset": str(dataset), **TINY_MIDTRAIN},
        "arms": {"ce": {}, "angular": {"dispersion": "angular", "dispersion_weight": 1.0}}, "seeds": [0],
        "exp_dir": str(tmp_path / name), "tasks": "piqa,arc_easy", "eval_limit": 3, "eval_limits": {"piqa": 2},
        "eval_data_dir": str(bench), "eval_device": "cpu", "probe_text": str(text), "probe_n_seq": 2,
        "probe_seq_len": 16, "n_boot": 50, "threads": 1, **settings})


def metrics(path):
    return [{k: v for k, v in json.loads(line).items() if k not in TIMINGS} for line in open(path) if line.strip()]


@pytest.fixture(scope="module")
def grids(tmp_path_factory, tiny_dataset, shared):
    """The same experiment run with jobs=1 and with jobs=2, in two folders (the second reuses a copy
    of the first's base: the base runs alone either way)."""
    tmp = tmp_path_factory.mktemp("runner")
    configs = {jobs: base_experiment(tmp, tiny_dataset, name=f"exp{jobs}", jobs=jobs) for jobs in (1, 2)}
    assert experiment.main([configs[1]]) == 0
    shutil.copytree(tmp / "exp1" / "base", tmp / "exp2" / "base")
    assert experiment.main([configs[2]]) == 0
    return tmp, configs


def test_arms_mid_train_from_the_base_and_a_rerun_reuses_it(grids, tiny_dataset, capsys):
    tmp, configs = grids
    exp = tmp / "exp1"
    base_val = {r["iter"]: r["val_loss"] for r in metrics(exp / "base" / "metrics.jsonl") if "val_loss" in r}
    assert base_val[4] < base_val[0]  # the base was trained
    for arm in ("ce", "angular"):
        run = exp / arm / "seed0"
        arm_val = [r for r in metrics(run / "metrics.jsonl") if "val_loss" in r]
        # iteration 0 of an arm is the base's final model on the same eval batches (same seed)
        assert arm_val[0]["iter"] == 0 and arm_val[0]["val_loss"] == base_val[4]
        assert "--init_from=" + str(exp / "base") in (run / "train.log").read_text()
        done = json.loads((run / "done.json").read_text())
        assert done["spec"]["base"]["settings"]["n_layer"] == 2 and done["val_loss"] == arm_val[-1]["val_loss"]
    assert (exp / "base" / "eval" / "results.json").exists() and (exp / "base" / "condensation" / "condensation.json").exists()
    meta = json.loads((exp / "experiment.json").read_text())
    assert meta["base"]["dir"] == "base" and meta["base"]["spec"]["seed"] == 0

    # a rerun: the base (and every arm) is skipped, its checkpoint left as it was
    ckpt = exp / "base" / "ckpt.pt"
    stamp = ckpt.stat().st_mtime_ns
    capsys.readouterr()
    assert experiment.main([configs[1]]) == 0
    out = capsys.readouterr().out
    assert "base run: already done, skipped" in out and out.count("already done, skipped") == 3
    assert ckpt.stat().st_mtime_ns == stamp

    # a base whose training finished but whose evaluation did not: only the evaluation runs again
    (exp / "base" / "done.json").unlink()
    shutil.rmtree(exp / "base" / "eval")
    assert experiment.main([configs[1]]) == 0
    out = capsys.readouterr().out
    assert "base run: training already finished" in out and (exp / "base" / "eval" / "results.json").exists()
    assert ckpt.stat().st_mtime_ns == stamp

    # a base with other settings in the same folder: refused, not mixed in
    other = {"dataset": str(tiny_dataset), **TINY_BASE, "max_iters": 6}
    assert experiment.main([configs[1], f"--base_run={other!r}"]) == 2
    assert "base was made with other settings" in capsys.readouterr().err


def test_two_jobs_give_the_folders_one_job_gives(grids, capsys):
    tmp, configs = grids
    for run in ("ce/seed0", "angular/seed0"):
        one, two = tmp / "exp1" / run, tmp / "exp2" / run
        assert metrics(one / "metrics.jsonl") == metrics(two / "metrics.jsonl")
        assert (one / "eval" / "items.jsonl").read_text() == (two / "eval" / "items.jsonl").read_text()
        probe = [json.loads((d / "condensation" / "condensation.json").read_text()) for d in (one, two)]
        assert probe[0]["layers"] == probe[1]["layers"] and probe[0]["spearman"] == probe[1]["spearman"]
        assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
    # the parallel runs kept their output in train.log, and the report has both arms
    assert "train" in (tmp / "exp2" / "angular" / "seed0" / "train.log").read_text()
    assert "Runs finished: 2 of 2" in (tmp / "exp2" / "report.md").read_text()
    # an arm folder made with other settings, found by a worker process: refused there, reported here
    arms = {"ce": {}, "angular": {"dispersion": "angular", "dispersion_weight": 0.5}}
    capsys.readouterr()
    assert experiment.main([configs[2], f"--arms={arms!r}"]) == 2
    assert "angular/seed0 was made with other settings" in capsys.readouterr().err


def test_each_task_gets_its_own_limit(grids):
    tmp, _ = grids
    results = json.loads((tmp / "exp1" / "ce" / "seed0" / "eval" / "results.json").read_text())
    assert results["piqa"]["n"] == 2 and results["arc_easy"]["n"] == 3  # eval_limits, else eval_limit
    assert results["config"]["limits"] == {"piqa": 2, "arc_easy": 3}
    items = [json.loads(line)["task"] for line in open(tmp / "exp1" / "ce" / "seed0" / "eval" / "items.jsonl")]
    assert items == ["piqa"] * 2 + ["arc_easy"] * 3  # in the order of `tasks`


def test_task_limits_a_task_beats_its_group():
    cfg = {"tasks": "mmlu_anatomy,mmlu_virology,piqa", "eval_limit": 20,
           "eval_limits": {"mmlu_anatomy": None, "mmlu": 5}}
    assert task_limits(cfg) == {"mmlu_anatomy": None, "mmlu_virology": 5, "piqa": 20}


@pytest.mark.parametrize("settings, message", [
    ({"arms": {"ce": {}, "wide": {"n_embd": 64}}},
     "arm 'wide': n_embd=64, but the arms mid-train the base, whose n_embd is 32; set the architecture in base_run"),
    ({"arms": {"ce": {}, "long": {"block_size": 64}}}, "arm 'long': block_size=64 is longer than the base's (32)"),
    ({"arms": {"ce": {}, "x": {"init_from": "gpt2"}}}, "arm 'x': 'init_from' is set by the experiment runner"),
    ({"arms": {"ce": {}, "base": {}}}, "arm name 'base' is the base run's folder"),
    ({"base_run": {**TINY_BASE, "dispersion": "angular"}}, "base_run: dispersion='angular'; the base is pretrained"),
    ({"base_run": {**TINY_BASE, "n_layr": 2}}, "base_run: 'n_layr' is not a train.py setting; did you mean n_layer"),
    ({"eval_limits": {"lambada": 500}}, "eval_limits: 'lambada' is not a task or group; did you mean lambada_openai"),
    ({"eval_limits": {"mmlu": 5}}, "eval_limits: 'mmlu' is not among tasks"),
    ({"eval_limits": {"piqa": 0}}, "eval_limits['piqa']=0 must be an int >= 1 or None"),
])
def test_base_and_limit_settings_errors_name_the_problem(tmp_path, tiny_dataset, settings, message):
    with pytest.raises(ExperimentError) as e:
        load_experiment([base_experiment(tmp_path, tiny_dataset, **settings)])
    assert message in str(e.value)


def test_arms_keep_the_base_architecture(tmp_path, tiny_dataset):
    cfg, plan = load_experiment([base_experiment(tmp_path, tiny_dataset)])
    for arm in ("ce", "angular"):
        effective = plan[arm]["effective"]
        assert (effective["n_layer"], effective["n_embd"], effective["block_size"]) == (2, 32, 32)
        assert plan[arm]["base"]["seed"] == 0 and effective["max_iters"] == 2
    spec = experiment.run_spec(cfg, plan, "angular", 0)
    assert spec["base"]["settings"]["max_iters"] == 4 and "effective" not in spec["base"]


def test_every_run_is_named_for_wandb(tmp_path, tiny_dataset, shared, capsys):
    config = base_experiment(tmp_path, tiny_dataset, dry_run=True, seeds=[0, 3])
    tracked = [config, f"--base_run={ {**TINY_BASE, 'dataset': str(tiny_dataset), 'wandb_log': True}!r}",
               f"--base_overrides={ {**TINY_MIDTRAIN, 'dataset': str(tiny_dataset), 'wandb_log': True}!r}"]
    assert experiment.main(tracked) == 0
    commands = capsys.readouterr().out.splitlines()[:-1]
    names = [next(a for a in c.split() if a.startswith("--wandb_run_name=")) for c in commands]
    assert names == ["--wandb_run_name=base", "--wandb_run_name=ce/seed0", "--wandb_run_name=angular/seed0",
                     "--wandb_run_name=ce/seed3", "--wandb_run_name=angular/seed3"]
    assert all("--wandb_group=exp" in c.split() for c in commands)
    assert experiment.main([config]) == 0  # wandb off: no names passed
    assert "--wandb" not in capsys.readouterr().out


def test_wandb_offline_run_of_the_base(tmp_path, tiny_dataset, shared, monkeypatch):
    """A real (offline) wandb run: the base's, named and grouped by the runner; metrics.jsonl as ever.
    (Only the base tracks, to keep it fast: the arms' names are checked in the dry run above.)"""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = base_experiment(tmp_path, tiny_dataset, name="tracked_exp", arms={"ce": {}}, select_by_val=False,
                             base_run={**TINY_BASE, "dataset": str(tiny_dataset), "max_iters": 2, "wandb_log": True})
    assert experiment.main([config]) == 0
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    log = next(runs[0].glob("run-*.wandb")).read_bytes()
    # the run file holds the name and the group as strings (protobuf)
    assert b"tracked_exp" in log and b"base" in log
    assert metrics(tmp_path / "tracked_exp" / "base" / "metrics.jsonl")[-1]["iter"] == 2


def test_one_base_per_seed_puts_pretraining_variance_in(tmp_path, tiny_dataset):
    """base_per_seed=True: a base per seed, pretrained with that seed, and each seed's arms mid-train
    their own seed's base (planned only: no training here)."""
    no_seed = {"dataset": str(tiny_dataset), **{k: v for k, v in TINY_BASE.items() if k != "seed"}}
    config = base_experiment(tmp_path, tiny_dataset, seeds=[0, 3], base_per_seed=True, base_run=no_seed)
    cfg, plan = load_experiment([config])
    bases, runs = experiment.plan_runs(cfg, plan)
    exp = tmp_path / "exp"
    assert [b["dir"] for b in bases] == [str(exp / "base" / "seed0"), str(exp / "base" / "seed3")]
    assert [b["spec"]["seed"] for b in bases] == [0, 3] and "--seed=3" in bases[1]["command"]
    for run in runs:
        base_dir = exp / "base" / f"seed{run['seed']}"
        assert f"--init_from={base_dir}" in run["command"]
        assert run["spec"]["base"]["per_seed"] is True and run["spec"]["base"]["seed"] == run["seed"]
    # base_run may not fix the seed then, and base_per_seed needs a base stage
    bad = base_experiment(tmp_path, tiny_dataset, name="bad", base_per_seed=True)
    with pytest.raises(ExperimentError, match="base_per_seed=True each base takes its runs' seed"):
        load_experiment([bad])
    with pytest.raises(ExperimentError, match="base_per_seed=True needs base_run"):
        load_experiment([config, "--base_run={}"])


def test_a_failed_run_stops_a_parallel_grid_without_a_traceback(tmp_path, tiny_dataset, capsys):
    """jobs=2, keep_going=False: the runs not yet started are cancelled, and the grid says so and exits 1."""
    diverge = {"learning_rate": 1e30, "warmup_iters": 0}  # a non-finite loss: each run fails in training
    arms = {"ce": dict(diverge), **{name: dict(diverge) for name in ("a", "b")}}
    config = base_experiment(tmp_path, tiny_dataset, jobs=2, arms=arms)
    assert experiment.main([config]) != 0
    err = capsys.readouterr()
    text = err.out + err.err
    assert "training FAILED" in text and "rerun the same command to resume" in text
    assert "Traceback" not in text and "CancelledError" not in text
