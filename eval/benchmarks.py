"""
Benchmark evaluation: the lm-evaluation-harness tasks of the paper (and a few more), scored
with our own log-likelihood engine, per item comparable with lm-eval 0.4.x.

    python -m eval.benchmarks --ckpt out/ckpt.pt --tasks paper10,hellaswag \\
        --data-dir ../shared/benchmarks --out out/eval [--paper-protocol] [--limit 500]

writes OUT/results.json (task -> metric -> value, with <metric>_stderr; group scores; the
`paper10` mean; a `config` block), OUT/items.jsonl (one record per scored document) and
prints a table. From Python (train.py calls this at eval steps):

    results, items = evaluate(model, "arc_easy,piqa", data_dir, limit=200)

Few-shot: like lm-eval, --num-fewshot K applies to every task given (TruthfulQA stays 0-shot,
as lm-eval forces it). The paper ran two passes instead: 0-shot for six tasks and 1-shot (for
GPT-2; 5 for Qwen3) for ARC-E, ARC-C, MedMCQA and MMLU; --paper-protocol does exactly that.
Shots come from the split lm-eval draws them from; where that split is not available (e.g.
MedMCQA train offline), they come from the scored split without the scored document, and the
task's results say so (`fewshot_matches_lm_eval: false`).
"""

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import replace

import torch

from configurator import ArgumentParser
from errors import InputError, MissingFileError, run_cli
from eval import tasks as task_defs
from eval.scoring import (check_tokenizer, encode, encode_pair, rolling_windows, score_items, mean, mean_stderr,
                          pooled_stderr, pick_choice, perplexity_and_stderr, weighted_perplexities)


# ----------------------------------------------------------------------------- documents

def load_task_docs(task, data_dir, wikitext=None, download=True, cache=None):
    """The scored docs of a task. WikiText reads a raw file (--wikitext / DISPERSE_WIKITEXT_TEST)
    when one is given, else <data-dir>/wikitext/test.jsonl (document-level rows with `page`)."""
    if task.name == "wikitext":
        raw = wikitext or os.environ.get("DISPERSE_WIKITEXT_TEST")
        if raw:
            with open(raw, encoding="utf-8") as f:
                return task_defs.wikitext_pages(f.read())
        try:
            return task_defs.load_split(task, task.split, data_dir, download=download, cache=cache)
        except FileNotFoundError as e:
            raise MissingFileError(f"{e} For wikitext, or give the raw WikiText test file with --wikitext "
                                    "(env DISPERSE_WIKITEXT_TEST), e.g. shared/corpus/wikitext103/test.raw.") from None
    return task_defs.load_split(task, task.split, data_dir, download=download, cache=cache)


_WARNED = set()  # tasks whose few-shot fallback was already reported in this process


def fewshot_pool(task, docs_all, data_dir, download=True, cache=None):
    """(task as it will sample, pool of shot docs, whether this is lm-eval's own shot source)."""
    if task.fewshot_split == task.split or task.fewshot_split is None:
        return task, docs_all, True
    try:
        return task, task_defs.load_split(task, task.fewshot_split, data_dir, download=download, cache=cache), True
    except FileNotFoundError:
        # lm-eval's shot split is missing: take shots from the scored split, minus the scored doc
        if task.name not in _WARNED:
            _WARNED.add(task.name)
            print(f"warning: {task.name}: few-shot split '{task.fewshot_split}' not found; drawing shots from "
                  f"'{task.split}' excluding the scored document. This does NOT match lm-eval's shots.")
        return replace(task, fewshot_excludes_doc=True, fewshot_sampler="default"), docs_all, False


# ----------------------------------------------------------------------------- evaluate

def paper_protocol_shots(shots=1):
    """The paper's two passes as one num_fewshot dict: 0-shot for anli_r2, lambada_openai,
    openbookqa, piqa, truthfulqa_mc2, winogrande; `shots` (1 for GPT-2, 5 for Qwen3) for
    arc_easy, arc_challenge, medmcqa and mmlu."""
    return {**{name: 0 for name in task_defs.PAPER_ZERO_SHOT}, **{name: shots for name in task_defs.PAPER_FEW_SHOT}}


