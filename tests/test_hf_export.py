"""Exporting our models as Hugging Face folders (hf.py): every family of settings we train, bias=False
GPT-2 included, gives transformers' logits equal to ours and reads back as the same model; the
tokenizer files make AutoTokenizer encode as our tokenizer does; `python hf.py export` end to end."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO
import checkpoint
import hf
from data.common import char_tokenizer, get_tokenizer
from errors import InputError
from load import load_model
from model import GPT, GPTConfig, model_config_to_dict

transformers = pytest.importorskip("transformers")

GPT2_HF = "tokenizers/gpt2-hf"  # under shared/: GPT-2's tokenizer as Hugging Face files, the reference
GELU_EXACT = hf._has_exact_gelu()


def perturbed(config, seed=0):
    """Our GPT at random init with every weight (norm gains and biases too) moved at random, so that
    a wrongly mapped tensor cannot hide."""
    torch.manual_seed(seed)
    model = GPT(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def tiny(vocab_size=101, **settings):
    return GPTConfig(block_size=32, vocab_size=vocab_size, n_layer=2, n_head=4, n_embd=32, **settings)


MODERN = dict(norm="rmsnorm", pos_emb="rope", mlp="swiglu", n_inner=64, n_kv_head=2)  # as config.json spells them
MODELS = {  # name: (settings, the Hugging Face class they are written as)
    "gpt2 bias=False": (dict(bias=False), "GPT2LMHeadModel"),
    "gpt2 bias=True": (dict(bias=True), "GPT2LMHeadModel"),
    "gpt2 qkv_bias=False": (dict(bias=True, qkv_bias=False), "GPT2LMHeadModel"),
    "gpt2 qkv_bias only, untied": (dict(bias=False, qkv_bias=True, tie_embeddings=False, n_inner=48), "GPT2LMHeadModel"),
    "gpt2 exact gelu": (dict(bias=False, mlp="gelu_exact"), "GPT2LMHeadModel"),
    "llama": (dict(MODERN, bias=False, tie_embeddings=False, rope_theta=5e5), "LlamaForCausalLM"),
    "llama qkv_bias=False": (dict(MODERN, bias=True, qkv_bias=False), "LlamaForCausalLM"),
    "qwen2": (dict(MODERN, bias=False, qkv_bias=True, n_kv_head=4), "Qwen2ForCausalLM"),
    "qwen3": (dict(MODERN, bias=False, qk_norm=True, head_dim=16, n_kv_head=1, rope_theta=1e6), "Qwen3ForCausalLM"),
    "qwen3 qkv_bias": (dict(MODERN, bias=False, qkv_bias=True, qk_norm=True, n_kv_head=2), "Qwen3ForCausalLM"),
}


def ids(vocab_size=101, T=24, seed=0):
    return torch.randint(0, vocab_size, (2, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", MODELS)
def test_export_gives_transformers_our_logits_and_reads_back_as_the_same_model(name, tmp_path):
    settings, architecture = MODELS[name]
    if settings.get("mlp") == "gelu_exact" and not GELU_EXACT:
        pytest.skip("model.py has no mlp='gelu_exact'")
    ours = perturbed(tiny(**settings))
    x = ids()
    with torch.no_grad():
        logits = ours(x)[0]
    hf.export(ours, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == [architecture]
    theirs, loading = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert type(theirs).__name__ == architecture
    assert not any(loading.values()), loading  # every weight in the file (zero biases too), none left over
    theirs.eval()
    with torch.no_grad():
        assert (theirs(x).logits - logits).abs().max() <= 1e-5
    # and in again: the same settings (bias=False stays False) and the very same weights
    again = hf.load(str(tmp_path / "out"))
    assert again.config == ours.config
    assert again.state_dict().keys() == ours.state_dict().keys()
    for key, value in ours.state_dict().items():  # the embedding's padding rows (never read) are not exported
        rows = ours.config.vocab_size if key in ("transformer.wte.weight", "lm_head.weight") else None
        assert torch.equal(again.state_dict()[key][:rows], value[:rows]), key


def test_biases_trained_in_transformers_are_kept_when_read_back(tmp_path):
    """The zero biases of a bias=False export are dropped on reading only while they are zero."""
    ours = perturbed(tiny(bias=False))
    hf.export(ours, tmp_path / "out")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        theirs.transformer.h[1].mlp.c_fc.bias.add_(0.5)  # what fine-tuning in transformers does
    theirs.save_pretrained(tmp_path / "tuned")
    again = hf.load(str(tmp_path / "tuned")).eval()
    assert again.config.bias is True
    with torch.no_grad():
        assert (again(ids())[0] - theirs(ids()).logits).abs().max() <= 1e-5


@pytest.mark.parametrize("settings, message", [
    (dict(n_kv_head=2), r"n_kv_head=2 cannot be written as GPT2LMHeadModel: GPT-2 has no grouped-query attention; "
                        r"Llama and Qwen do \(norm='rmsnorm', pos_emb='rope', mlp='swiglu'\)"),
    (dict(qk_norm=True), r"qk_norm=True cannot be written as GPT2LMHeadModel: .*Qwen3 does .*qk_norm=True"),
    (dict(head_dim=16), r"head_dim=16 cannot be written as GPT2LMHeadModel"),
    (dict(MODERN, qk_norm=True, bias=True), r"qk_norm=True\) with bias=True cannot be written as Qwen3ForCausalLM"),
])
def test_settings_no_family_has_are_named(settings, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        hf.export(GPT(tiny(**settings)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_gpt2_activation_functions(monkeypatch):
    hc = dict(model_type="gpt2", vocab_size=10, n_layer=1, n_head=2, n_embd=8)
    for act in ("gelu_new", "gelu_pytorch_tanh"):
        assert hf.config_from_hf({**hc, "activation_function": act}).mlp == "gelu"
    assert hf.config_to_hf(GPTConfig(n_layer=1, n_head=2, n_embd=8))["activation_function"] == "gelu_new"
    if GELU_EXACT:  # Hugging Face's "gelu" is the exact erf GELU, nanoGPT's nn.GELU()
        assert hf.config_from_hf({**hc, "activation_function": "gelu"}).mlp == "gelu_exact"
        assert hf.config_to_hf(GPTConfig(n_layer=1, n_head=2, n_embd=8, mlp="gelu_exact"))["activation_function"] == "gelu"
    monkeypatch.setattr(hf, "_has_exact_gelu", lambda: False)  # a model.py without mlp="gelu_exact"
    with pytest.raises(ValueError, match="activation_function='gelu'"):
        hf.config_from_hf({**hc, "activation_function": "gelu"})


# ---------------------------------------------------------------------- tokenizer files

def test_gpt2_files_rebuilt_from_tiktoken_equal_gpt2s_own(shared):
    reference = shared / GPT2_HF
    want_vocab = json.loads((reference / "vocab.json").read_text(encoding="utf-8"))
    want_merges = [tuple(line.split(" ")) for line in (reference / "merges.txt").read_text(encoding="utf-8")
                   .splitlines()[1:]]
    for name in ("gpt2", "r50k_base"):  # the same ranks under two names
        vocab, merges = hf.gpt2_vocab_and_merges(get_tokenizer(name).wrapped)
        assert vocab == want_vocab and list(vocab.items()) == list(want_vocab.items())
        assert merges == want_merges  # order included: merge k made token 256 + k
        assert len(merges) == 50000


def test_gpt2_tokenizer_export_encodes_as_tiktoken(shared, tmp_path):
    model = GPT(GPTConfig(block_size=64, vocab_size=50257, n_layer=1, n_head=2, n_embd=16, bias=False))
    hf.export(model, tmp_path / "out", "gpt2")
    for name in ("vocab.json", "merges.txt"):  # as parsed data above; here even the bytes
        assert (tmp_path / "out" / name).read_bytes() == (shared / GPT2_HF / name).read_bytes()
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert (auto.bos_token_id, auto.eos_token_id, auto.unk_token_id) == (50256, 50256, 50256)
    text = (shared / "corpus" / "austen.txt").read_text(encoding="utf-8")[:50_000] + "  trailing \n\n  "
    enc = get_tokenizer("gpt2")
    assert auto(text, add_special_tokens=False)["input_ids"] == enc.encode(text)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (50256, 50256)
    assert hf.tokenizer_name(str(tmp_path / "out")) == "gpt2"


def test_huggingface_tokenizer_folder_is_copied(shared, tmp_path):
    # a folder of vocab.json + merges.txt, and one that save_pretrained wrote (tokenizer.json)
    fast = tmp_path / "fast"
    transformers.AutoTokenizer.from_pretrained(shared / GPT2_HF).save_pretrained(fast)
    text = (shared / "corpus" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:5_000]
    model = GPT(GPTConfig(block_size=64, vocab_size=50257, n_layer=1, n_head=2, n_embd=16))
    for source in (shared / GPT2_HF, fast):
        out = tmp_path / f"out_{source.name}"
        hf.export(model, out, str(source))
        names = sorted(n for n in os.listdir(source) if n in hf.TOKENIZER_FILES)
        assert names and sorted(set(os.listdir(out)) - {"config.json", "model.safetensors"}) == names
        assert all((out / n).read_bytes() == (source / n).read_bytes() for n in names)
        ours = get_tokenizer(str(source))
        assert transformers.AutoTokenizer.from_pretrained(out).encode(text) == ours.encode(text)
        assert hf.tokenizer_name(str(out)) == str(out)


def test_character_tokenizer_round_trip(tmp_path):
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\tSpeak, speak! (a , b . c ' d)  ?\n "
    tok = char_tokenizer(sorted(set(text + "é😀")))
    model = perturbed(tiny(vocab_size=tok.vocab_size, bias=False))
    hf.export(model, tmp_path / "out", tok.name)
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    for sample in (text, "é😀 ,\n", ""):
        assert auto.encode(sample) == tok.encode(sample)
        assert auto.decode(tok.encode(sample)) == sample
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["bos_token_id"] is None and config["eos_token_id"] is None
    # load_model names the character tokenizer itself (its folder has no eos, which get_tokenizer needs)
    assert load_model(str(tmp_path / "out"))[1]["tokenizer"] == tok.name


def test_bad_tokenizers_stop_before_anything_is_written(tmp_path):
    model = GPT(tiny())
    with pytest.raises(InputError, match="no such folder"):
        hf.export(model, tmp_path / "out", str(tmp_path / "missing"))
    assert not (tmp_path / "out").exists()


def test_an_unrelated_folder_is_never_replaced(tmp_path):
    model = GPT(tiny())
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(InputError, match="is not empty and is not a Hugging Face model folder written by hf.py export"):
        hf.export(model, tmp_path / "notes")
    assert os.listdir(tmp_path / "notes") == ["todo.txt"]
    hf.export(model, tmp_path / "out", char_tokenizer("abc").name)
    hf.export(model, tmp_path / "out")  # an earlier export is replaced whole: its tokenizer files go too
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "model.safetensors"]
    (tmp_path / "out" / "README.md").write_text("mine")
    with pytest.raises(InputError, match="holds README.md, which is not a Hugging Face model folder"):
        hf.export(model, tmp_path / "out")
    assert (tmp_path / "out" / "README.md").read_text() == "mine"
    assert not (tmp_path / "out.tmp").exists()


# ---------------------------------------------------------------------- checkpoints and the command line

def write_checkpoint(path, model, tokenizer):
    path.mkdir(parents=True, exist_ok=True)
    checkpoint.write(str(path / "ckpt.pt"), {"model": model.state_dict(), "model_args": model_config_to_dict(model.config),
                                              "iter_num": 10, "tokenizer": tokenizer})
    return path


@pytest.mark.parametrize("kind", ["tiktoken", "huggingface", "char"])
def test_checkpoint_exports_with_the_tokenizer_it_records(kind, shared, tmp_path, capsys):
    text = "It is a truth universally acknowledged,\nthat a single man... 'in want' of a wife!"
    name = {"tiktoken": "gpt2", "huggingface": str(shared / GPT2_HF), "char": char_tokenizer(sorted(set(text))).name}[kind]
    tok = get_tokenizer(name)
    model = perturbed(tiny(vocab_size=tok.vocab_size, bias=False))
    run = write_checkpoint(tmp_path / "run", model, name)
    hf.main(["export", str(run), str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert "GPT2LMHeadModel" in printed and "model_type gpt2" in printed and f"{name[:20]}" in printed
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert auto(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    x = torch.tensor([tok.encode(text)[:model.config.block_size]])
    with torch.no_grad():
        assert (theirs(x).logits - model(x)[0]).abs().max() <= 1e-5
    assert json.loads((tmp_path / "out" / "config.json").read_text())[hf.EXPORT_KEY]["tokenizer"] == name


def cli(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "hf.py"), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def test_command_line_end_to_end(shared, tmp_path):
    model = perturbed(tiny(vocab_size=50257, bias=False))
    run = write_checkpoint(tmp_path / "run", model, "gpt2")
    out = tmp_path / "hf_model"
    done = cli("export", str(run / "ckpt.pt"), str(out))
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}: GPT2LMHeadModel (model_type gpt2)" in done.stdout and "tokenizer gpt2" in done.stdout
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt"} <= set(os.listdir(out))
    again, info = load_model(str(out))
    assert again.config == model.config and info["tokenizer"] == "gpt2"
    # again over its own export, with --key value and no tokenizer: replaced whole
    done = cli("export", str(run), str(out), "--tokenizer", "none")
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    # refusals: one line on stderr, exit status 1, nothing touched
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    for args, message in (((str(run), str(tmp_path / "mine")), "is not empty and is not a Hugging Face model folder"),
                          ((str(tmp_path / "nowhere" / "ckpt.pt"), str(tmp_path / "x")), "no checkpoint file at"),
                          ((str(run), str(tmp_path / "x"), f"--tokenizer={tmp_path / 'no_tokenizer'}"), "no such folder"),
                          ((str(run), str(tmp_path / "x"), "--tokenizer=no-such-org/no-such-model"),  # offline
                           "'no-such-org/no-such-model': could not load it as a Hugging Face hub name")):
        done = cli("export", *args)
        assert done.returncode == 1 and done.stderr.startswith("error: ") and message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1
    assert os.listdir(tmp_path / "mine") == ["notes.txt"] and not (tmp_path / "x").exists()
    usage = cli("export", "--help").stdout
    assert "CHECKPOINT" in usage and "OUT_DIR" in usage and "--tokenizer" in usage
