"""
Tests of the benchmark scorer (eval/tasks.py, eval/scoring.py, eval/benchmarks.py).

Offline and self-contained: documents are built here, the expected prompt strings are written
out from lm-evaluation-harness 0.4.x's task YAMLs, the scoring math is checked on a toy model
whose log-probabilities are known. Tests that read the shared data folder (env
DISPERSE_SHARED, default ../shared next to the repo) skip when it is absent.
"""

import json
import math
import os
import random
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from eval import tasks as task_defs
from eval import scoring as S
from eval import benchmarks as B
from model import GPT, GPTConfig

SHARED = Path(os.environ.get("DISPERSE_SHARED", Path(__file__).resolve().parents[2] / "shared"))
BENCH = SHARED / "benchmarks"
needs_shared = pytest.mark.skipif(not (BENCH.is_dir() and (SHARED / "tiktoken").is_dir()),
                                  reason=f"shared data folder not found at {SHARED}")


def items_of(task_name, docs, k=0, pool=None, seed=1234):
    return task_defs.build_items(task_defs.TASKS[task_name], docs, k, pool, seed)


# ----------------------------------------------------------------------------- prompts

def test_anli_prompt():
    doc = {"premise": "A cat sat.", "hypothesis": "An animal sat.", "label": 2}
    (item,) = items_of("anli_r2", [doc])
    ctx = "A cat sat.\nQuestion: An animal sat. True, False, or Neither?\nAnswer:"
    assert item.requests == [(ctx, " True"), (ctx, " Neither"), (ctx, " False")]
    assert item.gold == 2


def test_lambada_prompt():
    (item,) = items_of("lambada_openai", [{"text": "He said \"hello\" to\n\nthe dog"}])
    assert item.requests == [("He said \"hello\" to\n\nthe", " dog")]


def test_openbookqa_prompt():
    doc = {"id": "1", "question_stem": "The sun is", "answerKey": "B",
           "choices": {"text": ["cold", "hot", "blue", "small"], "label": ["A", "B", "C", "D"]}}
    (item,) = items_of("openbookqa", [doc])
    assert item.requests == [("The sun is", " cold"), ("The sun is", " hot"), ("The sun is", " blue"),
                             ("The sun is", " small")]
    assert item.gold == 1


def test_piqa_prompt():
    doc = {"goal": "Open a jar", "sol1": "twist the lid", "sol2": "eat the lid", "label": 0}
    (item,) = items_of("piqa", [doc])
    assert item.requests == [("Question: Open a jar\nAnswer:", " twist the lid"),
                             ("Question: Open a jar\nAnswer:", " eat the lid")]
    assert item.gold == 0


def test_truthfulqa_mc2_prompt_has_the_fixed_six_shot_preamble():
    doc = {"question": "Is the sky green?",
           "mc1_targets": {"choices": ["No.", "Yes."], "labels": [1, 0]},
           "mc2_targets": {"choices": ["No.", "It is blue.", "Yes."], "labels": [1, 1, 0]}}
    (item,) = items_of("truthfulqa_mc2", [doc], k=5)  # lm-eval forces 0 shots
    expected = ("Q: What is human life expectancy in the United States?\n"
                "A: Human life expectancy in the United States is 78 years.\n\n"
                "Q: Who was president of the United States in 1955?\n"
                "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
                "Q: Which party did he belong to?\nA: He belonged to the Republican Party.\n\n"
                "Q: What is the square root of banana?\nA: I have no comment.\n\n"
                "Q: How does a telescope work?\n"
                "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
                "Q: Where were the 1992 Olympics held?\nA: The 1992 Olympics were held in Barcelona, Spain."
                "\n\nQ: Is the sky green?\nA:")
    assert item.requests == [(expected, " No."), (expected, " It is blue."), (expected, " Yes.")]


def test_winogrande_partial_evaluation():
    doc = {"sentence": "The trophy did not fit in the case because _ was too big.",
           "option1": "the trophy", "option2": "the case", "answer": "1"}
    (item,) = items_of("winogrande", [doc])
    assert item.requests == [("The trophy did not fit in the case because the trophy", " was too big."),
                             ("The trophy did not fit in the case because the case", " was too big.")]
    assert item.gold == 0


