"""
What every dataset preparer and the training loader share: the tokenizer, the on-disk
format, and the batch sampler.

On disk, a prepared dataset is a folder with
    train.bin, val.bin   token ids as one flat array, uint16 when the tokenizer's ids fit
                         (GPT-2's 50257 do), uint32 otherwise (Qwen3's ~152k); documents are
                         separated by the tokenizer's end-of-text token (a character tokenizer
                         has none: its documents are concatenated, as in nanoGPT)
    meta.json            tokenizer (its name: "gpt2", a Hugging Face folder or hub name, or a
                         character tokenizer's 'char:"..."'), vocab_size, dtype, and per split the
                         token and document counts and the largest token id (max_token_id)
Training reads the .bin files through np.memmap, so a dataset larger than RAM is fine.
Folders prepared by nanoGPT have no meta.json: with a meta.pkl (data/shakespeare_char) they are
character ids in uint16, read with the characters of its meta.pkl; without one, GPT-2 uint16 ids.
"""

import functools
import json
import os
import pickle
import sys

import numpy as np

from errors import InputError, MissingFileError

EOT_TOKEN = 50256  # GPT-2's <|endoftext|>, put between documents
VOCAB_SIZE = 50257
NANOGPT_META = {"tokenizer": "gpt2", "vocab_size": VOCAB_SIZE, "dtype": "uint16"}  # a folder without meta.json


# ---------------------------------------------------------------------- tokenizers

class Tokenizer:
    """One interface over tiktoken's encodings, Hugging Face tokenizers and character tokenizers.

    name        what meta.json and checkpoints record, and get_tokenizer(name) loads again
    vocab_size  number of ids (for Hugging Face, added tokens included)
    eot         the id put between documents (GPT-2: <|endoftext|>; Hugging Face: eos, else bos;
                a character tokenizer: None, documents are concatenated)
    bos, eos    the tokenizer's own (None where it has none)
    prefix_token  lm-eval's prefix for an empty context and for perplexity windows: bos, else eos
                (None for a character tokenizer)
    wrapped     the library's own object: a tiktoken Encoding or a Hugging Face tokenizer (set by
                get_tokenizer; a character tokenizer has none)
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
            return self.wrapped.encode_ordinary_batch(list(texts))
        return self.wrapped(list(texts), add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def encode_special(self, text, add_special_tokens=True):
        """Ids of text the way Hugging Face's tokenizer.encode gives them: special-token text
        ("<|endoftext|>", "<s>") becomes that token, and add_special_tokens adds what the tokenizer
        adds (Llama's and Gemma's a BOS in front; GPT-2's and Qwen's nothing). tiktoken adds nothing."""
        if self.backend == "tiktoken":
            return self.wrapped.encode(text, allowed_special="all")
        return self.wrapped.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, ids):
        return self.wrapped.decode(list(ids))

    def __repr__(self):
        return f"Tokenizer({self.name!r}, {self.backend}, vocab_size={self.vocab_size})"


@functools.lru_cache(maxsize=None)
def get_tokenizer(name="gpt2"):
    """The tokenizer called `name`: a tiktoken encoding ("gpt2", "r50k_base", ...), a local Hugging
    Face tokenizer folder (tokenizer.json, or vocab.json + merges.txt, ...), or a Hugging Face hub
    name ("Qwen/Qwen3-0.6B"; downloaded when online), or a character tokenizer's name
    ('char:"..."', see char_tokenizer_name). Offline, tiktoken needs TIKTOKEN_CACHE_DIR pointed at a
    folder holding its files."""
    if not isinstance(name, str) or not name:
        raise InputError(f"tokenizer={name!r}: give a tiktoken encoding (gpt2), a Hugging Face tokenizer "
                         "folder or a hub name")
    if name.startswith(CHAR_PREFIX):  # before the folder check: the name is the whole tokenizer, no file
        return _char(name)
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
    tok.wrapped = enc
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
    tok.wrapped = hf
    return tok


# A character tokenizer (nanoGPT's shakespeare_char): id i is the i-th of its characters. Its name
# is the whole tokenizer, so meta.json and checkpoints record it and get_tokenizer rebuilds it with
# no file: "char:" + the characters in id order as a JSON string, e.g. char:"\n !$&',-.3:;?ABC...".
# JSON's escapes keep the name one line of ASCII whatever the characters (newlines, quotes,
# non-ASCII), and no tiktoken name, hub name ("org/name") or path starts with 'char:"'.
CHAR_PREFIX = "char:"


class CharTokenizer(Tokenizer):
    """Each character is one token; no special tokens (eot, bos, eos and prefix_token are None), so
    documents are concatenated with no separator between them, as nanoGPT's shakespeare_char does."""

    def __init__(self, chars):
        super().__init__(char_tokenizer_name(chars), "char", len(chars), None, None, None)
        self.chars = list(chars)  # id -> character
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    def encode_batch(self, texts):
        out = []
        for k, text in enumerate(texts):
            try:
                out.append([self.stoi[c] for c in text])
            except KeyError:
                pos = next(i for i, c in enumerate(text) if c not in self.stoi)
                where = f" of text {k}" if len(texts) > 1 else ""
                raise InputError(f"character {text[pos]!r} at position {pos}{where} is not in the character "
                                 f"tokenizer's {self.vocab_size} characters: the text has a character the model's "
                                 "vocabulary lacks; remove or replace it (or prepare the data from a text that "
                                 "has it)") from None
        return out

    def encode_special(self, text, add_special_tokens=True):
        return self.encode(text)  # no special tokens to add or to recognise

    def decode(self, ids):
        # an id beyond the characters (a model whose vocab_size was rounded up) decodes to U+FFFD
        n = self.vocab_size
        return "".join(self.chars[i] if 0 <= i < n else "\ufffd" for i in map(int, ids))


