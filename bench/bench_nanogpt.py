"""
Our training step against nanoGPT's, at nanoGPT's own settings, interleaved.

nanoGPT is not part of this repository: --nanogpt names a clone of it (github.com/karpathy/nanoGPT),
whose model.py (and, with --train, train.py) is used as it is.

    # model step: forward with targets, backward, AdamW, both models in this process, taking turns
    python bench/bench_nanogpt.py --nanogpt /path/to/nanoGPT --json bench/results/nanogpt_step_cpu.json
    # whole train.py iterations: our train.py and nanoGPT's, short runs taking turns
    python bench/bench_nanogpt.py --nanogpt /path/to/nanoGPT --train --json bench/results/nanogpt_train_cpu.json

    # on a GPU: GPT-2 124M, batch 12 x 1024, bf16, torch.compile (nanoGPT's own benchmark setting)
    python bench/bench_nanogpt.py --nanogpt DIR --train --device cuda --gpt2 --json bench/results/nanogpt_train_gpu.json

Model mode: both models are built at the same config (default: nanoGPT's shakespeare_char-sized
6 layers x 384, 6 heads, block 256, batch 8, dropout 0, bias False) with the GPT-2 vocabulary, and
nanoGPT's model gets our model's weights (the parameter names are the same). nanoGPT's vocabulary
is 50304 (padded) and its loss runs over all 50304 columns; ours is 50257 padded to 50304 in the
weight and the loss runs over the 50257 real columns, as train.py trains it. Each step pair is timed
back to back on the same batch, alternating who goes first; the printed ratio is the median of the
per-pair time ratios ours / nanoGPT (below 1: ours is faster), with the ratio of medians beside it.

Train mode: both train.py's run on the same random-token dataset (nanoGPT's reads data/<dataset>/ under
its working directory, so a temporary one is made) for --iters iterations per run, --rounds times,
alternating which goes first; each run's median iteration time (after --skip warm-up iterations) from
its own log (our metrics.jsonl dt_ms, nanoGPT's printed "time ...ms") enters one ratio per round.
It asserts nothing about speed.
"""

import argparse
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from bench.provenance import write_result  # noqa: E402


def load_nanogpt_model(folder):
    path = os.path.join(folder, "model.py")
    if not os.path.isfile(path):
        sys.exit(f"--nanogpt {folder}: no model.py there; give the folder of a nanoGPT clone")
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)  # its own name: ours is `model`
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_pair(args, nano):
    import model as ours
    settings = dict(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, block_size=args.block_size,
                    bias=args.bias, dropout=0.0)
    torch.manual_seed(0)
    our_model = ours.GPT(ours.GPTConfig(vocab_size=50257, **settings)).train()
    nano_model = nano.GPT(nano.GPTConfig(vocab_size=50304, **settings)).train()
    missing, unexpected = nano_model.load_state_dict(our_model.state_dict(), strict=False)
    if unexpected or [k for k in missing if not k.endswith(".attn.bias")]:
        sys.exit(f"nanoGPT's parameter names differ from ours: missing {missing[:4]}, unexpected {unexpected[:4]}")
    device_type = args.device.split(":")[0]
    arms = []
    for m in (our_model, nano_model):
        m.to(args.device)
        optimizer = m.configure_optimizers(0.1, 1e-3, (0.9, 0.99), device_type)
        arms.append((torch.compile(m) if args.compile else m, optimizer))
    return arms


