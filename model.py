"""
A GPT language model in one file: GPT-2 by default, and the Llama / Qwen2 / Qwen3 block by settings.

The default architecture is GPT-2's: learned token and position embeddings, pre-LayerNorm
transformer blocks (causal self-attention, then a GELU MLP, each on a residual branch), a final
LayerNorm, and an output head that shares its weight with the token embedding. GPTConfig's other
fields turn the same blocks into the Llama family's (Llama 2/3, SmolLM, Qwen2, Qwen3):
    norm="rmsnorm"      RMSNorm instead of LayerNorm (norm_eps)
    pos_emb="rope"      rotary position embeddings on queries and keys (rope_theta, rope_scaling)
                        instead of learned positions added to the token embeddings
    mlp="swiglu"        down(silu(gate(x)) * up(x)) instead of GELU, n_inner wide
    n_kv_head           grouped-query attention: n_head query heads share n_kv_head key/value heads
    head_dim            per-head width when it is not n_embd // n_head (Qwen3)
    qk_norm=True        RMSNorm over each head's query and key before RoPE (Qwen3)
    tie_embeddings      output head shares the token embedding (GPT-2, Qwen3-0.6B) or has its own
    bias, qkv_bias      biases in every Linear and norm; qkv_bias overrides the q/k/v projection
                        alone (Qwen2: q/k/v biases, none elsewhere)
Parameter names are GPT-2's in every family (transformer.h.{i}.attn.c_attn holds q, k and v;
mlp.c_fc holds SwiGLU's gate and up projections), so `from_hf` / `to_hf` rename, split, join and
transpose to and from each family's Hugging Face checkpoint keys.

`forward(idx, targets, return_hidden=True)` also returns every layer's hidden states in
the indexing of Hugging Face `output_hidden_states`, in every family:
    hidden[0]      embedding output (token (+ position) embeddings, after dropout)
    hidden[1..n-1] outputs of blocks 1..n-1 (the residual stream)
    hidden[n]      ln_f (the final LayerNorm or RMSNorm) applied to the output of block n
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
import torch.utils.checkpoint

import checkpoint  # our checkpoint files (checkpoint.py), not torch.utils.checkpoint
from errors import InputError


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50257  # GPT-2 BPE; the embedding is padded up to a multiple of 64 for speed
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linears and LayerNorms, like GPT-2; False is a bit faster and better
    n_inner: int | None = None  # MLP width; None: 4 * n_embd (GELU), 8/3 * n_embd up to a multiple of 256 (SwiGLU)
    # the block's variant; the defaults are GPT-2 (see the top of the file for the Llama / Qwen values)
    norm: str = "layernorm"  # "layernorm" or "rmsnorm"
    norm_eps: float = 1e-5  # GPT-2 1e-5; Llama / Qwen's rms_norm_eps is 1e-5 or 1e-6
    pos_emb: str = "learned"  # "learned" (GPT-2's wpe) or "rope"
    rope_theta: float = 10000.0  # RoPE base; Llama 3 500000, Qwen3 1000000
    rope_scaling: dict | None = None  # None, or Llama 3's {"rope_type": "llama3", "factor", "low_freq_factor",
    #                                   "high_freq_factor", "original_max_position_embeddings"}
    mlp: str = "gelu"  # "gelu" (GPT-2's tanh GELU) or "swiglu"
    n_kv_head: int | None = None  # key/value heads; None: n_head (no grouping)
    head_dim: int | None = None  # per-head width; None: n_embd // n_head
    qk_norm: bool = False  # RMSNorm over each head's queries and keys (Qwen3)
    qkv_bias: bool | None = None  # bias of the q/k/v projection; None: same as bias
    tie_embeddings: bool = True  # the output head is the token embedding matrix

    @property
    def padded_vocab_size(self):
        # 50257 -> 50304: matmuls with a dimension that is a multiple of 64 run much faster on GPUs
        return ((self.vocab_size + 63) // 64) * 64

    @property
    def head_size(self):
        return self.head_dim or self.n_embd // self.n_head

    @property
    def kv_heads(self):
        return self.n_kv_head or self.n_head

    @property
    def mlp_width(self):
        if self.n_inner:
            return self.n_inner
        if self.mlp == "swiglu":  # Llama's rule: two thirds of 4 * n_embd (3 matrices instead of 2), rounded up
            return 256 * math.ceil(8 * self.n_embd / 3 / 256)
        return 4 * self.n_embd

    def __post_init__(self):
        choices = {"norm": ("layernorm", "rmsnorm"), "pos_emb": ("learned", "rope"), "mlp": ("gelu", "swiglu")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}; choose one of {', '.join(allowed)}")
        if self.head_dim is None and self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head} "
                             "(or set head_dim)")
        if self.n_kv_head is not None and (self.n_kv_head < 1 or self.n_head % self.n_kv_head != 0):
            raise ValueError(f"n_head={self.n_head} must be a multiple of n_kv_head={self.n_kv_head}")
        if self.head_size % 2 and self.pos_emb == "rope":
            raise ValueError(f"RoPE needs an even head size, got {self.head_size}")
        if self.rope_theta <= 0:
            raise ValueError(f"rope_theta={self.rope_theta} must be positive")
        if self.rope_scaling is not None and self.rope_scaling.get("rope_type") != "llama3":
            raise ValueError(f"rope_scaling={self.rope_scaling!r}: only rope_type 'llama3' is implemented")
        if self.norm_eps <= 0:
            raise ValueError(f"norm_eps={self.norm_eps} must be positive")


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's LayerNorm always has one before 2.1)."""

    def __init__(self, ndim, bias, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None
        self.eps = eps

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight: LayerNorm without the centring and the bias (Llama, Qwen)."""

    def __init__(self, ndim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.eps = eps

    def forward(self, x):
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


def make_norm(config, ndim):
    if config.norm == "rmsnorm":
        return RMSNorm(ndim, config.norm_eps)
    return LayerNorm(ndim, bias=config.bias, eps=config.norm_eps)


def rope_tables(config):
    """cos and sin (block_size, head_size) of the rotary embedding, in float32: position p
    rotates the pair (i, i + head_size/2) of a query or key by p * inv_freq[i]."""
    hs = config.head_size
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, hs, 2, dtype=torch.float) / hs))  # (hs/2,)
    if config.rope_scaling is not None:
        # Llama 3: long wavelengths are slowed down by `factor`, short ones kept, the band between blended
        s = config.rope_scaling
        old_ctx = s["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        slowed = inv_freq / s["factor"]
        blend = (old_ctx / wavelen - s["low_freq_factor"]) / (s["high_freq_factor"] - s["low_freq_factor"])
        middle = (1 - blend) * slowed + blend * inv_freq
        inv_freq = torch.where(wavelen > old_ctx / s["low_freq_factor"], slowed,
                               torch.where(wavelen < old_ctx / s["high_freq_factor"], inv_freq, middle))
    angles = torch.outer(torch.arange(config.block_size, dtype=torch.float), inv_freq)  # (T, hs/2)
    angles = torch.cat((angles, angles), dim=-1)  # (T, hs): both halves of a pair turn by the same angle
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """Rotate x (B, nh, T, hs) by the position angles cos, sin: (T, hs), or (B, 1, T, hs) when
    the rows sit at different positions."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)  # (B, nh, T, hs): each pair (a, b) -> (-b, a)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.n_kv_head = config.kv_heads
        self.head_size = config.head_size
        self.dropout = config.dropout
        qkv_bias = config.bias if config.qkv_bias is None else config.qkv_bias
        # queries of all n_head heads, keys and values of the n_kv_head heads, in one matmul
        self.c_attn = nn.Linear(config.n_embd, (self.n_head + 2 * self.n_kv_head) * self.head_size, bias=qkv_bias)
        self.c_proj = nn.Linear(self.n_head * self.head_size, config.n_embd, bias=config.bias)
        self.qk_norm = config.qk_norm
        if config.qk_norm:
            self.q_norm = RMSNorm(self.head_size, config.norm_eps)
            self.k_norm = RMSNorm(self.head_size, config.norm_eps)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, kv_cache=None, rope=None, attn_mask=None):
        B, T, C = x.size()
        hs, nh, nkv = self.head_size, self.n_head, self.n_kv_head
        q, k, v = self.c_attn(x).split([nh * hs, nkv * hs, nkv * hs], dim=2)
        q = q.view(B, T, nh, hs)
        k = k.view(B, T, nkv, hs)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)  # each head's vector on its own
        q = q.transpose(1, 2)  # (B, nh, T, hs)
        k = k.transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if kv_cache is not None:
            # generation: keys and values of earlier positions were stored on the last call
            if kv_cache.get("k") is not None:
                k = torch.cat([kv_cache["k"], k], dim=2)  # (B, nkv, T_past + T, hs)
                v = torch.cat([kv_cache["v"], v], dim=2)
            kv_cache["k"], kv_cache["v"] = k, v
        T_past = k.size(2) - T
        dropout_p = self.dropout if self.training else 0.0
        gqa = nkv != nh  # each group of nh / nkv query heads reads one key/value head
        if attn_mask is not None:  # (B, 1, T, T_past + T): rows whose cached pasts are padded (see GPT.body)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, enable_gqa=gqa)
        elif T_past == 0:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, enable_gqa=gqa)
        else:
            # new queries sit at positions T_past..T_past+T-1: each sees every cached key and
            # the new keys up to itself (is_causal would align the mask to the wrong corner)
            mask = torch.ones(T, T_past + T, dtype=torch.bool, device=x.device).tril(diagonal=T_past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, enable_gqa=gqa)
        y = y.transpose(1, 2).contiguous().view(B, T, nh * hs)  # (B, T, nh * hs): heads side by side again
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        width = config.mlp_width
        self.swiglu = config.mlp == "swiglu"
        # SwiGLU's gate and up projections share one matmul: c_fc's first `width` outputs are the gate
        self.c_fc = nn.Linear(config.n_embd, 2 * width if self.swiglu else width, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's "gelu_new"
        self.c_proj = nn.Linear(width, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        if self.swiglu:
            gate, up = self.c_fc(x).chunk(2, dim=-1)
            return self.dropout(self.c_proj(F.silu(gate) * up))
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = make_norm(config, config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config, config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x, kv_cache=None, rope=None, attn_mask=None):
        x = x + self.attn(self.ln_1(x), kv_cache, rope, attn_mask)
        x = x + self.mlp(self.ln_2(x))
        return x


# ---------------------------------------------------------------------- the loss

CE_CHUNK = 2**19  # logits per chunk (rows x V) of the CPU cross-entropy: ~2 MB of float32, a cache-sized piece


def cross_entropy(logits, targets):
    """Mean cross-entropy of logits (N, V) against targets (N,), rows whose target is -1 left out:
    F.cross_entropy(logits, targets, ignore_index=-1). On the CPU (uncompiled) it is _CrossEntropy,
    which makes one (N, V) tensor (the gradient) instead of F.cross_entropy's three; elsewhere
    F.cross_entropy, which the GPU kernels and torch.compile already fuse."""
    if logits.device.type == "cpu" and not torch.compiler.is_compiling():
        return _CrossEntropy.apply(logits, targets)
    return F.cross_entropy(logits, targets, ignore_index=-1)


class _CrossEntropy(torch.autograd.Function):
    """loss = mean over kept rows of logsumexp(logits_i) - logits_i[target_i]. The forward pass keeps
    only the row log-sum-exps (the logits are alive anyway: they are the model's output); the backward
    pass writes (softmax - onehot) * d loss / d row straight into the gradient it returns. Both walk
    over the rows in cache-sized chunks, so no other (N, V) temporary is made."""

    @staticmethod
    def forward(ctx, logits, targets):
        N, V = logits.shape
        rows = max(1, CE_CHUNK // V)
        lse = torch.empty(N, dtype=logits.dtype, device=logits.device)  # (N,)
        for a in range(0, N, rows):
            torch.logsumexp(logits[a:a + rows], dim=1, out=lse[a:a + rows])
        keep = targets != -1  # (N,)
        safe = torch.where(keep, targets, 0)  # (N,) ignored rows point at column 0, then get weight 0
        picked = logits.gather(1, safe[:, None]).squeeze(1)  # (N,) the target's logit
        n_kept = keep.sum()
        loss = torch.where(keep, lse - picked, 0.0).sum() / n_kept  # 0 / 0 = nan when nothing is kept, as torch
        ctx.save_for_backward(logits, safe, keep, lse, n_kept)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        logits, safe, keep, lse, n_kept = ctx.saved_tensors
        N, V = logits.shape
        rows = max(1, CE_CHUNK // V)
        scale = torch.where(keep, grad_loss / n_kept, 0.0).to(logits.dtype)  # (N,) d loss / d row loss
        grad = torch.empty_like(logits)  # (N, V)
        for a in range(0, N, rows):
            g = grad[a:a + rows]
            torch.sub(logits[a:a + rows], lse[a:a + rows, None], out=g).exp_().mul_(scale[a:a + rows, None])  # softmax
        grad.scatter_add_(1, safe[:, None], -scale[:, None])  # - onehot
        return grad, None


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        modules = dict(wte=nn.Embedding(config.padded_vocab_size, config.n_embd))
        if config.pos_emb == "learned":
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        self.transformer = nn.ModuleDict(dict(
            **modules,
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=make_norm(config, config.n_embd),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        if config.tie_embeddings:
            # weight tying: the output head reads tokens with the same vectors that embed them
            self.transformer.wte.weight = self.lm_head.weight
        if config.pos_emb == "rope":
            # computed, not learned: kept out of the state_dict (checkpoints hold weights only)
            cos, sin = rope_tables(config)
            self.register_buffer("rope_cos", cos, persistent=False)  # (block_size, hs)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.gradient_checkpointing = False  # recompute each block's activations in backward (train.py sets it)
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
        """Parameters, counted once (a tied head is not counted twice). Position embeddings (and
        an untied model's input embedding, a lookup) are left out by default, as in the
        scaling-law convention."""
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if "wpe" in self.transformer:
                n_params -= self.transformer.wpe.weight.numel()
            if not self.config.tie_embeddings:
                n_params -= self.transformer.wte.weight.numel()
        return n_params

    def embed(self, idx, pos_offset=0, positions=None):
        """Token embeddings (B, T, C) and learned position embeddings (T, C), before they are
        summed; the position embeddings are None with RoPE (positions act inside attention).
        positions: optional (B, T) position of every token, when the rows start at different
        positions (then the position embeddings are (B, T, C))."""
        T = idx.size(1)
        last = pos_offset + T if positions is None else int(positions[:, 0].max()) + 1
        if last > self.config.block_size:
            raise ValueError(f"sequence of length {last} is longer than block_size={self.config.block_size}")
        if "wpe" not in self.transformer:
            return self.transformer.wte(idx), None
        if positions is None:
            positions = torch.arange(pos_offset, pos_offset + T, dtype=torch.long, device=idx.device)
        return self.transformer.wte(idx), self.transformer.wpe(positions)

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
        # the head at the padded width (a multiple of 64, which GPU matmuls tile well); callers see the
        # vocab_size real columns only
        padded = self.lm_head(x)  # (B, T, padded_vocab_size)
        V = self.config.vocab_size
        loss = None
        if targets is not None:
            # the loss over the padded rows with the padding columns at -inf: exp(-inf) = 0, so the value
            # and the gradient are those of the V real columns, and the weight's padding rows get none
            scores = padded.float()  # (B, T, padded): padded itself in float32, a copy under autocast
            if scores.size(-1) > V:
                scores[..., V:] = float("-inf")
            loss = cross_entropy(scores.view(-1, scores.size(-1)), targets.view(-1))
        logits = padded[..., :V]  # (B, T, vocab_size), a view
        if return_hidden:
            return logits, loss, hidden
        return logits, loss

    def body(self, idx, return_hidden=False, tok_emb_noise=None, kv_caches=None, last_hidden_before_ln=False,
             past_lengths=None):
        """Everything but the output head: the final states after ln_f (B, T, C), and the hidden
        states list (or None). Scorers and probes call it to skip the (B, T, vocab) logits.
        past_lengths: optional (B,) number of real positions at the start of each row's cached
        past; the rest of the cache (up to its length) is padding that no token attends to, and
        row b's tokens sit at positions past_lengths[b], past_lengths[b] + 1, ... (the scorer
        runs the continuations of different questions in one pass this way). A row's positions
        past block_size - 1 are clamped to it: only a short row's right padding sits there, and
        no real token reads padding."""
        B, T = idx.size()
        pos_offset = 0
        if kv_caches is not None and kv_caches[0].get("k") is not None:
            pos_offset = kv_caches[0]["k"].size(2)
        positions = attn_mask = None
        if past_lengths is not None:
            past_lengths = past_lengths.to(idx.device)[:, None]  # (B, 1)
            positions = (past_lengths + torch.arange(T, device=idx.device)).clamp(max=self.config.block_size - 1)  # (B, T)
            # a query sees its row's real cached keys and the new keys up to itself
            cached = torch.arange(pos_offset, device=idx.device) < past_lengths  # (B, T_past)
            causal = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()  # (T, T)
            attn_mask = torch.cat([cached[:, None, :].expand(B, T, pos_offset), causal.expand(B, T, T)], dim=2)
            attn_mask = attn_mask[:, None]  # (B, 1, T, T_past + T): one mask for every head
        tok_emb, pos_emb = self.embed(idx, pos_offset, positions)  # (B, T, C), (T, C) or (B, T, C) or None
        if tok_emb_noise is not None:
            tok_emb = tok_emb + tok_emb_noise
        x = self.transformer.drop(tok_emb if pos_emb is None else tok_emb + pos_emb)
        rope = None
        if self.config.pos_emb == "rope":
            if positions is None:
                rope = (self.rope_cos[pos_offset:pos_offset + T], self.rope_sin[pos_offset:pos_offset + T])  # (T, hs) each
            else:
                rope = (self.rope_cos[positions][:, None], self.rope_sin[positions][:, None])  # (B, 1, T, hs) each
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        hidden = [x] if return_hidden else None
        for i, block in enumerate(self.transformer.h):
            kv_cache = None if kv_caches is None else kv_caches[i]
            if recompute:
                # keep only the block's input; its inner activations are recomputed in backward
                # (with the same dropout masks: checkpoint restores the RNG state)
                x = torch.utils.checkpoint.checkpoint(block, x, kv_cache, rope, attn_mask, use_reentrant=False)
            else:
                x = block(x, kv_cache, rope, attn_mask)
            if return_hidden and (i < self.config.n_layer - 1 or last_hidden_before_ln):
                hidden.append(x)
        x = self.transformer.ln_f(x)
        if return_hidden and not last_hidden_before_ln:
            hidden.append(x)  # like Hugging Face, the last hidden state is taken after ln_f
        return x, hidden

    def head(self, x):
        """Next-token logits (..., vocab_size) from final states (..., C): the product at the padded
        width (a multiple of 64, which GPU matmuls tile well), the padding columns dropped by a view."""
        return self.lm_head(x)[..., :self.config.vocab_size]

    def crop_block_size(self, block_size):
        """Use a shorter context than the checkpoint was trained with (e.g. GPT-2's 1024 -> 256)."""
        assert block_size <= self.config.block_size
        self.config.block_size = block_size
        if "wpe" in self.transformer:
            self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])
        if self.config.pos_emb == "rope":
            self.rope_cos, self.rope_sin = self.rope_cos[:block_size], self.rope_sin[:block_size]

    # ------------------------------------------------------------------ optimizer and cost

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        """AdamW with weight decay on the 2-D weights (matmuls and embeddings) only; biases and
        norm gains are not decayed. Uses torch's fused kernel on CUDA and on the CPU (on the CPU it
        is ~10x faster than the default per-tensor loop, and equal to it up to float rounding,
        tests/test_model.py)."""
        params = {n: p for n, p in self.named_parameters() if p.requires_grad}
        decay = [p for p in params.values() if p.dim() >= 2]
        no_decay = [p for p in params.values() if p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        use_fused = device_type in ("cuda", "cpu")
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=use_fused)

    def flops_per_token(self, seq_len=None):
        """Training FLOPs per token (forward + backward = 3x forward): 6 per parameter that a
        token passes through, plus the attention score and value matmuls (PaLM appendix B)."""
        cfg = self.config
        T = seq_len or cfg.block_size
        N = self.get_num_params(non_embedding=True)
        return 6 * N + 12 * cfg.n_layer * cfg.n_head * cfg.head_size * T

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None):
        """Sample max_new_tokens tokens after the prompt idx (B, T), with a KV cache: each new
        token costs one position's forward pass. temperature 0 means greedy decoding."""
        if idx.size(1) + max_new_tokens > self.config.block_size:
            # the cache cannot slide past the last position; fall back to re-encoding a window
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

    # ------------------------------------------------------------------ Hugging Face weights in and out

    @classmethod
    def from_hf(cls, name_or_dir, dropout=0.0):
        """Load a Hugging Face GPT2LMHeadModel, LlamaForCausalLM, Qwen2ForCausalLM or
        Qwen3ForCausalLM checkpoint: a local directory with config.json and safetensors weights
        (model.safetensors, or shards listed in model.safetensors.index.json), or a hub name
        (gpt2, Qwen/Qwen3-0.6B, ...) downloaded with huggingface_hub when online. The family is
        read from config.json; settings this model does not implement are refused by name.
        Only safetensors files are read (a pytorch_model.bin is a pickle, which can run code)."""
        folder = name_or_dir if os.path.isdir(name_or_dir) else _download_from_hub(name_or_dir)
        config_path = os.path.join(folder, "config.json")
        if not os.path.isfile(config_path):
            raise FileNotFoundError(f"{folder} has no config.json: not a Hugging Face model directory")
        with open(config_path) as f:
            hf_config = json.load(f)
        config = config_from_hf(hf_config, dropout=dropout)  # refuses what we do not implement, before reading weights
        return cls._from_hf_weights(config, hf_config["model_type"], _read_safetensors(folder))

    @classmethod
    def from_hf_model(cls, hf_model, dropout=0.0):
        """Build our model from an in-memory transformers model of one of the four families."""
        hf_config = hf_model.config.to_dict()
        config = config_from_hf(hf_config, dropout=dropout)
        return cls._from_hf_weights(config, hf_config["model_type"], hf_model.state_dict())

    @classmethod
    def _from_hf_weights(cls, config, family, hf_sd):
        model = cls(config)
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

    def hf_state_dict(self):
        """Our weights under the Hugging Face family's names and layouts (family: hf_family)."""
        return _state_dict_to_hf(self.config, hf_family(self.config), self.state_dict())

    def hf_config_dict(self):
        """config.json of the Hugging Face model this one is (see hf_family)."""
        return config_to_hf(self.config)

    def to_hf(self, out_dir):
        """Write a Hugging Face model directory (config.json + model.safetensors, float32) that
        transformers and lm-evaluation-harness load: GPT2LMHeadModel, LlamaForCausalLM,
        Qwen2ForCausalLM or Qwen3ForCausalLM, whichever this model's settings are."""
        try:
            from safetensors.torch import save_file
        except ImportError as e:
            raise ImportError("writing Hugging Face weights needs safetensors: pip install safetensors") from e
        hf_config = self.hf_config_dict()  # refuses settings no family has, before anything is written
        sd = self.hf_state_dict()
        os.makedirs(out_dir, exist_ok=True)
        # write beside, then rename: an existing model in out_dir stays whole until the new one is
        for name, write in (("model.safetensors", lambda p: save_file(sd, p, metadata={"format": "pt"})),
                            ("config.json", lambda p: open(p, "w").write(json.dumps(hf_config, indent=2)))):
            path = os.path.join(out_dir, name)
            write(path + ".tmp")
            os.replace(path + ".tmp", path)
        return out_dir


# ---------------------------------------------------------------------- Hugging Face families

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


def _state_dict_to_hf(config, family, state_dict):
    """The Hugging Face family's state_dict (contiguous CPU copies, vocabulary padding dropped,
    a tied head left out: safetensors refuses shared storage and transformers re-ties on load)."""
    sd = {k: v.detach().cpu() for k, v in state_dict.items()}
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
    Returns (model, info) where info says what was loaded (e.g. the iteration of a checkpoint) and
    info["tokenizer"] names its tokenizer for data.common.get_tokenizer.
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
        # the tokenizer of its data (train.py records it); older checkpoints were all GPT-2's
        info = {"source": "checkpoint", "path": path, "iter_num": ckpt.get("iter_num"),
                "tokenizer": ckpt.get("tokenizer") or "gpt2"}
    elif os.path.isdir(path) and os.path.exists(os.path.join(path, "config.json")) or not os.path.exists(path):
        try:
            model = GPT.from_hf(path, dropout=dropout)
        except FileNotFoundError as e:  # neither a file of ours nor a Hugging Face folder or name
            raise checkpoint.MissingFileError(str(e)) from None
        except ValueError as e:  # a field or weight this model cannot represent (the message names it)
            raise InputError(f"{path}: {e}") from None
        info = {"source": "huggingface", "path": path, "tokenizer": hf_tokenizer_name(path)}
    else:
        raise checkpoint.MissingFileError(f"{path}: not a checkpoint file, an out_dir with ckpt.pt, "
                                          "or a Hugging Face model directory with config.json")
    return model.to(device), info


def hf_tokenizer_name(path):
    """The tokenizer of a Hugging Face model: its own folder when it holds tokenizer files (or it is
    a hub name), else GPT-2's (model.to_hf writes weights and config.json only)."""
    if not os.path.isdir(path):
        return path
    files = ("tokenizer.json", "vocab.json", "tokenizer.model", "tokenizer_config.json")
    return os.path.abspath(path) if any(os.path.exists(os.path.join(path, f)) for f in files) else "gpt2"
