"""
Read a run's settings: defaults, then plain-Python config files, then --key=value overrides.

    python train.py config/train_shakespeare.py --batch_size=32 --compile=False

A config file is a list of assignments (`n_layer = 6`); it may compute values with Python,
but only its names that are settings are read, and each is checked: an unknown name or a value
of the wrong type stops the run before any work, with the name, the close matches, and the
expected type. Unlike nanoGPT's configurator, nothing is exec'd into the caller's globals.
"""

import ast
import difflib
import os
import types

from errors import InputError


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
    close = difflib.get_close_matches(key, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"{source}: unknown config key {key!r}{hint}")


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


def load_config(defaults, argv, types_=None):
    """defaults: {key: default value}. types_: {key: tuple of allowed types} for keys whose
    default (None, say) does not tell the type. argv: config file paths and --key=value."""
    allowed = {k: (type(v),) for k, v in defaults.items()}
    allowed.update(types_ or {})
    config = dict(defaults)
    for arg in argv:
        if arg.startswith("--"):
            if "=" not in arg:
                raise ConfigError(f"override {arg!r} must look like --key=value")
            key, text = arg[2:].split("=", 1)
            if key not in config:
                raise _unknown(key, config, "command line")
            value = parse_value(text)
            if str in allowed[key] and not isinstance(value, tuple(allowed[key])):
                value = text  # --out_dir=2024 means the string "2024"
            config[key] = _check(key, value, allowed[key], "command line")
        else:
            if not os.path.isfile(arg):
                raise ConfigError(f"config file {arg!r} not found (config files live in config/; "
                                  "overrides are written --key=value)")
            namespace = {"__file__": os.path.abspath(arg)}  # lets a config file include another beside it
            _run_config_file(arg, namespace)
            for key, value in namespace.items():
                if key.startswith("_") or isinstance(value, types.ModuleType) or callable(value):
                    continue  # imports, helpers and dunders are not settings
                if key not in config:
                    raise _unknown(key, config, arg)
                config[key] = _check(key, value, allowed[key], arg)
    return config
