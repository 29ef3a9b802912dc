"""
Checkpoint files: what they hold, how they are written, and how they are read.

A checkpoint is a torch.save file of one dict whose values are tensors and plain Python
types (dict, list, tuple, str, int, float, bool, None) and nothing else, so it is read with
torch.load(weights_only=True): that unpickler builds only those types, and opening a
checkpoint, even one from a stranger, cannot run code. Two entries sit beside the payload:

    format   "disperse-gpt-checkpoint/1"
    sha256   digest of every other entry: each tensor's dtype, shape and bytes, each plain
             value, in order. Checked on every read: a damaged file is an error that names
             it, not a model with silently different weights (zip's CRCs are not checked
             by torch.load).

Writes go to PATH.tmp, are flushed to disk, then renamed over PATH (files.atomic), so a crash
at any moment leaves either the old checkpoint or the new one, never half of one; a full disk is
one line naming the path and the space left.

Resuming a run also needs the state beside the weights: every random generator (capture_rng,
restore_rng), and checks that the file fits the run before any step (read_for_resume, fits,
check_state); those live here too.

Files in no format (written before this one, which pickled numpy's and Python's RNG
states, or by another program) can only be opened by full unpickling, which runs any code
the file carries. read(path, allow_unsafe_pickle=True) does that after a warning; do it
only for files you made yourself or whose source you trust. To convert such a file once:

    python checkpoint.py upgrade OLD.pt NEW.pt      # unpickles OLD.pt: only if you trust it
"""

import contextlib
import hashlib
import os
import random
import re
import shutil
import sys

import numpy as np
import torch

from configurator import ArgumentParser
from errors import InputError, MissingFileError, run_cli
from files import atomic

FORMAT = "disperse-gpt-checkpoint/1"
UNSAFE_HINT = ("if you made this file yourself or trust its source, open it with the allow-unsafe-pickle "
               "option (train.py, sample.py: --allow_unsafe_pickle=True; python -m eval.*: "
               "--allow-unsafe-pickle; Python: allow_unsafe_pickle=True); the next checkpoint a resumed "
               "run writes is in the safe format")


class CheckpointError(InputError):
    """A checkpoint that cannot be read or trusted; the message names the file."""


def _feed(h, obj, where):
    """Feed obj into the hash h, unambiguously: a type tag, then a length or the value."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(obj.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().data)
    elif isinstance(obj, dict):
        h.update(f"d{len(obj)}".encode())
        for k, v in obj.items():
            _feed(h, k, where)
            _feed(h, v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'l' if isinstance(obj, list) else 't'}{len(obj)}".encode())
        for i, v in enumerate(obj):
            _feed(h, v, f"{where}[{i}]")
    elif isinstance(obj, str):
        data = obj.encode()
        h.update(f"s{len(data)}:".encode() + data)
    elif obj is None or isinstance(obj, (bool, int, float, torch.dtype)):
        text = repr(obj).encode()  # repr(float) round-trips exactly
        h.update(f"{type(obj).__name__}{len(text)}:".encode() + text)
    else:
        raise TypeError(f"checkpoint entry {where} is a {type(obj).__module__}.{type(obj).__name__}; a checkpoint "
                        "holds only tensors and plain Python types (convert it, e.g. numpy arrays with .tolist())")


def digest(payload):
    """sha256 hex digest of a checkpoint's contents (every entry but 'sha256')."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in payload.items() if k != "sha256"}, "checkpoint")
    return h.hexdigest()


def write(path, payload):
    """Write payload (a dict of tensors and plain types) atomically, with its format and checksum."""
    ckpt = {"format": FORMAT, **payload}
    ckpt["sha256"] = digest(ckpt)  # also refuses anything that is not a tensor or a plain type
    with atomic(path, "wb") as f:
        torch.save(ckpt, f)