def evaluate(model, tasks, data_dir=None, limit=None, num_fewshot=0, batch_size=16, device=None,
             seed=1234, progress=True, wikitext=None, download=True, max_batch_tokens=8192,
             dtype=None, enc=None, keep_requests=False):
    """Score `tasks` (names or groups, list or comma string) and return (results, items).
    num_fewshot: an int for every task, or a dict task/group name -> shots (missing -> 0),
    e.g. paper_protocol_shots(1).
    limit: score only the first `limit` documents of each task (each MMLU subject).
    seed: lm-eval's few-shot seed. The model is put in eval mode and restored afterwards.
    keep_requests: also put each item's (context, continuation) texts in its record.
    enc: the model's tokenizer (data.common.get_tokenizer(name)); None: GPT-2's."""
    if enc is None:
        from data.common import get_tokenizer
        enc = get_tokenizer()
    check_tokenizer(enc, "evaluate")
    data_dir = data_dir or os.environ.get("DISPERSE_BENCHMARKS")
    model = getattr(model, "module", model)        # DDP wrapper
    model = getattr(model, "_orig_mod", model)     # torch.compile wrapper: run eager, shapes vary
    device = device or next(model.parameters()).device
    names = task_defs.expand(tasks)
    if isinstance(num_fewshot, dict):  # keys may be groups ("mmlu"): give each leaf task its shots
        num_fewshot = {leaf: k for key, k in num_fewshot.items() for leaf in task_defs.expand([key])}
    t0 = time.time()

    # documents -> items (text requests) -> token requests
    file_cache = {}
    all_items, token_items, task_info = [], [], {}
    for name in names:
        task = task_defs.TASKS[name]
        docs_all = load_task_docs(task, data_dir, wikitext, download, file_cache)
        docs = docs_all[:limit] if limit else docs_all
        k = num_fewshot.get(name, 0) if isinstance(num_fewshot, dict) else int(num_fewshot or 0)
        k = task.fixed_num_fewshot if task.fixed_num_fewshot is not None else k
        k = 0 if task.kind == "loglikelihood_rolling" else k  # lm-eval puts no shots before a rolling doc
        sampling_task, pool, matches = task, None, True
        if k > 0:
            sampling_task, pool, matches = fewshot_pool(task, docs_all, data_dir, download, file_cache)
        try:
            items = task_defs.build_items(sampling_task, docs, k, pool, seed)
        except KeyError as e:
            raise task_defs.missing_field(task, data_dir, e) from None
        task_info[name] = {"num_fewshot": k, "split": task.split,
                           "fewshot_split": (None if k == 0 else task.fewshot_split if matches else task.split),
                           "fewshot_matches_lm_eval": matches}
        if task.split_note:
            task_info[name]["note"] = task.split_note
        for item in items:
            if task.kind == "loglikelihood_rolling":
                tokens = encode(enc, item.requests[0][1])
                token_items.append(rolling_windows(tokens, model.config.block_size, enc.prefix_token))
            else:
                token_items.append([encode_pair(enc, c, x) for c, x in item.requests])
            all_items.append(item)

    # score every request of every task in one pass (better batches)
    was_training = model.training
    model.eval()
    autocast = (torch.autocast(device_type="cuda", dtype=getattr(torch, dtype))
                if dtype and dtype != "float32" and str(device).startswith("cuda") else nullcontext())
    try:
        with autocast:
            scores = score_items(model, token_items, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                                 device=device, progress=progress, desc=f"scoring {len(all_items)} items",
                                 groups=[item.task for item in all_items])
    finally:
        model.train(was_training)

    # per-item records, then per-task metrics
    records = {name: [] for name in names}
    block_size = model.config.block_size
    for item, item_scores, reqs in zip(all_items, scores, token_items):
        rec = item_record(task_defs.TASKS[item.task], item, item_scores)
        long = sum(len(cont) > block_size for _, cont in reqs)
        if long and task_defs.TASKS[item.task].kind != "loglikelihood_rolling":  # (rolling windows always fit)
            rec["long_continuations"] = long  # requests scored in windows (see scoring.continuation_windows)
        if keep_requests:
            rec["requests"] = item.requests
        records[item.task].append(rec)
    results = {}
    for name in names:
        results[name] = {**task_metrics(task_defs.TASKS[name], records[name]), **task_info[name],
                         "n_long_continuation": sum(1 for r in records[name] if r.get("long_continuations"))}
    results.update(group_metrics(results))
    results["config"] = {"tasks": tasks if isinstance(tasks, str) else ",".join(tasks), "limit": limit,
                         "num_fewshot": num_fewshot, "seed": seed, "batch_size": batch_size,
                         "data_dir": data_dir, "device": str(device), "block_size": model.config.block_size,
                         "seconds": round(time.time() - t0, 2), "n_items": len(all_items)}
    items_out = [r for name in names for r in records[name]]
    return results, items_out


