"""
Tiny Shakespeare (1 MB), GPT-2 tokens (or --tokenizer's); the first 90% for training, the last 10% for validation.

    python -m data.shakespeare.prepare                        # downloads it
    python -m data.shakespeare.prepare --input input.txt      # offline, from a local copy
"""

import os
import sys
import urllib.request

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from data.common import get_tokenizer, prepare_from_documents
from configurator import ArgumentParser
from errors import InputError, MissingFileError, run_cli

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def arguments():
    """The command line: --out_dir and --out-dir alike (configurator.ArgumentParser)."""
    parser = ArgumentParser(prog="python -m data.shakespeare.prepare", description=__doc__)
    parser.add_argument("--input", help="local copy of tinyshakespeare input.txt (default: download it into --out_dir)")
    parser.add_argument("--out_dir", default=os.path.dirname(os.path.abspath(__file__)),
                        help="folder for train.bin, val.bin and meta.json")
    parser.add_argument("--tokenizer", default="gpt2",
                        help="gpt2 (tiktoken), or a Hugging Face tokenizer folder or hub name (e.g. Qwen/Qwen3-0.6B)")
    return parser


def main(argv=None):
    args = arguments().parse_args(argv)
    get_tokenizer(args.tokenizer)  # a bad name stops here, before any reading or downloading
    if args.input is None:
        args.input = os.path.join(args.out_dir, "input.txt")
        if not os.path.exists(args.input):
            print(f"downloading {URL}")
            try:
                urllib.request.urlretrieve(URL, args.input)
            except OSError as e:
                raise InputError(f"download of {URL} failed ({e}); offline, pass --input with a local copy") from None
    if not os.path.isfile(args.input):
        raise MissingFileError(f"--input {args.input}: no such file")
    with open(args.input, encoding="utf-8") as f:
        text = f.read()
    n = int(0.9 * len(text))
    # one document per split: the play text is continuous, so no end-of-text tokens inside
    return prepare_from_documents(args.out_dir, [text[:n]], [text[n:]], source=args.input, tokenizer=args.tokenizer)


if __name__ == "__main__":
    run_cli(main)
