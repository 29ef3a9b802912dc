"""The catalogue of bad inputs: every CLI answers each with one clear message on stderr, exit
status != 0 and no traceback, names the culprit, and leaves every file it found as it was.

Most cases call the CLI's main through errors.run_cli in this process, exactly what its
`if __name__ == "__main__"` line does: any exception other than the SystemExit it raises for an
InputError escapes and fails the test, which is what would have printed a traceback. One case per
CLI also runs as a subprocess (and the data preparers, which start fast, always do), so the
wiring itself is tested too."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import checkpoint
from conftest import REPO, TINY_MODEL, shared_dir

TRAIN_SHORT = ["--max_iters=2", "--eval_interval=2", "--eval_iters=1"]


# ---------------------------------------------------------------------- running a CLI

def _main_of(cli):
    if cli == "train":
        import train
        return train.main
    if cli == "sample":
        import sample
        return sample.main
    from eval import benchmarks, condensation, plots
    return {"benchmarks": benchmarks.main, "condensation": condensation.main, "plots": plots.main}[cli]


COMMANDS = {"train": [str(REPO / "train.py")], "sample": [str(REPO / "sample.py")],
            "benchmarks": ["-m", "eval.benchmarks"], "condensation": ["-m", "eval.condensation"],
            "plots": ["-m", "eval.plots"], "local": ["-m", "data.local.prepare"],
            "shakespeare": ["-m", "data.shakespeare.prepare"], "wikitext": ["-m", "data.wikitext103.prepare"],
            "openwebtext": ["-m", "data.openwebtext.prepare"]}
FAST_TO_START = ("local", "shakespeare", "wikitext", "openwebtext")  # no torch import


def run_inprocess(cli, argv, capsys):
    """(exit status, stdout, stderr) of run_cli(main, argv); other exceptions propagate."""
    from errors import run_cli
    capsys.readouterr()
    try:
        run_cli(_main_of(cli), argv)
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    if isinstance(code, str):  # what the interpreter prints for sys.exit("message")
        err, code = err + code + "\n", 1
    return code or 0, out, err


def run_subprocess(cli, argv, env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    r = subprocess.run([sys.executable, *COMMANDS[cli], *argv], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
    return r.returncode, r.stdout, r.stderr


def snapshot(*roots):
    files = {}
    for root in roots:
        for dirpath, _, names in os.walk(root):
            for n in names:
                path = os.path.join(dirpath, n)
                with open(path, "rb") as f:
                    files[path] = f.read()
    return files


# ---------------------------------------------------------------------- shared inputs

@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_dataset):
    """A finished tiny run (out/ckpt.pt and out/metrics.jsonl), trained once, in this process."""
    import train
    out = tmp_path_factory.mktemp("base") / "out"
    train.main([*TINY_MODEL, f"--dataset={tiny_dataset}", f"--out_dir={out}", *TRAIN_SHORT])
    return out


@pytest.fixture(scope="module")
def gpt2_vocab_model(tmp_path_factory):
    """A tiny model with GPT-2's vocabulary (what the benchmarks are encoded with), weights only."""
    from model import GPT, GPTConfig, model_config_to_dict
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=50257, n_layer=1, n_head=2, n_embd=16, bias=True))
    path = tmp_path_factory.mktemp("gpt2_vocab") / "ckpt.pt"
    checkpoint.write(str(path), {"model": model.state_dict(), "model_args": model_config_to_dict(model.config)})
    return path


def copy_run(base, tmp):
    out = tmp / "out"
    shutil.copytree(base, out)
    return out


def copy_data(tiny_dataset, tmp):
    data = tmp / "data"
    shutil.copytree(tiny_dataset, data)
    return data


def train_args(data, out, *extra):
    return [*TINY_MODEL, f"--dataset={data}", f"--out_dir={out}", *TRAIN_SHORT, *extra]


def resume_from(ctx, write_bad_checkpoint):
    """train.py --init_from=resume in a copy of the base run whose ckpt.pt was replaced."""
    out = copy_run(ctx["base"], ctx["tmp"])
    write_bad_checkpoint(out / "ckpt.pt")
    return train_args(ctx["data"], out, "--init_from=resume", "--max_iters=4"), str(out / "ckpt.pt")


def malicious_pickle(path, marker):
    """A torch checkpoint whose unpickling creates the file `marker` (any code could run instead)."""
    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))
    torch.save({"model": Payload(), "model_args": {}}, path)