def flat_metrics(results):
    """{"<task>/<metric>": value} of evaluate's results: the numbers a log line holds (no stderr, n or shots)."""
    flat = {}
    for task, metrics in results.items():
        if task == "config" or not isinstance(metrics, dict):
            continue
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not name.endswith("stderr") \
                    and name not in ("num_fewshot", "n"):
                flat[f"{task}/{name}"] = value
    return flat


def item_record(task, item, item_scores):
    """What one scored document gives: log-likelihoods, prediction, gold, per-item metrics."""
    lls = [ll for ll, _ in item_scores]
    greedy = [g for _, g in item_scores]
    rec = {"task": task.name, "doc_id": item.doc_id}
    if task.kind == "loglikelihood_rolling":
        page = item.doc["page"]
        rec.update(ll=sum(lls), words=task_defs.wikitext_words(page), bytes=len(page.encode("utf-8")),
                   windows=len(lls))
    elif task.kind == "loglikelihood":
        rec.update(ll=lls[0], is_greedy=greedy[0], acc=float(greedy[0]))
    else:
        pred = pick_choice(lls)
        rec.update(lls=lls, is_greedy=greedy, pred=pred, gold=item.gold, acc=float(pred == item.gold))
        if "acc_norm" in task.metrics:
            pred_norm = pick_choice(lls, [len(c) for c in item.choices])
            rec.update(pred_norm=pred_norm, acc_norm=float(pred_norm == item.gold))
        if task.process_results is not None:
            rec.update(task.process_results(item.doc, lls))
    return rec


def task_metrics(task, recs):
    out = {"n": len(recs)}
    if not recs:
        return out
    if task.kind == "loglikelihood_rolling":
        out.update(weighted_perplexities([r["ll"] for r in recs], [r["words"] for r in recs],
                                         [r["bytes"] for r in recs]))
        return out  # lm-eval reports no stderr for these
    for metric in task.metrics:
        if metric == "perplexity":
            out["perplexity"], out["perplexity_stderr"] = perplexity_and_stderr([r["ll"] for r in recs])
        else:
            values = [r[metric] for r in recs]
            out[metric], out[f"{metric}_stderr"] = mean(values), mean_stderr(values)
    return out


