"""One command-line convention for every tool (nanoGPT's, so its users feel at home):

  train.py, sample.py, experiment.py (configurator.py)   --key=value or --key value, a config file
      as a positional argument, --out-dir for --out_dir, and --help listing every setting with its
      default and the comment beside it in the source
  the argparse tools (data preparers, eval tools, checkpoint.py)   --out_dir and --out-dir alike,
      yes/no options also as --allow_unsafe_pickle=True / =False, --help listing every option
      with its default and meaning

The three configurator tools take seconds to start (torch), so each runs once, for --help; the
rest is checked in this process, through configurator.load_config and each tool's arguments()."""

import os
import subprocess
import sys

import pytest

import configurator
from configurator import ConfigError, HelpSource, load_config, read_settings, settings_help
from conftest import REPO


def run(*argv):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "100"}
    r = subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    return r.returncode, r.stdout, r.stderr


def words(text):
    return " ".join(text.split())  # the help wraps long meanings: compare words, not lines


def defaults_of(script):
    """A configurator tool's settings: DEFAULTS, or its Config dataclass's fields."""
    import dataclasses
    module = __import__(script.removesuffix(".py"))
    return module.DEFAULTS if hasattr(module, "DEFAULTS") else dataclasses.asdict(module.Config())


# ---------------------------------------------------------------------- train.py, sample.py, experiment.py

@pytest.mark.parametrize("script, setting, default, meaning", [
    ("train.py", "batch_size", "12", "sequences per micro-step per rank"),
    ("sample.py", "temperature", "0.8", "lower is more conservative"),
    ("experiment.py", "n_boot", "2000", "bootstrap replicates for the confidence intervals"),
])
def test_help_lists_every_setting_with_its_default_and_meaning(script, setting, default, meaning):
    had_out = os.path.exists(REPO / "out")
    code, out, err = run(str(REPO / script), "--help")
    assert code == 0 and "Traceback" not in err, err[-2000:]
    assert meaning in words(out), out[-3000:]  # the comment beside the setting in the source
    line = next(line for line in out.splitlines() if line.strip().startswith(setting + ":")
                or line.strip().startswith(setting + " ="))
    assert line.split("=")[1].split()[0] == default  # the default beside its name
    for key in defaults_of(script):
        assert f"  {key}: " in out or f"  {key} = " in out, f"{script} --help does not list {key}"
    assert os.path.exists(REPO / "out") == had_out  # --help did no work


def test_help_reads_sections_and_continued_comments_from_the_source():
    import experiment
    import sample
    import train
    text = words(settings_help(HelpSource(str(REPO / "train.py"), "Config"), train.DEFAULTS))
    for heading in ("# I/O", "# data", "# model", "# optimizer: AdamW", "# system"):
        assert heading in text
    assert text.index("# data") < text.index("batch_size: int = 12") < text.index("# model")
    # init_from's comment goes on over the next line (#  another run's out_dir ...)
    assert "from another run's out_dir or ckpt.pt, a hub name ('gpt2'..'gpt2-xl')" in text
    assert "gradient_accumulation_steps: int = 40" in text  # the value, where the source computes it (5 * 8)
    assert "learning_rate: float = 6e-4" in text  # else the default as written
    assert "train.py's settings." in text  # the dataclass's docstring
    text = words(settings_help(HelpSource(str(REPO / "experiment.py"), "DEFAULTS"), experiment.DEFAULTS))
    assert "every arm then mid-trains (init_from)" in text and "# statistics" in text
    settings, _, _ = read_settings(sample.__file__, "Config")
    assert [s.key for s in settings] == list(defaults_of("sample.py"))


