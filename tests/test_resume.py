"""Resuming a run continues it as it was (its settings come from its checkpoint; only some may change,
and a changed one is named), and nanoGPT's checkpoints load for sampling and resume here."""

import os
import pickle

import numpy as np
import pytest
import torch

import checkpoint
from conftest import TINY_MODEL, read_metrics
from errors import InputError

# dropout and subsampled dispersion: a resumed run that lost any setting or generator would drift
RUN = [*TINY_MODEL, "--dropout=0.1", "--dispersion=angular", "--dispersion_max_tokens=8", "--eval_interval=2",
       "--eval_iters=2", "--warmup_iters=2", "--lr_decay_iters=8", "--learning_rate=3e-3"]


def train(argv, capsys=None):
    import train as train_py
    train_py.main([str(a) for a in argv])
    return capsys.readouterr() if capsys else None


@pytest.fixture(scope="module")
def first_half(tiny_dataset, tmp_path_factory):
    """A run stopped at iteration 4 (block_size 32, angular dispersion), to be resumed."""
    out = tmp_path_factory.mktemp("first_half") / "out"
    train([*RUN, f"--dataset={tiny_dataset}", f"--out_dir={out}", "--max_iters=4"])
    return out


def copy_of(run, tmp_path):
    import shutil
    shutil.copytree(run, tmp_path / "out")
    return tmp_path / "out"


def test_resume_with_only_out_dir_and_max_iters_continues_the_run_exactly(first_half, tiny_dataset, tmp_path, capsys):
    out = copy_of(first_half, tmp_path)
    printed = train(["--init_from=resume", f"--out_dir={out}", "--max_iters=8"], capsys).out
    assert "resuming from" in printed and "at step 4; changed: max_iters 4 -> 8" in printed
    assert "angular loss" in printed  # the auxiliary-term line: dispersion still on
    ckpt = checkpoint.read(str(out / "ckpt.pt"))
    assert ckpt["iter_num"] == 8
    assert (ckpt["config"]["dispersion"], ckpt["config"]["block_size"], ckpt["config"]["dropout"]) == ("angular", 32, 0.1)
    train([*RUN, f"--dataset={tiny_dataset}", f"--out_dir={tmp_path / 'straight'}", "--max_iters=8"])
    resumed, straight = read_metrics(out), read_metrics(tmp_path / "straight")
    assert [r["iter"] for r in resumed] == [r["iter"] for r in straight]
    for a, b in zip(resumed, straight):
        for key in ("loss", "ce", "aux", "val_loss"):
            assert a.get(key) == b.get(key), (key, a, b)  # bit for bit
    assert any("aux" in r for r in resumed if r["iter"] >= 4)


def test_repeating_the_settings_or_changing_only_allowed_ones_is_fine(first_half, tiny_dataset, tmp_path, capsys):
    out = copy_of(first_half, tmp_path)
    moved = tmp_path / "elsewhere" / os.path.basename(tiny_dataset)  # the same data folder, in another place
    import shutil
    shutil.copytree(tiny_dataset, moved)
    printed = train([*RUN, f"--dataset={moved}", f"--out_dir={out}", "--init_from=resume", "--max_iters=6",
                     "--eval_iters=1", "--vocab_size=None"], capsys).out
    assert "changed: " in printed
    changed = printed.split("changed: ")[1].splitlines()[0]
    assert "max_iters 4 -> 6" in changed and "eval_iters 2 -> 1" in changed and f"-> '{moved}'" in changed
    assert "vocab_size" not in changed and "dispersion" not in changed  # repeated as they were


