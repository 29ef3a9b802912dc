"""experiment.py: config checks, and a tiny grid end to end (training, benchmarks, probe, report)."""

import json
import os
import time
from pathlib import Path

import pytest
import torch

import experiment
from experiment import ExperimentError, load_experiment


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
    ({"baselines": {"angular": "ce2"}}, "baselines['angular']='ce2': both must be arms"),
    ({"baselines": {"ce": "ce"}}, "baselines['ce'] is the arm itself"),
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
    assert load_config(train.DEFAULTS, cmd[4:], train.TYPES)["dispersion_layers"] == "1,2"


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


def test_dry_run_checks_the_inputs_the_real_run_reads(shared, tiny_dataset, tmp_path, capsys, monkeypatch):
    """dry_run's "config OK" means the runs will find their inputs: a missing benchmark folder, probe
    text or data folder stops the dry run with the very message the real run stops with, and nothing
    is written."""
    from eval import tasks
    monkeypatch.setattr(tasks, "hub_reachable", lambda: False)  # offline: a missing split is an error, not a download
    config = tiny_experiment(tmp_path, tiny_dataset, seeds=[0], arms={"ce": {}})
    assert experiment.main([config, "--dry_run=True"]) == 0
    assert "config OK" in capsys.readouterr().out
    no_data = {**TINY, "dataset": str(tmp_path / "no_data")}
    for override, message in [
            (f"--eval_data_dir={tmp_path / 'no_bench'}", f"tasks: benchmark data missing in {tmp_path / 'no_bench'}: "
             "arc_easy/test.jsonl, piqa/validation.jsonl. Set eval_data_dir or DISPERSE_BENCHMARKS"),
            (f"--probe_text={tmp_path / 'no.txt'}", "probe text"),
            (f"--base_overrides={no_data!r}", f"arm 'ce': missing {tmp_path / 'no_data' / 'train.bin'} and meta.json")]:
        errors = []
        for dry_run in (True, False):
            assert experiment.main([config, override, f"--dry_run={dry_run}"]) == 2
            errors.append(capsys.readouterr().err)
        assert message in errors[0] and errors[0] == errors[1], errors
    assert not (tmp_path / "exp").exists()
    # wikitext's raw test file stands in for its split, as eval/benchmarks.py reads it
    monkeypatch.setenv("DISPERSE_WIKITEXT_TEST", str(tmp_path / "probe.txt"))
    assert tasks.check_task_data("wikitext", str(tmp_path / "no_bench"), "tasks") == ["wikitext"]
    monkeypatch.delenv("DISPERSE_WIKITEXT_TEST")
    with pytest.raises(FileNotFoundError, match="DISPERSE_WIKITEXT_TEST may name the raw WikiText-103 test file"):
        tasks.check_task_data("wikitext", str(tmp_path / "no_bench"), "tasks")


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
    record = final["deltas"]["angular"]["avg_acc"]["new_items"]
    assert record["lo"] is None or record["lo"] <= record["estimate"] <= record["hi"]
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
    import checkpoint
    from model import GPT, GPTConfig, model_config_to_dict
    config = tiny_experiment(tmp_path, tiny_dataset, seeds=[0], arms={"ce": {}})
    run = tmp_path / "exp" / "ce" / "seed0"
    run.mkdir(parents=True)
    for name, it in (("ckpt_best.pt", 2), ("ckpt.pt", 4)):
        torch.manual_seed(it)
        model = GPT(GPTConfig(**{k: TINY[k] for k in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")}))
        data = {"dataset": str(tiny_dataset), "block_size": TINY["block_size"], "batch_size": 4, "seed": 0, "eval_iters": 2}
        checkpoint.write(str(run / name), {"model": model.state_dict(), "model_args": model_config_to_dict(model.config),
                                           "iter_num": it, "config": data})
    (run / "metrics.jsonl").write_text('{"iter": 2, "val_loss": 5.0}\n{"iter": 4, "val_loss": 6.0}\n')

    assert experiment.main([config]) == 0
    assert (run / "eval_best" / "items.jsonl").exists() and (run / "condensation_best" / "condensation.json").exists()
    report = (tmp_path / "exp" / "report.md").read_text()
    assert "it is the final checkpoint in 0 of 1 runs" in report and "## Checkpoint selected by validation loss" in report
    best = json.loads((tmp_path / "exp" / "report.json").read_text())["summaries"]["best"]["arms"]["ce"]
    # the selected checkpoint's val CE on batches it was not selected by, not the logged 5.0 it was chosen for
    fresh = json.loads((run / "eval_best" / "val_fresh.json").read_text())
    assert fresh["batches"] == 2 and fresh["val_loss"] > 0 and best["val_loss"][0] == pytest.approx(fresh["val_loss"])
    assert best["per_seed"]["0"]["iter"] == 2 and "val CE (fresh batches)" in report


@pytest.mark.parametrize("name", sorted(p.name for p in (Path(experiment.REPO) / "config").glob("experiment_*.py")))
def test_every_shipped_experiment_config_loads(name):
    """The configs the README and docs tell people to run: every key known, every arm a valid set
    of train.py settings, every baseline an arm (load_experiment runs nothing)."""
    cfg, plan = load_experiment([str(Path(experiment.REPO) / "config" / name)])
    assert cfg["baseline"] in plan and set(cfg["baselines"]) <= set(plan)
    assert all(spec["effective"] for spec in plan.values())
