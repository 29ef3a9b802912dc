"""Character-level data as nanoGPT's shakespeare_char makes it: the char tokenizer, its name,
data/shakespeare_char/prepare.py (nanoGPT's exact layout plus our meta.json), and reading a
nanoGPT folder's meta.pkl safely."""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from data.common import (CharTokenizer, char_tokenizer, char_tokenizer_name, get_tokenizer,
                         nanogpt_char_tokenizer, open_split, prepare_from_documents, read_meta, read_nanogpt_meta,
                         write_meta, write_split)
from errors import InputError, MissingFileError

# a newline, quotes, a backslash, a colon, non-ASCII (one beyond 16 bits), a line separator
ODD = ["\n", " ", '"', "'", "\\", ":", "/", "é", "日", "😀", "\t", "\u2028", "a", "b"]
TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\r\n\n"  # a \r\n: read as \n
        "All:\nSpeak, speak. Ünïcode — 日本 \"q\" \\.\n") * 8


def nanogpt_prepare(text):
    """nanoGPT's shakespeare_char/prepare.py in a few lines, to compare with: (train, val, meta)."""
    chars = sorted(set(text))
    stoi, itos = {c: i for i, c in enumerate(chars)}, dict(enumerate(chars))
    n = len(text)
    train = np.array([stoi[c] for c in text[: int(n * 0.9)]], dtype=np.uint16)
    val = np.array([stoi[c] for c in text[int(n * 0.9):]], dtype=np.uint16)
    return train, val, {"vocab_size": len(chars), "itos": itos, "stoi": stoi}