def char_tokenizer_name(chars):
    """The name of the character tokenizer whose ids are the positions of `chars` (a string or a
    list of single characters, all different)."""
    chars = list(chars)
    bad = next((c for c in chars if not isinstance(c, str) or len(c) != 1), None)
    if bad is not None:
        raise InputError(f"a character tokenizer's characters are single characters, got {bad!r}")
    if not chars:
        raise InputError("a character tokenizer needs at least one character")
    seen = set()
    dup = next((c for c in chars if c in seen or seen.add(c)), None)
    if dup is not None:
        raise InputError(f"character {dup!r} appears twice in the character tokenizer's characters; give each once")
    return CHAR_PREFIX + json.dumps("".join(chars))  # ensure_ascii (the default): one line of ASCII


def char_tokenizer(chars):
    """The character tokenizer of `chars` (id i = chars[i]); cached like every get_tokenizer name."""
    return get_tokenizer(char_tokenizer_name(chars))


def _char(name):
    try:
        chars = json.loads(name[len(CHAR_PREFIX):])
    except json.JSONDecodeError:
        chars = None
    if not isinstance(chars, str):
        raise InputError(f"tokenizer={name[:60]!r}{'...' if len(name) > 60 else ''} is not a character tokenizer's "
                         f"name: after {CHAR_PREFIX!r} comes a JSON string of its characters in id order, e.g. "
                         f"{char_tokenizer_name(chr(10) + ' abc')}")
    return CharTokenizer(chars)


def token_dtype(vocab_size):
    """The on-disk dtype of token ids: uint16 when every id fits (vocab_size <= 65536), else uint32."""
    return np.uint16 if vocab_size <= 2**16 else np.uint32


def encode_documents(texts, enc=None):
    """Token ids of each document followed by the tokenizer's end-of-text token (none for a
    tokenizer without one, a character tokenizer: its documents are simply concatenated)."""
    enc = enc or get_tokenizer()
    ids = enc.encode_batch(list(texts))
    if enc.eot is not None:
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
    for name in ("train.bin.tmp", "val.bin.tmp", "meta.json.tmp", "meta.pkl.tmp"):
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
        largest = max((max(d) for d in ids if d), default=-1)  # -1: no tokens (possible without eot)
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


# ---------------------------------------------------------------------- nanoGPT's meta.pkl

