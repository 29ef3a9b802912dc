"""
What every dataset preparer and the training loader share: the tokenizer, the on-disk
format, and the batch sampler.

On disk, a prepared dataset is a folder with
    train.bin, val.bin   token ids as one flat array, uint16 when the tokenizer's ids fit
                         (GPT-2's 50257 do), uint32 otherwise (Qwen3's ~152k); documents are
                         separated by the tokenizer's end-of-text token
    meta.json            tokenizer (its name: "gpt2", a Hugging Face folder or hub name),
                         vocab_size, dtype, and per split the token and document counts and the
                         largest token id (max_token_id)
Training reads the .bin files through np.memmap, so a dataset larger than RAM is fine. A
folder prepared by nanoGPT (train.bin and val.bin, no meta.json) is read as GPT-2 uint16 ids.
"""

import functools
import json
import os
import sys

import numpy as np

from errors import InputError, MissingFileError

EOT_TOKEN = 50256  # GPT-2's <|endoftext|>, put between documents
VOCAB_SIZE = 50257
NANOGPT_META = {"tokenizer": "gpt2", "vocab_size": VOCAB_SIZE, "dtype": "uint16"}  # a folder without meta.json


# ---------------------------------------------------------------------- tokenizers

class Tokenizer:
    """One interface over tiktoken's encodings and Hugging Face tokenizers.

    name        what meta.json and checkpoints record, and get_tokenizer(name) loads again
    vocab_size  number of ids (for Hugging Face, added tokens included)
    eot         the id put between documents (GPT-2: <|endoftext|>; Hugging Face: eos, else bos)
    bos, eos    the tokenizer's own (None where it has none)
    prefix_token  lm-eval's prefix for an empty context and for perplexity windows: bos, else eos
    """

    def __init__(self, name, backend, vocab_size, eot, bos, eos):
        self.name, self.backend, self.vocab_size = name, backend, vocab_size
        self.eot, self.bos, self.eos = eot, bos, eos
        self.prefix_token = bos if bos is not None else eos

    def encode(self, text):
        """Ids of text as plain text: no special tokens added, "<|endoftext|>" in text is text."""
        return self.encode_batch([text])[0]

    encode_ordinary = encode  # tiktoken's name for it

    def encode_batch(self, texts):
        if self.backend == "tiktoken":
            return self._tok.encode_ordinary_batch(list(texts))
        return self._tok(list(texts), add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def encode_special(self, text, add_special_tokens=True):
        """Ids of text the way Hugging Face's tokenizer.encode gives them: special-token text
        ("<|endoftext|>", "<s>") becomes that token, and add_special_tokens adds what the tokenizer
        adds (Llama's and Gemma's a BOS in front; GPT-2's and Qwen's nothing). tiktoken adds nothing."""
        if self.backend == "tiktoken":
            return self._tok.encode(text, allowed_special="all")
        return self._tok.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, ids):
        return self._tok.decode(list(ids))

    def __repr__(self):
        return f"Tokenizer({self.name!r}, {self.backend}, vocab_size={self.vocab_size})"


@functools.lru_cache(maxsize=None)
def get_tokenizer(name="gpt2"):
    """The tokenizer called `name`: a tiktoken encoding ("gpt2", "r50k_base", ...), a local Hugging
    Face tokenizer folder (tokenizer.json, or vocab.json + merges.txt, ...), or a Hugging Face hub
    name ("Qwen/Qwen3-0.6B"; downloaded when online). Offline, tiktoken needs TIKTOKEN_CACHE_DIR
    pointed at a folder holding its files."""
    if not isinstance(name, str) or not name:
        raise InputError(f"tokenizer={name!r}: give a tiktoken encoding (gpt2), a Hugging Face tokenizer "
                         "folder or a hub name")
    if not os.path.isdir(name):
        import tiktoken
        if name in tiktoken.list_encoding_names():
            return _tiktoken(name)
        if name.startswith((".", "/", "~")) or name.count("/") > 1:  # a path, not a hub name ("org/name")
            raise MissingFileError(f"tokenizer={name!r}: no such folder (a Hugging Face tokenizer folder holds "
                                   "tokenizer.json or vocab.json + merges.txt)")
    return _huggingface(os.path.abspath(name) if os.path.isdir(name) else name)