def test_help_source_forms(tmp_path):
    path = tmp_path / "tool.py"
    path.write_text('''"""A tool.

More about it."""
from dataclasses import dataclass


@dataclass
class Config:
    """Its settings."""
    # I/O
    out_dir: str = "a # b"  # where it writes
    #                         and more
    # model
    # (two lines of heading)
    n_layer: int = 2 * 3
    size: int | None = None  # None: auto


SETTINGS = {"alpha": 1,  # first
            "beta": [1,
                     2]}  # second
OTHER = dict(
    gamma=0.5,  # third
    #   continued
    delta="x",
)
''')
    settings, doc, module_doc = read_settings(str(path), "Config")
    assert [(s.key, s.type, s.default, s.meaning, s.section) for s in settings] == [
        ("out_dir", "str", '"a # b"', "where it writes and more", "I/O"),
        ("n_layer", "int", "2 * 3", "", "model\n(two lines of heading)"),
        ("size", "int | None", "None", "None: auto", "model\n(two lines of heading)")]
    assert doc == "Its settings." and module_doc.startswith("A tool.")
    assert [(s.key, s.meaning) for s in read_settings(str(path), "SETTINGS")[0]] == [("alpha", "first"),
                                                                                      ("beta", "second")]
    assert [(s.key, s.meaning) for s in read_settings(str(path), "OTHER")[0]] == [("gamma", "third continued"),
                                                                                  ("delta", "")]
    text = settings_help(HelpSource(str(path), "Config", prog="tool"), {"out_dir": "a # b", "n_layer": 6,
                                                                       "size": None, "extra": 1})
    assert text.startswith("usage: tool ") and "\nA tool.\n" in text
    assert "n_layer: int = 6" in text and "extra = 1" in text  # a setting missing from the source is listed too


def test_load_config_help_exits_0_before_reading_anything(capsys):
    defaults = {"out_dir": "out", "batch_size": 12}
    for flag in ("--help", "-h"):
        with pytest.raises(SystemExit) as e:
            load_config(defaults, ["no/such/config.py", "--bogus=1", flag])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert "out_dir = 'out'" in out and "batch_size = 12" in out  # no help source: the defaults alone
    for help in ("the help", lambda: "the help"):
        with pytest.raises(SystemExit):
            load_config(defaults, ["--help"], help=help)
        assert capsys.readouterr().out == "the help\n"


def test_space_form_and_hyphens_equal_the_equals_form(tmp_path):
    import train
    config_file = tmp_path / "c.py"
    config_file.write_text("batch_size = 4\nout_dir = 'from-file'\n")

    def cfg(*argv):
        return load_config(train.DEFAULTS, list(argv), train.TYPES)

    assert cfg("--out_dir", "out-x") == cfg("--out_dir=out-x") == cfg("--out-dir=out-x") == cfg("--out-dir", "out-x")
    assert cfg("--out_dir", "out-x")["out_dir"] == "out-x"
    for key, text in (("batch_size", "32"), ("compile", "False"), ("dispersion_margin", "-0.5"),
                      ("dispersion_layers", "1,6,12"), ("lr_decay_iters", "None"), ("out_dir", "2024"),
                      ("learning_rate", "1e-3"), ("dataset", "")):
        assert cfg(f"--{key}", text) == cfg(f"--{key}={text}")
    both = cfg(str(config_file), "--batch_size", "32", "--eval-iters", "3")  # a config file stays positional
    assert (both["batch_size"], both["out_dir"], both["eval_iters"]) == (32, "from-file", 3)
    assert cfg("--batch_size", "32", str(config_file))["batch_size"] == 4  # in the order given, as before


def test_a_dangling_key_is_an_error_that_shows_the_equals_form():
    import train
    for argv in (["--out_dir"], ["--out_dir", "--batch_size=3"], ["--out-dir", "--compile", "False"]):
        with pytest.raises(ConfigError, match=r"--out.dir needs a value.*--out.dir=VALUE"):
            load_config(train.DEFAULTS, argv, train.TYPES)
    with pytest.raises(ConfigError, match=r"unknown config key 'out-dri'; did you mean out_dir"):
        load_config(train.DEFAULTS, ["--out-dri", "x"], train.TYPES)  # a known key is checked first
    assert load_config(train.DEFAULTS, ["--out_dir=--x"], train.TYPES)["out_dir"] == "--x"


@pytest.mark.parametrize("cli", ["train", "sample"])
def test_a_dangling_key_is_one_line_on_stderr(cli, capsys):
    from errors import run_cli
    main = __import__(cli).main
    with pytest.raises(SystemExit) as e:
        run_cli(main, ["--out_dir"])
    assert str(e.value.code).startswith("error: ") and "\n" not in str(e.value.code)
    assert "--out_dir=VALUE" in str(e.value.code)


