"""
Hugging Face checkpoints in and out: GPT2LMHeadModel, LlamaForCausalLM, Qwen2ForCausalLM and
Qwen3ForCausalLM folders (config.json + safetensors weights) as our GPT (model.py), and back.

    model = hf.load("Qwen/Qwen3-0.6B")        # or a local folder; hub names are downloaded when online
    hf.export(model, "qwen3-copy")            # config.json + model.safetensors that transformers loads
    hf.export(model, "my-gpt", "gpt2")        # ... and the tokenizer's files, for AutoTokenizer

    python hf.py export out/ckpt.pt my-gpt    # a checkpoint we trained, with the tokenizer it records

Our parameter names are GPT-2's in every family, so the conversion renames, transposes (GPT-2's
Conv1D weights), and splits or joins (q, k, v in one c_attn; SwiGLU's gate and up in one c_fc).
Biases a family has and our model lacks (bias=False in a GPT-2 model, nanoGPT's CPU default) are
written as zeros, which add nothing; config.json records our bias settings, so reading the export
back gives the same model. Only safetensors files are read: a pytorch_model.bin is a pickle,
which can run code. Settings the model does not implement (another architecture, sliding windows,
other RoPE scalings, quantized weights) are refused with the field named, before any weight is read.

Tokenizer files (export's `tokenizer`), so that AutoTokenizer.from_pretrained(folder) encodes as ours:
    tiktoken gpt2, r50k_base   GPT-2's vocab.json + merges.txt, rebuilt from tiktoken's ranks
    a Hugging Face tokenizer   its folder's tokenizer files, copied byte for byte
    a character tokenizer      a tokenizer.json of one token per character (PreTrainedTokenizerFast)
A hub name that cannot be reached (offline) is an error before anything is written.
"""

import dataclasses
import json
import os
import shutil
import sys

import torch

from configurator import ArgumentParser
from errors import InputError, MissingFileError, run_cli
from files import atomic_folder
from model import GPT, GPTConfig, pad_vocab_rows

HF_ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                    "qwen3": "Qwen3ForCausalLM"}
# HF GPT-2 keeps these four weights as Conv1D, i.e. transposed relative to nn.Linear
_CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# config.json's record of an export: our bias settings (to read back the same model) and the tokenizer
EXPORT_KEY = "disperse_gpt"
# the files of a Hugging Face tokenizer folder; export copies those that exist
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "tokenizer.model", "added_tokens.json", "chat_template.jinja", "chat_template.json")
GPT2_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")  # GPT-2's activation_function values of our mlp="gelu"


def _unsupported(family, what):
    return ValueError(f"unsupported {family} checkpoint: {what}. model.py implements GPT-2 and the "
                      "Llama / Qwen2 / Qwen3 block without it; use the transformers backend for this model")


def _has_exact_gelu():
    """Whether model.py takes mlp="gelu_exact" (nanoGPT's erf GELU, Hugging Face GPT-2's "gelu"),
    asked each time rather than assumed: without it, "gelu" checkpoints are refused."""
    try:
        GPTConfig(mlp="gelu_exact")
        return True
    except ValueError:
        return False


