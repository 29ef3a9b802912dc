"""
Sample text from a trained model (or a Hugging Face one), with the tokenizer its checkpoint records.

    python sample.py --out_dir=out-local --start="The king said" --num_samples=3
    python sample.py --init_from=path/to/hf-model-dir --start=FILE:prompt.txt

Settings are checked like train.py's: config files and --key=value overrides.
"""

import dataclasses
import os
import sys
from dataclasses import dataclass

import torch

import system
from configurator import HelpSource, load_config
from data.common import get_tokenizer
from errors import InputError, MissingFileError, run_cli
from load import load_model


@dataclass
class Config:
    init_from: str = "resume"  # 'resume' (the checkpoint in out_dir), a hub name ('gpt2', 'Qwen/Qwen3-0.6B') or a local HF directory
    out_dir: str = "out"  # the run whose ckpt.pt to sample (init_from=resume)
    start: str = "\n"  # the prompt; "FILE:prompt.txt" reads it from a file
    num_samples: int = 3  # samples to draw
    max_new_tokens: int = 200  # tokens per sample
    temperature: float = 0.8  # 1.0 samples the model's distribution, lower is more conservative, 0 is greedy
    top_k: int = 200  # keep only the top_k most likely tokens; 0 keeps all
    seed: int = 1337  # of the sampling generator
    device: str = "auto"  # auto, cpu, cuda, cuda:1, mps
    dtype: str = "auto"  # auto: bfloat16 on CUDA where supported, else float32
    compile: bool = False  # torch.compile the per-token forward pass
    tokenizer: str = ""  # empty: the checkpoint's (train.py records it) or the HF model's own; else gpt2, an HF folder or hub name
    allow_unsafe_pickle: bool = False  # open checkpoints not in the safe format (older or foreign files): that can run code


def main(argv):
    cfg = Config(**load_config(dataclasses.asdict(Config()), argv, help=HelpSource(__file__, "Config")))
    if cfg.dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise InputError(f"dtype={cfg.dtype!r}; choose auto, float32, bfloat16 or float16")
    dev = system.resolve_device(cfg.device)
    device_type = "cuda" if dev.startswith("cuda") else "cpu"
    ptdtype = {"auto": torch.bfloat16 if device_type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32,
               "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[cfg.dtype]

    path = cfg.out_dir if cfg.init_from == "resume" else cfg.init_from
    if cfg.init_from == "resume" and not os.path.exists(os.path.join(cfg.out_dir, "ckpt.pt")):
        raise MissingFileError(f"no checkpoint at {os.path.join(cfg.out_dir, 'ckpt.pt')}; train first or set --out_dir")
    prompt = cfg.start
    if prompt.startswith("FILE:"):
        if not os.path.isfile(prompt[5:]):
            raise MissingFileError(f"start={cfg.start!r}: no such file {prompt[5:]!r}")
        with open(prompt[5:], encoding="utf-8") as f:
            prompt = f.read()
    model, info = load_model(path, device=dev, allow_unsafe_pickle=cfg.allow_unsafe_pickle)
    model.eval()
    if cfg.compile:
        model.forward_cached = torch.compile(model.forward_cached)  # what generate runs for every new token
    enc = get_tokenizer(cfg.tokenizer or info["tokenizer"])
    ids = enc.encode_special(prompt)  # as Hugging Face encodes a prompt: with the tokenizer's BOS, if it has one
    if not ids:
        raise InputError(f"start={cfg.start!r} is an empty prompt; give at least one character (the default is a newline)")
    if max(ids) >= model.config.vocab_size:
        raise InputError(f"the prompt has token id {max(ids)} in the tokenizer {enc.name!r} but the model {path} "
                         f"has vocab_size={model.config.vocab_size}; it was trained on other token ids: pass the "
                         "tokenizer of its data (--tokenizer=...), or a prompt of ids below that")
    x = torch.tensor(ids, dtype=torch.long, device=dev)[None, ...]  # (1, T)
    generator = torch.Generator(device=dev).manual_seed(cfg.seed)
    autocast = torch.autocast(device_type=device_type, dtype=ptdtype) if ptdtype != torch.float32 else torch.no_grad()
    # progress on stderr, over every token of every sample; off when stderr is not a terminal (disable=None)
    from tqdm import tqdm
    bar = tqdm(total=cfg.num_samples * cfg.max_new_tokens, desc="sampling", unit="tok", disable=None,
               dynamic_ncols=True, leave=False)
    with torch.no_grad(), autocast:
        for _ in range(cfg.num_samples):
            y = model.generate(x, cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k or None,
                               generator=generator, on_token=lambda: bar.update(1))
            bar.write(enc.decode(y[0].tolist()), file=sys.stdout)  # above the bar, which stays at the bottom
            bar.write("---------------", file=sys.stdout)
    bar.close()


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
