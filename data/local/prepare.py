"""
Prepare any local plain-text files for training: the offline default.

    python -m data.local.prepare --input ../shared/corpus --out_dir data/local
    python -m data.local.prepare --input ../shared/corpus --out_dir data/local-qwen3 --tokenizer Qwen/Qwen3-0.6B

--input takes files and folders (folders are walked for *.txt files). Each file is cut into
documents of consecutive paragraphs (about --doc_chars characters each); the last
--val_fraction of every file's documents is held out for validation, so validation text
is never interleaved with training text of the same file.
"""

import os
import re
import sys

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from data.common import get_tokenizer, prepare_from_documents
from configurator import ArgumentParser
from errors import InputError, MissingFileError, run_cli


def find_text_files(inputs, pattern=".txt"):
    files = []
    for path in inputs:
        if os.path.isdir(path):
            for root, dirs, names in os.walk(path):
                dirs.sort()
                files += [os.path.join(root, n) for n in sorted(names) if n.endswith(pattern)]
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise MissingFileError(f"--input {path!r} is neither a file nor a folder")
    if not files:
        raise MissingFileError(f"no {pattern} files found under {', '.join(inputs)}; give .txt files or folders holding them")
    return files


def split_into_documents(text, doc_chars):
    """Consecutive paragraphs (separated by blank lines) grouped into documents of ~doc_chars."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    paragraphs = [p.strip("\n") for p in re.split(r"\n\s*\n", text) if p.strip()]
    docs, current, size = [], [], 0
    for p in paragraphs:
        current.append(p)
        size += len(p)
        if size >= doc_chars:
            docs.append("\n\n".join(current))
            current, size = [], 0
    if current:
        docs.append("\n\n".join(current))
    return docs


def arguments():
    """The command line: --out_dir and --out-dir alike (configurator.ArgumentParser)."""
    parser = ArgumentParser(prog="python -m data.local.prepare", description=__doc__)
    parser.add_argument("--input", nargs="+", required=True, help="text files and/or folders of *.txt files")
    parser.add_argument("--out_dir", default=os.path.join("data", "local"),
                        help="folder for train.bin, val.bin and meta.json")
    parser.add_argument("--val_fraction", type=float, default=0.05,
                        help="the last this fraction of each file's documents is held out for validation")
    parser.add_argument("--doc_chars", type=int, default=4000,
                        help="about this many characters of consecutive paragraphs make one document")
    parser.add_argument("--tokenizer", default="gpt2",
                        help="gpt2 (tiktoken), or a Hugging Face tokenizer folder or hub name (e.g. Qwen/Qwen3-0.6B)")
    return parser


def main(argv=None):
    parser = arguments()
    args = parser.parse_args(argv)
    if not 0 < args.val_fraction < 1:
        parser.error(f"--val_fraction must be between 0 and 1, got {args.val_fraction}")
    get_tokenizer(args.tokenizer)  # a bad name stops here, before any reading or downloading
    train_docs, val_docs = [], []
    for path in find_text_files(args.input):
        try:
            with open(path, encoding="utf-8") as f:
                docs = split_into_documents(f.read(), args.doc_chars)
        except UnicodeDecodeError as e:
            raise InputError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason}); convert it or leave it out") from None
        n_val = max(1, round(len(docs) * args.val_fraction)) if len(docs) > 1 else 0
        train_docs += docs[: len(docs) - n_val]
        val_docs += docs[len(docs) - n_val:]
        print(f"{path}: {len(docs)} documents ({n_val} held out)")
    if not train_docs:
        raise InputError(f"no training documents left after holding out --val_fraction={args.val_fraction}; "
                         "give more text or a smaller --val_fraction")
    if not val_docs:
        raise InputError(f"no validation documents in {', '.join(args.input)}: a file is held out only if it has "
                         "at least 2 documents; give more text (paragraphs separated by blank lines), "
                         "a smaller --doc_chars or a larger --val_fraction")
    return prepare_from_documents(args.out_dir, train_docs, val_docs, source=" ".join(args.input),
                                  tokenizer=args.tokenizer)


if __name__ == "__main__":
    run_cli(main)