def _tiktoken(name):
    import tiktoken
    try:
        enc = tiktoken.get_encoding(name)
    except Exception as e:
        raise InputError(
            f"could not load tiktoken's {name} encoding (it downloads its files on first use). "
            "Offline, set TIKTOKEN_CACHE_DIR to a folder holding the cached files "
            f"(e.g. export TIKTOKEN_CACHE_DIR=$(realpath ../shared/tiktoken)). Cause: {e}") from None
    tok = Tokenizer(name, "tiktoken", enc.n_vocab, enc.eot_token, enc.eot_token, enc.eot_token)
    tok._tok = enc
    return tok


def _huggingface(name):
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise InputError(f"tokenizer={name!r} is a Hugging Face tokenizer, which needs transformers "
                         "(pip install transformers); or prepare with --tokenizer gpt2") from None
    try:
        hf = AutoTokenizer.from_pretrained(name)
    except Exception as e:  # a folder without tokenizer files, an unknown hub name, no network
        where = "folder" if os.path.isdir(name) else "Hugging Face hub name (needs the network)"
        raise InputError(f"tokenizer={name!r}: could not load it as a {where} ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200] if str(e) else ''}); give gpt2, a folder holding "
                         "tokenizer.json or vocab.json + merges.txt, or a hub name") from None
    hf.model_max_length = int(1e30)  # whole documents are encoded; training cuts its own windows
    eot = hf.eos_token_id if hf.eos_token_id is not None else hf.bos_token_id
    if eot is None:
        raise InputError(f"tokenizer={name!r} has neither an eos nor a bos token, so documents cannot be "
                         "separated; add an eos_token to its tokenizer_config.json")
    tok = Tokenizer(name, "huggingface", len(hf), eot, hf.bos_token_id, hf.eos_token_id)
    tok._tok = hf
    return tok


def token_dtype(vocab_size):
    """The on-disk dtype of token ids: uint16 when every id fits (vocab_size <= 65536), else uint32."""
    return np.uint16 if vocab_size <= 2**16 else np.uint32


def encode_documents(texts, enc=None):
    """Token ids of each document followed by the tokenizer's end-of-text token."""
    enc = enc or get_tokenizer()
    ids = enc.encode_batch(list(texts))
    for doc in ids:
        doc.append(enc.eot)
    return ids


def write_tokens(path, n_tokens, chunks, desc=None, total_chunks=None, dtype=np.uint16):
    """Write an iterable of token-id chunks (lists or arrays) as one flat array of n_tokens ids
    of `dtype` (token_dtype(vocab_size)). Written to a temporary name first, so an interrupted
    run never leaves a truncated file behind."""
    from tqdm import tqdm
    tmp = path + ".tmp"
    arr = np.memmap(tmp, dtype=dtype, mode="w+", shape=(max(n_tokens, 1),))
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


def write_split(path, docs, desc=None, dtype=np.uint16):
    """Write a list of token-id lists as one flat array. Returns the number of tokens."""
    return write_tokens(path, sum(len(d) for d in docs), docs, desc, total_chunks=len(docs), dtype=dtype)


def write_meta(out_dir, **fields):
    """meta.json, written last and atomically: a folder with a meta.json has complete .bin files.
    Defaults: GPT-2's tokenizer; dtype follows vocab_size unless given."""
    vocab_size = fields.pop("vocab_size", VOCAB_SIZE)
    meta = {"tokenizer": fields.pop("tokenizer", "gpt2"), "vocab_size": vocab_size,
            "dtype": fields.pop("dtype", np.dtype(token_dtype(vocab_size)).name), **fields}
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


def max_token_id(path, dtype=np.uint16, chunk=1 << 24):
    """The largest token id in a .bin file, read in chunks (about a second per GB); -1 if empty."""
    data = np.memmap(path, dtype=dtype, mode="r") if os.path.getsize(path) else np.zeros(0, dtype)
    return max((int(data[i: i + chunk].max()) for i in range(0, len(data), chunk)), default=-1)


def prepare_from_documents(out_dir, train_docs, val_docs, source, tokenizer="gpt2"):
    """Tokenize two lists of document strings into out_dir/{train,val}.bin + meta.json and print a summary."""
    enc = get_tokenizer(tokenizer)  # before anything is written: a bad name leaves out_dir as it was
    os.makedirs(out_dir, exist_ok=True)
    remove_leftovers(out_dir)
    dtype = token_dtype(enc.vocab_size)
    summary = {"source": source}
    for split, texts in (("train", train_docs), ("val", val_docs)):
        ids = encode_documents(texts, enc)
        largest = max(max(d) for d in ids)
        if largest > np.iinfo(dtype).max:
            raise InputError(f"tokenizer {enc.name!r} gave token id {largest}, beyond its vocabulary of "
                             f"{enc.vocab_size} ids; its files are inconsistent")
        n_tokens = write_split(os.path.join(out_dir, f"{split}.bin"), ids, desc=f"{split}.bin", dtype=dtype)
        summary[split] = {"documents": len(texts), "tokens": n_tokens, "max_token_id": largest,
                          "bytes": sum(len(t.encode("utf-8")) for t in texts)}
    write_meta(out_dir, tokenizer=enc.name, vocab_size=enc.vocab_size, dtype=np.dtype(dtype).name, **summary)
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

