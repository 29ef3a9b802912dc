"""
Hugging Face checkpoints in and out: GPT2LMHeadModel, LlamaForCausalLM, Qwen2ForCausalLM and
Qwen3ForCausalLM folders (config.json + safetensors weights) as our GPT (model.py), and back.

    model = hf.load("Qwen/Qwen3-0.6B")        # or a local folder; hub names are downloaded when online
    hf.export(model, "qwen3-copy")            # config.json + model.safetensors that transformers loads

Our parameter names are GPT-2's in every family, so the conversion renames, transposes (GPT-2's
Conv1D weights), and splits or joins (q, k, v in one c_attn; SwiGLU's gate and up in one c_fc).
Only safetensors files are read: a pytorch_model.bin is a pickle, which can run code. Settings the
model does not implement (another architecture, sliding windows, other RoPE scalings, quantized
weights) are refused with the field named, before any weight is read.
"""

import json
import os

import torch

from model import GPT, GPTConfig

HF_ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                    "qwen3": "Qwen3ForCausalLM"}
# HF GPT-2 keeps these four weights as Conv1D, i.e. transposed relative to nn.Linear
_CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _unsupported(family, what):
    return ValueError(f"unsupported {family} checkpoint: {what}. model.py implements GPT-2 and the "
                      "Llama / Qwen2 / Qwen3 block without it; use the transformers backend for this model")


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
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise _unsupported(family, f"activation_function={act!r} (GPT-2's tanh GELU is gelu_new)")
        for key, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                          ("add_cross_attention", False)):
            if hc.get(key, want) != want:
                raise _unsupported(family, f"{key}={hc[key]}")
        return GPTConfig(block_size=hc.get("n_positions", 1024), vocab_size=hc["vocab_size"], n_layer=hc["n_layer"],
                         n_head=hc["n_head"], n_embd=hc["n_embd"], dropout=dropout, bias=True,
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
    naming the setting that no family has."""
    c = config
    if (c.norm, c.pos_emb, c.mlp) == ("layernorm", "learned", "gelu"):
        for what, ok in (("bias=False", c.bias), ("qkv_bias=False", c.qkv_bias is not False),
                         (f"n_kv_head={c.n_kv_head}", c.kv_heads == c.n_head), ("qk_norm=True", not c.qk_norm),
                         (f"head_dim={c.head_dim}", c.head_size * c.n_head == c.n_embd)):
            if not ok:
                raise ValueError(f"a GPT-2-style model with {what} cannot be written as GPT2LMHeadModel")
        return "gpt2"
    if (c.norm, c.pos_emb, c.mlp) == ("rmsnorm", "rope", "swiglu"):
        qkv_bias = c.bias if c.qkv_bias is None else c.qkv_bias
        if c.qk_norm:
            if c.bias or qkv_bias:
                raise ValueError("a Qwen3-style model (qk_norm=True) with biases cannot be written as Qwen3ForCausalLM")
            return "qwen3"
        if qkv_bias and not c.bias:
            return "qwen2"
        if qkv_bias != c.bias:
            raise ValueError(f"bias={c.bias} with qkv_bias={c.qkv_bias} matches no Hugging Face family")
        return "llama"
    raise ValueError(f"norm={c.norm!r}, pos_emb={c.pos_emb!r}, mlp={c.mlp!r} together match no Hugging Face family "
                     "(GPT-2: layernorm, learned, gelu; Llama / Qwen: rmsnorm, rope, swiglu)")


def config_to_hf(config):
    """config.json dict of the Hugging Face model equal to this config (see hf_family)."""
    c, family = config, hf_family(config)
    out = {"architectures": [HF_ARCHITECTURES[family]], "model_type": family, "vocab_size": c.vocab_size,
           "tie_word_embeddings": c.tie_embeddings, "initializer_range": 0.02, "use_cache": True}
    if family == "gpt2":
        return {**out, "n_positions": c.block_size, "n_ctx": c.block_size, "n_embd": c.n_embd, "n_layer": c.n_layer,
                "n_head": c.n_head, "n_inner": c.n_inner, "activation_function": "gelu_new",
                "layer_norm_epsilon": c.norm_eps, "resid_pdrop": c.dropout, "embd_pdrop": c.dropout,
                "attn_pdrop": c.dropout, "bos_token_id": 50256, "eos_token_id": 50256, "scale_attn_weights": True}
    out.update({"hidden_size": c.n_embd, "intermediate_size": c.mlp_width, "num_hidden_layers": c.n_layer,
                "num_attention_heads": c.n_head, "num_key_value_heads": c.kv_heads, "head_dim": c.head_size,
                "hidden_act": "silu", "max_position_embeddings": c.block_size, "rms_norm_eps": c.norm_eps,
                "attention_dropout": c.dropout,
                # the pre-v5 keys, which transformers 4.x reads and 5.x converts to rope_parameters
                "rope_theta": c.rope_theta, "rope_scaling": c.rope_scaling})
    if family == "llama":
        out.update({"attention_bias": c.bias, "mlp_bias": c.bias})
    if family == "qwen3":
        out["attention_bias"] = False
    if family in ("qwen2", "qwen3"):
        out.update({"use_sliding_window": False, "sliding_window": None})
    return out


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
    if hf:
        raise _unsupported(family, f"weights this model has no place for: {sorted(hf)[:4]}")
    return sd


def _state_dict_to_hf(config, family, ours):
    """The Hugging Face family's state_dict from ours (contiguous CPU copies, vocabulary padding
    dropped, a tied head left out: safetensors refuses shared storage and transformers re-ties on load)."""
    sd = {k: v.detach().cpu() for k, v in ours.items()}
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


def _download_from_hub(name):
    """A hub model's config.json and safetensors files, through huggingface_hub (online only)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise FileNotFoundError(f"{name!r} is not a local directory, and downloading it from the Hugging Face hub "
                                "needs huggingface_hub: pip install huggingface_hub") from e
    try:
        return snapshot_download(name, allow_patterns=["config.json", "*.safetensors", "model.safetensors.index.json",
                                                       "tokenizer*", "vocab.json", "merges.txt", "special_tokens_map.json",
                                                       "generation_config.json"])
    except Exception as e:
        raise FileNotFoundError(f"{name!r} is not a local directory and could not be fetched from the Hugging Face "
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
    return _from_hf_weights(config, hf_config["model_type"], _read_safetensors(folder))


def from_transformers(hf_model, dropout=0.0):
    """Our GPT from an in-memory transformers model of one of the four families."""
    hf_config = hf_model.config.to_dict()
    config = config_from_hf(hf_config, dropout=dropout)
    return _from_hf_weights(config, hf_config["model_type"], hf_model.state_dict())


def _from_hf_weights(config, family, hf_sd):
    model = GPT(config)
    sd = _state_dict_from_hf(config, family, hf_sd)
    with torch.no_grad():
        for name in ("transformer.wte.weight", "lm_head.weight"):
            if name in sd:  # padding rows: never produced, never read
                sd[name] = torch.cat([sd[name], sd[name].new_zeros(config.padded_vocab_size - config.vocab_size,
                                                                   config.n_embd)])
        if config.tie_embeddings:
            sd["lm_head.weight"] = sd["transformer.wte.weight"]
        model.load_state_dict({k: v.float() for k, v in sd.items()})
    return model


def state_dict(model):
    """The model's weights under its Hugging Face family's names and layouts (family: hf_family)."""
    return _state_dict_to_hf(model.config, hf_family(model.config), model.state_dict())


def export(model, out_dir):
    """Write a Hugging Face model directory (config.json + model.safetensors, float32) that
    transformers and lm-evaluation-harness load: GPT2LMHeadModel, LlamaForCausalLM,
    Qwen2ForCausalLM or Qwen3ForCausalLM, whichever the model's settings are."""
    try:
        from safetensors.torch import save_file
    except ImportError as e:
        raise ImportError("writing Hugging Face weights needs safetensors: pip install safetensors") from e
    hf_config = config_to_hf(model.config)  # refuses settings no family has, before anything is written
    sd = state_dict(model)
    os.makedirs(out_dir, exist_ok=True)
    # write beside, then rename: an existing model in out_dir stays whole until the new one is
    for name, write in (("model.safetensors", lambda p: save_file(sd, p, metadata={"format": "pt"})),
                        ("config.json", lambda p: open(p, "w").write(json.dumps(hf_config, indent=2)))):
        path = os.path.join(out_dir, name)
        write(path + ".tmp")
        os.replace(path + ".tmp", path)
    return out_dir


def tokenizer_name(path):
    """The tokenizer of a Hugging Face model: its own folder when it holds tokenizer files (or it is
    a hub name), else GPT-2's (export writes weights and config.json only)."""
    if not os.path.isdir(path):
        return path
    files = ("tokenizer.json", "vocab.json", "tokenizer.model", "tokenizer_config.json")
    return os.path.abspath(path) if any(os.path.exists(os.path.join(path, f)) for f in files) else "gpt2"
