"""
Cross-check our benchmark scorer (eval/benchmarks.py) against lm-evaluation-harness 0.4.x,
item by item, on the same model and the same local data files.

lm-eval is run fully offline: each task gets an include_path YAML that includes lm-eval's own
task YAML and only re-points the data at our local <dataset>/<split>.jsonl files (see
shared/notes/lm-eval-offline.md). The model is written in Hugging Face layout (model.to_hf plus
the GPT-2 tokenizer files) and loaded with lm-eval's `hf` model type, so tokenisation,
truncation, batching and scoring on the lm-eval side are all lm-eval's own.

Where lm-eval's few-shot split is missing offline (e.g. MedMCQA, PIQA train), our scorer draws
shots from the scored split without the scored doc; the YAML then sets fewshot_split to the
scored split and puts it in test_split, which makes lm-eval draw the same way, so shots can be
compared too.

    python bench/crosscheck_lmeval.py --data-dir ../shared/benchmarks \\
        --wikitext ../shared/corpus/wikitext103/test.raw --tiktoken-dir ../shared/tiktoken \\
        --limit 50 --num-fewshot 0,1 [--ckpt out/ckpt.pt] [--out crosscheck]
    # a Llama-shaped model with a Hugging Face tokenizer that puts a BOS in front (trained here)
    python bench/crosscheck_lmeval.py ... --family llama --tokenizer bpe --corpus ../shared/corpus

Needs: pip install lm-eval==0.4.13 accelerate (optional dependencies of this project).
Without --ckpt a small randomly initialised model (seed 0) is used: a GPT-2 of model.py, or with
--family llama one built by transformers from its LlamaConfig and read into model.py. --tokenizer
gives the model's tokenizer (a Hugging Face folder, copied into the export lm-eval loads; `bpe`
trains a 4096-id byte-level BPE on --corpus with `tokenizers`, BOS added like Llama's); our
scorer then encodes with that folder (data.common.get_tokenizer) by HFLM's rules.
"""

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the repo

DEFAULT_TASKS = ("anli_r2,lambada_openai,openbookqa,piqa,truthfulqa_mc1,truthfulqa_mc2,winogrande,"
                 "arc_easy,arc_challenge,medmcqa,mmlu,hellaswag,boolq,copa,sciq,wikitext")

# our task -> lm-eval's YAML, relative to lm_eval/tasks
LMEVAL_YAML = {
    "anli_r2": "anli/anli_r2.yaml", "lambada_openai": "lambada/lambada_openai.yaml",
    "openbookqa": "openbookqa/openbookqa.yaml", "piqa": "piqa/piqa.yaml",
    "truthfulqa_mc1": "truthfulqa/truthfulqa_mc1.yaml", "truthfulqa_mc2": "truthfulqa/truthfulqa_mc2.yaml",
    "winogrande": "winogrande/default.yaml", "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_challenge.yaml", "medmcqa": "medmcqa/medmcqa.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml", "boolq": "super_glue/boolq/default.yaml",
    "copa": "super_glue/copa/default.yaml", "sciq": "sciq/sciq.yaml", "wikitext": "wikitext/wikitext.yaml",
}


def go_offline(parser, args):
    """Check the data flags and keep transformers, datasets and lm-eval off the network."""
    if not (args.data_dir and args.tiktoken_dir):
        parser.error("--data-dir and --tiktoken-dir (or DISPERSE_BENCHMARKS, TIKTOKEN_CACHE_DIR) are required")
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", args.tiktoken_dir)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[var] = "1"
    os.environ["DISABLE_MULTIPROC"] = "1"  # lm-eval's bootstrap without a process pool


def write_yaml(path, fields):
    """A flat YAML file; values are JSON, which YAML reads as is."""
    with open(path, "w") as f:
        for key, value in fields.items():
            f.write(f"{key}: {json.dumps(value)}\n")


