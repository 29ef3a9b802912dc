"""
Training past one GPU's memory: fully sharded data parallelism (FSDP2, torch.distributed.fsdp.fully_shard)
for model.py's GPT, and its checkpoints as Distributed Checkpoint (DCP) folders.

DDP keeps a whole copy of the weights, the gradients and AdamW's two moments on every GPU: 16 bytes per
float32 parameter (20 with DDP's gradient buckets). FSDP2 keeps 1/N of each on each of N GPUs, and
gathers one block's weights at a time, just before that block runs:

    forward   all-gather block i's weights, run it, free the gathered copy   (for each block in turn)
    backward  all-gather block i's weights again, compute its gradients, reduce-scatter them: each
              rank keeps the mean gradient of its own 1/N of the weights, and frees the rest
    step      AdamW updates each rank's 1/N of the weights with its 1/N of the moments

Each parameter is a DTensor sharded on its first dimension; the model's code does not change, and its
outputs (logits, loss, the hidden states the dispersion loss reads) are ordinary tensors of this rank's
batch, as under DDP. The data order is DDP's: rank r's micro-step m of iteration i reads the batch
keyed (seed, 0, i, m * world + r), so N ranks x M micro-steps read what 1 rank x N*M micro-steps reads.

    model = GPT(config)                                  # on every rank, same seed: the same weights
    shard_model(model, param_dtype=torch.bfloat16)       # in place: blocks, then the root
    optimizer = model.configure_optimizers(...)          # after sharding: AdamW over the shards
    for micro_step ...:
        with no_sync(model, last):                       # reduce-scatter on the last micro-step only
            loss = model(x, y)[1]; (loss / accum).backward()
    norm = clip_grad_norm_(model.parameters(), 1.0)      # the global norm, over every shard
    optimizer.step()
    save(folder, model, optimizer, extra)                # a DCP folder, written atomically
    extra = load(folder, model, optimizer)               # into a fresh sharded model, any world size

MFU is unchanged: an iteration costs the same FLOPs (the model's, per token, times the tokens of all
ranks) on the same devices (peak FLOPs times the world size); FSDP adds communication, not compute.

A checkpoint folder holds DCP's files (.metadata and one __<rank>_0.distcp per rank that wrote) and
extra.pt: the run's other state (iter_num, best_val_loss, config, model_args, every rank's RNG states,
tokenizer, ...), written by checkpoint.write with the sha256 of every DCP file beside it, so a damaged
or half-copied folder is an error that names it. A resumed run may have another number of ranks: DCP
reshards on load. To get the project's single file, or a Hugging Face folder (one process, no GPU):

    python fsdp.py to-ckpt out/ckpt_dcp out/ckpt.pt
    python fsdp.py to-hf out/ckpt_dcp hf_model/
    python fsdp.py from-ckpt out/ckpt.pt out/ckpt_dcp      # a one-process or DDP run, to go on under FSDP

train.py --parallel=fsdp does all of this (and unsupported(cfg) says which of its settings cannot run
sharded); docs/distributed.md says how to launch it (torchrun, SLURM) and what each layout costs in memory.
"""

import contextlib
import hashlib
import os
import shutil
import sys
import warnings

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_model_state_dict, set_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

import checkpoint
from errors import InputError, MissingFileError, run_cli
from files import DiskFullError, disk_full_message, fsync_folder, is_disk_full, link_or_copy, space_needed
from model import GPT, model_config_from_dict

EXTRA = "extra.pt"  # the non-tensor state, beside DCP's files
FORMAT = "disperse-gpt-dcp/1"


# ---------------------------------------------------------------------- processes

