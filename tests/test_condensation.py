"""
Tests of eval/condensation.py (the embedding-condensation probe) and eval/plots.py.

Hidden states of known geometry give known numbers; the rank correlations match direct
implementations (and scipy when installed); our model and its Hugging Face export give the same
probe; the command line writes the documented JSON and figures.
"""

import dataclasses
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval import condensation as cond  # noqa: E402
import hf  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

SHARED = Path(os.environ.get("DISPERSE_SHARED", Path(__file__).resolve().parents[2] / "shared"))
TIKTOKEN_DIR = SHARED / "tiktoken"

try:
    import matplotlib  # noqa: F401
    HAVE_MPL = True
except ImportError:
    HAVE_MPL = False


def orthonormal_rows(n, dim, seed=0):
    """n orthonormal vectors of size dim (n <= dim), in a random orientation."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    return q[:n].float()  # (n, dim)


def hist_mass(layer, edges, lo, hi):
    """Probability mass of the histogram between values lo and hi (whole bins)."""
    edges = np.asarray(edges)
    width = edges[1] - edges[0]
    hist = np.asarray(layer["hist"])
    centres = (edges[:-1] + edges[1:]) / 2
    return float(hist[(centres > lo) & (centres < hi)].sum() * width)


# ---------------------------------------------------------------------- known geometry

def test_orthogonal_set():
    S, C = 8, 16
    h = 3.0 * orthonormal_rows(S, C)[None]  # (1, S, C)
    res = cond.layer_stats_from_hidden([h])
    layer = res["layers"][0]
    assert layer["mean_cos"] == pytest.approx(1 / S, abs=1e-6)  # only the diagonal is nonzero
    assert layer["mean_cos_skip_first"] == pytest.approx(1 / (S - 1), abs=1e-6)
    # centred: S-1 equal singular values and one zero
    assert layer["eff_rank"] == pytest.approx(S - 1, abs=1e-3)
    assert layer["spectral_entropy"] == pytest.approx(math.log(S - 1), abs=1e-4)
    assert layer["mean_norm"] == pytest.approx(3.0, abs=1e-5)
    # one sequence: all of mean_cos is "shared", nothing is sequence-specific
    assert layer["mean_cos_shared"] == pytest.approx(1 / S, abs=1e-6)
    assert layer["mean_cos_centered"] == pytest.approx(0.0, abs=1e-6)
    edges = res["hist_edges"]
    assert len(edges) == 129 and len(layer["hist"]) == 128
    assert sum(layer["hist"]) * (edges[1] - edges[0]) == pytest.approx(1.0)
    assert hist_mass(layer, edges, -0.05, 0.05) == pytest.approx((S - 1) / S)
    assert hist_mass(layer, edges, 0.95, 1.0) == pytest.approx(1 / S)


def test_identical_vectors_per_sequence():
    # two sequences; in each every token is the same vector, and the two vectors are orthogonal
    S, C = 13, 300  # big enough that x - mean(x) is rounding noise, not exactly 0
    v = 5.0 * orthonormal_rows(2, C, seed=1)  # (2, C)
    h = v[:, None, :].expand(2, S, C).contiguous()  # (2, S, C)
    layer = cond.layer_stats_from_hidden([h])["layers"][0]
    assert layer["mean_cos"] == pytest.approx(1.0, abs=1e-6)
    assert layer["eff_rank"] == pytest.approx(1.0, abs=1e-6)  # collapsed: entropy 0 by convention
    assert layer["spectral_entropy"] == pytest.approx(0.0, abs=1e-6)
    assert layer["mean_norm"] == pytest.approx(5.0, abs=1e-5)
    # each sequence condenses on its own direction: half the cosine is shared, the rest is specific
    assert layer["mean_cos_shared"] == pytest.approx(0.5, abs=1e-6)
    assert layer["mean_cos_centered"] == pytest.approx(1.0, abs=1e-5)
    assert layer["hist"][-1] * 2 / 128 == pytest.approx(1.0)  # all mass in the last bin


def test_cone_of_known_angle():
    # v_i = a e_0 + b e_i: every pair has cosine c = a^2. Two sequences share e_0 but use
    # different e_i, so their condensation is one common direction.
    S, c = 6, 0.6
    a, b = math.sqrt(c), math.sqrt(1 - c)
    C = 2 * S + 1
    eye = torch.eye(C)
    seqs = [torch.stack([a * eye[0] + b * eye[1 + r * S + i] for i in range(S)]) for r in range(2)]
    h = torch.stack(seqs)  # (2, S, C)
    layer = cond.layer_stats_from_hidden([h])["layers"][0]
    assert layer["mean_cos"] == pytest.approx((1 + (S - 1) * c) / S, abs=1e-6)
    assert layer["mean_cos_skip_first"] == pytest.approx((1 + (S - 2) * c) / (S - 1), abs=1e-6)
    assert layer["mean_cos_shared"] == pytest.approx(c + b * b / (2 * S), abs=1e-6)
    assert layer["mean_cos_centered"] == pytest.approx(1 / (2 * S - 1), abs=1e-5)
    # centring removes e_0: S-1 equal singular values remain
    assert layer["eff_rank"] == pytest.approx(S - 1, abs=1e-3)
    top = layer["massive_dims"]
    assert len(top) == 5
    assert top[0]["dim"] == 0
    assert top[0]["mean_abs"] == pytest.approx(a, abs=1e-6)
    assert top[0]["max_abs"] == pytest.approx(a, abs=1e-6)
    assert top[0]["ratio_to_median"] == pytest.approx(a * 2 * S / b, rel=1e-5)
    assert top[1]["mean_abs"] == pytest.approx(b / (2 * S), abs=1e-6)
    assert top[1]["max_abs"] == pytest.approx(b, abs=1e-6)


def test_cosine_ignores_norms_and_survives_zero_rows():
    S, C = 8, 16
    base = orthonormal_rows(S, C, seed=2) + 0.5 * orthonormal_rows(1, C, seed=3)  # some shared direction
    scaled = base * torch.linspace(0.1, 40.0, S)[:, None]
    r1 = cond.layer_stats_from_hidden([base[None]])["layers"][0]
    r2 = cond.layer_stats_from_hidden([scaled[None]])["layers"][0]
    assert r2["mean_cos"] == pytest.approx(r1["mean_cos"], abs=1e-6)
    np.testing.assert_allclose(r2["hist"], r1["hist"], atol=1e-6)
    zero = base.clone()
    zero[3] = 0.0  # a zero vector: cosine 0 with everything (norm floored at 1e-3), never nan
    r3 = cond.layer_stats_from_hidden([zero[None]])["layers"][0]
    assert all(math.isfinite(r3[k]) for k in ("mean_cos", "eff_rank", "mean_cos_centered", "mean_norm"))
    gram = torch.nn.functional.normalize(base, dim=-1) @ torch.nn.functional.normalize(base, dim=-1).T
    keep = [i for i in range(S) if i != 3]
    assert r3["mean_cos"] == pytest.approx(float(gram[keep][:, keep].sum()) / S**2, abs=1e-6)


def test_matrices_are_averaged_before_the_histogram():
    # sequence 1: identical tokens (all cosines 1); sequence 2: orthogonal tokens (off-diagonal 0).
    # The averaged matrix has 0.5 off the diagonal: a histogram of the pooled entries would not.
    S, C = 8, 16
    same = orthonormal_rows(1, C, seed=4).expand(S, C)
    ortho = orthonormal_rows(S, C, seed=5)
    res = cond.layer_stats_from_hidden([torch.stack([same, ortho])])
    layer = res["layers"][0]
    assert layer["mean_cos"] == pytest.approx((1 + (S - 1) * 0.5) / S, abs=1e-6)
    assert hist_mass(layer, res["hist_edges"], 0.45, 0.55) == pytest.approx((S - 1) / S)
    assert hist_mass(layer, res["hist_edges"], -0.05, 0.05) == 0.0


def test_batches_accumulate_to_the_same_result_and_trends():
    g = torch.Generator().manual_seed(0)
    R, S, C, n_layer = 5, 10, 12, 4
    common = torch.randn(C, generator=g)
    # layer l adds l * a common direction: condensation grows with depth
    hidden = [torch.randn(R, S, C, generator=g) + 0.7 * l * common for l in range(n_layer + 1)]
    whole = cond.layer_stats_from_hidden(hidden)
    sums = cond.accumulate_layer_sums([h[:2] for h in hidden])
    sums = cond.accumulate_layer_sums([h[2:] for h in hidden], sums)
    parts = cond.summarize(sums)
    for a, b in zip(whole["layers"], parts["layers"]):
        for k in ("mean_cos", "mean_cos_shared", "mean_cos_centered", "eff_rank", "mean_norm", "spectral_entropy"):
            assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-7), k  # float32 sums grouped differently
        np.testing.assert_allclose(a["hist"], b["hist"], atol=1e-9)
    # shared + sequence-specific = mean_cos
    for layer in whole["layers"]:
        spread = 1 - layer["mean_cos_shared"]
        assert layer["mean_cos_shared"] + layer["mean_cos_centered"] * spread == pytest.approx(layer["mean_cos"], abs=1e-5)
    mean_cos = [l["mean_cos"] for l in whole["layers"]]
    assert [l["layer"] for l in whole["layers"]] == list(range(n_layer + 1))
    assert [l["layer_fraction"] for l in whole["layers"]] == [l / n_layer for l in range(n_layer + 1)]
    assert np.all(np.diff(mean_cos) > 0)
    assert whole["spearman"] == pytest.approx(1.0) and whole["kendall"] == pytest.approx(1.0)
    assert set(whole["last_n_mean"]) == {"1", "2", "3", "4", "5"}  # n_layer // 2 = 2 is among them
    assert whole["last_n_mean"]["3"] == pytest.approx(np.mean(mean_cos[-3:]))
    assert whole["last_n_mean"]["5"] == pytest.approx(np.mean(mean_cos))
    # reversed depth order: condensation falls with depth
    rev = cond.layer_stats_from_hidden(hidden[::-1])
    assert rev["spearman"] == pytest.approx(-1.0) and rev["kendall"] == pytest.approx(-1.0)


# ---------------------------------------------------------------------- rank correlations

def direct_spearman(x, y):
    def ranks(a):
        return np.array([sum(1.0 for b in a if b < v) + (sum(1.0 for b in a if b == v) + 1) / 2 for v in a])
    rx, ry = ranks(x), ranks(y)
    return float(np.corrcoef(rx, ry)[0, 1])


def direct_kendall_b(x, y):
    n = len(x)
    conc = disc = tie_x = tie_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                tie_x += 1
                tie_y += 1
            elif dx == 0:
                tie_x += 1
            elif dy == 0:
                tie_y += 1
            elif dx * dy > 0:
                conc += 1
            else:
                disc += 1
    n0 = n * (n - 1) / 2
    return (conc - disc) / math.sqrt((n0 - tie_x) * (n0 - tie_y))


@pytest.mark.parametrize("seed", range(4))
def test_rank_correlations_with_ties(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 5, size=15).astype(float)  # many ties
    y = x + rng.integers(-2, 3, size=15)
    assert cond.spearman(x, y) == pytest.approx(direct_spearman(x, y), abs=1e-12)
    assert cond.kendall(x, y) == pytest.approx(direct_kendall_b(x, y), abs=1e-12)
    try:
        from scipy import stats
    except ImportError:
        return
    assert cond.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)
    assert cond.kendall(x, y) == pytest.approx(stats.kendalltau(x, y, variant="b")[0], abs=1e-12)


def test_rank_correlations_edge_cases():
    depth = np.arange(6)
    assert cond.spearman(depth, depth ** 2) == pytest.approx(1.0)
    assert cond.kendall(depth, -depth ** 3) == pytest.approx(-1.0)
    assert math.isnan(cond.spearman(depth, np.ones(6)))
    assert math.isnan(cond.kendall(depth, np.ones(6)))
    assert math.isnan(cond.spearman([1.0], [2.0]))
    with pytest.raises(ValueError):
        cond.spearman([1, 2, 3], [1, 2])


# ---------------------------------------------------------------------- sequences

def test_sample_sequences():
    tokens = np.arange(1000, dtype=np.int64)  # token i is i, so a window shows where it starts
    seqs = cond.sample_sequences(tokens, n_seq=20, seq_len=50, seed=3)
    assert seqs.shape == (20, 50) and seqs.dtype == torch.long
    starts = seqs[:, 0].numpy()
    assert np.all(starts <= 950) and np.all(starts >= 0)  # first 95% and room for 50 tokens
    assert torch.equal(seqs, seqs[:, :1] + torch.arange(50))  # consecutive tokens
    assert len(set(starts.tolist())) > 10
    # window r depends on seed + r only: not on how many windows are drawn
    assert torch.equal(cond.sample_sequences(tokens, 5, 50, seed=3), seqs[:5])
    assert torch.equal(cond.sample_sequences(tokens, 5, 50, seed=4)[:4], seqs[1:5])
    assert not torch.equal(cond.sample_sequences(tokens, 5, 50, seed=100), seqs[:5])
    # the 95% cap: a start never lands in the last 5%, even when the windows are short
    short = cond.sample_sequences(tokens, 200, 2, seed=0)
    assert int(short[:, 0].max()) <= 950
    # the start moves back to fit a long window
    long = cond.sample_sequences(tokens, 10, 990, seed=0)
    assert int(long[:, -1].max()) <= 999
    with pytest.raises(ValueError, match="fewer than seq_len"):
        cond.sample_sequences(tokens, 1, 1001, seed=0)


# ---------------------------------------------------------------------- on models

def tiny_model(dropout=0.0, seed=0, n_layer=3):
    torch.manual_seed(seed)
    config = GPTConfig(block_size=64, n_layer=n_layer, n_head=2, n_embd=32, dropout=dropout)
    return GPT(config)


def random_sequences(R, S, seed=0):
    return torch.randint(0, 50257, (R, S), generator=torch.Generator().manual_seed(seed))


def test_probe_matches_hidden_states_and_restores_mode():
    model = tiny_model(dropout=0.1)
    model.train()
    seqs = random_sequences(5, 32)
    res = cond.probe_hidden_states(model, seqs, batch_size=2, progress=False)
    assert model.training
    assert len(res["layers"]) == model.config.n_layer + 1
    model.eval()
    with torch.no_grad():
        hidden = model(seqs, return_hidden=True)[2]
    direct = cond.layer_stats_from_hidden(hidden)
    for a, b in zip(res["layers"], direct["layers"]):
        assert a["mean_cos"] == pytest.approx(b["mean_cos"], abs=1e-6)
        assert a["eff_rank"] == pytest.approx(b["eff_rank"], abs=1e-4)
    with pytest.raises(ValueError, match="longer than the model's context"):
        cond.probe_hidden_states(model, random_sequences(1, 65), progress=False)


def test_quick_probe_keeps_mode_and_agrees_with_full_probe():
    model = tiny_model(dropout=0.2)
    seqs = random_sequences(6, 40)
    full = cond.probe_hidden_states(model, seqs, batch_size=4, progress=False)
    for mode in (True, False):
        model.train(mode)
        quick = cond.quick_probe(model, seqs, batch_size=4)
        assert model.training is mode
        # dropout would make the numbers differ from the eval-mode full probe
        for l, layer in enumerate(full["layers"]):
            assert quick[f"layer{l}/mean_cos"] == pytest.approx(layer["mean_cos"], abs=1e-5)
            assert quick[f"layer{l}/mean_norm"] == pytest.approx(layer["mean_norm"], rel=1e-5)
        assert quick["spearman"] == pytest.approx(full["spearman"])
        assert quick["kendall"] == pytest.approx(full["kendall"])
    assert set(quick) == {f"layer{l}/{k}" for l in range(4) for k in ("mean_cos", "mean_norm")} | {"spearman", "kendall"}


def test_huggingface_export_gives_the_same_probe(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = tiny_model(seed=1).eval()
    hf.export(model, tmp_path / "hf_model")
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf_model").eval()
    seqs = random_sequences(4, 48, seed=1)
    with torch.no_grad():
        ours_h = cond.get_hidden_states(model, seqs)
        hf_h = cond.get_hidden_states(hf_model, seqs)
    assert len(ours_h) == len(hf_h) == model.config.n_layer + 1
    for a, b in zip(ours_h, hf_h):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert cond.model_context_length(hf_model) == 64
    ours = cond.probe_hidden_states(model, seqs, batch_size=3, progress=False)
    theirs = cond.probe_hidden_states(hf_model, seqs, batch_size=3, progress=False)
    for a, b in zip(ours["layers"], theirs["layers"]):
        for k in ("mean_cos", "mean_cos_shared", "mean_cos_centered", "mean_norm", "spectral_entropy"):
            assert a[k] == pytest.approx(b[k], abs=1e-5), k
        assert a["eff_rank"] == pytest.approx(b["eff_rank"], rel=1e-5)
        np.testing.assert_allclose(a["hist"], b["hist"], atol=1e-5)
    assert ours["spearman"] == pytest.approx(theirs["spearman"], abs=1e-9)


# ---------------------------------------------------------------------- command line

LAYER_KEYS = {"layer", "layer_fraction", "mean_cos", "mean_cos_shared", "mean_cos_centered", "mean_cos_skip_first",
              "eff_rank", "spectral_entropy", "mean_norm", "massive_dims", "hist"}
META_KEYS = {"model", "label", "backend", "n_layer", "n_seq", "seq_len", "seq_len_requested", "seed", "text",
             "text_tokens", "date"}


@pytest.fixture
def tiny_run(tmp_path, monkeypatch):
    """A tiny checkpoint, a small text file, the tokenizer cache; no DISPERSE_WIKITEXT."""
    if not TIKTOKEN_DIR.is_dir():
        pytest.skip(f"no tiktoken cache at {TIKTOKEN_DIR} (set DISPERSE_SHARED)")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(TIKTOKEN_DIR))
    monkeypatch.delenv("DISPERSE_WIKITEXT", raising=False)
    model = tiny_model(seed=2)
    ckpt_dir = tmp_path / "run"
    ckpt_dir.mkdir()
    torch.save({"model": model.state_dict(), "model_args": dataclasses.asdict(model.config)}, ckpt_dir / "ckpt.pt")
    words = "the river model token layer green quickly north history music paper seven".split()
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(words, size=12)) + f" ({i})." for i in range(120)]
    text = tmp_path / "text.txt"
    text.write_text("\n".join(lines))
    return model, ckpt_dir, text


def test_cli_writes_json_and_plots(tiny_run, tmp_path, capsys):
    model, ckpt_dir, text = tiny_run
    out = tmp_path / "probe"
    cond.main(["--ckpt", str(ckpt_dir / "ckpt.pt"), "--text", str(text), "--n-seq", "4", "--seq-len", "100",
               "--batch-size", "3", "--out", str(out), "--label", "tiny"])
    printed = capsys.readouterr().out
    assert "using 64" in printed  # seq_len capped at block_size, and said so
    assert "Spearman" in printed
    res = json.loads((out / "condensation.json").read_text())
    assert set(res) == {"layers", "spearman", "kendall", "last_n_mean", "hist_edges", "meta"}
    assert len(res["layers"]) == model.config.n_layer + 1
    for i, layer in enumerate(res["layers"]):
        assert set(layer) == LAYER_KEYS
        assert layer["layer"] == i and layer["layer_fraction"] == pytest.approx(i / model.config.n_layer)
        assert len(layer["hist"]) == 128
        assert set(layer["massive_dims"][0]) == {"dim", "mean_abs", "max_abs", "ratio_to_median"}
    assert len(res["hist_edges"]) == 129
    assert set(res["last_n_mean"]) == {"1", "2", "3", "4"}
    assert META_KEYS <= set(res["meta"])
    assert res["meta"]["seq_len"] == 64 and res["meta"]["seq_len_requested"] == 100
    assert res["meta"]["n_layer"] == 3 and res["meta"]["label"] == "tiny"
    # the same numbers as probing the model directly
    from data.common import get_tokenizer
    tokens = np.asarray(get_tokenizer().encode_ordinary(text.read_text()))
    direct = cond.probe_hidden_states(model, cond.sample_sequences(tokens, 4, 64, 0), progress=False)
    assert [l["mean_cos"] for l in res["layers"]] == pytest.approx([l["mean_cos"] for l in direct["layers"]], abs=1e-9)
    if HAVE_MPL:
        assert (out / "condensation_heatmap.png").stat().st_size > 1000
        assert (out / "condensation_mean_cos.png").stat().st_size > 1000


def test_cli_hf_directory_both_backends(tiny_run, tmp_path):
    pytest.importorskip("transformers")
    model, _, text = tiny_run
    hf.export(model, tmp_path / "hf_model")
    common = ["--ckpt", str(tmp_path / "hf_model"), "--text", str(text), "--n-seq", "3", "--seq-len", "32"]
    ours = cond.main(common + ["--out", str(tmp_path / "a")])
    theirs = cond.main(common + ["--out", str(tmp_path / "b"), "--backend", "transformers"])
    assert theirs["meta"]["backend"] == "transformers"
    assert [l["mean_cos"] for l in ours["layers"]] == pytest.approx([l["mean_cos"] for l in theirs["layers"]], abs=1e-5)


def test_cli_needs_a_text(tiny_run, capsys):
    _, ckpt_dir, _ = tiny_run
    with pytest.raises(SystemExit):
        cond.main(["--ckpt", str(ckpt_dir)])
    err = capsys.readouterr().err
    assert "--text" in err and "DISPERSE_WIKITEXT" in err


def test_cli_env_text_and_no_matplotlib(tiny_run, tmp_path, monkeypatch, capsys):
    _, ckpt_dir, text = tiny_run
    monkeypatch.setenv("DISPERSE_WIKITEXT", str(text))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    cond.main(["--ckpt", str(ckpt_dir), "--n-seq", "2", "--seq-len", "16", "--seed", "1"])
    out = ckpt_dir / "condensation"  # default: beside the checkpoint
    res = json.loads((out / "condensation.json").read_text())
    assert res["meta"]["text"] == str(text) and res["meta"]["label"] == "run"
    assert "pip install matplotlib" in capsys.readouterr().out
    assert not (out / "condensation_heatmap.png").exists()


# ---------------------------------------------------------------------- plots

@pytest.mark.skipif(not HAVE_MPL, reason="matplotlib not installed")
def test_plot_training_and_cli(tmp_path):
    from eval import plots
    rows = []
    for it in range(0, 50, 5):
        row = {"iter": it, "loss": 5 - it / 20}
        if it % 10 == 0:
            row["val_loss"] = 5.1 - it / 20
            row.update({f"probe/layer{l}/mean_cos": 0.1 * l + it / 100 for l in range(4)})
            row["probe/spearman"] = 0.5
        rows.append(row)
    with_probe = tmp_path / "a" / "metrics.jsonl"
    with_probe.parent.mkdir()
    with_probe.write_text("\n".join(json.dumps(r) for r in rows) + "\n{\"iter\": 55, \"lo")  # cut-off last line
    loss_only = tmp_path / "b" / "metrics.jsonl"
    loss_only.parent.mkdir()
    loss_only.write_text("\n".join(json.dumps({"iter": r["iter"], "loss": r["loss"]}) for r in rows))
    assert plots._last_layer_key(plots.read_metrics(with_probe)) == "probe/layer3/mean_cos"
    panels = plots.plot_training([with_probe, loss_only], ["probe", "plain"], tmp_path / "curves.png")
    assert len(panels) == 3 and (tmp_path / "curves.png").exists()
    assert plots.plot_training([loss_only], None, tmp_path / "loss.png") == ["loss"]
    # command line: two probe results side by side
    edges = np.linspace(-1, 1, 129).tolist()
    results = []
    for k in range(2):
        layers = [{"layer": l, "layer_fraction": l / 2, "mean_cos": 0.2 * l + 0.1 * k, "mean_cos_centered": 0.0,
                   "hist": np.histogram([0.2 * l], bins=edges, density=True)[0].tolist()} for l in range(3)]
        path = tmp_path / f"r{k}" / "condensation.json"
        path.parent.mkdir()
        path.write_text(json.dumps({"layers": layers, "hist_edges": edges, "spearman": 1.0, "kendall": None}))
        results.append(str(path))
    plots.main(["heatmap", *results, "--labels", "CE", "dispersion", "--out", str(tmp_path / "heat.png")])
    plots.main(["mean_cos", *results, "--out", str(tmp_path / "mc.png")])
    plots.main(["training", str(with_probe), "--out", str(tmp_path / "tr.png")])
    for name in ("heat.png", "mc.png", "tr.png"):
        assert (tmp_path / name).stat().st_size > 1000


# ---------------------------------------------------------------------- other families

@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_probe_of_llama_and_qwen3_natively_and_through_transformers(family, tiny_run, tmp_path):
    """Fig. 2 across families: a Hugging Face directory probed by model.py and by transformers,
    and a training checkpoint of the same model probed natively, give the same figures."""
    pytest.importorskip("transformers")
    from conftest import tiny_hf_model
    from load import load_model
    _, _, text = tiny_run
    hf_model = tiny_hf_model(family, vocab_size=50304)  # GPT-2 ids from the text fit
    hf_model.save_pretrained(tmp_path / "hf_model")
    common = ["--text", str(text), "--n-seq", "3", "--seq-len", "48"]
    ours = cond.main(["--ckpt", str(tmp_path / "hf_model"), *common, "--out", str(tmp_path / "a")])
    theirs = cond.main(["--ckpt", str(tmp_path / "hf_model"), *common, "--out", str(tmp_path / "b"), "--backend", "transformers"])
    model, _ = load_model(str(tmp_path / "hf_model"))
    ckpt_dir = tmp_path / "native"
    ckpt_dir.mkdir()
    torch.save({"model": model.state_dict(), "model_args": dataclasses.asdict(model.config)}, ckpt_dir / "ckpt.pt")
    native = cond.main(["--ckpt", str(ckpt_dir), *common, "--out", str(tmp_path / "c")])
    assert ours["meta"]["n_layer"] == theirs["meta"]["n_layer"] == native["meta"]["n_layer"] == 2
    for a, b, c in zip(ours["layers"], theirs["layers"], native["layers"], strict=True):
        for k in ("mean_cos", "mean_cos_shared", "mean_cos_centered", "mean_norm", "spectral_entropy"):
            assert a[k] == pytest.approx(b[k], abs=1e-5) and a[k] == c[k], k
        np.testing.assert_allclose(a["hist"], b["hist"], atol=1e-4)
    # the hidden states themselves, in HF indexing, last one after the final RMSNorm
    seqs = random_sequences(2, 40, seed=3)
    with torch.no_grad():
        for a, b in zip(cond.get_hidden_states(model.eval(), seqs), cond.get_hidden_states(hf_model, seqs), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert cond.model_context_length(hf_model) == cond.model_context_length(model) == 64
