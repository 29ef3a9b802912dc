"""
The benchmark tasks, written the way lm-evaluation-harness 0.4.x defines them.

Each task turns one document (a row of the Hugging Face dataset) into the text lm-eval
would score: a context, the candidate continuations, and the index of the right one.
Prompt text, target delimiter (one space), few-shot delimiter ("\\n\\n"), descriptions,
choice lists and gold indices follow lm-eval's task YAMLs, so per-item results can be
compared with lm-eval (bench/crosscheck_lmeval.py does that).

Data: a folder of `<dataset>/<split>.jsonl` files, one JSON row per line in the Hugging Face
field layout (`--data-dir`, env DISPERSE_BENCHMARKS). A missing file is fetched from the
Hugging Face hub into a cache folder of the same layout when `datasets` is installed and we
are online; offline it is a clear error.

Reading order: the Task record, then one short section per task family, then the registry
and groups, then few-shot sampling and request building, then data loading.
"""

import json
import math
import os
import random
import re
from dataclasses import dataclass, field
from typing import Callable

from errors import InputError, MissingFileError


@dataclass
class Task:
    name: str
    dataset: str                 # folder under the data dir
    split: str                   # file stem of the split that is scored
    kind: str                    # "multiple_choice", "loglikelihood" or "loglikelihood_rolling"
    doc_to_text: Callable        # doc -> context text (winogrande: -> index of the gold option)
    doc_to_target: Callable      # doc -> gold index, or gold text (anli, copa, lambada, winogrande)
    doc_to_choice: Callable | None = None   # doc -> list of choice texts
    metrics: tuple = ("acc",)
    description: str = ""        # printed once before the shots (MMLU)
    process_docs: Callable | None = None    # list of docs -> list of docs (hellaswag)
    doc_filter: Callable | None = None      # keep only some rows of the file (one MMLU subject)
    # few-shot: the split lm-eval draws shots from, whether it removes the scored doc from the
    # draw (lm-eval does when its fewshot split equals its test split, both possibly unset),
    # and how it draws ("default": random.Random(seed).sample, "first_n": the first k in order)
    fewshot_split: str | None = None
    fewshot_excludes_doc: bool = False
    fewshot_sampler: str = "default"
    fixed_num_fewshot: int | None = None    # truthfulqa is always 0-shot in lm-eval
    multiple_input: bool = False            # winogrande: the options go into the context
    process_results: Callable | None = None  # (doc, lls) -> {metric: value}, replaces acc/acc_norm
    hf: tuple = ()               # (hub path, config name) for the optional download
    split_note: str = ""         # where our split differs from the one lm-eval scores


# ----------------------------------------------------------------------------- task families

# ANLI: natural language inference as a 3-way choice of "True" / "Neither" / "False"
def anli_text(doc):
    return f"{doc['premise']}\nQuestion: {doc['hypothesis']} True, False, or Neither?\nAnswer:"


ANLI_CHOICES = ["True", "Neither", "False"]  # label 0 entailment, 1 neutral, 2 contradiction


# LAMBADA: predict the last word of a passage; context and target split at the last space
def lambada_text(doc):
    return " ".join(doc["text"].split(" ")[:-1])


def lambada_target(doc):
    return " " + doc["text"].split(" ")[-1]


# ARC (easy / challenge) and OpenBookQA: a question with 3-5 free-text choices
def arc_text(doc):
    return f"Question: {doc['question']}\nAnswer:"


def arc_target(doc):
    return doc["choices"]["label"].index(doc["answerKey"])


def openbookqa_target(doc):
    return doc["choices"]["label"].index(doc["answerKey"].lstrip())


def choices_text(doc):
    return list(doc["choices"]["text"])


# PIQA: a goal and two solutions
def piqa_text(doc):
    return f"Question: {doc['goal']}\nAnswer:"


# TruthfulQA: lm-eval puts six fixed question/answer pairs before every question
TRUTHFULQA_PREAMBLE = (
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain."
)


def truthfulqa_text(doc):
    return TRUTHFULQA_PREAMBLE + "\n\nQ: " + doc["question"] + "\nA:"


def truthfulqa_mc2_results(doc, lls):
    """The probability mass on the true answers, after normalising over all answers.
    Subtracting the max before exp changes nothing in exact arithmetic and avoids underflow."""
    top = max(lls)
    probs = [math.exp(ll - top) for ll in lls]
    labels = doc["mc2_targets"]["labels"]
    return {"acc": sum(p for p, lab in zip(probs, labels) if lab == 1) / sum(probs)}


