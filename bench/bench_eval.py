"""
Speed of our benchmark scorer vs lm-evaluation-harness (hf model type) on the same model,
tasks, items and batch size, on CPU (or --device cuda). Measures, per task:
  - scoring: time spent computing log-likelihoods (our score_items vs lm-eval's
    HFLM.loglikelihood / loglikelihood_rolling), items per second;
  - total: wall-clock of the whole call (our evaluate vs lm_eval.simple_evaluate), which
    also counts data loading and prompt building.
It asserts nothing; it prints a table (and writes JSON with --out).

    python bench/bench_eval.py --data-dir ../shared/benchmarks --tiktoken-dir ../shared/tiktoken \\
        --limit 40 [--ckpt out/ckpt.pt] [--batch-size 16] [--lmeval-batch-size 16]

Without --ckpt a randomly initialised GPT is used (speed does not depend on the weights);
its shape is set with --n-layer/--n-head/--n-embd/--block-size (GPT-2 small: 12/12/768/1024).
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_TASKS = "arc_easy,hellaswag,piqa,truthfulqa_mc2,lambada_openai,mmlu_high_school_psychology"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=None)
    p.add_argument("--data-dir", default=os.environ.get("DISPERSE_BENCHMARKS"))
    p.add_argument("--wikitext", default=os.environ.get("DISPERSE_WIKITEXT_TEST"))
    p.add_argument("--tiktoken-dir", default=os.environ.get("TIKTOKEN_CACHE_DIR"))
    p.add_argument("--tasks", default=DEFAULT_TASKS)
    p.add_argument("--limit", type=int, default=40)
    p.add_argument("--num-fewshot", type=int, default=0)
    p.add_argument("--paper-protocol", action="store_true",
                   help="shots per task as the paper: 1 for arc_*, medmcqa, mmlu_*; 0 for the rest")
    p.add_argument("--batch-size", type=int, default=16, help="ours")
    p.add_argument("--lmeval-batch-size", type=int, default=16, help="lm-eval's hf model (the paper used 1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads for both sides (default: torch's)")
    p.add_argument("--n-layer", type=int, default=6)
    p.add_argument("--n-head", type=int, default=6)
    p.add_argument("--n-embd", type=int, default=384)
    p.add_argument("--block-size", type=int, default=1024)
    p.add_argument("--work", default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    from bench.crosscheck_lmeval import go_offline  # stdlib-only at import: safe before transformers
    go_offline(p, args)

    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from model import GPT, GPTConfig, load_model
    from eval import tasks as T
    from eval import benchmarks as B
    from bench.crosscheck_lmeval import build_lmeval_tasks, export_hf

    if args.ckpt:
        model, _ = load_model(args.ckpt, args.device)
        model_desc = args.ckpt
    else:
        torch.manual_seed(0)
        config = GPTConfig(block_size=args.block_size, n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd)
        model = GPT(config).to(args.device)
        model_desc = (f"random GPT ({args.n_layer} layers, {args.n_head} heads, {args.n_embd} dims, block "
                      f"{args.block_size}; {model.get_num_params() / 1e6:.1f}M parameters)")
    model.eval()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_eval_"))
    hf_dir = export_hf(model.cpu(), args.tiktoken_dir, work / "hf")
    model.to(args.device)
    names = [n.strip() for n in args.tasks.split(",")]
    _, ydir = build_lmeval_tasks(T.expand(names), args.data_dir, args.wikitext, work)
    manager = TaskManager(include_path=str(ydir))
    lm = HFLM(pretrained=str(hf_dir), device=args.device, batch_size=args.lmeval_batch_size, dtype="float32")

    # time only the log-likelihood work on each side
    timers = {"ours": 0.0, "lmeval": 0.0}

    def timed(fn, key):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            out = fn(*a, **kw)
            timers[key] += time.perf_counter() - t0
            return out
        return wrapper

    B.score_items = timed(B.score_items, "ours")
    lm.loglikelihood = timed(lm.loglikelihood, "lmeval")
    lm.loglikelihood_rolling = timed(lm.loglikelihood_rolling, "lmeval")

    rows = []
    print(f"model: {model_desc}; device {args.device}; threads {torch.get_num_threads()}; limit {args.limit}; "
          f"{'paper protocol' if args.paper_protocol else f'{args.num_fewshot}-shot'}; "
          f"batch ours {args.batch_size}, lm-eval {args.lmeval_batch_size}")
    few = set(T.expand(T.PAPER_FEW_SHOT))
    print(f"{'task':<30} {'items':>6} {'ours it/s':>10} {'lm-eval it/s':>12} {'speedup':>8} "
          f"{'ours total s':>12} {'lm-eval total s':>15}")
    for name in names:
        timers.update(ours=0.0, lmeval=0.0)
        t0 = time.perf_counter()
        shots = (1 if all(n in few for n in T.expand(name)) else 0) if args.paper_protocol else args.num_fewshot
        results, items = B.evaluate(model, name, args.data_dir, limit=args.limit, num_fewshot=shots,
                                    batch_size=args.batch_size, device=args.device, wikitext=args.wikitext,
                                    download=False, progress=False)
        total_ours = time.perf_counter() - t0
        leaf = ["off_mmlu"] if name == "mmlu" else [f"off_{n}" for n in T.expand(name)]
        t0 = time.perf_counter()
        lm_eval.simple_evaluate(model=lm, tasks=leaf, task_manager=manager, limit=args.limit,
                                num_fewshot=shots, bootstrap_iters=0, verbosity="ERROR")
        total_lm = time.perf_counter() - t0
        n = len(items)
        row = {"task": name, "items": n, "num_fewshot": shots, "ours_items_per_s": n / timers["ours"],
               "lmeval_items_per_s": n / timers["lmeval"], "speedup": timers["lmeval"] / timers["ours"],
               "ours_total_s": total_ours, "lmeval_total_s": total_lm}
        rows.append(row)
        print(f"{name:<30} {n:>6} {row['ours_items_per_s']:>10.2f} {row['lmeval_items_per_s']:>12.2f} "
              f"{row['speedup']:>7.2f}x {total_ours:>12.1f} {total_lm:>15.1f}")
    n_all = sum(r["items"] for r in rows)
    t_ours = sum(r["items"] / r["ours_items_per_s"] for r in rows)
    t_lm = sum(r["items"] / r["lmeval_items_per_s"] for r in rows)
    print(f"{'all':<30} {n_all:>6} {n_all / t_ours:>10.2f} {n_all / t_lm:>12.2f} {t_lm / t_ours:>7.2f}x "
          f"{sum(r['ours_total_s'] for r in rows):>12.1f} {sum(r['lmeval_total_s'] for r in rows):>15.1f}")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "bench_eval.json"), "w") as f:
            json.dump({"model": model_desc, "device": args.device, "limit": args.limit, "rows": rows,
                       "threads": torch.get_num_threads()}, f, indent=2)


if __name__ == "__main__":
    main()