def read(path, allow_unsafe_pickle=False, require_checksum=True):
    """The payload of the checkpoint at path (its entries but 'format' and 'sha256'), on the CPU,
    after checking its format and checksum. The file is only read, never changed.
    require_checksum=False lets a file of plain tensors without a checksum (written by other
    code; opening it runs nothing) through with a warning: fine for looking at a model, not
    for resuming a run that will overwrite it."""
    if not os.path.isfile(path):
        raise MissingFileError(f"no checkpoint file at {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:2] != b"PK" and magic[:1] != b"\x80":  # torch.save writes a zip file (or, long ago, a pickle)
        raise CheckpointError(f"{path} is not a torch checkpoint (it starts with bytes {magic!r}): it is "
                              "truncated, zeroed or another kind of file. Restore a copy or train again.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        refused = "Weights only load failed" in str(e) or "legacy .tar format" in str(e)
        if not refused:
            raise CheckpointError(f"could not read checkpoint {path} ({_first_sentence(e)}); "
                                  "it is truncated or damaged. Restore a copy or train again.") from None
        if not allow_unsafe_pickle:
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
            raise CheckpointError(
                f"{path} is not a safe checkpoint: it holds pickled Python objects "
                f"({'such as ' + found.group(1) if found else 'in the legacy format'}), "
                "and unpickling them can run arbitrary code. It was written by an older disperse-gpt or by "
                f"another program; {UNSAFE_HINT}.") from None
        ckpt = _unsafe_load(path)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} holds a {type(ckpt).__name__}, not a checkpoint (a dict with 'model', "
                              "'model_args', ...); it was not written by this project's train.py")
    if "sha256" not in ckpt:
        if require_checksum and not allow_unsafe_pickle:
            raise CheckpointError(f"{path} has no checksum (format {ckpt.get('format', 'none')!r}), so its contents "
                                  f"cannot be verified; {UNSAFE_HINT}.")
        print(f"warning: {path} has no checksum (it was not written by checkpoint.py), so damage in it "
              "cannot be detected", flush=True)
        return ckpt
    if ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} has format {ckpt.get('format')!r}; this code reads {FORMAT!r} "
                              "(update disperse-gpt to read newer checkpoints)")
    stored = ckpt.pop("sha256")
    try:
        actual = digest(ckpt)
    except TypeError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if actual != stored:
        raise CheckpointError(f"{path} is damaged: its contents do not match the checksum stored in it (sha256 "
                              f"{actual[:16]}... instead of {stored[:16]}...). It was left as it is; restore a copy "
                              "(e.g. ckpt_best.pt) or train again.")
    del ckpt["format"]
    return ckpt


def _first_sentence(error):
    return f"{type(error).__name__}: {str(error).splitlines()[0].split('. ')[0]}" if str(error) else type(error).__name__


def _unsafe_load(path):
    print(f"warning: opening {path} with full unpickling (allow_unsafe_pickle): this runs any code the file "
          "carries. Do this only for files you made yourself or whose source you trust.", flush=True)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"could not read checkpoint {path} ({_first_sentence(e)}); "
                              "it is truncated or damaged. Restore a copy or train again.") from None


def check_finite(tensors, path):
    """Raise CheckpointError if any floating-point tensor in a nested dict/list holds NaN or inf."""
    def walk(obj, where):
        if isinstance(obj, torch.Tensor):
            if obj.is_floating_point() and not torch.isfinite(obj).all():
                bad = (~torch.isfinite(obj)).sum().item()
                raise CheckpointError(f"{path}: {where} holds {bad} non-finite values (NaN or inf); the training "
                                      "that wrote it had diverged. Resume from an earlier copy or train again.")
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{where}.{k}")
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(v, f"{where}[{i}]")
    walk(tensors, "checkpoint")