def rank_world():
    """(rank, world size): (0, 1) without a process group (one process, e.g. the converter)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextlib.contextmanager
def _dcp_quietly():
    """DCP without a process group warns that it assumes one process: here that is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _gather(obj):
    """obj from every rank, in rank order (a list of one without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


# ---------------------------------------------------------------------- sharding

def shard_model(model, param_dtype=None, reduce_dtype=torch.float32, compile=False, device_type=None):
    """Shard model (a GPT) in place across every rank of the default process group, and return it.

    Each transformer block becomes one FSDP group (its weights are gathered just before it runs and
    freed after), then the root: wte, wpe, ln_f and lm_head in one group, which a tied wte / lm_head
    needs (one Parameter in two modules must sit in one group). The RoPE tables, non-persistent
    buffers, are moved to the device whole (buffers are never sharded).

    param_dtype: None (compute in the weights' dtype, float32), or torch.bfloat16: the gathered
    weights and so the compute are bf16, while the shards, the gradients after reduction
    (reduce_dtype, float32) and AdamW's state stay float32 (this replaces autocast; keep autocast off).
    compile: torch.compile each block in place (nn.Module.compile: parameter names get no _orig_mod.
    prefix) before sharding it, the order torchtitan uses; tested to train as one process on CPU.
    device_type: "cuda" or "cpu"; None: where the model's weights are now. Weights still on the CPU
    are moved to the device block by block, so a model larger than one GPU can be built on the host.
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("shard_model needs a process group: launch with torchrun and call "
                           "dist.init_process_group first")
    if param_dtype == torch.float16:
        raise InputError("FSDP in float16 would need a sharded gradient scaler, which this trainer does not have; "
                         "use dtype=bfloat16 (or float32)")
    device_type = device_type or next(model.parameters()).device.type
    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    for block in model.transformer.h:
        if compile:
            block.compile()
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)  # the rest: embeddings, ln_f, the head
    # the logits are a view (the padded head's output without its padding columns), which FSDP warns of
    # in case the caller changes them in place; nothing here does
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPGPT\) returned a view tensor")
    if _reduce_scatter_sums(mesh):
        # pytorch#162338: a backend that sums where asked to average would scale every gradient by the
        # world size; sum explicitly and let FSDP divide by the world size itself
        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.set_force_sum_reduction_for_comms(True)
    return model


def _reduce_scatter_sums(mesh):
    """Whether the mesh's backend sums when asked to average (ReduceOp.AVG) in a reduce-scatter, as
    gloo did in pytorch#162338 (torch 2.8). One tiny collective; False on one rank. torch 2.13's gloo
    averages (tests/test_fsdp.py checks the gradients against one process either way)."""
    group, world = mesh.get_group(), mesh.size()
    if world == 1:
        return False
    ones = torch.ones(world, device=mesh.device_type)  # (world,): every rank sends 1s
    out = torch.empty(1, device=mesh.device_type)
    reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor  # renamed in 2.13
    reduce_scatter(out, ones, op=dist.ReduceOp.AVG, group=group)
    return out.item() > 1.5  # the mean of 1s is 1; their sum is world


def is_sharded(model):
    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def no_sync(model, last, low_memory=False):
    """A micro-step's forward and backward, like DDP's no_sync: gradients are reduced (reduce-scattered)
    only on the last micro-step of an optimizer step, so accumulation costs no communication.

    The price is memory between micro-steps: the unsharded gradients (4 bytes per parameter in float32,
    param_dtype's size under mixed precision) and the gathered weights (kept, so the next forward does
    not gather them again). low_memory=True reduce-scatters every micro-step instead, into the sharded
    gradients, and frees the gathered weights: memory stays 1/N, communication is M times as much.
    A model that is not sharded (one process) is left alone."""
    if isinstance(model, FSDPModule):
        sync = last or low_memory
        model.set_requires_gradient_sync(sync)
        model.set_reshard_after_backward(sync)
    try:
        yield
    finally:
        if isinstance(model, FSDPModule):  # back to the defaults, e.g. for an eval pass
            model.set_requires_gradient_sync(True)
            model.set_reshard_after_backward(True)