def run_prepare(args, how, env_extra=None, cwd=REPO):
    """data/shakespeare_char/prepare.py as a user runs it: by path from the repository root (nanoGPT's
    way), by its absolute path from elsewhere, or with -m."""
    cmd = {"path": [sys.executable, "data/shakespeare_char/prepare.py"],
           "abspath": [sys.executable, str(REPO / "data" / "shakespeare_char" / "prepare.py")],
           "module": [sys.executable, "-m", "data.shakespeare_char.prepare"]}[how]
    env = {k: v for k, v in os.environ.items() if k != "DISPERSE_SHARED"}
    env.update(env_extra or {})
    return subprocess.run([*cmd, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def prepared(tmp_path, text=TEXT):
    """A folder prepared in-process from text; returns it."""
    from data.shakespeare_char import prepare
    (tmp_path / "input.txt").write_text(text, encoding="utf-8", newline="")
    prepare.main(["--input", str(tmp_path / "input.txt"), "--out_dir", str(tmp_path / "data")])
    return tmp_path / "data"


# ---------------------------------------------------------------------- the tokenizer

def test_char_tokenizer_round_trip_with_odd_characters():
    enc = char_tokenizer(ODD)
    assert isinstance(enc, CharTokenizer) and enc.vocab_size == len(ODD) and enc.backend == "char"
    assert (enc.eot, enc.bos, enc.eos, enc.prefix_token) == (None, None, None, None)
    text = 'a: "b"\\\n日😀 é\tb\u2028/'
    ids = enc.encode(text)
    assert ids == [ODD.index(c) for c in text] and enc.decode(ids) == text
    assert enc.encode_ordinary(text) == enc.encode_special(text) == enc.encode_special(text, False) == ids
    assert enc.encode_batch([text, "", "ab"]) == [ids, [], [12, 13]]
    assert enc.decode(np.array(ids, dtype=np.uint16)) == text  # numpy ids, as sample.py and the loader have them
    assert enc.decode([0, 999, -1]) == "\n\ufffd\ufffd"  # ids past the characters (a padded vocab_size) don't crash


def test_char_tokenizer_name_survives_json_and_rebuilds_it():
    enc = char_tokenizer(ODD)
    name = enc.name
    assert name.startswith('char:"') and name.isascii() and len(name.splitlines()) == 1  # one line, any characters
    assert name == char_tokenizer_name("".join(ODD)) == char_tokenizer_name(ODD)
    again = json.loads(json.dumps({"tokenizer": name}))["tokenizer"]  # as meta.json and checkpoints store it
    assert get_tokenizer(again) is enc  # the same cached object: get_tokenizer's lru_cache works
    assert get_tokenizer(again).decode(range(len(ODD))) == "".join(ODD)
    # the shakespeare vocabulary reads naturally
    assert char_tokenizer("\n !ab").name == 'char:"\\n !ab"'
    # an equivalent JSON spelling gives the same tokenizer, under the canonical name
    assert get_tokenizer('char:"\\u000a !ab"').name == 'char:"\\n !ab"'


def test_char_tokenizer_name_is_not_a_path_even_if_such_a_folder_exists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'char:"xy"').mkdir()
    assert get_tokenizer('char:"xy"').encode("yx") == [1, 0]


@pytest.mark.parametrize("name, match", [
    ("char:abc", "not a character tokenizer's name"),
    ('char:"abc', "not a character tokenizer's name"),
    ("char:123", "not a character tokenizer's name"),
    ('char:["a"]', "not a character tokenizer's name"),
    ('char:"aba"', "'a' appears twice"),
    ('char:""', "at least one character"),
])
def test_bad_char_tokenizer_names_are_input_errors(name, match):
    with pytest.raises(InputError, match=match) as e:
        get_tokenizer(name)
    assert len(str(e.value).splitlines()) == 1


def test_unknown_character_names_it_and_its_position():
    enc = char_tokenizer("\n abc")
    with pytest.raises(InputError, match=r"character 'é' at position 3 is not in .* vocabulary lacks") as e:
        enc.encode("abcé a")
    assert len(str(e.value).splitlines()) == 1
    with pytest.raises(InputError, match=r"character '\\t' at position 1 of text 1 "):
        enc.encode_batch(["ab", "a\tb"])
    with pytest.raises(InputError, match="single characters, got 'ab'"):
        char_tokenizer(["ab", "c"])


def test_preparers_concatenate_documents_without_a_separator(tmp_path):
    """A tokenizer without eot: prepare_from_documents puts the documents end to end, as nanoGPT does."""
    enc = char_tokenizer("\n abcdefgh")
    summary = prepare_from_documents(str(tmp_path), ["abc\n", "def", ""], ["gh a"], "test", tokenizer=enc.name)
    assert np.fromfile(tmp_path / "train.bin", dtype=np.uint16).tolist() == enc.encode("abc\ndef")
    assert summary["train"] == {"documents": 3, "tokens": 7, "max_token_id": enc.encode("f")[0], "bytes": 7}
    assert read_meta(str(tmp_path))["tokenizer"] == enc.name


# ---------------------------------------------------------------------- prepare.py

@pytest.mark.parametrize("how", ["path", "abspath", "module"])
def test_prepare_writes_nanogpts_layout(tmp_path, how):
    (tmp_path / "input.txt").write_text(TEXT, encoding="utf-8", newline="")  # with a \r\n, as a file may have
    out = tmp_path / "out"
    result = run_prepare(["--input", str(tmp_path / "input.txt"), "--out_dir", str(out)], how,
                         cwd=tmp_path if how == "abspath" else REPO)
    assert result.returncode == 0, result.stderr
    text = TEXT.replace("\r\n", "\n")  # nanoGPT reads in text mode, which turns \r\n into \n
    train, val, meta = nanogpt_prepare(text)
    assert (out / "train.bin").read_bytes() == train.tobytes() and (out / "val.bin").read_bytes() == val.tobytes()
    with open(out / "meta.pkl", "rb") as f:
        assert pickle.load(f) == meta  # our own file: a plain pickle.load, as nanoGPT's sample.py does
    assert (out / "meta.pkl").read_bytes() == pickle.dumps(meta)  # even the bytes: same keys in the same order
    ours = json.loads((out / "meta.json").read_text())
    assert ours["tokenizer"] == char_tokenizer(sorted(set(text))).name
    assert (ours["vocab_size"], ours["dtype"]) == (meta["vocab_size"], "uint16")
    assert ours["source"] == str(tmp_path / "input.txt")
    assert ours["train"] == {"documents": 1, "tokens": len(train), "max_token_id": int(train.max()),
                             "bytes": len(text[: len(train)].encode("utf-8"))}
    assert ours["val"]["tokens"] == len(val) and ours["val"]["bytes"] == len(text[len(train):].encode("utf-8"))
    assert f"vocab size: {meta['vocab_size']}" in result.stdout and f"train has {len(train):,} tokens" in result.stdout
    assert sorted(os.listdir(out)) == ["meta.json", "meta.pkl", "train.bin", "val.bin"]  # no .tmp left behind
    enc = get_tokenizer(ours["tokenizer"])
    assert enc.decode(open_split(str(out), "train", 8, vocab_size=enc.vocab_size)) + enc.decode(
        open_split(str(out), "val", 8)) == text


def test_prepare_input_defaults_and_errors(tmp_path, monkeypatch):
    from data.shakespeare_char import prepare
    # DISPERSE_SHARED set: its corpus/tinyshakespeare.txt
    shared = tmp_path / "shared"
    (shared / "corpus").mkdir(parents=True)
    (shared / "corpus" / "tinyshakespeare.txt").write_text("To be, or not to be.\n" * 5)
    result = run_prepare(["--out_dir", str(tmp_path / "a")], "module", {"DISPERSE_SHARED": str(shared)})
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "a" / "meta.json").read_text())["source"].endswith("tinyshakespeare.txt")
    # every expected failure: one line on stderr, exit status 1, nothing written
    for args, env, message in [
        (["--out_dir", str(tmp_path / "b")], {"DISPERSE_SHARED": str(tmp_path)}, "has no corpus/tinyshakespeare.txt"),
        (["--input", str(tmp_path / "none.txt"), "--out_dir", str(tmp_path / "b")], {}, "no such file"),
    ]:
        result = run_prepare(args, "path", env)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert result.stderr.strip().startswith("error: ") and message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "b").exists()
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 20)
    with pytest.raises(InputError, match="not UTF-8"):
        prepare.main(["--input", str(tmp_path / "latin1.txt"), "--out_dir", str(tmp_path / "b")])
    (tmp_path / "one.txt").write_text("a")
    with pytest.raises(InputError, match="too few to split"):
        prepare.main(["--input", str(tmp_path / "one.txt"), "--out_dir", str(tmp_path / "b")])

    # no DISPERSE_SHARED: nanoGPT's download into --out_dir, or a clear error offline
    monkeypatch.delenv("DISPERSE_SHARED", raising=False)

    def offline(url, path):
        raise OSError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(prepare.urllib.request, "urlretrieve", offline)
    with pytest.raises(InputError, match="download of .*input.txt failed .*pass --input FILE .*DISPERSE_SHARED") as e:
        prepare.main(["--out_dir", str(tmp_path / "c")])
    assert len(str(e.value).splitlines()) == 1 and not (tmp_path / "c" / "input.txt").exists()

    def download(url, path):
        assert url == prepare.URL
        with open(path, "w") as f:
            f.write("Downloaded text.\n" * 3)
    monkeypatch.setattr(prepare.urllib.request, "urlretrieve", download)
    prepare.main(["--out_dir", str(tmp_path / "c")])
    assert (tmp_path / "c" / "input.txt").read_text() == "Downloaded text.\n" * 3
    monkeypatch.setattr(prepare.urllib.request, "urlretrieve", offline)  # already there: not downloaded again
    assert prepare.main(["--out_dir", str(tmp_path / "c")])["train"]["tokens"] == int(0.9 * 51)


