"""
The log-likelihood engine and the metrics built on it.

A request is (context, continuation); its score is log P(continuation | context) under the
model, plus whether the continuation is the model's greedy choice at every token. Text is
turned into tokens the way lm-evaluation-harness 0.4.13's HFLM does it, for any tokenizer
(data.common.Tokenizer; the model's own):
  - a text is encoded with the tokenizer's own special tokens (HFLM leaves add_special_tokens to
    the tokenizer: Llama's adds a BOS in front, GPT-2's and Qwen's add nothing), except that a text
    starting with the prefix token's text gets none (no second BOS);
  - trailing whitespace of the context is moved onto the continuation;
  - the context is encoded alone and the continuation tokens are what follows them in the
    encoding of context + continuation;
  - an empty context is replaced by the prefix token (bos, else eos: GPT-2's <|endoftext|>), and
    the continuation is encoded without special tokens; perplexity windows start from it too;
  - a sequence longer than the model's block_size keeps its last block_size + 1 tokens.
A tokenizer without a prefix token (a character tokenizer, nanoGPT's shakespeare_char) is refused
(check_tokenizer): lm-eval has nothing to put in an empty context or before a perplexity window, and
any stand-in (a newline, say) would score something other than what the benchmarks define.

Speed: the requests of one item (the choices of a question) share their context, so the
shared token prefix of an item is run once, and only the differing tails of its rows are run on
top of the prefix's key/value cache. For our GPT the tails of different items share passes, each
row on its own item's cache (padded to the longest past of the pass and masked: GPT.forward_cached's
past_lengths); for other models a pass holds rows of one past length. The output head runs only
at positions that predict a continuation token. Rows are sorted by length so that passes carry
little padding (_score_batch has the details). Results equal one-request-at-a-time scoring to
float tolerance.

Under torchrun (torch.distributed initialised) items are split across ranks and the results
are gathered on every rank.
"""

import inspect
import math

import torch
import torch.nn.functional as F
from tqdm import tqdm

from errors import InputError


# ----------------------------------------------------------------------------- tokenisation

def check_tokenizer(enc, where, leave_out="score another model"):
    """Refuse a tokenizer the scorers cannot encode requests with: one without a prefix token.
    where: what the message starts with (the setting or file); leave_out: the way out it offers."""
    if enc.prefix_token is None:
        what = f"a character tokenizer of {enc.vocab_size} characters" if enc.backend == "char" else repr(enc.name)
        raise InputError(f"{where}: benchmarks are scored with the model's tokenizer, here {what}, which has no "
                         "start-of-text token for lm-eval's empty contexts and perplexity windows (and benchmark "
                         f"texts use characters a small character set lacks); {leave_out}, or train on data with "
                         "a subword tokenizer such as gpt2")


def encode(enc, text, add_special_tokens=None):
    """HFLM.tok_encode: special-token text ("<|endoftext|>") becomes the special token; None leaves
    adding BOS and the like to the tokenizer, unless text already starts with the prefix token's text."""
    if add_special_tokens is None:
        add_special_tokens = not text.startswith(enc.decode([enc.prefix_token]))
    return enc.encode_special(text, add_special_tokens)


def encode_pair(enc, context, continuation, prefix_token=None):
    """(context_tokens, continuation_tokens) for one request, as lm-eval's HFLM builds them.
    prefix_token: the empty context's stand-in; None: the tokenizer's (enc.prefix_token)."""
    prefix_token = enc.prefix_token if prefix_token is None else prefix_token
    if context == "":
        cont = encode(enc, continuation, add_special_tokens=False)
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


def rolling_windows(tokens, max_len, prefix_token):
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

