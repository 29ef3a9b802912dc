"""
What every dataset preparer and the training loader share: the GPT-2 tokenizer, the
on-disk format, and the batch sampler.

On disk, a prepared dataset is a folder with
    train.bin, val.bin   token ids as a flat uint16 array (GPT-2's 50257 ids fit), documents
                         separated by the end-of-text token
    meta.json            tokenizer name, vocab size, dtype, and per split the token and document
                         counts and the largest token id (max_token_id)
Training reads the .bin files through np.memmap, so a dataset larger than RAM is fine.
"""

import json
import os

import numpy as np

from errors import InputError, MissingFileError

EOT_TOKEN = 50256  # GPT-2's <|endoftext|>, put between documents
VOCAB_SIZE = 50257


def get_tokenizer():
    """tiktoken's GPT-2 encoding. Offline, point TIKTOKEN_CACHE_DIR at a folder that holds its files."""
    import tiktoken
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:
        raise InputError(
            "could not load tiktoken's gpt2 encoding (it downloads its files on first use). "
            "Offline, set TIKTOKEN_CACHE_DIR to a folder holding the cached files "
            f"(e.g. export TIKTOKEN_CACHE_DIR=$(realpath ../shared/tiktoken)). Cause: {e}") from None


def encode_documents(texts, enc=None):
    """Token ids of each document followed by the end-of-text token."""
    enc = enc or get_tokenizer()
    ids = enc.encode_ordinary_batch(list(texts))
    for doc in ids:
        doc.append(EOT_TOKEN)
    return ids


def write_tokens(path, n_tokens, chunks, desc=None, total_chunks=None):
    """Write an iterable of token-id chunks (lists or arrays) as one flat uint16 array of
    n_tokens ids. Written to a temporary name first, so an interrupted run never leaves a
    truncated file behind."""
    from tqdm import tqdm
    tmp = path + ".tmp"
    arr = np.memmap(tmp, dtype=np.uint16, mode="w+", shape=(max(n_tokens, 1),))
    pos = 0
    for chunk in tqdm(chunks, desc=desc or f"writing {os.path.basename(path)}", total=total_chunks, leave=False):
        arr[pos: pos + len(chunk)] = chunk
        pos += len(chunk)
    if pos != n_tokens:
        raise RuntimeError(f"wrote {pos} tokens to {path}, expected {n_tokens}")
    arr.flush()
    del arr
    os.replace(tmp, path)
    return n_tokens


def write_split(path, docs, desc=None):
    """Write a list of token-id lists as one flat uint16 array. Returns the number of tokens."""
    return write_tokens(path, sum(len(d) for d in docs), docs, desc, total_chunks=len(docs))


def write_meta(out_dir, **fields):
    """meta.json, written last and atomically: a folder with a meta.json has complete .bin files."""
    meta = {"tokenizer": "gpt2", "vocab_size": VOCAB_SIZE, "dtype": "uint16", **fields}
    path = os.path.join(out_dir, "meta.json")
    with open(path + ".tmp", "w") as f:
        json.dump(meta, f, indent=2)
    os.replace(path + ".tmp", path)
    return meta


def remove_leftovers(out_dir):
    """Delete the temporary files an interrupted preparation left in out_dir."""
    for name in ("train.bin.tmp", "val.bin.tmp", "meta.json.tmp"):
        if os.path.exists(os.path.join(out_dir, name)):
            os.remove(os.path.join(out_dir, name))


def max_token_id(path, chunk=1 << 24):
    """The largest token id in a .bin file, read in chunks (about a second per GB); -1 if empty."""
    data = np.memmap(path, dtype=np.uint16, mode="r") if os.path.getsize(path) else np.zeros(0, np.uint16)
    return max((int(data[i: i + chunk].max()) for i in range(0, len(data), chunk)), default=-1)


def prepare_from_documents(out_dir, train_docs, val_docs, source):
    """Tokenize two lists of document strings into out_dir/{train,val}.bin + meta.json and print a summary."""
    os.makedirs(out_dir, exist_ok=True)
    remove_leftovers(out_dir)
    enc = get_tokenizer()
    summary = {"source": source}
    for split, texts in (("train", train_docs), ("val", val_docs)):
        ids = encode_documents(texts, enc)
        n_tokens = write_split(os.path.join(out_dir, f"{split}.bin"), ids, desc=f"{split}.bin")
        summary[split] = {"documents": len(texts), "tokens": n_tokens, "max_token_id": max(max(d) for d in ids),
                          "bytes": sum(len(t.encode("utf-8")) for t in texts)}
    write_meta(out_dir, **summary)
    print_summary(out_dir, summary)
    return summary