def group_metrics(results):
    """MMLU and its four categories as lm-eval 0.4.x aggregates them: the size-weighted mean of
    the subjects' acc (= accuracy over all their questions) with the pooled stderr; computed
    over the leaf subjects, only when every subject was scored. paper10: the unweighted mean
    of the ten tasks' accuracies (lambada acc, truthfulqa_mc2 acc, the mmlu aggregate)."""
    out = {}
    for group, members in task_defs.GROUPS.items():
        if group == "paper10":
            continue
        leaves = task_defs.expand(members)
        if not all(leaf in results and results[leaf].get("n") for leaf in leaves):
            continue
        sizes = [results[leaf]["n"] for leaf in leaves]
        accs = [results[leaf]["acc"] for leaf in leaves]
        stderrs = [results[leaf]["acc_stderr"] for leaf in leaves]
        out[group] = {"acc": sum(a * n for a, n in zip(accs, sizes)) / sum(sizes), "n": sum(sizes),
                      "acc_stderr": pooled_stderr(stderrs, sizes) if None not in stderrs else None,
                      "num_fewshot": results[leaves[0]]["num_fewshot"]}
    scores = {**results, **out}
    ten = task_defs.GROUPS["paper10"]
    if all(name in scores and "acc" in scores[name] for name in ten):
        out["paper10"] = {"acc": mean([scores[name]["acc"] for name in ten]),
                          "tasks": {name: scores[name]["acc"] for name in ten}}
    return out


# ----------------------------------------------------------------------------- output

def format_table(results):
    lines = [f"{'task':<28} {'n':>6} {'shots':>5}  {'metric':<16} {'value':>10} {'stderr':>8}"]
    for name, res in results.items():
        if name == "config" or name.startswith("mmlu_") and name not in task_defs.GROUPS:
            continue  # the 57 subjects are in results.json; the table shows the aggregates
        metrics = [m for m in res if m not in ("n", "num_fewshot", "tasks", "split", "fewshot_split",
                                               "fewshot_matches_lm_eval", "note", "n_long_continuation")
                   and not m.endswith("_stderr")]
        for k, metric in enumerate(metrics):
            value, se = res[metric], res.get(f"{metric}_stderr")
            label = name if k == 0 else ""
            if name == "paper10":
                label = "paper10 (mean of 10 acc)"
            n = str(res.get("n", "")) if k == 0 else ""
            shots = str(res.get("num_fewshot", "")) if k == 0 else ""
            if k == 0 and res.get("fewshot_matches_lm_eval") is False:
                shots += "*"
            lines.append(f"{label:<28} {n:>6} {shots:>5}  {metric:<16} {value:>10.4f} "
                         f"{'' if se is None else f'{se:.4f}':>8}")
    if any(isinstance(r, dict) and r.get("fewshot_matches_lm_eval") is False for r in results.values()):
        lines.append("* shots drawn from the scored split (lm-eval's few-shot split is not available)")
    long = {name: r["n_long_continuation"] for name, r in results.items()
            if isinstance(r, dict) and r.get("n_long_continuation")}
    if long:
        lines.append("items with a continuation longer than block_size, scored in windows: "
                     + ", ".join(f"{name} {n}" for name, n in long.items()))
    return "\n".join(lines)


def write_outputs(out_dir, results, items):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2, default=lambda x: None if isinstance(x, float) and math.isnan(x) else x)
    with open(os.path.join(out_dir, "items.jsonl"), "w") as f:
        for rec in items:
            f.write(json.dumps(rec) + "\n")