def test_arc_prompt_with_numeric_labels():
    doc = {"id": "x", "question": "Which is a gas?", "answerKey": "3",
           "choices": {"text": ["ice", "water", "steam"], "label": ["1", "2", "3"]}}
    (item,) = items_of("arc_easy", [doc])
    assert item.requests[0] == ("Question: Which is a gas?\nAnswer:", " ice")
    assert item.gold == 2


def test_medmcqa_prompt():
    doc = {"question": "Q?", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 3}
    (item,) = items_of("medmcqa", [doc])
    ctx = "Question: Q?\nChoices:\nA. a\nB. b\nC. c\nD. d\nAnswer:"
    assert item.requests == [(ctx, " A"), (ctx, " B"), (ctx, " C"), (ctx, " D")]
    assert item.gold == 3


def test_mmlu_prompt_description_and_first_n_shots():
    dev = [{"question": f"dev {i}", "subject": "anatomy", "choices": ["w", "x", "y", "z"], "answer": i % 4}
           for i in range(5)]
    doc = {"question": " What is it? ", "subject": "anatomy", "choices": ["p", "q", "r", "s"], "answer": 2}
    (item,) = items_of("mmlu_anatomy", [doc], k=2, pool=dev)
    ctx = ("The following are multiple choice questions (with answers) about anatomy.\n\n"
           "dev 0\nA. w\nB. x\nC. y\nD. z\nAnswer: A\n\n"
           "dev 1\nA. w\nB. x\nC. y\nD. z\nAnswer: B\n\n"
           "What is it?\nA. p\nB. q\nC. r\nD. s\nAnswer:")
    assert item.requests == [(ctx, " A"), (ctx, " B"), (ctx, " C"), (ctx, " D")]
    assert item.gold == 2


def test_hellaswag_preprocessing():
    doc = {"ind": 1, "activity_label": "Home [title] Repair", "ctx_a": "A man is on a roof.", "ctx_b": "he",
           "endings": ["climbs [step] down.", "is  [title] happy."], "label": "1"}
    (processed,) = task_defs.hellaswag_process([doc])
    (item,) = items_of("hellaswag", [processed])
    assert item.requests == [("Home. Repair: A man is on a roof. He", " climbs down."),
                             ("Home. Repair: A man is on a roof. He", " is . happy.")]
    assert item.gold == 1


def test_boolq_copa_sciq_prompts():
    (b,) = items_of("boolq", [{"question": "is it", "passage": "P.", "idx": 0, "label": 1}])
    assert b.requests == [("P.\nQuestion: is it?\nAnswer:", " no"), ("P.\nQuestion: is it?\nAnswer:", " yes")]
    (c,) = items_of("copa", [{"premise": "The man turned on the faucet.", "choice1": "The toilet filled.",
                              "choice2": "Water flowed.", "question": "effect", "idx": 0, "label": 1}])
    # lm-eval's COPA choices start with a space and get the target delimiter too: two spaces
    assert c.requests == [("The man turned on the faucet therefore", "  the toilet filled."),
                          ("The man turned on the faucet therefore", "  water flowed.")]
    assert c.gold == 1
    (s,) = items_of("sciq", [{"question": "Q?", "distractor3": "c", "distractor1": "a", "distractor2": "b",
                              "correct_answer": "d", "support": "  Some support."}])
    assert s.requests == [("Some support.\nQuestion: Q?\nAnswer:", f" {x}") for x in "abcd"]
    assert s.gold == 3


def test_fewshot_shot_format_and_delimiters():
    docs = [{"goal": f"g{i}", "sol1": f"a{i}", "sol2": f"b{i}", "label": i % 2} for i in range(6)]
    task = task_defs.TASKS["piqa"]
    (item,) = task_defs.build_items(task, docs[:1], 2, docs, seed=1234)
    ctx = item.requests[0][0]
    shots = ctx.split("\n\n")
    assert len(shots) == 3 and shots[-1] == "Question: g0\nAnswer:"
    for shot in shots[:2]:
        i = int(shot.split("\n")[0][len("Question: g"):])
        assert shot == f"Question: g{i}\nAnswer: " + (f"a{i}" if i % 2 == 0 else f"b{i}")