def test_prepare_tiny_shakespeare_matches_nanogpt(shared, tmp_path):
    """The real file: nanoGPT's numbers (65 characters, 1,003,854 + 111,540 tokens)."""
    from data.shakespeare_char import prepare
    summary = prepare.main(["--input", str(shared / "corpus" / "tinyshakespeare.txt"), "--out_dir", str(tmp_path)])
    assert (summary["train"]["tokens"], summary["val"]["tokens"]) == (1_003_854, 111_540)
    meta = read_nanogpt_meta(str(tmp_path / "meta.pkl"))
    assert meta["vocab_size"] == 65 and meta["itos"][0] == "\n" and meta["stoi"]["z"] == 64
    assert json.loads((tmp_path / "meta.json").read_text())["tokenizer"] == \
        "char:\"\\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz\""


# ---------------------------------------------------------------------- reading nanoGPT's meta.pkl

def test_folder_with_only_meta_pkl_is_char_data(tmp_path, capsys):
    data = prepared(tmp_path)
    name = json.loads((data / "meta.json").read_text())["tokenizer"]
    (data / "meta.json").unlink()  # now it is what nanoGPT's prepare.py leaves
    capsys.readouterr()
    meta = read_meta(str(data))
    assert meta == {"tokenizer": name, "vocab_size": len(set(TEXT.replace("\r\n", "\n"))), "dtype": "uint16"}
    read_meta(str(data))
    notices = [line for line in capsys.readouterr().err.splitlines() if "no meta.json" in line]
    assert len(notices) == 1 and "character ids" in notices[0] and "meta.pkl" in notices[0]  # once per folder
    train = open_split(str(data), "train", 8, vocab_size=128)
    assert get_tokenizer(meta["tokenizer"]).decode(train) == TEXT.replace("\r\n", "\n")[: len(train)]
    assert nanogpt_char_tokenizer(str(data / "meta.pkl")).name == name
    with pytest.raises(InputError, match="uses a vocabulary of .* tokens but the model has vocab_size=10"):
        open_split(str(data), "train", 8, vocab_size=10)
    (data / "train.bin").unlink()
    with pytest.raises(MissingFileError, match="train.bin"):
        open_split(str(data), "train", 8)


