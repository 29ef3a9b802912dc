"""Any tokenizer end to end: tiktoken's GPT-2 and Hugging Face tokenizer folders, uint16 and
uint32 token files, nanoGPT folders, the tokenizer a checkpoint records, and lm-eval's
(HFLM 0.4.13) encoding rules for a tokenizer that adds a BOS."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, TINY_MODEL, run_train
from data.common import get_tokenizer, open_split, read_meta, token_dtype
from errors import InputError, MissingFileError

WORDS = "the river model token layer green quickly north history music paper seven".split()


def word_tokenizer(folder, first_id=0, bos=False):
    """A Hugging Face tokenizer folder: one id per word of WORDS (from first_id on, after filler
    entries), <unk>=0, <eos>=1, <s>=2; with bos, encode() puts <s> in front as Llama's does."""
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    vocab = {"<unk>": 0, "<eos>": 1, "<s>": 2}
    vocab.update({f"<filler{i}>": i for i in range(3, first_id)})
    vocab.update({w: max(first_id, 3) + j for j, w in enumerate(WORDS)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>",
                            bos_token="<s>" if bos else None).save_pretrained(str(folder))
    return str(folder)


def word_text(n_paragraphs, seed=0):
    rng = np.random.default_rng(seed)
    return "\n\n".join(" ".join(rng.choice(WORDS, size=30)) for _ in range(n_paragraphs))


def test_dtype_follows_the_vocabulary():
    assert token_dtype(50257) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32 and token_dtype(151936) == np.uint32


def test_bad_tokenizer_names_are_input_errors(tmp_path):
    with pytest.raises(MissingFileError, match="no/such/folder"):
        get_tokenizer("./no/such/folder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="could not load it as a folder"):
        get_tokenizer(str(tmp_path / "empty"))
    with pytest.raises(InputError, match="tokenizer=''"):
        get_tokenizer("")
    # the same from a preparer's command line: one line, exit status 1, no traceback, nothing written
    text = tmp_path / "a.txt"
    text.write_text(word_text(4))
    result = subprocess.run([sys.executable, "-m", "data.local.prepare", "--input", str(text), "--out_dir",
                             str(tmp_path / "out"), "--tokenizer", str(tmp_path / "empty")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: tokenizer=")
    assert not (tmp_path / "out").exists()


def test_gpt2_hugging_face_folder_gives_tiktoken_ids(shared):
    """shared/tokenizers/gpt2-hf through transformers = tiktoken's gpt2, on 100k characters of the corpus."""
    pytest.importorskip("transformers")
    ours, hf_model = get_tokenizer("gpt2"), get_tokenizer(str(shared / "tokenizers" / "gpt2-hf"))
    assert (ours.backend, hf_model.backend) == ("tiktoken", "huggingface")
    assert (hf_model.vocab_size, hf_model.eot, hf_model.prefix_token) == (ours.vocab_size, ours.eot, ours.prefix_token) == (50257, 50256, 50256)
    text = (shared / "corpus" / "austen.txt").read_text(encoding="utf-8")[:100_000]
    ids = ours.encode(text)
    assert len(ids) > 15_000 and hf_model.encode(text) == ids
    assert hf_model.encode_batch([text[:500], text[500:900]]) == ours.encode_batch([text[:500], text[500:900]])
    special = "Question: a<|endoftext|>b"
    assert hf_model.encode_special(special) == ours.encode_special(special) and 50256 in ours.encode_special(special)
    assert 50256 not in hf_model.encode(special)  # plain text: the special token's text is text
    assert hf_model.decode(ids[:50]) == ours.decode(ids[:50]) == text[: len(ours.decode(ids[:50]))]


def test_nanogpt_folder_is_read_as_gpt2_uint16_with_a_notice(tmp_path, capsys):
    ids = np.arange(500, dtype=np.uint16) * 100  # ids up to 49900: GPT-2's
    ids.tofile(tmp_path / "train.bin")
    ids[:300].tofile(tmp_path / "val.bin")
    meta = read_meta(str(tmp_path))
    assert (meta["tokenizer"], meta["dtype"], meta["vocab_size"]) == ("gpt2", "uint16", 50257)
    train = open_split(str(tmp_path), "train", 16, vocab_size=50304, meta=meta)
    val = open_split(str(tmp_path), "val", 16, vocab_size=50304)
    assert np.array_equal(train, ids) and len(val) == 300
    notices = [line for line in capsys.readouterr().err.splitlines() if "no meta.json" in line]
    assert len(notices) == 1 and "nanoGPT" in notices[0]  # one line, once per folder


def test_uint32_end_to_end(tmp_path, capsys):
    """A 66012-id tokenizer: prepare -> uint32 files -> loader -> train -> checkpoint records the
    tokenizer -> sample.py, eval.condensation and eval.benchmarks use it without being told."""
    tok_dir = word_tokenizer(tmp_path / "tok", first_id=66000)
    tok = get_tokenizer(tok_dir)
    assert tok.vocab_size == 66012 and tok.eot == 1
    text = tmp_path / "text.txt"
    text.write_text(word_text(60))
    data = tmp_path / "data"
    from data.local import prepare
    prepare.main(["--input", str(text), "--out_dir", str(data), "--doc_chars", "400", "--tokenizer", tok_dir])
    meta = json.loads((data / "meta.json").read_text())
    assert (meta["tokenizer"], meta["vocab_size"], meta["dtype"]) == (tok_dir, 66012, "uint32")
    assert meta["train"]["max_token_id"] == 66011
    train = open_split(str(data), "train", 32, vocab_size=66048)
    assert train.dtype == np.uint32 and (data / "train.bin").stat().st_size == 4 * len(train)
    # the file is the documents' ids, each followed by eos: decode it back to the words
    first_doc = list(train[: list(train).index(1)])
    assert min(first_doc) >= 66000 and tok.decode(first_doc).split() == text.read_text().split()[: len(first_doc)]

    bench = tmp_path / "bench" / "piqa"
    bench.mkdir(parents=True)
    rows = [{"goal": "the river", "sol1": "green paper", "sol2": "north music", "label": i % 2} for i in range(4)]
    (bench / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    model_args = [a for a in TINY_MODEL if not a.startswith(("--vocab_size", "--n_embd"))]
    run_train([*model_args, "--n_embd=16", "--vocab_size=66048", f"--dataset={data}", f"--out_dir={out}",
               "--max_iters=3", "--eval_interval=3", "--eval_iters=1", "--eval_tasks=piqa", "--eval_limit=4",
               f"--eval_data_dir={bench.parent}", "--probe_interval=3", f"--probe_text={text}",
               "--probe_n_seq=2", "--probe_seq_len=16"])
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert ckpt["tokenizer"] == tok_dir and ckpt["iter_num"] == 3
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "val_loss" in line]
    assert evals[-1]["bench/piqa/acc"] in (0.0, 0.25, 0.5, 0.75, 1.0) and "probe/spearman" in evals[-1]

    import sample
    capsys.readouterr()
    sample.main([f"--out_dir={out}", "--start=the river", "--num_samples=1", "--max_new_tokens=3", "--device=cpu"])
    assert capsys.readouterr().out.startswith("the river ")  # decoded by the word tokenizer, not GPT-2's

    from eval import condensation
    probe = condensation.main(["--ckpt", str(out), "--text", str(text), "--n-seq", "2", "--seq-len", "16",
                               "--out", str(tmp_path / "probe")])
    assert probe["meta"]["tokenizer"] == tok_dir and probe["meta"]["text_tokens"] == 60 * 30
    from load import load_model
    direct = condensation.probe_hidden_states(
        load_model(str(out))[0], condensation.sample_sequences(np.asarray(tok.encode(text.read_text())), 2, 16, 0),
        progress=False)
    assert [l["mean_cos"] for l in probe["layers"]] == pytest.approx([l["mean_cos"] for l in direct["layers"]], abs=1e-9)
    probe_bin = condensation.main(["--ckpt", str(out), "--text", str(data / "val.bin"), "--n-seq", "2",
                                   "--seq-len", "16", "--out", str(tmp_path / "probe_bin")])  # uint32 ids read as is
    assert probe_bin["meta"]["text_tokens"] == meta["val"]["tokens"]


def test_checkpoint_without_a_tokenizer_entry_means_gpt2(tmp_path):
    import checkpoint
    import hf
    from load import load_model
    from model import GPT, GPTConfig, model_config_to_dict
    model = GPT(GPTConfig(block_size=8, vocab_size=64, n_layer=1, n_head=1, n_embd=8))
    checkpoint.write(str(tmp_path / "ckpt.pt"), {"model": model.state_dict(), "model_args": model_config_to_dict(model.config)})
    assert load_model(str(tmp_path))[1]["tokenizer"] == "gpt2"
    hf.export(model, str(tmp_path / "hf_model"))  # weights and config.json, no tokenizer files: GPT-2's
    assert load_model(str(tmp_path / "hf_model"))[1]["tokenizer"] == "gpt2"
    word_tokenizer(tmp_path / "hf_model")  # now the folder has its own
    assert load_model(str(tmp_path / "hf_model"))[1]["tokenizer"] == str(tmp_path / "hf_model")


def test_hflm_rules_for_a_tokenizer_that_adds_bos(tmp_path):
    """lm-eval 0.4.13's HFLM with add_bos_token unset: tok_encode leaves special tokens to the
    tokenizer (a BOS here) unless the text starts with the prefix token's text; an empty context
    is [prefix] with the continuation encoded without specials; rolling windows start from the
    prefix (bos) and score the BOS that tok_encode put in front."""
    from eval import scoring as S
    from transformers import AutoTokenizer
    folder = word_tokenizer(tmp_path / "tok", bos=True)
    enc, hf_model = get_tokenizer(folder), AutoTokenizer.from_pretrained(folder)
    assert (enc.bos, enc.eos, enc.eot, enc.prefix_token) == (2, 1, 1, 2)
    ctx, cont = S.encode_pair(enc, "the river ", "green paper")
    assert ctx == hf_model.encode("the river") and ctx[0] == 2 and ctx.count(2) == 1
    assert ctx + cont == hf_model.encode("the river green paper") and cont == hf_model.encode("green paper", add_special_tokens=False)
    assert S.encode(enc, "<s> the river") == hf_model.encode("<s> the river", add_special_tokens=False) == [2, 3, 4]
    assert S.encode_pair(enc, "", "green paper") == ([2], hf_model.encode("green paper", add_special_tokens=False))
    tokens = S.encode(enc, "the river green")
    assert tokens == [2, 3, 4, 8]
    assert S.rolling_windows(tokens, 8, enc.prefix_token) == [([2], [2, 3, 4, 8])]
    # a tokenizer without a BOS (GPT-2's, Qwen's) adds nothing, and its prefix token is its eos
    plain = get_tokenizer(word_tokenizer(tmp_path / "plain"))
    assert plain.prefix_token == 1 and S.encode(plain, "the river") == [3, 4]
