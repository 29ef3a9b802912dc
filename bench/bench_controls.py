"""
How strongly each matched control reaches the model's WEIGHTS, compared with the angular term it
stands in for: the ratio ||d control / d params|| / ||d (lambda * angular) / d params||, on the
same batch (train.py logs the same figure as ctrl/param_grad_ratio).

    python bench/bench_controls.py                                   # 4 x 64 GPT on data/local, CPU
    python bench/bench_controls.py --json bench/results/controls_ratio_cpu.json

A small GPT is trained with CE + lambda * angular (all layers) for --steps steps; every
--every steps, on that step's batch, the ratio is measured for
  random_direction          a Gaussian direction per layer, rescaled to the angular gradient's norm
  rotated_angular           the angular gradient rotated by ONE random orthogonal matrix shared by
                            all selected layers (what train.py does, one matrix per optimizer step)
  rotated_angular/per_layer the same with an independent matrix per layer (the alternative)
with --draws random draws each (mean, min, max over the draws). The three are measured on the same
hidden states, in one process, so the comparison is paired.
"""

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import disperse  # noqa: E402
from data.common import open_split, sample_batch  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from bench.provenance import write_result  # noqa: E402


def param_grad_norm(model, outputs, grad_outputs):
    """Norm of the gradient w.r.t. all parameters of sum_k <outputs[k], grad_outputs[k]>."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(outputs, params, grad_outputs=grad_outputs, retain_graph=True, allow_unused=True)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads if g is not None])).item()


def measure(model, hidden, layers, weight, draws, generator):
    """The three controls' ratios on one batch's hidden states, `draws` random draws each."""
    outputs = [hidden[i] for i in layers]
    _, _, angular_grads, _ = controls.rotated_angular_term(hidden, layers, weight, torch.eye(hidden[0].size(-1)))
    angular = param_grad_norm(model, outputs, [angular_grads[i] for i in layers])
    C = hidden[0].size(-1)
    ratios = {"random_direction": [], "rotated_angular": [], "rotated_angular/per_layer": []}
    for _ in range(draws):
        surrogate, _, _, _ = controls.random_direction_term(hidden, layers, weight, generator)
        ratios["random_direction"].append(param_grad_norm(model, [surrogate], None) / angular)
        shared = controls.random_rotation(C, generator)
        ratios["rotated_angular"].append(param_grad_norm(model, outputs, [angular_grads[i] @ shared for i in layers]) / angular)
        per_layer = [angular_grads[i] @ controls.random_rotation(C, generator) for i in layers]
        ratios["rotated_angular/per_layer"].append(param_grad_norm(model, outputs, per_layer) / angular)
    return ratios


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "local"))
    p.add_argument("--n_layer", type=int, default=4)
    p.add_argument("--n_embd", type=int, default=64)
    p.add_argument("--block_size", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--weight", type=float, default=0.1, help="lambda of the angular term")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--every", type=int, default=25)
    p.add_argument("--draws", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    try:
        train_data = open_split(args.dataset, "train", args.block_size)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"data error: {e} (prepare it with: python -m data.local.prepare --input ../shared/corpus --out_dir data/local)")
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    model = GPT(GPTConfig(block_size=args.block_size, vocab_size=50257, n_layer=args.n_layer, n_head=4,
                          n_embd=args.n_embd, bias=False))
    optimizer = model.configure_optimizers(0.1, args.lr, (0.9, 0.95), "cpu")
    layers = disperse.layer_indices(args.n_layer, "all")
    rows = []
    from tqdm import tqdm
    for step in tqdm(range(args.steps + 1), desc="train + measure"):
        x, y = (torch.from_numpy(a) for a in sample_batch(train_data, args.batch, args.block_size, (0, 0, step, 0)))
        _, ce, hidden = model(x, y, return_hidden=True)
        if step % args.every == 0:
            ratios = measure(model, hidden, layers, args.weight, args.draws, generator)
            rows.append({"step": step, **{k: {"mean": statistics.mean(v), "min": min(v), "max": max(v)}
                                          for k, v in ratios.items()}})
        if step == args.steps:
            break
        total, _ = disperse.dispersion_term(hidden, "angular", layers, args.weight)
        (ce + total).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    names = list(rows[0])[1:]
    print(f"\nratio ||control grad|| / ||angular grad|| w.r.t. the parameters ({args.draws} draws: mean [min, max])")
    print(f"{'step':>5}  " + "  ".join(f"{n:>27}" for n in names))
    for r in rows:
        print(f"{r['step']:5d}  " + "  ".join(f"{r[n]['mean']:7.3f} [{r[n]['min']:6.3f}, {r[n]['max']:6.3f}]" for n in names))
    overall = {n: {"min": min(r[n]["min"] for r in rows), "max": max(r[n]["max"] for r in rows),
                   "mean": statistics.mean(r[n]["mean"] for r in rows)} for n in names}
    for n in names:
        print(f"{n:>27}: mean {overall[n]['mean']:.3f}, range [{overall[n]['min']:.3f}, {overall[n]['max']:.3f}]")
    if args.json:
        write_result(args.json, {"settings": {**vars(args), "dataset": os.path.relpath(args.dataset)},
                                 "rows": rows, "overall": overall})


if __name__ == "__main__":
    main()