def to_plain(obj):
    """obj with numpy arrays and scalars (what older checkpoints pickled) turned into lists and numbers."""
    if isinstance(obj, dict):
        return type(obj)((k, to_plain(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj)
    if type(obj).__module__ == "numpy":
        return obj.tolist()  # ndarray -> nested lists; numpy scalar -> int/float/bool
    return obj


# ---------------------------------------------------------------------- resuming a run

RESUME_ENTRIES = ("model", "optimizer", "scaler", "model_args", "iter_num", "best_val_loss", "rng")


def read_for_resume(path, allow_unsafe_pickle=False):
    """The checkpoint to resume from, verified: its checksum, its entries, and finite numbers
    everywhere in the model and optimizer states (a diverged run is not resumed)."""
    if not os.path.exists(path):
        raise MissingFileError(f"init_from='resume' but there is no checkpoint at {path}; "
                               "check out_dir or start with init_from='scratch'")
    ckpt = read(path, allow_unsafe_pickle)
    missing = [k for k in RESUME_ENTRIES if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}; it was not written by this train.py")
    if not isinstance(ckpt["iter_num"], int) or ckpt["iter_num"] < 0 or not isinstance(ckpt["rng"], list) or not ckpt["rng"]:
        raise CheckpointError(f"checkpoint {path}: iter_num={ckpt['iter_num']!r} or its RNG states are malformed")
    check_finite({"model": ckpt["model"], "optimizer": ckpt["optimizer"]["state"]}, path)
    return ckpt


@contextlib.contextmanager
def fits(path, what):
    """Loading a checkpoint's `what` into live objects: a mismatch is the file's fault, so it is
    reported as such (with torch's own account of what did not fit), before any step runs."""
    try:
        yield
    except InputError:
        raise
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
        raise CheckpointError(f"checkpoint {path}: its {what} does not fit this run "
                              f"({type(e).__name__}: {e})") from None


def check_state(model, model_state, optimizer):
    """What load_state_dict lets through: weights of another dtype (it casts them), AdamW moments
    of another shape or dtype, or a negative second moment."""
    for name, value in model.state_dict().items():
        if model_state[name].dtype != value.dtype:
            raise ValueError(f"model.{name} is {model_state[name].dtype}, the model's is {value.dtype}")
    for group in optimizer.param_groups:
        for p in group["params"]:
            for name, value in optimizer.state.get(p, {}).items():
                if not isinstance(value, torch.Tensor) or name == "step":
                    continue
                if value.shape != p.shape or not value.is_floating_point():
                    raise ValueError(f"{name} is {value.dtype} {tuple(value.shape)} for a parameter of shape {tuple(p.shape)}")
                if name == "exp_avg_sq" and (value < 0).any():
                    raise ValueError(f"{name} has negative entries (it is a running mean of squares)")


def capture_rng(aux_gen):
    """Every generator's state as tensors and lists of numbers: a checkpoint holds nothing else."""
    kind, keys, pos, has_gauss, cached_gauss = np.random.get_state()
    version, mt_state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(), "numpy": [kind, keys.tolist(), pos, has_gauss, cached_gauss],
        "python": [version, list(mt_state), gauss_next],
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "aux": aux_gen.get_state(),
    }


def restore_rng(state, aux_gen):
    """Inverse of capture_rng (also reads the tuples and arrays of checkpoints older than format 1)."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached_gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached_gauss))
    version, mt_state, gauss_next = state["python"]
    random.setstate((version, tuple(mt_state), gauss_next))
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    aux_gen.set_state(state["aux"])


def keep_copy(path, copy_path):
    """copy_path becomes a copy of path: a hard link where the file system allows (ckpt.pt is
    replaced by a rename at every save, so the link keeps the old file at no cost), else a copy."""
    tmp = copy_path + ".tmp"
    if os.path.exists(tmp):
        os.remove(tmp)
    try:
        os.link(path, tmp)
    except OSError:
        shutil.copyfile(path, tmp)
    os.replace(tmp, copy_path)


def arguments():
    """The command line: python checkpoint.py upgrade OLD.pt NEW.pt (configurator.ArgumentParser, like every tool)."""
    parser = ArgumentParser(prog="python checkpoint.py",
                            description="Convert a checkpoint in no format (written before format 1, or by another "
                                        f"program) to {FORMAT}, which opens without unpickling.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="what to do")
    upgrade = commands.add_parser("upgrade", help="rewrite OLD.pt as NEW.pt in the safe format",
                                  description="Rewrite OLD.pt as NEW.pt in the safe format. Reading OLD.pt "
                                              "unpickles it, which runs any code it carries: only for a file you trust.")
    upgrade.add_argument("old", metavar="OLD.pt", help="the checkpoint to convert (unpickled: only if you trust it)")
    upgrade.add_argument("new", metavar="NEW.pt", help="the safe copy to write; not OLD.pt, so the original stays "
                                                       "until you have checked the copy")
    return parser


def main(argv):
    args = arguments().parse_args(argv)
    old, new = args.old, args.new
    if os.path.abspath(old) == os.path.abspath(new):
        raise InputError("NEW.pt must differ from OLD.pt, so the original stays until you have checked the copy")
    write(new, to_plain(read(old, allow_unsafe_pickle=True)))
    print(f"wrote {new}: format {FORMAT}, verified on every read")


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
