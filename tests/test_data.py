"""Dataset preparation round trips and the loader's checks."""

import json

import numpy as np
import pytest

from data.common import EOT_TOKEN, open_split, sample_batch, write_meta, write_split


def decode_docs(path, enc):
    ids = np.fromfile(path, dtype=np.uint16).tolist()
    docs, current = [], []
    for t in ids:
        if t == EOT_TOKEN:
            docs.append(enc.decode(current))
            current = []
        else:
            current.append(t)
    assert not current, "every document ends with the end-of-text token"
    return docs


def test_local_prepare_round_trip(shared, tmp_path):
    from data.common import get_tokenizer
    from data.local import prepare
    texts = {"a.txt": "First paragraph of A.\n\nSecond — with ünïcode.\n\nThird one.\n", "b.txt": "B one.\r\n\r\nB two.\r\n"}
    folder = tmp_path / "in"
    folder.mkdir()
    for name, text in texts.items():
        (folder / name).write_text(text, encoding="utf-8", newline="")
    (folder / "skip.md").write_text("not a .txt file")
    out = tmp_path / "out"
    summary = prepare.main(["--input", str(folder), "--out_dir", str(out), "--doc_chars", "5", "--val_fraction", "0.3"])
    enc = get_tokenizer()
    train, val = decode_docs(out / "train.bin", enc), decode_docs(out / "val.bin", enc)
    # decode(encode(text)) == text for every document, none lost, none invented
    expected = ["First paragraph of A.", "Second — with ünïcode.", "Third one.", "B one.", "B two."]
    assert sorted(train + val) == sorted(expected)
    assert val == ["Third one.", "B two."]  # the tail of each file is held out
    meta = json.loads((out / "meta.json").read_text())
    assert meta["train"]["tokens"] == len(np.fromfile(out / "train.bin", dtype=np.uint16)) == summary["train"]["tokens"]
    assert meta["train"]["documents"] == 3 and meta["val"]["documents"] == 2
    assert meta["vocab_size"] == 50257 and meta["dtype"] == "uint16"
    for split in ("train", "val"):
        assert meta[split]["max_token_id"] == int(np.fromfile(out / f"{split}.bin", dtype=np.uint16).max())


def test_shakespeare_and_wikitext_prepare_offline(shared, tmp_path):
    from data.common import get_tokenizer
    from data.shakespeare import prepare as shakespeare
    from data.wikitext103 import prepare as wikitext
    text = "ROMEO:\nBut soft, what light.\n" * 50
    (tmp_path / "input.txt").write_text(text)
    shakespeare.main(["--input", str(tmp_path / "input.txt"), "--out_dir", str(tmp_path / "sh")])
    enc = get_tokenizer()
    joined = "".join(decode_docs(tmp_path / "sh" / "train.bin", enc) + decode_docs(tmp_path / "sh" / "val.bin", enc))
    assert joined == text
    raw = tmp_path / "wt"
    raw.mkdir()
    (raw / "wiki.valid.raw").write_text(" \n = Alpha = \n \n Alpha is a letter . \n \n = Beta = \n \n Beta follows . \n")
    with pytest.raises(FileNotFoundError, match="train_from_valid"):
        wikitext.main(["--input", str(raw), "--out_dir", str(tmp_path / "w")])
    wikitext.main(["--input", str(raw), "--out_dir", str(tmp_path / "w"), "--train_from_valid"])
    assert decode_docs(tmp_path / "w" / "val.bin", enc) == [" = Alpha = \n Alpha is a letter . ", " = Beta = \n Beta follows . "]


def test_openwebtext_prepare_from_local_folder(shared, tmp_path):
    pytest.importorskip("datasets")
    from data.common import get_tokenizer
    from data.openwebtext import prepare
    docs = tmp_path / "docs"
    docs.mkdir()
    texts = [f"Document number {i} says hello {'again ' * i}." for i in range(40)]
    for i, t in enumerate(texts):
        (docs / f"{i:03d}.txt").write_text(t)
    prepare.main(["--input", str(docs), "--out_dir", str(tmp_path / "owt"), "--num_proc", "1"])
    enc = get_tokenizer()
    got = decode_docs(tmp_path / "owt" / "train.bin", enc) + decode_docs(tmp_path / "owt" / "val.bin", enc)
    assert sorted(got) == sorted(texts)


def test_loader_checks(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare"):
        open_split(str(tmp_path), "train", 8)
    write_split(str(tmp_path / "train.bin"), [list(range(100))])
    assert len(open_split(str(tmp_path), "train", 8)) == 100  # no meta.json: a nanoGPT folder (tests/test_tokenizer.py)
    write_meta(str(tmp_path))
    with pytest.raises(ValueError, match="vocabulary of 50257 tokens but the model has vocab_size=1000"):
        open_split(str(tmp_path), "train", 8, vocab_size=1000)
    with pytest.raises(ValueError, match="too few for block_size=200"):
        open_split(str(tmp_path), "train", 200)
    with open(tmp_path / "train.bin", "ab") as f:
        f.write(b"\x00")
    with pytest.raises(ValueError, match="odd number of bytes"):
        open_split(str(tmp_path), "train", 8)
    (tmp_path / "meta.json").write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        open_split(str(tmp_path), "train", 8)


def test_batches_are_stateless_and_shifted(tmp_path):
    write_split(str(tmp_path / "train.bin"), [list(range(1000))])
    write_meta(str(tmp_path))
    data = open_split(str(tmp_path), "train", 16)
    x, y = sample_batch(data, 4, 16, (1, 0, 5, 2))
    x2, _ = sample_batch(data, 4, 16, (1, 0, 5, 2))
    x3, _ = sample_batch(data, 4, 16, (1, 0, 5, 3))
    assert np.array_equal(x, x2) and not np.array_equal(x, x3)
    assert np.array_equal(x[:, 1:], y[:, :-1]) and x.shape == (4, 16) and x.dtype == np.int64


def test_loader_checks_the_largest_token_id_and_the_token_count(tmp_path):
    from errors import InputError
    write_split(str(tmp_path / "train.bin"), [list(range(100)) + [300]])
    write_meta(str(tmp_path), vocab_size=256)  # no max_token_id (an older meta.json): the loader scans the file
    with pytest.raises(InputError, match="train.bin holds token id 300 but the model has vocab_size=300"):
        open_split(str(tmp_path), "train", 8, vocab_size=300)
    assert len(open_split(str(tmp_path), "train", 8, vocab_size=301)) == 101
    write_meta(str(tmp_path), vocab_size=256, train={"tokens": 101, "max_token_id": 300})  # recorded: no scan
    with pytest.raises(InputError, match="holds token id 300"):
        open_split(str(tmp_path), "train", 8, vocab_size=300)
    write_meta(str(tmp_path), train={"tokens": 90, "max_token_id": 300})
    with pytest.raises(InputError, match="holds 101 tokens but .*meta.json says 90"):
        open_split(str(tmp_path), "train", 8)
