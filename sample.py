"""
Sample text from a trained model (or a GPT-2 checkpoint).

    python sample.py --out_dir=out-local --start="The king said" --num_samples=3
    python sample.py --init_from=path/to/hf-gpt2-dir --start=FILE:prompt.txt

Settings are checked like train.py's: config files and --key=value overrides.
"""

import os
import sys

import torch

from configurator import ConfigError, load_config
from data.common import get_tokenizer
from model import load_model

# -----------------------------------------------------------------------------
init_from = "resume"  # 'resume' (the checkpoint in out_dir) or a GPT-2: 'gpt2'..'gpt2-xl' or a local HF directory
out_dir = "out"
start = "\n"  # the prompt; "FILE:prompt.txt" reads it from a file
num_samples = 3
max_new_tokens = 200
temperature = 0.8  # 1.0 samples the model's distribution, lower is more conservative, 0 is greedy
top_k = 200  # keep only the top_k most likely tokens; 0 keeps all
seed = 1337
device = "auto"
dtype = "auto"  # auto: bfloat16 on CUDA where supported, else float32
compile = False
# -----------------------------------------------------------------------------
_defaults = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str))}


def main(argv):
    try:
        config = load_config(_defaults, argv)
    except ConfigError as e:
        sys.exit(f"config error: {e}")
    globals().update(config)
    dev = device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    device_type = "cuda" if dev.startswith("cuda") else "cpu"
    ptdtype = {"auto": torch.bfloat16 if device_type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32,
               "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]

    path = out_dir if init_from == "resume" else init_from
    if init_from == "resume" and not os.path.exists(os.path.join(out_dir, "ckpt.pt")):
        sys.exit(f"error: no checkpoint at {os.path.join(out_dir, 'ckpt.pt')}; train first or set --out_dir")
    model, info = load_model(path, device=dev)
    model.eval()
    if compile:
        model = torch.compile(model)
    enc = get_tokenizer()
    prompt = start
    if prompt.startswith("FILE:"):
        with open(prompt[5:], encoding="utf-8") as f:
            prompt = f.read()
    ids = enc.encode(prompt, allowed_special={"<|endoftext|>"})
    x = torch.tensor(ids, dtype=torch.long, device=dev)[None, ...]  # (1, T)
    generator = torch.Generator(device=dev).manual_seed(seed)
    autocast = torch.autocast(device_type=device_type, dtype=ptdtype) if ptdtype != torch.float32 else torch.no_grad()
    with torch.no_grad(), autocast:
        for _ in range(num_samples):
            y = model.generate(x, max_new_tokens, temperature=temperature, top_k=top_k or None, generator=generator)
            print(enc.decode(y[0].tolist()))
            print("---------------")


if __name__ == "__main__":
    main(sys.argv[1:])
