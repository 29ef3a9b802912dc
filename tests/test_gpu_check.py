"""bench/gpu_check.sh --dry-run: the GPU run book's pipeline on the CPU at tiny sizes, so that the
script a GPU session gets is known to run (its flags, its JSON, its summary) before one is lent."""

import json
import os
import subprocess

from conftest import REPO


def test_dry_run_writes_every_step(tmp_path):
    out = tmp_path / "gpu_check"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] and summary["failed_steps"] == []
    assert summary["train"]["tokens_per_s"] > 0 and summary["train"]["mfu"] is not None
    variants = [row["variant"] for row in summary["dispersion"]]
    assert any("reference" in v for v in variants) and any("tiled" in v for v in variants)
    assert any("sampled" in v for v in variants)
    alone = [row for row in summary["dispersion"] if row["variant"].startswith("loss alone")]
    assert len(alone) == 1 and 0 < alone[0]["share_of_ce_step"] and alone[0]["overhead"] is None
    assert set(summary["modes"]) == {"eager", "ddp"} and all(m["agrees"] for m in summary["modes"].values())
    assert "training:" in result.stdout and "modes: ddp" in result.stdout
    skipped = summary["skipped_steps"]
    assert all(s.startswith(("scorer", "triton")) for s in skipped)
    if not any(s.startswith("scorer") for s in skipped):
        assert summary["scorer"] and summary["scorer"][0]["ours_items_per_s"] > 0
    if not any(s.startswith("triton") for s in skipped):  # the kernels checked under the interpreter
        assert summary["triton"]["device"] == "cpu" and summary["triton"]["cases"] > 0
        assert summary["triton"]["failed"] == [] and "triton kernels vs the float64 reference" in result.stdout


def test_unknown_argument_is_refused(tmp_path):
    result = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--dryrun"], capture_output=True, text=True)
    assert result.returncode == 2 and "unknown argument --dryrun" in result.stderr
