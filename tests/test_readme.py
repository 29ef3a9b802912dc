"""The README's commands as written: every tool they run exists, every config file and repository
path they name is there, and every --flag they pass is one the tool lists in its --help. Read from
the README's ```bash blocks, so a renamed setting or file breaks this test, not a reader's first
try. (What the commands then do is tested by the tests of each tool; make demo runs the main job.)"""

import functools
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def readme_commands():
    """Each command line of the README's bash blocks: continuation lines joined, comments dropped."""
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        block = block.replace("\\\n", " ")
        for line in block.splitlines():
            line = line.split("  #")[0].split("\t#")[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def tool_of(words):
    """(tool, its arguments) of a command: 'train.py', '-m eval.benchmarks'; None for what is not ours."""
    if words[0] == "torchrun":
        words = ["python"] + [w for w in words[1:] if not w.startswith("--")]
    if words[0] not in ("python", "python3") or len(words) < 2 or words[1] == "-c":
        return None, []
    if words[1] == "-m":
        return f"-m {words[2]}", words[3:]
    return words[1], words[2:]


COMMANDS = [c for c in readme_commands() if tool_of(shlex.split(c))[0]]


def test_the_readme_has_commands_of_every_main_tool():
    tools = {tool_of(shlex.split(c))[0] for c in COMMANDS}
    assert {"train.py", "sample.py", "experiment.py", "-m eval.benchmarks", "-m eval.condensation"} <= tools, tools


@functools.lru_cache(maxsize=None)
def help_of(tool):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, *tool.split(), "--help"], capture_output=True, text=True, cwd=REPO,
                            env=env, timeout=120)
    assert result.returncode == 0, f"{tool} --help failed: {result.stderr[-2000:]}"
    return result.stdout.replace("-", "_")  # the convention: hyphens and underscores name the same flag


@pytest.mark.parametrize("command", COMMANDS)
def test_a_readme_command_names_files_and_flags_that_exist(command):
    tool, args = tool_of(shlex.split(command))
    module = tool.split()[-1]
    path = REPO / (module.replace(".", "/") + ".py" if tool.startswith("-m") else tool)
    if tool.startswith("-m") and not path.exists():
        path = REPO / module.replace(".", "/") / "__main__.py"
    assert path.is_file(), f"{command}: no {path.relative_to(REPO)} in the repository"
    for arg in args:
        if re.fullmatch(r"config/\w+\.py", arg):
            assert (REPO / arg).is_file(), f"{command}: no {arg}"
    text = help_of(tool)
    for arg in args:
        if arg.startswith("--") and arg != "--help":
            name = arg[2:].split("=")[0].replace("-", "_")
            assert re.search(rf"(?:(?<=__)|(?<!\w)){re.escape(name)}(?!\w)", text), \
                f"{command}: {tool} --help does not list {arg.split('=')[0]}"