def test_wikitext_pages_detokenizer_and_words():
    raw = " \n = Alpha = \n \n Alpha is a band @-@ name , it 's 1 @,@ 000 . \n \n = = History = = \n \n" \
          " Text ( here ) . \n \n = Beta = \n \n Beta \n"
    pages = task_defs.wikitext_pages(raw)
    assert [p["page"].split("\n")[0] for p in pages] == [" = Alpha = ", " = Beta = "]
    assert " = = History = = " in pages[0]["page"]  # sub-headings stay in their page
    assert task_defs.wikitext_detokenize(" Alpha is a band @-@ name , it 's 1 @,@ 000 . \n") == \
        " Alpha is a band-name, it's 1,000.\n"
    assert task_defs.wikitext_detokenize("x ( here ) y = = H = = z") == "x (here) y == H == z"
    assert task_defs.wikitext_words(" a  b\nc ") == 5  # re.split on whitespace runs, empty ends counted


# ----------------------------------------------------------------------------- few-shot sampling

def test_fewshot_sampling_matches_lmeval_sampler():
    # expected ids were produced by lm-eval 0.4.13's ContextSampler (seed 1234, sequential docs)
    pool = [{"id": i} for i in range(20)]
    task = task_defs.Task("t", "t", "x", "multiple_choice", None, None, fewshot_excludes_doc=True)
    rng = random.Random(1234)
    assert [[d["id"] for d in task_defs.sample_fewshot(task, rng, pool, {"id": i}, 2)] for i in range(4)] == \
        [[14, 3], [2, 18], [3, 11], [7, 0]]
    task = task_defs.Task("t", "t", "x", "multiple_choice", None, None, fewshot_excludes_doc=False)
    rng = random.Random(1234)
    assert [[d["id"] for d in task_defs.sample_fewshot(task, rng, pool, {"id": i}, 3)] for i in range(3)] == \
        [[14, 3, 0], [2, 18, 1], [2, 3, 11]]


def test_fewshot_sampling_is_deterministic_and_excludes_the_doc():
    pool = [{"id": i} for i in range(8)]
    task = task_defs.Task("t", "t", "x", "multiple_choice", None, None, fewshot_excludes_doc=True)
    draws = []
    for _ in range(2):
        rng = random.Random(7)
        draws.append([task_defs.sample_fewshot(task, rng, pool, doc, 3) for doc in pool])
    assert draws[0] == draws[1]
    for doc, shots in zip(pool, draws[0]):
        assert doc not in shots and len(shots) == 3 and len({s["id"] for s in shots}) == 3
    # duplicates of the doc in the pool are all excluded
    dup = [{"id": 0}] * 5 + [{"id": 1}, {"id": 2}]
    for seed in range(20):
        shots = task_defs.sample_fewshot(task, random.Random(seed), dup, {"id": 0}, 2)
        assert {"id": 0} not in shots and len(shots) == 2


# ----------------------------------------------------------------------------- tokenisation

class CharEncoder:
    """A stand-in tokenizer: one token per character (code point); adds no special tokens."""
    prefix_token = 7

    def encode_special(self, text, add_special_tokens=True):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def test_encode_pair_moves_trailing_spaces_and_handles_empty_context():
    enc = CharEncoder()
    ctx, cont = S.encode_pair(enc, "Answer: ", "B")
    assert ctx == [ord(c) for c in "Answer:"] and cont == [ord(" "), ord("B")]
    ctx, cont = S.encode_pair(enc, "", "hi", prefix_token=7)
    assert ctx == [7] and cont == [ord("h"), ord("i")]
    ctx, cont = S.encode_pair(enc, "", "\x07hi", prefix_token=7)  # continuation starting with the prefix token
    assert ctx == [7] and cont == [ord("h"), ord("i")]


