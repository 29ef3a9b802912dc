"""
Does the code at another git revision train to the very same losses? Short fixed-seed CPU runs of
train.py, each at REV and at the working tree, and every logged number compared bit for bit.

    python bench/same_losses.py --rev HEAD~3          # a restructuring must print "identical" for every run
    python bench/same_losses.py --rev main --runs ce,angular

The runs cover the paths a change could disturb: cross-entropy with dropout, gradient clipping and
the learning-rate schedule; the angular loss with token subsampling; both gradient controls; NEFTune
with decorrelation; a Qwen3-shaped model with orthogonalization; distillation; a run resumed
halfway. They train a 2-layer model for a few iterations on random tokens (a dataset written here).
Timing fields (dt_ms, mfu, mem_mb) are not compared. Exit status 1 if any number differs.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=4", "--vocab_size=500",
        "--gradient_accumulation_steps=2", "--device=cpu", "--dtype=float32", "--compile=False", "--max_iters=8",
        "--eval_interval=4", "--eval_iters=2", "--log_interval=1", "--warmup_iters=2", "--lr_decay_iters=8",
        "--learning_rate=3e-3", "--min_lr=3e-4", "--dropout=0.1"]
RUNS = {
    "ce": [],
    "angular": ["--dispersion=angular", "--dispersion_weight=0.5", "--dispersion_max_tokens=16"],
    "rotated_angular": ["--dispersion=rotated_angular", "--dispersion_weight=0.5"],
    "random_direction": ["--dispersion=random_direction", "--dispersion_weight=0.5", "--dispersion_layers=1,2"],
    "neftune_decorrelation": ["--neftune_alpha=5.0", "--dispersion=decorrelation", "--dispersion_weight=0.3"],
    "qwen3_orthogonalization": ["--norm=rmsnorm", "--pos_emb=rope", "--mlp=swiglu", "--n_kv_head=1", "--qk_norm=True",
                                "--bias=False", "--dispersion=orthogonalization", "--dispersion_weight=1.0"],
    "distill": ["--distill_weight=0.5", "--distill_temperature=2.0"],  # the teacher: the ce run's checkpoint
    "resumed": [],  # 4 iterations, then --init_from=resume to 8
}
TIMING = ("dt_ms", "mfu", "mem_mb")


def write_dataset(folder):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        ids = rng.integers(0, 500, size=20_000, dtype=np.uint16)
        ids.tofile(os.path.join(folder, f"{split}.bin"))
    meta = {"tokenizer": "gpt2", "vocab_size": 500, "dtype": "uint16", "source": "random tokens (bench/same_losses.py)"}
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump(meta, f)


def train(tree, settings, out_dir):
    cmd = [sys.executable, os.path.join(tree, "train.py"), *settings, f"--out_dir={out_dir}"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tree,
                            env={**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"})
    if result.returncode:
        raise SystemExit(f"train.py in {tree} failed: {' '.join(cmd)}\n{result.stderr[-3000:]}")


def records(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f if line.strip()]


def run(tree, name, data, work):
    out = os.path.join(work, name)
    settings = [*TINY, f"--dataset={data}", "--seed=7", *RUNS[name]]
    if name == "distill":
        settings.append(f"--distill_from={os.path.join(work, 'ce')}")
    if name == "resumed":
        train(tree, [*settings, "--max_iters=4"], out)
        settings.append("--init_from=resume")
    train(tree, settings, out)
    return records(out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rev", required=True, help="the git revision to compare the working tree with")
    p.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, of {', '.join(RUNS)}")
    args = p.parse_args()
    names = [n for n in args.runs.split(",") if n]
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        raise SystemExit(f"--runs: unknown {unknown}; choose from {', '.join(RUNS)}")
    if "distill" in names and "ce" not in names:
        names.insert(0, "ce")  # the teacher
    with tempfile.TemporaryDirectory() as work:
        old_tree = os.path.join(work, "old")
        os.makedirs(old_tree)
        archive = subprocess.run(["git", "archive", args.rev], cwd=REPO, capture_output=True)
        if archive.returncode:
            raise SystemExit(f"--rev {args.rev}: {archive.stderr.decode().strip()}")
        subprocess.run(["tar", "-x", "-C", old_tree], input=archive.stdout, check=True)
        data = os.path.join(work, "data")
        write_dataset(data)
        differ = 0
        for name in names:
            old = run(old_tree, name, data, os.path.join(work, "at-rev"))
            new = run(REPO, name, data, os.path.join(work, "now"))
            diffs = [(a.get("iter"), k, a.get(k), b.get(k)) for a, b in zip(old, new)
                     for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            if len(old) != len(new):
                diffs.append(("records", "count", len(old), len(new)))
            n_numbers = sum(len(r) for r in new)
            print(f"{name:26s} {'identical' if not diffs else 'DIFFERENT'}: {len(new)} records, {n_numbers} values"
                  + "".join(f"\n    iter {it}: {k}: {a!r} at {args.rev}, {b!r} now" for it, k, a, b in diffs[:5]))
            differ += bool(diffs)
    print(f"{len(names) - differ} of {len(names)} runs identical to {args.rev}")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