def print_summary(out_dir, summary):
    for split in ("train", "val"):
        s = summary[split]
        print(f"{out_dir}/{split}.bin: {s['documents']:,} documents, {s['tokens']:,} tokens, "
              f"{s['bytes']:,} bytes of text")


def split_documents(docs, val_fraction, seed=1337):
    """Shuffle documents with a fixed seed and hold out val_fraction of them (at least one)."""
    if len(docs) < 2:
        raise InputError(f"need at least 2 documents to make a train/val split, got {len(docs)}")
    order = np.random.default_rng(seed).permutation(len(docs))
    n_val = min(max(1, int(round(len(docs) * val_fraction))), len(docs) - 1)
    val = [docs[i] for i in order[:n_val]]
    train = [docs[i] for i in order[n_val:]]
    return train, val


# ---------------------------------------------------------------------- reading, for training

def open_split(data_dir, split, block_size, vocab_size=None):
    """Memory-map data_dir/{split}.bin after checking it exists, is complete, matches meta.json,
    and holds no token id the model's vocabulary lacks (an IndexError deep in the embedding otherwise)."""
    path = os.path.join(data_dir, f"{split}.bin")
    hint = f"run the dataset's prepare script first (see README: e.g. python -m data.local.prepare --out_dir {data_dir})"
    if not os.path.exists(path):
        raise MissingFileError(f"missing {path}: {hint}")
    meta_path = os.path.join(data_dir, "meta.json")
    if not os.path.exists(meta_path):
        raise MissingFileError(f"missing {meta_path}: {hint}")
    with open(meta_path) as f:
        try:
            meta = json.load(f)
        except json.JSONDecodeError as e:
            raise InputError(f"{meta_path} is not valid JSON ({e}); {hint}") from None
    if not isinstance(meta, dict):
        raise InputError(f"{meta_path} holds a {type(meta).__name__}, not a JSON object; {hint}")
    if meta.get("dtype") != "uint16":
        raise InputError(f"{meta_path} says dtype={meta.get('dtype')!r}; this loader reads uint16 token files. {hint}")
    if vocab_size is not None and meta.get("vocab_size", VOCAB_SIZE) > vocab_size:
        raise InputError(f"data in {data_dir} uses a vocabulary of {meta['vocab_size']} tokens but the model "
                         f"has vocab_size={vocab_size}; prepare the data with the model's tokenizer or set vocab_size")
    size = os.path.getsize(path)
    if size % 2 != 0:
        raise InputError(f"{path} has an odd number of bytes ({size}); it is truncated or not a uint16 token file. {hint}")
    split_meta = meta.get(split) if isinstance(meta.get(split), dict) else {}
    if "tokens" in split_meta and split_meta["tokens"] != size // 2:
        raise InputError(f"{path} holds {size // 2} tokens but {meta_path} says {split_meta['tokens']}; "
                         f"the file is truncated or from another preparation. {hint}")
    data = np.memmap(path, dtype=np.uint16, mode="r")
    if len(data) <= block_size + 1:
        raise InputError(f"{path} holds {len(data)} tokens, too few for block_size={block_size}; "
                         "use more text or a smaller block_size")
    if vocab_size is not None:
        largest = split_meta.get("max_token_id")
        largest = max_token_id(path) if largest is None else largest  # older meta.json: scan the file
        if largest >= vocab_size:
            raise InputError(f"{path} holds token id {largest} but the model has vocab_size={vocab_size} "
                             f"(ids 0..{vocab_size - 1}); set vocab_size to at least {largest + 1} or prepare "
                             "the data with the model's tokenizer")
    return data


def sample_batch(data, batch_size, block_size, key):
    """Inputs and next-token targets (B, T) drawn from the memmap at random offsets.
    Stateless: the offsets depend only on `key`, a tuple of non-negative ints; training uses
    (seed, 0, step, global micro-batch index), so a resumed run reads exactly what an
    uninterrupted one would have, and 2 ranks with 1 micro-step each read what 1 rank reads in 2."""
    rng = np.random.default_rng(list(key))
    ix = rng.integers(0, len(data) - block_size - 1, size=batch_size)
    x = np.stack([data[i: i + block_size] for i in ix]).astype(np.int64)  # (B, T)
    y = np.stack([data[i + 1: i + 1 + block_size] for i in ix]).astype(np.int64)  # (B, T)
    return x, y