_NOTICED = set()  # nanoGPT folders already announced in this process


def read_meta(data_dir):
    """data_dir/meta.json as a dict, checked. A folder without one but with train.bin (as nanoGPT's
    prepare.py scripts write it) is GPT-2 ids in uint16: its defaults, with a one-line notice."""
    meta_path = os.path.join(data_dir, "meta.json")
    hint = f"run the dataset's prepare script first (see README: e.g. python -m data.local.prepare --out_dir {data_dir})"
    if not os.path.exists(meta_path):
        if not os.path.exists(os.path.join(data_dir, "train.bin")):
            raise MissingFileError(f"missing {os.path.join(data_dir, 'train.bin')} and meta.json: {hint}")
        if data_dir not in _NOTICED:
            _NOTICED.add(data_dir)
            print(f"note: {data_dir} has no meta.json; reading its .bin files as GPT-2 token ids (uint16), "
                  "as nanoGPT writes them", file=sys.stderr)
        return dict(NANOGPT_META)
    with open(meta_path) as f:
        try:
            meta = json.load(f)
        except json.JSONDecodeError as e:
            raise InputError(f"{meta_path} is not valid JSON ({e}); {hint}") from None
    if not isinstance(meta, dict):
        raise InputError(f"{meta_path} holds a {type(meta).__name__}, not a JSON object; {hint}")
    if meta.get("dtype") not in ("uint16", "uint32"):
        raise InputError(f"{meta_path} says dtype={meta.get('dtype')!r}; token files are uint16 or uint32. {hint}")
    meta.setdefault("tokenizer", "gpt2")  # meta.json files written before the tokenizer was a choice
    meta.setdefault("vocab_size", VOCAB_SIZE)
    return meta


def open_split(data_dir, split, block_size, vocab_size=None, meta=None):
    """Memory-map data_dir/{split}.bin after checking it exists, is complete, matches meta.json
    (read_meta(data_dir) unless given), and holds no token id the model's vocabulary lacks (an
    IndexError deep in the embedding otherwise)."""
    path = os.path.join(data_dir, f"{split}.bin")
    hint = f"run the dataset's prepare script first (see README: e.g. python -m data.local.prepare --out_dir {data_dir})"
    if not os.path.exists(path):
        raise MissingFileError(f"missing {path}: {hint}")
    meta = read_meta(data_dir) if meta is None else meta
    meta_path = os.path.join(data_dir, "meta.json")
    if vocab_size is not None and meta["vocab_size"] > vocab_size:
        raise InputError(f"data in {data_dir} uses a vocabulary of {meta['vocab_size']} tokens but the model "
                         f"has vocab_size={vocab_size}; prepare the data with the model's tokenizer or set vocab_size")
    dtype = np.dtype(meta["dtype"])
    size = os.path.getsize(path)
    if size % dtype.itemsize != 0:
        what = "an odd number of bytes" if dtype.itemsize == 2 else f"a number of bytes not divisible by {dtype.itemsize}"
        raise InputError(f"{path} has {what} ({size}); it is truncated or not a {dtype.name} token file. {hint}")
    n_tokens = size // dtype.itemsize
    split_meta = meta.get(split) if isinstance(meta.get(split), dict) else {}
    if "tokens" in split_meta and split_meta["tokens"] != n_tokens:
        raise InputError(f"{path} holds {n_tokens} tokens but {meta_path} says {split_meta['tokens']}; "
                         f"the file is truncated or from another preparation. {hint}")
    data = np.memmap(path, dtype=dtype, mode="r")
    if len(data) <= block_size + 1:
        raise InputError(f"{path} holds {len(data)} tokens, too few for block_size={block_size}; "
                         "use more text or a smaller block_size")
    if vocab_size is not None:
        largest = split_meta.get("max_token_id")
        largest = max_token_id(path, dtype) if largest is None else largest  # older meta.json: scan the file
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
