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
import sys

import numpy as np
import torch

from configurator import ArgumentParser
from data.common import nanogpt_char_tokenizer
from errors import InputError, MissingFileError, run_cli
from files import atomic, link_or_copy
from model import GPTConfig, model_config_to_dict, pad_vocab_rows

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
    for resuming a run that will overwrite it. A checkpoint written by nanoGPT's train.py (which
    has no checksum) comes back in this project's entries (from_nanogpt), with a note."""
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
    if is_nanogpt(ckpt):
        return from_nanogpt(ckpt, path)
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


# ---------------------------------------------------------------------- nanoGPT's checkpoints
# nanoGPT's train.py saves {model, optimizer, model_args, iter_num, best_val_loss, config} with
# torch.save: tensors and plain types, so torch.load(weights_only=True) opens it safely. Its model is
# ours with the exact (erf) GELU, and the same parameter names in the same order (so its AdamW state
# lines up with ours); what differs is converted by from_nanogpt.

NANOGPT_ENTRIES = {"model", "optimizer", "model_args", "iter_num", "best_val_loss", "config"}
NANOGPT_MODEL_ARGS = {"n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout"}
# what nanoGPT's config records about the machine it ran on (device='cuda', dtype='bfloat16') and its
# tracking, not about the run: a resumed nanoGPT run uses this machine's settings instead
NANOGPT_MACHINE = ("backend", "device", "dtype", "compile", "wandb_log", "wandb_project", "wandb_run_name")


def is_nanogpt(ckpt):
    """Whether ckpt, a dict read from a file, is what nanoGPT's train.py saves."""
    return ({"model", "model_args"} <= set(ckpt) <= NANOGPT_ENTRIES and isinstance(ckpt["model_args"], dict)
            and set(ckpt["model_args"]) <= NANOGPT_MODEL_ARGS)


def from_nanogpt(ckpt, path):
    """A nanoGPT checkpoint in this project's entries:
      model       its weights, without torch.compile's '_orig_mod.' prefix and without the causal-mask
                  buffer ('.attn.bias') nanoGPT keeps when it has no flash attention; a vocabulary that
                  is not a multiple of 64 (65 characters) gets zero rows up to it, as our model pads
                  (the padding columns never reach a logit or the loss)
      model_args  GPTConfig's, with mlp='gelu_exact' (nanoGPT's nn.GELU is the erf form)
      optimizer   its AdamW state, the token embedding's moments padded the same way
      config      its settings, but those of its machine and tracking (NANOGPT_MACHINE)
      tokenizer   the characters of data/<dataset>/meta.pkl, else GPT-2's (nanoGPT_tokenizer)
    It holds no random-generator or GradScaler state: a resumed run starts fresh ones."""
    try:
        config = GPTConfig(**ckpt["model_args"], mlp="gelu_exact")
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: a nanoGPT checkpoint whose model_args {ckpt['model_args']} do not describe "
                              f"a model ({e})") from None
    V, padded = config.vocab_size, config.padded_vocab_size
    state = {}
    for name, value in ckpt["model"].items():
        name = name.removeprefix("_orig_mod.")
        if not name.endswith(".attn.bias"):
            state[name] = value
    for name in ("transformer.wte.weight", "lm_head.weight"):
        if isinstance(state.get(name), torch.Tensor) and state[name].dim() == 2 and state[name].size(0) == V < padded:
            state[name] = pad_vocab_rows(state[name], padded)
    out = {"model": state, "model_args": model_config_to_dict(config), "iter_num": ckpt.get("iter_num", 0)}
    optimizer = ckpt.get("optimizer")
    if optimizer is not None:
        try:  # the token embedding is the first parameter of the first group, in nanoGPT's AdamW as in ours
            first = optimizer["param_groups"][0]["params"][0]
            moments = optimizer["state"].get(first, {})
        except (KeyError, IndexError, TypeError, AttributeError):
            raise CheckpointError(f"{path}: a nanoGPT checkpoint whose optimizer entry is not an AdamW state") from None
        for key, value in list(moments.items()):
            if isinstance(value, torch.Tensor) and value.dim() == 2 and value.size(0) == V < padded:
                moments[key] = pad_vocab_rows(value, padded)
        out["optimizer"] = optimizer
    best = ckpt.get("best_val_loss", float("inf"))
    out["best_val_loss"] = best.item() if isinstance(best, torch.Tensor) else float(best)  # nanoGPT saves a tensor
    saved = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    out["config"] = {**{k: v for k, v in saved.items() if k not in NANOGPT_MACHINE},
                     **out["model_args"]}  # the model settings as they are (vocab_size from model_args)
    out["tokenizer"] = nanogpt_tokenizer(path, saved.get("dataset"), V)
    out["converted_from"] = "nanoGPT"
    tokenizer = "GPT-2's" if out["tokenizer"] == "gpt2" else f"the {V} characters of data/{saved['dataset']}/meta.pkl"
    print(f"note: {path} is a nanoGPT checkpoint (iteration {out['iter_num']}), read with nanoGPT's parameter names "
          f"and exact GELU; tokenizer: {tokenizer}; it has no checksum, so damage in it cannot be detected",
          file=sys.stderr, flush=True)
    return out


def nanogpt_tokenizer(path, dataset, vocab_size):
    """The tokenizer of the nanoGPT checkpoint at path, found as nanoGPT's sample.py finds it: the
    characters of data/<dataset>/meta.pkl when that file exists (read safely) and has the model's
    vocab_size; looked for in the repository the checkpoint sits in (nanoGPT/out-x/ckpt.pt ->
    nanoGPT/data/<dataset>), in the working directory, and in this repository. Else GPT-2's."""
    if isinstance(dataset, str) and dataset:
        here = os.path.dirname(os.path.abspath(__file__))
        folders = [dataset] + [os.path.join(root, "data", dataset) for root in
                               (os.path.dirname(os.path.dirname(os.path.abspath(path))), os.getcwd(), here)]
        for folder in folders:
            meta = os.path.join(folder, "meta.pkl")
            if os.path.isfile(meta):
                enc = nanogpt_char_tokenizer(meta)
                if enc.vocab_size == vocab_size:
                    return enc.name
    if vocab_size < 50257:
        print(f"note: {path} is a nanoGPT checkpoint with vocab_size={vocab_size}, but no data/{dataset}/meta.pkl "
              "with as many characters was found beside it, in the working directory or in this repository; "
              "its tokenizer is taken to be GPT-2's (sample.py: pass --tokenizer=... to choose it)",
              file=sys.stderr, flush=True)
    return "gpt2"


# ---------------------------------------------------------------------- resuming a run

# a checkpoint without "scaler" and "rng" (nanoGPT's) resumes with fresh ones, and train.py says so
RESUME_ENTRIES = ("model", "optimizer", "model_args", "iter_num", "best_val_loss")


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
    rng = ckpt.get("rng", [None])
    if not isinstance(ckpt["iter_num"], int) or ckpt["iter_num"] < 0 or not isinstance(rng, list) or not rng:
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
    link_or_copy(path, tmp)
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
