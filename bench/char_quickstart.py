"""
nanoGPT's character-level quickstart, run by nanoGPT's train.py and by ours on the same prepared
folder with the same settings: the final val loss and the wall time of each, taking turns.

nanoGPT is not part of this repository: --nanogpt names a clone of it (github.com/karpathy/nanoGPT).

    python -m data.shakespeare_char.prepare --input ../shared/corpus/shakespeare.txt   # or nanoGPT's own prepare
    python bench/char_quickstart.py --nanogpt /path/to/nanoGPT --json bench/results/char_quickstart_cpu.json

The settings are those nanoGPT's README gives for a CPU (its config/train_shakespeare_char.py, then
--device=cpu --compile=False --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12
--n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0); each
train.py reads its own config file of that name. The two draw their batches from different random
streams and estimate the val loss on 20 random batches each, so their final val losses differ by
that noise (a few hundredths); the wall times are whole runs (start-up, evaluations and checkpoint
writes included). It asserts nothing.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from bench.provenance import write_result  # noqa: E402

CPU_SETTINGS = ["--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
                "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--dropout=0.0"]


def run(cmd, cwd):
    """(seconds, stdout) of one whole training run; a failed run stops the benchmark with its stderr."""
    t0 = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    seconds = time.perf_counter() - t0
    if result.returncode:
        sys.exit(f"{' '.join(cmd[:2])} failed:\n{result.stderr[-3000:]}")
    return seconds, result.stdout


def run_ours(args, work, data_dir):
    out_dir = os.path.join(work, "out-ours")
    cmd = [sys.executable, os.path.join(REPO, "train.py"), os.path.join(REPO, "config", "train_shakespeare_char.py"),
           *CPU_SETTINGS, f"--max_iters={args.iters}", f"--lr_decay_iters={args.iters}", f"--dataset={data_dir}",
           f"--out_dir={out_dir}", "--overwrite=True"]
    seconds, _ = run(cmd, REPO)
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        evals = [json.loads(line) for line in f if '"val_loss"' in line]
    return seconds, evals[-1]["iter"], evals[-1]["val_loss"]


def run_nanogpt(args, work):
    # nanoGPT's train.py reads configurator.py, config/ and data/<dataset>/ from its working directory
    cmd = [sys.executable, os.path.join(args.nanogpt, "train.py"), "config/train_shakespeare_char.py", *CPU_SETTINGS,
           f"--max_iters={args.iters}", f"--lr_decay_iters={args.iters}", "--dataset=shakespeare_char",
           f"--out_dir={work}/out-nanogpt", "--wandb_log=False"]
    seconds, stdout = run(cmd, work)
    evals = re.findall(r"^step (\d+): train loss [\d.]+, val loss ([\d.]+)", stdout, re.M)
    return seconds, int(evals[-1][0]), float(evals[-1][1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nanogpt", required=True, help="folder of a nanoGPT clone (its train.py, model.py, config/)")
    p.add_argument("--data", default=os.path.join(REPO, "data", "shakespeare_char"),
                   help="the prepared folder (train.bin, val.bin, meta.pkl); default data/shakespeare_char")
    p.add_argument("--iters", type=int, default=2000, help="iterations per run (nanoGPT's CPU quickstart: 2000)")
    p.add_argument("--rounds", type=int, default=1, help="runs per side, taking turns which goes first")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    args.nanogpt = os.path.abspath(args.nanogpt)
    for path in (os.path.join(args.nanogpt, "train.py"), os.path.join(args.data, "meta.pkl")):
        if not os.path.isfile(path):
            sys.exit(f"missing {path}: --nanogpt takes a nanoGPT clone, --data a folder prepared by "
                     "python -m data.shakespeare_char.prepare (or nanoGPT's prepare.py)")
    rows = []
    with tempfile.TemporaryDirectory() as work:
        os.makedirs(os.path.join(work, "data"))
        os.symlink(os.path.abspath(args.data), os.path.join(work, "data", "shakespeare_char"))
        for name in ("configurator.py", "config"):
            os.symlink(os.path.join(args.nanogpt, name), os.path.join(work, name))
        for r in range(args.rounds):
            for side in (("ours", "nanogpt") if r % 2 == 0 else ("nanogpt", "ours")):
                seconds, it, val = run_ours(args, work, args.data) if side == "ours" else run_nanogpt(args, work)
                rows.append({"round": r, "side": side, "seconds": seconds, "iter": it, "val_loss": val})
                print(f"round {r} {side:8s} {seconds:7.1f} s, val loss {val:.4f} at step {it}", flush=True)
    summary = {side: {"seconds": [x["seconds"] for x in rows if x["side"] == side],
                      "val_loss": [x["val_loss"] for x in rows if x["side"] == side]} for side in ("ours", "nanogpt")}
    if args.json:
        write_result(args.json, {"settings": {"iters": args.iters, "rounds": args.rounds, "flags": CPU_SETTINGS},
                                 "runs": rows, "summary": summary})


if __name__ == "__main__":
    main()
