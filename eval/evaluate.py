"""
Evaluate one checkpoint the way an experiment does: the benchmarks (eval/benchmarks.py) into one
folder and the condensation probe (eval/condensation.py) into another, in this process (a subprocess
per stage would pay torch's start-up and re-read the benchmark files each time). Each output folder
is written under a temporary name and renamed when complete, so a folder that exists is whole.

`settings` (evaluation_settings, from experiment.py's settings) holds: tasks, limits ({task: limit}),
data_dir, num_fewshot, paper_protocol, device, dtype, batch_size, and probe: {text, n_seq, seq_len,
batch_size}. check_inputs checks that the files they name are there, before anything is trained.
"""

import datetime
import os
import time

from errors import MissingFileError, did_you_mean
from eval import tasks
from files import atomic_folder, write_json

_probe_tokens = {}  # (text path, tokenizer) -> token ids, tokenised once per process


def evaluation_settings(cfg):
    """What evaluate_checkpoint needs of an experiment's settings (experiment.py DEFAULTS); the
    benchmark folder and the probe text default to $DISPERSE_BENCHMARKS and $DISPERSE_WIKITEXT."""
    return {"tasks": cfg["tasks"], "limit": cfg["eval_limit"], "limits": task_limits(cfg),
            "data_dir": cfg["eval_data_dir"] or os.environ.get("DISPERSE_BENCHMARKS", ""),
            "num_fewshot": cfg["num_fewshot"], "paper_protocol": cfg["paper_protocol"],
            "device": cfg["eval_device"], "dtype": cfg["eval_dtype"], "batch_size": cfg["eval_batch_size"],
            "probe": {"text": cfg["probe_text"] or os.environ.get("DISPERSE_WIKITEXT", ""), "n_seq": cfg["probe_n_seq"],
                      "seq_len": cfg["probe_seq_len"], "batch_size": cfg["probe_batch_size"]}}


def check_eval_limits(limits, names):
    """Problems (strings) of an eval_limits setting: keys must be tasks or groups among `names` (the
    tasks scored), values ints >= 1 or None."""
    problems = []
    for key, limit in limits.items():
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            problems.append(f"eval_limits[{key!r}]={limit!r} must be an int >= 1 or None (all documents)")
        try:
            leaves = tasks.expand(key)
        except (KeyError, TypeError):
            known = list(tasks.TASKS) + list(tasks.GROUPS)
            problems.append(f"eval_limits: {key!r} is not a task or group{did_you_mean(str(key), known)}")
            continue
        if not set(leaves) <= set(names):
            problems.append(f"eval_limits: {key!r} is not among tasks; add it to tasks or drop its limit")
    return problems


def task_limits(cfg):
    """The limit of each task scored: eval_limits' entry (a task's own before its group's), else eval_limit."""
    limits = {name: cfg["eval_limit"] for name in tasks.expand(cfg["tasks"])}
    # groups first, then single tasks, so that {"mmlu": 5, "mmlu_anatomy": 20} gives anatomy 20
    for key in sorted(cfg["eval_limits"], key=lambda k: len(tasks.expand(k)), reverse=True):
        for leaf in tasks.expand(key):
            if leaf in limits:
                limits[leaf] = cfg["eval_limits"][key]
    return limits


def check_inputs(settings):
    """The benchmark files (or, online, the hub to fetch them from) and the probe text are there:
    checked before the first run, and by a dry run, so that none is found missing after hours of training."""
    tasks.check_task_data(settings["tasks"], settings["data_dir"], "tasks", "eval_data_dir or DISPERSE_BENCHMARKS",
                          download=True)
    text = settings["probe"]["text"]
    if not (text and os.path.isfile(text)):
        raise MissingFileError(f"probe text {text!r} not found: set probe_text (a text or .bin file) or "
                               "DISPERSE_WIKITEXT (wikitext-103's valid.raw)")