@pytest.mark.parametrize("given, message", [
    (["--dispersion=none"], "dispersion='none' (command line) where the run has dispersion='angular'"),
    (["--block_size=64", "--seed=7"], "seed=7 (command line) where the run has seed=1337; block_size=64 (command line) "
                                      "where the run has block_size=32. Leave them out"),
    (["CONFIG"], "n_embd=64 ({config}) where the run has n_embd=32"),
])
def test_a_setting_that_defines_the_run_is_refused_on_resume(first_half, tmp_path, given, message):
    out = copy_of(first_half, tmp_path)
    config = tmp_path / "bigger.py"
    config.write_text("n_embd = 64\nmax_iters = 6\n")
    before = (out / "ckpt.pt").read_bytes()
    argv = ["--init_from=resume", f"--out_dir={out}", *[str(config) if g == "CONFIG" else g for g in given]]
    with pytest.raises(InputError) as e:
        train(argv)
    assert message.format(config=config) in str(e.value)
    assert "another --out_dir" in str(e.value) and f"--init_from={out / 'ckpt.pt'}" in str(e.value)  # the fix
    assert (out / "ckpt.pt").read_bytes() == before


def test_changing_max_iters_under_a_max_iters_schedule_says_the_decay_moves(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "out"
    train([*TINY_MODEL, f"--dataset={tiny_dataset}", f"--out_dir={out}", "--max_iters=2", "--eval_iters=1"])
    printed = train(["--init_from=resume", f"--out_dir={out}", "--max_iters=3"], capsys).out
    assert "max_iters 2 -> 3, the learning rate now decays until iteration 3" in printed


# ---------------------------------------------------------------------- nanoGPT's checkpoints

CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # shakespeare_char's 65
NANO_ARGS = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, bias=False, vocab_size=len(CHARS), dropout=0.0)


def nanogpt_run(root):
    """What nanoGPT leaves after `python train.py config/train_shakespeare_char.py` (shrunk): root/data/chars
    (train.bin, val.bin as uint16 character ids, meta.pkl; no meta.json) and root/out/ckpt.pt at iteration 2,
    its dict built by hand as nanoGPT's train.py builds it: nanoGPT's model is ours with the erf GELU and a
    65-row embedding (ours pads to 128); torch.compile's '_orig_mod.' names; the causal-mask buffer
    '.attn.bias' it keeps without flash attention; its AdamW state; best_val_loss a tensor; its config.
    Returns (the same model as ours, the data folder, the checkpoint's path)."""
    from model import GPT, GPTConfig
    data = root / "data" / "chars"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 20000), ("val", 2000)):  # character ramps: learnable
        starts = rng.integers(0, len(CHARS), n // 20)
        np.concatenate([(s + np.arange(20)) % len(CHARS) for s in starts]).astype(np.uint16).tofile(data / f"{split}.bin")
    stoi, itos = {c: i for i, c in enumerate(CHARS)}, dict(enumerate(CHARS))
    with open(data / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(CHARS), "itos": itos, "stoi": stoi}, f)

    torch.manual_seed(0)
    model = GPT(GPTConfig(**NANO_ARGS, mlp="gelu_exact"))
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    for _ in range(2):
        x = torch.randint(0, len(CHARS), (4, 32))
        model(x, x)[1].backward()
        optimizer.step()
        optimizer.zero_grad()
    V = len(CHARS)
    state = {}
    for name, value in model.state_dict().items():
        state["_orig_mod." + name] = value[:V].clone() if name in ("transformer.wte.weight", "lm_head.weight") else value
        if name.endswith("attn.c_attn.weight"):
            state["_orig_mod." + name.replace("c_attn.weight", "bias")] = torch.ones(32, 32).tril().view(1, 1, 32, 32)
    opt_state = optimizer.state_dict()
    for key in ("exp_avg", "exp_avg_sq"):
        opt_state["state"][0][key] = opt_state["state"][0][key][:V].clone()
    for group in opt_state["param_groups"]:
        group["fused"] = None  # nanoGPT's AdamW on a CPU
    config = dict(out_dir="out", eval_interval=2, log_interval=1, eval_iters=2, eval_only=False,
                  always_save_checkpoint=True, init_from="scratch", wandb_log=False, wandb_project="owt",
                  wandb_run_name="gpt2", dataset="chars", gradient_accumulation_steps=1, batch_size=4, block_size=32,
                  n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=False, learning_rate=1e-3, max_iters=2,
                  weight_decay=0.1, beta1=0.9, beta2=0.99, grad_clip=1.0, decay_lr=True, warmup_iters=1,
                  lr_decay_iters=6, min_lr=1e-4, backend="nccl", device="cuda", dtype="bfloat16", compile=True)
    ckpt = {"model": state, "optimizer": opt_state, "model_args": dict(NANO_ARGS), "iter_num": 2,
            "best_val_loss": torch.tensor(4.1), "config": config}
    (root / "out").mkdir()
    torch.save(ckpt, root / "out" / "ckpt.pt")
    torch.load(root / "out" / "ckpt.pt", weights_only=True)  # nanoGPT's files open safely
    return model.eval(), data, root / "out" / "ckpt.pt"