def test_experiment_reads_the_space_form_too(capsys):
    import experiment
    cfg, _ = experiment.load_experiment(["--seeds", "[0, 1, 2]", "--exp-dir", "out-x"])
    assert cfg["seeds"] == [0, 1, 2] and cfg["exp_dir"] == "out-x"
    assert experiment.main(["--seeds"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--seeds=VALUE" in err


# ---------------------------------------------------------------------- the argparse tools

def _tools():
    """name -> (the tool's parser, its command for a subprocess, arguments it requires)."""
    from data.local import prepare as local
    from data.openwebtext import prepare as owt
    from data.shakespeare import prepare as shakespeare
    from data.shakespeare_char import prepare as shakespeare_char
    from data.wikitext103 import prepare as wikitext
    import checkpoint
    from eval import benchmarks, condensation, plots
    return {
        "benchmarks": (benchmarks.arguments, ["-m", "eval.benchmarks"], ["--ckpt", "c"]),
        "condensation": (condensation.arguments, ["-m", "eval.condensation"], ["--ckpt", "c"]),
        "plots": (plots.arguments, ["-m", "eval.plots"], ["heatmap", "a.json", "--out", "o.png"]),
        "checkpoint": (checkpoint.arguments, ["checkpoint.py"], ["upgrade", "a.pt", "b.pt"]),
        "local": (local.arguments, ["-m", "data.local.prepare"], ["--input", "t.txt"]),
        "openwebtext": (owt.arguments, ["-m", "data.openwebtext.prepare"], []),
        "shakespeare": (shakespeare.arguments, ["-m", "data.shakespeare.prepare"], []),
        "shakespeare_char": (shakespeare_char.arguments, ["data/shakespeare_char/prepare.py"], []),
        "wikitext103": (wikitext.arguments, ["-m", "data.wikitext103.prepare"], []),
    }


TOOLS = ["benchmarks", "condensation", "plots", "checkpoint", "local", "openwebtext", "shakespeare",
         "shakespeare_char", "wikitext103"]


@pytest.mark.parametrize("tool", TOOLS)
def test_help_exits_0(tool):
    _, command, _ = _tools()[tool]
    code, out, err = run(*command, "--help")
    assert code == 0 and "Traceback" not in err, err[-2000:]
    assert out.startswith("usage: python ") and "--help" in out


def _parsers(tool):
    """The tool's parser and its subcommands' (checkpoint.py upgrade)."""
    parser = _tools()[tool][0]()
    found = [parser]
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            found += list(action.choices.values())
    return found


@pytest.mark.parametrize("tool", TOOLS)
def test_help_mentions_every_option_with_its_default(tool):
    for parser in _parsers(tool):
        text = words(parser.format_help())
        for action in parser._actions:
            for name in action.option_strings:
                assert name in text, f"{tool}: {name} missing from --help"
            if not action.option_strings:  # a positional: its metavar, its choices, or its name
                choices = "{" + ",".join(action.choices) + "}" if action.choices else None
                assert (action.metavar or choices or action.dest) in text
            assert action.help, f"{tool}: {action.option_strings or action.dest} has no help"
            if action.option_strings and action.default not in (None, "==SUPPRESS==") and action.nargs != 0:
                assert f"(default: {action.default})" in text, f"{tool}: {action.option_strings} shows no default"
            for name in action.option_strings:  # every long option in both spellings
                if name.startswith("--"):
                    for other in (name.replace("_", "-"), "--" + name[2:].replace("-", "_")):
                        assert other in action.option_strings, f"{tool}: {name} without {other}"


# option as underscores, as hyphens, the destination; [value]
SPELLINGS = [
    ("benchmarks", "--data_dir", "--data-dir", "data_dir", "d"),
    ("benchmarks", "--num_fewshot", "--num-fewshot", "num_fewshot", "1"),
    ("benchmarks", "--max_batch_tokens", "--max-batch-tokens", "max_batch_tokens", "100"),
    ("benchmarks", "--paper_protocol", "--paper-protocol", "paper_protocol", None),
    ("benchmarks", "--no_download", "--no-download", "no_download", None),
    ("condensation", "--n_seq", "--n-seq", "n_seq", "3"),
    ("condensation", "--seq_len", "--seq-len", "seq_len", "16"),
    ("condensation", "--batch_size", "--batch-size", "batch_size", "2"),
    ("local", "--out_dir", "--out-dir", "out_dir", "o"),
    ("local", "--val_fraction", "--val-fraction", "val_fraction", "0.5"),
    ("local", "--doc_chars", "--doc-chars", "doc_chars", "10"),
    ("openwebtext", "--num_proc", "--num-proc", "num_proc", "2"),
    ("openwebtext", "--out_dir", "--out-dir", "out_dir", "o"),
    ("shakespeare", "--out_dir", "--out-dir", "out_dir", "o"),
    ("shakespeare_char", "--out_dir", "--out-dir", "out_dir", "o"),
    ("wikitext103", "--out_dir", "--out-dir", "out_dir", "o"),
    ("wikitext103", "--train_from_valid", "--train-from-valid", "train_from_valid", None),
]


@pytest.mark.parametrize("tool, underscores, hyphens, dest, value", SPELLINGS)
def test_both_spellings_parse_to_the_same_value(tool, underscores, hyphens, dest, value):
    factory, _, required = _tools()[tool]
    if value is None:  # a yes/no option
        forms = [[underscores], [hyphens], [f"{underscores}=True"], [f"{hyphens}=True"], [underscores, "True"]]
    else:
        forms = [[underscores, value], [hyphens, value], [f"{underscores}={value}"], [f"{hyphens}={value}"]]
    values = {repr(getattr(factory().parse_args(required + form), dest)) for form in forms}
    assert len(values) == 1, values
    default = getattr(factory().parse_args(required), dest)
    assert values != {repr(default)}  # it did change something


@pytest.mark.parametrize("tool", ["benchmarks", "condensation"])
def test_allow_unsafe_pickle_is_written_as_train_py_writes_it(tool):
    factory, _, required = _tools()[tool]
    parse = lambda *argv: factory().parse_args(required + list(argv)).allow_unsafe_pickle  # noqa: E731
    assert parse() is False
    for form in (["--allow_unsafe_pickle"], ["--allow-unsafe-pickle"], ["--allow_unsafe_pickle=True"],
                 ["--allow-unsafe-pickle=True"], ["--allow_unsafe_pickle", "true"]):
        assert parse(*form) is True, form
    assert parse("--allow_unsafe_pickle=False") is False and parse("--allow-unsafe-pickle=0") is False


def test_a_bad_yes_no_value_is_an_argparse_error(capsys):
    from eval import condensation
    with pytest.raises(SystemExit) as e:
        condensation.arguments().parse_args(["--ckpt", "c", "--allow_unsafe_pickle=maybe"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "expected True or False, got 'maybe'" in err and "Traceback" not in err


def test_an_abbreviation_of_both_spellings_is_not_ambiguous():
    from eval import benchmarks
    assert benchmarks.arguments().parse_args(["--ckpt", "c", "--max-batch", "64"]).max_batch_tokens == 64
    assert benchmarks.arguments().parse_args(["--ckpt", "c", "--max_batch", "64"]).max_batch_tokens == 64


def test_checkpoint_upgrade_arguments():
    import checkpoint
    args = checkpoint.arguments().parse_args(["upgrade", "old.pt", "new.pt"])
    assert (args.command, args.old, args.new) == ("upgrade", "old.pt", "new.pt")
    for argv in ([], ["upgrade", "old.pt"], ["downgrade", "a", "b"]):
        with pytest.raises(SystemExit) as e:
            checkpoint.arguments().parse_args(argv)
        assert e.value.code == 2


def test_both_spellings_helper():
    assert configurator.both_spellings(["--data-dir"]) == ["--data_dir", "--data-dir"]
    assert configurator.both_spellings(["-o", "--out_dir"]) == ["-o", "--out_dir", "--out-dir"]
    assert configurator.both_spellings(["--input"]) == ["--input"]
    assert [configurator.parse_bool(t) for t in ("True", "true", "1", "False", "0", "no")] == [True] * 3 + [False] * 3
