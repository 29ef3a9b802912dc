"""Shared test fixtures. The offline data folder (../shared beside the checkout) is found
through DISPERSE_SHARED; tests that need it skip when it is absent."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def shared_dir():
    return Path(os.environ.get("DISPERSE_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared():
    path = shared_dir()
    if not (path / "tiktoken").is_dir():
        pytest.skip(f"offline data folder not found at {path} (set DISPERSE_SHARED)")
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str((path / "tiktoken").resolve()))
    return path


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A prepared dataset of synthetic token ids with learnable structure (repeated
    ramps over a 100-token alphabet), so tests need no tokenizer."""
    from data.common import write_meta, write_split
    out = tmp_path_factory.mktemp("tiny_data")
    rng = np.random.default_rng(0)
    for split, n_docs in (("train", 400), ("val", 40)):
        docs = []
        for _ in range(n_docs):
            start, step = rng.integers(0, 100), rng.integers(1, 4)
            docs.append([int((start + step * i) % 100) for i in range(rng.integers(20, 60))])
        write_split(str(out / f"{split}.bin"), docs)
    write_meta(str(out), source="synthetic", tokenizer="gpt2", vocab_size=100)  # ids 0..99: GPT-2 ids for the tools that decode them
    return out


TINY_MODEL = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--vocab_size=128",
              "--batch_size=4", "--gradient_accumulation_steps=1", "--device=cpu", "--dtype=float32", "--compile=False", "--bias=True"]


def run_train(args, cwd=REPO, env_extra=None, torchrun_nproc=None, check=True):
    """Run train.py in a subprocess, as a user would."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    if torchrun_nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun_nproc}",
               str(REPO / "train.py"), *args]
    else:
        cmd = [sys.executable, str(REPO / "train.py"), *args]
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"train.py failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def read_metrics(out_dir):
    import json
    with open(Path(out_dir) / "metrics.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def tiny_hf_model(family, vocab_size=101, **overrides):
    """A transformers causal LM of a family (gpt2, llama, qwen2, qwen3) with 2 layers of width 32, at
    random init, with every weight (norm gains and biases too) perturbed at random so that a
    wrongly mapped tensor cannot hide. Built offline from transformers' own config classes."""
    import torch
    import transformers
    common = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    config = {
        "gpt2": lambda: transformers.GPT2Config(vocab_size=vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                                resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, **overrides),
        "llama": lambda: transformers.LlamaConfig(**{**common, "rope_theta": 5e5, "rms_norm_eps": 1e-5, **overrides}),
        "qwen2": lambda: transformers.Qwen2Config(**{**common, **overrides}),
        "qwen3": lambda: transformers.Qwen3Config(**{**common, "head_dim": 16, "rope_theta": 1e6,
                                                     "tie_word_embeddings": True, **overrides}),
    }[family]()
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()