def step(model, optimizer, x, y, args):
    sync(args.device)
    t0 = time.perf_counter()
    with torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=args.dtype == "bfloat16"):
        _, loss = model(x, y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    sync(args.device)
    return time.perf_counter() - t0, loss.item()


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def model_mode(args):
    nano = load_nanogpt_model(args.nanogpt)
    arms = build_pair(args, nano)
    g = torch.Generator().manual_seed(0)
    times, losses = [[], []], [[], []]
    for i in range(args.warmup + args.reps):
        batch = torch.randint(0, 50257, (args.batch, args.block_size + 1), generator=g).to(args.device)
        x, y = batch[:, :-1].contiguous(), batch[:, 1:].contiguous()
        for a in ((0, 1) if i % 2 == 0 else (1, 0)):  # alternate who goes first
            dt, loss = step(*arms[a], x, y, args)
            if i >= args.warmup:
                times[a].append(dt)
                losses[a].append(loss)
        if i >= args.warmup:
            print(f"step {i}: ours {times[0][-1] * 1000:.1f} ms, nanoGPT {times[1][-1] * 1000:.1f} ms", flush=True)
    ratios = [t0 / t1 for t0, t1 in zip(*times)]
    return {"mode": "model step (fwd+bwd+AdamW)", "ratio_paired_median": statistics.median(ratios),
            "ratio_of_medians": statistics.median(times[0]) / statistics.median(times[1]),
            "ours_median_ms": statistics.median(times[0]) * 1000, "nanogpt_median_ms": statistics.median(times[1]) * 1000,
            "ours_ms": [t * 1000 for t in times[0]], "nanogpt_ms": [t * 1000 for t in times[1]],
            "ours_losses": losses[0], "nanogpt_losses": losses[1]}


# ---------------------------------------------------------------------- whole train.py iterations

def write_dataset(folder):
    """Random GPT-2 token ids as train.bin / val.bin, readable by both train.py's."""
    from data.common import write_meta
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        rng.integers(0, 50257, size=500_000, dtype=np.uint16).tofile(os.path.join(folder, f"{split}.bin"))
    write_meta(folder, source="random tokens (benchmark)")


def common_settings(args):
    return [f"--n_layer={args.n_layer}", f"--n_head={args.n_head}", f"--n_embd={args.n_embd}",
            f"--block_size={args.block_size}", f"--batch_size={args.batch}", "--gradient_accumulation_steps=1",
            f"--bias={args.bias}", "--dropout=0.0", f"--device={args.device}", f"--dtype={args.dtype}",
            f"--compile={args.compile}",
            f"--max_iters={args.iters}", "--eval_interval=100000", "--eval_iters=1", "--log_interval=1",
            "--learning_rate=1e-3", "--warmup_iters=0", "--decay_lr=False"]


def run_ours(args, work):
    out_dir = os.path.join(work, "out-ours")
    cmd = [sys.executable, os.path.join(REPO, "train.py"), *common_settings(args), f"--dataset={work}/data/bench",
           f"--out_dir={out_dir}", "--always_save_checkpoint=False", "--vocab_size=50257", "--overwrite=True"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"our train.py failed:\n{result.stderr[-3000:]}")
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    os.remove(os.path.join(out_dir, "metrics.jsonl"))
    return [r["dt_ms"] for r in rows if "dt_ms" in r]


def run_nanogpt(args, work):
    # nanoGPT's train.py reads configurator.py and data/<dataset>/ from its working directory
    # and evaluates at iteration 0 (eval_iters=1 keeps that short; it is not timed)
    cmd = [sys.executable, os.path.join(os.path.abspath(args.nanogpt), "train.py"), *common_settings(args),
           "--dataset=bench", f"--out_dir={work}/out-nanogpt", "--always_save_checkpoint=False", "--wandb_log=False"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
    if result.returncode:
        sys.exit(f"nanoGPT's train.py failed:\n{result.stderr[-3000:]}")
    return [float(m) for m in re.findall(r"^iter \d+: loss [\d.]+, time ([\d.]+)ms", result.stdout, re.M)]


def train_mode(args):
    with tempfile.TemporaryDirectory() as work:
        write_dataset(os.path.join(work, "data", "bench"))
        os.symlink(os.path.join(os.path.abspath(args.nanogpt), "configurator.py"), os.path.join(work, "configurator.py"))
        medians, ratios = [[], []], []
        for r in range(args.rounds):
            order = (0, 1) if r % 2 == 0 else (1, 0)
            got = {}
            for a in order:
                dts = (run_ours if a == 0 else run_nanogpt)(args, work)[args.skip:]
                if not dts:
                    sys.exit(f"--iters={args.iters} leaves no timed iteration after --skip={args.skip}")
                got[a] = statistics.median(dts)
                medians[a].append(got[a])
            ratios.append(got[0] / got[1])
            print(f"round {r}: ours {got[0]:.1f} ms/iter, nanoGPT {got[1]:.1f} ms/iter, ratio {ratios[-1]:.3f}", flush=True)
    return {"mode": "train.py iterations", "ratio_paired_median": statistics.median(ratios),
            "ratio_of_medians": statistics.median(medians[0]) / statistics.median(medians[1]),
            "ours_median_ms": statistics.median(medians[0]), "nanogpt_median_ms": statistics.median(medians[1]),
            "ours_round_ms": medians[0], "nanogpt_round_ms": medians[1], "round_ratios": ratios}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nanogpt", required=True, help="folder of a nanoGPT clone (its model.py and train.py)")
    p.add_argument("--train", action="store_true", help="time whole train.py iterations instead of model steps")
    p.add_argument("--n-layer", type=int, default=6)
    p.add_argument("--n-head", type=int, default=6)
    p.add_argument("--n-embd", type=int, default=384)
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--bias", type=lambda s: s == "True", default=False, help="True or False (default False)")
    p.add_argument("--reps", type=int, default=30, help="model mode: timed step pairs")
    p.add_argument("--warmup", type=int, default=3, help="model mode: untimed step pairs first")
    p.add_argument("--rounds", type=int, default=6, help="train mode: runs per side")
    p.add_argument("--iters", type=int, default=12, help="train mode: iterations per run")
    p.add_argument("--skip", type=int, default=2, help="train mode: first iterations of a run left out")
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0: leave as is (OMP_NUM_THREADS)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                   help="default: float32 on the CPU, bfloat16 (autocast) on CUDA")
    p.add_argument("--compile", type=lambda s: s == "True", default=None,
                   help="True or False; default: False on the CPU, True on CUDA")
    p.add_argument("--gpt2", action="store_true",
                   help="GPT-2 124M at nanoGPT's benchmark setting: 12 layers x 768, block 1024, batch 12")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    gpu = args.device.startswith("cuda")
    if gpu and not torch.cuda.is_available():
        sys.exit(f"--device {args.device}: CUDA is not available here")
    args.dtype = args.dtype or ("bfloat16" if gpu else "float32")
    args.compile = gpu if args.compile is None else args.compile
    if args.gpt2:
        args.n_layer, args.n_head, args.n_embd, args.block_size, args.batch = 12, 12, 768, 1024, 12
    if not os.path.isdir(args.nanogpt):
        sys.exit(f"--nanogpt {args.nanogpt}: no such folder")
    if args.threads:
        torch.set_num_threads(args.threads)
    result = train_mode(args) if args.train else model_mode(args)
    print(f"\n{result['mode']}: ours {result['ours_median_ms']:.1f} ms, nanoGPT {result['nanogpt_median_ms']:.1f} ms; "
          f"ours/nanoGPT {result['ratio_paired_median']:.3f} (median of pairs), {result['ratio_of_medians']:.3f} (of medians)")
    if args.json:
        write_result(args.json, {"threads": torch.get_num_threads(),
                                 "settings": {k: v for k, v in vars(args).items() if k != "json"}, **result})


if __name__ == "__main__":
    main()
