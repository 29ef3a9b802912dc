"""
Embedding-condensation probes: how alike the token vectors of one sequence are, layer by layer.

The paper's protocol (arXiv 2602.00217, its key_observations code; shared notes paper.md section 4):
  1. R sequences (100) of S tokens (512) of wikitext-103.
  2. For every hidden state, in Hugging Face `output_hidden_states` order (the embedding output,
     the block outputs, the last one taken after ln_f), and every sequence: the S x S cosine
     similarity matrix of its tokens, rows divided by max(||x||, 1e-3), clipped to [-1, 1],
     diagonal included.
  3. These matrices averaged element-wise (position pair by position pair) over the R sequences:
     one S x S matrix per layer.
  4. Per layer, `mean_cos` = the mean of all S^2 entries of that matrix, and a 128-bin density
     histogram of the entries on [-1, 1] (the paper's heatmap stacks these along depth).
  5. Across layers: Spearman and Kendall correlation of mean_cos with depth 0..n, the embedding
     layer included. Positive means similarity rises with depth: condensation. Also the mean of
     mean_cos over the last N layers (N = 1..5 and n/2).

Beyond the paper, per layer (per sequence, then averaged over the sequences):
  eff_rank           exp of the Shannon entropy of the normalised singular values of the centred
                     S x C token matrix (Roy & Vetterli 2007): 1 = one direction, min(S-1, C) = all equal
  spectral_entropy   that entropy, in nats
  mean_cos_shared    the part of mean_cos due to one direction shared by all tokens of all the
                     sequences. With u_i the unit token vectors, m_r the mean of sequence r's u_i
                     and m the mean over all sequences, mean_cos = |m_r|^2 averaged over r
                     = |m|^2 + mean_r |m_r - m|^2 (exactly, up to the [-1, 1] clip). mean_cos_shared = |m|^2.
  mean_cos_centered  the rest, scaled to a correlation: the mean cosine-like similarity of the
                     u_i - m (diagonal included, like mean_cos), mean_r |m_r - m|^2 / mean_i |u_i - m|^2.
                     Near 0 while mean_cos is high: condensation is a common direction (the same
                     for every text). About mean_cos (shared near 0): each sequence condenses on its own.
                     (Centring each sequence on its own mean instead would be useless: the centred
                     vectors sum to zero, so their off-diagonal mean cosine is about -1/(S-1)
                     whatever the geometry.) With R sequences, |m|^2 carries a sampling bias of
                     about 1/R of the sequence-specific part.
  mean_cos_skip_first  mean_cos without position 0 (GPT-2's first token is an "attention sink"
                     with a huge norm, and may dominate the picture)
  mean_norm          mean L2 norm of the token vectors
  massive_dims       the 5 feature dimensions with the largest mean |activation|, with that mean,
                     their largest |activation|, and the ratio to the median dimension's mean:
                     a few "rogue" dimensions can dominate raw cosines (paper.md 6.10)

Sampling the text. The paper picks a random *record* (line) in the first 95% of wikitext-103's
train split (the RNG seeded with the sequence number r), concatenates records until it has >= 1024
words, and tokenises with truncation to 512 tokens. Since 1024 words are always more than 512
GPT-2 tokens, every sequence is 512 consecutive tokens of running text. We tokenise the whole
text once and take S consecutive tokens from a start drawn uniformly in the first 95% of it (RNG
seeded with seed + r). The difference: the paper's sequences start at the beginning of a line,
ours anywhere, even inside a word. Which token sits at position 0 changes little (GPT-2 treats
position 0 specially whatever token is there), and the per-pair average over 100 sequences washes
out the rest. By default we read the file named by $DISPERSE_WIKITEXT (e.g. wikitext-103's
valid.raw; the train split is not needed for a probe). The text is encoded with the model's
tokenizer: the one its checkpoint records, a Hugging Face folder's own, or --tokenizer. A prepared
.bin token file (data/*/prepare.py; uint16 or uint32 as its meta.json says) is read as tokens directly.

Usage:
    python -m eval.condensation --ckpt out-wt103 --text wikitext103/valid.raw --out probe-wt103
    python -m eval.condensation --ckpt gpt2-hf-dir --backend transformers   # any HF model, via transformers
From code: probe_hidden_states(model, sample_sequences(tokens, 100, 512, seed=0)), and the cheap
quick_probe(model, sequences) at training eval steps.
"""