def build_lmeval_tasks(names, data_dir, wikitext, work):
    """Write one include_path YAML per task (plus the mmlu group) into work/yaml; return the
    lm-eval task names to run, in the order of `names` (MMLU as its group)."""
    import lm_eval
    from eval import tasks as task_defs
    from eval.benchmarks import load_task_docs
    builtin = Path(lm_eval.__file__).parent / "tasks"
    ydir, ddir = work / "yaml", work / "data"
    ydir.mkdir(parents=True, exist_ok=True)
    ddir.mkdir(parents=True, exist_ok=True)
    run, mmlu = [], []
    for name in names:
        task = task_defs.TASKS[name]
        if name.startswith("mmlu_"):
            subject = name[len("mmlu_"):]
            files = {}
            for split in ("test", "dev"):  # one file per subject, as cais/mmlu has it
                out = ddir / f"{name}_{split}.jsonl"
                rows = [r for r in task_defs.read_jsonl(task_defs.split_path(data_dir, "mmlu", split)) if r["subject"] == subject]
                out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
                files[split] = str(out)
            write_yaml(ydir / f"off_{name}.yaml", {
                "include": str(builtin / "mmlu" / "default" / f"{name}.yaml"), "task": f"off_{name}", "tag": [],
                "dataset_path": "json", "dataset_name": None, "dataset_kwargs": {"data_files": files}})
            mmlu.append(f"off_{name}")
            continue
        if name == "wikitext":  # document-level pages, split from the raw file by our code
            out = ddir / "wikitext_test.jsonl"
            pages = load_task_docs(task, data_dir, wikitext, download=False)
            out.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pages), encoding="utf-8")
            scored = {"test": str(out)}
            fields = {"test_split": "test", "validation_split": None, "training_split": None}
        else:
            path = task_defs.split_path(data_dir, task.dataset, task.split)
            scored = {task.split: path}
            pool = task.fewshot_split and task_defs.split_path(data_dir, task.dataset, task.fewshot_split)
            if pool and task.fewshot_split != task.split:
                # lm-eval's own shot source: keep the original split roles
                key = "validation_split" if task.fewshot_excludes_doc or name.startswith("truthfulqa") else "test_split"
                other = "test_split" if key == "validation_split" else "validation_split"
                fields = {key: task.split, other: None, "training_split": task.fewshot_split}
                scored[task.fewshot_split] = pool
            elif pool:  # shots from the scored split itself (lambada): lm-eval falls back to test docs
                fields = {"test_split": task.split, "validation_split": None, "training_split": None}
            else:
                # no shot source offline: shots from the scored split minus the scored doc, as ours
                fields = {"test_split": task.split, "validation_split": None, "training_split": None,
                          "fewshot_split": task.split}
        write_yaml(ydir / f"off_{name}.yaml", {
            "include": str(builtin / LMEVAL_YAML[name]), "task": f"off_{name}", "tag": [],
            "dataset_path": "json", "dataset_name": None, "dataset_kwargs": {"data_files": scored}, **fields})
        run.append(f"off_{name}")
    if mmlu:
        write_yaml(ydir / "off_mmlu_group.yaml", {
            "group": "off_mmlu", "task": mmlu,
            "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}]})
        run.append("off_mmlu")
    return run, ydir


def export_hf(model, tiktoken_dir, out, tokenizer_dir=None):
    hf.export(model, str(out))
    if tokenizer_dir:  # the model's own tokenizer folder
        for name in os.listdir(tokenizer_dir):
            if name.startswith(("tokenizer", "special_tokens_map", "vocab", "merges", "added_tokens")):
                shutil.copy(Path(tokenizer_dir) / name, out / name)
        return out
    # the GPT-2 tokenizer files under the names Hugging Face expects
    shutil.copy(Path(tiktoken_dir) / "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6", out / "vocab.json")
    shutil.copy(Path(tiktoken_dir) / "6d1cbeee0f20b3d9449abfede4726ed8212e3aee", out / "merges.txt")
    return out


def train_bpe(corpus, out, vocab_size=4096):
    """A byte-level BPE trained with `tokenizers` on the .txt files under corpus, saved as a Hugging
    Face folder whose encode() puts <s> in front, as Llama's does (</s> is its eos)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    files = sorted(str(p) for p in Path(corpus).rglob("*.txt"))
    if not files:
        raise SystemExit(f"--corpus {corpus}: no .txt files to train the BPE on")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train(files, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"], show_progress=False,
                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>").save_pretrained(str(out))
    return str(out)


def random_llama(vocab_size, work, block_size=256):
    """A Llama-shaped model at random init (seed 0), built by transformers from its LlamaConfig,
    saved and read into model.py (GPT.from_hf); to_hf then writes what lm-eval loads."""
    import torch
    import transformers
    import hf
    config = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=block_size,
                                      rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(str(work / "llama-init"))
    return hf.load(str(work / "llama-init"))


def lmeval_tokens(lm, kind, request):
    """lm-eval's own token requests for one of our text requests, from its HFLM `lm`: the
    per-request part of TemplateLM.loglikelihood (empty context: the prefix token), or the
    windows of HFLM.loglikelihood_rolling."""
    from lm_eval import utils
    if kind == "loglikelihood_rolling":
        windows = utils.get_rolling_token_windows(token_list=lm.tok_encode(request[1]), prefix_token=lm.prefix_token_id,
                                                  max_seq_len=lm.max_length, context_len=1)
        return [tuple(map(list, utils.make_disjoint_window(w))) for w in windows]
    context, continuation = request
    if context:
        return tuple(map(list, lm._encode_pair(context, continuation)))
    cont = lm.tok_encode(continuation, add_special_tokens=False)
    return ([lm.prefix_token_id], cont) if lm.prefix_token_id != cont[0] else (cont[:1], cont[1:])


def tokenizer_check(names, data_dir, wikitext, lm, enc, block_size):
    """Every request of every listed task (0-shot, no limit): our (context, continuation) tokens
    (eval/scoring.py with `enc`) vs lm-eval's own (its HFLM `lm`, with the exported tokenizer
    folder). Returns {task: (requests, mismatches)}."""
    from eval import tasks as task_defs
    from eval.benchmarks import load_task_docs
    from eval.scoring import encode, encode_pair, rolling_windows
    out = {}
    for name in names:
        task = task_defs.TASKS[name]
        docs = load_task_docs(task, data_dir, wikitext, download=False)
        n = bad = 0
        for item in task_defs.build_items(task, docs, 0, None):
            for request in item.requests:
                n += 1
                if task.kind == "loglikelihood_rolling":
                    ours = [tuple(map(list, w)) for w in rolling_windows(encode(enc, request[1]), block_size, enc.prefix_token)]
                else:
                    ours = tuple(map(list, encode_pair(enc, *request)))
                bad += ours != lmeval_tokens(lm, task.kind, request)
        out[name] = (n, bad)
    return out


def lm_args(sample):
    """(context, continuation) pairs of an lm-eval logged sample."""
    out = []
    for value in sample["arguments"]:
        args = value if isinstance(value, (list, tuple)) else list(value.values())
        out.append(tuple(args[:2]) if len(args) >= 2 else ("", args[0]))
    return out


def compare_task(name, task, ours, lm_samples):
    """Per-item comparison of one task: counts and worst differences."""
    by_id = {s["doc_id"]: s for s in lm_samples}
    row = {"task": name, "n": len(ours), "n_lmeval": len(lm_samples), "prompts_equal": 0, "preds_equal": 0,
           "max_abs_dll": 0.0, "mismatches": []}
    for rec in ours:
        s = by_id.get(rec["doc_id"])
        if s is None:
            row["mismatches"].append((rec["doc_id"], "missing in lm-eval"))
            continue
        if task.kind == "loglikelihood_rolling":
            # a page's total log-likelihood (relative difference: sums of thousands of tokens) and word count
            lm_ll, lm_words = s["word_perplexity"]
            row["prompts_equal"] += 1
            d = abs(rec["ll"] - lm_ll) / max(1.0, abs(lm_ll))
            row["max_abs_dll"] = max(row["max_abs_dll"], d)
            row["preds_equal"] += int(rec["words"] == lm_words and d < 1e-5)
            if rec["words"] != lm_words or d >= 1e-5:
                row["mismatches"].append((rec["doc_id"], f"words {rec['words']} vs {lm_words}, rel dll={d:.2e}"))
            continue
        resps = [r[0] if isinstance(r[0], (list, tuple)) else r for r in s["filtered_resps"]]
        lm_lls = [float(r[0]) for r in resps]
        lm_greedy = [bool(r[1]) for r in resps]
        prompts_ok = [tuple(x) for x in rec["requests"]] == lm_args(s)
        row["prompts_equal"] += int(prompts_ok)
        if task.kind == "loglikelihood":
            d = abs(rec["ll"] - lm_lls[0])
            same = rec["is_greedy"] == lm_greedy[0] and rec["acc"] == float(s["acc"])
        else:
            d = max(abs(a - b) for a, b in zip(rec["lls"], lm_lls))
            lm_pred = max(range(len(lm_lls)), key=lambda k: (lm_lls[k], -k))
            same = rec["pred"] == lm_pred and len(rec["lls"]) == len(lm_lls)
            # 0/1 accuracies must be equal; a continuous per-item score (truthfulqa_mc2's mass on the
            # true answers, a function of exp(ll differences)) moves with the float32 noise of the
            # lls: ~1e-5 in ll gives up to ~3e-6 in the mass of a near-uniform model
            tol = 1e-4 if task.process_results is not None else 1e-6
            for metric in ("acc", "acc_norm"):
                if metric in rec and metric in s:
                    same = same and abs(rec[metric] - float(s[metric])) < tol
            same = same and rec["is_greedy"] == lm_greedy
        row["max_abs_dll"] = max(row["max_abs_dll"], d)
        row["preds_equal"] += int(same)
        if not (prompts_ok and same and d < 1e-3):
            row["mismatches"].append((rec["doc_id"], f"prompts_ok={prompts_ok} same={same} dll={d:.2e}"))
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=None, help="checkpoint to test (default: a random tiny model, seed 0)")
    p.add_argument("--family", choices=("gpt2", "llama"), default="gpt2",
                   help="without --ckpt: the random model's family (llama: from transformers' LlamaConfig)")
    p.add_argument("--tokenizer", default=None,
                   help="the model's Hugging Face tokenizer folder, or 'bpe' (trained on --corpus); default: GPT-2's")
    p.add_argument("--corpus", default=os.path.join(os.environ.get("DISPERSE_SHARED", "../shared"), "corpus"),
                   help="text the 'bpe' tokenizer is trained on")
    p.add_argument("--data-dir", default=os.environ.get("DISPERSE_BENCHMARKS"))
    p.add_argument("--wikitext", default=os.environ.get("DISPERSE_WIKITEXT_TEST"))
    p.add_argument("--tiktoken-dir", default=os.environ.get("TIKTOKEN_CACHE_DIR"),
                   help="folder with the GPT-2 vocab.json/merges.txt cache files (6c7ea1a…, 6d1cbee…)")
    p.add_argument("--tasks", default=DEFAULT_TASKS)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--num-fewshot", default="0,1", help="comma list: one pass per value")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--work", default=None, help="folder for the HF export, YAMLs and data (default: temp)")
    p.add_argument("--out", default=None, help="write crosscheck.json here")
    p.add_argument("--full-tokenizer-check", action="store_true",
                   help="also compare our tokens with lm-eval's own (HFLM) on every request of every task (no limit)")
    args = p.parse_args()
    go_offline(p, args)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from data.common import get_tokenizer
    import hf
    from load import load_model
    from model import GPT, GPTConfig
    from eval import tasks as task_defs
    from eval.benchmarks import evaluate

    work = Path(args.work or tempfile.mkdtemp(prefix="crosscheck_"))
    tokenizer_dir = train_bpe(args.corpus, work / "bpe") if args.tokenizer == "bpe" else args.tokenizer
    if args.ckpt:
        model, info = load_model(args.ckpt, "cpu")
        model_desc = args.ckpt
        if tokenizer_dir is None and os.path.isdir(info["tokenizer"]):  # the Hugging Face folder it records
            tokenizer_dir = info["tokenizer"]
    enc = get_tokenizer(tokenizer_dir or "gpt2")
    if not args.ckpt and args.family == "llama":
        model = random_llama(enc.vocab_size, work)
        model_desc = "random Llama (transformers LlamaConfig, block 256, 2 layers, 4 heads, 2 kv heads, 64 dims, seed 0)"
    elif not args.ckpt:
        torch.manual_seed(0)
        model = GPT(GPTConfig(block_size=256, n_layer=2, n_head=4, n_embd=64, vocab_size=enc.vocab_size))
        model_desc = "random GPT (block 256, 2 layers, 4 heads, 64 dims, seed 0)"
    model_desc += f"; tokenizer {enc.name if tokenizer_dir else 'gpt2 (tiktoken; its vocab.json + merges.txt for lm-eval)'}"
    model.eval()
    hf_dir = export_hf(model, args.tiktoken_dir, work / "hf", tokenizer_dir)
    names = task_defs.expand(args.tasks)
    lm_names, ydir = build_lmeval_tasks(names, args.data_dir, args.wikitext, work)
    manager = TaskManager(include_path=str(ydir))
    lm = HFLM(pretrained=str(hf_dir), device="cpu", batch_size=args.batch_size, dtype="float32")

    report = {"model": model_desc, "limit": args.limit, "passes": []}
    all_ok = True
    for shots in [int(k) for k in args.num_fewshot.split(",")]:
        pass_names = names if shots == 0 else [n for n in names if not n.startswith("truthfulqa") and n != "wikitext"]
        pass_lm = [n for n in lm_names if n == "off_mmlu" or n[len("off_"):] in pass_names]
        t0 = time.time()
        ours, our_items = evaluate(model, pass_names, args.data_dir, limit=args.limit, num_fewshot=shots,
                                   batch_size=args.batch_size, device="cpu", seed=args.seed,
                                   wikitext=args.wikitext, download=False, keep_requests=True, enc=enc)
        t_ours = time.time() - t0
        t0 = time.time()
        lm_out = lm_eval.simple_evaluate(model=lm, tasks=pass_lm, task_manager=manager, limit=args.limit,
                                         num_fewshot=shots, log_samples=True, bootstrap_iters=100,
                                         random_seed=args.seed, numpy_random_seed=args.seed,
                                         torch_random_seed=args.seed, fewshot_random_seed=args.seed)
        t_lm = time.time() - t0
        rows, subjects = [], []
        for name in pass_names:
            task = task_defs.TASKS[name]
            mine = [r for r in our_items if r["task"] == name]
            row = compare_task(name, task, mine, lm_out["samples"][f"off_{name}"])
            metric = {"loglikelihood_rolling": "word_perplexity"}.get(task.kind, "acc")
            row["metric"] = metric
            row["ours"] = ours[name][metric]
            row["lmeval"] = lm_out["results"][f"off_{name}"][f"{metric},none"]
            (subjects if name.startswith("mmlu_") else rows).append(row)
        if subjects:  # the 57 MMLU subjects as one row; the group aggregate follows
            merged = {"task": f"mmlu ({len(subjects)} subjects)", "metric": "acc", "mismatches": [],
                      "max_abs_dll": max(r["max_abs_dll"] for r in subjects)}
            for key in ("n", "n_lmeval", "prompts_equal", "preds_equal"):
                merged[key] = sum(r[key] for r in subjects)
            for r in subjects:
                merged["mismatches"] += [(f"{r['task']}#{d}", why) for d, why in r["mismatches"]]
            merged["ours"] = sum(r["ours"] * r["n"] for r in subjects) / merged["n"]
            merged["lmeval"] = sum(r["lmeval"] * r["n"] for r in subjects) / merged["n"]
            rows.append(merged)
        if "off_mmlu" in pass_lm:
            lm_mmlu = lm_out["results"]["off_mmlu"]
            rows.append({"task": "mmlu (group)", "n": ours["mmlu"]["n"], "metric": "acc",
                         "ours": ours["mmlu"]["acc"], "lmeval": lm_mmlu["acc,none"],
                         "ours_stderr": ours["mmlu"]["acc_stderr"], "lmeval_stderr": lm_mmlu["acc_stderr,none"]})
        report["passes"].append({"num_fewshot": shots, "seconds_ours": round(t_ours, 1),
                                 "seconds_lmeval": round(t_lm, 1), "rows": rows})
        print(f"\n== {shots}-shot, limit {args.limit}: ours {t_ours:.1f}s, lm-eval {t_lm:.1f}s")
        print(f"{'task':<32} {'n':>5} {'prompts=':>8} {'agree':>6} {'ours':>9} {'lm-eval':>9} {'max|dll|':>9}")
        for row in rows:
            if "preds_equal" not in row:
                print(f"{row['task']:<32} {row['n']:>5} {'':>8} {'':>6} {row['ours']:>9.4f} {row['lmeval']:>9.4f}"
                      f"   stderr {row['ours_stderr']:.6f} vs {row['lmeval_stderr']:.6f}")
                all_ok &= (abs(row["ours"] - row["lmeval"]) < 1e-9
                           and abs(row["ours_stderr"] - row["lmeval_stderr"]) < 1e-9)
                continue
            ok = (row["n"] == row["n_lmeval"] == row["prompts_equal"] == row["preds_equal"]
                  and not row["mismatches"] and math.isclose(row["ours"], row["lmeval"], rel_tol=1e-4, abs_tol=1e-9))
            all_ok &= ok
            print(f"{row['task']:<32} {row['n']:>5} {row['prompts_equal']:>8} {row['preds_equal']:>6} "
                  f"{row['ours']:>9.4f} {row['lmeval']:>9.4f} {row['max_abs_dll']:>9.2e}{'' if ok else '  MISMATCH'}")
            for doc_id, why in row["mismatches"][:3]:
                print(f"    doc {doc_id}: {why}")
    if args.full_tokenizer_check:
        t0 = time.time()
        checked = tokenizer_check(names, args.data_dir, args.wikitext, lm, enc, model.config.block_size)
        report["tokenizer_check"] = checked
        total, bad = sum(n for n, _ in checked.values()), sum(b for _, b in checked.values())
        print(f"\ntokenizer check: {total} requests of {len(checked)} tasks, {bad} differ "
              f"(ours with {enc.name} vs lm-eval's HFLM with the exported folder, {time.time() - t0:.0f}s)")
        for name, (n, b) in checked.items():
            if b:
                print(f"    {name}: {b} of {n} requests differ")
        all_ok &= bad == 0
    print("\nALL AGREE" if all_ok else "\nDIFFERENCES FOUND")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "crosscheck.json"), "w") as f:
            json.dump(report, f, indent=2)
    sys.exit(0 if all_ok else 1)


if __name__ == "__main__":
    main()