def payload_of(base):
    return checkpoint.read(str(base / "ckpt.pt"))


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def bit_rot(path):
    """4 KiB of garbage in the middle of the file, as a failing disk or a bad copy leaves it."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2 - 2048
    data[middle: middle + 4096] = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def old_format(base, path):
    """A checkpoint as train.py wrote it before format 1: numpy's and Python's RNG states pickled, no checksum."""
    import random
    payload = payload_of(base)
    for state in payload["rng"]:
        state["numpy"], state["python"] = np.random.get_state(), random.getstate()
    torch.save(payload, path)


def bench_dir(tmp, rows_text):
    folder = tmp / "bench" / "piqa"
    folder.mkdir(parents=True)
    (folder / "validation.jsonl").write_text(rows_text)
    return tmp / "bench"


PIQA_ROW = {"goal": "Open a jar", "sol1": "Twist the lid.", "sol2": "Eat the lid.", "label": 0}


# ---------------------------------------------------------------------- the catalogue

CASES = {}


def case(cli, needs_shared=False, also_subprocess=False):
    def register(build):
        CASES[build.__name__] = (cli, build, needs_shared)
        if also_subprocess:
            SUBPROCESS.append(build.__name__)
        return build
    return register


SUBPROCESS = []


# train.py: settings
@case("train")
def unknown_key(ctx):
    return train_args(ctx["data"], ctx["tmp"] / "out", "--n_layr=3"), "n_layr"


@case("train")
def wrong_type(ctx):
    return train_args(ctx["data"], ctx["tmp"] / "out", "--batch_size=abc"), "batch_size='abc'"


@case("train", also_subprocess=True)
def config_file_syntax_error(ctx):
    path = ctx["tmp"] / "bad.py"
    path.write_text("n_layer = 2\nn_head = = 3\n")
    return [str(path), *train_args(ctx["data"], ctx["tmp"] / "out")], f"{path}, line 2"


@case("train")
def config_file_undefined_name(ctx):
    path = ctx["tmp"] / "bad.py"
    path.write_text("n_layer = 2\nn_head = heads_per_layer * 2\n")
    return [str(path), *train_args(ctx["data"], ctx["tmp"] / "out")], f"{path}, line 2: NameError"


@case("train")
def config_file_missing(ctx):
    return ["config/no_such_file.py", *train_args(ctx["data"], ctx["tmp"] / "out")], "no_such_file.py"


@case("train")
def eval_task_unknown(ctx):
    return train_args(ctx["data"], ctx["tmp"] / "out", "--eval_tasks=piqaa",
                               f"--eval_data_dir={ctx['tmp']}"), "piqaa"


@case("train")
def probe_text_missing(ctx):
    return train_args(ctx["data"], ctx["tmp"] / "out", "--probe_text=/no/such/text.txt"), "/no/such/text.txt"


# train.py: data
@case("train")
def dataset_missing(ctx):
    return train_args("/no/such/folder", ctx["tmp"] / "out"), "/no/such/folder/train.bin"


@case("train")
def odd_sized_bin(ctx):
    data = copy_data(ctx["tiny_dataset"], ctx["tmp"])
    with open(data / "train.bin", "ab") as f:
        f.write(b"\x00")
    return train_args(data, ctx["tmp"] / "out"), f"{data / 'train.bin'} has an odd number of bytes"


@case("train")
def bad_meta_json(ctx):
    data = copy_data(ctx["tiny_dataset"], ctx["tmp"])
    (data / "meta.json").write_text('{"dtype": "uint16", ')
    return train_args(data, ctx["tmp"] / "out"), f"{data / 'meta.json'} is not valid JSON"


@case("train")
def short_val_bin(ctx):
    data = copy_data(ctx["tiny_dataset"], ctx["tmp"])
    np.arange(10, dtype=np.uint16).tofile(data / "val.bin")
    return train_args(data, ctx["tmp"] / "out"), f"{data / 'val.bin'} holds 10 tokens"


@case("train")
def vocab_mismatch(ctx):
    return train_args(ctx["data"], ctx["tmp"] / "out", "--vocab_size=50"), "vocab_size=50"


@case("train")
def token_ids_beyond_the_vocabulary(ctx):
    # meta.json claims 100 tokens, the file holds id 200, the model has 128: an IndexError in the
    # embedding once, after the from-scratch start had emptied this out_dir's metrics.jsonl
    data = copy_data(ctx["tiny_dataset"], ctx["tmp"])
    ids = np.fromfile(data / "train.bin", dtype=np.uint16)
    ids[len(ids) // 3] = 200
    ids.tofile(data / "train.bin")
    out = copy_run(ctx["base"], ctx["tmp"])  # its ckpt.pt and metrics.jsonl must survive, even told to overwrite
    return train_args(data, out, "--overwrite=True"), f"{data / 'train.bin'} holds token id 200"


@case("train")
def new_run_into_an_out_dir_that_holds_one(ctx):
    out = copy_run(ctx["base"], ctx["tmp"])
    return train_args(ctx["data"], out), ("already holds a run", "--init_from=resume", "--overwrite=True")


# train.py: resuming
@case("train")
def resume_without_checkpoint(ctx):
    return train_args(ctx["data"], ctx["tmp"] / "out", "--init_from=resume"), str(ctx["tmp"] / "out" / "ckpt.pt")


@case("train")
def resume_truncated_checkpoint(ctx):
    return resume_from(ctx, truncate)


@case("train")
def resume_zeroed_checkpoint(ctx):
    return resume_from(ctx, lambda p: p.write_bytes(bytes(p.stat().st_size)))


@case("train")
def resume_bare_tensor(ctx):
    argv, path = resume_from(ctx, lambda p: torch.save(torch.zeros(3), p))
    return argv, f"{path} holds a Tensor"


@case("train")
def resume_bit_rot(ctx):
    argv, path = resume_from(ctx, bit_rot)
    return argv, f"{path} is damaged"


@case("train")
def resume_malicious_pickle(ctx):
    marker = ctx["tmp"] / "pwned"
    argv, path = resume_from(ctx, lambda p: malicious_pickle(p, marker))
    ctx["after"] = lambda: not marker.exists()
    return argv, f"{path} is not a safe checkpoint"


@case("train")
def resume_old_format_checkpoint(ctx):
    argv, path = resume_from(ctx, lambda p: old_format(ctx["base"], p))
    return argv, (f"{path} is not a safe checkpoint", "--allow_unsafe_pickle=True")


@case("train")
def resume_non_finite_optimizer_state(ctx):
    def diverged(path):
        payload = payload_of(ctx["base"])
        payload["optimizer"]["state"][0]["exp_avg"].view(-1)[0] = float("nan")
        checkpoint.write(str(path), payload)  # a valid checksum: the numbers themselves are wrong
    argv, path = resume_from(ctx, diverged)
    return argv, f"{path}: checkpoint.optimizer.0.exp_avg holds 1 non-finite values"


@case("train")
def resume_optimizer_state_of_another_shape(ctx):
    def reshaped(path):
        payload = payload_of(ctx["base"])
        payload["optimizer"]["state"][0]["exp_avg"] = torch.zeros(3, 3)
        checkpoint.write(str(path), payload)
    argv, path = resume_from(ctx, reshaped)
    return argv, "exp_avg is torch.float32 (3, 3) for a parameter of shape (128, 32)"


@case("train")
def resume_weights_of_another_dtype(ctx):
    def integer_weights(path):
        payload = payload_of(ctx["base"])
        payload["model"]["lm_head.weight"] = payload["model"]["lm_head.weight"].long()
        checkpoint.write(str(path), payload)
    argv, path = resume_from(ctx, integer_weights)
    return argv, "is torch.int64, the model's is torch.float32"


@case("train")
def resume_with_a_damaged_log(ctx):
    out = copy_run(ctx["base"], ctx["tmp"])
    lines = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
    (out / "metrics.jsonl").write_text(lines[0] + '{"iter": 1, "lo\n' + "".join(lines[1:]))
    return train_args(ctx["data"], out, "--init_from=resume", "--max_iters=4"), \
        f"{out / 'metrics.jsonl'}, line 2"


# sample.py
@case("sample", also_subprocess=True)
def sample_without_checkpoint(ctx):
    return [f"--out_dir={ctx['tmp'] / 'out'}"], str(ctx["tmp"] / "out" / "ckpt.pt")


@case("sample")
def sample_truncated_checkpoint(ctx):
    out = copy_run(ctx["base"], ctx["tmp"])
    truncate(out / "ckpt.pt")
    return [f"--out_dir={out}", "--start=!", "--max_new_tokens=2"], str(out / "ckpt.pt")


@case("sample")
def sample_malicious_pickle(ctx):
    marker = ctx["tmp"] / "pwned"
    out = copy_run(ctx["base"], ctx["tmp"])
    malicious_pickle(out / "ckpt.pt", marker)
    ctx["after"] = lambda: not marker.exists()
    return [f"--out_dir={out}"], f"{out / 'ckpt.pt'} is not a safe checkpoint"


@case("sample", needs_shared=True)
def sample_prompt_beyond_the_vocabulary(ctx):
    return [f"--out_dir={ctx['base']}", "--start=The king"], "vocab_size=128"


@case("sample")
def sample_prompt_file_missing(ctx):
    return [f"--out_dir={ctx['base']}", "--start=FILE:/no/such/prompt.txt"], "/no/such/prompt.txt"


# python -m eval.benchmarks
def bench_args(ctx, *extra, ckpt=None):
    return ["--ckpt", str(ckpt or ctx["gpt2_vocab_model"]), "--no-download", "--limit", "3", *extra]


@case("benchmarks")
def bench_missing_data_dir(ctx):
    return bench_args(ctx, "--tasks", "piqa", "--data-dir", "/no/such/benchmarks"), "/no/such/benchmarks"


@case("benchmarks", needs_shared=True)
def bench_task_file_missing(ctx):
    folder = ctx["tmp"] / "empty"
    folder.mkdir()
    return bench_args(ctx, "--tasks", "piqa", "--data-dir", str(folder)), \
        str(folder / "piqa" / "validation.jsonl")


@case("benchmarks", also_subprocess=True)
def bench_unknown_task(ctx):
    return bench_args(ctx, "--tasks", "piqa,hellaswagg"), "hellaswagg"


@case("benchmarks", needs_shared=True)
def bench_cut_jsonl_line(ctx):
    line = json.dumps(PIQA_ROW)
    folder = bench_dir(ctx["tmp"], line + "\n" + line[:20] + "\n" + line + "\n")
    return bench_args(ctx, "--tasks", "piqa", "--data-dir", str(folder)), \
        f"{folder / 'piqa' / 'validation.jsonl'}, line 2: not valid JSON"


@case("benchmarks", needs_shared=True)
def bench_row_missing_a_field(ctx):
    rows = [PIQA_ROW, PIQA_ROW, {k: v for k, v in PIQA_ROW.items() if k != "sol2"}]
    folder = bench_dir(ctx["tmp"], "".join(json.dumps(r) + "\n" for r in rows))
    return bench_args(ctx, "--tasks", "piqa", "--data-dir", str(folder)), \
        f"{folder / 'piqa' / 'validation.jsonl'}, line 3: the row has no field 'sol2'"


@case("benchmarks")
def bench_missing_checkpoint(ctx):
    path = ctx["tmp"] / "out" / "ckpt.pt"
    return bench_args(ctx, "--tasks", "piqa", ckpt=path), str(path)


@case("benchmarks")
def bench_truncated_checkpoint(ctx):
    out = copy_run(ctx["base"], ctx["tmp"])
    truncate(out / "ckpt.pt")
    return bench_args(ctx, "--tasks", "piqa", ckpt=out / "ckpt.pt"), str(out / "ckpt.pt")


# python -m eval.condensation
@case("benchmarks", needs_shared=True)
def bench_model_with_another_vocabulary(ctx):
    folder = bench_dir(ctx["tmp"], json.dumps(PIQA_ROW) + "\n")
    return bench_args(ctx, "--tasks", "piqa", "--data-dir", str(folder), ckpt=ctx["base"]), "vocab_size=128"


@case("condensation", needs_shared=True)
def condensation_text_beyond_the_vocabulary(ctx):
    text = ctx["tmp"] / "text.txt"
    text.write_text("Some text for the probe. " * 20)
    return ["--ckpt", str(ctx["base"]), "--text", str(text), "--seq-len", "16",
                            "--out", str(ctx["tmp"] / "probe")], (str(text), "vocab_size=128")


@case("condensation", needs_shared=True)
def condensation_text_shorter_than_a_sequence(ctx):
    text = ctx["tmp"] / "short.txt"
    text.write_text("Too short.")
    return ["--ckpt", str(ctx["gpt2_vocab_model"]), "--text", str(text), "--seq-len", "16",
                            "--out", str(ctx["tmp"] / "probe")], str(text)


@case("condensation", also_subprocess=True)
def condensation_missing_checkpoint(ctx):
    text = ctx["tmp"] / "text.txt"
    text.write_text("Some text. " * 50)
    path = ctx["tmp"] / "nothing" / "ckpt.pt"
    return ["--ckpt", str(path), "--text", str(text)], str(path)


# python -m eval.plots
@case("plots", also_subprocess=True)
def plots_missing_file(ctx):
    return ["heatmap", str(ctx["tmp"] / "no.json"), "--out", str(ctx["tmp"] / "a.png")], str(ctx["tmp"] / "no.json")


@case("plots")
def plots_not_a_probe_result(ctx):
    path = ctx["tmp"] / "condensation.json"
    path.write_text('{"iter": 3}')
    return ["mean_cos", str(path), "--out", str(ctx["tmp"] / "a.png")], f"{path} is not a condensation probe result"


# the data preparers (always subprocesses: they start in half a second)
@case("local")
def local_empty_folder(ctx):
    folder = ctx["tmp"] / "in"
    folder.mkdir()
    return ["--input", str(folder), "--out_dir", str(ctx["tmp"] / "prepared")], f"no .txt files found under {folder}"


@case("local")
def local_no_txt_files(ctx):
    folder = ctx["tmp"] / "in"
    folder.mkdir()
    (folder / "notes.md").write_text("# not text for training\n")
    return ["--input", str(folder), "--out_dir", str(ctx["tmp"] / "prepared")], f"no .txt files found under {folder}"


@case("local")
def local_missing_path(ctx):
    return ["--input", "/no/such/corpus", "--out_dir", str(ctx["tmp"] / "prepared")], "/no/such/corpus"


@case("local")
def local_single_paragraph(ctx):
    text = ctx["tmp"] / "one.txt"
    text.write_text("Only one paragraph here, so nothing can be held out.\n")
    prepared = copy_data(ctx["tiny_dataset"], ctx["tmp"])  # an earlier preparation: must survive
    return ["--input", str(text), "--out_dir", str(prepared)], f"no validation documents in {text}"


@case("shakespeare")
def shakespeare_missing_input(ctx):
    return ["--input", "/no/such/input.txt", "--out_dir", str(ctx["tmp"] / "sh")], "/no/such/input.txt"


@case("wikitext")
def wikitext_folder_without_valid_file(ctx):
    folder = ctx["tmp"] / "raw"
    folder.mkdir()
    return ["--input", str(folder), "--out_dir", str(ctx["tmp"] / "wt")], f"wiki.valid.raw or valid.raw in {folder}"


@case("openwebtext")
def openwebtext_missing_input(ctx):
    return ["--input", "/no/such/docs", "--out_dir", str(ctx["tmp"] / "owt")], "/no/such/docs"


@pytest.mark.parametrize("name, mode", [(n, "subprocess" if CASES[n][0] in FAST_TO_START else "in-process")
                                        for n in CASES] + [(n, "subprocess") for n in SUBPROCESS])
def test_bad_input_gets_a_clear_message(name, mode, base, gpt2_vocab_model, tiny_dataset, tmp_path, capsys, monkeypatch):
    cli, build, needs_shared = CASES[name]
    if needs_shared and not (shared_dir() / "tiktoken").is_dir():
        pytest.skip("needs the offline tokenizer files (DISPERSE_SHARED)")
    tiktoken_dir = str((shared_dir() / "tiktoken").resolve())
    env = {"TIKTOKEN_CACHE_DIR": os.environ.get("TIKTOKEN_CACHE_DIR", tiktoken_dir),
           "DISPERSE_BENCHMARKS_CACHE": str(tmp_path / "no-cache")}  # never the user's download cache
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("DISPERSE_BENCHMARKS", raising=False)
    ctx = {"tmp": tmp_path, "base": base, "gpt2_vocab_model": gpt2_vocab_model, "tiny_dataset": tiny_dataset,
           "data": tiny_dataset}
    argv, culprit = build(ctx)
    before = snapshot(tmp_path, tiny_dataset, base)

    if mode == "subprocess":
        code, out, err = run_subprocess(cli, argv, env)
    else:
        code, out, err = run_inprocess(cli, argv, capsys)

    assert code != 0, f"exit status 0 for a bad input\n{out[-2000:]}\n{err[-2000:]}"
    assert "Traceback" not in err, err[-3000:]
    for name in culprit if isinstance(culprit, tuple) else (culprit,):
        assert name in err, f"{name!r} not in stderr:\n{err[-2000:]}"
    assert err.strip().splitlines()[-1].startswith("error: "), err[-2000:]
    after = snapshot(tmp_path, tiny_dataset, base)
    changed = [p for p, data in before.items() if after.get(p) != data]
    assert not changed, f"files changed or removed: {changed}"
    assert ctx.get("after", lambda: True)()


# ---------------------------------------------------------------------- what the catalogue rests on

def test_the_malicious_pickle_is_real_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    malicious_pickle(tmp_path / "ckpt.pt", marker)
    with pytest.raises(checkpoint.CheckpointError, match="can run arbitrary code"):
        checkpoint.read(str(tmp_path / "ckpt.pt"))
    assert not marker.exists()
    torch.load(tmp_path / "ckpt.pt", weights_only=False)  # what the loaders did before: the code runs
    assert marker.exists()


def test_bit_rot_passes_torch_load_but_not_the_checksum(base, tmp_path):
    path = tmp_path / "ckpt.pt"
    shutil.copy(base / "ckpt.pt", path)
    bit_rot(path)
    torch.load(path, weights_only=True)  # zip's CRCs are not checked: torch alone would resume from garbage
    damaged = path.read_bytes()
    with pytest.raises(checkpoint.CheckpointError, match="do not match the checksum"):
        checkpoint.read(str(path))
    assert path.read_bytes() == damaged


def test_round_trip_is_exact_and_only_plain_types_are_written(tmp_path):
    payload = {"w": torch.randn(3, 4, dtype=torch.bfloat16), "step": torch.tensor(7.0), "ids": torch.arange(5),
               "mask": torch.tensor([True, False]), "empty": torch.zeros(0), "nested": [1, 2.5, "x", None, (3, True)],
               "inf": float("inf"), "view": torch.arange(10.0)[::3]}
    path = str(tmp_path / "ckpt.pt")
    checkpoint.write(path, payload)
    back = checkpoint.read(path)
    assert back.keys() == payload.keys() and not os.path.exists(path + ".tmp")
    for k, v in payload.items():
        if isinstance(v, torch.Tensor):
            assert back[k].dtype == v.dtype and torch.equal(back[k], v)
        else:
            assert back[k] == v
    flipped = {**payload, "ids": torch.tensor([0, 1, 2, 3, 5])}
    assert checkpoint.digest(flipped) != checkpoint.digest(payload)
    with pytest.raises(TypeError, match="checkpoint.rng is a numpy.ndarray"):
        checkpoint.write(path, {"rng": np.zeros(3)})
    assert checkpoint.read(path).keys() == payload.keys()  # the refused write left the old file


def test_old_checkpoint_opens_with_the_opt_in_and_is_rewritten_safe(base, tiny_dataset, tmp_path, capsys):
    out = copy_run(base, tmp_path)
    old_format(base, out / "ckpt.pt")
    code, stdout, err = run_inprocess("train", train_args(tiny_dataset, out, "--init_from=resume", "--max_iters=4",
                                                          "--allow_unsafe_pickle=True"), capsys)
    assert code == 0, err[-2000:]
    assert "runs any code the file carries" in stdout
    assert checkpoint.read(str(out / "ckpt.pt"))["iter_num"] == 4  # the new file is safe and verified


def test_start_removes_leftover_temporary_files_and_trims_atomically(base, tiny_dataset, tmp_path, capsys):
    out = copy_run(base, tmp_path)
    for name in ("ckpt.pt.tmp", "metrics.jsonl.tmp"):
        (out / name).write_bytes(b"half a file")
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"iter": 2, "lo')  # a kill in the middle of a log line
    inode = os.stat(out / "metrics.jsonl").st_ino
    code, _, err = run_inprocess("train", train_args(tiny_dataset, out, "--init_from=resume", "--max_iters=4"), capsys)
    assert code == 0, err[-2000:]
    assert not (out / "ckpt.pt.tmp").exists() and not (out / "metrics.jsonl.tmp").exists()
    assert os.stat(out / "metrics.jsonl").st_ino != inode  # a new file renamed over the old one
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == [0, 0, 1, 2, 2, 3, 4]


def test_upgrade_converts_an_old_checkpoint_once(base, tiny_dataset, tmp_path, capsys):
    out = copy_run(base, tmp_path)
    old_format(base, tmp_path / "old.pt")
    checkpoint.main(["upgrade", str(tmp_path / "old.pt"), str(out / "ckpt.pt")])
    assert "runs any code the file carries" in capsys.readouterr().out
    code, _, err = run_inprocess("train", train_args(tiny_dataset, out, "--init_from=resume", "--max_iters=4"), capsys)
    assert code == 0, err[-2000:]  # no opt-in needed any more
    assert checkpoint.read(str(out / "ckpt.pt"))["iter_num"] == 4
