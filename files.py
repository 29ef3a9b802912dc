"""
Writing files so that a crash never leaves half of one, and reading back the JSON files and the
metrics log the project writes.

    with atomic(path) as f:      # f is PATH.tmp; renamed over PATH only when the block finishes
        f.write(...)
    write_json(path, obj)        # the same, for a JSON object (nan and inf as null)
    with atomic_folder(path) as tmp:   # a whole folder, renamed into place when complete
        ...
    append_line(path, json.dumps(record))   # one log line, whole or not at all

A write that fails because the disk is full says so, with the path, the space it needs and the space
left, and leaves the previous file (or folder) as it was.
"""

import contextlib
import errno
import json
import math
import os
import shutil

from errors import InputError


class DiskFullError(InputError):
    """A write ran out of space; the file it was replacing is untouched. cause: the error the writer raised."""

    def __init__(self, message, cause=None):
        super().__init__(message)
        self.cause = cause


def disk_full_message(path, error=None, needed=None):
    """One line naming the path, the space it needs (needed: bytes, or a phrase), the free space where it
    is written, and the cause."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        free = f"{_size(shutil.disk_usage(folder).free)} free"
    except OSError:
        free = "free space unknown"
    need = "" if needed is None else f"it needs {needed if isinstance(needed, str) else 'about ' + _size(needed)}; "
    cause = f" ({type(error).__name__}: {str(error).splitlines()[0][:120]})" if error is not None else ""
    kept = "the previous file is left as it was" if os.path.exists(path) else "nothing was left half-written"
    return (f"no space left on the device to write {path} ({need}{free} in {folder}){cause}; {kept}. Free some "
            "space (or point the output elsewhere) and run the same command again")


def _size(n):
    return f"{n} bytes" if n < 2**20 else f"{n / 2**20:.1f} MB"


def space_needed(path, tmp):
    """What writing path takes, for the message of a full disk: about the size of the file (or folder) it
    replaces, or, for a new one, more than what was written of it (tmp) before the disk filled."""
    def size(p):
        if os.path.isdir(p):
            return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(p) for f in files)
        return os.path.getsize(p) if os.path.exists(p) else 0
    try:
        previous, written = size(path), size(tmp)
    except OSError:
        return None
    return previous if previous else f"more than the {_size(written)} written before the disk filled"


def is_disk_full(error, path):
    """Whether error came from a full disk: ENOSPC (or EDQUOT), or another writer's error (torch's zip
    writer raises RuntimeError) while the file system has (almost) no space left."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        return shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free < 2**20
    except OSError:
        return False


def fsync_folder(path):
    """Make a rename in path's folder durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def disk_full_error(error, path, tmp):
    """The DiskFullError to raise for `error`, raised while path was being written through tmp, when the
    disk is full (asked while tmp is still there, for the space needed); None for any other error."""
    if isinstance(error, Exception) and not isinstance(error, InputError) and is_disk_full(error, path):
        return DiskFullError(disk_full_message(path, error, space_needed(path, tmp)), error)
    return None


def link_or_copy(src, dst):
    """dst becomes a hard link to src where the file system allows (no space, no time), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@contextlib.contextmanager
def atomic(path, mode="w", encoding=None):
    """Open PATH.tmp for writing; when the block ends, flush it to disk and rename it over PATH. If
    the block raises, PATH.tmp is removed and PATH is untouched; a full disk becomes DiskFullError."""
    tmp = path + ".tmp"
    if encoding is None and "b" not in mode:
        encoding = "utf-8"
    try:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        full = disk_full_error(e, path, tmp)  # before tmp goes
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if full is not None:
            raise full from None
        raise
    fsync_folder(path)


@contextlib.contextmanager
def atomic_folder(path):
    """Yield PATH.tmp (created empty); when the block ends, replace PATH with it. If the block
    raises, PATH.tmp is removed and PATH is untouched."""
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        yield tmp
    except BaseException as e:
        full = disk_full_error(e, path, tmp)  # before tmp goes
        shutil.rmtree(tmp, ignore_errors=True)
        if full is not None:
            raise full from None
        raise
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def json_safe(obj):
    """nan and inf are not JSON: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json(path, obj, indent=1):
    """obj as a JSON file, written atomically; nan and inf as null."""
    with atomic(path) as f:
        json.dump(json_safe(obj), f, indent=indent)


def append_line(path, line):
    """Append one line (a metrics.jsonl record) to path, whole or not at all: if the write fails, the file
    is cut back to where it was, so no half record is left behind; a full disk becomes DiskFullError."""
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            _write_all(fd, data)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            if is_disk_full(e, path):
                raise DiskFullError(disk_full_message(path, e, len(data)), e) from None
            raise
    finally:
        os.close(fd)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def read_json(path):
    """A JSON file's object, or None when the file is not there. A file that is there but is not
    JSON is an InputError naming it."""
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise InputError(f"{path} is not valid JSON ({e}); fix or remove it") from None


def read_metrics(path):
    """The records of a metrics.jsonl log (train.py writes one JSON object per line). Blank lines
    are skipped, and so is a last line cut short (no newline at its end: a run killed, or still
    writing, mid-line). Any other line that is not a JSON object stops with an InputError naming
    the file and the line: a log with garbage in the middle is not silently half read."""
    return [record for _, record in _log_lines(path)]


def trim_metrics(path, keep_before):
    """Drop the log records of iterations at or after keep_before (a resumed run redoes them), by
    read_metrics' rule: a cut last line goes silently, any other bad line stops with the log untouched.
    The new log is written beside the old one and renamed over it, so a kill never loses it."""
    if not os.path.exists(path):
        return
    lines = _log_lines(path)
    for n, (line, record) in enumerate(lines, 1):
        if not isinstance(record.get("iter"), int):
            raise InputError(f"{path}: record {n} has no iteration number ({line[:60].strip()!r}); fix or move "
                             "that line (or the file) away and start again")
    kept = [line if line.endswith("\n") else line + "\n" for line, record in lines if record["iter"] < keep_before]
    with open(path, encoding="utf-8") as f:
        if f.read() == "".join(kept):
            return
    with atomic(path) as f:
        f.writelines(kept)


def _log_lines(path):
    """(line, record) for each record line of a metrics.jsonl, by read_metrics' rule."""
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError
        except ValueError:
            if n == len(lines) and not line.endswith("\n"):
                continue
            raise InputError(f"{path}, line {n}: not a log record ({line[:60].strip()!r}); fix or move "
                             "that line (or the file) away and start again") from None
        out.append((line, record))
    return out