# WinoGrande: fill the blank with each option; the shared rest of the sentence is scored
def winogrande_gold(doc):
    return {"1": 0, "2": 1}[doc["answer"]]


def winogrande_target(doc):
    blank = doc["sentence"].index("_")
    return doc["sentence"][blank + 1:].strip()


def winogrande_choices(doc):
    blank = doc["sentence"].index("_")
    return [doc["sentence"][:blank] + doc["option1"], doc["sentence"][:blank] + doc["option2"]]


# MedMCQA: a question, four lettered options, the letter is scored
def medmcqa_text(doc):
    options = [doc["opa"], doc["opb"], doc["opc"], doc["opd"]]
    lines = "".join(f"{letter}. {option}\n" for letter, option in zip("ABCD", options))
    return "Question: " + doc["question"] + "\nChoices:\n" + lines + "Answer:"


# MMLU: 57 subjects, each its own task with a description and shots from its dev split
def mmlu_text(doc):
    c = doc["choices"]
    return f"{doc['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:"


# subject -> the lm-eval subgroup it belongs to
MMLU_SUBJECTS = {
    "abstract_algebra": "stem", "anatomy": "stem", "astronomy": "stem",
    "business_ethics": "other", "clinical_knowledge": "other", "college_biology": "stem",
    "college_chemistry": "stem", "college_computer_science": "stem", "college_mathematics": "stem",
    "college_medicine": "other", "college_physics": "stem", "computer_security": "stem",
    "conceptual_physics": "stem", "econometrics": "social_sciences", "electrical_engineering": "stem",
    "elementary_mathematics": "stem", "formal_logic": "humanities", "global_facts": "other",
    "high_school_biology": "stem", "high_school_chemistry": "stem",
    "high_school_computer_science": "stem", "high_school_european_history": "humanities",
    "high_school_geography": "social_sciences",
    "high_school_government_and_politics": "social_sciences",
    "high_school_macroeconomics": "social_sciences", "high_school_mathematics": "stem",
    "high_school_microeconomics": "social_sciences", "high_school_physics": "stem",
    "high_school_psychology": "social_sciences", "high_school_statistics": "stem",
    "high_school_us_history": "humanities", "high_school_world_history": "humanities",
    "human_aging": "other", "human_sexuality": "social_sciences", "international_law": "humanities",
    "jurisprudence": "humanities", "logical_fallacies": "humanities", "machine_learning": "stem",
    "management": "other", "marketing": "other", "medical_genetics": "other",
    "miscellaneous": "other", "moral_disputes": "humanities", "moral_scenarios": "humanities",
    "nutrition": "other", "philosophy": "humanities", "prehistory": "humanities",
    "professional_accounting": "other", "professional_law": "humanities",
    "professional_medicine": "other", "professional_psychology": "social_sciences",
    "public_relations": "social_sciences", "security_studies": "social_sciences",
    "sociology": "social_sciences", "us_foreign_policy": "social_sciences", "virology": "other",
    "world_religions": "humanities",
}


def mmlu_description(subject):
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


# HellaSwag: lm-eval cleans the WikiHow markup and joins the two context halves
def hellaswag_clean(text):
    text = text.strip()
    text = text.replace(" [title]", ". ")  # WikiHow section titles become sentence ends
    text = re.sub("\\[.*?\\]", "", text)   # other bracketed markup is dropped
    text = text.replace("  ", " ")
    return text


def hellaswag_process(docs):
    out = []
    for doc in docs:
        context = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        out.append({**doc,
                    "query": hellaswag_clean(doc["activity_label"] + ": " + context),
                    "choices": [hellaswag_clean(e) for e in doc["endings"]],
                    "gold": int(doc["label"])})
    return out


# BoolQ, COPA, SciQ (SuperGLUE-style and science questions)
def boolq_text(doc):
    return f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:"


def copa_text(doc):
    connector = {"cause": "because", "effect": "therefore"}[doc["question"]]
    return doc["premise"].strip()[:-1] + f" {connector}"  # drop the premise's full stop


def copa_choices(doc):
    # lm-eval's choices start with a space and the target delimiter adds another: "  the ..."
    return [" " + doc["choice1"][0].lower() + doc["choice1"][1:],
            " " + doc["choice2"][0].lower() + doc["choice2"][1:]]


