"""
Cost of the dispersion loss inside one training step, measured in one process with the step
variants interleaved (CE, CE + angular on all positions, CE + angular on 256 sampled positions,
CE, ...), so slow drifts of a shared machine hit every variant alike. Reports the median step
time of each and the overhead over CE alone, plus the memory the loss keeps for backward.

    python bench/bench_dispersion.py                      # GPT-2 124M, T = 1024, batch 1, CPU float32
    python bench/bench_dispersion.py --device cuda --batch 8 --dtype bfloat16

What is timed is what train.py does per micro-step: forward with hidden states, the loss on the
12 selected layers (HF hidden_states[1:]), backward, AdamW step.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import disperse  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--reps", type=int, default=4, help="timed steps per variant")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=args.seq, n_layer=12, n_head=12, n_embd=768)).to(args.device)
    opt = model.configure_optimizers(0.1, 1e-4, (0.9, 0.95), args.device.split(":")[0])
    x = torch.randint(0, 50257, (args.batch, args.seq), device=args.device)
    gen = torch.Generator(device=args.device).manual_seed(0)
    autocast = torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
    variants = {"ce only": None, "angular, all positions": None, "angular, 256 positions": 256}

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def step(name):
        sync()
        t0 = time.perf_counter()
        with autocast:
            if name == "ce only":
                _, loss = model(x, x)
            else:
                _, ce, hidden = model(x, x, return_hidden=True)
                aux, _ = disperse.dispersion_term(hidden, "angular", "all", 0.1,
                                                  max_tokens=variants[name], generator=gen)
                loss = ce + aux
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - t0

    for name in variants:  # warm-up: allocator, kernels
        step(name)
    times = {name: [] for name in variants}
    for _ in range(args.reps):
        for name in variants:
            times[name].append(step(name))

    # memory the loss keeps alive between forward and backward, for one layer's hidden states
    h = torch.randn(args.batch, args.seq, 768, device=args.device, requires_grad=True)
    kept = {}
    for name, max_tokens in (("angular, all positions", None), ("angular, 256 positions", 256)):
        saved = []
        def pack(t):
            saved.append(t.numel() * t.element_size() if t.data_ptr() != h.data_ptr() else 0)
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            disperse.dispersion_loss(h, "angular", max_tokens=max_tokens, generator=gen)
        kept[name] = sum(saved) / 2**20

    base = statistics.median(times["ce only"])
    rows = []
    print(f"{'step':28s} {'median s':>9s} {'overhead':>9s} {'kept for backward per layer':>28s}")
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append({"variant": name, "median_s": med, "times_s": ts, "overhead": med / base - 1,
                     "saved_mb_per_layer": kept.get(name, 0.0)})
        print(f"{name:28s} {med:9.2f} {(med / base - 1) * 100:+8.1f}% {kept.get(name, 0.0):25.1f} MB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": platform.platform(),
                       "cpus": os.cpu_count(), "torch": torch.__version__, "command": " ".join(sys.argv),
                       "settings": vars(args), "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
