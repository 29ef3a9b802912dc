"""
OpenWebText (~9B GPT-2 tokens, 8M documents), for GPT-2 124M from scratch. Tokenized in
parallel processes (--tokenizer, default gpt2) and written as uint16 memmaps (train.bin
~17 GB, val.bin ~8.5 MB; uint32 for a vocabulary over 65536 ids).

    python -m data.openwebtext.prepare                    # Hugging Face datasets (54 GB download cache)
    python -m data.openwebtext.prepare --input DIR        # offline: a folder of .txt files, one document each

0.05% of the documents are held out for validation, as in nanoGPT.
"""

import os
import sys

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from data.common import get_tokenizer, max_token_id, remove_leftovers, token_dtype, write_meta, write_tokens
from configurator import ArgumentParser
from errors import InputError, MissingFileError, run_cli

NUM_PROC = max(1, (os.cpu_count() or 2) // 2)


def tokenize(example, tokenizer):
    enc = get_tokenizer(tokenizer)  # loaded once per worker process (cached)
    ids = enc.encode(example["text"])
    if enc.eot is not None:  # a character tokenizer has none: documents are concatenated
        ids.append(enc.eot)
    return {"ids": ids, "len": len(ids)}


def write_hf_split(dset, path, dtype):
    """Stream a tokenized datasets split into one flat memmap of dtype, shard by shard."""
    total = int(np.sum(dset["len"], dtype=np.uint64))
    n_shards = min(1024, len(dset))
    shards = (np.concatenate(dset.shard(num_shards=n_shards, index=i, contiguous=True).with_format("numpy")["ids"])
              for i in range(n_shards))
    return write_tokens(path, total, shards, desc=f"writing {os.path.basename(path)}", total_chunks=n_shards,
                        dtype=dtype)


def arguments():
    """The command line: --out_dir and --out-dir alike (configurator.ArgumentParser)."""
    parser = ArgumentParser(prog="python -m data.openwebtext.prepare", description=__doc__)
    parser.add_argument("--input", help="folder of .txt documents, one document each "
                                        "(default: Hugging Face openwebtext)")
    parser.add_argument("--out_dir", default=os.path.dirname(os.path.abspath(__file__)),
                        help="folder for train.bin, val.bin and meta.json")
    parser.add_argument("--num_proc", type=int, default=NUM_PROC, help="processes that download and tokenize")
    parser.add_argument("--tokenizer", default="gpt2",
                        help="gpt2 (tiktoken), or a Hugging Face tokenizer folder or hub name (e.g. Qwen/Qwen3-0.6B)")
    return parser


def main(argv=None):
    args = arguments().parse_args(argv)
    enc = get_tokenizer(args.tokenizer)  # a bad name stops here, before any download
    dtype = token_dtype(enc.vocab_size)
    try:
        from datasets import Dataset, load_dataset
    except ImportError:
        raise InputError("OpenWebText preparation uses `pip install datasets`") from None
    if args.input:
        if not os.path.isdir(args.input):
            raise MissingFileError(f"--input {args.input}: no such folder")
        names = sorted(n for n in os.listdir(args.input) if n.endswith(".txt"))
        if not names:
            raise MissingFileError(f"no .txt files in {args.input}")
        texts = [open(os.path.join(args.input, n), encoding="utf-8").read() for n in names]
        dataset = Dataset.from_dict({"text": texts})
    else:
        dataset = load_dataset("openwebtext", num_proc=args.num_proc)["train"]
    split = dataset.train_test_split(test_size=0.0005, seed=2357, shuffle=True)
    summary = {"source": args.input or "openwebtext"}
    os.makedirs(args.out_dir, exist_ok=True)
    remove_leftovers(args.out_dir)
    for name, dset in (("train", split["train"]), ("val", split["test"])):
        nbytes = sum(len(t.encode("utf-8")) for t in dset["text"]) if args.input else None
        tokenized = dset.map(tokenize, fn_kwargs={"tokenizer": enc.name}, remove_columns=["text"],
                             desc=f"tokenizing {name}", num_proc=args.num_proc)
        path = os.path.join(args.out_dir, f"{name}.bin")
        n_tokens = write_hf_split(tokenized, path, dtype)
        summary[name] = {"documents": len(dset), "tokens": n_tokens, "max_token_id": max_token_id(path, dtype),
                         "bytes": nbytes}
        print(f"{name}: {len(dset):,} documents, {n_tokens:,} tokens" + (f", {nbytes:,} bytes" if nbytes else ""))
    write_meta(args.out_dir, tokenizer=enc.name, vocab_size=enc.vocab_size, dtype=np.dtype(dtype).name, **summary)


if __name__ == "__main__":
    run_cli(main)
