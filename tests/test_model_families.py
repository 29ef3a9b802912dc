"""The Llama / Qwen2 / Qwen3 blocks of model.py against transformers (tiny random models built
offline from transformers' own config classes), and their formulas against float64 references."""

import json
import math

import pytest
import torch

from conftest import tiny_hf_model
import hf
from hf import config_from_hf
from load import load_model
from model import GPT, GPTConfig, apply_rope, rope_tables

transformers = pytest.importorskip("transformers")

VOCAB = 101  # not a multiple of 64: the padded rows must stay invisible


def hf_tiny(family, **overrides):
    return tiny_hf_model(family, vocab_size=VOCAB, **overrides)


def ids(n=2, T=20, seed=0):
    return torch.randint(0, VOCAB, (n, T), generator=torch.Generator().manual_seed(seed))


def assert_same_outputs(hf_model, ours, x):
    with torch.no_grad():
        hf_out = hf_model(x, output_hidden_states=True)
        logits, _, hidden = ours(x, return_hidden=True)
    assert logits.shape == hf_out.logits.shape
    assert (hf_out.logits - logits).abs().max() <= 1e-5
    assert len(hidden) == len(hf_out.hidden_states) == ours.config.n_layer + 1
    for a, b in zip(hf_out.hidden_states, hidden, strict=True):
        assert (a - b).abs().max() <= 1e-5
    return logits


FAMILIES = [
    ("gpt2", {}),
    ("llama", {}),
    ("llama", {"tie_word_embeddings": True, "num_key_value_heads": 4}),
    ("llama", {"attention_bias": True, "mlp_bias": True}),
    ("llama", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                "original_max_position_embeddings": 16}}),
    ("qwen2", {}),
    ("qwen3", {}),
    ("qwen3", {"num_key_value_heads": 1, "tie_word_embeddings": False}),
]


@pytest.mark.parametrize("family, overrides", FAMILIES)
def test_round_trip_through_transformers(family, overrides, tmp_path):
    hf_model = hf_tiny(family, **overrides)
    hf_model.save_pretrained(tmp_path / "hf_model")  # config.json + model.safetensors, as on the hub
    ours, info = load_model(str(tmp_path / "hf_model"))
    ours.eval()
    assert info["source"] == "huggingface"
    x = ids(T=40)  # longer than llama3's original context above: every frequency band is used
    logits = assert_same_outputs(hf_model, ours, x)
    # export -> transformers -> the same logits, and the same architecture and config class
    hf.export(ours, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == family and config["architectures"] == [type(hf_model).__name__]
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(back) is type(hf_model)
    with torch.no_grad():
        assert (back(x).logits - logits).abs().max() <= 1e-5
    # and in again: the same model
    again, _ = load_model(str(tmp_path / "out"))
    assert again.config == ours.config
    with torch.no_grad():
        assert torch.equal(again.eval()(x)[0], logits)


def test_in_memory_transformers_model_and_sharded_files(tmp_path):
    hf_model = hf_tiny("qwen3", num_hidden_layers=3)
    assert_same_outputs(hf_model, hf.from_transformers(hf_model).eval(), ids())
    hf_model.save_pretrained(tmp_path, max_shard_size="20KB")  # many shards and model.safetensors.index.json
    assert (tmp_path / "model.safetensors.index.json").exists() and not (tmp_path / "model.safetensors").exists()
    assert_same_outputs(hf_model, hf.load(str(tmp_path)).eval(), ids())


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_kv_cache_generation_with_rope_equals_full_recompute(family):
    ours = hf.from_transformers(hf_tiny(family)).eval()
    prompt = ids(T=5, seed=3)
    cached = ours.generate(prompt, 30, temperature=0)
    windowed = ours.generate_windowed(prompt, 30, 0, None, None)
    assert torch.equal(cached, windowed)
    # the logits at every position, step by step through the cache, equal one full pass
    x = ids(T=24, seed=4)
    caches = [dict() for _ in range(ours.config.n_layer)]
    with torch.no_grad():
        full = ours(x)[0]
        steps = [ours.head(ours.forward_cached(x[:, :9], caches))] + \
            [ours.head(ours.forward_cached(x[:, t:t + 1], caches)) for t in range(9, 24)]
    assert (torch.cat(steps, dim=1) - full).abs().max() < 1e-5


def test_rope_equals_complex_rotation_in_float64():
    config = GPTConfig(block_size=12, n_embd=24, n_head=2, pos_emb="rope", rope_theta=100.0)
    cos, sin = rope_tables(config)
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)  # (B, nh, T, hs)
    got = apply_rope(x, cos.double(), sin.double())
    # reference: pair (i, i + hs/2) is the complex number x_i + j x_{i+hs/2}, turned by p * theta^(-2i/hs)
    half = 6
    z = torch.complex(x[..., :half], x[..., half:])
    angle = torch.arange(12, dtype=torch.float64)[:, None] * 100.0 ** (-torch.arange(half, dtype=torch.float64) * 2 / 12)
    turned = z * torch.polar(torch.ones_like(angle), angle)
    want = torch.cat([turned.real, turned.imag], dim=-1)
    assert (got - want).abs().max() < 1e-6  # the tables are float32