def config_from_hf(hc, dropout=0.0):
    """GPTConfig from a Hugging Face config.json dict; a ValueError naming the field for anything
    this model does not implement (another architecture, sliding windows, other RoPE scalings, ...)."""
    family = hc.get("model_type")
    if family not in HF_ARCHITECTURES:
        raise ValueError(f"model_type={family!r} is not supported; model.py reads {', '.join(HF_ARCHITECTURES)} "
                         "checkpoints (use the transformers backend for other models)")
    for arch in hc.get("architectures") or []:
        if not arch.endswith(("LMHeadModel", "ForCausalLM", "Model")) or arch.endswith("DoubleHeadsModel"):
            raise _unsupported(family, f"architectures={hc['architectures']} (not a causal language model)")
    if hc.get("quantization_config"):
        raise _unsupported(family, "quantization_config (quantized weights)")
    if family == "gpt2":
        act = hc.get("activation_function", "gelu_new")
        if act not in GPT2_TANH_GELUS and not (act == "gelu" and _has_exact_gelu()):
            raise _unsupported(family, f"activation_function={act!r} (GPT-2's tanh GELU is gelu_new)")
        for key, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                          ("add_cross_attention", False)):
            if hc.get(key, want) != want:
                raise _unsupported(family, f"{key}={hc[key]}")
        return GPTConfig(block_size=hc.get("n_positions", 1024), vocab_size=hc["vocab_size"], n_layer=hc["n_layer"],
                         n_head=hc["n_head"], n_embd=hc["n_embd"], dropout=dropout, bias=True,
                         mlp="gelu_exact" if act == "gelu" else "gelu",
                         n_inner=hc.get("n_inner"), norm_eps=hc.get("layer_norm_epsilon", 1e-5),
                         tie_embeddings=hc.get("tie_word_embeddings", True))
    # the Llama block: RMSNorm, RoPE, SwiGLU, grouped-query attention
    if hc.get("hidden_act", "silu") != "silu":
        raise _unsupported(family, f"hidden_act={hc['hidden_act']!r} (SwiGLU here uses silu)")
    if hc.get("use_sliding_window") or any(t != "full_attention" for t in hc.get("layer_types") or []):
        raise _unsupported(family, "use_sliding_window / layer_types with sliding_attention (sliding-window attention)")
    rope = dict(hc.get("rope_parameters") or hc.get("rope_scaling") or {})
    rope_theta = rope.get("rope_theta", hc.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise _unsupported(family, f"rope_scaling / rope_parameters rope_type={rope_type!r} (implemented: default, llama3)")
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise _unsupported(family, f"partial_rotary_factor={rope['partial_rotary_factor']}")
    rope_scaling = None
    if rope_type == "llama3":
        rope_scaling = {"rope_type": "llama3", **{k: rope[k] for k in (
            "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}}
    n_head = hc["num_attention_heads"]
    head_dim = hc.get("head_dim") or hc["hidden_size"] // n_head
    if family == "qwen2":
        bias, qkv_bias = False, True  # Qwen2 always has q/k/v biases and no other
    elif family == "qwen3":  # attention_bias: q, k, v and o; an o_proj bias must be zero (see _state_dict_from_hf)
        bias, qkv_bias = False, hc.get("attention_bias", False) or None
    else:
        attention_bias, mlp_bias = hc.get("attention_bias", False), hc.get("mlp_bias", False)
        if attention_bias != mlp_bias:  # this model's `bias` covers the attention and the MLP together
            raise _unsupported(family, f"attention_bias={attention_bias} with mlp_bias={mlp_bias}")
        bias, qkv_bias = attention_bias, None
    default_tie = False  # LlamaConfig, Qwen2Config and Qwen3Config all default to untied
    return GPTConfig(
        block_size=hc.get("max_position_embeddings", 2048), vocab_size=hc["vocab_size"],
        n_layer=hc["num_hidden_layers"], n_head=n_head, n_embd=hc["hidden_size"], dropout=dropout,
        bias=bias, qkv_bias=qkv_bias, n_inner=hc["intermediate_size"], norm="rmsnorm",
        norm_eps=hc.get("rms_norm_eps", 1e-6), pos_emb="rope", rope_theta=float(rope_theta), rope_scaling=rope_scaling,
        mlp="swiglu", n_kv_head=hc.get("num_key_value_heads") or n_head,
        head_dim=None if head_dim * n_head == hc["hidden_size"] else head_dim,
        qk_norm=family == "qwen3", tie_embeddings=hc.get("tie_word_embeddings", default_tie))


def hf_family(config):
    """The Hugging Face model_type whose architecture equals this config's, or a ValueError
    naming the setting that no family has. Biases a family has and the model lacks are no obstacle:
    export writes them as zeros (GPT-2 with bias=False or qkv_bias=False, Llama with qkv_bias=False)."""
    c = config
    qkv_bias = c.bias if c.qkv_bias is None else c.qkv_bias
    if (c.norm, c.pos_emb) == ("layernorm", "learned") and c.mlp in ("gelu", "gelu_exact"):
        modern = "norm='rmsnorm', pos_emb='rope', mlp='swiglu'"
        for what, ok, why in (
                (f"n_kv_head={c.n_kv_head}", c.kv_heads == c.n_head,
                 f"GPT-2 has no grouped-query attention; Llama and Qwen do ({modern})"),
                ("qk_norm=True", not c.qk_norm, f"GPT-2 has no query/key norm; Qwen3 does ({modern}, qk_norm=True)"),
                (f"head_dim={c.head_dim}", c.head_size * c.n_head == c.n_embd,
                 f"GPT-2's heads are n_embd // n_head wide; Llama and Qwen3 take a head_dim ({modern})")):
            if not ok:
                raise ValueError(f"a GPT-2-style model with {what} cannot be written as GPT2LMHeadModel: {why}")
        return "gpt2"
    if (c.norm, c.pos_emb, c.mlp) == ("rmsnorm", "rope", "swiglu"):
        if c.qk_norm:
            if c.bias:
                raise ValueError("a Qwen3-style model (qk_norm=True) with bias=True cannot be written as "
                                 "Qwen3ForCausalLM: its MLP has no biases (bias=False with qkv_bias=True can be)")
            return "qwen3"
        return "qwen2" if qkv_bias and not c.bias else "llama"
    raise ValueError(f"norm={c.norm!r}, pos_emb={c.pos_emb!r}, mlp={c.mlp!r} together match no Hugging Face family "
                     "(GPT-2: layernorm, learned, gelu; Llama / Qwen: rmsnorm, rope, swiglu)")


def config_to_hf(config, tokenizer=None):
    """config.json dict of the Hugging Face model equal to this config (see hf_family), with our bias
    settings under EXPORT_KEY; bos/eos ids are the tokenizer's (a data.common Tokenizer) when given."""
    c, family = config, hf_family(config)
    out = {"architectures": [HF_ARCHITECTURES[family]], "model_type": family, "vocab_size": c.vocab_size,
           "tie_word_embeddings": c.tie_embeddings, "initializer_range": 0.02, "use_cache": True,
           EXPORT_KEY: {"bias": c.bias, "qkv_bias": c.qkv_bias}}
    if tokenizer is not None:
        out.update(bos_token_id=tokenizer.bos, eos_token_id=tokenizer.eos)
    if family == "gpt2":
        eot = 50256 if c.vocab_size > 50256 else None  # GPT-2's <|endoftext|>, when the vocabulary has it
        return {"bos_token_id": eot, "eos_token_id": eot, **out, "n_positions": c.block_size, "n_ctx": c.block_size,
                "n_embd": c.n_embd, "n_layer": c.n_layer, "n_head": c.n_head, "n_inner": c.n_inner,
                "activation_function": "gelu" if c.mlp == "gelu_exact" else "gelu_new",
                "layer_norm_epsilon": c.norm_eps, "resid_pdrop": c.dropout, "embd_pdrop": c.dropout,
                "attn_pdrop": c.dropout, "scale_attn_weights": True}
    out.update({"hidden_size": c.n_embd, "intermediate_size": c.mlp_width, "num_hidden_layers": c.n_layer,
                "num_attention_heads": c.n_head, "num_key_value_heads": c.kv_heads, "head_dim": c.head_size,
                "hidden_act": "silu", "max_position_embeddings": c.block_size, "rms_norm_eps": c.norm_eps,
                "attention_dropout": c.dropout,
                # the pre-v5 keys, which transformers 4.x reads and 5.x converts to rope_parameters
                "rope_theta": c.rope_theta, "rope_scaling": c.rope_scaling})
    if family == "llama":
        out.update({"attention_bias": c.bias, "mlp_bias": c.bias})  # qkv_bias=False: zero q/k/v biases
    if family == "qwen3":
        out["attention_bias"] = bool(c.qkv_bias)  # q/k/v biases, and a zero o_proj bias
    if family in ("qwen2", "qwen3"):
        out.update({"use_sliding_window": False, "sliding_window": None})
    return out


def _biased_modules(hf_config):
    """Our weights (by name ending) whose biases the Hugging Face family's file holds."""
    family = hf_config["model_type"]
    if family == "gpt2":
        return ("ln_1", "ln_2", "ln_f", "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    attn, mlp = hf_config.get("attention_bias", False), hf_config.get("mlp_bias", False)
    return (("attn.c_attn",) if attn or family == "qwen2" else ()) + (("attn.c_proj",) if attn else ()) + \
        (("mlp.c_fc", "mlp.c_proj") if mlp else ())


def _state_dict_from_hf(config, family, hf_sd):
    """Our state_dict (names of this file, vocabulary rows unpadded) from a Hugging Face one.
    Every checkpoint tensor must be used: leftovers mean an architecture we did not recognise."""
    hf = {k: v for k, v in hf_sd.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}  # old GPT-2 mask buffers
    if config.tie_embeddings:
        hf.pop("lm_head.weight", None)  # the same matrix as the embedding, when a file stores it at all
    sd = {}
    if family == "gpt2":
        for k, v in hf.items():
            name = k if k.startswith(("transformer.", "lm_head.")) else "transformer." + k  # GPT2Model files lack the prefix
            sd[name] = v.t() if name.endswith(_CONV1D_WEIGHTS) else v  # Conv1D (in, out) -> nn.Linear (out, in)
        return sd
    take = hf.pop
    sd["transformer.wte.weight"] = take("model.embed_tokens.weight")
    qkv_bias = config.bias if config.qkv_bias is None else config.qkv_bias
    for i in range(config.n_layer):
        hf_p, p = f"model.layers.{i}.", f"transformer.h.{i}."
        sd[p + "ln_1.weight"] = take(hf_p + "input_layernorm.weight")
        sd[p + "ln_2.weight"] = take(hf_p + "post_attention_layernorm.weight")
        sd[p + "attn.c_attn.weight"] = torch.cat([take(hf_p + f"self_attn.{n}_proj.weight") for n in "qkv"])
        if qkv_bias:
            sd[p + "attn.c_attn.bias"] = torch.cat([take(hf_p + f"self_attn.{n}_proj.bias") for n in "qkv"])
        sd[p + "attn.c_proj.weight"] = take(hf_p + "self_attn.o_proj.weight")
        if config.qk_norm:
            sd[p + "attn.q_norm.weight"] = take(hf_p + "self_attn.q_norm.weight")
            sd[p + "attn.k_norm.weight"] = take(hf_p + "self_attn.k_norm.weight")
        sd[p + "mlp.c_fc.weight"] = torch.cat([take(hf_p + "mlp.gate_proj.weight"), take(hf_p + "mlp.up_proj.weight")])
        sd[p + "mlp.c_proj.weight"] = take(hf_p + "mlp.down_proj.weight")
        if config.bias:
            sd[p + "attn.c_proj.bias"] = take(hf_p + "self_attn.o_proj.bias")
            sd[p + "mlp.c_fc.bias"] = torch.cat([take(hf_p + "mlp.gate_proj.bias"), take(hf_p + "mlp.up_proj.bias")])
            sd[p + "mlp.c_proj.bias"] = take(hf_p + "mlp.down_proj.bias")
    sd["transformer.ln_f.weight"] = take("model.norm.weight")
    if not config.tie_embeddings:
        sd["lm_head.weight"] = take("lm_head.weight")
    hf.pop("model.rotary_emb.inv_freq", None)  # a buffer some older files carry; recomputed from rope_theta
    for k in [k for k, v in hf.items() if k.endswith(".bias") and not v.any()]:
        del hf[k]  # a zero bias adds nothing (Qwen3's o_proj with attention_bias, as export writes it)
    if hf:
        raise _unsupported(family, f"weights this model has no place for: {sorted(hf)[:4]}")
    return sd


def _state_dict_to_hf(config, family, ours, biased=None):
    """The Hugging Face family's state_dict from ours (contiguous CPU copies, vocabulary padding
    dropped, a tied head left out: safetensors refuses shared storage and transformers re-ties on load).
    The biases of `biased` (_biased_modules) that the model lacks are written as zeros."""
    sd = {k: v.detach().cpu() for k, v in ours.items()}
    for name in [k for k in sd if k.endswith(tuple(m + ".weight" for m in biased or ()))]:
        if name[:-len("weight")] + "bias" not in sd:
            sd[name[:-len("weight")] + "bias"] = sd[name].new_zeros(sd[name].shape[0])  # (out, in) or a norm's (n,)
    sd["transformer.wte.weight"] = sd["transformer.wte.weight"][:config.vocab_size]
    if config.tie_embeddings:
        del sd["lm_head.weight"]
    else:
        sd["lm_head.weight"] = sd["lm_head.weight"][:config.vocab_size]
    out = {}
    if family == "gpt2":
        for k, v in sd.items():
            out[k] = v.t() if k.endswith(_CONV1D_WEIGHTS) else v
    else:
        hs, nh, nkv, width = config.head_size, config.n_head, config.kv_heads, config.mlp_width
        out["model.embed_tokens.weight"] = sd.pop("transformer.wte.weight")
        out["model.norm.weight"] = sd.pop("transformer.ln_f.weight")
        if "lm_head.weight" in sd:
            out["lm_head.weight"] = sd.pop("lm_head.weight")
        for i in range(config.n_layer):
            hf_p, p = f"model.layers.{i}.", f"transformer.h.{i}."
            out[hf_p + "input_layernorm.weight"] = sd[p + "ln_1.weight"]
            out[hf_p + "post_attention_layernorm.weight"] = sd[p + "ln_2.weight"]
            for kind in ("weight", "bias"):
                if p + f"attn.c_attn.{kind}" in sd:
                    q, k, v = sd[p + f"attn.c_attn.{kind}"].split([nh * hs, nkv * hs, nkv * hs])
                    out.update({hf_p + f"self_attn.q_proj.{kind}": q, hf_p + f"self_attn.k_proj.{kind}": k,
                                hf_p + f"self_attn.v_proj.{kind}": v})
                if p + f"attn.c_proj.{kind}" in sd:
                    out[hf_p + f"self_attn.o_proj.{kind}"] = sd[p + f"attn.c_proj.{kind}"]
                if p + f"mlp.c_fc.{kind}" in sd:
                    gate, up = sd[p + f"mlp.c_fc.{kind}"].split([width, width])
                    out.update({hf_p + f"mlp.gate_proj.{kind}": gate, hf_p + f"mlp.up_proj.{kind}": up})
                if p + f"mlp.c_proj.{kind}" in sd:
                    out[hf_p + f"mlp.down_proj.{kind}"] = sd[p + f"mlp.c_proj.{kind}"]
            if config.qk_norm:
                out[hf_p + "self_attn.q_norm.weight"] = sd[p + "attn.q_norm.weight"]
                out[hf_p + "self_attn.k_norm.weight"] = sd[p + "attn.k_norm.weight"]
    return {k: v.contiguous().clone() for k, v in out.items()}


def _read_safetensors(folder):
    """All tensors of a Hugging Face folder's safetensors weights: model.safetensors, or the shards
    that model.safetensors.index.json lists. Pickled weights (*.bin, *.pt) are refused."""
    try:
        from safetensors.torch import load_file
    except ImportError as e:
        raise ImportError("reading Hugging Face weights needs safetensors: pip install safetensors") from e
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.isfile(os.path.join(folder, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        pickled = [f for f in os.listdir(folder) if f.endswith((".bin", ".pt", ".pth"))]
        raise FileNotFoundError(
            f"{folder} has no model.safetensors or model.safetensors.index.json"
            + (f" (only {', '.join(pickled)}: pickled weights, which this project does not load because "
               "unpickling can run code; convert them once with transformers: "
               "AutoModelForCausalLM.from_pretrained(d).save_pretrained(d2, safe_serialization=True))" if pickled else ""))
    tensors = {}
    for name in files:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} is listed in model.safetensors.index.json but missing")
        tensors.update(load_file(path))
    return tensors


def _download_from_hub(name, files=("config.json", "*.safetensors", "model.safetensors.index.json",
                                      "generation_config.json", *TOKENIZER_FILES)):
    """The folder of a hub model's files (a model's, or only its tokenizer's), through huggingface_hub
    (online, or cached earlier)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise MissingFileError(f"{name!r} is not a local directory, and downloading it from the Hugging Face hub "
                               "needs huggingface_hub: pip install huggingface_hub") from e
    try:
        return snapshot_download(name, allow_patterns=list(files))
    except Exception as e:
        raise MissingFileError(f"{name!r} is not a local directory and could not be fetched from the Hugging Face "
                               f"hub ({type(e).__name__}: {e})") from e


def load(name_or_dir, dropout=0.0):
    """Our GPT from a Hugging Face GPT2LMHeadModel, LlamaForCausalLM, Qwen2ForCausalLM or
    Qwen3ForCausalLM checkpoint: a local directory with config.json and safetensors weights
    (model.safetensors, or shards listed in model.safetensors.index.json), or a hub name
    (gpt2, Qwen/Qwen3-0.6B, ...) downloaded with huggingface_hub when online. The family is
    read from config.json; settings this model does not implement are refused by name."""
    folder = name_or_dir if os.path.isdir(name_or_dir) else _download_from_hub(name_or_dir)
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{folder} has no config.json: not a Hugging Face model directory")
    with open(config_path) as f:
        hf_config = json.load(f)
    config = config_from_hf(hf_config, dropout=dropout)  # refuses what we do not implement, before reading weights
    return _from_hf_weights(config, hf_config, _read_safetensors(folder))


def from_transformers(hf_model, dropout=0.0):
    """Our GPT from an in-memory transformers model of one of the four families."""
    hf_config = hf_model.config.to_dict()
    config = config_from_hf(hf_config, dropout=dropout)
    return _from_hf_weights(config, hf_config, hf_model.state_dict())


def _without_zero_biases(config, sd, hf_config):
    """The bias settings our export recorded in config.json (EXPORT_KEY), and the weights without the
    biases it wrote as zeros: the model that was exported. Kept as read when they are no longer zero
    (trained further in transformers) or the record asks for biases the file lacks."""
    saved = hf_config.get(EXPORT_KEY)
    if not isinstance(saved, dict) or not isinstance(saved.get("bias"), bool):
        return config, sd
    target = dataclasses.replace(config, bias=saved["bias"], qkv_bias=saved.get("qkv_bias"))
    qkv_now, qkv = (c.bias if c.qkv_bias is None else c.qkv_bias for c in (config, target))
    if (target.bias and not config.bias) or (qkv and not qkv_now):
        return config, sd
    extra = [k for k in sd if k.endswith(".bias") and not (qkv if k.endswith("attn.c_attn.bias") else target.bias)]
    if any(sd[k].any() for k in extra):
        return config, sd
    return target, {k: v for k, v in sd.items() if k not in extra}


def _from_hf_weights(config, hf_config, hf_sd):
    sd = _state_dict_from_hf(config, hf_config["model_type"], hf_sd)
    config, sd = _without_zero_biases(config, sd, hf_config)
    model = GPT(config)
    with torch.no_grad():
        for name in ("transformer.wte.weight", "lm_head.weight"):
            if name in sd:  # padding rows: never produced, never read
                sd[name] = pad_vocab_rows(sd[name], config.padded_vocab_size)
        if config.tie_embeddings:
            sd["lm_head.weight"] = sd["transformer.wte.weight"]
        model.load_state_dict({k: v.float() for k, v in sd.items()})
    return model


def state_dict(model):
    """The model's weights under its Hugging Face family's names and layouts (family: hf_family)."""
    hf_config = config_to_hf(model.config)
    return _state_dict_to_hf(model.config, hf_config["model_type"], model.state_dict(), _biased_modules(hf_config))


def export(model, out_dir, tokenizer=None):
    """Write a Hugging Face model directory (config.json + model.safetensors, float32) that
    transformers and lm-evaluation-harness load: GPT2LMHeadModel, LlamaForCausalLM,
    Qwen2ForCausalLM or Qwen3ForCausalLM, whichever the model's settings are; with a tokenizer
    (a name for data.common.get_tokenizer, or a Tokenizer), its files too (see write_tokenizer).
    The folder is built beside out_dir and renamed into place, so a failure leaves out_dir as it
    was; a non-empty out_dir is replaced only when it is an earlier export (check_out_dir)."""
    try:
        from safetensors.torch import save_file
    except ImportError as e:
        raise ImportError("writing Hugging Face weights needs safetensors: pip install safetensors") from e
    from data.common import get_tokenizer
    tok = get_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer  # a bad name stops here
    hf_config = config_to_hf(model.config, tok)  # refuses settings no family has, before anything is written
    hf_config[EXPORT_KEY]["tokenizer"] = tok.name if tok is not None else None
    out_dir = os.path.abspath(os.fspath(out_dir))
    check_out_dir(out_dir)
    if tok is not None and tok.vocab_size > model.config.vocab_size:
        print(f"warning: tokenizer {tok.name[:60]!r} has {tok.vocab_size} ids but the model's vocab_size is "
              f"{model.config.vocab_size}: text with higher ids cannot be fed to the exported model", file=sys.stderr)
    sd = state_dict(model)
    with atomic_folder(out_dir) as tmp:
        save_file(sd, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(hf_config, f, indent=2)
        if tok is not None:
            write_tokenizer(tok, tmp, model.config.block_size)
    return out_dir


def check_out_dir(out_dir):
    """An InputError unless out_dir is absent, empty, or an earlier export (its config.json has
    EXPORT_KEY) holding only files an export writes: nothing else is ever replaced."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise InputError(f"{out_dir} is a file; give a folder to write the Hugging Face model in")
    entries = sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else []
    if not entries:
        return
    ours = EXPORT_KEY in _read_config(out_dir)
    others = [e for e in entries if e not in ("config.json", "model.safetensors") + TOKENIZER_FILES]
    if not ours or others:
        what = f"holds {', '.join(others[:4])}{' ...' if len(others) > 4 else ''}, which" if ours else "is not empty and"
        raise InputError(f"{out_dir} {what} is not a Hugging Face model folder written by hf.py export; it was left "
                         "as it is. Give a new or empty folder (or move its files away)")


def write_tokenizer(tok, folder, model_max_length):
    """Write the files with which transformers' AutoTokenizer.from_pretrained(folder) encodes as `tok`
    (a data.common Tokenizer) does; returns their names. An InputError for a tokenizer that has none."""
    if tok.backend == "huggingface":  # the very files it was loaded from: save_pretrained would rewrite them
        source = tok.name if os.path.isdir(tok.name) else _download_from_hub(tok.name, TOKENIZER_FILES)
        names = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(source, n))]
        for name in names:
            shutil.copyfile(os.path.join(source, name), os.path.join(folder, name))
        return names
    if tok.backend == "char":
        files = _char_tokenizer_files(tok.chars, model_max_length)
    elif tok.name in ("gpt2", "r50k_base"):
        files = _gpt2_tokenizer_files(tok.wrapped, model_max_length)
    else:  # other tiktoken encodings split text by another rule than GPT-2's
        raise InputError(f"tiktoken's {tok.name} encoding cannot be written as Hugging Face tokenizer files "
                         "(gpt2 and r50k_base can); export with --tokenizer=none and add its files yourself")
    for name, text in files.items():
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            f.write(text)
    return list(files)


def _tiktoken_tables(enc):
    """(bytes -> rank of the byte-pair tokens, special token -> id) of a tiktoken encoding. Both are
    private attributes of tiktoken (0.14 has no public accessor); this is the one place that reads them."""
    return enc._mergeable_ranks, enc._special_tokens


def _gpt2_bytes_to_unicode():
    """GPT-2's byte -> character map: printable bytes stand for themselves, the others for 256+i,
    so that vocab.json and merges.txt hold no whitespace or control characters (Ġ is the space)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def _bpe_pair(ranks, token, rank):
    """The two tokens whose merge made `token`: byte-pair merging of its bytes with only the merges
    ranked below its own stops at exactly two parts."""
    parts = [bytes([b]) for b in token]
    while True:
        best, i = min(((ranks.get(a + b, rank), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))), default=(rank, 0))
        if best >= rank:
            break
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2:
        raise ValueError(f"tiktoken token {token!r} (rank {rank}) is not the merge of two lower-ranked tokens")
    return parts


def gpt2_vocab_and_merges(enc):
    """GPT-2's vocab.json (token string -> id) and merges.txt (pairs, in merge order) from a tiktoken
    encoding's own ranks (token id = rank; merge k made token 256 + k), special tokens added."""
    (ranks, special), u = _tiktoken_tables(enc), _gpt2_bytes_to_unicode()
    text = lambda b: "".join(u[x] for x in b)  # noqa: E731
    by_rank = sorted(ranks.items(), key=lambda item: item[1])
    merges = [tuple(map(text, _bpe_pair(ranks, t, r))) for t, r in by_rank if len(t) > 1]
    return {**{text(t): r for t, r in by_rank}, **special}, merges


def _gpt2_tokenizer_files(enc, model_max_length):
    """GPT-2's files as the hub has them (vocab.json and merges.txt byte for byte), <|endoftext|> as
    bos, eos and unk."""
    vocab, merges = gpt2_vocab_and_merges(enc)
    special = dict.fromkeys(("bos_token", "eos_token", "unk_token"), "<|endoftext|>")
    return {"vocab.json": json.dumps(vocab), "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
            "tokenizer_config.json": json.dumps({"tokenizer_class": "GPT2Tokenizer", "model_max_length": model_max_length,
                                                 **special, "add_prefix_space": False, "errors": "replace"}, indent=2),
            "special_tokens_map.json": json.dumps(special, indent=2)}


def _char_tokenizer_files(chars, model_max_length):
    """tokenizer.json: a WordLevel model whose words are the characters (id i = chars[i]), every
    character its own piece, decoded by joining; no normalizer, no special tokens, no space clean-up."""
    try:
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    except ImportError as e:
        raise ImportError("writing a character tokenizer's files needs tokenizers: pip install tokenizers") from e
    tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(chars)}, unk_token="<unk>"))  # "<unk>": never a character
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one piece per character
    tok.decoder = decoders.Fuse()
    return {"tokenizer.json": tok.to_str(pretty=True),
            "tokenizer_config.json": json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length":
                                                 model_max_length, "clean_up_tokenization_spaces": False}, indent=2)}