@pytest.fixture
def nano(tmp_path):
    return nanogpt_run(tmp_path / "nanoGPT")


def test_a_nanogpt_checkpoint_loads_with_equal_logits_and_its_characters(nano, capsys):
    from load import load_model
    source, data, path = nano
    model, info = load_model(str(path.parent))
    assert "is a nanoGPT checkpoint" in capsys.readouterr().err
    assert model.config.vocab_size == 65 and model.config.mlp == "gelu_exact" and not model.config.bias
    x = torch.randint(0, 65, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(x)[0], source(x)[0])
    from data.common import get_tokenizer, nanogpt_char_tokenizer
    assert info["tokenizer"] == nanogpt_char_tokenizer(str(data / "meta.pkl")).name  # nanoGPT/data/chars beside out
    assert get_tokenizer(info["tokenizer"]).decode([20, 21]) == CHARS[20:22]


def test_sample_py_samples_a_nanogpt_checkpoint(nano, capsys):
    import sample
    _, _, path = nano
    sample.main([f"--out_dir={path.parent}", "--start=ABC", "--num_samples=1", "--max_new_tokens=12", "--device=cpu"])
    text = capsys.readouterr().out.split("\n---------------")[0]
    assert text.startswith("ABC") and len(text) == 15 and set(text) <= set(CHARS)


def test_train_resumes_a_nanogpt_run(nano, capsys):
    from data.common import open_split, sample_batch
    source, data, path = nano
    original = path.read_bytes()
    printed = train(["--init_from=resume", f"--out_dir={path.parent}", f"--dataset={data}", "--max_iters=4",
                     "--compile=False"], capsys)
    out = printed.out
    assert "resuming from" in out and "at step 2; changed: dataset 'chars' -> " in out  # the same folder, elsewhere
    assert "will not match nanoGPT's own resumed run" in out
    assert (path.parent / "ckpt_nanogpt.pt").read_bytes() == original  # kept, for nanoGPT
    ckpt = checkpoint.read(str(path))  # now ours: checksummed, with RNG states
    assert ckpt["iter_num"] == 4 and "rng" in ckpt and ckpt["model_args"]["mlp"] == "gelu_exact"
    assert ckpt["config"]["device"] == "auto" and ckpt["config"]["lr_decay_iters"] == 6  # machine: ours; schedule: its
    assert ckpt["tokenizer"].startswith("char:")
    assert ckpt["optimizer"]["state"][0]["step"].item() == 4  # AdamW continued from nanoGPT's 2 steps
    # its first evaluation, at step 2, scores nanoGPT's weights as they were
    val = open_split(str(data), "val", 32)
    losses = []
    with torch.no_grad():
        for k in range(2):
            x, y = (torch.from_numpy(a) for a in sample_batch(val, 4, 32, (1337, 2, k)))
            losses.append(source(x, y)[1].item())
    first = [r for r in read_metrics(path.parent) if "val_loss" in r][0]
    assert first["iter"] == 2 and first["val_loss"] == pytest.approx(sum(losses) / 2, abs=1e-6)