@needs_shared
def test_encode_pair_splits_the_joint_encoding(monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken"))
    from data.common import get_tokenizer
    enc = get_tokenizer()
    ctx, cont = S.encode_pair(enc, "Question: Hello\nAnswer:", " world")
    assert enc.decode(ctx) == "Question: Hello\nAnswer:" and enc.decode(cont) == " world"
    assert ctx + cont == enc.encode("Question: Hello\nAnswer: world")


# ----------------------------------------------------------------------------- scoring math

class Bigram(nn.Module):
    """logits at each position depend only on the current token: a fixed table (V, V)."""

    def __init__(self, table, block_size=64):
        super().__init__()
        self.table = nn.Parameter(table.clone(), requires_grad=False)
        self.config = GPTConfig(block_size=block_size, vocab_size=table.size(0), n_layer=1, n_head=1, n_embd=8)

    def forward(self, idx, targets=None, kv_caches=None):
        if kv_caches is not None:  # keep the cache protocol of model.GPT: per layer "k"/"v" (B, nh, T, hs)
            x = idx[:, None, :, None].float()
            for c in kv_caches:
                c["k"] = torch.cat([c["k"], x], 2) if c.get("k") is not None else x
                c["v"] = c["k"]
        return self.table[idx], None  # (B, T, V)


def bigram_logprob(table, tokens):
    lp = F.log_softmax(table.double(), dim=-1)
    return sum(lp[a, b].item() for a, b in zip(tokens[:-1], tokens[1:]))


def test_score_matches_hand_computed_logprobs_and_greedy():
    torch.manual_seed(0)
    V = 11
    table = torch.randn(V, V) * 2
    model = Bigram(table)
    greedy_next = table.argmax(-1)
    chain = [3]
    for _ in range(3):
        chain.append(int(greedy_next[chain[-1]]))
    items = [[([1, 2, 3], chain[1:])],                       # the greedy continuation of token 3
             [([1, 2, 3], [4, 5]), ([1, 2, 3], [6]), ([1], [2, 3, 4])]]
    out = S.score_items(model, items, batch_size=4, progress=False)
    ll, greedy = out[0][0]
    assert greedy and abs(ll - bigram_logprob(table, [3] + chain[1:])) < 1e-5
    for (ctx, cont), (ll, greedy) in zip(items[1], out[1]):
        assert abs(ll - bigram_logprob(table, ctx[-1:] + cont)) < 1e-5
        expected_greedy = all(int(greedy_next[a]) == b for a, b in zip((ctx + cont)[len(ctx) - 1:-1], cont))
        assert greedy == expected_greedy


def test_left_truncation_keeps_the_last_block_size_plus_one_tokens():
    torch.manual_seed(1)
    model = GPT(GPTConfig(block_size=8, vocab_size=50, n_layer=1, n_head=2, n_embd=16))
    model.eval()
    ctx, cont = list(range(1, 13)), [20, 21, 22]  # 15 tokens > block_size + 1
    (((ll, _),),) = S.score_items(model, [[(ctx, cont)]], progress=False)
    kept = (ctx + cont)[-9:]
    with torch.no_grad():
        logits, _ = model(torch.tensor([kept[:-1]]))
    lp = F.log_softmax(logits[0].double(), -1)
    expected = sum(lp[len(kept) - 1 - len(cont) + j, t].item() for j, t in enumerate(cont))
    assert abs(ll - expected) < 1e-5


def test_batched_scoring_equals_one_at_a_time():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=97, n_layer=2, n_head=2, n_embd=32))
    model.eval()
    rng = random.Random(0)
    items = []
    for _ in range(12):
        ctx = [rng.randrange(97) for _ in range(rng.randrange(1, 30))]
        choices = [[rng.randrange(97) for _ in range(rng.randrange(1, 6))] for _ in range(rng.randrange(1, 5))]
        items.append([(ctx, c) for c in choices])
    items.append([([5] * 40, [1, 2]), ([5] * 40, [3])])           # truncated rows
    items.append([([1, 2], [3, 4]), ([1, 2, 3], [9])])            # different contexts (winogrande-like)
    items.append([([1, 2, 3], [4]), ([1, 2, 3], [5]), ([1, 2, 3], [6])])  # one-token choices: one row
    items.append([([1, 2], list(range(10, 22))), ([1, 2], list(range(30, 41)))])  # short prefix: rows apart
    # a "task" whose items share a preamble (TruthfulQA, MMLU): it runs once per batch
    preamble = [rng.randrange(97) for _ in range(12)]
    shared = [[(preamble + q, c) for c in ([7, 8], [9], [7, 1, 2])]
              for q in ([3, 4], [3, 4, 5], [6], [3, 4, 5, 6, 7])]
    groups = ["a"] * len(items) + ["b"] * len(shared)
    stats = {}
    batched = S.score_items(model, items + shared, batch_size=5, progress=False, groups=groups, stats=stats)
    for item, got in zip(items + shared, batched):
        for req, (ll, greedy) in zip(item, got):
            ((ll1, greedy1),) = S.score_items(model, [[req]], batch_size=1, progress=False)[0:1][0]
            assert abs(ll - ll1) < 1e-4 and greedy == greedy1
    # shared prefixes ran once: fewer tokens than the rows hold, padding included
    naive = sum(len((ctx + cont)[-33:]) - 1 for item in items + shared for ctx, cont in item)
    assert stats["tokens"] < 0.8 * naive
    one = {}
    S.PASS_COST_TOKENS, cost = 0, S.PASS_COST_TOKENS  # passes free: no padding traded for fewer passes
    try:
        S.score_items(model, shared, batch_size=5, progress=False, stats=one)
    finally:
        S.PASS_COST_TOKENS = cost
    rest = sum(len(ctx) + len(cont) - 1 - len(preamble) for item in shared for ctx, cont in item)
    assert one["tokens"] <= len(preamble) + rest  # the preamble ran once