import datetime
import math
import os
import time

import numpy as np
import torch
from tqdm import tqdm

from data.common import get_tokenizer, read_meta
from configurator import ArgumentParser
from errors import InputError, run_cli
import hf
from files import write_json
from eval.stats import kendall, spearman
from load import load_model
from model import GPT

NORM_FLOOR = 1e-3  # rows are divided by max(||x||, 1e-3), as in the paper's code
HIST_BINS = 128
N_MASSIVE = 5  # how many of the largest-|activation| dimensions to report
LAST_N = (1, 2, 3, 4, 5)  # plus n_layer // 2, for last_n_mean


# ---------------------------------------------------------------------- text

def read_tokens(path, encode):
    """Token ids (1-D array) of a text file, or of a prepared .bin file (read as is, in the dtype its
    folder's meta.json gives; uint16 without one). encode: str -> list of ids, for text files only."""
    if path.endswith(".bin"):
        folder = os.path.dirname(os.path.abspath(path))
        has_meta = os.path.exists(os.path.join(folder, "meta.json"))
        dtype = np.dtype(read_meta(folder)["dtype"] if has_meta else "uint16")
        if os.path.getsize(path) % dtype.itemsize:
            raise InputError(f"{path} has a number of bytes not divisible by {dtype.itemsize}: not a prepared "
                             f"file of {dtype.name} token ids")
        return np.memmap(path, dtype=dtype, mode="r")
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    return np.asarray(encode(text), dtype=np.int64)


def sample_sequences(token_ids, n_seq, seq_len, seed=0):
    """n_seq windows of seq_len consecutive tokens, as a LongTensor (n_seq, seq_len).
    Window r starts at a point drawn uniformly from the first 95% of the tokens by an RNG seeded
    with seed + r (so window r does not depend on n_seq), moved back if needed to fit the text."""
    n = len(token_ids)
    if n < seq_len:
        raise InputError(f"the text has {n} tokens, fewer than seq_len={seq_len}; use a longer text or a shorter --seq-len")
    last_start = min(int(0.95 * n), n - seq_len)
    out = np.empty((n_seq, seq_len), dtype=np.int64)
    for r in range(n_seq):
        start = int(np.random.default_rng(seed + r).integers(0, last_start + 1))
        out[r] = token_ids[start: start + seq_len]
    return torch.from_numpy(out)  # (R, S)


# ---------------------------------------------------------------------- hidden states

def model_context_length(model):
    """The longest sequence the model has positions for, or None if it does not say."""
    if isinstance(model, GPT):
        return model.config.block_size
    config = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    return None


def get_hidden_states(model, idx):
    """The n_layer + 1 hidden states (B, T, C) of our GPT or of a transformers model, in Hugging
    Face output_hidden_states indexing (embedding output, block outputs, last one after the final norm)."""
    if isinstance(model, GPT):
        return model.hidden_states(idx)  # no output head: its logits are not needed
    # transformers: run the base model, so the head's (B, T, vocab) logits are never computed
    base = getattr(model, "base_model", model)
    return list(base(input_ids=idx, output_hidden_states=True).hidden_states)