def test_meta_json_wins_over_meta_pkl(tmp_path):
    write_split(str(tmp_path / "train.bin"), [list(range(100))])
    write_meta(str(tmp_path), vocab_size=256)
    marker = tmp_path / "ran"
    (tmp_path / "meta.pkl").write_bytes(pickle.dumps(Evil(f"touch {marker}")))  # never even opened
    assert read_meta(str(tmp_path))["tokenizer"] == "gpt2" and read_meta(str(tmp_path))["vocab_size"] == 256
    assert not marker.exists()


class Evil:
    """A pickle that runs a shell command when loaded with plain pickle.load."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_malicious_meta_pkl_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    payload = pickle.dumps({"vocab_size": 2, "itos": {0: "a", 1: "b"}, "stoi": {"a": 0, "b": 1},
                            "extra": Evil(f"touch {marker}")})
    (tmp_path / "meta.pkl").write_bytes(payload)
    (tmp_path / "train.bin").write_bytes(b"\x00\x00" * 20)
    for read in (lambda: read_meta(str(tmp_path)), lambda: read_nanogpt_meta(str(tmp_path / "meta.pkl")),
                 lambda: open_split(str(tmp_path), "train", 4)):
        with pytest.raises(InputError, match="holds more than nanoGPT's meta.pkl does .*system.*not loaded") as e:
            read()
        assert str(tmp_path / "meta.pkl") in str(e.value) and len(str(e.value).splitlines()) == 1
    assert not marker.exists()
    # the payload is real: plain pickle would have run it
    pickle.loads(payload)
    assert marker.exists()


@pytest.mark.parametrize("meta, match", [
    ({"vocab_size": 2, "itos": {0: "a", 1: "b"}, "stoi": {"a": 0, "b": 1}, "raw": b"bytes"}, "holds more .* bytes"),
    ({"vocab_size": 2, "itos": {0: "a", 1: "b"}, "stoi": {"a": 0, "b": 1}, "s": {1, 2}}, "holds more .* set"),
    ([("a", 0)], "holds a list, not a dict"),
    ({"vocab_size": 50304}, "no 'itos' and no 'stoi'"),
    ({"vocab_size": 0, "itos": {}, "stoi": {}}, "itos is empty"),
    ({"vocab_size": 3, "itos": {0: "a", 1: "b"}, "stoi": {"a": 0, "b": 1}}, "vocab_size=3 but itos has 2 entries"),
    ({"vocab_size": 2, "itos": {0: "a", 2: "b"}, "stoi": {"a": 0, "b": 2}}, r"keys are not the ids 0..1 \(e.g. 1, 2\)"),
    ({"vocab_size": 2, "itos": {0: "a", True: "b"}, "stoi": {"a": 0, "b": 1}}, "keys are not the ids 0..1"),
    ({"vocab_size": 2, "itos": {0: "a", 1: "bc"}, "stoi": {"a": 0, "bc": 1}}, "maps an id to 'bc'"),
    ({"vocab_size": 2, "itos": {0: "a", 1: "b"}, "stoi": {"a": 1, "b": 0}}, r"stoi\['a'\] is 1 but itos gives 0"),
    ({"vocab_size": 2, "itos": {0: "a", 1: "a"}, "stoi": {"a": 1}}, "not inverse maps"),
    ({"vocab_size": 2, "itos": {0: "a", 1: "b"}, "stoi": {"a": 0, "b": 1, "c": 2}}, "stoi has 3 entries"),
    ({"vocab_size": 2, "itos": "ab", "stoi": {"a": 0, "b": 1}}, "itos is a str"),
])
def test_bad_meta_pkl_gives_a_clear_error(tmp_path, meta, match):
    (tmp_path / "meta.pkl").write_bytes(pickle.dumps(meta))
    with pytest.raises(InputError, match=match) as e:
        read_meta(str(tmp_path))
    assert str(tmp_path / "meta.pkl") in str(e.value) and len(str(e.value).splitlines()) == 1


def test_meta_pkl_variants_that_are_fine(tmp_path):
    """Keys that nanoGPT-derived projects add are kept; an itos list works; no vocab_size means len(itos)."""
    path = tmp_path / "meta.pkl"
    path.write_bytes(pickle.dumps({"vocab_size": 2, "itos": {0: "a", 1: "b"}, "stoi": {"a": 0, "b": 1},
                                   "tokenizer": "char", "notes": ["x", 1.5, None, (True,)]}, protocol=2))
    assert read_nanogpt_meta(str(path))["notes"] == ["x", 1.5, None, (True,)]
    path.write_bytes(pickle.dumps({"itos": ["b", "a"], "stoi": {"b": 0, "a": 1}}))
    assert nanogpt_char_tokenizer(str(path)).encode("ab") == [1, 0]
    looped = {"itos": {0: "a"}, "stoi": {"a": 0}, "self": []}
    looped["self"].append(looped)  # a self-referencing pickle does not loop forever
    path.write_bytes(pickle.dumps(looped))
    assert read_nanogpt_meta(str(path))["itos"] == {0: "a"}


def test_unreadable_meta_pkl(tmp_path):
    path = tmp_path / "meta.pkl"
    path.write_bytes(pickle.dumps({"itos": {0: "a"}, "stoi": {"a": 0}})[:-5])
    with pytest.raises(InputError, match="meta.pkl is not a readable pickle"):
        read_nanogpt_meta(str(path))
    path.write_text("not a pickle at all")
    with pytest.raises(InputError, match="not a readable pickle"):
        read_meta(str(tmp_path))
    with pytest.raises(MissingFileError, match="missing .*nothere.pkl"):
        read_nanogpt_meta(str(tmp_path / "nothere.pkl"))


# ---------------------------------------------------------------------- training and sampling

def test_train_and_sample_on_a_nanogpt_char_folder(tmp_path, capsys):
    """A folder as nanoGPT leaves it (no meta.json): train.py reads it as characters, the checkpoint
    records the char tokenizer, and sample.py decodes with it."""
    import torch
    from conftest import TINY_MODEL, run_train
    data = prepared(tmp_path)
    name = json.loads((data / "meta.json").read_text())["tokenizer"]
    (data / "meta.json").unlink()
    out = tmp_path / "out"
    run_train([*TINY_MODEL, f"--dataset={data}", f"--out_dir={out}", "--max_iters=2", "--eval_interval=2",
               "--eval_iters=1"])
    assert torch.load(out / "ckpt.pt", weights_only=True)["tokenizer"] == name
    import sample
    capsys.readouterr()
    sample.main([f"--out_dir={out}", "--start=All:", "--num_samples=1", "--max_new_tokens=20", "--device=cpu"])
    text = capsys.readouterr().out.split("\n---------------")[0]
    assert text.startswith("All:") and len(text) == 24  # one character per token
    assert set(text) <= set(TEXT) | {"\ufffd"}  # ids past the 30-odd characters (vocab_size=128) are U+FFFD


# ---------------------------------------------------------------------- the config

def test_config_train_shakespeare_char_loads():
    import train
    from configurator import load_config
    config = load_config(train.DEFAULTS, [str(REPO / "config" / "train_shakespeare_char.py")], train.TYPES)
    assert (config["dataset"], config["out_dir"], config["block_size"], config["n_layer"], config["n_embd"],
            config["dropout"], config["learning_rate"], config["lr_decay_iters"], config["beta2"]) == \
        ("shakespeare_char", "out-shakespeare-char", 256, 6, 384, 0.2, 1e-3, 5000, 0.99)
    assert config["vocab_size"] == train.DEFAULTS["vocab_size"]  # not set by the config: the data's meta gives it