def copa_target(doc):
    return copa_choices(doc)[doc["label"]]


def sciq_text(doc):
    return f"{doc['support'].lstrip()}\nQuestion: {doc['question']}\nAnswer:"


def sciq_choices(doc):
    return [doc["distractor1"], doc["distractor2"], doc["distractor3"], doc["correct_answer"]]


# WikiText: whole Wikipedia pages scored with rolling windows (lm-eval's `wikitext` task)
def wikitext_detokenize(page):
    """lm-eval's wikitext detokenizer: undo the tokenised spacing of the raw WikiText files."""
    s = page
    s = s.replace("s '", "s'")
    s = re.sub(r"/' [0-9]/", r"/'[0-9]/", s)
    s = s.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
    for p in (":", ";", ".", "!", "?", ","):
        s = s.replace(f" {p} ", f"{p} ")
    s = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", s)
    s = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", s)
    s = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", s)
    s = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', s)
    s = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", s)
    s = s.replace("= = = =", "====").replace("= = =", "===").replace("= =", "==")
    s = s.replace(" " + chr(176) + " ", chr(176))
    s = s.replace(" \n", "\n").replace("\n ", "\n")
    s = s.replace(" N ", " 1 ")
    s = s.replace(" 's", "'s")
    return s


def wikitext_pages(raw_text):
    """Split a raw WikiText file into pages the way EleutherAI/wikitext_document_level does:
    a new page starts at every top-level heading line " = Title = " (after collapsing "= =")."""
    pages, lines = [], []
    for line in raw_text.split("\n"):
        heading = line.replace("= = =", "===").replace("= =", "==").strip()
        if heading.startswith("= ") and heading.endswith(" ="):
            page = "\n".join(lines)
            if page.strip():
                pages.append({"page": page})
            lines = []
        lines.append(line)
    pages.append({"page": "\n".join(lines)})  # the last page is kept as it is
    return pages


def wikitext_words(page):
    # lm-eval counts words in the page *before* detokenising
    return len(re.split(r"\s+", page))


# ----------------------------------------------------------------------------- registry

def _field(name):
    return lambda doc: doc[name]


TASKS = {}


def _add(task):
    TASKS[task.name] = task


_add(Task("anli_r2", "anli", "test_r2", "multiple_choice", anli_text,
          doc_to_target=lambda d: ANLI_CHOICES[d["label"]], doc_to_choice=lambda d: list(ANLI_CHOICES),
          fewshot_split="train_r2", hf=("facebook/anli", None)))
_add(Task("lambada_openai", "lambada_openai", "test", "loglikelihood", lambada_text, lambada_target,
          metrics=("perplexity", "acc"), fewshot_split="test", hf=("EleutherAI/lambada_openai", "default")))
_add(Task("openbookqa", "openbookqa", "test", "multiple_choice", _field("question_stem"), openbookqa_target,
          choices_text, metrics=("acc", "acc_norm"), fewshot_split="train", hf=("allenai/openbookqa", "main")))
_add(Task("piqa", "piqa", "validation", "multiple_choice", piqa_text, _field("label"),
          lambda d: [d["sol1"], d["sol2"]], metrics=("acc", "acc_norm"),
          fewshot_split="train", fewshot_excludes_doc=True, hf=("baber/piqa", None)))
_add(Task("truthfulqa_mc1", "truthfulqa_mc", "validation", "multiple_choice", truthfulqa_text, lambda d: 0,
          lambda d: list(d["mc1_targets"]["choices"]), fixed_num_fewshot=0,
          hf=("truthfulqa/truthful_qa", "multiple_choice")))
_add(Task("truthfulqa_mc2", "truthfulqa_mc", "validation", "multiple_choice", truthfulqa_text, lambda d: 0,
          lambda d: list(d["mc2_targets"]["choices"]), fixed_num_fewshot=0,
          process_results=truthfulqa_mc2_results, hf=("truthfulqa/truthful_qa", "multiple_choice")))
_add(Task("winogrande", "winogrande", "validation", "multiple_choice", winogrande_gold, winogrande_target,
          winogrande_choices, multiple_input=True, fewshot_split="train", fewshot_excludes_doc=True,
          hf=("allenai/winogrande", "winogrande_xl")))