def _unit_rows(x):
    """Rows divided by max(||x||, 1e-3): a zero vector stays zero instead of becoming nan."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(NORM_FLOOR)


# ---------------------------------------------------------------------- per-layer statistics

def accumulate_layer_sums(hidden, sums=None):
    """Add one batch of sequences to the running per-layer sums and return them.
    hidden: list of (B, S, C) tensors, one per layer. sums: what this returned for the earlier
    batches, or None. Everything kept is O(S^2 + C) per layer, in float64 on the CPU, so memory
    does not grow with the number of sequences."""
    if sums is None:
        sums = [None] * len(hidden)
    if len(sums) != len(hidden):
        raise ValueError(f"got {len(hidden)} hidden states, the earlier batches had {len(sums)}")
    for layer, h in enumerate(hidden):
        x = h.detach().float()  # (B, S, C)
        B, S, C = x.shape
        if S < 2:
            raise ValueError("need at least 2 tokens per sequence to compare tokens")

        # the paper's cosine matrices, summed over the batch (the average is taken at the end)
        xn = _unit_rows(x)  # (B, S, C)
        cos = (xn @ xn.transpose(1, 2)).clamp(-1.0, 1.0)  # (B, S, S)

        # for the shared/sequence-specific split of mean_cos: each sequence's mean unit vector m_r
        # (mean_cos of sequence r is |m_r|^2, since sum_ij u_i.u_j = |sum_i u_i|^2)
        seq_mean = xn.mean(dim=1).cpu().double()  # (B, C); float64 from here: mean_cos_centered is a small difference

        # effective rank: entropy of the singular-value distribution of the centred tokens
        xc = x - x.mean(dim=1, keepdim=True)  # (B, S, C)
        sv = torch.linalg.svdvals(xc)  # (B, min(S, C))
        total = sv.sum(dim=-1, keepdim=True)  # (B, 1)
        p = sv / total.clamp_min(1e-30)
        entropy = -(p * p.clamp_min(1e-30).log()).sum(dim=-1)  # (B,) nats
        # all tokens equal: the centred matrix is rounding noise; call it one direction (entropy 0)
        collapsed = total.squeeze(-1) <= 1e-5 * x.norm(dim=(1, 2))
        entropy = torch.where(collapsed, torch.zeros_like(entropy), entropy)

        abs_x = x.abs()
        part = {
            "n_seq": B,
            "n_tokens": B * S,
            "cos": cos.sum(dim=0).cpu().double().numpy(),  # (S, S)
            "seq_mean": seq_mean.sum(dim=0).numpy(),  # (C,) sum over sequences of m_r
            "seq_mean_sq": seq_mean.pow(2).sum().item(),  # sum over sequences of |m_r|^2
            "unit_sq": xn.pow(2).sum(dim=-1).cpu().double().sum().item(),  # sum over tokens of |u_i|^2 (1 unless a row is ~0)
            "spectral_entropy": entropy.sum().item(),
            "eff_rank": entropy.exp().sum().item(),
            "mean_norm": x.norm(dim=-1).mean(dim=1).sum().item(),
            "abs_sum": abs_x.sum(dim=(0, 1)).cpu().double().numpy(),  # (C,)
            "abs_max": abs_x.amax(dim=(0, 1)).cpu().double().numpy(),  # (C,)
        }
        if sums[layer] is None:
            sums[layer] = part
            continue
        acc = sums[layer]
        if acc["cos"].shape != part["cos"].shape:
            raise ValueError(f"sequence length changed between batches: {acc['cos'].shape[0]} then {S}")
        for k, v in part.items():
            acc[k] = np.maximum(acc[k], v) if k == "abs_max" else acc[k] + v
    return sums


def _mean_over_last(mean_cos, n_layer):
    out = {}
    for n in sorted(set(LAST_N) | {max(1, n_layer // 2)}):
        if n <= len(mean_cos):
            out[str(n)] = float(np.mean(mean_cos[-n:]))
    return out


def summarize(sums, hist_bins=HIST_BINS):
    """Turn accumulated sums into the probe's result: per-layer figures plus the depth trends.
    Returns {'layers': [...], 'spearman', 'kendall', 'last_n_mean', 'hist_edges'}."""
    n_layer = len(sums) - 1
    edges = np.linspace(-1.0, 1.0, hist_bins + 1)
    layers = []
    for layer, s in enumerate(sums):
        n = s["n_seq"]
        avg = s["cos"] / n  # (S, S): each position pair averaged over the sequences
        hist, _ = np.histogram(avg, bins=edges, density=True)
        mean_abs = s["abs_sum"] / s["n_tokens"]  # (C,) mean |activation| per feature dimension
        median = float(np.median(mean_abs))
        top = np.argsort(-mean_abs, kind="stable")[:N_MASSIVE]
        shared = float(np.sum((s["seq_mean"] / n) ** 2))  # |m|^2
        spread = s["unit_sq"] / s["n_tokens"] - shared  # mean_i |u_i - m|^2
        specific = s["seq_mean_sq"] / n - shared  # mean_r |m_r - m|^2
        layers.append({
            "layer": layer,
            "layer_fraction": layer / n_layer if n_layer > 0 else 0.0,
            "mean_cos": float(avg.mean()),
            "mean_cos_shared": shared,
            "mean_cos_centered": specific / spread if spread > 1e-12 else 0.0,
            "mean_cos_skip_first": float(avg[1:, 1:].mean()),
            "eff_rank": s["eff_rank"] / n,
            "spectral_entropy": s["spectral_entropy"] / n,
            "mean_norm": s["mean_norm"] / n,
            "massive_dims": [{
                "dim": int(d),
                "mean_abs": float(mean_abs[d]),
                "max_abs": float(s["abs_max"][d]),
                "ratio_to_median": float(mean_abs[d] / median) if median > 0 else float("inf"),
            } for d in top],
            "hist": hist.tolist(),
        })
    mean_cos = [l["mean_cos"] for l in layers]
    depth = np.arange(len(layers))
    return {
        "layers": layers,
        "spearman": spearman(depth, mean_cos),
        "kendall": kendall(depth, mean_cos),
        "last_n_mean": _mean_over_last(mean_cos, n_layer),
        "hist_edges": edges.tolist(),
    }


def layer_stats_from_hidden(hidden, hist_bins=HIST_BINS):
    """The probe's result for hidden states already in hand: a list of (R, S, C) tensors, one per layer."""
    return summarize(accumulate_layer_sums(hidden), hist_bins)


