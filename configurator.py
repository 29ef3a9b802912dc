"""
Read a run's settings: defaults, then plain-Python config files, then --key=value overrides.

    python train.py config/train_shakespeare.py --batch_size=32 --compile=False
    python train.py config/train_shakespeare.py --batch_size 32 --out-dir out-x   # the same forms
    python train.py --help                                                       # every setting

A config file is a list of assignments (`n_layer = 6`); it may compute values with Python,
but only its names that are settings are read, and each is checked: an unknown name or a value
of the wrong type stops the run before any work, with the name, the close matches, and the
expected type. Unlike nanoGPT's configurator, nothing is exec'd into the caller's globals.

An override is --key=value or --key value (the next argument is the value, unless it starts with
--); a hyphen may stand for an underscore (--out-dir is --out_dir). -h or --help prints every
setting with its default and the comment beside it in the source (HelpSource), then exits.

The argparse tools (data preparers, eval tools, checkpoint.py) share the same conventions through
ArgumentParser below: --out_dir and --out-dir both work, --help shows each option's default, and a
yes/no option (add_flag) takes --flag, --flag=True and --flag=False.
"""

import argparse
import ast
import dataclasses
import io
import os
import shutil
import sys
import textwrap
import tokenize
import types

from errors import InputError, did_you_mean


class ConfigError(InputError):
    pass


def _type_names(allowed):
    return " or ".join("None" if t is type(None) else t.__name__ for t in allowed)


def _check(key, value, allowed, source):
    if isinstance(value, bool) and bool not in allowed:
        raise ConfigError(f"{source}: {key}={value!r} is a bool, expected {_type_names(allowed)}")
    if isinstance(value, int) and not isinstance(value, bool) and int not in allowed and float in allowed:
        return float(value)  # 3 is fine where a float is expected
    if isinstance(value, tuple) and list in allowed:
        return list(value)
    if not isinstance(value, tuple(allowed)):
        raise ConfigError(f"{source}: {key}={value!r} has type {type(value).__name__}, "
                          f"expected {_type_names(allowed)}")
    return value


def _unknown(key, known, source):
    return ConfigError(f"{source}: unknown config key {key!r}{did_you_mean(key.replace('-', '_'), known)}")


