"""
Does the rotated_angular control push the weights as hard as the angular term over time, not only
within a step? train.py runs with strength_window=W log, per window of W optimizer steps, the
auxiliary term's parameter-gradient push (||sum of the W steps' gradients||, what AdamW's momentum
sees), its coherence (push / (W x mean step norm)) and the mean cosine of consecutive steps; a
control also logs the same figures for the angular term on its own batches, and their ratio.

    python bench/control_strength.py                                   # data/local, 4 x 64 GPT, CPU
    python bench/control_strength.py --json bench/results/control_strength_cpu.json

Runs (one train.py run each, the same seed and batches; lambda as --weight):
  angular                    the treatment: CE + lambda * angular on every layer
  rotated_angular            its control as train.py defaults it: one rotation for the run, the
                             rescaling to the angular parameter-gradient norm at every micro-step
  rotated_angular/step       a fresh rotation every optimizer step (the schedule before)
  rotated_angular/every10    one rotation, the rescaling recomputed every 10 steps and held between
                             (2 extra backward passes every 10 steps instead of every micro-step)
  random_direction           the control matched at the hidden states only
Printed per run: the mean over the windows after the first --skip of push, coherence, step cosine,
and for the controls the push ratio to the angular term (1: as hard over W steps).
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

RUNS = {
    "angular": ["--dispersion=angular"],
    "rotated_angular": ["--dispersion=rotated_angular"],
    "rotated_angular/step": ["--dispersion=rotated_angular", "--dispersion_rotation=step"],
    "rotated_angular/every10": ["--dispersion=rotated_angular", "--dispersion_match_interval=10"],
    "random_direction": ["--dispersion=random_direction"],
}
FIGURES = ("strength/push", "strength/coherence", "strength/step_cos", "strength/angular_push",
           "strength/angular_coherence", "strength/angular_step_cos", "strength/push_ratio")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=os.path.join(REPO, "data", "local"))
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--window", type=int, default=10)
    p.add_argument("--skip", type=int, default=2, help="windows left out at the start (the warm-up)")
    p.add_argument("--weight", type=float, default=1.0)
    p.add_argument("--runs", default=",".join(RUNS))
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    if not os.path.exists(os.path.join(args.dataset, "train.bin")):
        sys.exit(f"error: no {args.dataset}/train.bin; prepare it: python -m data.local.prepare --input ../shared/corpus "
                 "--out_dir data/local")
    common = [os.path.join(REPO, "config", "train_local_cpu.py"), f"--dataset={args.dataset}",
              f"--max_iters={args.steps}", f"--eval_interval={args.steps}", "--eval_iters=2", "--log_interval=50",
              f"--strength_window={args.window}", f"--dispersion_weight={args.weight}", "--seed=0"]
    results = {}
    with tempfile.TemporaryDirectory() as work:
        for name in args.runs.split(","):
            out = os.path.join(work, name.replace("/", "_"))
            cmd = [sys.executable, os.path.join(REPO, "train.py"), *common, *RUNS[name], f"--out_dir={out}"]
            print(f"{name}: {' '.join(RUNS[name])}", flush=True)
            done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
            if done.returncode:
                sys.exit(f"{name}: train.py failed:\n{done.stderr[-2000:]}")
            with open(os.path.join(out, "metrics.jsonl")) as f:
                windows = [r for r in map(json.loads, f) if "strength/push" in r][args.skip:]
            results[name] = {"windows": windows,
                             **{k: statistics.mean(w[k] for w in windows) for k in FIGURES if k in windows[0]}}
    print(f"\nmeans over windows {args.skip + 1}.. of {args.window} steps (lambda {args.weight})")
    print(f"{'run':26s} {'push':>9s} {'coherence':>10s} {'step cos':>9s} {'push ratio':>11s} {'angular step cos':>17s}")
    for name, r in results.items():
        ratio = f"{r['strength/push_ratio']:11.3f}" if "strength/push_ratio" in r else f"{'':11s}"
        ang = f"{r['strength/angular_step_cos']:17.3f}" if "strength/angular_step_cos" in r else ""
        print(f"{name:26s} {r['strength/push']:9.4f} {r['strength/coherence']:10.3f} {r['strength/step_cos']:9.3f} "
              f"{ratio} {ang}")
    if args.json:
        write_result(args.json, {"settings": {k: v for k, v in vars(args).items() if k != "json"}, "results": results})


if __name__ == "__main__":
    main()
