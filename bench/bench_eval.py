"""
Speed of our benchmark scorer vs lm-evaluation-harness (hf model type) on the same model,
tasks, items and batch size, on CPU (or --device cuda). Measures, per task:
  - scoring: time spent computing log-likelihoods (our score_items vs lm-eval's
    HFLM.loglikelihood / loglikelihood_rolling), items per second;
  - total: wall-clock of the whole call (our evaluate vs lm_eval.simple_evaluate), which
    also counts data loading and prompt building;
  - work: lm-eval's model FLOPs over ours for the same requests (lm-eval runs every padded
    position through the blocks and the output head; we run shared prefixes once and the head
    only where a token is scored), i.e. the speedup to expect at equal hardware efficiency.
The two sides alternate task by task, --repeat times (the order flips every repeat), and the
medians are printed, so that a shared machine's drift hits both. --plain-tails adds a third side,
our engine with the tails of one past length per pass (as before padded pasts), and the median
ratio of its time to ours. It asserts nothing; it prints
a table (and writes JSON with --out).

    python bench/bench_eval.py --data-dir ../shared/benchmarks --tiktoken-dir ../shared/tiktoken \\
        --limit 40 [--ckpt out/ckpt.pt] [--batch-size 16] [--lmeval-batch-size 16] [--repeat 3]

Without --ckpt a randomly initialised GPT is used (speed does not depend on the weights);
its shape is set with --n-layer/--n-head/--n-embd/--block-size (GPT-2 small: 12/12/768/1024).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.provenance import write_result  # noqa: E402

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
    p.add_argument("--repeat", type=int, default=1, help="measurements per task and side (medians reported)")
    p.add_argument("--plain-tails", action="store_true",
                   help="also time our engine with one past length per tail pass (the plan before padded "
                        "pasts), interleaved with the other two sides")
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
    from eval import tasks as task_defs
    from eval import benchmarks as B
    from bench.crosscheck_lmeval import build_lmeval_tasks, export_hf
    from data.common import get_tokenizer
    from eval import scoring as S
    from eval.scoring import continuation_windows, encode_pair

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
    _, ydir = build_lmeval_tasks(task_defs.expand(names), args.data_dir, args.wikitext, work)
    manager = TaskManager(include_path=str(ydir))
    lm = HFLM(pretrained=str(hf_dir), device=args.device, batch_size=args.lmeval_batch_size, dtype="float32")

    # time only the log-likelihood work on each side; our engine also reports what it ran
    timers = {"ours": 0.0, "lmeval": 0.0}
    engine = {}

    def timed(fn, key):
        def wrapper(*a, **kw):
            if key == "ours":
                kw["stats"] = engine
            t0 = time.perf_counter()
            out = fn(*a, **kw)
            timers[key] += time.perf_counter() - t0
            return out
        return wrapper

    B.score_items = timed(B.score_items, "ours")
    lm.loglikelihood = timed(lm.loglikelihood, "lmeval")
    lm.loglikelihood_rolling = timed(lm.loglikelihood_rolling, "lmeval")
    body_flops = 2 * model.get_num_params(non_embedding=True) - 2 * model.transformer.wte.weight.numel()
    head_flops = 2 * model.config.n_embd * model.config.vocab_size

    rows = []
    print(f"model: {model_desc}; device {args.device}; threads {torch.get_num_threads()}; limit {args.limit}; "
          f"{'paper protocol' if args.paper_protocol else f'{args.num_fewshot}-shot'}; "
          f"batch ours {args.batch_size}, lm-eval {args.lmeval_batch_size}; medians of {args.repeat}")
    few = set(task_defs.expand(task_defs.PAPER_FEW_SHOT))
    print(f"{'task':<30} {'items':>6} {'ours it/s':>10} {'lm-eval it/s':>12} {'speedup':>8} {'work':>6} "
          f"{'ours total s':>12} {'lm-eval total s':>15}"
          + (f" {'plain it/s':>9} {'plain sp':>9} {'padded/plain':>8}" if args.plain_tails else ""))
    enc = get_tokenizer()
    L = model.config.block_size
    for name in names:
        shots = (1 if all(n in few for n in task_defs.expand(name)) else 0) if args.paper_protocol else args.num_fewshot
        leaf = ["off_mmlu"] if name == "mmlu" else [f"off_{n}" for n in task_defs.expand(name)]
        sides = ("ours", "plain", "lmeval") if args.plain_tails else ("ours", "lmeval")
        engine_stats = {}
        runs = {key: [] for side in sides for key in (side, f"{side}_total")}
        for rep in range(args.repeat):
            for side in (sides if rep % 2 == 0 else sides[::-1]):
                timers.update(ours=0.0, lmeval=0.0)
                engine.clear()
                t0 = time.perf_counter()
                if side in ("ours", "plain"):
                    # plain: the engine's older plan, tails of one past length per pass
                    S.PADDED_PASTS = side == "ours"
                    try:
                        results, items = B.evaluate(model, name, args.data_dir, limit=args.limit, num_fewshot=shots,
                                                    batch_size=args.batch_size, device=args.device,
                                                    wikitext=args.wikitext, download=False, progress=False,
                                                    keep_requests=True)
                    finally:
                        S.PADDED_PASTS = True
                    engine_stats[side] = dict(engine)
                else:
                    lm_eval.simple_evaluate(model=lm, tasks=leaf, task_manager=manager, limit=args.limit,
                                            num_fewshot=shots, bootstrap_iters=0, verbosity="ERROR")
                runs[f"{side}_total"].append(time.perf_counter() - t0)
                runs[side].append(timers["ours" if side == "plain" else side])
        # the work ratio, from the requests both sides scored
        lm_rows = {}  # lm-eval's distinct inputs (it groups one-token continuations of a context)
        for rec in (items if name != "wikitext" else []):
            for ctx, cont in rec.get("requests", []):
                for c, x in continuation_windows(*encode_pair(enc, ctx, cont), L):
                    lm_rows[tuple((c + x)[-(L + 1):][:-1])] = None
        lengths = sorted((len(r) for r in lm_rows), reverse=True)
        lm_padded = sum(max(lengths[i:i + args.lmeval_batch_size]) * len(lengths[i:i + args.lmeval_batch_size])
                        for i in range(0, len(lengths), args.lmeval_batch_size))
        work = (lm_padded * (body_flops + head_flops)
                / (engine_stats["ours"]["tokens"] * body_flops + engine_stats["ours"]["head_rows"] * head_flops)) if lm_rows else None
        n = len(items)
        t_ours, t_lm = statistics.median(runs["ours"]), statistics.median(runs["lmeval"])
        row = {"task": name, "items": n, "num_fewshot": shots, "ours_items_per_s": n / t_ours,
               "lmeval_items_per_s": n / t_lm, "speedup": t_lm / t_ours, "work_ratio": work,
               "ours_total_s": statistics.median(runs["ours_total"]),
               "lmeval_total_s": statistics.median(runs["lmeval_total"]), "runs": runs, "ours_engine": engine_stats["ours"]}
        plain = ""
        if args.plain_tails:
            t_plain = statistics.median(runs["plain"])
            row.update(plain_items_per_s=n / t_plain, plain_speedup=t_lm / t_plain, plain_engine=engine_stats["plain"],
                       padded_vs_plain=statistics.median(p / o for p, o in zip(runs["plain"], runs["ours"])))
            plain = f" {row['plain_items_per_s']:>9.2f} {row['plain_speedup']:>8.2f}x {row['padded_vs_plain']:>7.2f}x"
        rows.append(row)
        print(f"{name:<30} {n:>6} {row['ours_items_per_s']:>10.2f} {row['lmeval_items_per_s']:>12.2f} "
              f"{row['speedup']:>7.2f}x {'' if work is None else f'{work:.2f}x':>6} "
              f"{row['ours_total_s']:>12.1f} {row['lmeval_total_s']:>15.1f}{plain}", flush=True)
    n_all = sum(r["items"] for r in rows)
    t_ours = sum(r["items"] / r["ours_items_per_s"] for r in rows)
    t_lm = sum(r["items"] / r["lmeval_items_per_s"] for r in rows)
    print(f"{'all':<30} {n_all:>6} {n_all / t_ours:>10.2f} {n_all / t_lm:>12.2f} {t_lm / t_ours:>7.2f}x {'':>6} "
          f"{sum(r['ours_total_s'] for r in rows):>12.1f} {sum(r['lmeval_total_s'] for r in rows):>15.1f}")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        write_result(os.path.join(args.out, "bench_eval.json"),
                     {"model": model_desc, "device": args.device, "limit": args.limit, "repeat": args.repeat,
                      "rows": rows, "threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