def arguments():
    """The command line: every option spelled with - or _ (--data-dir, --data_dir), yes/no options also as
    --allow_unsafe_pickle=True, as train.py writes them (configurator.ArgumentParser)."""
    p = ArgumentParser(prog="python -m eval.benchmarks", description=__doc__)
    p.add_argument("--ckpt", required=True, help="our ckpt.pt, an out_dir holding it, or a Hugging Face model dir")
    p.add_argument("--tokenizer", default=None,
                   help="the model's tokenizer (gpt2, a Hugging Face folder or hub name); default: the one the "
                        "checkpoint records, or the Hugging Face folder's own")
    p.add_argument("--tasks", default="paper10", help="comma list of tasks/groups (paper10, mmlu, hellaswag, ...)")
    p.add_argument("--data-dir", default=os.environ.get("DISPERSE_BENCHMARKS"),
                   help="folder of <dataset>/<split>.jsonl files (env DISPERSE_BENCHMARKS)")
    p.add_argument("--wikitext", default=None, help="raw WikiText test file for the wikitext task "
                   "(env DISPERSE_WIKITEXT_TEST; else <data-dir>/wikitext/test.jsonl)")
    p.add_argument("--out", default=None, help="output folder for results.json and items.jsonl")
    p.add_argument("--num-fewshot", type=int, default=None,
                   help="shots for every task (default 0); with --paper-protocol, for the 4 few-shot tasks (default 1)")
    p.add_flag("--paper-protocol",
               help="0-shot anli_r2, lambada_openai, openbookqa, piqa, truthfulqa_mc2, winogrande; "
                    "--num-fewshot (default 1, GPT-2) for arc_easy, arc_challenge, medmcqa, mmlu")
    p.add_argument("--limit", type=int, default=None,
                   help="score the first N docs per task (per MMLU subject); default: all")
    p.add_argument("--batch-size", type=int, default=16, help="items (documents) per batch")
    p.add_argument("--max-batch-tokens", type=int, default=8192,
                   help="cap on batch rows x prefix tokens (activations and key/value caches grow with it)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="autocast dtype on cuda (log-softmax stays float32)")
    p.add_argument("--seed", type=int, default=1234, help="few-shot sampling seed (lm-eval's default too)")
    p.add_flag("--no-download", help="never fetch missing files from the hub")
    p.add_flag("--allow-unsafe-pickle",
               help="open a checkpoint not in the safe format (older or foreign): unpickling it can run code")
    return p


def main(argv=None):
    args = arguments().parse_args(argv)
    try:  # the cheap checks first: nothing is loaded before the inputs are known to be there
        task_defs.expand(args.tasks)
    except KeyError as e:
        raise InputError(f"--tasks: {e.args[0]}") from None
    if args.data_dir and not os.path.isdir(args.data_dir):
        raise MissingFileError(f"--data-dir {args.data_dir}: no such folder (it should hold <dataset>/<split>.jsonl "
                               "files, e.g. shared/benchmarks)")
    if args.wikitext and not os.path.isfile(args.wikitext):
        raise MissingFileError(f"--wikitext {args.wikitext}: no such file")

    from data.common import get_tokenizer
    from load import load_model
    model, info = load_model(args.ckpt, args.device, allow_unsafe_pickle=args.allow_unsafe_pickle)
    enc = get_tokenizer(args.tokenizer or info["tokenizer"])
    check_tokenizer(enc, args.ckpt)
    if model.config.vocab_size < enc.vocab_size:
        raise InputError(f"{args.ckpt}: the model has vocab_size={model.config.vocab_size}, but the benchmarks are "
                         f"encoded with its tokenizer {enc.name!r} (ids up to {enc.vocab_size - 1}); pass the "
                         "tokenizer it was trained with (--tokenizer)")
    tasks = args.tasks
    if args.paper_protocol:
        num_fewshot = paper_protocol_shots(1 if args.num_fewshot is None else args.num_fewshot)
    else:
        num_fewshot = args.num_fewshot or 0
    results, items = evaluate(model, tasks, args.data_dir, limit=args.limit, num_fewshot=num_fewshot,
                              batch_size=args.batch_size, device=args.device, seed=args.seed,
                              wikitext=args.wikitext, download=not args.no_download,
                              max_batch_tokens=args.max_batch_tokens, dtype=args.dtype, enc=enc)
    results["config"].update(ckpt=args.ckpt, model=info, paper_protocol=args.paper_protocol, tokenizer=enc.name)
    if args.paper_protocol:
        results["config"]["num_fewshot"] = {"zero_shot": task_defs.PAPER_ZERO_SHOT,
                                            "few_shot": task_defs.PAPER_FEW_SHOT,
                                            "shots": 1 if args.num_fewshot is None else args.num_fewshot}
    rank0 = not (torch.distributed.is_available() and torch.distributed.is_initialized()) \
        or torch.distributed.get_rank() == 0
    if rank0:
        print(format_table(results))
        if args.out:
            write_outputs(args.out, results, items)
            print(f"wrote {args.out}/results.json and items.jsonl")


if __name__ == "__main__":
    run_cli(main)
