"""
train.py's eval-step hooks: the benchmarks (eval_tasks) and the condensation probe (probe_interval) it
runs at its eval steps, and the check, before any step, that what they read is there and fits.
"""

import os

from data.common import get_tokenizer
from errors import InputError, MissingFileError


def check_eval_inputs(cfg, tokenizer_name):
    """The files the eval hooks read exist, and the benchmarks fit the vocabulary, before anything is
    trained or overwritten. Returns the data's tokenizer where the hooks need it, else None."""
    if cfg.probe_text and not os.path.isfile(cfg.probe_text):
        raise MissingFileError(f"probe_text={cfg.probe_text!r}: no such file")
    tokenizer = get_tokenizer(tokenizer_name) if (cfg.eval_tasks or cfg.probe_text) else None
    if cfg.eval_tasks:
        from eval import tasks
        tasks.check_task_data(cfg.eval_tasks, cfg.eval_data_dir, "eval_tasks")
        from eval.scoring import check_tokenizer
        check_tokenizer(tokenizer, "eval_tasks", "leave eval_tasks empty (the val loss and the condensation probe "
                                                 "work on characters)")
        if cfg.vocab_size < tokenizer.vocab_size:
            raise InputError(f"eval_tasks: the benchmarks are encoded with the data's tokenizer {tokenizer.name!r} "
                             f"({tokenizer.vocab_size} ids) but vocab_size={cfg.vocab_size}; train with vocab_size >= "
                             f"{tokenizer.vocab_size} or leave eval_tasks empty")
    return tokenizer


def score_benchmarks(cfg, model, tokenizer):
    """Benchmark accuracies (eval/benchmarks.py) as flat metrics.jsonl keys: bench/<task>/<metric>."""
    from eval.benchmarks import evaluate, flat_metrics
    results, _ = evaluate(model, cfg.eval_tasks, cfg.eval_data_dir, limit=cfg.eval_limit,
                          num_fewshot=cfg.eval_num_fewshot, progress=False, enc=tokenizer)
    return {f"bench/{key}": value for key, value in flat_metrics(results).items()}


def make_probe_set(cfg, tokenizer, val_data):
    """The fixed held-out sequences probed for condensation at every probe step: from probe_text (in
    the data's tokenizer) or from the dataset's val.bin."""
    from eval.condensation import read_tokens, sample_sequences
    tokens = val_data
    if cfg.probe_text:
        tokens = read_tokens(cfg.probe_text, tokenizer.encode)
        if len(tokens) and tokens.max() >= cfg.vocab_size:
            raise InputError(f"probe_text={cfg.probe_text!r} is encoded with the data's tokenizer {tokenizer.name!r}, "
                             f"which gives ids up to {tokens.max()}, but vocab_size={cfg.vocab_size}; leave "
                             "probe_text empty to probe the dataset's val.bin")
    return sample_sequences(tokens, cfg.probe_n_seq, min(cfg.probe_seq_len, cfg.block_size), seed=0)
