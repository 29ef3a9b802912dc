import math
import tempfile

import pytest
import torch

import hf
from load import load_model
from model import GPT, GPTConfig


def tiny(**kw):
    cfg = dict(block_size=32, vocab_size=100, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=True)
    cfg.update(kw)
    torch.manual_seed(0)
    return GPT(GPTConfig(**cfg))


def test_initial_loss_is_about_log_vocab():
    model = GPT(GPTConfig(block_size=64, vocab_size=50257, n_layer=2, n_head=2, n_embd=64))
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 50257, (4, 64), generator=g)
    y = torch.randint(0, 50257, (4, 64), generator=g)  # not x: tied weights favour repeating the input
    _, loss = model(x, y)
    assert abs(loss.item() - math.log(50257)) < 0.1


def test_vocab_padding_is_hidden_from_logits():
    model = GPT(GPTConfig(block_size=16, vocab_size=50257, n_layer=1, n_head=1, n_embd=16))
    assert model.transformer.wte.weight.shape[0] == 50304
    logits, _ = model(torch.zeros(1, 4, dtype=torch.long))
    assert logits.shape == (1, 4, 50257)


def test_overfits_one_batch():
    model = tiny()
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 100, (4, 32), generator=g)
    y = torch.randint(0, 100, (4, 32), generator=g)
    opt = model.configure_optimizers(0.0, 3e-3, (0.9, 0.95), "cpu")
    for _ in range(150):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2


def test_hidden_states_follow_hf_indexing():
    model = tiny().eval()
    x = torch.randint(0, 100, (2, 10))
    logits, _, hidden = model(x, return_hidden=True)
    assert len(hidden) == 3
    emb = model.transformer.wte(x) + model.transformer.wpe(torch.arange(10))
    assert torch.allclose(hidden[0], emb)
    after_block1 = model.transformer.h[0](emb)
    assert torch.allclose(hidden[1], after_block1, atol=1e-6)
    block2 = model.transformer.h[1](after_block1)
    assert torch.allclose(hidden[2], model.transformer.ln_f(block2), atol=1e-6)
    model.last_hidden_before_ln = True
    _, _, pre = model(x, return_hidden=True)
    model.last_hidden_before_ln = False
    assert torch.allclose(pre[2], block2, atol=1e-6)
    # asking for hidden states does not change the logits
    assert torch.equal(model(x)[0], logits)


def test_kv_cache_generation_matches_full_recompute():
    model = tiny().eval()
    prompt = torch.randint(0, 100, (2, 5), generator=torch.Generator().manual_seed(3))
    cached = model.generate(prompt, 12, temperature=0)
    windowed = model.generate_windowed(prompt, 12, 0, None, None)
    assert torch.equal(cached, windowed)
    # sampling with a seeded generator is reproducible and respects top_k
    a = model.generate(prompt, 8, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(0))
    b = model.generate(prompt, 8, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (2, 13)


def test_generation_past_block_size_uses_a_window():
    model = tiny(block_size=8).eval()
    out = model.generate(torch.zeros(1, 6, dtype=torch.long), 10, temperature=0)
    assert out.shape == (1, 16)


def test_flops_and_params():
    model = tiny()
    n = model.get_num_params()
    assert n == sum(p.numel() for p in model.parameters()) - 32 * 32
    assert model.flops_per_token(32) == 6 * n + 12 * 2 * 32 * 32


def test_hf_round_trip_logits_equal():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(n_positions=64, n_embd=48, n_layer=3, n_head=4, vocab_size=50257)
    hf_model = transformers.GPT2LMHeadModel(hf_config).eval()
    ours = hf.from_transformers(hf_model).eval()
    x = torch.randint(0, 50257, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hf_out = hf_model(x, output_hidden_states=True)
        logits, _, hidden = ours(x, return_hidden=True)
    assert (hf_out.logits - logits).abs().max() < 1e-5
    for a, b in zip(hf_out.hidden_states, hidden, strict=True):
        assert (a - b).abs().max() < 1e-5
    with tempfile.TemporaryDirectory() as d:
        hf.export(ours, d)
        back = transformers.GPT2LMHeadModel.from_pretrained(d).eval()
        reloaded, info = load_model(d)
        with torch.no_grad():
            assert (back(x).logits - logits).abs().max() < 1e-5
            assert (reloaded.eval()(x)[0] - logits).abs().max() < 1e-5
        assert info["source"] == "huggingface"


def test_export_of_our_padded_model_round_trips():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    ours = GPT(GPTConfig(block_size=32, vocab_size=50257, n_layer=2, n_head=2, n_embd=32)).eval()
    x = torch.randint(0, 50257, (1, 12))
    with tempfile.TemporaryDirectory() as d:
        hf.export(ours, d)
        back = transformers.GPT2LMHeadModel.from_pretrained(d).eval()
        with torch.no_grad():
            assert (back(x).logits - ours(x)[0]).abs().max() < 1e-5


def test_load_model_rejects_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "ckpt.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a torch checkpoint"):  # checkpoint.CheckpointError
        load_model(str(bad))


def test_compile_path_runs_on_cpu():
    model = tiny()
    compiled = torch.compile(model)
    x = torch.randint(0, 100, (2, 32), generator=torch.Generator().manual_seed(0))
    logits, loss, hidden = compiled(x, x, return_hidden=True)
    loss.backward()
    _, eager_loss = model(x, x)
    assert abs(loss.item() - eager_loss.item()) < 1e-5
    assert len(hidden) == 3 and model.lm_head.weight.grad is not None