def evaluate_checkpoint(settings, ckpt_path, eval_dir, probe_dir, label, progress=True, fresh_val=False):
    """Benchmarks into eval_dir (results.json, items.jsonl) and the probe into probe_dir
    (condensation.json), each skipped when already there. fresh_val: also the checkpoint's val CE on
    batches the run never evaluated (eval_dir/val_fresh.json; see fresh_val_loss). Returns the seconds
    each took."""
    import torch
    from data.common import get_tokenizer
    from eval import benchmarks
    from eval.condensation import model_context_length, probe_hidden_states, read_tokens, sample_sequences
    from load import load_model
    from system import resolve_device

    device = resolve_device(settings["device"])
    model, info = load_model(ckpt_path, device)
    tokenizer = get_tokenizer(info["tokenizer"])
    seconds = {}
    if not os.path.exists(os.path.join(eval_dir, "results.json")):
        t0, cpu0 = time.time(), time.process_time()
        if settings["paper_protocol"]:  # as eval/benchmarks.py --paper-protocol does
            few = set(tasks.expand(tasks.PAPER_FEW_SHOT))
            num_fewshot = {n: (settings["num_fewshot"] if n in few else 0) for n in tasks.expand(settings["tasks"])}
        else:
            num_fewshot = settings["num_fewshot"]
        # one evaluate() per distinct limit; the tasks' results and items are then put back in the
        # order of `tasks`, and the groups (MMLU, paper10) aggregated over all of them
        limits = settings["limits"]
        results, items_by_task, seconds_eval = {}, {}, 0.0
        for limit in dict.fromkeys(limits.values()):
            names = [n for n in limits if limits[n] == limit]
            part, part_items = benchmarks.evaluate(model, names, settings["data_dir"], limit=limit,
                                                   num_fewshot=num_fewshot, batch_size=settings["batch_size"],
                                                   device=device, dtype=settings["dtype"], progress=progress,
                                                   enc=tokenizer)
            results.update({n: part[n] for n in names})
            for rec in part_items:
                items_by_task.setdefault(rec["task"], []).append(rec)
            seconds_eval += part["config"]["seconds"]
            config = part["config"]
        items = [rec for n in limits for rec in items_by_task.get(n, [])]
        results.update(benchmarks.group_metrics(results))
        results["config"] = {**config, "tasks": settings["tasks"], "limit": settings["limit"], "limits": limits,
                             "seconds": round(seconds_eval, 2), "n_items": len(items),
                             "ckpt": ckpt_path, "model": info, "paper_protocol": settings["paper_protocol"]}
        with atomic_folder(eval_dir) as tmp:
            benchmarks.write_outputs(tmp, results, items)
            if fresh_val:
                write_json(os.path.join(tmp, "val_fresh.json"), fresh_val_loss(model, ckpt_path, device))
        seconds["eval"], seconds["eval_cpu"] = time.time() - t0, time.process_time() - cpu0
    if not os.path.exists(os.path.join(probe_dir, "condensation.json")):
        t0, cpu0 = time.time(), time.process_time()
        probe = settings["probe"]
        key = (probe["text"], info["tokenizer"])  # the text in the checkpoint's own token ids
        if key not in _probe_tokens:
            _probe_tokens[key] = read_tokens(probe["text"], tokenizer.encode)
        seq_len = min(probe["seq_len"], model_context_length(model) or probe["seq_len"])
        sequences = sample_sequences(_probe_tokens[key], probe["n_seq"], seq_len, seed=0)  # (R, S), the same for every run
        result = probe_hidden_states(model, sequences, probe["batch_size"], device, progress=progress)
        result["meta"] = {"model": ckpt_path, "label": label, "iter_num": info.get("iter_num"),
                          "n_layer": model.config.n_layer, "n_seq": probe["n_seq"], "seq_len": seq_len,
                          "text": probe["text"], "date": datetime.datetime.now().isoformat(timespec="seconds")}
        with atomic_folder(probe_dir) as tmp:
            write_json(os.path.join(tmp, "condensation.json"), result)
        seconds["probe"], seconds["probe_cpu"] = time.time() - t0, time.process_time() - cpu0
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()  # give the memory back before the next training run
    return seconds


def fresh_val_loss(model, ckpt_path, device):
    """{'val_loss', 'batches'}: the checkpoint's mean CE on eval_iters val batches of its run's data that
    train.py never evaluated (key stream 3; its evals use stream 2, the same batches every time). A
    checkpoint selected for the lowest val loss was chosen by those very batches, so its logged value is
    the minimum of noisy estimates, biased low; this one is not."""
    import torch
    import checkpoint
    from data.common import dataset_dir, open_split, read_meta, sample_batch
    config = checkpoint.read(ckpt_path)["config"]
    data_dir = dataset_dir(config["dataset"])
    data = open_split(data_dir, "val", config["block_size"], model.config.vocab_size, read_meta(data_dir))
    model.eval()
    losses = []
    with torch.no_grad():
        for k in range(config["eval_iters"]):
            x, y = (torch.from_numpy(a).to(device) for a in sample_batch(data, config["batch_size"],
                                                                         config["block_size"], (config["seed"], 3, k)))
            losses.append(model(x, y)[1].item())
    return {"val_loss": sum(losses) / len(losses), "batches": len(losses), "key_stream": 3}
