"""
The log-likelihood engine and the metrics built on it.

A request is (context, continuation); its score is log P(continuation | context) under the
model, plus whether the continuation is the model's greedy choice at every token. Text is
turned into tokens the way lm-evaluation-harness's HFLM does it for GPT-2:
  - trailing whitespace of the context is moved onto the continuation;
  - the context is encoded alone and the continuation tokens are what follows them in the
    encoding of context + continuation;
  - an empty context is replaced by the end-of-text token;
  - a sequence longer than the model's block_size keeps its last block_size + 1 tokens.

Speed: the requests of one item (the choices of a question) share their context, so the
shared token prefix of an item is run once, and only the differing tails of its rows are run,
batched, on top of the prefix's key/value cache (when the shared prefix is short, the rows are
scored apart instead, batched with others). The output head runs only at positions that
predict a continuation token. Prefixes are sorted by length so that batches carry little
padding. Results equal one-request-at-a-time scoring to float tolerance.

Under torchrun (torch.distributed initialised) items are split across ranks and the results
are gathered on every rank.
"""

import math

import torch
import torch.nn.functional as F
from tqdm import tqdm

EOT_TOKEN = 50256  # GPT-2's <|endoftext|>: lm-eval's prefix token for an empty context


# ----------------------------------------------------------------------------- tokenisation

def encode(enc, text):
    # special-token text ("<|endoftext|>") becomes the special token, as Hugging Face tokenizers do
    return enc.encode(text, allowed_special="all")


def encode_pair(enc, context, continuation, prefix_token=EOT_TOKEN):
    """(context_tokens, continuation_tokens) for one request, as lm-eval's HFLM builds them."""
    if context == "":
        cont = encode(enc, continuation)
        if cont[0] != prefix_token:
            return [prefix_token], cont
        return cont[:1], cont[1:]
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        # "Answer: " + "B" would tokenize as "Answer:", " ", "B"; moving the space gives " B"
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = encode(enc, context + continuation)
    ctx = encode(enc, context)
    return ctx, whole[len(ctx):]


def rolling_windows(tokens, max_len, prefix_token=EOT_TOKEN):
    """Cut a long token list into (context, continuation) requests for perplexity, as lm-eval's
    loglikelihood_rolling does: every token is predicted exactly once, the first window is
    conditioned on the prefix token, each later window predicts up to max_len new tokens with as
    much preceding text as fits (so each request is exactly max_len + 1 tokens long)."""
    if not tokens:
        return []
    first = min(max_len, len(tokens))
    windows = [([prefix_token], tokens[:first])]
    done = first
    while done < len(tokens):
        n = min(len(tokens) - done, max_len)
        end = done + n
        windows.append((tokens[end - max_len - 1: end - n], tokens[end - n: end]))
        done = end
    return windows


# ----------------------------------------------------------------------------- the engine

def _common_prefix_len(rows):
    n = min(len(r) for r in rows)
    first = rows[0]
    for row in rows[1:]:
        i = 0
        while i < n and row[i] == first[i]:
            i += 1
        n = i
    return n


def _forward(model, idx, kv_caches=None):
    """Run the model on idx (B, T) and return (states (B, T, D), head): head maps gathered rows
    of states (N, D) to next-token logits (N, V). For our GPT the states are the final hidden
    states and the output head runs only where a score is needed: the full (B, T, vocab) logits
    would dominate time and memory (50257 x 768 per position for GPT-2). Any other model that
    returns (logits, loss) gives its logits as states. Same numbers as model(idx) either way
    (checked in tests/test_benchmarks.py)."""
    if hasattr(model, "body") and hasattr(model, "head"):
        states, _ = model.body(idx, kv_caches=kv_caches)  # (B, T, C), after ln_f
        return states, model.head
    logits, _ = model(idx, kv_caches=kv_caches)  # (B, T, V)
    return logits, lambda h: h


