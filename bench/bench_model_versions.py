"""
Training-step time of model.py against another version of itself, or of one model shape against
another, measured interleaved: the arms take turns step by step on the same batches in one
process, so the machine's drift (2x from minute to minute on a shared box) hits them alike.

    # does the family-aware model.py slow the GPT-2 path down? (new/old throughput, goal >= 0.97)
    python bench/bench_model_versions.py --old 7997115 --json bench/results/model_versions_gpt2_cpu.json
    # a Qwen3-shaped model of GPT-2 124M's size against GPT-2 124M, both from this model.py
    python bench/bench_model_versions.py --shapes gpt2,qwen3,qwen3_ckpt --json bench/results/model_shapes_cpu.json

One step = forward with targets, backward, AdamW step, float32, no compile, T = --seq tokens,
--batch sequences. Every arm starts from the same seed and sees the same batches. Printed: median
seconds per step, tokens/s, and each arm's throughput relative to the first arm, as the median of
the per-step-pair ratios (each pair measured back to back) with the ratio of medians beside it.
"""

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from bench.provenance import write_result  # noqa: E402

# model settings per shape; gpt2 is GPT-2 124M, qwen3 a Qwen3-0.6B-style block at GPT-2 124M's size
# (same width, depth, vocabulary and MLP parameter count; 12 query heads on 4 key/value heads)
SHAPES = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, bias=True),
    "qwen3": dict(n_layer=12, n_head=12, n_embd=768, bias=False, norm="rmsnorm", norm_eps=1e-6, pos_emb="rope",
                  rope_theta=1e6, mlp="swiglu", n_inner=2048, n_kv_head=4, qk_norm=True),
}
SHAPES["qwen3_ckpt"] = {**SHAPES["qwen3"], "gradient_checkpointing": True}
# nanoGPT's small size (6 x 384) as a Qwen3 block with its own (untied) output head
SHAPES["qwen3_small_untied"] = dict(n_layer=6, n_head=6, n_embd=384, bias=False, norm="rmsnorm", norm_eps=1e-6,
                                    pos_emb="rope", rope_theta=1e6, mlp="swiglu", n_kv_head=2, qk_norm=True,
                                    tie_embeddings=False)


def load_module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def model_py_at(rev, folder):
    """model.py as it is at git revision rev, imported under its own name. The top-level modules of
    rev are written beside it, for the imports model.py makes there (checkpoint.py, ...); modules
    this process has already imported (from the working tree) are used as they are."""
    def git(*cmd):
        try:
            return subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True, check=True).stdout
        except subprocess.CalledProcessError as e:
            sys.exit(f"--old {rev}: git {' '.join(cmd)} failed: {e.stderr.strip()}")
    for name in git("ls-tree", "--name-only", rev).split():
        if name.endswith(".py"):
            with open(os.path.join(folder, "model_at_rev.py" if name == "model.py" else name), "w") as f:
                f.write(git("show", f"{rev}:{name}"))
    sys.path.append(folder)  # after the working tree: its modules win
    return load_module(os.path.join(folder, "model_at_rev.py"), "model_at_rev")


def build(module, settings, args):
    settings = dict(settings)
    recompute = settings.pop("gradient_checkpointing", False)
    torch.manual_seed(0)
    model = module.GPT(module.GPTConfig(block_size=args.seq, vocab_size=50257, dropout=0.0, **settings)).train()
    model.gradient_checkpointing = recompute
    optimizer = model.configure_optimizers(0.1, 1e-4, (0.9, 0.95), "cpu")
    return model, optimizer


def step(model, optimizer, x, y):
    t0 = time.perf_counter()
    _, loss = model(x, y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - t0, loss.item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", default=None, help="git revision whose model.py is the first arm (GPT-2 shape), "
                        "e.g. 7997115, the last one before the families")
    parser.add_argument("--shape", default="gpt2", help="with --old: the shape both versions are built at (default gpt2)")
    parser.add_argument("--shapes", default=None, help="comma-separated shapes from this model.py: " + ", ".join(SHAPES))
    parser.add_argument("--reps", type=int, default=12, help="timed steps per arm")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per arm first")
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: leave as is (OMP_NUM_THREADS)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if (args.old is None) == (args.shapes is None):
        parser.error("give one of --old REV (old vs new model.py, GPT-2 shape) or --shapes a,b,...")
    if args.threads:
        torch.set_num_threads(args.threads)
    import model as new_model

    tmp = tempfile.TemporaryDirectory()
    if args.old is not None:
        if args.shape not in SHAPES:
            parser.error(f"unknown shape {args.shape!r}; choose from {', '.join(SHAPES)}")
        arms = [(f"model.py@{args.old}", model_py_at(args.old, tmp.name), SHAPES[args.shape]),
                ("model.py (this tree)", new_model, SHAPES[args.shape])]
    else:
        names = args.shapes.split(",")
        unknown = [n for n in names if n not in SHAPES]
        if unknown:
            parser.error(f"unknown shape(s) {unknown}; choose from {', '.join(SHAPES)}")
        arms = [(n, new_model, SHAPES[n]) for n in names]
    built = [build(module, settings, args) for _, module, settings in arms]
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 50257, (args.batch, args.seq + 1), generator=g) for _ in range(args.warmup + args.reps)]
    times = [[] for _ in arms]
    losses = [[] for _ in arms]
    for i, batch in enumerate(batches):
        x, y = batch[:, :-1].contiguous(), batch[:, 1:].contiguous()  # as train.py gives them
        order = range(len(arms)) if i % 2 == 0 else reversed(range(len(arms)))  # alternate who goes first
        for a in order:
            dt, loss = step(*built[a], x, y)
            if i >= args.warmup:
                times[a].append(dt)
                losses[a].append(loss)
        print(f"step {i}: " + "  ".join(f"{arms[a][0]} {times[a][-1] if i >= args.warmup else float('nan'):.3f}s"
                                         for a in range(len(arms))), flush=True)

    tokens = args.batch * args.seq
    rows = []
    for a, (label, _, settings) in enumerate(arms):
        median = statistics.median(times[a])
        pair_ratios = [t0 / t for t0, t in zip(times[0], times[a])]  # throughput relative to arm 0, step by step
        rows.append({"arm": label, "settings": settings, "params": sum(p.numel() for p in built[a][0].parameters()),
                     "median_s": median, "tokens_per_s": tokens / median,
                     "throughput_vs_first_paired": statistics.median(pair_ratios),
                     "throughput_vs_first_of_medians": statistics.median(times[0]) / median,
                     "times_s": times[a], "losses": losses[a]})
    print(f"\n{'arm':<24} {'params':>10} {'median s':>9} {'tokens/s':>9} {'vs first (paired)':>18} {'(of medians)':>13}")
    for r in rows:
        print(f"{r['arm']:<24} {r['params'] / 1e6:9.1f}M {r['median_s']:9.3f} {r['tokens_per_s']:9.0f} "
              f"{r['throughput_vs_first_paired']:18.3f} {r['throughput_vs_first_of_medians']:13.3f}")
    if args.old is not None:
        print("same losses step by step:", losses[0] == losses[1])
    if args.json:
        write_result(args.json, {"threads": torch.get_num_threads(), "seq": args.seq, "batch": args.batch,
                                 "reps": args.reps, "arms": rows})


if __name__ == "__main__":
    main()
