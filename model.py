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
mlp.c_fc holds SwiGLU's gate and up projections); hf.py converts to and from each family's
Hugging Face checkpoints, load.py reads any of them (and our own checkpoints) into this model.

`model(idx, targets, return_hidden=True)` also returns every layer's hidden states in the
indexing of Hugging Face `output_hidden_states`, in every family:
    hidden[0]      embedding output (token (+ position) embeddings, after dropout)
    hidden[1..n-1] outputs of blocks 1..n-1 (the residual stream)
    hidden[n]      ln_f (the final LayerNorm or RMSNorm) applied to the output of block n
The dispersion loss (disperse.py) and the condensation probes (eval/condensation.py) read these.
When they are not asked for, nothing extra is kept.
"""

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.utils.checkpoint
from torch.nn import functional as F


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
    mlp: str = "gelu"  # "gelu" (GPT-2's tanh GELU), "gelu_exact" (erf GELU: nanoGPT's nn.GELU()) or "swiglu"
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
        choices = {"norm": ("layernorm", "rmsnorm"), "pos_emb": ("learned", "rope"), "mlp": ("gelu", "gelu_exact", "swiglu")}
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


def pad_vocab_rows(weight, padded_vocab_size):
    """A (vocab_size, ...) embedding or head weight, or its optimizer moment, with zero rows up to
    padded_vocab_size: the padding rows the model has but a vocabulary-sized checkpoint lacks."""
    return torch.cat([weight, weight.new_zeros(padded_vocab_size - weight.size(0), *weight.shape[1:])])


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

    def forward(self, x, rope=None, kv_cache=None, attn_mask=None):
        """x (B, T, C). rope: (cos, sin) for these positions, or None. kv_cache: a dict holding the
        keys and values of the earlier positions ("k", "v"), extended in place (generation and
        scoring). attn_mask: (B, 1, T, T_past + T), which keys each query sees, or None for the
        causal mask."""
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
            if kv_cache.get("k") is not None:
                k = torch.cat([kv_cache["k"], k], dim=2)  # (B, nkv, T_past + T, hs)
                v = torch.cat([kv_cache["v"], v], dim=2)
            kv_cache["k"], kv_cache["v"] = k, v
        T_past = k.size(2) - T
        if attn_mask is None and T_past > 0:
            # new queries sit at positions T_past..T_past+T-1: each sees every cached key and the new
            # keys up to itself (is_causal would align the mask to the wrong corner)
            attn_mask = torch.ones(T, T_past + T, dtype=torch.bool, device=x.device).tril(diagonal=T_past)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=attn_mask is None, enable_gqa=nkv != nh)
        y = y.transpose(1, 2).contiguous().view(B, T, nh * hs)  # (B, T, nh * hs): heads side by side again
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        width = config.mlp_width
        self.swiglu = config.mlp == "swiglu"
        # SwiGLU's gate and up projections share one matmul: c_fc's first `width` outputs are the gate
        self.c_fc = nn.Linear(config.n_embd, 2 * width if self.swiglu else width, bias=config.bias)
        # GPT-2's "gelu_new" is the tanh approximation; nanoGPT (and so its checkpoints) uses the exact erf form
        self.gelu = nn.GELU(approximate="none" if config.mlp == "gelu_exact" else "tanh")
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

    def forward(self, x, rope=None, kv_cache=None, attn_mask=None):
        x = x + self.attn(self.ln_1(x), rope, kv_cache, attn_mask)
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
        # switches the trainer sets: recompute each block's activations in backward (less memory), and
        # make the last hidden state block n's raw output instead of ln_f of it (the default is HF's)
        self.gradient_checkpointing = False
        self.last_hidden_before_ln = False
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

    # ------------------------------------------------------------------ forward passes

    def forward(self, idx, targets=None, return_hidden=False, emb_noise=None):
        """
        idx: (B, T) token ids. targets: (B, T) next-token ids, -1 where ignored, or None.
        return_hidden: also return the list of n_layer + 1 hidden states (HF indexing, see top).
        emb_noise: optional (B, T, C) tensor added to the token embeddings (the NEFTune control).
        Returns (logits, loss), as nanoGPT's model does, or (logits, loss, hidden) with return_hidden;
        logits are (B, T, vocab_size), without the padding columns.
        """
        x = self._embed(idx, emb_noise=emb_noise)  # (B, T, C)
        x, hidden = self._blocks(x, self._rope(0, idx.size(1)), return_hidden=return_hidden)
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

    def hidden_states(self, idx):
        """The n_layer + 1 hidden states (B, T, C) of idx (B, T), without running the output head."""
        return self._blocks(self._embed(idx), self._rope(0, idx.size(1)), return_hidden=True)[1]

    def forward_cached(self, idx, kv_caches, past_lengths=None):
        """The final states (B, T, C), after ln_f, of new tokens idx (B, T) whose past is in
        kv_caches (one dict per block, extended in place; empty dicts for no past): incremental
        decoding, and the scorer's batches of continuations. head() turns states into logits.
        past_lengths: optional (B,) number of real positions at the start of each row's cached past;
        the rest of the cache is padding that no token attends to, and row b's tokens sit at
        positions past_lengths[b], past_lengths[b] + 1, ... A row's positions past block_size - 1
        are clamped to it: only a short row's right padding sits there, and no real token reads it."""
        B, T = idx.size()
        T_past = kv_caches[0]["k"].size(2) if kv_caches[0].get("k") is not None else 0
        if past_lengths is None:
            x = self._embed(idx, pos_offset=T_past)
            return self._blocks(x, self._rope(T_past, T), kv_caches=kv_caches)[0]
        past_lengths = past_lengths.to(idx.device)[:, None]  # (B, 1)
        positions = (past_lengths + torch.arange(T, device=idx.device)).clamp(max=self.config.block_size - 1)  # (B, T)
        # a query sees its row's real cached keys and the new keys up to itself
        cached = torch.arange(T_past, device=idx.device) < past_lengths  # (B, T_past)
        causal = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()  # (T, T)
        attn_mask = torch.cat([cached[:, None, :].expand(B, T, T_past), causal.expand(B, T, T)], dim=2)
        rope = None
        if self.config.pos_emb == "rope":
            rope = (self.rope_cos[positions][:, None], self.rope_sin[positions][:, None])  # (B, 1, T, hs) each
        x = self._embed(idx, positions=positions)
        return self._blocks(x, rope, kv_caches=kv_caches, attn_mask=attn_mask[:, None])[0]  # mask (B, 1, T, T_past + T)

    def head(self, x):
        """Next-token logits (..., vocab_size) from final states (..., C): the product at the padded
        width, the padding columns dropped by a view."""
        return self.lm_head(x)[..., :self.config.vocab_size]

    def _embed(self, idx, emb_noise=None, pos_offset=0, positions=None):
        """Token (+ learned position) embeddings after dropout, (B, T, C). positions: (B, T) when
        the rows sit at different positions, else they run from pos_offset."""
        T = idx.size(1)
        last = pos_offset + T if positions is None else int(positions[:, 0].max()) + 1
        if last > self.config.block_size:
            raise ValueError(f"sequence of length {last} is longer than block_size={self.config.block_size}")
        x = self.transformer.wte(idx)  # (B, T, C)
        if emb_noise is not None:
            x = x + emb_noise
        if "wpe" in self.transformer:
            if positions is None:
                positions = torch.arange(pos_offset, pos_offset + T, dtype=torch.long, device=idx.device)
            x = x + self.transformer.wpe(positions)  # (T, C) or (B, T, C)
        return self.transformer.drop(x)

    def _rope(self, start, T):
        """RoPE's (cos, sin) (T, hs) for positions start..start+T-1, or None for learned positions."""
        if self.config.pos_emb != "rope":
            return None
        return self.rope_cos[start:start + T], self.rope_sin[start:start + T]

    def _blocks(self, x, rope, kv_caches=None, attn_mask=None, return_hidden=False):
        """Every block, then ln_f: the final states (B, T, C) and the hidden states list (or None)."""
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        hidden = [x] if return_hidden else None
        for i, block in enumerate(self.transformer.h):
            kv_cache = None if kv_caches is None else kv_caches[i]
            if recompute:
                # keep only the block's input; its inner activations are recomputed in backward
                # (with the same dropout masks: checkpoint restores the RNG state)
                x = torch.utils.checkpoint.checkpoint(block, x, rope, kv_cache, attn_mask, use_reentrant=False)
            else:
                x = block(x, rope, kv_cache, attn_mask)
            if return_hidden and (i < self.config.n_layer - 1 or self.last_hidden_before_ln):
                hidden.append(x)
        x = self.transformer.ln_f(x)
        if return_hidden and not self.last_hidden_before_ln:
            hidden.append(x)  # like Hugging Face, the last hidden state is taken after ln_f
        return x, hidden

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
        tests/test_model_head.py)."""
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
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None, on_token=None):
        """Sample max_new_tokens tokens after the prompt idx (B, T), with a KV cache: each new
        token costs one position's forward pass. temperature 0 means greedy decoding.
        on_token: called with no argument after each new token (sample.py's progress bar)."""
        if idx.size(1) + max_new_tokens > self.config.block_size:
            # the cache cannot slide past the last position; fall back to re-encoding a window
            return self.generate_windowed(idx, max_new_tokens, temperature, top_k, generator, on_token)
        kv_caches = [dict() for _ in range(self.config.n_layer)]
        logits = self.head(self.forward_cached(idx, kv_caches)[:, -1])  # (B, V)
        for _ in range(max_new_tokens):
            idx_next = sample_next(logits, temperature, top_k, generator)
            idx = torch.cat((idx, idx_next), dim=1)
            if on_token is not None:
                on_token()
            logits = self.head(self.forward_cached(idx_next, kv_caches)[:, -1])
        return idx

    @torch.no_grad()
    def generate_windowed(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None, on_token=None):
        """generate() without a cache: each new token re-reads the last block_size tokens."""
        for _ in range(max_new_tokens):
            idx_cond = idx[:, -self.config.block_size:]
            logits, _ = self(idx_cond)
            idx = torch.cat((idx, sample_next(logits[:, -1, :], temperature, top_k, generator)), dim=1)
            if on_token is not None:
                on_token()
        return idx


def sample_next(logits, temperature, top_k, generator):
    """One token id per row from logits (B, V)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits = logits.masked_fill(logits < v[:, [-1]], -float("inf"))
    probs = F.softmax(logits.float(), dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


def model_config_from_dict(d):
    """GPTConfig from a dict, ignoring keys that are not model settings (e.g. a train config)."""
    names = {f.name for f in fields(GPTConfig)}
    return GPTConfig(**{k: v for k, v in d.items() if k in names})


def model_config_to_dict(config):
    return asdict(config)
