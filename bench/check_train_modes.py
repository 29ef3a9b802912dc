"""
Do train.py's modes agree? The same short run (same seed, same batches) eager, compiled, and with
--nproc N as an N-process torchrun (DDP); per iteration losses and times from each metrics.jsonl.

    python bench/check_train_modes.py --json bench/results/train_modes.json -- --n_layer=12 --n_embd=768 ...
    python bench/check_train_modes.py --modes eager,compiled,ddp --nproc 2 -- --device=cuda --dtype=bfloat16

All runs use gradient_accumulation_steps = --accum (a multiple of --nproc): train.py draws micro-batch
k of iteration i from the key (seed, i, k) whichever rank runs it, so the DDP run sees the very batches
of the single-process runs and its losses should match theirs to rounding. Printed: each mode's losses,
median ms/iter after the first (compile) iterations, and the largest relative loss difference from
eager. It asserts nothing; --tol only labels the result "agree" or "DIFFER".
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from bench.provenance import write_result  # noqa: E402


def run(mode, args, dataset, out_dir):
    settings = [f"--dataset={dataset}", f"--out_dir={out_dir}", f"--max_iters={args.iters}", "--eval_interval=100000",
                "--eval_iters=1", "--log_interval=1", "--always_save_checkpoint=False", "--warmup_iters=0",
                f"--gradient_accumulation_steps={args.accum}", f"--compile={mode != 'eager'}", *args.extra]
    train = os.path.join(REPO, "train.py")
    cmd = [sys.executable, train, *settings]
    if mode == "ddp":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}", train, *settings]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{mode}: train.py failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if '"dt_ms"' in line]
    timed = [r["dt_ms"] for r in rows[args.skip:]] or [r["dt_ms"] for r in rows]
    return {"losses": [r["loss"] for r in rows], "ms_per_iter": statistics.median(timed),
            "tokens_per_s": (rows[-1]["tokens"] - rows[-2]["tokens"]) / statistics.median(timed) * 1000 if len(rows) > 1 else None,
            "mfu": rows[-1].get("mfu")}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("extra", nargs="*", help="train.py --key=value settings (after --)")
    p.add_argument("--modes", default="eager,compiled", help="comma-separated, of eager, compiled, ddp")
    p.add_argument("--nproc", type=int, default=2, help="ddp: processes")
    p.add_argument("--accum", type=int, default=2, help="gradient_accumulation_steps of every run")
    p.add_argument("--iters", type=int, default=6)
    p.add_argument("--skip", type=int, default=2, help="first iterations left out of the time")
    p.add_argument("--tol", type=float, default=1e-2, help="relative loss difference called agreement")
    p.add_argument("--dataset", default=None, help="prepared dataset folder (default: random GPT-2 tokens)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    modes = args.modes.split(",")
    if "eager" not in modes or any(m not in ("eager", "compiled", "ddp") for m in modes):
        p.error(f"--modes {args.modes}: give eager and any of compiled, ddp")
    if args.accum % args.nproc:
        p.error(f"--accum {args.accum} must be a multiple of --nproc {args.nproc}")
    from bench.bench_nanogpt import write_dataset
    results = {}
    with tempfile.TemporaryDirectory() as work:
        dataset = args.dataset
        if dataset is None:
            dataset = os.path.join(work, "data")
            write_dataset(dataset)
        for mode in modes:
            results[mode] = run(mode, args, dataset, os.path.join(work, mode))
    base = results["eager"]["losses"]
    print(f"{'mode':<10} {'ms/iter':>9} {'tokens/s':>10} {'max rel diff':>13}  losses")
    for mode, r in results.items():
        r["max_rel_diff_vs_eager"] = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(base, r["losses"]))
        r["agrees"] = r["max_rel_diff_vs_eager"] <= args.tol
        tps = f"{r['tokens_per_s']:.0f}" if r["tokens_per_s"] else "n/a"
        print(f"{mode:<10} {r['ms_per_iter']:9.1f} {tps:>10} {r['max_rel_diff_vs_eager']:13.2e}  "
              + " ".join(f"{x:.4f}" for x in r["losses"]) + ("" if r["agrees"] else "  DIFFER"))
    if args.json:
        write_result(args.json, {"tol": args.tol, "results": results})


if __name__ == "__main__":
    main()
