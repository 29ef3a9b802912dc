"""bench/gpu_check.sh --dry-run: the GPU run book's pipeline on the CPU at tiny sizes, so that the
script a GPU session gets is known to run (its flags, its JSON, its summary) before one is lent."""

import json
import os
import subprocess

from conftest import REPO


def test_dry_run_writes_every_step(tmp_path):
    out = tmp_path / "gpu_check"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("NANOGPT", None)
    nanogpt = os.environ.get("NANOGPT")  # a nanoGPT clone, where the machine has one: the step runs too
    if nanogpt:
        env["NANOGPT"] = nanogpt
    result = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] and summary["failed_steps"] == []
    assert summary["engines"]["device"] == "cpu" and summary["engines"]["cases"] > 0 and not summary["engines"]["failed"]
    assert summary["train"]["tokens_per_s"] > 0 and summary["train"]["mfu"] is not None
    labels = [row["label"] for row in summary["overhead"]]
    assert labels == ["ce only", "+ angular, all layers, all positions", "+ angular, all layers, 32 positions"]
    variants = [row["variant"] for row in summary["dispersion"]]
    assert any("reference" in v for v in variants) and any("dense" in v for v in variants)
    assert any("sampled" in v for v in variants)
    alone = [row for row in summary["dispersion"] if row["variant"].startswith("loss alone")]
    assert len(alone) == 4 and all(0 < row["share_of_ce_step"] and row["overhead"] is None for row in alone)
    assert set(summary["modes"]) == {"eager", "ddp"} and all(m["agrees"] for m in summary["modes"].values())
    assert "training, ce only:" in result.stdout and "modes: ddp" in result.stdout
    skipped = summary["skipped_steps"]
    assert any(s.startswith("scorer") for s in skipped)  # only with --scorer
    if nanogpt:
        assert summary["nanogpt"]["ours_median_ms"] > 0 and "train.py iteration: ours" in result.stdout
    else:
        assert any(s.startswith("nanogpt") for s in skipped)


def test_unknown_argument_is_refused(tmp_path):
    result = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--dryrun"], capture_output=True, text=True)
    assert result.returncode == 2 and "unknown argument --dryrun" in result.stderr