def _read_config(folder):
    """folder/config.json as a dict, empty when it is missing or not a JSON object (EXPORT_KEY's a dict)."""
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
        return config if isinstance(config, dict) and isinstance(config.get(EXPORT_KEY, {}), dict) else {}
    except (OSError, ValueError):
        return {}


def tokenizer_name(path):
    """The tokenizer of a Hugging Face model, for data.common.get_tokenizer: the tiktoken or character
    tokenizer our export recorded, else its own folder when it holds tokenizer files (or it is a hub
    name), else GPT-2's (an export without tokenizer files)."""
    if not os.path.isdir(path):
        return path
    recorded = _read_config(path).get(EXPORT_KEY, {}).get("tokenizer")
    if isinstance(recorded, str) and (recorded in ("gpt2", "r50k_base") or recorded.startswith("char:")):
        return recorded  # exactly the tokenizer the model was trained with (a character one has no eos)
    return os.path.abspath(path) if any(os.path.exists(os.path.join(path, f)) for f in TOKENIZER_FILES) else "gpt2"


def arguments():
    """The command line (configurator.ArgumentParser: --key=value and --key value alike)."""
    parser = ArgumentParser(prog="python hf.py", description="Hugging Face model folders from our checkpoints.")
    cmd = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="what to do").add_parser(
        "export", help="write a checkpoint as a Hugging Face model folder with its tokenizer",
        description="Write CHECKPOINT as a Hugging Face model folder: config.json, model.safetensors and the "
                    "tokenizer's files, which transformers' AutoModelForCausalLM and AutoTokenizer load.")
    cmd.add_argument("checkpoint", metavar="CHECKPOINT", help="our ckpt.pt, the out_dir holding it, or a "
                     "Hugging Face folder (whatever load.load_model reads)")
    cmd.add_argument("out_dir", metavar="OUT_DIR", help="the folder to write: new, empty, or an earlier export")
    cmd.add_argument("--tokenizer", default=None, help="default: the one the checkpoint records (its data's); "
                     "gpt2, a Hugging Face tokenizer folder or hub name, 'char:\"...\"', or none for no tokenizer files")
    cmd.add_flag("--allow_unsafe_pickle", help="open a checkpoint in no format by full unpickling (only if you trust it)")
    return parser


def main(argv):
    from load import load_model
    args = arguments().parse_args(argv)
    model, info = load_model(args.checkpoint, allow_unsafe_pickle=args.allow_unsafe_pickle)
    tokenizer = info["tokenizer"] if args.tokenizer is None else args.tokenizer
    tokenizer = None if tokenizer == "none" else tokenizer
    out_dir = export(model, args.out_dir, tokenizer)
    c, family = model.config, hf_family(model.config)
    print(f"wrote {out_dir}: {HF_ARCHITECTURES[family]} (model_type {family}), {c.n_layer} layers, vocab_size "
          f"{c.vocab_size}; tokenizer {tokenizer[:60] if tokenizer else 'none'}; files "
          f"{', '.join(sorted(os.listdir(out_dir)))}")


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
