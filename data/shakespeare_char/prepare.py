"""
Tiny Shakespeare as characters, nanoGPT's quickstart dataset: each character is one token (65 of
them), the first 90% of the characters for training, the last 10% for validation.

    python data/shakespeare_char/prepare.py                   # as in nanoGPT, from the repository root
    python -m data.shakespeare_char.prepare --input input.txt

The folder is nanoGPT's layout exactly (train.bin and val.bin as uint16 ids, meta.pkl with
vocab_size, itos and stoi), so nanoGPT's own train.py and sample.py can use it, plus our
meta.json, which names the character tokenizer. --input defaults to
$DISPERSE_SHARED/corpus/tinyshakespeare.txt when DISPERSE_SHARED is set (the offline data
folder), else to input.txt in --out_dir, downloaded when it is not there yet.
"""

import os
import pickle
import sys
import urllib.request

import numpy as np

if __package__ in (None, ""):  # run by path, as nanoGPT's README does: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from data.common import char_tokenizer, remove_leftovers, write_meta, write_tokens
from configurator import ArgumentParser
from errors import InputError, MissingFileError, run_cli

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def find_input(out_dir):
    """The text to prepare when --input is not given: the offline copy, else nanoGPT's download."""
    shared = os.environ.get("DISPERSE_SHARED")
    if shared:
        path = os.path.join(shared, "corpus", "tinyshakespeare.txt")
        if not os.path.isfile(path):
            raise MissingFileError(f"DISPERSE_SHARED={shared!r} has no corpus/tinyshakespeare.txt; point it at the "
                                   "offline data folder or pass --input FILE")
        return path
    path = os.path.join(out_dir, "input.txt")
    if not os.path.exists(path):
        print(f"downloading {URL}")
        os.makedirs(out_dir, exist_ok=True)
        try:
            urllib.request.urlretrieve(URL, path + ".tmp")
        except OSError as e:
            if os.path.exists(path + ".tmp"):  # a download cut short
                os.remove(path + ".tmp")
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise InputError(f"download of {URL} failed ({reason}); offline, pass --input FILE (a copy of "
                             "tinyshakespeare input.txt) or set DISPERSE_SHARED to the offline data folder") from None
        os.replace(path + ".tmp", path)  # a failed download leaves no partial input.txt behind
    return path


def arguments():
    """The command line: --out_dir and --out-dir alike (configurator.ArgumentParser)."""
    parser = ArgumentParser(prog="python data/shakespeare_char/prepare.py", description=__doc__)
    parser.add_argument("--input", help="the text (default: $DISPERSE_SHARED/corpus/tinyshakespeare.txt, "
                                        "else download tinyshakespeare input.txt into --out_dir)")
    parser.add_argument("--out_dir", default=os.path.dirname(os.path.abspath(__file__)),
                        help="folder for train.bin, val.bin, meta.pkl and meta.json")
    return parser


def main(argv=None):
    args = arguments().parse_args(argv)
    path = args.input or find_input(args.out_dir)
    if not os.path.isfile(path):
        raise MissingFileError(f"--input {path}: no such file")
    try:
        with open(path, encoding="utf-8") as f:  # text mode, as nanoGPT reads it: \r\n becomes \n
            text = f.read()
    except UnicodeDecodeError as e:
        raise InputError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason}); convert it or give another "
                         "file") from None
    print(f"length of dataset in characters: {len(text):,}")

    # the vocabulary: every character of the whole text, sorted; id = position in that list
    chars = sorted(set(text))
    if len(chars) > 2**16:
        raise InputError(f"{path} has {len(chars):,} different characters; nanoGPT's uint16 files hold at most 65,536")
    enc = char_tokenizer(chars)
    n = int(len(text) * 0.9)  # nanoGPT's split: the first 90% of the characters train, the rest validate
    splits = {"train": text[:n], "val": text[n:]}
    if not splits["train"] or not splits["val"]:
        raise InputError(f"{path} has {len(text)} characters, too few to split 90/10; give a longer text")
    print("all the unique characters:", "".join(chars))
    print(f"vocab size: {enc.vocab_size:,}")

    os.makedirs(args.out_dir, exist_ok=True)
    remove_leftovers(args.out_dir)
    summary = {"source": path}
    for split, part in splits.items():
        ids = np.array(enc.encode(part), dtype=np.uint16)
        write_tokens(os.path.join(args.out_dir, f"{split}.bin"), len(ids), [ids], desc=f"{split}.bin", dtype=np.uint16)
        # one document per split, as data/shakespeare records it: the play text is continuous
        summary[split] = {"documents": 1, "tokens": len(ids), "max_token_id": int(ids.max()),
                          "bytes": len(part.encode("utf-8"))}
        print(f"{split} has {len(ids):,} tokens")

    # nanoGPT's meta.pkl: its train.py reads vocab_size, its sample.py itos and stoi
    pkl = os.path.join(args.out_dir, "meta.pkl")
    with open(pkl + ".tmp", "wb") as f:
        pickle.dump({"vocab_size": enc.vocab_size, "itos": dict(enumerate(chars)),
                     "stoi": {c: i for i, c in enumerate(chars)}}, f)
    os.replace(pkl + ".tmp", pkl)
    # meta.json last: a folder with one is complete
    write_meta(args.out_dir, tokenizer=enc.name, vocab_size=enc.vocab_size, dtype="uint16", **summary)
    return summary


if __name__ == "__main__":
    run_cli(main)