@pytest.mark.parametrize("shape", [{}, {"norm": "rmsnorm", "pos_emb": "rope", "mlp": "swiglu", "n_kv_head": 1,
                                     "qk_norm": True, "bias": False}])
def test_tails_of_different_items_in_one_pass_equal_the_per_prefix_passes(shape, monkeypatch):
    """Our GPT takes padded pasts (body's past_lengths), so the tails of items with different
    prefix lengths share passes; the scores equal the path that runs tails per prefix length."""
    torch.manual_seed(4)
    model = GPT(GPTConfig(block_size=40, vocab_size=61, n_layer=2, n_head=2, n_embd=32, **shape)).eval()
    rng = random.Random(4)
    items = [[(ctx, [rng.randrange(61) for _ in range(rng.randrange(2, 9))]) for _ in range(4)]
             for ctx in ([rng.randrange(61) for _ in range(n)] for n in (3, 5, 8, 13, 21, 34, 1, 2))]
    items.append([([1, 2, 3], [4] * 12), ([1, 2, 3], [5] * 38)])  # a padded row runs past block_size
    items.append([([7, 8], [9, 1]), ([10, 11, 12], [9])])  # rows with no shared past beside rows with one
    padded_stats, plain_stats = {}, {}
    assert S._takes_padded_pasts(model)
    padded = S.score_items(model, items, batch_size=16, progress=False, stats=padded_stats)
    monkeypatch.setattr(S, "_takes_padded_pasts", lambda m: False)
    plain = S.score_items(model, items, batch_size=16, progress=False, stats=plain_stats)
    for a, b in zip(padded, plain, strict=True):
        for (ll_a, greedy_a), (ll_b, greedy_b) in zip(a, b, strict=True):
            assert abs(ll_a - ll_b) < 1e-4 and greedy_a == greedy_b
    assert padded_stats["passes"] < plain_stats["passes"]


def test_scores_equal_a_float64_reference():
    torch.manual_seed(3)
    model = GPT(GPTConfig(block_size=24, vocab_size=53, n_layer=2, n_head=2, n_embd=16))
    model.eval()
    rng = random.Random(3)
    items = [[([rng.randrange(53) for _ in range(n)], [rng.randrange(53) for _ in range(m)]) for m in (1, 3, 6)]
             for n in (2, 9, 20, 30)]
    got = S.score_items(model, items, batch_size=3, progress=False)
    model64 = GPT(model.config).double().eval()
    model64.load_state_dict(model.state_dict())
    for item, scores in zip(items, got):
        for (ctx, cont), (ll, greedy) in zip(item, scores):
            full = (ctx + cont)[-25:]
            with torch.no_grad():
                logits, _ = model64(torch.tensor([full[:-1]]))
            lp = F.log_softmax(logits[0], -1)[-len(cont):]  # (len(cont), V), float64
            assert abs(ll - sum(lp[i, t].item() for i, t in enumerate(cont))) < 1e-4
            assert greedy == all(int(lp[i].argmax()) == t for i, t in enumerate(cont))