for _name, _config in (("arc_easy", "ARC-Easy"), ("arc_challenge", "ARC-Challenge")):
    _add(Task(_name, _name, "test", "multiple_choice", arc_text, arc_target, choices_text,
              metrics=("acc", "acc_norm"), fewshot_split="train", hf=("allenai/ai2_arc", _config)))
_add(Task("medmcqa", "medmcqa", "validation", "multiple_choice", medmcqa_text, _field("cop"),
          lambda d: ["A", "B", "C", "D"], metrics=("acc", "acc_norm"), fewshot_split="train",
          hf=("openlifescienceai/medmcqa", None)))
for _subject in MMLU_SUBJECTS:
    _add(Task(f"mmlu_{_subject}", "mmlu", "test", "multiple_choice", mmlu_text, _field("answer"),
              lambda d: ["A", "B", "C", "D"], description=mmlu_description(_subject),
              doc_filter=(lambda s: lambda d: d["subject"] == s)(_subject),
              fewshot_split="dev", fewshot_sampler="first_n", hf=("cais/mmlu", "all")))
_add(Task("hellaswag", "hellaswag", "validation", "multiple_choice", _field("query"), _field("gold"),
          _field("choices"), metrics=("acc", "acc_norm"), process_docs=hellaswag_process,
          fewshot_split="train", fewshot_excludes_doc=True, hf=("Rowan/hellaswag", None)))
_add(Task("boolq", "boolq", "validation", "multiple_choice", boolq_text, _field("label"),
          lambda d: ["no", "yes"], fewshot_split="train", fewshot_excludes_doc=True,
          hf=("aps/super_glue", "boolq")))
_add(Task("copa", "copa", "validation", "multiple_choice", copa_text, copa_target, copa_choices,
          fewshot_split="train", fewshot_excludes_doc=True, hf=("aps/super_glue", "copa")))
_add(Task("sciq", "sciq", "validation", "multiple_choice", sciq_text, lambda d: 3, sciq_choices,
          metrics=("acc", "acc_norm"), fewshot_split="train", hf=("allenai/sciq", None),
          split_note="validation split (lm-eval scores test, which is not available offline)"))
_add(Task("wikitext", "wikitext", "test", "loglikelihood_rolling", lambda d: "",
          lambda d: wikitext_detokenize(d["page"]),
          metrics=("word_perplexity", "byte_perplexity", "bits_per_byte"),
          hf=("EleutherAI/wikitext_document_level", "wikitext-2-raw-v1")))

MMLU_TASKS = [f"mmlu_{s}" for s in MMLU_SUBJECTS]
# groups: name -> members (tasks or groups). mmlu is aggregated over its 57 subjects.
GROUPS = {
    "mmlu": MMLU_TASKS,
    **{f"mmlu_{cat}": [f"mmlu_{s}" for s, c in MMLU_SUBJECTS.items() if c == cat]
       for cat in ("stem", "other", "social_sciences", "humanities")},
    "paper10": ["anli_r2", "lambada_openai", "openbookqa", "piqa", "truthfulqa_mc2", "winogrande",
                "arc_easy", "arc_challenge", "medmcqa", "mmlu"],
}
PAPER_ZERO_SHOT = ["anli_r2", "lambada_openai", "openbookqa", "piqa", "truthfulqa_mc2", "winogrande"]
PAPER_FEW_SHOT = ["arc_easy", "arc_challenge", "medmcqa", "mmlu"]


