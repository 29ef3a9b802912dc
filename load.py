"""
load_model(path): a GPT (model.py) from whatever a user points at, for sampling, scoring, probing,
distillation and mid-training:

  our training checkpoint   out_dir/ckpt.pt, or the out_dir holding it (read and verified by checkpoint.py)
  a Hugging Face model      a folder with config.json and safetensors weights, or a hub name (hf.py)

Returns (model, info); info says what was loaded and names its tokenizer (info["tokenizer"], for
data.common.get_tokenizer): the one a checkpoint recorded from its data, a Hugging Face folder's
own tokenizer files, or GPT-2's.
"""

import os

import checkpoint
import hf
from errors import InputError
from model import GPT, model_config_from_dict


def load_model(path, device="cpu", dropout=0.0, allow_unsafe_pickle=False):
    """(model, info) from any of: our training checkpoint (out_dir/ckpt.pt, or the out_dir holding it),
    a Hugging Face model directory (config.json + weights), or a hub name. Checkpoints are read
    safely and verified (checkpoint.py); allow_unsafe_pickle opens older ones."""
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "ckpt.pt")):
        path = os.path.join(path, "ckpt.pt")
    if path.endswith(".pt") and not os.path.exists(path):
        raise checkpoint.MissingFileError(f"no checkpoint file at {path}")
    if os.path.isfile(path):
        ckpt = checkpoint.read(path, allow_unsafe_pickle, require_checksum=False)  # only read, never overwritten
        if "model" not in ckpt or "model_args" not in ckpt:
            raise checkpoint.CheckpointError(f"{path} is not a disperse-gpt checkpoint (no 'model'/'model_args' entries)")
        config = model_config_from_dict(ckpt["model_args"])
        config.dropout = dropout
        model = GPT(config)
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            raise checkpoint.CheckpointError(f"{path}: its weights do not fit the model its model_args describe ({e})") from None
        # the tokenizer of its data (train.py records it); older checkpoints were all GPT-2's
        info = {"source": "checkpoint", "path": path, "iter_num": ckpt.get("iter_num"),
                "tokenizer": ckpt.get("tokenizer") or "gpt2"}
    elif os.path.isdir(path) and os.path.exists(os.path.join(path, "config.json")) or not os.path.exists(path):
        try:
            model = hf.load(path, dropout=dropout)
        except FileNotFoundError as e:  # neither a file of ours nor a Hugging Face folder or name
            raise checkpoint.MissingFileError(str(e)) from None
        except ValueError as e:  # a field or weight this model cannot represent (the message names it)
            raise InputError(f"{path}: {e}") from None
        info = {"source": "huggingface", "path": path, "tokenizer": hf.tokenizer_name(path)}
    else:
        raise checkpoint.MissingFileError(f"{path}: not a checkpoint file, an out_dir with ckpt.pt, "
                                          "or a Hugging Face model directory with config.json")
    return model.to(device), info