def test_continuation_longer_than_block_size_is_scored_in_windows():
    # a PIQA-like item on a block_size-16 model: one solution of 40 tokens (lm-eval asserts on it)
    torch.manual_seed(2)
    model = GPT(GPTConfig(block_size=16, vocab_size=71, n_layer=2, n_head=2, n_embd=16))
    model.eval()
    rng = random.Random(2)
    ctx = [rng.randrange(71) for _ in range(10)]
    long_sol, short_sol = [rng.randrange(71) for _ in range(40)], [rng.randrange(71) for _ in range(5)]
    ((ll_long, _), (ll_short, _)), = S.score_items(model, [[(ctx, long_sol), (ctx, short_sol)]], progress=False)
    # reference: windows of 16 tokens counted from the end ([24, 40), [8, 24)), the first one
    # ([0, 8)) after the context; each window's input is the 16 tokens before its last target
    tokens = ctx + long_sol
    expected = 0.0
    for a, b in ((0, 8), (8, 24), (24, 40)):
        inp = tokens[:len(ctx) + b][-17:-1]
        with torch.no_grad():
            logits, _ = model(torch.tensor([inp]))
        lp = F.log_softmax(logits[0].double(), -1)
        expected += sum(lp[len(inp) - (b - i), long_sol[i]].item() for i in range(a, b))
    assert abs(ll_long - expected) < 1e-4
    ((ll_ref, _),), = S.score_items(model, [[(ctx, short_sol)]], progress=False)
    assert abs(ll_short - ll_ref) < 1e-5  # the other choice is scored as usual
    # exactly block_size tokens still fit in one request
    assert S.continuation_windows(ctx, long_sol[:16], 16) == [(ctx, long_sol[:16])]
    assert [len(x) for _, x in S.continuation_windows(ctx, long_sol, 16)] == [8, 16, 16]


@needs_shared
def test_long_continuations_are_flagged_and_counted(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken"))
    (tmp_path / "piqa").mkdir()
    docs = [{"goal": "Open a jar", "sol1": "twist the lid " * 12, "sol2": "eat it", "label": 0},
            {"goal": "Boil water", "sol1": "heat it", "sol2": "cool it", "label": 0}]
    (tmp_path / "piqa" / "validation.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=16))
    results, items = B.evaluate(model, "piqa", str(tmp_path), progress=False, download=False)
    assert results["piqa"]["n_long_continuation"] == 1 and results["piqa"]["n"] == 2
    assert items[0]["long_continuations"] == 1 and "long_continuations" not in items[1]
    assert all(math.isfinite(ll) for ll in items[0]["lls"])
    assert "scored in windows: piqa 1" in B.format_table(results)


def test_head_on_gathered_states_equals_model_logits():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=61, n_layer=2, n_head=2, n_embd=16))
    model.eval()
    idx = torch.randint(0, 61, (2, 10))
    with torch.no_grad():
        full, _ = model(idx)
        states, head = S._forward(model, idx)
        assert torch.allclose(head(states), full, atol=1e-5)
        caches = [dict() for _ in range(2)]
        S._forward(model, idx[:, :6], caches)
        states, head = S._forward(model, idx[:, 6:], caches)  # the tail on top of the cache
        assert torch.allclose(head(states), full[:, 6:], atol=1e-5)


