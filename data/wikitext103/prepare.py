"""
WikiText-103 (raw), the paper's mid-training data, as GPT-2 tokens
(or another tokenizer's: --tokenizer Qwen/Qwen3-0.6B for the Qwen3 setting). One document per article
(articles start at top-level headings " = Title = "); empty lines are dropped.

    python -m data.wikitext103.prepare                      # Hugging Face datasets, wikitext-103-raw-v1
    python -m data.wikitext103.prepare --input DIR          # offline: DIR/wiki.{train,valid}.raw or {train,valid}.raw

Splits written: train.bin (from train), val.bin (from validation). The test split is left for
evaluation (eval.benchmarks scores its word perplexity). With --input and no train file (e.g.
only valid/test raw files at hand), --train_from_valid trains on the validation text, for smoke
tests only: the val loss is then not held out.
"""

import os
import re
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from data.common import get_tokenizer, prepare_from_documents
from configurator import ArgumentParser
from errors import InputError, MissingFileError, run_cli

HEADING = re.compile(r"^ = [^=].* = $")


def articles(lines):
    """Group WikiText lines into articles; drop empty lines like the paper's preprocessing."""
    docs, current = [], []
    for line in lines:
        line = line.rstrip("\n")
        if HEADING.match(line) and current:
            docs.append("\n".join(current))
            current = []
        if line.strip():
            current.append(line)
    if current:
        docs.append("\n".join(current))
    return docs


def read_local(folder, split):
    for name in (f"wiki.{split}.raw", f"{split}.raw", f"wiki.{split}.tokens"):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                return f.readlines()
    return None


def arguments():
    """The command line: --out_dir and --out-dir alike (configurator.ArgumentParser)."""
    parser = ArgumentParser(prog="python -m data.wikitext103.prepare", description=__doc__)
    parser.add_argument("--input", help="folder with the raw WikiText-103 files (default: Hugging Face hub)")
    parser.add_argument("--out_dir", default=os.path.dirname(os.path.abspath(__file__)),
                        help="folder for train.bin, val.bin and meta.json")
    parser.add_flag("--train_from_valid", help="smoke tests only: with --input and no train file, train on the "
                                               "validation text")
    parser.add_argument("--tokenizer", default="gpt2",
                        help="gpt2 (tiktoken), or a Hugging Face tokenizer folder or hub name (e.g. Qwen/Qwen3-0.6B)")
    return parser


def main(argv=None):
    args = arguments().parse_args(argv)
    get_tokenizer(args.tokenizer)  # a bad name stops here, before any reading or downloading
    if args.input:
        train_lines, val_lines = read_local(args.input, "train"), read_local(args.input, "valid")
        if val_lines is None:
            raise MissingFileError(f"no wiki.valid.raw or valid.raw in {args.input}")
        if train_lines is None:
            if not args.train_from_valid:
                raise MissingFileError(f"no wiki.train.raw or train.raw in {args.input} "
                                        "(pass --train_from_valid to train on the validation text for a smoke test)")
            train_lines = val_lines
    else:
        try:
            from datasets import load_dataset
        except ImportError:
            raise InputError("downloading WikiText-103 needs `pip install datasets`; offline, pass --input") from None
        ds = load_dataset("Salesforce/wikitext", "wikitext-103-raw-v1")
        train_lines, val_lines = ds["train"]["text"], ds["validation"]["text"]
    return prepare_from_documents(args.out_dir, articles(train_lines), articles(val_lines),
                                  source=args.input or "Salesforce/wikitext wikitext-103-raw-v1", tokenizer=args.tokenizer)


if __name__ == "__main__":
    run_cli(main)