class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain data only. Every class or function a pickle names comes through find_class,
    and calling one is how a pickle runs code (os.system in a __reduce__), so none is let through."""

    def find_class(self, module, name):
        raise _RefusedGlobal(f"{module}.{name}")


_PLAIN = (dict, list, tuple, str, int, float, bool, type(None))


def _first_not_plain(obj):
    """The first value in obj that is not plain data (_PLAIN), or None. Iterative, and each container
    is visited once, so a deep or self-referencing pickle cannot blow the stack or loop."""
    stack, seen = [obj], set()
    while stack:
        x = stack.pop()
        if type(x) not in _PLAIN:  # exact types: a subclass could only come from a class we refused anyway
            return x
        if isinstance(x, (dict, list, tuple)) and id(x) not in seen:
            seen.add(id(x))
            stack.extend([*x.keys(), *x.values()] if isinstance(x, dict) else x)
    return None


def read_nanogpt_meta(path):
    """nanoGPT's meta.pkl ({'vocab_size': V, 'itos': {0: '\\n', ...}, 'stoi': {'\\n': 0, ...}}, as
    its shakespeare_char/prepare.py writes it), read without running anything and checked: itos
    and stoi are inverse maps of single characters and ids 0..V-1. Other keys are kept. Returns the dict."""
    fix = ("re-create it with nanoGPT's data/shakespeare_char/prepare.py or ours "
           "(python data/shakespeare_char/prepare.py --out_dir FOLDER)")
    if not os.path.isfile(path):
        raise MissingFileError(f"missing {path}: {fix}")
    with open(path, "rb") as f:
        try:
            meta = _PlainUnpickler(f).load()
        except _RefusedGlobal as e:
            raise InputError(f"{path} holds more than nanoGPT's meta.pkl does (a reference to {e}, which unpickling "
                             f"would call), so it was not loaded; {fix}") from None
        except Exception as e:  # truncated or not a pickle: pickle raises many kinds
            raise InputError(f"{path} is not a readable pickle ({type(e).__name__}: {str(e)[:200]}); {fix}") from None
    odd = _first_not_plain(meta)
    if odd is not None:
        raise InputError(f"{path} holds more than nanoGPT's meta.pkl does (a {type(odd).__name__}; it has only dicts, "
                         f"lists, strings and numbers), so it was not loaded; {fix}")

    def bad(what):
        return InputError(f"{path} is not a character-level meta.pkl as nanoGPT writes it: {what}; {fix}")

    if not isinstance(meta, dict):
        raise bad(f"it holds a {type(meta).__name__}, not a dict")
    missing = [k for k in ("itos", "stoi") if k not in meta]
    if missing:
        raise bad(f"no {' and no '.join(map(repr, missing))} (its keys: {', '.join(map(repr, meta))})")
    itos, stoi = meta["itos"], meta["stoi"]
    if isinstance(itos, list):  # a list is an id -> character map too
        itos = dict(enumerate(itos))
    if not isinstance(itos, dict) or not isinstance(stoi, dict):
        raise bad(f"itos is a {type(meta['itos']).__name__} and stoi a {type(stoi).__name__}; both are dicts")
    n = len(itos)
    if n == 0:
        raise bad("itos is empty")
    vocab_size = meta.get("vocab_size", n)  # nanoGPT writes it; a project that does not still has itos
    if type(vocab_size) is not int or vocab_size != n:
        raise bad(f"vocab_size={vocab_size!r} but itos has {n} entries")
    if set(itos) != set(range(n)) or any(type(i) is not int for i in itos):  # type: True == 1 is no id
        wrong = sorted(map(repr, set(itos) ^ set(range(n))))[:3] or [repr(next(i for i in itos if type(i) is not int))]
        raise bad(f"itos's keys are not the ids 0..{n - 1} (e.g. {', '.join(wrong)})")
    char = next((c for c in itos.values() if not isinstance(c, str) or len(c) != 1), None)
    if char is not None:
        raise bad(f"itos maps an id to {char!r}, not a single character")
    expected = {c: i for i, c in itos.items()}
    if stoi != expected or len(expected) != n:
        diff = next(((c, stoi.get(c), i) for c, i in expected.items() if stoi.get(c) != i), None)
        what = (f"stoi[{diff[0]!r}] is {diff[1]!r} but itos gives {diff[2]}" if diff else
                f"stoi has {len(stoi)} entries and itos {n} ({len(expected)} different characters)")
        raise bad(f"itos and stoi are not inverse maps: {what}")
    return meta


def nanogpt_char_tokenizer(path):
    """The character tokenizer of a nanoGPT meta.pkl (read safely by read_nanogpt_meta)."""
    itos = read_nanogpt_meta(path)["itos"]
    return char_tokenizer([itos[i] for i in range(len(itos))])


# ---------------------------------------------------------------------- reading, for training

_NOTICED = set()  # nanoGPT folders already announced in this process


def dataset_dir(dataset):
    """A `dataset` setting as a folder: the folder itself when it exists, else data/<dataset> of this repository."""
    return dataset if os.path.isdir(dataset) else os.path.join(os.path.dirname(os.path.abspath(__file__)), dataset)


def prepare_command(data_dir):
    """The command that prepares data_dir, written to run as it stands from the working directory: the
    script of the dataset the folder is named after (data/shakespeare_char, ...), else data/local's,
    with --out_dir unless it is the script's own folder. Where a script needs an input or would download
    one, the offline data folder's copy is given when it is there ($DISPERSE_SHARED, else ../shared
    beside the repository), and TIKTOKEN_CACHE_DIR too for GPT-2 tokens when it is not set."""
    def shown(path):  # relative to the working directory unless that climbs out of it twice
        rel = os.path.relpath(path)
        return os.path.abspath(path) if rel.startswith(os.path.join(os.pardir, os.pardir)) else rel

    data = os.path.dirname(os.path.abspath(__file__))
    shared = os.environ.get("DISPERSE_SHARED") or shown(os.path.join(data, os.pardir, os.pardir, "shared"))
    name = os.path.basename(os.path.normpath(data_dir))
    script = name if name in ("shakespeare_char", "shakespeare", "wikitext103", "openwebtext") else "local"
    command = f"python {shown(os.path.join(data, script, 'prepare.py'))}"
    if script == "local":
        corpus = os.path.join(shared, "corpus")
        command += f" --input {corpus if os.path.isdir(corpus) else 'FOLDER_OF_TXT_FILES'}"
    elif script.startswith("shakespeare"):
        text = os.path.join(shared, "corpus", "tinyshakespeare.txt")
        command += f" --input {text}" if os.path.isfile(text) else ""  # else it downloads Tiny Shakespeare
    if script == "local" or os.path.realpath(data_dir) != os.path.realpath(os.path.join(data, script)):
        command += f" --out_dir {shown(data_dir)}"
    cache = os.path.join(shared, "tiktoken")
    if script != "shakespeare_char" and not os.environ.get("TIKTOKEN_CACHE_DIR") and os.path.isdir(cache):
        command = f"TIKTOKEN_CACHE_DIR={cache} {command}"  # GPT-2's tokenizer offline
    if script in ("wikitext103", "openwebtext"):
        command += " (it downloads the dataset; offline: add --input FOLDER, see its --help)"
    return command


def read_meta(data_dir):
    """data_dir/meta.json as a dict, checked. A folder without one was prepared by nanoGPT, which
    writes uint16 ids: with a meta.pkl (shakespeare_char) they are character ids, and the meta is
    {"tokenizer": the char tokenizer of its characters, "vocab_size": V, "dtype": "uint16"};
    without, with train.bin, GPT-2 ids (NANOGPT_META). Either way a one-line notice says so."""
    meta_path = os.path.join(data_dir, "meta.json")
    hint = f"prepare the data first: {prepare_command(data_dir)}"
    pkl_path = os.path.join(data_dir, "meta.pkl")
    if not os.path.exists(meta_path) and os.path.exists(pkl_path):  # meta.json, ours, wins when both are there
        enc = nanogpt_char_tokenizer(pkl_path)
        if data_dir not in _NOTICED:
            _NOTICED.add(data_dir)
            print(f"note: {data_dir} has no meta.json; reading its .bin files as character ids (uint16) with the "
                  f"{enc.vocab_size} characters of its meta.pkl, as nanoGPT writes them", file=sys.stderr)
        return {"tokenizer": enc.name, "vocab_size": enc.vocab_size, "dtype": "uint16"}
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


SCAN_BYTES = 1 << 30  # open_split reads token files up to this size whole for their largest id


def open_split(data_dir, split, block_size, vocab_size=None, meta=None):
    """Memory-map data_dir/{split}.bin after checking it exists, is complete, matches meta.json
    (read_meta(data_dir) unless given), and holds no token id the model's vocabulary lacks (an
    IndexError deep in the embedding otherwise)."""
    path = os.path.join(data_dir, f"{split}.bin")
    hint = f"prepare the data first: {prepare_command(data_dir)}"
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
        # a file up to SCAN_BYTES is read whole (about a second per GB), so one damaged after it was prepared
        # fails here; a larger one (OpenWebText's 17 GB) is taken at its meta.json, and each batch is checked
        largest = split_meta.get("max_token_id")
        if largest is None or size <= SCAN_BYTES:
            largest = max_token_id(path, dtype)
        if largest >= vocab_size:
            raise InputError(f"{path} holds token id {largest} but the model has vocab_size={vocab_size} "
                             f"(ids 0..{vocab_size - 1}); set vocab_size to at least {largest + 1} or prepare "
                             "the data with the model's tokenizer")
    return data


def sample_batch(data, batch_size, block_size, key, vocab_size=None):
    """Inputs and next-token targets (B, T) drawn from the memmap at random offsets.
    Stateless: the offsets depend only on `key`, a tuple of non-negative ints; training uses
    (seed, 0, step, global micro-batch index), so a resumed run reads exactly what an
    uninterrupted one would have, and 2 ranks with 1 micro-step each read what 1 rank reads in 2."""
    rng = np.random.default_rng(list(key))
    ix = rng.integers(0, len(data) - block_size - 1, size=batch_size)
    x = np.stack([data[i: i + block_size] for i in ix]).astype(np.int64)  # (B, T)
    y = np.stack([data[i + 1: i + 1 + block_size] for i in ix]).astype(np.int64)  # (B, T)
    if vocab_size is not None and max(x.max(), y.max()) >= vocab_size:  # a file damaged after meta.json recorded
        # its largest id: one line naming it, not an IndexError in the embedding (a device-side assert on a GPU)
        i = next(i for i in ix if data[i: i + block_size + 1].max() >= vocab_size)
        pos = i + int(np.argmax(data[i: i + block_size + 1] >= vocab_size))
        raise InputError(f"{getattr(data, 'filename', None) or 'the token file'} holds token id {data[pos]} at position "
                         f"{pos}, beyond vocab_size={vocab_size}, though its meta.json records a smaller largest id: "
                         "the file is damaged. Prepare the data again")
    return x, y