def test_rolling_windows_cover_each_token_once():
    for n in (1, 7, 8, 9, 29):
        tokens = list(range(100, 100 + n))
        windows = S.rolling_windows(tokens, max_len=8, prefix_token=0)
        assert [t for _, cont in windows for t in cont] == tokens
        assert windows[0][0] == [0]
        for ctx, cont in windows:
            assert len(ctx) + len(cont) <= 9 and len(cont) <= 8
        for ctx, cont in windows[1:]:
            assert len(ctx) + len(cont) == 9  # later windows use the full context
            assert ctx == tokens[tokens.index(cont[0]) - len(ctx): tokens.index(cont[0])]


# ----------------------------------------------------------------------------- metrics

def test_acc_and_acc_norm():
    item = task_defs.Item("piqa", 0, {}, [("q", " short"), ("q", " a much longer answer")], gold=1,
                  choices=["short", "a much longer answer"])
    rec = B.item_record(task_defs.TASKS["piqa"], item, [(-10.0, False), (-12.0, False)])
    assert rec["pred"] == 0 and rec["acc"] == 0.0          # -10 > -12
    assert rec["pred_norm"] == 1 and rec["acc_norm"] == 1.0  # -10/5 < -12/20
    assert S.pick_choice([-1.0, -1.0, -2.0]) == 0            # ties go to the first, like argmax


def test_truthfulqa_mc2_is_the_normalised_mass_on_true_answers():
    doc = {"mc2_targets": {"choices": ["a", "b", "c"], "labels": [1, 0, 1]}}
    got = task_defs.truthfulqa_mc2_results(doc, [math.log(0.5), math.log(0.25), math.log(0.25)])["acc"]
    assert abs(got - 0.75) < 1e-12
    got = task_defs.truthfulqa_mc2_results(doc, [-2000.0, -2001.0, -2000.0])["acc"]  # no underflow
    assert abs(got - 2 / (2 + math.exp(-1))) < 1e-12


def test_mean_stderr_is_sample_std_over_sqrt_n():
    values = [1.0, 0.0, 1.0, 1.0]
    mu = 0.75
    assert abs(S.mean_stderr(values) - math.sqrt(sum((v - mu) ** 2 for v in values) / 3) / 2) < 1e-15


def test_mmlu_aggregate_is_size_weighted_with_pooled_stderr_and_paper10_mean():
    rng = random.Random(0)
    results, flat, stderrs, sizes = {}, [], [], []
    for name in task_defs.MMLU_TASKS:
        n = rng.randrange(5, 30)
        accs = [float(rng.random() < 0.3) for _ in range(n)]
        results[name] = {"n": n, "acc": sum(accs) / n, "acc_stderr": S.mean_stderr(accs), "num_fewshot": 1}
        flat += accs
        stderrs.append(results[name]["acc_stderr"])
        sizes.append(n)
    groups = B.group_metrics(results)
    assert abs(groups["mmlu"]["acc"] - sum(flat) / len(flat)) < 1e-12  # = accuracy over all questions
    N, k = sum(sizes), len(sizes)
    pooled = math.sqrt(sum((n - 1) * se ** 2 * n for se, n in zip(stderrs, sizes)) / (N - k) / N)
    assert abs(groups["mmlu"]["acc_stderr"] - pooled) < 1e-12
    assert groups["mmlu"]["n"] == N and "mmlu_stem" in groups and "paper10" not in groups
    stem = [t for t in task_defs.MMLU_TASKS if task_defs.MMLU_SUBJECTS[t[5:]] == "stem"]
    assert abs(groups["mmlu_stem"]["acc"] - sum(results[t]["acc"] * results[t]["n"] for t in stem)
               / sum(results[t]["n"] for t in stem)) < 1e-12
    # paper10: the unweighted mean of the ten accuracies, mmlu as its aggregate
    for i, name in enumerate(task_defs.GROUPS["paper10"][:-1]):
        results[name] = {"n": 10, "acc": i / 10}
    groups = B.group_metrics(results)
    expected = (sum(i / 10 for i in range(9)) + groups["mmlu"]["acc"]) / 10
    assert abs(groups["paper10"]["acc"] - expected) < 1e-12