# ---------------------------------------------------------------------- probes on a model

def _check_length(model, seq_len):
    ctx = model_context_length(model)
    if ctx is not None and seq_len > ctx:
        raise ValueError(f"sequences of {seq_len} tokens are longer than the model's context ({ctx})")


def probe_hidden_states(model, sequences, batch_size=8, device=None, hist_bins=HIST_BINS, progress=True):
    """The full condensation probe of a model (ours or a transformers one) on sequences (R, S).
    Runs batch by batch in eval mode without gradients (the model's mode is restored after);
    device defaults to the model's. Returns summarize()'s dict."""
    sequences = torch.as_tensor(sequences, dtype=torch.long)  # (R, S)
    _check_length(model, sequences.size(1))
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    sums = None
    try:
        with torch.no_grad():
            starts = range(0, sequences.size(0), batch_size)
            for start in tqdm(starts, desc="probe", unit="batch", disable=not progress, leave=False):
                idx = sequences[start: start + batch_size].to(device)  # (B, S)
                sums = accumulate_layer_sums(get_hidden_states(model, idx), sums)
    finally:
        model.train(was_training)
    return summarize(sums, hist_bins)


def quick_probe(model, sequences, batch_size=8):
    """A cheap probe for training eval steps: per-layer mean_cos and mean_norm plus the Spearman
    and Kendall trends of mean_cos over depth, as a flat dict
        {'layer0/mean_cos', 'layer0/mean_norm', ..., 'spearman', 'kendall'}
    (train.py prefixes 'probe/'). The mean of the cosine matrix is ||sum_i u_i||^2 / S^2 for unit
    rows u_i, so no S x S matrix is built. The model's train/eval mode is left as it was."""
    sequences = torch.as_tensor(sequences, dtype=torch.long)  # (R, S)
    _check_length(model, sequences.size(1))
    device = next(model.parameters()).device
    R, S = sequences.shape
    cos_sum, norm_sum = None, None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, R, batch_size):
                hidden = get_hidden_states(model, sequences[start: start + batch_size].to(device))
                if cos_sum is None:
                    cos_sum, norm_sum = np.zeros(len(hidden)), np.zeros(len(hidden))
                for layer, h in enumerate(hidden):
                    x = h.float()  # (B, S, C)
                    cos_sum[layer] += (_unit_rows(x).sum(dim=1).pow(2).sum(dim=-1) / (S * S)).sum().item()
                    norm_sum[layer] += x.norm(dim=-1).mean(dim=1).sum().item()
    finally:
        model.train(was_training)
    mean_cos, mean_norm = cos_sum / R, norm_sum / R
    out = {}
    for layer in range(len(mean_cos)):
        out[f"layer{layer}/mean_cos"] = float(mean_cos[layer])
        out[f"layer{layer}/mean_norm"] = float(mean_norm[layer])
    depth = np.arange(len(mean_cos))
    out["spearman"] = spearman(depth, mean_cos)
    out["kendall"] = kendall(depth, mean_cos)
    return out


