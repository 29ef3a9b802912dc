"""What a user coming from nanoGPT meets: the prepare command a missing dataset names runs as written,
character models are refused by the benchmark scorers with a reason, and sample.py shows progress."""

import os
import shlex
import subprocess
import sys

import pytest
import torch

from conftest import TINY_MODEL
from errors import InputError, MissingFileError

SMALL = [a for a in TINY_MODEL if not a.startswith("--vocab_size")]  # the data's vocabulary
SHORT = ["--max_iters=1", "--eval_interval=1", "--eval_iters=1"]


def train(argv):
    import train as train_py
    train_py.main([str(a) for a in argv])


# ---------------------------------------------------------------------- the missing-data hint

@pytest.mark.parametrize("name", ["shakespeare_char", "my_texts"])
def test_missing_data_names_a_prepare_command_that_runs_as_written(name, shared, tmp_path, monkeypatch):
    """shakespeare_char: its own script, from the offline copy; any other folder: data/local's, with a
    real --input. The offline data folder here is a small stand-in ($DISPERSE_SHARED), and
    TIKTOKEN_CACHE_DIR is unset, as on a fresh shell: the command must say what GPT-2's tokenizer needs."""
    fake = tmp_path / "shared"
    (fake / "corpus").mkdir(parents=True)
    text = (shared / "corpus" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:30000]
    (fake / "corpus" / "tinyshakespeare.txt").write_text(text, encoding="utf-8")
    (fake / "tiktoken").symlink_to((shared / "tiktoken").resolve())
    monkeypatch.setenv("DISPERSE_SHARED", str(fake))
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    data = tmp_path / "elsewhere" / name
    with pytest.raises(MissingFileError) as e:
        train([*SMALL, f"--dataset={data}", f"--out_dir={tmp_path / 'out'}", *SHORT])
    message = str(e.value)
    assert f"missing {data / 'train.bin'}" in message and "prepare the data first: " in message
    command = message.split("prepare the data first: ")[1]
    expected = "shakespeare_char/prepare.py" if name == "shakespeare_char" else "local/prepare.py --input"
    words = shlex.split(command)  # the folder is shown relative to the working directory where that is short
    assert expected in command and os.path.abspath(words[words.index("--out_dir") + 1]) == str(data), command
    env = {k: v for k, v in os.environ.items() if k != "TIKTOKEN_CACHE_DIR"}
    result = subprocess.run(command, shell=True, cwd=os.getcwd(), env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    train([*SMALL, f"--dataset={data}", f"--out_dir={tmp_path / 'out'}", *SHORT])  # the data is there now
    assert (tmp_path / "out" / "ckpt.pt").exists()


def test_the_hint_for_a_dataset_of_this_repository_uses_its_own_folder(monkeypatch):
    from data.common import prepare_command
    monkeypatch.setenv("DISPERSE_SHARED", "/offline")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "/cache")
    repo_data = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
    command = prepare_command(os.path.join(repo_data, "shakespeare_char"))
    assert "shakespeare_char/prepare.py" in command and "--out_dir" not in command  # its default folder
    assert "--out_dir" in prepare_command(os.path.join(repo_data, "local"))  # data/local's default is cwd-relative
    assert "TIKTOKEN_CACHE_DIR" not in command
    assert "downloads" in prepare_command(os.path.join(repo_data, "openwebtext"))


# ---------------------------------------------------------------------- benchmarks and characters

def test_benchmarks_refuse_a_character_tokenizer_before_any_step(shared, tmp_path):
    from data.common import char_tokenizer, char_tokenizer_name, prepare_from_documents
    data = tmp_path / "chars"
    docs, val = ["First Citizen:\nBefore we proceed any further.\n" * 40] * 2, ["All:\nSpeak, speak.\n" * 40]
    prepare_from_documents(str(data), docs, val, source="test", tokenizer=char_tokenizer_name(sorted(set("".join(docs + val)))))
    out = tmp_path / "out"
    with pytest.raises(InputError, match="eval_tasks: benchmarks are scored with the model's tokenizer, here a "
                                         "character tokenizer of .* leave eval_tasks empty"):
        train([*SMALL, f"--dataset={data}", f"--out_dir={out}", *SHORT, "--eval_tasks=arc_easy",
               f"--eval_data_dir={shared / 'benchmarks'}"])
    assert not (out / "ckpt.pt").exists()
    from eval.benchmarks import evaluate
    from model import GPT, GPTConfig
    with pytest.raises(InputError, match="no start-of-text token"):
        evaluate(GPT(GPTConfig(vocab_size=32, block_size=16, n_layer=1, n_head=1, n_embd=8)), "arc_easy",
                 str(shared / "benchmarks"), enc=char_tokenizer("abc\n :"))


# ---------------------------------------------------------------------- sample.py's progress

def test_generate_reports_every_new_token():
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=32, block_size=16, n_layer=1, n_head=1, n_embd=8)).eval()
    for new in (5, 20):  # 20 goes past block_size: the windowed path
        count = []
        model.generate(torch.zeros(1, 2, dtype=torch.long), new, on_token=lambda: count.append(1))
        assert len(count) == new


def test_sample_shows_a_progress_bar_on_a_terminal(tmp_path, capsys, monkeypatch):
    import checkpoint
    import sample
    from data.common import char_tokenizer_name
    from model import GPT, GPTConfig, model_config_to_dict
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=6, block_size=32, n_layer=1, n_head=1, n_embd=8))
    (tmp_path / "out").mkdir()
    checkpoint.write(str(tmp_path / "out" / "ckpt.pt"), {"model": model.state_dict(), "iter_num": 0,
                     "model_args": model_config_to_dict(model.config), "tokenizer": char_tokenizer_name("abc\n :")})
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)  # tqdm shows bars on terminals only
    sample.main([f"--out_dir={tmp_path / 'out'}", "--start=ab", "--num_samples=2", "--max_new_tokens=7", "--device=cpu"])
    captured = capsys.readouterr()
    assert "sampling" in captured.err and "14/14" in captured.err  # every token of every sample
    samples = captured.out.split("---------------\n")
    assert len(samples) == 3 and all(s.startswith("ab") and len(s) == 10 for s in samples[:2])  # "ab" + 7 + newline