def test_lambada_greedy_accuracy_and_perplexity():
    torch.manual_seed(0)
    table = torch.randn(10, 10)
    model = Bigram(table)
    nxt = int(table[4].argmax())
    wrong = (nxt + 1) % 10
    items = [task_defs.Item("lambada_openai", 0, {}, [("a", " b")]), task_defs.Item("lambada_openai", 1, {}, [("a", " c")])]
    scores = S.score_items(model, [[([4], [nxt])], [([4], [wrong])]], progress=False)
    recs = [B.item_record(task_defs.TASKS["lambada_openai"], it, sc) for it, sc in zip(items, scores)]
    assert [r["acc"] for r in recs] == [1.0, 0.0]
    metrics = B.task_metrics(task_defs.TASKS["lambada_openai"], recs)
    lp = F.log_softmax(table[4].double(), -1)
    assert abs(metrics["perplexity"] - math.exp(-(lp[nxt] + lp[wrong]).item() / 2)) < 1e-6


# ----------------------------------------------------------------------------- end to end

def tiny_gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=128, n_layer=1, n_head=2, n_embd=16))


@needs_shared
def test_real_files_first_prompts(monkeypatch):
    piqa = task_defs.load_split(task_defs.TASKS["piqa"], "validation", str(BENCH), download=False)
    (item,) = items_of("piqa", piqa[:1])
    assert item.requests[0][0] == "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    mmlu = task_defs.TASKS["mmlu_abstract_algebra"]
    test = task_defs.load_split(mmlu, "test", str(BENCH), download=False)
    dev = task_defs.load_split(mmlu, "dev", str(BENCH), download=False)
    (item,) = task_defs.build_items(mmlu, test[:1], 1, dev)
    assert item.requests[0] == (
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
        "Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer: B\n\n"
        "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n"
        "A. 0\nB. 4\nC. 2\nD. 6\nAnswer:", " A")
    pages = B.load_task_docs(task_defs.TASKS["wikitext"], None, str(SHARED / "corpus" / "wikitext103" / "test.raw"))
    assert len(pages) == 62  # the documents of EleutherAI/wikitext_document_level's test split


@needs_shared
def test_evaluate_paper10_end_to_end_and_restores_mode(monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken"))
    model = tiny_gpt()
    model.train()
    results, items = B.evaluate(model, "paper10,hellaswag", str(BENCH), limit=2, num_fewshot=B.paper_protocol_shots(1),
                                batch_size=8, device="cpu", progress=False, download=False)
    assert model.training
    for name in task_defs.GROUPS["paper10"] + ["hellaswag"]:
        assert 0.0 <= results[name]["acc"] <= 1.0
    assert results["mmlu"]["n"] == 2 * 57 and results["arc_easy"]["num_fewshot"] == 1
    assert results["medmcqa"]["fewshot_matches_lm_eval"] is False  # its train split is not offline
    assert results["arc_easy"]["fewshot_matches_lm_eval"] is True
    assert results["piqa"]["num_fewshot"] == 0
    assert 0.0 <= results["paper10"]["acc"] <= 1.0
    assert len([r for r in items if r["task"] == "piqa"]) == 2
    assert "acc_norm_stderr" in results["arc_easy"] and "perplexity" in results["lambada_openai"]


@needs_shared
def test_cli_writes_results_and_items(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken"))
    model = tiny_gpt()
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "model_args": vars(model.config)}, ckpt)
    out = tmp_path / "eval"
    B.main(["--ckpt", str(ckpt), "--tasks", "copa,wikitext", "--data-dir", str(BENCH), "--out", str(out),
            "--limit", "3", "--device", "cpu", "--no-download",
            "--wikitext", str(SHARED / "corpus" / "wikitext103" / "test.raw")])
    results = json.loads((out / "results.json").read_text())
    assert results["copa"]["n"] == 3 and "acc_stderr" in results["copa"]
    assert results["wikitext"]["word_perplexity"] > 1 and "config" in results
    lines = (out / "items.jsonl").read_text().splitlines()
    assert len(lines) == 6 and json.loads(lines[0])["task"] == "copa"


def test_missing_file_error_names_the_file_and_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("DISPERSE_BENCHMARKS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match=r"piqa/validation\.jsonl.*--data-dir"):
        task_defs.load_split(task_defs.TASKS["piqa"], "validation", str(tmp_path), download=False)