# ---------------------------------------------------------------------- command line

def _fmt(v, spec="+.3f"):
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def print_table(result):
    print(f"{'layer':>5} {'frac':>5} {'mean_cos':>8} {'shared':>8} {'centred':>8} {'skip_1st':>8} {'eff_rank':>8} "
          f"{'entropy':>7} {'norm':>9}  top dim (x median)")
    for l in result["layers"]:
        top = l["massive_dims"][0]
        print(f"{l['layer']:5d} {l['layer_fraction']:5.2f} {l['mean_cos']:8.4f} {l['mean_cos_shared']:8.4f} "
              f"{l['mean_cos_centered']:8.4f} {l['mean_cos_skip_first']:8.4f} {l['eff_rank']:8.1f} "
              f"{l['spectral_entropy']:7.3f} {l['mean_norm']:9.3f}  {top['dim']} ({_fmt(top['ratio_to_median'], '.1f')}x)")
    last = "  ".join(f"{k}: {v:.4f}" for k, v in result["last_n_mean"].items())
    print(f"Spearman rho = {_fmt(result['spearman'])}   Kendall tau-b = {_fmt(result['kendall'])}")
    print(f"mean of mean_cos over the last N layers: {last}")


def _load_transformers(path, device):
    """A transformers model (any architecture)."""
    try:
        from transformers import AutoModel
    except ImportError as e:
        raise SystemExit("--backend transformers needs transformers: pip install transformers") from e
    return AutoModel.from_pretrained(path, dtype=torch.float32).to(device)


def arguments():
    """The command line: every option spelled with - or _ (--n-seq, --n_seq), --allow_unsafe_pickle also
    as --allow_unsafe_pickle=True, as train.py writes it (configurator.ArgumentParser)."""
    parser = ArgumentParser(
        prog="python -m eval.condensation",
        description="Embedding-condensation probe (arXiv 2602.00217, section 4): per-layer token "
                    "cosine similarity, its histogram and trend with depth.")
    parser.add_argument("--ckpt", required=True,
                        help="our ckpt.pt, an out_dir holding one, or a Hugging Face model directory")
    parser.add_argument("--text", default=None,
                        help="text file (or prepared .bin file of the model's token ids) to draw sequences from; "
                             "default: $DISPERSE_WIKITEXT (e.g. wikitext-103 valid.raw)")
    parser.add_argument("--tokenizer", default=None,
                        help="what encodes --text (gpt2, a Hugging Face folder or hub name); default: the one the "
                             "checkpoint records, or the Hugging Face folder's own (GPT-2's if it has none)")
    parser.add_argument("--n-seq", type=int, default=100, help="number of sequences R")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per sequence S (capped at the context)")
    parser.add_argument("--seed", type=int, default=0, help="sequence r is drawn with seed + r")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    parser.add_argument("--out", default=None, help="output folder; default: 'condensation' beside the checkpoint")
    parser.add_argument("--label", default=None, help="name in plot titles; default: the checkpoint's folder name")
    parser.add_argument("--backend", choices=("ours", "transformers"), default="ours",
                        help="ours: load into model.py's GPT; transformers: AutoModel (any architecture)")
    parser.add_flag("--allow-unsafe-pickle",
                    help="open a checkpoint not in the safe format (older or foreign): unpickling it can run code")
    return parser