def _token_scores(logits, targets):
    """logits (N, V) at N positions and the N target tokens -> (log-probs (N,), greedy hits (N,))."""
    logprobs = F.log_softmax(logits.float(), dim=-1)  # (N, V), float32
    picked = logprobs.gather(1, targets[:, None]).squeeze(1)  # (N,)
    hits = logprobs.argmax(dim=-1) == targets  # (N,)
    return picked.double().cpu(), hits.cpu()


# An item's rows share a prefix; running it once saves prefix x (rows - 1) tokens but costs one more
# (small) forward pass per item for the tails. Below this saved fraction of the item's tokens the
# rows are scored as separate requests, batched with others (PIQA, WinoGrande: short shared prefixes).
MIN_SHARED_SAVING = 0.3


def _score_local(model, token_items, batch_size, max_batch_tokens, device, progress, desc):
    max_len = model.config.block_size
    n_layer = model.config.n_layer
    units = []  # (input rows, continuation tokens, shared prefix length, item index, its row indices)
    for i, reqs in enumerate(token_items):
        rows, conts = [], []
        for ctx, cont in reqs:
            if len(cont) == 0 or len(cont) > max_len:
                raise ValueError(f"continuation of {len(cont)} tokens: need 1..block_size={max_len}")
            full = (list(ctx) + list(cont))[-(max_len + 1):]  # left-truncate to block_size + 1
            rows.append(full[:-1])  # the last token is only predicted, never read
            conts.append(list(cont))
        P = _common_prefix_len(rows)
        if len(rows) > 1 and P * (len(rows) - 1) < MIN_SHARED_SAVING * sum(len(r) for r in rows):
            units += [([rows[r]], [conts[r]], len(rows[r]), i, [r]) for r in range(len(rows))]
        else:
            units.append((rows, conts, P, i, list(range(len(rows)))))

    results = [[None] * len(reqs) for reqs in token_items]
    units_left = [0] * len(token_items)
    for unit in units:
        units_left[unit[3]] += 1
    # longest shared prefix first: little padding in the prefix batches, the memory peak comes first
    order = sorted(range(len(units)), key=lambda u: (-units[u][2], -max(len(r) for r in units[u][0])))
    bar = tqdm(total=len(token_items), desc=desc, disable=not progress, leave=False)
    start = 0
    while start < len(order):
        # a batch of units, longest first, within the row and token budgets
        longest = max(1, units[order[start]][2])
        n_items = max(1, min(batch_size, max_batch_tokens // longest))
        batch = order[start: start + n_items]
        start += n_items

        # 1) the shared prefixes of the batch's units, right-padded into one tensor
        with_prefix = [u for u in batch if units[u][2] > 0]
        need_cache = any(len(r) > units[u][2] for u in with_prefix for r in units[u][0])
        caches, prefix_states, slot = None, None, {}
        if with_prefix:
            T = max(units[u][2] for u in with_prefix)
            x = torch.zeros(len(with_prefix), T, dtype=torch.long)  # (B, T); padding is never read
            for b, u in enumerate(with_prefix):
                rows, _, P = units[u][:3]
                x[b, :P] = torch.tensor(rows[0][:P])
                slot[u] = b
            caches = [dict() for _ in range(n_layer)] if need_cache else None
            prefix_states, head = _forward(model, x.to(device), caches)  # (B, T, D)

        # 2) per unit: the tails of its rows on top of its prefix cache, then gather the scores
        for u in batch:
            rows, conts, P = units[u][:3]
            tails = [r for r in range(len(rows)) if len(rows[r]) > P]
            tail_states = None
            if tails:
                S = max(len(rows[r]) - P for r in tails)
                x = torch.zeros(len(tails), S, dtype=torch.long)  # (R, S)
                for k, r in enumerate(tails):
                    x[k, :len(rows[r]) - P] = torch.tensor(rows[r][P:])
                item_caches = None
                if P > 0:
                    b = slot[u]
                    item_caches = [{"k": c["k"][b:b + 1, :, :P].expand(len(tails), -1, -1, -1),
                                    "v": c["v"][b:b + 1, :, :P].expand(len(tails), -1, -1, -1)}
                                   for c in caches]  # each (R, nh, P, hs)
                tail_states, head = _forward(model, x.to(device), item_caches)  # (R, S, D)
                tail_row = {r: k for k, r in enumerate(tails)}

            # the states that predict each continuation token, from the prefix or the tail pass
            pieces, targets, owners = [], [], []
            for r, (row, cont) in enumerate(zip(rows, conts)):
                first, end = len(row) - len(cont), len(row)  # row positions that predict cont
                if first < P:
                    pieces.append(prefix_states[slot[u], first:min(P, end)])  # (n, D)
                if end > P:
                    pieces.append(tail_states[tail_row[r], max(first, P) - P: end - P])  # (n, D)
                targets += cont
                owners += [r] * len(cont)
            logits = head(torch.cat(pieces))  # (N, V): one row per continuation token of the item
            logprobs, hits = _token_scores(logits, torch.tensor(targets, device=logits.device))
            owners = torch.tensor(owners)
            item, row_ids = units[u][3], units[u][4]
            for r in range(len(rows)):
                mine = owners == r
                results[item][row_ids[r]] = (float(logprobs[mine].sum()), bool(hits[mine].all()))
            units_left[item] -= 1
            bar.update(int(units_left[item] == 0))
    bar.close()
    return results


@torch.no_grad()
def score_items(model, token_items, batch_size=16, max_batch_tokens=8192, device="cpu",
                progress=True, desc="loglikelihood"):
    """token_items: a list of items, each a list of (context_tokens, continuation_tokens).
    Returns, per item, a list of (log P(continuation | context), is_greedy), one per request.
    batch_size: items whose shared prefixes run in one forward pass; max_batch_tokens caps
    batch rows x prefix length (activations and key/value caches grow with it)."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if not distributed or torch.distributed.get_world_size() == 1:
        return _score_local(model, token_items, batch_size, max_batch_tokens, device, progress, desc)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    mine = list(range(rank, len(token_items), world))
    local = _score_local(model, [token_items[i] for i in mine], batch_size, max_batch_tokens, device,
                         progress and rank == 0, desc)
    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, list(zip(mine, local)))
    results = [None] * len(token_items)
    for part in gathered:
        for i, res in part:
            results[i] = res
    return results


# ----------------------------------------------------------------------------- metrics

def mean(values):
    return sum(values) / len(values)


def mean_stderr(values):
    """Standard error of the mean: sample std (n - 1) / sqrt(n), as lm-eval computes it."""
    n = len(values)
    if n < 2:
        return None
    mu = mean(values)
    return math.sqrt(sum((v - mu) ** 2 for v in values) / (n - 1)) / math.sqrt(n)


def pooled_stderr(stderrs, sizes):
    """lm-eval's stderr of a size-weighted group mean from its members' stderrs (pooled variance)."""
    pooled_var = sum((n - 1) * se ** 2 * n for se, n in zip(stderrs, sizes)) / (sum(sizes) - len(sizes))
    return math.sqrt(pooled_var / sum(sizes))


def pick_choice(lls, lengths=None):
    """Index of the best choice (the first one on ties, like numpy.argmax); with lengths, the
    log-likelihood is divided by each choice's length in characters (acc_norm)."""
    scores = lls if lengths is None else [ll / n for ll, n in zip(lls, lengths)]
    return max(range(len(scores)), key=lambda k: (scores[k], -k))


def perplexity_and_stderr(lls):
    """exp(-mean log-likelihood) and a delta-method standard error. lm-eval bootstraps this
    stderr (100k resamples); the two estimates agree to first order but not digit for digit."""
    ppl = math.exp(-mean(lls))
    se = mean_stderr(lls)
    return ppl, (None if se is None else ppl * se)


def weighted_perplexities(lls, words, n_bytes):
    """Word and byte perplexity and bits per byte of documents with total log-likelihoods lls."""
    total = sum(lls)
    return {"word_perplexity": math.exp(-total / sum(words)),
            "byte_perplexity": math.exp(-total / sum(n_bytes)),
            "bits_per_byte": -total / sum(n_bytes) / math.log(2)}