def test_grouped_query_attention_equals_repeated_heads_in_float64():
    """GQA with RoPE and QK-norm against attention written out with explicit loops over heads."""
    torch.manual_seed(0)
    config = GPTConfig(block_size=16, n_embd=32, n_head=4, n_kv_head=2, head_dim=8, norm="rmsnorm", pos_emb="rope",
                       mlp="swiglu", qk_norm=True, bias=False, qkv_bias=True)
    attn = GPT(config).double().transformer.h[0].attn
    with torch.no_grad():
        for p in attn.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    rope = rope_tables(config)
    x = torch.randn(2, 10, 32, dtype=torch.float64)
    got = attn(x, rope=(rope[0][:10].double(), rope[1][:10].double()))
    W, b = attn.c_attn.weight, attn.c_attn.bias
    qkv = x @ W.t() + b
    q, k, v = qkv[..., :32], qkv[..., 32:48], qkv[..., 48:]
    def rms(h, w):
        return h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + config.norm_eps) * w
    out = torch.zeros(2, 10, 32, dtype=torch.float64)
    for h in range(4):
        g = h // 2  # query heads 0, 1 read key/value head 0; 2, 3 read head 1
        qh = apply_rope(rms(q[..., h * 8:(h + 1) * 8], attn.q_norm.weight)[:, None], rope[0][:10].double(), rope[1][:10].double())[:, 0]
        kh = apply_rope(rms(k[..., g * 8:(g + 1) * 8], attn.k_norm.weight)[:, None], rope[0][:10].double(), rope[1][:10].double())[:, 0]
        scores = qh @ kh.transpose(1, 2) / math.sqrt(8)
        scores = scores.masked_fill(torch.ones(10, 10, dtype=torch.bool).triu(1), float("-inf"))
        out[..., h * 8:(h + 1) * 8] = scores.softmax(-1) @ v[..., g * 8:(g + 1) * 8]
    want = out @ attn.c_proj.weight.t()
    assert (got - want).abs().max() < 1e-10


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    config = GPTConfig(block_size=32, vocab_size=VOCAB, n_layer=3, n_head=4, n_kv_head=2, n_embd=32, dropout=0.1,
                       norm="rmsnorm", pos_emb="rope", mlp="swiglu", qk_norm=True, bias=False)
    x = ids(T=32)
    results = []
    for recompute in (False, True):
        torch.manual_seed(0)
        model = GPT(config).train()
        model.gradient_checkpointing = recompute
        torch.manual_seed(1)  # the same dropout masks: checkpoint replays the RNG state in backward
        _, loss, hidden = model(x, x, return_hidden=True)
        (loss + hidden[1].pow(2).mean()).backward()
        results.append((loss, [p.grad.clone() for p in model.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.equal(loss_a, loss_b)
    for a, b in zip(grads_a, grads_b, strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


def test_defaults_are_gpt2_and_new_fields_reach_the_checkpoint_args():
    from model import model_config_from_dict, model_config_to_dict
    gpt2 = GPT(GPTConfig(block_size=16, vocab_size=VOCAB, n_layer=1, n_head=2, n_embd=16))
    names = set(gpt2.state_dict())
    assert "transformer.wpe.weight" in names and not any("norm" in n for n in names)
    qwen = GPTConfig(block_size=16, vocab_size=VOCAB, n_layer=1, n_head=4, n_kv_head=2, head_dim=8, n_embd=16,
                     norm="rmsnorm", pos_emb="rope", mlp="swiglu", qk_norm=True, tie_embeddings=False)
    assert model_config_from_dict(model_config_to_dict(qwen)) == qwen
    assert "transformer.wpe.weight" not in GPT(qwen).state_dict()  # RoPE tables are buffers, not saved


@pytest.mark.parametrize("config, message", [
    (dict(n_embd=30, n_head=4), "n_embd=30 must be divisible by n_head=4"),
    (dict(n_head=4, n_kv_head=3, n_embd=32), "n_head=4 must be a multiple of n_kv_head=3"),
    (dict(norm="batchnorm"), "norm='batchnorm'; choose one of layernorm, rmsnorm"),
    (dict(pos_emb="alibi"), "pos_emb='alibi'"),
    (dict(mlp="geglu"), "mlp='geglu'"),
    (dict(rope_scaling={"rope_type": "yarn"}), "only rope_type 'llama3'"),
])
def test_bad_model_settings_are_named(config, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        GPTConfig(**config)


@pytest.mark.parametrize("family, change, message", [
    ("qwen2", {"use_sliding_window": True, "sliding_window": 8}, "sliding"),
    ("llama", {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}}, "rope_type='yarn'"),
    ("llama", {"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ("llama", {"attention_bias": True, "mlp_bias": False}, "attention_bias=True with mlp_bias=False"),
    ("llama", {"model_type": "mistral"}, "model_type='mistral' is not supported"),
    ("gpt2", {"activation_function": "relu"}, "activation_function='relu'"),
    ("gpt2", {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx=True"),
])
def test_unsupported_checkpoints_are_refused_by_field(family, change, message, tmp_path):
    hf_tiny(family).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        hf.load(str(tmp_path))


def test_pickled_weights_are_refused(tmp_path):
    hf_model = hf_tiny("llama")
    hf_model.config.save_pretrained(tmp_path)
    torch.save(hf_model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin: pickled weights"):
        hf.load(str(tmp_path))


def test_config_without_a_family_cannot_be_exported(tmp_path):
    model = GPT(GPTConfig(block_size=16, vocab_size=VOCAB, n_layer=1, n_head=2, n_embd=16, pos_emb="rope"))
    with pytest.raises(ValueError, match="match no Hugging Face family"):
        hf.export(model, tmp_path)
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_legacy_rope_keys_are_read():
    """Hub files written before transformers 5 say rope_theta / rope_scaling, not rope_parameters."""
    hc = {"model_type": "qwen3", "vocab_size": 10, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
          "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8, "rope_theta": 1000000, "rope_scaling": None,
          "tie_word_embeddings": True, "max_position_embeddings": 128, "rms_norm_eps": 1e-6}
    config = config_from_hf(hc)
    assert config.rope_theta == 1e6 and config.qk_norm and config.n_kv_head == 1 and config.head_dim is None


def test_gpt2_base_model_files_without_the_transformer_prefix(tmp_path):
    """The hub's gpt2 files hold GPT2Model keys (h.0.attn..., wte.weight) and the old mask buffers."""
    hf_model = hf_tiny("gpt2")
    hf_model.transformer.save_pretrained(tmp_path)  # GPT2Model: no lm_head, no 'transformer.' prefix
    from safetensors.torch import load_file, save_file
    sd = load_file(tmp_path / "model.safetensors")
    assert "wte.weight" in sd
    sd["h.0.attn.bias"] = torch.ones(1, 1, 64, 64).tril()  # what transformers < 4.3x wrote
    save_file(sd, tmp_path / "model.safetensors", metadata={"format": "pt"})
    assert_same_outputs(hf_model, hf.load(str(tmp_path)).eval(), ids())


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen3"])
def test_padded_pasts_equal_each_row_on_its_own(family):
    """forward_cached(past_lengths=...): rows whose cached pasts have different lengths, padded to the
    longest, in one pass give each row's states as if it ran alone on its real past."""
    torch.manual_seed(0)
    ours = hf.from_transformers(hf_tiny(family)).eval()
    n_layer = ours.config.n_layer
    pasts, tails = [ids(1, P, seed=P)[0] for P in (3, 11, 7)], [ids(1, L, seed=50 + L)[0] for L in (5, 2, 6)]
    with torch.no_grad():
        alone, caches = [], []
        for past, tail in zip(pasts, tails):
            full = ours.forward_cached(torch.cat([past, tail])[None], [dict() for _ in range(n_layer)])  # (1, P + L, C)
            alone.append(full[0, len(past):])
            c = [dict() for _ in range(n_layer)]
            ours.forward_cached(past[None], c)
            caches.append(c)
        P_max, L_max = max(map(len, pasts)), max(map(len, tails))
        padded = []  # each layer's keys/values of the three rows, garbage after each row's real past
        for layer in range(n_layer):
            entry = {}
            for name in ("k", "v"):
                parts = [torch.nn.functional.pad(c[layer][name], (0, 0, 0, P_max - c[layer][name].size(2)), value=7.0)
                         for c in caches]
                entry[name] = torch.cat(parts)  # (3, nkv, P_max, hs)
            padded.append(entry)
        x = torch.zeros(3, L_max, dtype=torch.long)
        for r, tail in enumerate(tails):
            x[r, :len(tail)] = tail
        lengths = torch.tensor([len(p) for p in pasts])
        together = ours.forward_cached(x, padded, past_lengths=lengths)  # (3, L_max, C)
    for r, tail in enumerate(tails):
        assert (together[r, :len(tail)] - alone[r]).abs().max() < 1e-5
