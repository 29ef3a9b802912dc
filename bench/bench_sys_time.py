"""
User and sys (kernel) CPU time of a short train.py run, with and without malloc_tuning.

Kernel time on a par with the compute means the process spends its time asking the OS for memory
and page-faulting it in: big tensors (the (B, T, vocab) logits and their gradient, activations)
that glibc maps fresh at every step and unmaps when they are freed. train.py's malloc_tuning
(default True) keeps them in the heap for reuse (train.tune_malloc).

    python bench/bench_sys_time.py --json bench/results/sys_time_cpu.json
    python bench/bench_sys_time.py --rounds 3 --iters 10 -- --batch_size=4    # extra train.py settings after --
    python bench/bench_sys_time.py --baseline /path/to/old/checkout          # + that checkout's train.py, as it is

Each round runs train.py once per arm (the order flips every round) on random tokens, at nanoGPT's
small settings by default (6 layers x 384, block 256, batch 8, GPT-2 vocabulary, float32, no compile),
and reads the child's rusage (os.wait4): user s, sys s, minor page faults, max RSS. Medians per arm
are printed. It asserts nothing.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from bench.provenance import write_result  # noqa: E402

ARMS = {"malloc_tuning=False": ["--malloc_tuning=False"], "malloc_tuning=True": ["--malloc_tuning=True"]}


def run_once(cmd):
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit(f"train.py failed ({' '.join(cmd)}):\n{stderr[-3000:]}")
    return {"wall_s": time.perf_counter() - t0, "user_s": usage.ru_utime, "sys_s": usage.ru_stime,
            "minor_faults": usage.ru_minflt, "max_rss_mb": usage.ru_maxrss / 1024}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("extra", nargs="*", help="more train.py --key=value settings (after --)")
    p.add_argument("--iters", type=int, default=8, help="train.py max_iters per run")
    p.add_argument("--rounds", type=int, default=2, help="runs per arm")
    p.add_argument("--baseline", default=None, help="a checkout of another version: its train.py is a third arm "
                   "(run without the malloc_tuning setting, which it may not know)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    arms = {arm: (os.path.join(REPO, "train.py"), flags) for arm, flags in ARMS.items()}
    if args.baseline:
        arms[f"baseline {args.baseline}"] = (os.path.join(args.baseline, "train.py"), [])
    from bench.bench_nanogpt import write_dataset  # the same random-token dataset
    settings = ["--n_layer=6", "--n_head=6", "--n_embd=384", "--block_size=256", "--batch_size=8",
                "--gradient_accumulation_steps=1", "--bias=False", "--dropout=0.0", "--device=cpu", "--dtype=float32",
                "--compile=False", f"--max_iters={args.iters}", "--eval_interval=100000", "--eval_iters=1",
                "--log_interval=1", "--always_save_checkpoint=False", "--vocab_size=50257"]
    runs = {arm: [] for arm in arms}
    with tempfile.TemporaryDirectory() as work:
        write_dataset(os.path.join(work, "data"))
        for r in range(args.rounds):
            for arm in (list(arms) if r % 2 == 0 else list(arms)[::-1]):
                train_py, flags = arms[arm]
                cmd = [sys.executable, train_py, *settings, *args.extra, *flags,
                       f"--dataset={work}/data", f"--out_dir={work}/out-{r}-{len(runs[arm])}-{list(arms).index(arm)}"]
                runs[arm].append(run_once(cmd))
                got = runs[arm][-1]
                print(f"round {r} {arm}: wall {got['wall_s']:.1f} s, user {got['user_s']:.1f} s, sys {got['sys_s']:.1f} s, "
                      f"{got['minor_faults']:,} minor faults, max RSS {got['max_rss_mb']:.0f} MB", flush=True)
    summary = {arm: {k: statistics.median(run[k] for run in rs) for k in rs[0]} for arm, rs in runs.items()}
    print(f"\nmedians over {args.rounds} run(s) of {args.iters} iterations:")
    for arm, m in summary.items():
        print(f"  {arm:28s} wall {m['wall_s']:6.1f} s  user {m['user_s']:6.1f} s  sys {m['sys_s']:6.1f} s  "
              f"faults {m['minor_faults']:>11,.0f}  max RSS {m['max_rss_mb']:.0f} MB")
    if args.json:
        write_result(args.json, {"omp_threads": os.environ.get("OMP_NUM_THREADS"), "settings": settings + args.extra,
                                 "medians": summary, "runs": runs})


if __name__ == "__main__":
    main()
