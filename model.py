"""
A GPT-2 language model in one file.

The architecture is GPT-2's: learned token and position embeddings, pre-LayerNorm
transformer blocks (causal self-attention, then a GELU MLP, each on a residual branch),
a final LayerNorm, and an output head that shares its weight with the token embedding.
Parameter names map one to one onto the Hugging Face GPT-2 checkpoint keys, so
`from_hf` / `to_hf` only rename and transpose.

`forward(idx, targets, return_hidden=True)` also returns every layer's hidden states in
the indexing of Hugging Face `output_hidden_states`:
    hidden[0]      embedding output (token + position, after dropout)
    hidden[1..n-1] outputs of blocks 1..n-1 (the residual stream)
    hidden[n]      ln_f applied to the output of block n
The dispersion loss (disperse.py) and the condensation probes (eval/condensation.py)
read these. When they are not asked for, nothing extra is kept.
"""

import math
import json
import os
from dataclasses import dataclass, asdict, fields

import torch
import torch.nn as nn
from torch.nn import functional as F

import checkpoint


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50257  # GPT-2 BPE; the embedding is padded up to a multiple of 64 for speed
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linears and LayerNorms, like GPT-2; False is a bit faster and better
    n_inner: int | None = None  # MLP width; None means 4 * n_embd (GPT-2). The paper's Fig. 3 varies it.

    @property
    def padded_vocab_size(self):
        # 50257 -> 50304: matmuls with a dimension that is a multiple of 64 run much faster on GPUs
        return ((self.vocab_size + 63) // 64) * 64

    def __post_init__(self):
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's LayerNorm always has one before 2.1)."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        # query, key and value projections for all heads in one matmul
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, kv_cache=None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        hs = C // self.n_head
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        if kv_cache is not None:
            # generation: keys and values of earlier positions were stored on the last call
            if kv_cache.get("k") is not None:
                k = torch.cat([kv_cache["k"], k], dim=2)  # (B, nh, T_past + T, hs)
                v = torch.cat([kv_cache["v"], v], dim=2)
            kv_cache["k"], kv_cache["v"] = k, v
        T_past = k.size(2) - T
        if T_past == 0:
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        else:
            # new queries sit at positions T_past..T_past+T-1: each sees every cached key and
            # the new keys up to itself (is_causal would align the mask to the wrong corner)
            mask = torch.ones(T, T_past + T, dtype=torch.bool, device=x.device).tril(diagonal=T_past)
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): heads side by side again
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        n_inner = config.n_inner or 4 * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, n_inner, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's "gelu_new"
        self.c_proj = nn.Linear(n_inner, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, kv_cache=None):
        x = x + self.attn(self.ln_1(x), kv_cache)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        # weight tying: the output head reads tokens with the same vectors that embed them
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # GPT-2 paper: scale the init of the projections into the residual stream by 1/sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_num_params(self, non_embedding=True):
        """Parameters, counted once (the tied head is not counted twice). Position
        embeddings are left out by default, as in the scaling-law convention."""
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n_params -= self.transformer.wpe.weight.numel()
        return n_params

    def embed(self, idx, pos_offset=0):
        """Token embeddings (B, T, C) and position embeddings (T, C), before they are summed."""
        T = idx.size(1)
        if pos_offset + T > self.config.block_size:
            raise ValueError(f"sequence of length {pos_offset + T} is longer than block_size={self.config.block_size}")
        pos = torch.arange(pos_offset, pos_offset + T, dtype=torch.long, device=idx.device)
        return self.transformer.wte(idx), self.transformer.wpe(pos)

    def forward(self, idx, targets=None, return_hidden=False, tok_emb_noise=None, kv_caches=None,
                last_hidden_before_ln=False):
        """
        idx: (B, T) token ids. targets: (B, T) next-token ids, -1 where ignored, or None.
        return_hidden: also return the list of n_layer + 1 hidden states (HF indexing, see top).
        tok_emb_noise: optional (B, T, C) tensor added to the token embeddings (NEFTune control).
        kv_caches: one dict per block, for incremental decoding (see generate).
        last_hidden_before_ln: make the last hidden state block n's raw output instead of ln_f of it.
        Returns (logits, loss) or (logits, loss, hidden); logits are (B, T, vocab_size) with the
        padding columns dropped, so they can be compared with any GPT-2 implementation.
        """
        x, hidden = self.body(idx, return_hidden, tok_emb_noise, kv_caches, last_hidden_before_ln)
        logits = self.head(x)  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        if return_hidden:
            return logits, loss, hidden
        return logits, loss

    def body(self, idx, return_hidden=False, tok_emb_noise=None, kv_caches=None, last_hidden_before_ln=False):
        """Everything but the output head: the final states after ln_f (B, T, C), and the hidden
        states list (or None). Scorers and probes call it to skip the (B, T, vocab) logits."""
        pos_offset = 0
        if kv_caches is not None and kv_caches[0].get("k") is not None:
            pos_offset = kv_caches[0]["k"].size(2)
        tok_emb, pos_emb = self.embed(idx, pos_offset)  # (B, T, C), (T, C)
        if tok_emb_noise is not None:
            tok_emb = tok_emb + tok_emb_noise
        x = self.transformer.drop(tok_emb + pos_emb)
        hidden = [x] if return_hidden else None
        for i, block in enumerate(self.transformer.h):
            x = block(x, None if kv_caches is None else kv_caches[i])
            if return_hidden and (i < self.config.n_layer - 1 or last_hidden_before_ln):
                hidden.append(x)
        x = self.transformer.ln_f(x)
        if return_hidden and not last_hidden_before_ln:
            hidden.append(x)  # like Hugging Face, the last hidden state is taken after ln_f
        return x, hidden

    def head(self, x):
        """Next-token logits (..., vocab_size) from final states (..., C); padding columns dropped."""
        return self.lm_head(x)[..., :self.config.vocab_size]

    def crop_block_size(self, block_size):
        """Use a shorter context than the checkpoint was trained with (e.g. GPT-2's 1024 -> 256)."""
        assert block_size <= self.config.block_size
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    # ------------------------------------------------------------------ optimizer and cost

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        """AdamW with weight decay on the 2-D weights (matmuls and embeddings) only; biases and
        LayerNorm gains are not decayed. Uses the fused CUDA kernel when it is available."""
        params = {n: p for n, p in self.named_parameters() if p.requires_grad}
        decay = [p for p in params.values() if p.dim() >= 2]
        no_decay = [p for p in params.values() if p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        use_fused = device_type == "cuda"
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=use_fused)

    def flops_per_token(self, seq_len=None):
        """Training FLOPs per token (forward + backward = 3x forward): 6 per parameter that a
        token passes through, plus the attention score and value matmuls (PaLM appendix B)."""
        cfg = self.config
        T = seq_len or cfg.block_size
        N = self.get_num_params(non_embedding=True)
        return 6 * N + 12 * cfg.n_layer * cfg.n_embd * T

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None):
        """Sample max_new_tokens tokens after the prompt idx (B, T), with a KV cache: each new
        token costs one position's forward pass. temperature 0 means greedy decoding."""
        if idx.size(1) + max_new_tokens > self.config.block_size:
            # the cache cannot slide past learned positions; fall back to re-encoding a window
            return self._generate_windowed(idx, max_new_tokens, temperature, top_k, generator)
        kv_caches = [dict() for _ in range(self.config.n_layer)]
        logits, _ = self(idx, kv_caches=kv_caches)
        for _ in range(max_new_tokens):
            idx_next = _sample_next(logits[:, -1, :], temperature, top_k, generator)
            idx = torch.cat((idx, idx_next), dim=1)
            logits, _ = self(idx_next, kv_caches=kv_caches)
        return idx

    @torch.no_grad()
    def _generate_windowed(self, idx, max_new_tokens, temperature, top_k, generator):
        for _ in range(max_new_tokens):
            idx_cond = idx[:, -self.config.block_size:]
            logits, _ = self(idx_cond)
            idx = torch.cat((idx, _sample_next(logits[:, -1, :], temperature, top_k, generator)), dim=1)
        return idx

    # ------------------------------------------------------------------ GPT-2 weights in and out

    @classmethod
    def from_hf(cls, name_or_dir, dropout=0.0):
        """Load GPT-2 weights from a local Hugging Face model directory (config.json plus
        model.safetensors or pytorch_model.bin), or by hub name (gpt2, gpt2-medium, gpt2-large,
        gpt2-xl) when online. Needs the optional `transformers` package."""
        try:
            from transformers import GPT2LMHeadModel
        except ImportError as e:
            raise ImportError("loading GPT-2 weights needs transformers: pip install transformers") from e
        if not os.path.isdir(name_or_dir) and name_or_dir not in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"):
            raise FileNotFoundError(
                f"{name_or_dir!r} is neither a local Hugging Face model directory nor a GPT-2 hub name "
                "(gpt2, gpt2-medium, gpt2-large, gpt2-xl)")
        hf_model = GPT2LMHeadModel.from_pretrained(name_or_dir)
        return cls.from_hf_model(hf_model, dropout=dropout)

    @classmethod
    def from_hf_model(cls, hf_model, dropout=0.0):
        """Build our model from an in-memory transformers GPT2LMHeadModel."""
        hc = hf_model.config
        if getattr(hc, "activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"unsupported activation {hc.activation_function!r}: this model uses GPT-2's tanh GELU")
        config = GPTConfig(block_size=hc.n_positions, vocab_size=hc.vocab_size, n_layer=hc.n_layer,
                           n_head=hc.n_head, n_embd=hc.n_embd, dropout=dropout, bias=True,
                           n_inner=hc.n_inner)
        model = cls(config)
        sd = model.state_dict()
        hf_sd = hf_model.state_dict()
        with torch.no_grad():
            for k, v in hf_sd.items():
                if k.endswith(".attn.bias") or k.endswith(".attn.masked_bias"):
                    continue  # causal-mask buffers of old transformers versions, not weights
                if k == "lm_head.weight":
                    continue  # tied to wte
                if k not in sd:
                    raise KeyError(f"unexpected key {k!r} in the Hugging Face checkpoint")
                if any(k.endswith(w) for w in _CONV1D_WEIGHTS):
                    v = v.t()  # HF GPT-2 stores these as Conv1D (in, out); nn.Linear wants (out, in)
                if k == "transformer.wte.weight":
                    sd[k][: v.size(0)].copy_(v)
                    sd[k][v.size(0):].zero_()  # padding rows: never produced, never read
                else:
                    if sd[k].shape != v.shape:
                        raise ValueError(f"shape mismatch for {k}: ours {tuple(sd[k].shape)}, checkpoint {tuple(v.shape)}")
                    sd[k].copy_(v)
        return model

    def hf_state_dict(self):
        """Our weights under Hugging Face GPT2LMHeadModel's names and layouts."""
        out = {}
        for k, v in self.state_dict().items():
            v = v.detach().cpu()
            if any(k.endswith(w) for w in _CONV1D_WEIGHTS):
                v = v.t()
            if k == "transformer.wte.weight" or k == "lm_head.weight":
                v = v[: self.config.vocab_size]
            out[k] = v.contiguous().clone()
        return out

    def hf_config_dict(self):
        c = self.config
        if not c.bias:
            raise ValueError("a model trained with bias=False cannot be written as GPT-2: "
                             "GPT2LMHeadModel always has biases")
        return {
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": c.vocab_size, "n_positions": c.block_size, "n_ctx": c.block_size,
            "n_embd": c.n_embd, "n_layer": c.n_layer, "n_head": c.n_head, "n_inner": c.n_inner,
            "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "initializer_range": 0.02,
            "resid_pdrop": c.dropout, "embd_pdrop": c.dropout, "attn_pdrop": c.dropout,
            "bos_token_id": 50256, "eos_token_id": 50256, "tie_word_embeddings": True,
            "scale_attn_weights": True, "use_cache": True,
        }

    def to_hf(self, out_dir):
        """Write a Hugging Face GPT-2 model directory (config.json + model.safetensors, or
        pytorch_model.bin without safetensors) that transformers and lm-evaluation-harness load."""
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            json.dump(self.hf_config_dict(), f, indent=2)
        sd = self.hf_state_dict()
        try:
            from safetensors.torch import save_file
            sd.pop("lm_head.weight")  # tied: safetensors refuses shared storage, HF re-ties on load
            save_file(sd, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
        except ImportError:
            torch.save(sd, os.path.join(out_dir, "pytorch_model.bin"))
        return out_dir


# HF GPT-2 keeps these four weights as Conv1D, i.e. transposed relative to nn.Linear
_CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _sample_next(logits, temperature, top_k, generator):
    """One token id per row from logits (B, V)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits = logits.masked_fill(logits < v[:, [-1]], -float("inf"))
    probs = F.softmax(logits.float(), dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


# ---------------------------------------------------------------------- MFU

# Dense bf16/fp16 tensor-core peak FLOP/s per device (no sparsity), from vendor data sheets.
PEAK_FLOPS = {
    "H200": 989e12, "H100 SXM": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "GH200": 989e12,
    "A100": 312e12, "A10G": 70e12, "A10": 125e12, "L40S": 362e12, "L4": 121e12,
    "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12, "T4": 65e12, "B200": 2250e12,
    "MI300X": 1307e12, "MI250X": 383e12,
}
CPU_PEAK_FLOPS = 1e12  # a rough figure for a few cores of a modern CPU in float32; set peak_flops to measure yours


def device_peak_flops(device):
    """Best guess of one device's peak FLOP/s, for MFU. Unknown GPUs give None."""
    if str(device).startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(torch.device(device))
        # longest key first, so 'H100 PCIe' wins over 'H100'
        for key in sorted(PEAK_FLOPS, key=len, reverse=True):
            if key in name:
                return PEAK_FLOPS[key]
        return None
    if str(device).startswith("cpu"):
        return CPU_PEAK_FLOPS
    return None


def model_config_from_dict(d):
    """GPTConfig from a dict, ignoring keys that are not model settings (e.g. a train config)."""
    names = {f.name for f in fields(GPTConfig)}
    return GPTConfig(**{k: v for k, v in d.items() if k in names})


def model_config_to_dict(config):
    return asdict(config)


# ---------------------------------------------------------------------- checkpoints

def load_model(path, device="cpu", dropout=0.0, allow_unsafe_pickle=False):
    """A model from any of: our training checkpoint (out_dir/ckpt.pt, or the out_dir holding it),
    a Hugging Face GPT-2 model directory (config.json + weights), or a GPT-2 hub name.
    Returns (model, info) where info says what was loaded (e.g. the iteration of a checkpoint).
    Checkpoints are read safely and verified (checkpoint.py); allow_unsafe_pickle opens older ones."""
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
        info = {"source": "checkpoint", "path": path, "iter_num": ckpt.get("iter_num")}
    elif os.path.isdir(path) and os.path.exists(os.path.join(path, "config.json")) or not os.path.exists(path):
        try:
            model = GPT.from_hf(path, dropout=dropout)
        except FileNotFoundError as e:  # neither a file of ours nor a Hugging Face folder or name
            raise checkpoint.MissingFileError(str(e)) from None
        info = {"source": "huggingface", "path": path}
    else:
        raise checkpoint.MissingFileError(f"{path}: not a checkpoint file, an out_dir with ckpt.pt, "
                                          "or a Hugging Face model directory with config.json")
    return model.to(device), info