def expand(names):
    """Task and group names (a comma string or a list) -> the leaf task names, in order, no repeats."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    out = []
    for name in names:
        if name in GROUPS:
            leaves = expand(GROUPS[name])
        elif name in TASKS:
            leaves = [name]
        else:
            known = ", ".join(sorted([t for t in TASKS if not t.startswith("mmlu_")] + list(GROUPS)))
            raise KeyError(f"unknown task {name!r}; known tasks and groups: {known} (and mmlu_<subject>)")
        out += [t for t in leaves if t not in out]
    return out


# ----------------------------------------------------------------------------- prompts

def answer_text(task, doc):
    """The gold answer as text, as it is written after a few-shot example."""
    if task.multiple_input:
        return task.doc_to_target(doc)
    target = task.doc_to_target(doc)
    if isinstance(target, int) and task.doc_to_choice is not None:
        return task.doc_to_choice(doc)[target]
    return target


def shot_text(task, doc):
    """One solved example: question, target delimiter, answer (the few-shot delimiter follows)."""
    question = task.doc_to_text(doc)
    if task.multiple_input:
        question = task.doc_to_choice(doc)[question]  # the sentence filled with the gold option
    return question + " " + answer_text(task, doc)


def sample_fewshot(task, rng, pool, doc, k):
    """The k few-shot docs for `doc`, drawn as lm-eval's samplers draw them. The draw for one doc
    advances `rng`, so docs must be visited in order (doc 0, 1, ...) to reproduce lm-eval."""
    if k == 0:
        return []
    if task.fewshot_sampler == "first_n":
        candidates = [d for d in pool if d != doc] if task.fewshot_excludes_doc else pool
        if k > len(candidates):
            raise ValueError(f"{task.name}: {k} shots requested but the few-shot split has {len(candidates)}")
        return candidates[:k]
    if not task.fewshot_excludes_doc:
        return rng.sample(pool, k)
    # draw one extra so the scored doc can be dropped and k remain
    shots = [d for d in rng.sample(pool, k + 1) if d != doc][:k]
    if len(shots) < k:  # the pool held several copies of the doc
        shots = rng.sample([d for d in pool if d != doc], k)
    return shots


@dataclass
class Item:
    """One scored document: its requests (context, continuation) and what is needed to score them."""
    task: str
    doc_id: int
    doc: dict
    requests: list          # [(context, continuation)] — one per choice, or one for loglikelihood
    gold: int | None = None
    choices: list = field(default_factory=list)  # choice texts, for acc_norm's character lengths


def build_items(task, docs, num_fewshot=0, fewshot_docs=None, seed=1234):
    """Items for a list of docs (already limited), with shots drawn from fewshot_docs."""
    k = task.fixed_num_fewshot if task.fixed_num_fewshot is not None else num_fewshot
    if k > 0 and not fewshot_docs:
        raise ValueError(f"{task.name}: {k}-shot needs few-shot docs")
    rng = random.Random(seed)
    items = []
    for doc_id, doc in enumerate(docs):
        shots = sample_fewshot(task, rng, fewshot_docs, doc, k) if k > 0 else []
        prefix = task.description + "".join(shot_text(task, s) + "\n\n" for s in shots)
        if task.kind == "loglikelihood":
            items.append(Item(task.name, doc_id, doc, [(prefix + task.doc_to_text(doc), task.doc_to_target(doc))]))
        elif task.kind == "loglikelihood_rolling":
            items.append(Item(task.name, doc_id, doc, [("", task.doc_to_target(doc))]))
        elif task.multiple_input:
            choices = task.doc_to_choice(doc)
            continuation = " " + task.doc_to_target(doc)
            items.append(Item(task.name, doc_id, doc, [(prefix + c, continuation) for c in choices],
                              gold=task.doc_to_text(doc), choices=choices))
        else:
            choices = task.doc_to_choice(doc)
            context = prefix + task.doc_to_text(doc)
            target = task.doc_to_target(doc)
            gold = target if isinstance(target, int) else choices.index(target)
            items.append(Item(task.name, doc_id, doc, [(context, " " + c) for c in choices],
                              gold=gold, choices=choices))
    return items


# ----------------------------------------------------------------------------- data

def read_jsonl(path):
    """The rows of a JSONL file; a line that is not a JSON object is an error naming the file and line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}, line {n}: not valid JSON ({e.msg}, column {e.colno}); the file is cut "
                                 "or damaged: fetch or copy it again") from None
            if not isinstance(row, dict):
                raise InputError(f"{path}, line {n}: a {type(row).__name__}, expected a JSON object (one row per line)")
            rows.append(row)
    return rows


def missing_field(task, data_dir, error):
    """The InputError for a KeyError raised while reading a task's rows: which file, line and field."""
    name = error.args[0] if error.args else None
    for split in dict.fromkeys((task.split, task.fewshot_split)):
        path = split and split_path(data_dir, task.dataset, split)
        if not path:
            continue
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip() and name not in json.loads(line):
                    return InputError(f"{task.name}: {path}, line {n}: the row has no field {name!r}; every row of "
                                      f"this file needs the fields of the {task.hf[0] if task.hf else task.dataset} dataset")
    return InputError(f"{task.name}: a row of its {task.dataset} files lacks the field {name!r} (or a field inside it)")


def default_cache_dir():
    return os.environ.get("DISPERSE_BENCHMARKS_CACHE",
                          os.path.join(os.path.expanduser("~"), ".cache", "disperse-gpt", "benchmarks"))


