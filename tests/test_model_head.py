"""The output head, the CPU cross-entropy and the optimizer written for speed give what the plain
versions give: the head at the padded width, with the padding kept out of logits and loss, equals
the product against the weight's first vocab_size rows, the cross-entropy equals F.cross_entropy in float64 (value and gradient, ignored rows
included), and the fused CPU AdamW equals the default loop up to float rounding."""

import copy

import pytest
import torch
from torch.nn import functional as F

import model as M
from model import GPT, GPTConfig

FAMILIES = {  # the head is tied or untied; the padding 100 -> 128 is there in every case
    "gpt2_tied": dict(),
    "qwen3_untied": dict(bias=False, norm="rmsnorm", pos_emb="rope", mlp="swiglu", n_kv_head=1, qk_norm=True,
                         head_dim=16, tie_embeddings=False),
    "llama_tied": dict(bias=False, norm="rmsnorm", pos_emb="rope", mlp="swiglu", n_kv_head=1),
}


def tiny(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=16, vocab_size=100, n_layer=2, n_head=2, n_embd=32, dropout=0.0, **kw))


def batch(B=3, T=16, V=100, ignore_every=5):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, V, (B, T), generator=g)
    y = torch.randint(0, V, (B, T), generator=g)
    y.view(-1)[::ignore_every] = -1
    return x, y


@pytest.mark.parametrize("family", FAMILIES)
def test_padded_head_gives_the_unpadded_logits_loss_and_gradients(family):
    """The head runs at the padded width (128 columns here) and shows the 100 real ones; the loss
    runs over the padded rows with the padding at -inf. Logits, loss and every weight gradient equal
    those of the product against the weight's first vocab_size rows and F.cross_entropy over them."""
    model = tiny(**FAMILIES[family])
    assert model.lm_head.weight.shape[0] == 128
    x, y = batch()
    states = model.hidden_states(x)[-1]
    unpadded = lambda s: F.linear(s, model.lm_head.weight[:100])  # noqa: E731  (the head before padding)
    assert model.head(states).shape == (3, 16, 100)
    assert torch.equal(model.head(states), unpadded(states))
    results = []
    for path in ("model", "unpadded"):
        model.zero_grad(set_to_none=True)
        if path == "model":
            logits, loss = model(x, y)
        else:
            logits = unpadded(model.hidden_states(x)[-1])
            loss = F.cross_entropy(logits.reshape(-1, 100), y.view(-1), ignore_index=-1)
        loss.backward()
        results.append((logits.detach(), loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (logits_new, loss_new, g_new), (logits_old, loss_old, g_old) = results
    assert logits_new.shape == (3, 16, 100) and torch.equal(logits_new, logits_old)
    assert torch.allclose(loss_new, loss_old, rtol=1e-6, atol=0)  # the same sum, another summation order at most
    for name in g_old:
        assert torch.allclose(g_new[name], g_old[name], rtol=1e-5, atol=1e-8), name
    head_name = "lm_head.weight" if "lm_head.weight" in g_new else "transformer.wte.weight"  # tied: one name
    assert g_new[head_name][100:].abs().max() == 0  # padding rows get no gradient


@pytest.mark.parametrize("chunk", [M.CE_CHUNK, 7 * 50])  # one chunk, and 7 rows per chunk with a ragged last one
def test_cross_entropy_equals_torch_in_float64(chunk, monkeypatch):
    monkeypatch.setattr(M, "CE_CHUNK", chunk)
    g = torch.Generator().manual_seed(2)
    N, V = 45, 50
    logits = (4 * torch.randn(N, V, generator=g, dtype=torch.float64)).requires_grad_()
    targets = torch.randint(0, V, (N,), generator=g)
    targets[[0, 3, 44]] = -1
    ref_logits = logits.detach().clone().requires_grad_()
    loss = M._CrossEntropy.apply(logits, targets)
    ref = F.cross_entropy(ref_logits, targets, ignore_index=-1)
    assert abs(loss.item() - ref.item()) < 1e-12
    (2.5 * loss).backward()
    (2.5 * ref).backward()
    assert (logits.grad - ref_logits.grad).abs().max() < 1e-14
    assert logits.grad[[0, 3, 44]].abs().max() == 0  # ignored rows


def test_cross_entropy_float32_and_edge_cases():
    g = torch.Generator().manual_seed(3)
    logits = 30 * torch.randn(64, 50257, generator=g)  # large logits: the log-sum-exp must not overflow
    targets = torch.randint(0, 50257, (64,), generator=g)
    ref = F.cross_entropy(logits.double(), targets)
    assert abs(M.cross_entropy(logits, targets).item() - ref.item()) < 1e-5 * ref.item()
    # every row ignored: nan, as F.cross_entropy gives
    none = torch.full((64,), -1)
    assert torch.isnan(M.cross_entropy(logits, none)) and torch.isnan(F.cross_entropy(logits, none, ignore_index=-1))
    # the model's loss goes through it and equals torch's to float32 rounding
    model = tiny()
    x, y = batch()
    logits, loss = model(x, y)
    assert abs(loss.item() - F.cross_entropy(logits.double().view(-1, 100), y.view(-1), ignore_index=-1).item()) < 1e-6


@pytest.mark.parametrize("family", ["gpt2_tied", "qwen3_untied"])
def test_fused_cpu_adamw_equals_the_default_loop(family):
    model = tiny(**FAMILIES[family])
    fused_opt = model.configure_optimizers(0.1, 1e-2, (0.9, 0.95), "cpu")
    assert fused_opt.defaults["fused"]
    other = copy.deepcopy(model)
    groups = [{"params": [p for p in other.parameters() if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in other.parameters() if p.dim() < 2], "weight_decay": 0.0}]
    plain_opt = torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.95), foreach=False)
    # the same gradients into both (the model's own at the first step, then random ones): the
    # optimizers alone are compared, without rounding differences fed back through the model
    x, y = batch()
    _, loss = model(x, y)
    loss.backward()
    first = [p.grad.clone() for p in model.parameters()]
    g = torch.Generator().manual_seed(4)
    for step in range(5):
        grads = first if step == 0 else [torch.randn(p.shape, generator=g) * 10.0 ** -step for p in model.parameters()]
        for m, opt in ((model, fused_opt), (other, plain_opt)):
            for p, grad in zip(m.parameters(), grads):
                p.grad = grad.clone()
            opt.step()
    moved = max((p - q).abs().max().item() for p, q in zip(model.parameters(), tiny(**FAMILIES[family]).parameters()))
    assert moved > 1e-2  # the steps did move the weights
    for p, q in zip(model.parameters(), other.parameters()):
        assert torch.allclose(p, q, rtol=1e-6, atol=1e-7)  # float32 rounding; the steps are ~1e-2, decay ~4e-5
