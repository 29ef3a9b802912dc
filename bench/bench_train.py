"""
Training throughput of train.py for a given config: tokens/s, ms per iteration, peak memory, MFU.

It runs train.py itself (so what is timed is the real training step) for a few iterations on a
prepared dataset or, without --dataset, on random tokens, and reads the timings back from
metrics.jsonl, skipping the warm-up iterations (the first ones include torch.compile).

    python bench/bench_train.py config/train_local_cpu.py
    python bench/bench_train.py config/train_gpt2.py --iters 30 --warmup 10 -- --batch_size=16 --compile=True
    python bench/bench_train.py --dispersion-overhead --preset gpt2-cpu    # issue: angular loss cost

--dispersion-overhead runs the same config three times: CE only, + angular dispersion on all
layers with all positions, + angular with --sampled (256) sampled positions, and prints the overheads.
The three runs take turns (--rounds times, in alternating order) when --rounds is above 1.
Results are printed as a table and written as JSON (--json).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from bench.provenance import write_result  # noqa: E402

PRESETS = {
    # GPT-2 124M at context 1024, one sequence per step, float32 on CPU
    "gpt2-cpu": ["--n_layer=12", "--n_head=12", "--n_embd=768", "--block_size=1024", "--batch_size=1",
                 "--gradient_accumulation_steps=1", "--device=cpu", "--dtype=float32", "--compile=False"],
    # GPT-2 124M at context 1024 on one GPU, bf16, compiled (nanoGPT's benchmark setting)
    "gpt2-gpu": ["--n_layer=12", "--n_head=12", "--n_embd=768", "--block_size=1024", "--batch_size=12",
                 "--gradient_accumulation_steps=1", "--device=cuda", "--dtype=bfloat16", "--compile=True"],
}


def random_dataset(folder, vocab_size=50257, n_tokens=2_000_000):
    from data.common import write_meta
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        rng.integers(0, vocab_size, size=n_tokens, dtype=np.uint16).tofile(os.path.join(folder, f"{split}.bin"))
    write_meta(folder, source="random tokens (benchmark)")
    return folder


def run(args, label, extra, dataset, iters, warmup):
    with tempfile.TemporaryDirectory() as out_dir:
        cmd = [sys.executable, os.path.join(REPO, "train.py"), *args.config, *extra,
               f"--dataset={dataset}", f"--out_dir={out_dir}", f"--max_iters={iters}",
               f"--eval_interval={10**9}", "--eval_iters=1", "--log_interval=1", "--always_save_checkpoint=False"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"{label}: train.py failed:\n{result.stderr[-3000:]}")
        with open(os.path.join(out_dir, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f if '"dt_ms"' in line]
    timed = rows[warmup:]
    if not timed:
        sys.exit(f"--iters={iters} leaves no iteration after --warmup={warmup}")
    tokens_per_iter = rows[1]["tokens"] - rows[0]["tokens"] if len(rows) > 1 else rows[0]["tokens"]
    ms = statistics.median(r["dt_ms"] for r in timed)
    mfus = [r["mfu"] for r in timed if r["mfu"] is not None]
    return {"label": label, "ms_per_iter": ms, "tokens_per_s": tokens_per_iter / ms * 1000,
            "tokens_per_iter": tokens_per_iter, "peak_mem_mb": max(r["mem_mb"] for r in rows),
            "mfu": statistics.median(mfus) if mfus else None, "iters_timed": len(timed), "extra_args": extra}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="*", help="config files and --key=value overrides for train.py (after --)")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="a ready set of overrides")
    parser.add_argument("--dataset", help="a prepared dataset folder (default: random tokens)")
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--dispersion-overhead", action="store_true")
    parser.add_argument("--sampled", type=int, default=256, help="positions of the sampled dispersion run")
    parser.add_argument("--rounds", type=int, default=1, help="runs per arm, taking turns (default 1)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if args.preset:
        args.config = PRESETS[args.preset] + args.config
    with tempfile.TemporaryDirectory() as data_dir:
        dataset = args.dataset or random_dataset(data_dir)
        arms = [("ce only", [])]
        if args.dispersion_overhead:
            arms += [("+ angular, all layers, all positions", ["--dispersion=angular", "--dispersion_layers=all"]),
                     (f"+ angular, all layers, {args.sampled} positions",
                      ["--dispersion=angular", "--dispersion_layers=all", f"--dispersion_max_tokens={args.sampled}"])]
        runs = {label: [] for label, _ in arms}
        for r in range(args.rounds):
            for label, extra in (arms if r % 2 == 0 else arms[::-1]):
                runs[label].append(run(args, label, extra, dataset, args.iters, args.warmup))
    results = []
    for label, rounds in runs.items():  # the median round of each arm
        results.append(sorted(rounds, key=lambda r: r["ms_per_iter"])[len(rounds) // 2])
        results[-1]["rounds_ms_per_iter"] = [r["ms_per_iter"] for r in rounds]
    base = results[0]
    print(f"{'run':40s} {'ms/iter':>9s} {'tokens/s':>10s} {'peak MB':>9s} {'MFU':>7s} {'time +':>7s} {'mem +':>7s}")
    for r in results:
        r["time_overhead"] = r["ms_per_iter"] / base["ms_per_iter"] - 1
        r["mem_overhead"] = r["peak_mem_mb"] / base["peak_mem_mb"] - 1
        mfu = f"{r['mfu'] * 100:.1f}%" if r["mfu"] is not None else "n/a"
        print(f"{r['label']:40s} {r['ms_per_iter']:9.1f} {r['tokens_per_s']:10.0f} {r['peak_mem_mb']:9.0f} {mfu:>7s} "
              f"{r['time_overhead'] * 100:+6.1f}% {r['mem_overhead'] * 100:+6.1f}%")
    if args.json:
        write_result(args.json, {"results": results})


if __name__ == "__main__":
    main()