def clip_grad_norm_(parameters, max_norm):
    """torch.nn.utils.clip_grad_norm_ over sharded gradients: the norm of the whole gradient (every
    rank's shards), the same on every rank, which scales every shard alike; returned before clipping,
    as a plain tensor. torch 2.13's own clip_grad_norm_ already reduces the shards' partial norms (it
    returns a replicated DTensor); this returns an ordinary tensor for logging, and says what is
    meant. Works the same on unsharded parameters (one process, DDP)."""
    parameters = [p for p in parameters if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in parameters], 2.0)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()  # replicated already (no communication); a Partial norm would be reduced here
    torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, norm)
    return norm


def full_state_dict(model):
    """The model's weights as one unsharded state_dict on rank 0's CPU (train.py's names); an empty
    dict on the other ranks. A collective: every rank calls it."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_model(model):
    """An unsharded copy of a sharded GPT on rank 0's CPU (None elsewhere), for what runs on rank 0
    alone: probes, benchmarks, a Hugging Face export. A collective: every rank calls it."""
    state = full_state_dict(model)
    if rank_world()[0] != 0:
        return None
    copy = GPT(model_config_from_dict(vars(model.config)))
    copy.gradient_checkpointing, copy.last_hidden_before_ln = model.gradient_checkpointing, model.last_hidden_before_ln
    copy.load_state_dict(state)
    return copy.eval()


# ---------------------------------------------------------------------- checkpoints

class CheckpointFolderError(checkpoint.CheckpointError):
    """A DCP checkpoint folder that cannot be read or trusted; the message names the folder."""


def save(folder, model, optimizer, extra):
    """Write model's and optimizer's state, sharded, as the DCP folder `folder`; every rank calls it.

    extra: the rest of the run's state (a dict of tensors and plain types, as checkpoint.write takes:
    iter_num, best_val_loss, config, model_args, rng, tokenizer, ...), written by rank 0 as extra.pt.
    Atomic: every rank writes its shards into FOLDER.tmp, and only when all of them and extra.pt are on
    disk does rank 0 swap it in (FOLDER -> FOLDER.old, FOLDER.tmp -> FOLDER, FOLDER.old removed), so a
    crash at any moment leaves the previous checkpoint whole (load() finds FOLDER.old if the crash fell
    between the two renames). A full disk is a DiskFullError naming the folder, on every rank."""
    folder = os.path.normpath(folder)
    tmp = folder + ".tmp"
    rank, world = rank_world()
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a crash mid-save
        os.makedirs(tmp)
    _barrier()
    model_state, optim_state = get_state_dict(model, optimizer)  # this rank's shards, under clean names
    error, digests = None, {}
    try:
        with _dcp_quietly():
            dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=tmp)  # collective
        digests = _hash_share(tmp, rank, world)
    except (Exception, CheckpointException) as e:  # DCP raises on every rank when one rank's write fails
        error = _cause(e)
    shares = _gather((digests, error is not None))
    if rank == 0 and not any(failed for _, failed in shares):
        try:  # last: the folder is complete when extra.pt is there
            checkpoint.write(os.path.join(tmp, EXTRA), {
                "format_dcp": FORMAT, "world_size": world, "extra": extra,
                "files": {name: h for share, _ in shares for name, h in share.items()}})
        except Exception as e:
            error = e
    failed = _gather(error is not None)  # every rank learns of every failure, and raises
    if any(failed):
        if error is not None and (isinstance(error, DiskFullError) or is_disk_full(error, tmp)):
            cause = getattr(error, "cause", None) or error  # the writer's own error, not extra.pt's DiskFullError
            error = DiskFullError(disk_full_message(folder, cause, space_needed(folder, tmp)), cause)  # before tmp goes
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        if error is None:
            raise RuntimeError(f"saving {folder}: rank {failed.index(True)} failed (its message says why); "
                               f"{folder} is left as it was")
        raise error
    if rank == 0:
        _swap(tmp, folder)
    _barrier()


def _cause(error):
    """The first rank's own exception inside DCP's CheckpointException (a BaseException that holds every
    failing rank's exception and traceback), or error itself."""
    if isinstance(error, CheckpointException) and error.failures:
        return next(iter(error.failures.values()))[0]
    return error


def _swap(tmp, folder):
    """Put the complete folder tmp in folder's place, the old one staying until the new one is in."""
    old = folder + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(folder):
        os.replace(folder, old)
    os.replace(tmp, folder)
    fsync_folder(folder)
    shutil.rmtree(old, ignore_errors=True)


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def _hash_share(folder, rank, world):
    """{file name: sha256} of this rank's share of the DCP files in folder (every world-th, from the
    rank-th): the ranks hash the checkpoint in parallel, each reading about 1/N of it."""
    names = sorted(n for n in os.listdir(folder) if n != EXTRA and not n.endswith(".tmp"))
    return {name: _sha256(os.path.join(folder, name)) for name in names[rank::world]}


def _existing(folder):
    """folder, or folder.old when a crash fell between save()'s two renames."""
    folder = os.path.normpath(folder)
    if not os.path.isdir(folder) and os.path.isfile(os.path.join(folder + ".old", EXTRA)):
        print(f"warning: {folder} is missing but {folder}.old is whole (a save was interrupted); "
              f"reading {folder}.old", flush=True)
        return folder + ".old"
    return folder


def read_extra(folder):
    """The extra dict save() was given, from FOLDER/extra.pt (checksum verified), without reading
    the shards: e.g. model_args, to build the model before load()."""
    return _read_manifest(_existing(folder))["extra"]


def _read_manifest(folder):
    if not os.path.isdir(folder):
        raise MissingFileError(f"no checkpoint folder at {folder}")
    path = os.path.join(folder, EXTRA)
    if not os.path.isfile(path):
        raise CheckpointFolderError(f"{folder} is not a complete checkpoint folder: it has no {EXTRA} (the last "
                                    "file a save writes). It was not written by fsdp.save, or was copied in part.")
    manifest = checkpoint.read(path)  # its own checksum, and nothing but tensors and plain types
    if manifest.get("format_dcp") != FORMAT:
        raise CheckpointFolderError(f"{path} has format {manifest.get('format_dcp')!r}; this code reads {FORMAT!r}")
    return manifest


def _verify(folder, manifest):
    """Every DCP file the save wrote is there, whole: the ranks check a share each (as _hash_share),
    and all of them raise the same error when any share is wrong."""
    rank, world = rank_world()
    expected = manifest["files"]
    names = sorted(expected)
    problems = []
    for name in names[rank::world]:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            problems.append(f"{name} is missing")
        elif _sha256(path) != expected[name]:
            problems.append(f"{name} does not match its checksum")
    problems = [p for share in _gather(problems) for p in share]
    if problems:
        raise CheckpointFolderError(f"checkpoint folder {folder} is damaged or incomplete: {'; '.join(problems)}. "
                                    "It was left as it is; restore a copy or train again.")


def load(folder, model, optimizer=None, verify=True):
    """Read a save()d folder into model (sharded or not) and optimizer (or None: weights only), and return
    its extra dict; every rank calls it. The model and optimizer are freshly built, as for the run that
    saved them, on any number of ranks: DCP gives each rank its own pieces of the saved tensors,
    wherever they were cut. Also works without a process group (one process reads every shard).

    verify: check every file's sha256 first (the ranks share the reading). Weights or AdamW moments
    that are not finite are refused (a diverged run is not resumed), as train.py's checkpoints are."""
    folder = _existing(folder)
    manifest = _read_manifest(folder)
    if verify:
        _verify(folder, manifest)
    if optimizer is None:
        state = {"model": get_model_state_dict(model)}
    else:
        model_state, optim_state = get_state_dict(model, optimizer)  # fresh AdamW state, to be overwritten
        state = {"model": model_state, "optimizer": optim_state}
    try:
        with _dcp_quietly():
            dcp.load(state, checkpoint_id=folder)  # collective; fills state's tensors in place
        if optimizer is None:
            set_model_state_dict(model, state["model"])
        else:
            set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    except (RuntimeError, ValueError, KeyError, CheckpointException) as e:
        e = _cause(e)
        raise CheckpointFolderError(f"checkpoint folder {folder} does not fit this model "
                                    f"({type(e).__name__}: {str(e).splitlines()[0][:300]})") from None
    _check_finite(folder, model, optimizer)
    return manifest["extra"]


def _check_finite(folder, model, optimizer):
    """Raise on every rank if any rank's shard of the weights or of AdamW's moments is not finite."""
    tensors = list(model.parameters())
    if optimizer is not None:
        tensors += [v for s in optimizer.state.values() for k, v in s.items() if k != "step"]
    bad = sum(int((~torch.isfinite(_local(t))).sum()) for t in tensors if t.is_floating_point())
    if sum(_gather(bad)):
        raise CheckpointFolderError(f"checkpoint folder {folder} holds non-finite values (NaN or inf) in its weights "
                                    "or optimizer state; the run that wrote it had diverged. Resume from an "
                                    "earlier copy or train again.")


def _local(t):
    return t.to_local() if isinstance(t, DTensor) else t.detach()


def keep_copy(folder, copy_folder):
    """copy_folder becomes a copy of the checkpoint folder (train.py's keep_best): hard links where the file
    system allows (save() replaces the folder whole, so the links keep the old files at no cost), else
    copies; one process (rank 0) calls it."""
    tmp = os.path.normpath(copy_folder) + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(folder, tmp, copy_function=link_or_copy)
    _swap(tmp, os.path.normpath(copy_folder))


# ---------------------------------------------------------------------- train.py's settings

def unsupported(cfg):
    """What train.py's settings (its Config) ask of parallel=fsdp that a sharded model cannot do: one
    problem per line, each with the way out."""
    problems = []
    if cfg.dtype == "float16":
        problems.append("parallel=fsdp with dtype=float16: that needs a sharded gradient scaler, which this trainer "
                        "does not have; use dtype=bfloat16 (or float32)")
    weights = "differentiates with respect to the weights, which FSDP keeps out of the graph (sharded)"
    if cfg.dispersion == "rotated_angular" and cfg.dispersion_match_params:
        problems.append(f"parallel=fsdp with dispersion=rotated_angular and dispersion_match_params=True: its "
                        f"rescaling {weights}; set dispersion_match_params=False, or parallel=ddp")
    if cfg.strength_window:
        problems.append(f"parallel=fsdp with strength_window={cfg.strength_window}: the strength meter {weights}; "
                        "set strength_window=0, or parallel=ddp")
    if cfg.eval_tasks:
        problems.append("parallel=fsdp with eval_tasks: the benchmarks give the ranks unequal numbers of forward "
                        "passes, which sharded weights cannot run; score the checkpoint after training (python "
                        "fsdp.py to-ckpt OUT/ckpt_dcp OUT/ckpt.pt, then python -m eval.benchmarks --ckpt OUT/ckpt.pt)")
    return problems


# ---------------------------------------------------------------------- conversion (one process)

def _model_from(folder):
    extra = read_extra(folder)
    if not isinstance(extra, dict) or "model_args" not in extra:
        raise CheckpointFolderError(f"{folder}/{EXTRA} has no model_args, so the model cannot be rebuilt; "
                                    "save() it with extra={'model_args': ..., ...} as train.py does")
    return GPT(model_config_from_dict(extra["model_args"])), extra


def to_ckpt(folder, out_path, with_optimizer=True):
    """The DCP folder as the project's single-file checkpoint (checkpoint.write): the model's weights under
    train.py's names and, by default, the AdamW state in one process's layout (what train.py writes,
    so --init_from=resume continues from it), beside the extra entries. with_optimizer=False writes the
    weights only (a third of the memory and the file), enough for load.load_model, sample.py and eval."""
    model, extra = _model_from(folder)
    optimizer = None
    if with_optimizer:
        # hyperparameters (lr, betas, weight decay) and the two groups come from the checkpoint
        optimizer = model.configure_optimizers(0.0, 0.0, (0.9, 0.95), "cpu")
    load(folder, model, optimizer)
    payload = {**extra, "model": model.state_dict()}
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    checkpoint.write(out_path, payload)
    return out_path


def from_ckpt(path, folder, allow_unsafe_pickle=False):
    """The project's single-file checkpoint (a ckpt.pt that train.py wrote, one process or DDP) as a DCP
    folder, so that the run continues under FSDP on any number of ranks; one process."""
    ckpt = checkpoint.read_for_resume(path, allow_unsafe_pickle)  # checksum, entries, finite numbers
    model = GPT(model_config_from_dict(ckpt["model_args"]))
    optimizer = model.configure_optimizers(0.0, 0.0, (0.9, 0.95), "cpu")  # hyperparameters: from the file
    with checkpoint.fits(path, "model"):
        model.load_state_dict(ckpt["model"])
    with checkpoint.fits(path, "optimizer state"):
        optimizer.load_state_dict(ckpt["optimizer"])
    save(folder, model, optimizer, {k: v for k, v in ckpt.items() if k not in ("model", "optimizer")})
    return folder


def to_hf(folder, out_dir):
    """The DCP folder's model as a Hugging Face folder (hf.export: config.json + model.safetensors)."""
    import hf
    model, _ = _model_from(folder)
    load(folder, model)
    return hf.export(model, out_dir)


def arguments():
    from configurator import ArgumentParser
    parser = ArgumentParser(prog="python fsdp.py", description="Convert a sharded (DCP) checkpoint folder that "
                                                               "fsdp.save wrote; one process, no GPU.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="what to do")
    ckpt = commands.add_parser("to-ckpt", help="write the project's single-file checkpoint (ckpt.pt)",
                               description="Write the project's single-file checkpoint (ckpt.pt): weights, AdamW "
                                           "state in one process's layout, and the run's other state.")
    ckpt.add_argument("folder", metavar="DCP_FOLDER", help="the checkpoint folder fsdp.save wrote")
    ckpt.add_argument("out", metavar="OUT.pt", help="the file to write (atomically)")
    ckpt.add_flag("--weights_only", help="leave the optimizer state out (less memory; not for resuming)")
    back = commands.add_parser("from-ckpt", help="write a ckpt.pt (one process or DDP) as a DCP folder",
                               description="Write the project's single-file checkpoint as a DCP folder, so that "
                                           "the run continues under FSDP on any number of ranks.")
    back.add_argument("ckpt", metavar="CKPT.pt", help="the checkpoint train.py wrote")
    back.add_argument("out", metavar="DCP_FOLDER", help="the folder to write (atomically)")
    hfp = commands.add_parser("to-hf", help="write a Hugging Face model folder (config.json + model.safetensors)",
                              description="Write a Hugging Face model folder that transformers loads.")
    hfp.add_argument("folder", metavar="DCP_FOLDER", help="the checkpoint folder fsdp.save wrote")
    hfp.add_argument("out", metavar="OUT_DIR", help="the folder to write")
    return parser


def main(argv):
    args = arguments().parse_args(argv)
    source = args.ckpt if args.command == "from-ckpt" else args.folder
    if os.path.abspath(args.out) == os.path.abspath(source):
        raise InputError("the output must differ from the input")
    if args.command == "from-ckpt":
        from_ckpt(args.ckpt, args.out)
    elif args.command == "to-ckpt":
        to_ckpt(args.folder, args.out, with_optimizer=not args.weights_only)
    else:
        to_hf(args.folder, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