def continuation_windows(ctx, cont, max_len):
    """The requests that score (ctx, cont) with a model of context max_len. Up to max_len continuation
    tokens: the request itself (the context is left-truncated to fit). A longer continuation (lm-eval
    stops with an AssertionError) is cut into windows of max_len tokens counted from its end: the first,
    shortest window is conditioned on the end of the context, each later one on the continuation tokens
    before it, so every continuation token is scored exactly once and the sum is a log-likelihood of
    the whole continuation (with a context shorter than the continuation's start)."""
    if len(cont) <= max_len:
        return [(ctx, cont)]
    first = len(cont) % max_len or max_len
    cuts = [0] + list(range(first, len(cont) + 1, max_len))  # window k scores cont[cuts[k]:cuts[k + 1]]
    return [(list(ctx) + list(cont[:a]), cont[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]


def _common_prefix_len(rows):
    n = min(len(r) for r in rows)
    first = rows[0]
    for row in rows[1:]:
        i = 0
        while i < n and row[i] == first[i]:
            i += 1
        n = i
    return n


def _forward(model, idx, kv_caches=None, past_lengths=None):
    """Run the model on idx (B, T) and return (states (B, T, D), head): head maps gathered rows
    of states (N, D) to next-token logits (N, V). For our GPT the states are the final hidden
    states and the output head runs only where a score is needed: the full (B, T, vocab) logits
    would dominate time and memory (50257 x 768 per position for GPT-2). Any other model that
    returns (logits, loss) gives its logits as states. Same numbers as model(idx) either way
    (checked in tests/test_benchmarks.py). past_lengths: rows whose cached pasts are padded
    (GPT.forward_cached's argument; only for models that take it, see _takes_padded_pasts)."""
    if hasattr(model, "forward_cached") and hasattr(model, "head"):
        if kv_caches is None:
            kv_caches = [dict() for _ in range(model.config.n_layer)]
        states = model.forward_cached(idx, kv_caches, past_lengths)  # (B, T, C), after ln_f
        return states, model.head
    logits, _ = model(idx, kv_caches=kv_caches)  # (B, T, V)
    return logits, lambda h: h


PADDED_PASTS = True  # False: a pass holds tails of one past length only (bench/bench_eval.py times both plans)


def _takes_padded_pasts(model):
    """Whether the model can run rows whose cached pasts differ in length (GPT.forward_cached's past_lengths)."""
    cached = getattr(model, "forward_cached", None)
    return (PADDED_PASTS and cached is not None and hasattr(model, "head")
            and "past_lengths" in inspect.signature(cached).parameters)


class _RowCache(dict):
    """One layer's key/value cache for a pass of rows whose pasts live in other passes' caches:
    row r reads row rows[r] of the concatenation of `keys` (and `values`), each (n, nh, T_n, hs),
    cut (or zero-padded) to the first `past` positions. The rows are gathered when the layer asks
    for them and the layer's write-back is dropped, so only one layer's gathered cache is alive at
    a time (the pass's own keys and values are never needed again)."""

    def __init__(self, keys, values, rows, past):
        super().__init__()
        self.src, self.rows, self.past, self.memo = {"k": keys, "v": values}, rows, past, {}

    def __getitem__(self, key):
        if key not in self.memo:
            parts = [t[:, :, :self.past] if t.size(2) >= self.past else
                     F.pad(t, (0, 0, 0, self.past - t.size(2))) for t in self.src[key]]  # (n, nh, past, hs)
            whole = parts[0] if len(parts) == 1 else torch.cat(parts)
            self.memo[key] = whole.index_select(0, self.rows)  # (R, nh, past, hs)
        return self.memo[key]

    def get(self, key, default=None):
        return self[key] if key in self.src else default

    def __setitem__(self, key, value):
        self.memo.clear()  # the layer is done with its cache


# A forward pass costs about as much as this many padded tokens (every weight is read once per
# pass, and small matmuls run far below peak): rows are split into passes of similar length when
# that saves more padding than this. 32 was the best of 8, 32, 96 for GPT-2 small on 2 CPU cores
# (PIQA, OpenBookQA, WinoGrande, HellaSwag: 15-30% faster than 8).
PASS_COST_TOKENS = 32
HEAD_ROWS = 256  # states per output-head call: bounds the (rows, vocab) logits in memory


def _passes(spans, max_tokens):
    """Split spans (start, end) of rows, in the given order, into consecutive passes. A pass starts
    at its smallest start (its rows' shared past: a row may recompute a few of its own shared
    tokens) and is padded to its largest end. Minimises the tokens run + PASS_COST_TOKENS per pass,
    with rows x length <= max_tokens. Returns the (first, last + 1) index ranges."""
    n = len(spans)
    cost, cut = [0.0] + [math.inf] * n, [0] * (n + 1)
    for i in range(1, n + 1):
        lo, hi = spans[i - 1]
        for j in range(i - 1, -1, -1):  # pass j..i-1
            lo, hi = min(lo, spans[j][0]), max(hi, spans[j][1])
            if j < i - 1 and (i - j) * (hi - lo) > max_tokens:
                break
            c = cost[j] + (i - j) * (hi - lo) + PASS_COST_TOKENS
            if c < cost[i]:
                cost[i], cut[i] = c, j
    ranges, i = [], n
    while i > 0:
        ranges.append((cut[i], i))
        i = cut[i]
    return ranges[::-1]


def _item_rows(reqs, max_len):
    """An item's distinct model inputs and what each scores. Returns (rows, scored): rows are token
    tuples (identical inputs, e.g. one-token choices, appear once), scored is a list of
    (row index, request index, first scored row position, target tokens)."""
    index, rows, scored = {}, [], []
    for j, (ctx, cont) in enumerate(reqs):
        if len(cont) == 0:
            raise ValueError("empty continuation: every request must score at least one token")
        for c, x in continuation_windows(ctx, cont, max_len):
            full = (list(c) + list(x))[-(max_len + 1):]  # left-truncate to block_size + 1
            row = tuple(full[:-1])  # the last token is only predicted, never read
            if row not in index:
                index[row] = len(rows)
                rows.append(row)
            scored.append((index[row], j, len(row) - len(x), list(x)))
    return rows, scored


def _score_batch(model, batch, n_layer, max_batch_tokens, device, stats, padded_pasts=False):
    """Score a batch of items, each (rows, scored) from _item_rows, in three levels of forward
    passes, each on the key/value caches of the level before (the model's kv_caches protocol;
    the rows of a level-0 or level-1 pass share a past length, so no mask is needed there):
      0) the prefix H common to every row of the batch (a task's fixed preamble, MMLU's description
         and shots), run once;
      1) each item's own shared prefix, from H to P_b (the common prefix of item b's rows);
      2) each row's tail after its item's prefix: with padded_pasts (models that take GPT.forward_cached's
         past_lengths) tails of any items share a pass, planned on the tails' lengths; else a
         pass holds tails on one past length (a row recomputes its prefix tokens past it);
    levels 1 and 2 in passes of similar spans (_passes). Then the output head and log-softmax at the
    distinct states that predict a continuation token. Returns, per item, [(log-likelihood,
    is_greedy)] per request."""
    H = _common_prefix_len([r for rows, _ in batch for r in rows])
    prefix = [_common_prefix_len(rows) for rows, _ in batch]  # P_b >= H
    levels, head = [], None  # (states (n, T, D), flat offset of its positions, start position) per pass

    def run(x, caches, start, past_lengths=None):
        nonlocal head
        states, head = _forward(model, x.to(device), caches, past_lengths)  # (n, T, D)
        offset = levels[-1][1] + levels[-1][0].size(0) * levels[-1][0].size(1) if levels else 0
        levels.append((states, offset, start))
        stats["passes"] = stats.get("passes", 0) + 1
        stats["tokens"] = stats.get("tokens", 0) + x.numel()
        return offset

    def passes(rows, caches_of, own_pasts=False):
        """rows: (tokens, start, end) sorted for _passes; caches_of(range, past) -> kv caches.
        Runs each row's tokens from the pass's past to its end, right-padded: the pass's past is its
        rows' smallest start (a row may recompute a few of its own tokens). With own_pasts every row
        runs from its own start on its own cached past, padded to the pass's largest start and masked
        (GPT.forward_cached's past_lengths), and passes are planned on the rows' lengths alone. Returns per row
        (flat offset, pass width, the row's first position in the pass)."""
        where = [None] * len(rows)
        for a, e in _passes([(0, t - s) if own_pasts else (s, t) for _, s, t in rows], max_batch_tokens):
            group = rows[a:e]
            past = (max if own_pasts else min)(s for _, s, _ in group)
            firsts = [s if own_pasts else past for _, s, _ in group]  # where each row's run begins
            width = max(t - first for (_, _, t), first in zip(group, firsts))
            x = torch.zeros(e - a, width, dtype=torch.long)  # (n, S); padding is never read by real tokens
            for i, ((tokens, _, t), first) in enumerate(zip(group, firsts)):
                x[i, :t - first] = torch.tensor(tokens[first:t])
            # one past length in the pass: the plain causal cache protocol, no mask
            lengths = torch.tensor(firsts) if len(set(firsts)) > 1 else None
            off = run(x, caches_of(range(a, e), past), past, lengths)
            stats["padding"] = stats.get("padding", 0) + sum(width - (t - f) for (_, _, t), f in zip(group, firsts))
            for i, first in enumerate(firsts):
                where[a + i] = (off + i * width, width, first)
        return where

    # level 0: (1, H)
    header = None
    if H > 0:
        header = [dict() for _ in range(n_layer)]
        off0 = run(torch.tensor([batch[0][0][0][:H]]), header, 0)  # (1, H)

    # level 1: item prefixes [H, P_b), on the header
    def on_header(rows, past):
        if header is None:
            return [dict() for _ in range(n_layer)]
        return [{"k": c["k"].expand(len(rows), -1, -1, -1), "v": c["v"].expand(len(rows), -1, -1, -1)}
                for c in header]

    level1 = sorted((b for b in range(len(batch)) if prefix[b] > H), key=lambda b: -prefix[b])
    caches1 = {}  # pass -> its caches (every layer's keys/values up to the pass's end)

    def keep(rows, past):
        caches = on_header(rows, past)
        caches1[len(caches1)] = (caches, [level1[r] for r in rows])
        return caches

    at1 = dict(zip(level1, passes([(batch[b][0][0], H, prefix[b]) for b in level1], keep)))
    # where each item's past lives: (pass id or -1 for the header, row in it)
    home = {b: (-1, 0) for b in range(len(batch))}
    for q, (_, members) in caches1.items():
        for i, b in enumerate(members):
            home[b] = (q, i)

    # level 2: row tails [P_b, end), on their items' prefixes
    tails = [(b, k) for b, (rows, _) in enumerate(batch) for k, r in enumerate(rows) if len(r) > prefix[b]]

    def gather(members, past):
        """Every layer's cache for rows of the items `members`: each item's past read from the
        pass (or header) that holds it, cut or zero-padded to `past` positions."""
        real = [b for b in members if prefix[b] > 0]  # an item with no past attends to no cached key
        homes = [home[b] if prefix[b] > 0 else home[real[0]] for b in members]
        sources = sorted({q for q, _ in homes})
        keys, values = [], []
        for q in sources:
            caches = header if q == -1 else caches1[q][0]
            keys.append([c["k"] for c in caches])
            values.append([c["v"] for c in caches])
        starts, n = {}, 0
        for q, ks in zip(sources, keys):
            starts[q] = n
            n += ks[0].size(0)
        idx = torch.tensor([starts[q] + i for q, i in homes], device=device)
        return [_RowCache([ks[layer] for ks in keys], [vs[layer] for vs in values], idx, past)
                for layer in range(n_layer)]

    if padded_pasts:
        # tails of different items in one pass, each on its own item's past: planned on the tails'
        # lengths alone, a batch's tails run in a few wide passes instead of one per prefix length
        tails.sort(key=lambda bk: (-(len(batch[bk[0]][0][bk[1]]) - prefix[bk[0]]), -prefix[bk[0]]))
    else:
        tails.sort(key=lambda bk: (-prefix[bk[0]], -len(batch[bk[0]][0][bk[1]])))

    def on_prefixes(rows, past):
        return None if past == 0 else gather([tails[r][0] for r in rows], past)

    at2 = dict(zip(tails, passes([(batch[b][0][k], prefix[b], len(batch[b][0][k])) for b, k in tails],
                                 on_prefixes, own_pasts=padded_pasts)))

    # the flat index of the state at position pos of row k of item b
    def state(b, k, pos):
        if pos < H:
            return off0 + pos
        off, width, past = at1[b] if pos < prefix[b] else at2[(b, k)]
        return off + pos - past

    slot, pair_state, pair_target, pair_owner, owner_of = {}, [], [], [], []
    for b, (rows, scored) in enumerate(batch):
        first_owner = len(owner_of)
        owner_of += [(b, j) for j in range(1 + max(j for _, j, _, _ in scored))]
        for k, j, first, targets in scored:
            for t, target in enumerate(targets):
                pair_state.append(slot.setdefault(state(b, k, first + t), len(slot)))
                pair_target.append(target)
                pair_owner.append(first_owner + j)
    D = levels[0][0].size(-1)
    flat = torch.cat([s.reshape(-1, D) for s, _, _ in levels])  # (all positions, D)
    states = flat.index_select(0, torch.tensor(list(slot), device=flat.device))  # (N, D) distinct states
    pair_state = torch.tensor(pair_state, device=flat.device)
    pair_target = torch.tensor(pair_target, device=flat.device)
    picked = torch.empty(len(pair_target), dtype=torch.float64, device=flat.device)
    hits = torch.empty(len(pair_target), dtype=torch.bool, device=flat.device)
    for a in range(0, states.size(0), HEAD_ROWS):
        logits = head(states[a:a + HEAD_ROWS]).float()  # (n, V), float32, ours to overwrite
        mine = ((pair_state >= a) & (pair_state < a + HEAD_ROWS)).nonzero().squeeze(1)
        rows_here, targets = pair_state[mine] - a, pair_target[mine]
        # log_softmax's own formula, (x - max) - log(sum(exp(x - max))), but only at the targets:
        # no (n, V) output to write, and max() gives the greedy token in the same pass
        top, greedy = logits.max(dim=-1)  # first index on ties, like argmax
        target_logits = logits[rows_here, targets]
        log_norm = logits.sub_(top[:, None]).exp_().sum(dim=-1).log()  # (n,)
        picked[mine] = ((target_logits - top[rows_here]) - log_norm[rows_here]).double()
        hits[mine] = greedy[rows_here] == targets
    stats["head_rows"] = stats.get("head_rows", 0) + states.size(0)
    owners = torch.tensor(pair_owner, device=flat.device)
    lls = torch.zeros(len(owner_of), dtype=torch.float64, device=flat.device).index_add_(0, owners, picked)
    misses = torch.zeros(len(owner_of), device=flat.device).index_add_(0, owners, (~hits).float())
    out = [[None] * (1 + max(j for _, j, _, _ in scored)) for _, scored in batch]
    for (b, j), ll, miss in zip(owner_of, lls.tolist(), misses.tolist()):
        out[b][j] = (ll, miss == 0)
    return out


def _score_local(model, token_items, batch_size, max_batch_tokens, device, progress, desc, groups, stats):
    max_len = model.config.block_size
    padded_pasts = _takes_padded_pasts(model)
    items = [_item_rows(reqs, max_len) for reqs in token_items]
    # batches within one group (task), items with similar shared prefixes together (little is lost
    # to the batch's shortest one), longest first so the memory peak comes first
    rank = {}
    for g in groups or [0] * len(items):
        rank.setdefault(g, len(rank))
    group_of = [rank[g] for g in groups] if groups else [0] * len(items)
    order = sorted(range(len(items)), key=lambda i: (group_of[i], -_common_prefix_len(items[i][0]),
                                                    -max(len(r) for r in items[i][0])))
    results = [None] * len(items)
    bar = tqdm(total=len(items), desc=desc, disable=not progress, leave=False)
    start = 0
    while start < len(order):
        # a batch: up to batch_size items of one group, their rows within max_batch_tokens
        batch, tokens = [], 0
        for i in order[start:]:
            n = sum(len(r) for r in items[i][0])
            if batch and (len(batch) == batch_size or tokens + n > max_batch_tokens
                          or group_of[i] != group_of[batch[0]]):
                break
            batch.append(i)
            tokens += n
        start += len(batch)
        for i, res in zip(batch, _score_batch(model, [items[i] for i in batch], model.config.n_layer,
                                              max_batch_tokens, device, stats, padded_pasts)):
            results[i] = res
        bar.update(len(batch))
    bar.close()
    return results


@torch.no_grad()
def score_items(model, token_items, batch_size=16, max_batch_tokens=8192, device="cpu",
                progress=True, desc="loglikelihood", groups=None, stats=None):
    """token_items: a list of items, each a list of (context_tokens, continuation_tokens).
    Returns, per item, a list of (log P(continuation | context), is_greedy), one per request.
    A continuation longer than the model's block_size is scored in windows (continuation_windows).
    batch_size: items per batch; max_batch_tokens caps a batch's rows x tokens (activations and
    key/value caches grow with it). groups: an optional label per item (its task); batches never
    mix labels, so a prefix shared by a task's items runs once per batch. stats: an optional dict
    that receives counts of forward passes, tokens run, padding and output-head rows."""
    stats = {} if stats is None else stats
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if not distributed or torch.distributed.get_world_size() == 1:
        return _score_local(model, token_items, batch_size, max_batch_tokens, device, progress, desc, groups,
                            stats)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    mine = list(range(rank, len(token_items), world))
    local = _score_local(model, [token_items[i] for i in mine], batch_size, max_batch_tokens, device,
                         progress and rank == 0, desc, groups and [groups[i] for i in mine], stats)
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
