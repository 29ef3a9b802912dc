"""
How every command-line tool reports a bad input: one message on stderr, exit status 1, no traceback.

Library code raises InputError (or a subclass) when something the user gave is wrong: a
setting, a file, a folder, a line of a file. Its message says what is wrong, where (the file,
line or key) and how to fix it. Each CLI's entry point is

    if __name__ == "__main__":
        run_cli(main)

and run_cli prints an InputError as "error: <message>". Every other exception is a bug and
keeps its traceback. The classes subclass ValueError (and FileNotFoundError for a missing
file), so callers that catch those keep working.
"""

import difflib
import sys


class InputError(ValueError):
    """Something the user gave is wrong; str(e) says what, where, and how to fix it."""


class MissingFileError(InputError, FileNotFoundError):
    """An input file or folder that is not there."""


def did_you_mean(name, known):
    """'; did you mean a, b?' with up to three close matches of a mistyped name among `known`, else ''."""
    close = difflib.get_close_matches(name, list(known), n=3)
    return f"; did you mean {', '.join(close)}?" if close else ""


def run_cli(main, argv=None):
    """main(argv), with an InputError turned into one line on stderr and exit status 1."""
    try:
        return main(argv)
    except InputError as e:
        close_progress_bars()
        sys.exit(f"error: {e}")


def close_progress_bars():
    """End the open tqdm bars (e.g. train.py's, when an error stops the loop), so that the message that
    follows starts on a line of its own."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", None) or ()):
        bar.close()