def parse_value(text):
    """'3' -> 3, '1e-3' -> 0.001, 'True' -> True, 'None' -> None, [1,2] -> list; else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _run_config_file(path, namespace):
    """exec a config file; its mistakes (a syntax error, an undefined name, a failing call) become
    a ConfigError naming the file and the line of it that failed."""
    try:
        with open(path, encoding="utf-8") as f:
            code = compile(f.read(), path, "exec")
    except (SyntaxError, ValueError, UnicodeDecodeError) as e:  # ValueError: a null byte in the source
        where = f"{path}, line {e.lineno}" if getattr(e, "lineno", None) else path
        raise ConfigError(f"{where}: {getattr(e, 'msg', e)}; a config file is Python assignments like n_layer = 6") from None
    try:
        exec(code, namespace)
    except Exception as e:
        tb, line = e.__traceback__, None
        while tb is not None:  # the innermost frame that is the config file itself
            if tb.tb_frame.f_code.co_filename == path:
                line = tb.tb_lineno
            tb = tb.tb_next
        if line is None:
            raise
        raise ConfigError(f"{path}, line {line}: {type(e).__name__}: {e}") from None


HELP_FLAGS = ("-h", "--help")  # never a value: write --start=-h for that


def _override(argv, i, config):
    """The override starting at argv[i]: (key, text, index of the next argument).
    --key=value, or --key value where the next argument is the value unless it starts with --."""
    arg = argv[i]
    written, has_value, text = arg[2:].partition("=")
    if not written:
        raise ConfigError(f"override {arg!r} must look like --key=value")
    key = written if written in config else written.replace("-", "_")  # --out-dir is --out_dir
    if key not in config:
        raise _unknown(written, config, "command line")
    if has_value:
        return key, text, i + 1
    if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
        return key, argv[i + 1], i + 2
    if i + 1 == len(argv):
        raise ConfigError(f"command line: --{written} needs a value: write --{written}=VALUE or --{written} VALUE")
    raise ConfigError(f"command line: --{written} needs a value ({argv[i + 1]!r} after it is another option): "
                      f"write --{written}=VALUE (the only form for a value that starts with --)")


def load_config(defaults, argv, types_=None, help=None):
    """defaults: {key: default value}. types_: {key: tuple of allowed types} for keys whose
    default (None, say) does not tell the type. argv: config file paths, --key=value and
    --key value overrides, in the order given. Returns the settings, {key: value}.

    -h or --help anywhere in argv prints the help and exits (SystemExit(0)) before anything is read.
    help: what that prints: a HelpSource (the settings' comments in their source), a string, a
    function returning one, or None (the settings and their defaults alone)."""
    return load_settings(defaults, argv, types_, help)[0]


def load_settings(defaults, argv, types_=None, help=None):
    """load_config's settings, and which of them argv gave: (config, given), given being
    {key: where its value came from, "command line" or a config file's path}. A resumed run
    (train.py) takes every setting it was not given from its checkpoint."""
    if any(arg in HELP_FLAGS for arg in argv):
        try:
            print(help_text(help, defaults, types_), flush=True)
        except BrokenPipeError:  # `train.py --help | head` stopped reading: no traceback for that
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's own flush fails quietly
        raise SystemExit(0)
    allowed = {k: (type(v),) for k, v in defaults.items()}
    allowed.update(types_ or {})
    config, given = dict(defaults), {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            key, text, i = _override(argv, i, config)
            value = parse_value(text)
            if str in allowed[key] and not isinstance(value, tuple(allowed[key])):
                value = text  # --out_dir=2024 means the string "2024"
            config[key] = _check(key, value, allowed[key], "command line")
            given[key] = "command line"
            continue
        i += 1
        if not os.path.isfile(arg):
            raise ConfigError(f"config file {arg!r} not found (config files live in config/; "
                              "overrides are written --key=value or --key value)")
        namespace = {"__file__": os.path.abspath(arg)}  # lets a config file include another beside it
        _run_config_file(arg, namespace)
        for key, value in namespace.items():
            if key.startswith("_") or isinstance(value, types.ModuleType) or callable(value):
                continue  # imports, helpers and dunders are not settings
            if key not in config:
                raise _unknown(key, config, arg)
            config[key] = _check(key, value, allowed[key], arg)
            given[key] = arg
    return config, given


# ---------------------------------------------------------------------- --help

@dataclasses.dataclass
class HelpSource:
    """Where --help finds the settings' meanings: `name` in the Python file `path`, either a dataclass

        class Config:
            # I/O                               <- a section heading
            out_dir: str = "out"  # meaning     <- a setting and its meaning
            #                       more words  <- the meaning continued (# and 2+ spaces, right below)

    or a dict of settings, `DEFAULTS = dict(out_dir="out",  # meaning` (or a {...} literal)."""
    path: str
    name: str = "Config"
    prog: str | None = None  # None: "python <file name>"
    description: str | None = None  # None: the first paragraph of the file's docstring
    epilog: str | None = None  # printed after the settings


@dataclasses.dataclass
class Setting:
    key: str
    type: str  # the annotation as written ("int | None"); "" in a dict
    default: str  # the default as written in the source
    meaning: str
    section: str  # the heading above it ("" before the first one)


def _comments(source):
    """{line number: (comment text without '#', whether the comment is alone on its line)}."""
    lines = source.splitlines()
    found = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            row, col = tok.start
            found[row] = (tok.string[1:], not lines[row - 1][:col].strip())
    return found


def _fields(tree, name):
    """(the nodes that hold the settings of `name`: (key, annotation, value, first line, last line),
    the first line to look for headings on, the docstring)."""
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            fields = [(s.target.id, s.annotation, s.value, s.lineno, s.end_lineno) for s in node.body
                      if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)]
            return fields, node.lineno + 1, ast.get_docstring(node)
        targets = node.targets if isinstance(node, ast.Assign) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            value = node.value
            if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "dict":
                fields = [(kw.arg, None, kw.value, kw.lineno, kw.end_lineno) for kw in value.keywords if kw.arg]
            elif isinstance(value, ast.Dict):
                fields = [(k.value, None, v, k.lineno, v.end_lineno) for k, v in zip(value.keys, value.values)
                          if isinstance(k, ast.Constant) and isinstance(k.value, str)]
            else:
                break
            return fields, node.lineno + 1, None
    return None, None, None


def read_settings(path, name="Config"):
    """The settings of the dataclass or dict `name` in the file `path`, in their order, each with
    its meaning (the comment beside it and the lines continuing it) and its section heading.
    Returns (settings, the class's docstring or None, the file's docstring or None)."""
    with open(path, encoding="utf-8") as f:
        source = f.read()
    tree = ast.parse(source, path)
    fields, start, doc = _fields(tree, name)
    if fields is None:
        raise ValueError(f"{path} has no dataclass or dict named {name}")
    comments = _comments(source)
    settings, section = [], ""
    for key, annotation, value, first, last in fields:
        heading = [comments[n][0].strip() for n in range(start, first)
                   if n in comments and comments[n][1]]  # comment lines between the settings
        if heading:
            section = "\n".join(heading)
        meaning = [comments[n][0].strip() for n in range(first, last + 1) if n in comments and not comments[n][1]]
        n = last + 1
        while n in comments and comments[n][1] and comments[n][0].startswith("  "):
            meaning.append(comments[n][0].strip())  # '#   more words' right below: the meaning continued
            n += 1
        start = n
        settings.append(Setting(key, ast.get_source_segment(source, annotation) if annotation else "",
                                ast.get_source_segment(source, value) if value else "", " ".join(meaning), section))
    return settings, doc, ast.get_docstring(tree)


def _columns():
    return max(60, min(120, shutil.get_terminal_size((100, 24)).columns - 2))  # as argparse wraps, at most 120


def _setting_lines(left, meaning, width, indent=38):
    """'  left      meaning', the meaning wrapped in a column of its own (below left when left is long)."""
    if not meaning:
        return ["  " + left]
    wrapped = textwrap.wrap(meaning, max(30, width - indent), break_on_hyphens=False)
    first = "  " + left
    lines = [first.ljust(indent) + wrapped[0]] if len(first) < indent - 1 else [first, " " * indent + wrapped[0]]
    return lines + [" " * indent + w for w in wrapped[1:]]


OVERRIDES = ("Settings come from their defaults, then each config file (Python assignments such as "
             "n_layer = 6), then each override, in the order given. An override is --key=value or --key value "
             "(--key=value for a value that starts with --); a hyphen may stand for an underscore "
             "(--out-dir is --out_dir). Values are Python literals (12, 6e-4, True, None, [0, 1], "
             "{'a': 1}); anything else is a string.")


def _shown_default(setting, defaults):
    """The default as the source writes it (6e-4, not 0.0006), unless the source computes it (5 * 8):
    then the value itself."""
    if defaults is None or setting.key not in defaults:
        return setting.default
    value = defaults[setting.key]
    try:
        if ast.literal_eval(setting.default) == value:
            return setting.default
    except (ValueError, SyntaxError, TypeError):
        pass
    return repr(value)


def settings_help(source, defaults=None):
    """The --help text of the settings described by source (a HelpSource): usage, description, and
    every setting under its section heading as 'name: type = default' beside its meaning. With
    defaults, the values shown are those (40, not 5 * 8), and its keys missing from the source are
    listed too, so the help never leaves a setting out."""
    settings, class_doc, module_doc = read_settings(source.path, source.name)
    if defaults is not None:
        settings = [s for s in settings if s.key in defaults]
        known = {s.key for s in settings}
        settings += [Setting(k, "", "", "", "other settings") for k in defaults if k not in known]
    prog = source.prog or f"python {os.path.basename(source.path)}"
    description = source.description
    if description is None and module_doc:
        description = module_doc.strip().split("\n\n")[0]  # its first paragraph
    width = _columns()
    out = [f"usage: {prog} [-h] [CONFIG_FILE ...] [--key=value ...] [--key value ...]", ""]
    for text in (description, class_doc, OVERRIDES):
        for paragraph in (text or "").strip().split("\n\n"):
            if paragraph.strip():
                out += textwrap.wrap(" ".join(paragraph.split()), width, break_on_hyphens=False) + [""]
    section = None
    for s in settings:
        if s.section != section:
            section = s.section
            if section:
                out += ([""] if out[-1] else []) + [f"# {line}" for line in section.splitlines()]
        default = _shown_default(s, defaults)
        left = f"{s.key}: {s.type} = {default}" if s.type else f"{s.key} = {default}"
        out += _setting_lines(left, s.meaning, width)
    if source.epilog:
        out += [""] + textwrap.wrap(" ".join(source.epilog.split()), width, break_on_hyphens=False)
    return "\n".join(out)


def help_text(help, defaults, types_=None):
    """What --help prints for load_config's `help` argument (see load_config)."""
    if isinstance(help, HelpSource):
        return settings_help(help, defaults)
    if callable(help):
        return help()
    if isinstance(help, str):
        return help
    width = _columns()  # no source given: the settings and their defaults
    prog = f"python {os.path.basename(sys.argv[0])}" if sys.argv and sys.argv[0] else "python"
    out = [f"usage: {prog} [-h] [CONFIG_FILE ...] [--key=value ...] [--key value ...]", ""]
    out += textwrap.wrap(OVERRIDES, width, break_on_hyphens=False) + [""]
    for key, value in defaults.items():
        allowed = (types_ or {}).get(key)
        out.append(f"  {key}: {_type_names(allowed)} = {value!r}" if allowed else f"  {key} = {value!r}")
    return "\n".join(out)


# ---------------------------------------------------------------------- the argparse tools

def parse_bool(text):
    """A yes/no option's value: True/False as train.py's settings write them (also true, 1, yes, ...)."""
    word = text.strip().lower()
    if word in ("true", "1", "yes", "on"):
        return True
    if word in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def both_spellings(names):
    """['--data-dir'] -> ['--data_dir', '--data-dir']: every long option also written the other way,
    the underscore spelling first (as in train.py's settings; argparse's dest is the same for both)."""
    out = []
    for name in names:
        spellings = [name]
        if name.startswith("--"):
            spellings = ["--" + name[2:].replace("-", "_"), "--" + name[2:].replace("_", "-")]
        for spelling in spellings:
            if spelling not in out:
                out.append(spelling)
    return out


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """A docstring description as it is written (a one-line one wrapped); each option with all its
    spellings, its metavar once, and its default (unless it has none, or the help already says it)."""

    def _fill_text(self, text, width, indent):
        if "\n" in text.strip():  # a docstring: its line breaks and indented examples kept
            return super()._fill_text(text, width, indent)
        return argparse.HelpFormatter._fill_text(self, text, width, indent)

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" in text or action.default in (None, argparse.SUPPRESS) or action.required:
            return text
        if not action.option_strings and action.nargs not in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return text  # a required positional has no default
        return text + " (default: %(default)s)"

    def _format_action_invocation(self, action):
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        metavar = self._format_args(action, self._get_default_metavar_for_optional(action))
        return f"{', '.join(action.option_strings)} {metavar}"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the project's conventions: every --long_option also answers to --long-option (and
    the other way round), --help lists each option's default (HelpFormatter), and add_flag makes a
    yes/no option that takes --flag, --flag=True and --flag=False alike."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *names, **kwargs):
        return super().add_argument(*both_spellings(names), **kwargs)

    def add_flag(self, *names, help):
        """A yes/no option, False unless given: --name, --name=True, --name=False (as train.py writes it)."""
        return self.add_argument(*names, type=parse_bool, nargs="?", const=True, default=False,
                                 metavar="True|False", help=help)

    def _get_option_tuples(self, option_string):
        # an abbreviation (--batch for --batch_size) matching both spellings of one option is not ambiguous
        tuples, seen = [], set()
        for t in super()._get_option_tuples(option_string):
            if id(t[0]) not in seen:
                seen.add(id(t[0]))
                tuples.append(t)
        return tuples