def main(argv=None):
    parser = arguments()
    args = parser.parse_args(argv)

    text_path = args.text or os.environ.get("DISPERSE_WIKITEXT")
    if not text_path:
        parser.error("no text to probe: pass --text FILE (a text file or a prepared .bin token file), "
                     "or set DISPERSE_WIKITEXT to wikitext-103's raw text (e.g. wikitext103/valid.raw)")
    if not os.path.isfile(text_path):
        parser.error(f"--text {text_path}: no such file")

    ckpt_dir = args.ckpt if os.path.isdir(args.ckpt) else os.path.dirname(os.path.abspath(args.ckpt))
    label = args.label or os.path.basename(os.path.normpath(ckpt_dir if os.path.exists(args.ckpt) else args.ckpt))
    out_dir = args.out or (os.path.join(ckpt_dir, "condensation") if os.path.exists(args.ckpt)
                           else os.path.join("out-condensation", label))

    t0 = time.time()
    if args.backend == "ours":
        model, info = load_model(args.ckpt, args.device, allow_unsafe_pickle=args.allow_unsafe_pickle)
    else:
        model = _load_transformers(args.ckpt, args.device)
        info = {"source": "transformers", "path": args.ckpt, "tokenizer": hf.tokenizer_name(args.ckpt)}
    tokenizer = get_tokenizer(args.tokenizer or info["tokenizer"])
    n_layer = model.config.n_layer if isinstance(model, GPT) else model.config.num_hidden_layers

    seq_len = args.seq_len
    ctx = model_context_length(model)
    if ctx is not None and seq_len > ctx:
        print(f"--seq-len {seq_len} is longer than the model's context of {ctx} tokens: using {ctx}")
        seq_len = ctx
    tokens = read_tokens(text_path, tokenizer.encode)
    if isinstance(model, GPT) and len(tokens) and int(tokens.max()) >= model.config.vocab_size:
        raise InputError(f"--text {text_path} holds token id {int(tokens.max())} but the model {args.ckpt} has "
                         f"vocab_size={model.config.vocab_size}; probe it with text in its own token ids (a prepared .bin file)")
    try:
        sequences = sample_sequences(tokens, args.n_seq, seq_len, args.seed)  # (R, S)
    except InputError as e:
        raise InputError(f"--text {text_path}: {e}") from None
    print(f"probing {args.ckpt} ({n_layer} layers) on {args.n_seq} x {seq_len} tokens of {text_path} "
          f"({len(tokens):,} tokens)")

    result = probe_hidden_states(model, sequences, args.batch_size, args.device)
    result["meta"] = {
        "model": args.ckpt, "label": label, "backend": args.backend, "iter_num": info.get("iter_num"),
        "n_layer": n_layer, "n_seq": args.n_seq, "seq_len": seq_len, "seq_len_requested": args.seq_len,
        "seed": args.seed, "text": text_path, "text_tokens": len(tokens), "tokenizer": tokenizer.name,
        "device": args.device, "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "seconds": round(time.time() - t0, 1),
    }
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "condensation.json")
    write_json(json_path, result)
    print_table(result)
    print(f"wrote {json_path}")

    try:
        import matplotlib  # noqa: F401  (only to find out whether the plots can be drawn)
    except ImportError:
        print("no plots: pip install matplotlib to get them")
        return result
    from eval.plots import plot_heatmaps, plot_mean_cos
    for name, plot in (("condensation_heatmap.png", plot_heatmaps), ("condensation_mean_cos.png", plot_mean_cos)):
        plot([result], [label], os.path.join(out_dir, name))
        print(f"wrote {os.path.join(out_dir, name)}")
    return result


if __name__ == "__main__":
    run_cli(main)