def split_path(data_dir, dataset, split):
    """The file holding a split: in data_dir, else in the download cache, else None."""
    for root in (data_dir, default_cache_dir()):
        if root:
            path = os.path.join(root, dataset, f"{split}.jsonl")
            if os.path.exists(path):
                return path
    return None


def download_split(task, split, cache_dir=None):
    """Fetch one split from the Hugging Face hub into cache_dir/<dataset>/<split>.jsonl (needs the
    optional `datasets` package and a network). Returns the path."""
    import datasets  # optional dependency
    path_name, config = task.hf
    cache_dir = cache_dir or default_cache_dir()
    rows = datasets.load_dataset(path_name, config, split=split)
    out = os.path.join(cache_dir, task.dataset, f"{split}.jsonl")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".tmp", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(out + ".tmp", out)
    return out


_HUB_REACHABLE = None


def hub_reachable():
    """Whether a download can be tried: `datasets` installed, HF offline mode off, and
    huggingface.co answering within 3 s (checked once per process)."""
    global _HUB_REACHABLE
    if _HUB_REACHABLE is None:
        import importlib.util
        import socket
        offline = any(os.environ.get(v, "") not in ("", "0") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
        _HUB_REACHABLE = False
        if not offline and importlib.util.find_spec("datasets") is not None:
            try:
                socket.create_connection(("huggingface.co", 443), timeout=3).close()
                _HUB_REACHABLE = True
            except OSError:
                pass
    return _HUB_REACHABLE


def load_split(task, split, data_dir, download=True, cache=None):
    """The rows of one split of a task's dataset (after its doc filter and processing).
    cache: an optional dict path -> rows, so a file shared by many tasks (MMLU) is read once."""
    path = split_path(data_dir, task.dataset, split)
    if path is None and download and task.hf and hub_reachable():
        try:
            path = download_split(task, split)
        except Exception as e:  # no `datasets`, no network, unknown split...
            print(f"note: could not download {task.dataset}/{split} from the hub ({type(e).__name__}: {e})")
    if path is None:
        raise MissingFileError(
            f"{task.name}: missing {os.path.join(data_dir or '<data-dir>', task.dataset, split + '.jsonl')}. "
            "Point --data-dir (or env DISPERSE_BENCHMARKS) at a folder of <dataset>/<split>.jsonl files "
            "(e.g. shared/benchmarks), or go online with `datasets` installed to download it.")
    if cache is None:
        rows = read_jsonl(path)
    else:
        rows = cache[path] = cache[path] if path in cache else read_jsonl(path)
    try:
        if task.doc_filter is not None:
            rows = [r for r in rows if task.doc_filter(r)]
        if task.process_docs is not None:
            rows = task.process_docs(rows)
    except KeyError as e:
        raise missing_field(task, data_dir, e) from None
    return rows


def has_split(task, split, data_dir):
    return split_path(data_dir, task.dataset, split) is not None


def check_task_data(names, data_dir, where="eval_tasks", setting="eval_data_dir", download=False):
    """The leaf tasks of `names`, after checking they are known and that the split each one scores is
    at hand (in data_dir or the download cache; wikitext's raw file may stand in, as eval/benchmarks.py
    reads it). Otherwise an InputError naming `where`, the files and the `setting` to fix. download: a
    missing split is only announced when the hub can give it (eval/benchmarks.py fetches it then)."""
    try:
        leaves = expand(names)
    except KeyError as e:
        raise InputError(f"{where}: {e.args[0]}") from None
    raw_wikitext = os.path.isfile(os.environ.get("DISPERSE_WIKITEXT_TEST", ""))
    missing = [n for n in leaves
               if not (n == "wikitext" and raw_wikitext) and not has_split(TASKS[n], TASKS[n].split, data_dir)]
    files = ", ".join(sorted({f"{TASKS[n].dataset}/{TASKS[n].split}.jsonl" for n in missing}))
    if missing and download and hub_reachable():
        print(f"note: {files} not found locally; they will be downloaded from the hub")
    elif missing:
        hint = (" (for wikitext, DISPERSE_WIKITEXT_TEST may name the raw WikiText-103 test file)"
                if "wikitext" in missing else "")
        raise MissingFileError(f"{where}: benchmark data missing in {data_dir or '<unset>'}: {files}. Set {setting} "
                               f"to a folder of <dataset>/<split>.jsonl files (e.g. shared/benchmarks){hint}")
    return leaves
