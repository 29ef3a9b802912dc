"""
Train a GPT, optionally with a dispersion loss (or a control) on its hidden states.

One process (CPU, one GPU, or Apple MPS):
    python train.py config/train_local_cpu.py
    python train.py --batch_size=32 --compile=False
DDP on one node with 8 GPUs:
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py
DDP on two nodes: torchrun's own flags (--nnodes, --node_rank, --master_addr, --master_port).
FSDP (weights, gradients and AdamW state sharded across the ranks): the same with --parallel=fsdp.
SIGTERM or SIGUSR1 (preemption, a time limit near): a checkpoint at the next step boundary, then exit 0.
docs/distributed.md: launching on several nodes and under SLURM, and what survives which fault.

The settings are the fields of Config below; config files and --key=value overrides replace them,
and are checked (configurator.py, check_settings) before any work starts. --init_from=resume continues
the run in out_dir with the settings saved in its checkpoint (those of RESUME_MAY_CHANGE may be given
anew; other differing ones are refused). main() reads in nanoGPT's
order: processes and devices, data, model, optimizer, then the loop (learning rate, evaluation and
checkpoint, micro-steps, clipping, optimizer step, log).
"""

import contextlib
import dataclasses
import datetime
import json
import math
import os
import shutil
import sys
import time
import typing
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import checkpoint
import controls
import disperse
import system
from configurator import HelpSource, load_settings
from data.common import open_split, read_meta, sample_batch
from errors import InputError, MissingFileError, run_cli
from eval.hooks import check_eval_inputs, make_probe_set, score_benchmarks
from files import append_line, trim_metrics
from load import load_model
from model import GPT, GPTConfig, model_config_from_dict, model_config_to_dict


@dataclass
class Config:
    """train.py's settings. The defaults: GPT-2 (124M) from scratch on OpenWebText, 8 GPUs (nanoGPT's)."""
    # I/O
    out_dir: str = "out"  # where ckpt.pt and metrics.jsonl go
    eval_interval: int = 2000  # evaluate (and save a checkpoint) every this many iterations
    log_interval: int = 1  # log (and read the loss back from the device) every this many iterations
    eval_iters: int = 200  # batches per loss estimate, split across ranks
    eval_only: bool = False  # evaluate once and exit
    always_save_checkpoint: bool = True  # save at every eval, not only when val loss improves
    keep_best: bool = False  # also keep the checkpoint of the lowest val loss as ckpt_best.pt (selection by val, never test)
    init_from: str = "scratch"  # 'scratch', 'resume' (from out_dir), or weights only (fresh optimizer, iteration 0) from
    #                             another run's out_dir or ckpt.pt, a hub name ('gpt2'..'gpt2-xl') or a local HF directory
    overwrite: bool = False  # let a new run (init_from not 'resume') replace the checkpoint and log already in out_dir
    allow_unsafe_pickle: bool = False  # open checkpoints not in the safe format (older or foreign files): that can run code
    seed: int = 1337  # init, dropout, batch order and the auxiliary losses' random numbers
    # data
    dataset: str = "openwebtext"  # a folder under data/ or a path to a prepared folder (train.bin, val.bin, meta.json);
    #                               meta.json names the tokenizer, which the checkpoint records (no meta.json: GPT-2's)
    gradient_accumulation_steps: int = 5 * 8  # micro-steps per optimizer step, summed over all ranks
    batch_size: int = 12  # sequences per micro-step per rank
    block_size: int = 1024  # context length: tokens per sequence
    # model
    n_layer: int = 12  # transformer blocks
    n_head: int = 12  # attention heads
    n_embd: int = 768  # width of the residual stream
    n_inner: int | None = None  # MLP width; None is 4 * n_embd
    dropout: float = 0.0  # 0 for pretraining; 0.1 for GPT-2 mid-training as in the paper
    bias: bool = False  # biases in Linears and LayerNorms (a pretrained GPT-2 always has them)
    vocab_size: int | None = None  # None: the data's (meta.json, or a nanoGPT folder's meta.pkl), or with init_from the
    #                               model's; a larger one leaves ids unused
    # the block's variant (model.py GPTConfig); the defaults are GPT-2's. With init_from our ckpt.pt or a Hugging
    # Face GPT-2 / Llama / Qwen2 / Qwen3 directory or hub name ('Qwen/Qwen3-0.6B'), the model settings come from it.
    # A Qwen3-shaped model from scratch:
    # norm=rmsnorm pos_emb=rope mlp=swiglu n_kv_head=8 head_dim=128 qk_norm=True bias=False rope_theta=1e6
    norm: str = "layernorm"  # layernorm or rmsnorm
    norm_eps: float = 1e-5  # the norms' epsilon
    pos_emb: str = "learned"  # learned positions or rope
    rope_theta: float = 10000.0  # RoPE base (pos_emb=rope)
    mlp: str = "gelu"  # gelu (tanh, GPT-2), gelu_exact (erf, nanoGPT), or swiglu (n_inner wide; None: 8/3 * n_embd, to 256)
    n_kv_head: int | None = None  # grouped-query attention: key/value heads; None: n_head
    head_dim: int | None = None  # per-head width; None: n_embd // n_head
    qk_norm: bool = False  # RMSNorm on each head's queries and keys
    qkv_bias: bool | None = None  # bias of the q/k/v projection alone; None: same as bias (Qwen2: bias=False, qkv_bias=True)
    tie_embeddings: bool = True  # output head shares the token embedding
    gradient_checkpointing: bool = False  # recompute each block's activations in backward: less memory, ~30% more compute
    # optimizer: AdamW
    learning_rate: float = 6e-4  # peak learning rate
    max_iters: int = 600000  # optimizer steps in all
    weight_decay: float = 1e-1  # AdamW weight decay (2-D weights only)
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.95  # AdamW beta2
    grad_clip: float = 1.0  # 0 disables clipping
    # learning rate schedule: linear warmup, then cosine decay to min_lr
    decay_lr: bool = True  # False: learning_rate throughout
    warmup_iters: int = 2000  # linear warmup steps
    lr_decay_iters: int | None = None  # None: max_iters
    min_lr: float = 6e-5  # the cosine decay's end
    # dispersion loss (disperse.py): total = CE + dispersion_weight * mean over layers
    dispersion: str = "none"  # none, angular, decorrelation, l2_repel, orthogonalization, or a control:
    #                           condense, cross_sequence, norm_penalty, random_direction, rotated_angular
    dispersion_weight: float = 0.1  # lambda: the term's weight beside CE
    dispersion_tau: float = 1.0  # temperature of the angular loss (and of l2_repel)
    dispersion_layers: str | int | list = "all"  # all, last, early_half, late_half, or HF hidden-state indices "1,6,12"
    dispersion_max_tokens: int | None = None  # sample this many positions per sequence and layer; None: all
    dispersion_clamp: float = 0.1  # straight-through clamp of cosines to [-1+t, 1-t] before arccos
    dispersion_eps: float = 1e-2  # z / (|z| + eps)
    dispersion_margin: float = 0.5  # orthogonalization's margin (0.5 = 90 degrees)
    dispersion_norm_weight: float = 0.1  # l2_repel's norm penalty weight
    dispersion_last_pre_ln: bool = False  # last layer before ln_f instead of after (HF indexing is after)
    dispersion_warmup_iters: int = 0  # linear warmup of the weight; 0: constant, as in the paper
    dispersion_match_params: bool = True  # rotated_angular: rescale it to the angular term's parameter-gradient norm
    #                                       (2 extra backward passes each time it is computed); False: rotation only
    dispersion_match_interval: int = 1  # rotated_angular: compute that scale at every micro-step of every this
    #                                     many steps, and hold the last one in between
    dispersion_rotation: str = "run"  # rotated_angular: one rotation for the whole run ('run'), or a fresh one per
    #                                   optimizer step ('step', whose pushes do not add up over steps)
    strength_window: int = 0  # > 0: log how hard the auxiliary term pushes the weights over windows of this many
    #                           steps (strength/*; an extra backward pass per micro-step, fewer for the controls)
    # other controls (controls.py)
    neftune_alpha: float = 0.0  # NEFTune: uniform noise alpha/sqrt(T*C) on the token embeddings
    distill_from: str | None = None  # teacher: a checkpoint or Hugging Face GPT-2 directory
    distill_weight: float = 0.0  # total += distill_weight * KL(teacher || student)
    distill_temperature: float = 1.0  # softmax temperature of teacher and student
    # benchmarks and condensation probes at eval steps
    eval_tasks: str = ""  # e.g. "arc_easy,piqa"; needs eval_data_dir
    eval_limit: int = 200  # documents per benchmark task at eval steps
    eval_data_dir: str = ""  # folder of <task>/<split>.jsonl
    eval_num_fewshot: int = 0  # shots per benchmark question
    probe_interval: int = 0  # probe condensation every this many iterations (multiple of eval_interval); 0: never
    probe_text: str = ""  # text file for the probe (e.g. wikitext-103 valid); empty: the dataset's val.bin
    probe_n_seq: int = 16  # sequences the probe averages over
    probe_seq_len: int = 256  # tokens per probe sequence (capped at block_size)
    # system
    backend: str = "auto"  # under torchrun: nccl on CUDA, gloo on CPU
    parallel: str = "ddp"  # under torchrun: ddp (every rank holds the whole model) or fsdp (weights, gradients and AdamW
    #                        state sharded across the ranks, checkpoints as the folder ckpt_dcp: fsdp.py)
    fsdp_low_memory: bool = False  # fsdp: reduce-scatter the gradients at every micro-step (memory 1/N between them)
    dist_timeout_s: int = 600  # under torchrun: how long a rank waits in a collective for the others before it stops
    device: str = "auto"  # auto, cpu, cuda, cuda:1, mps
    dtype: str = "auto"  # auto (bfloat16 where supported, else float16 on CUDA, float32 on CPU), float32, bfloat16, float16
    compile: bool = True  # torch.compile the model
    peak_flops: float | None = None  # one device's peak FLOP/s for MFU; None: look it up (system.PEAK_FLOPS)
    malloc_tuning: bool = True  # glibc (Linux): keep freed memory for reuse instead of handing it back to the OS every step
    # experiment tracking: Weights & Biases gets the records of metrics.jsonl (which stays the source of truth)
    wandb_log: bool = False  # send the log records to Weights & Biases too
    wandb_project: str = "disperse-gpt"  # its project
    wandb_run_name: str = ""  # empty: wandb picks a name
    wandb_group: str = ""  # e.g. the experiment, so that its arms and seeds show together


DEFAULTS = dataclasses.asdict(Config())
TYPES = {f.name: typing.get_args(f.type) or (f.type,) for f in dataclasses.fields(Config)}  # what configurator accepts

# Resuming (init_from='resume') continues the run as it was: every setting comes from the checkpoint,
# then the settings given (config files and the command line) replace those of this list; any other
# setting given with a value other than the checkpoint's defines another run, and is refused
# (resume_settings). These change how long the run goes, how fast it learns from here on, what is
# measured and how often, and the machine, not what the run is:
RESUME_FOUND_BY = ("out_dir", "init_from", "overwrite", "allow_unsafe_pickle")  # as given: never from the checkpoint
RESUME_MAY_CHANGE = RESUME_FOUND_BY + (
    "max_iters", "learning_rate", "decay_lr", "warmup_iters", "lr_decay_iters", "min_lr", "grad_clip",
    "eval_interval", "log_interval", "eval_iters", "eval_only", "always_save_checkpoint", "keep_best",
    "eval_tasks", "eval_limit", "eval_data_dir", "eval_num_fewshot",
    "probe_interval", "probe_text", "probe_n_seq", "probe_seq_len",
    "backend", "device", "dtype", "compile", "peak_flops", "malloc_tuning", "gradient_checkpointing",
    "parallel", "fsdp_low_memory", "dist_timeout_s",
    "wandb_log", "wandb_project", "wandb_run_name", "wandb_group",
)


def main(argv):
    settings, given = load_settings(DEFAULTS, argv, TYPES, help=HelpSource(__file__, "Config"))
    cfg, ckpt, changed = Config(**settings), None, []
    if cfg.init_from == "resume":  # the run's settings are in its checkpoint
        ckpt_path, ckpt = read_for_resume(cfg, given)  # ckpt.pt, or an FSDP run's folder ckpt_dcp; verified
        cfg, changed = resume_settings(cfg, given, ckpt, ckpt_path)
        cfg.parallel = "fsdp" if ckpt_path.endswith("ckpt_dcp") else "ddp"  # as the checkpoint was written
    check_settings(cfg)
    data_dir = cfg.dataset if os.path.isdir(cfg.dataset) else os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                         "data", cfg.dataset)
    meta = read_meta(data_dir)  # names the data's tokenizer, which the benchmarks and the probe text are encoded with
    if cfg.vocab_size is None and cfg.init_from == "scratch":
        cfg.vocab_size = meta["vocab_size"]  # the data's: nanoGPT's character data gets a 65-way head, not 50257
    if cfg.malloc_tuning:
        system.tune_malloc()

    # ------------------------------------------------------------------ processes and devices
    ddp = int(os.environ.get("RANK", -1)) != -1
    dev = system.resolve_device(cfg.device)
    if ddp:
        if dev.startswith("cuda"):
            dev = f"cuda:{int(os.environ['LOCAL_RANK'])}"
            torch.cuda.set_device(dev)
        backend = ("nccl" if dev.startswith("cuda") else "gloo") if cfg.backend == "auto" else cfg.backend
        # the timeout bounds how long the others wait for a rank that hangs (one that dies is noticed at once)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=cfg.dist_timeout_s))
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    master = rank == 0
    sharded = ddp and cfg.parallel == "fsdp"  # weights, gradients and AdamW state split across the ranks
    if cfg.parallel == "fsdp":
        import fsdp  # only when asked for: FSDP2 and DCP take a second to import
    stop = system.StopSignals()  # SIGTERM, SIGUSR1: a checkpoint at the next step boundary, then exit
    device_type = "cuda" if dev.startswith("cuda") else "mps" if dev.startswith("mps") else "cpu"
    if cfg.gradient_accumulation_steps % world != 0:
        raise InputError(f"gradient_accumulation_steps={cfg.gradient_accumulation_steps} must be a multiple of "
                         f"the number of processes ({world}); it counts micro-steps summed over all ranks")
    accum_per_rank = cfg.gradient_accumulation_steps // world
    tokens_per_iter = cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size
    dtype_name = cfg.dtype
    if dtype_name == "auto":
        dtype_name = ("bfloat16" if torch.cuda.is_bf16_supported() else "float16") if device_type == "cuda" else "float32"
    ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype_name]
    autocast = contextlib.nullcontext() if ptdtype == torch.float32 or sharded else \
        torch.autocast(device_type, dtype=ptdtype)  # FSDP computes in its policy's dtype itself
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls and convolutions on Ampere and newer
        torch.backends.cudnn.allow_tf32 = True
    ckpt_path = os.path.join(cfg.out_dir, "ckpt_dcp" if cfg.parallel == "fsdp" else "ckpt.pt")
    metrics_path = os.path.join(cfg.out_dir, "metrics.jsonl")
    if cfg.init_from != "resume" and not cfg.eval_only and not cfg.overwrite:
        taken = [p for p in (ckpt_path, metrics_path) if os.path.exists(p)]
        if taken:
            raise InputError(f"out_dir={cfg.out_dir!r} already holds a run ({', '.join(os.path.basename(p) for p in taken)}); "
                             "continue it with --init_from=resume, choose another --out_dir, or replace it with "
                             "--overwrite=True")
    if master:
        os.makedirs(cfg.out_dir, exist_ok=True)
        for name in ("ckpt.pt.tmp", "ckpt_best.pt.tmp", "metrics.jsonl.tmp"):  # left by a run killed mid-write
            if os.path.exists(os.path.join(cfg.out_dir, name)):
                os.remove(os.path.join(cfg.out_dir, name))
        for name in ("ckpt_dcp.tmp", "ckpt_best_dcp.tmp"):  # folders of a save cut short (fsdp)
            shutil.rmtree(os.path.join(cfg.out_dir, name), ignore_errors=True)
        print(f"{world} process(es) on {device_type}, {dtype_name}; {tokens_per_iter:,} tokens per iteration "
              f"({cfg.gradient_accumulation_steps} micro-steps x {cfg.batch_size} x {cfg.block_size})")

    # ------------------------------------------------------------------ data
    train_data = open_split(data_dir, "train", cfg.block_size, cfg.vocab_size, meta)  # also checks the largest token id
    val_data = open_split(data_dir, "val", cfg.block_size, cfg.vocab_size, meta)

    def get_batch(data, key):
        """Inputs and targets (B, T) on the device; key: see data.common.sample_batch."""
        x, y = (torch.from_numpy(a) for a in sample_batch(data, cfg.batch_size, cfg.block_size, key, cfg.vocab_size))
        if device_type == "cuda":  # pinned, so the copy runs while the device works
            return x.pin_memory().to(dev, non_blocking=True), y.pin_memory().to(dev, non_blocking=True)
        return x.to(dev), y.to(dev)

    # ------------------------------------------------------------------ model
    # dropout masks differ across ranks; DDP broadcasts rank 0's init, FSDP shards each rank's: all build rank 0's
    torch.manual_seed(cfg.seed + (0 if sharded else rank))
    iter_num, best_val_loss = 0, float("inf")
    if cfg.init_from == "scratch":
        model = GPT(model_config_from_dict(dataclasses.asdict(cfg)))  # the model settings above
    elif cfg.init_from == "resume":  # ckpt: read (and verified) with the settings, above
        with checkpoint.fits(ckpt_path, "model"):
            model = GPT(GPTConfig(**{**ckpt["model_args"], "dropout": cfg.dropout}))
            if cfg.parallel != "fsdp":  # a DCP folder is read into the model once it is sharded (fsdp.load, below)
                model.load_state_dict(ckpt["model"])
        iter_num, best_val_loss = ckpt["iter_num"], ckpt["best_val_loss"]
        if master:
            print(f"resuming from {ckpt_path} at step {iter_num}" +
                  (f"; changed: {', '.join(changed)}" if changed else ", with the settings it was saved with"))
        if master and ckpt.get("converted_from") == "nanoGPT":
            kept = os.path.join(cfg.out_dir, "ckpt_nanogpt.pt")
            if not os.path.exists(kept):  # this run saves ckpt.pt in its own format, which nanoGPT cannot read
                checkpoint.keep_copy(ckpt_path, kept)
            print(f"note: nanoGPT's checkpoint holds no random-generator state, so from here on the batches and "
                  f"dropout masks will not match nanoGPT's own resumed run (the weights and AdamW state continue "
                  f"exactly); its file is kept as {kept}")
    else:  # weights only: a pretrained model to mid-train
        model, _ = load_model(cfg.init_from, dropout=cfg.dropout, allow_unsafe_pickle=cfg.allow_unsafe_pickle)
    if cfg.block_size < model.config.block_size:
        model.crop_block_size(cfg.block_size)
    if cfg.vocab_size is not None and model.config.vocab_size != cfg.vocab_size:
        raise InputError(f"the model has vocab_size={model.config.vocab_size} but vocab_size={cfg.vocab_size}; "
                         "set vocab_size to the model's")
    if cfg.vocab_size is None:  # the model's (init_from): the data are checked against it now
        cfg.vocab_size = model.config.vocab_size
        train_data = open_split(data_dir, "train", cfg.block_size, cfg.vocab_size, meta)
        val_data = open_split(data_dir, "val", cfg.block_size, cfg.vocab_size, meta)
    tokenizer = check_eval_inputs(cfg, meta["tokenizer"])  # before any step, and before out_dir is touched further
    if sharded:  # in place: each block, then the rest (compiled per block, before sharding)
        fsdp.shard_model(model, None if ptdtype == torch.float32 else ptdtype, compile=cfg.compile, device_type=device_type)
        if rank:
            torch.manual_seed(cfg.seed + rank)  # each rank its own dropout masks from here
    else:
        model.to(dev)
    raw_model = model  # the module whose state_dict has clean names: no _orig_mod. or module. prefixes
    raw_model.gradient_checkpointing = cfg.gradient_checkpointing
    raw_model.last_hidden_before_ln = cfg.dispersion_last_pre_ln
    if master:
        print(f"model: {model.get_num_params() / 1e6:.2f}M parameters (without position embeddings)")

    # ------------------------------------------------------------------ optimizer
    scaler = torch.amp.GradScaler(device_type, enabled=(ptdtype == torch.float16))
    optimizer = raw_model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), device_type)
    if ckpt is not None and cfg.parallel == "fsdp":
        fsdp.load(ckpt_path, raw_model, optimizer)  # every rank its shards, on any number of ranks (DCP reshards)
    elif ckpt is not None:
        with checkpoint.fits(ckpt_path, "optimizer state"):
            optimizer.load_state_dict(ckpt["optimizer"])
            if "scaler" in ckpt:  # nanoGPT's checkpoints have none: a fresh one
                scaler.load_state_dict(ckpt["scaler"])
            checkpoint.check_state(raw_model, ckpt["model"], optimizer)
    teacher = None
    if cfg.distill_from:
        teacher, _ = load_model(cfg.distill_from, device=dev, allow_unsafe_pickle=cfg.allow_unsafe_pickle)
        teacher.eval().requires_grad_(False)
    if cfg.compile and not sharded:  # (sharded: compiled per block, above)
        if master:
            print("compiling the model...")
        if cfg.dispersion in controls.CONTROLS or cfg.strength_window:
            # their parameter gradients run backward through the graph more than once (retain_graph), which a
            # compiled backward that reuses ("donates") its saved buffers refuses
            torch._functorch.config.donated_buffer = False
        model = torch.compile(model)
    if ddp and not sharded:
        model = DDP(model, device_ids=[int(os.environ["LOCAL_RANK"])] if device_type == "cuda" else None)

    # the auxiliary losses draw random numbers from their own generator, so switching them on
    # changes neither the data order nor the dropout masks of a run with the same seed
    aux_gen = torch.Generator(device=dev if device_type == "cuda" else "cpu")
    aux_gen.manual_seed(cfg.seed * 1000 + 7 + rank)
    if ckpt is not None and "rng" in ckpt:  # nanoGPT's checkpoints have none: the generators start from seed
        states = ckpt["rng"]  # one entry per rank
        if len(states) != world and master:
            print(f"warning: the checkpoint holds RNG states of {len(states)} ranks, this run has {world}; "
                  "the resumed run will not repeat the original one exactly")
        with checkpoint.fits(ckpt_path, "RNG state"):
            checkpoint.restore_rng(states[rank % len(states)], aux_gen)
    use_hidden = cfg.dispersion != "none"
    aux_options = dict(tau=cfg.dispersion_tau, eps=cfg.dispersion_eps, clamp=cfg.dispersion_clamp,
                       margin=cfg.dispersion_margin, norm_weight=cfg.dispersion_norm_weight,
                       max_tokens=cfg.dispersion_max_tokens)
    disp_layers = disperse.layer_indices(raw_model.config.n_layer, cfg.dispersion_layers) if use_hidden else []
    trainable = [p for p in raw_model.parameters() if p.requires_grad]
    rotation = None
    if cfg.dispersion == "rotated_angular" and cfg.dispersion_rotation == "run":
        rotation = controls.run_rotation(cfg.seed, raw_model.config.n_embd, dev)
    # rotated_angular's rescaling, held between the steps that compute it (a resumed run holds the saved one)
    match_scale = ckpt.get("controls", {}).get("match_scale") if ckpt is not None else None
    match_scale = match_scale.to(dev) if match_scale is not None else None
    push = controls.Push(cfg.strength_window) if cfg.strength_window and use_hidden and master else None

    @torch.no_grad()
    def estimate_loss():
        """Mean loss over eval_iters fixed batches per split (the same batches at every eval),
        shared out across ranks. Sharded, every rank runs as many forwards (each one is a collective):
        the last round is padded with batches that count for nothing."""
        out = {}
        model.eval()
        rounds = -(-cfg.eval_iters // world) * world if sharded else cfg.eval_iters
        for split, data, stream in (("train", train_data, 1), ("val", val_data, 2)):
            total = torch.zeros(2, device=dev)  # loss sum, batch count
            for k in range(rank, rounds, world):
                x, y = get_batch(data, (cfg.seed, stream, k % cfg.eval_iters))
                with autocast:
                    _, loss = raw_model(x, y)
                if k < cfg.eval_iters:
                    total += torch.stack([loss.float(), torch.ones((), device=dev)])
            if ddp:
                dist.all_reduce(total)
            out[split] = (total[0] / total[1]).item()
        model.train()
        return out

    probe_set = make_probe_set(cfg, tokenizer, val_data) if cfg.probe_interval and master else None
    if master:
        print(controls.describe(cfg, disp_layers))
        trim_metrics(metrics_path, keep_before=iter_num)  # a resumed run rewrites what followed its checkpoint
    peak = cfg.peak_flops or system.device_peak_flops(dev)
    flops_per_iter = raw_model.flops_per_token(cfg.block_size) * tokens_per_iter
    wandb_run = None
    if cfg.wandb_log and master:
        import wandb  # only now: wandb is optional (check_settings made sure it is installed)
        wandb_run = wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name or None,
                               group=cfg.wandb_group or None, config=dataclasses.asdict(cfg))

    def log(record):
        append_line(metrics_path, json.dumps(record))  # whole or not at all; a full disk: one line naming the file
        if wandb_run is not None:
            wandb_run.log(record, step=record["iter"])

    def save_checkpoint():
        """Every rank calls it: rank 0 writes ckpt.pt, or (fsdp) every rank its shards of the folder ckpt_dcp."""
        rng_states = [checkpoint.capture_rng(aux_gen)]
        if ddp:  # every rank's generators, so that each resumes with its own dropout masks
            rng_states = [None] * world
            dist.all_gather_object(rng_states, checkpoint.capture_rng(aux_gen))
        state = {"scaler": scaler.state_dict(), "model_args": model_config_to_dict(raw_model.config),
                 "iter_num": iter_num, "best_val_loss": best_val_loss, "config": dataclasses.asdict(cfg),
                 "rng": rng_states, "data": {"seed": cfg.seed, "next_step": iter_num}, "tokenizer": meta["tokenizer"],
                 "controls": {"match_scale": match_scale.cpu() if match_scale is not None else None}}
        if cfg.parallel == "fsdp":
            fsdp.save(ckpt_path, raw_model, optimizer, state)  # atomic: the previous folder stays until it is whole
        elif master:
            checkpoint.write(ckpt_path, {"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(), **state})
        if master:
            bar.write(f"saving checkpoint to {ckpt_path} (iteration {iter_num})")

    # ------------------------------------------------------------------ the loop
    from tqdm import tqdm
    bar = tqdm(total=cfg.max_iters, initial=iter_num, desc="train", unit="it", disable=not master, dynamic_ncols=True)
    tokens_seen = iter_num * tokens_per_iter
    x, y = get_batch(train_data, (cfg.seed, 0, iter_num, rank))  # the first micro-batch; each next one is read while the model runs
    # nothing on the device is read back (a host synchronisation) except at log and eval steps: the loss sums,
    # the gradient norm and this record of the first non-finite loss (iteration, value) stay on the device until
    # then. Device tensors are updated by device ops only: a tensor made from a Python number would be a copy
    # that waits for the device.
    count_dtype = torch.float32 if device_type == "mps" else torch.float64  # MPS has no float64
    first_nonfinite = torch.full((2,), -1.0, dtype=count_dtype, device=dev)
    iter_on_device = torch.full((), float(iter_num), dtype=count_dtype, device=dev)

    def stop_if_nonfinite():
        """Every rank, at log and eval steps, before anything is logged or saved."""
        it, value = first_nonfinite.tolist()
        if it >= 0:
            if master:
                bar.close()
            sys.exit(f"error: non-finite loss ({value}) at iteration {int(it)}; stopping before anything after it is "
                     f"saved. The last good checkpoint in {ckpt_path} is left as it was (resume with "
                     "--init_from=resume, perhaps with a lower learning_rate or dtype=bfloat16).")

    t_mark, timed = time.perf_counter(), 0  # iterations timed since t_mark (eval and checkpoint time excluded)
    t_start, first_iter, last_eval, saved = time.time(), iter_num, None, None
    while True:
        lr = lr_at(cfg, iter_num)
        for group in optimizer.param_groups:
            group["lr"] = lr

        preempted = stop.requested()  # a SIGTERM or SIGUSR1 to any rank: every rank stops at this same step
        unsaved = iter_num > (ckpt["iter_num"] if ckpt else 0) and not cfg.eval_only  # a just-resumed model is saved

        # evaluate, and save a checkpoint (every rank decides alike: the losses are the same everywhere)
        if (iter_num % cfg.eval_interval == 0 or iter_num == cfg.max_iters or cfg.eval_only) and not preempted:
            stop_if_nonfinite()
            losses = estimate_loss()
            bench = score_benchmarks(cfg, raw_model, tokenizer) if cfg.eval_tasks else {}  # every rank scores its share
            record = {"iter": iter_num, "val_loss": losses["val"], "train_loss_eval": losses["train"],
                      "tokens": tokens_seen, **bench}
            if master:
                bar.write(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
            last_eval = (iter_num, losses["val"])
            if not math.isfinite(losses["val"]):
                sys.exit(f"error: val loss is {losses['val']} at iteration {iter_num}; stopping. "
                         f"The last good checkpoint in {ckpt_path} is left as it was." if master else 1)
            improved = losses["val"] < best_val_loss
            if unsaved and (improved or cfg.always_save_checkpoint):
                best_val_loss = min(best_val_loss, losses["val"])
                save_checkpoint()
                saved = iter_num
                if cfg.keep_best and improved and master and cfg.parallel == "fsdp":
                    fsdp.keep_copy(ckpt_path, os.path.join(cfg.out_dir, "ckpt_best_dcp"))
                elif cfg.keep_best and improved and master:
                    checkpoint.keep_copy(ckpt_path, os.path.join(cfg.out_dir, "ckpt_best.pt"))
            if cfg.probe_interval and iter_num % cfg.probe_interval == 0:
                probed = fsdp.full_model(raw_model) if sharded else raw_model  # a collective: a copy on rank 0
                if master:
                    from eval.condensation import quick_probe
                    record.update({f"probe/{k}": v for k, v in quick_probe(probed, probe_set).items()})
                    bar.write(f"iter {iter_num}: last-layer mean cos "
                              f"{record[f'probe/layer{raw_model.config.n_layer}/mean_cos']:.3f}, "
                              f"Spearman rho over depth {record['probe/spearman']:+.2f}")
            if master:
                log(record)
            t_mark, timed = time.perf_counter(), 0
        if preempted and unsaved:
            save_checkpoint()  # the eval is left to the resumed run, which does it first
            saved = iter_num
        if iter_num == cfg.max_iters or cfg.eval_only or preempted:
            break

        # one optimizer step: accumulate gradients over the micro-steps, sync them on the last one
        sums = torch.zeros(3, device=dev)  # total loss, cross-entropy, auxiliary term: summed over micro-steps
        stats_sum, stats_count = {}, {}
        log_step = iter_num % cfg.log_interval == 0  # every rank reads its figures back then (master writes them)
        if cfg.dispersion == "rotated_angular" and cfg.dispersion_rotation == "step":
            rotation = controls.step_rotation(cfg.seed, iter_num, raw_model.config.n_embd, dev)
        rescale = iter_num % cfg.dispersion_match_interval == 0  # compute rotated_angular's scale at this step
        step_vectors = {}  # the auxiliary term's parameter gradients, for the strength meter
        aux_weight = cfg.dispersion_weight * (min(1.0, (iter_num + 1) / cfg.dispersion_warmup_iters)
                                              if cfg.dispersion_warmup_iters else 1.0)
        for micro_step in range(accum_per_rank):
            last = micro_step == accum_per_rank - 1
            sync = fsdp.no_sync(model, last, cfg.fsdp_low_memory) if sharded else \
                contextlib.nullcontext() if (not ddp or last) else model.no_sync()
            noise = None
            if cfg.neftune_alpha > 0:
                noise = controls.neftune_noise((x.size(0), x.size(1), raw_model.config.n_embd), cfg.neftune_alpha,
                                               generator=aux_gen, device=dev)  # (B, T, C)
            with sync:
                with autocast:
                    if use_hidden:
                        logits, ce, hidden = model(x, y, return_hidden=True, emb_noise=noise)
                        aux, aux_value, stats, vectors = controls.auxiliary_term(
                            hidden, cfg.dispersion, disp_layers, aux_weight, aux_options, aux_gen, rotation, trainable,
                            cfg.dispersion_match_params, scale=None if rescale else match_scale,
                            with_ratio=master and log_step and micro_step == 0 and not sharded,  # (param grads)
                            with_vectors=push is not None)
                        if rescale and "ctrl/scale" in stats:
                            match_scale = stats["ctrl/scale"]
                        for name, v in (vectors or {}).items():
                            step_vectors[name] = step_vectors.get(name, 0.0) + v / accum_per_rank
                    else:
                        logits, ce = model(x, y, emb_noise=noise)
                        aux, aux_value, stats = torch.zeros((), device=dev), torch.zeros((), device=dev), {}
                    if teacher is not None:
                        with torch.no_grad():
                            teacher_logits, _ = teacher(x)
                        kd = controls.distillation_loss(logits, teacher_logits, cfg.distill_temperature)
                        aux = aux + cfg.distill_weight * kd
                        aux_value = aux_value + cfg.distill_weight * kd.detach().float()
                        stats = {**stats, "distill/kl": kd.detach()}
                    loss = ce + aux
                # the next micro-batch is read, and copied to the device without blocking, while this one runs
                next_iter, next_micro = (iter_num, micro_step + 1) if not last else (iter_num + 1, 0)
                x, y = get_batch(train_data, (cfg.seed, 0, next_iter, next_micro * world + rank))
                scaler.scale(loss / accum_per_rank).backward()  # / accum: gradients of the mean over micro-steps
            sums += torch.stack([ce.detach().float() + aux_value, ce.detach().float(), aux_value])
            for k, v in stats.items():
                stats_sum[k] = stats_sum.get(k, 0.0) + v.float()
                stats_count[k] = stats_count.get(k, 0) + 1  # ctrl/param_grad_ratio: first micro-step only
        if ddp:
            dist.all_reduce(sums, op=dist.ReduceOp.AVG)
        sums /= accum_per_rank  # means over micro-steps and ranks
        newly_bad = (first_nonfinite[0] < 0) & ~torch.isfinite(sums[0])
        first_nonfinite = torch.where(newly_bad, torch.stack([iter_on_device, sums[0].to(count_dtype)]), first_nonfinite)
        iter_on_device += 1
        grad_norm = None
        if cfg.grad_clip > 0:
            scaler.unscale_(optimizer)
            clip = fsdp.clip_grad_norm_ if sharded else torch.nn.utils.clip_grad_norm_  # fsdp: the norm of all shards
            grad_norm = clip(raw_model.parameters(), cfg.grad_clip)  # before clipping
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        tokens_seen += tokens_per_iter
        timed += 1
        window = push.add_step(step_vectors) if push is not None else None
        if window is not None:  # a window of strength_window steps closed: its figures get their own record
            log({"iter": iter_num, **{k: v.item() for k, v in window.items()}})

        # log
        if log_step:
            stop_if_nonfinite()  # reads the device: the one synchronisation of a log step
            now = time.perf_counter()
            dt, t_mark, timed = (now - t_mark) / timed, now, 0  # mean over the iterations since the last log
            mean_loss, mean_ce, mean_aux = sums.tolist()
        if log_step and master:
            mfu = flops_per_iter / dt / (peak * world) if peak else None
            record = {"iter": iter_num, "loss": mean_loss, "ce": mean_ce, "lr": lr, "tokens": tokens_seen,
                      "dt_ms": dt * 1000, "mfu": mfu, "mem_mb": system.peak_memory_mb(device_type)}
            if grad_norm is not None:
                record["grad_norm"] = grad_norm.item()
            if use_hidden or teacher is not None:
                record["aux"] = mean_aux
                # per-layer figures from this rank's micro-steps (computing them costs one no-grad pass over the pairs)
                record.update({k: v.item() / stats_count[k] for k, v in stats_sum.items()})
            log(record)
            losses_shown = {"ce": f"{mean_ce:.4f}", "aux": f"{mean_aux:+.4f}"} if (use_hidden or teacher) else \
                {"loss": f"{mean_loss:.4f}"}
            bar.set_postfix(**losses_shown, lr=f"{lr:.2e}", ms=f"{dt * 1000:.0f}", mfu=f"{mfu * 100:.1f}%" if mfu else "n/a")
        bar.update(1)
        iter_num += 1

    bar.close()
    if master and preempted:  # exit status 0: a requeued job resumes from here
        print(f"preempted ({stop.name}): " + (
            f"checkpoint {ckpt_path} saved at step {iter_num}; continue with --init_from=resume" if unsaved or ckpt
            else "stopped before the first step, nothing to save"))
    elif master:
        print(summary_line(cfg, iter_num - first_iter, time.time() - t_start, best_val_loss, last_eval, saved, ckpt_path,
                           metrics_path))
    if wandb_run is not None:
        wandb_run.finish()
    stop.restore()
    if ddp:
        dist.destroy_process_group()


def summary_line(cfg, iters, seconds, best_val_loss, last_eval, saved, ckpt_path, metrics_path):
    """The end-of-run line: what ran, how long, the losses, and where it all is."""
    text = f"done: {iters} iterations in {seconds / 60:.1f} min"
    if last_eval:
        text += f"; val loss {last_eval[1]:.4f} at step {last_eval[0]}"
    if math.isfinite(best_val_loss):
        text += f" (best {best_val_loss:.4f})"
    text += f"; checkpoint {ckpt_path} (iteration {saved})" if saved is not None else "; no checkpoint written this run"
    return text + f"; log {metrics_path}"


def lr_at(cfg, it):
    """The learning rate of iteration it: linear warmup, then cosine decay to min_lr (or constant)."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    if it >= decay_iters:
        return cfg.min_lr
    ratio = (it - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)


def read_for_resume(cfg, given):
    """(path, checkpoint) to resume from: out_dir/ckpt.pt, or the folder out_dir/ckpt_dcp that parallel=fsdp
    writes (its extra.pt here; the shards once the model is sharded). Which: parallel where given, else
    the one there. Verified (checksums, entries, finite numbers)."""
    file, folder = os.path.join(cfg.out_dir, "ckpt.pt"), os.path.join(cfg.out_dir, "ckpt_dcp")
    there = os.path.exists(folder) or os.path.exists(folder + ".old")
    wants_folder = cfg.parallel == "fsdp" if "parallel" in given else there and not os.path.exists(file)
    if wants_folder:
        if not there and os.path.exists(file):
            raise MissingFileError(f"parallel=fsdp resumes from a folder {folder}, but {cfg.out_dir} holds {file}; "
                                   f"convert it first (python fsdp.py from-ckpt {file} {folder}) or resume with "
                                   "parallel=ddp")
        import fsdp
        return folder, fsdp.read_extra(folder)
    if there and not os.path.exists(file):
        raise MissingFileError(f"parallel={cfg.parallel} resumes from {file}, but {cfg.out_dir} holds the FSDP "
                               f"folder {folder}; resume with parallel=fsdp, or convert it first (python fsdp.py "
                               f"to-ckpt {folder} {file})")
    return file, checkpoint.read_for_resume(file, cfg.allow_unsafe_pickle)


def resume_settings(cfg, given, ckpt, ckpt_path):
    """The settings of a resumed run: the checkpoint's (its config, and model_args for the model
    settings it lacks), with those given (`given`: key -> config file or "command line") that may
    change on resume (RESUME_MAY_CHANGE). Another setting given with a value other than the
    checkpoint's is an error naming both. Returns (Config, ["max_iters 200 -> 400", ...])."""
    saved = {**{k: v for k, v in ckpt["model_args"].items() if k in DEFAULTS},
             **{k: v for k, v in (ckpt.get("config") or {}).items() if k in DEFAULTS}}  # unknown keys: other versions
    settings, changed, refused = dataclasses.asdict(cfg), [], []
    for key in DEFAULTS:
        if key in RESUME_FOUND_BY:
            continue
        if key not in given:
            settings[key] = saved.get(key, settings[key])  # a setting newer than the checkpoint: its default
            continue
        # a key the checkpoint lacks was its default then (older versions, nanoGPT)
        old, new = saved.get(key, DEFAULTS[key]), settings[key]
        if key == "vocab_size" and new is None:  # None: the data's or the model's, which the checkpoint recorded
            settings[key] = old
            continue
        if old == new:
            continue
        moved = key == "dataset" and os.path.basename(os.path.normpath(str(old))) == os.path.basename(os.path.normpath(new))
        if key in RESUME_MAY_CHANGE or moved:  # moved: the same data folder in another place
            if key in saved:
                changed.append(f"{key} {old!r} -> {new!r}" if isinstance(new, str) else f"{key} {old} -> {new}")
        else:
            refused.append(f"{key}={new!r} ({given[key]}) where the run has {key}={old!r}")
    if refused:
        raise InputError(f"init_from=resume continues the run in {ckpt_path} with the settings it was saved with, "
                         f"but {'; '.join(refused)}. Leave {'them' if len(refused) > 1 else 'it'} out to continue that "
                         f"run; to train with other settings, start a new run in another --out_dir (with "
                         f"--init_from={ckpt_path} to start from its weights). Only how long, the learning-rate schedule, "
                         "evaluation, logging and the machine may change on resume (RESUME_MAY_CHANGE in train.py)")
    if settings["decay_lr"] and settings["lr_decay_iters"] is None and any(c.startswith("max_iters ") for c in changed):
        changed.append(f"the learning rate now decays until iteration {settings['max_iters']} (lr_decay_iters=None)")
    return Config(**settings), changed


def check_settings(cfg):
    """Checks that need more than a type: they stop the run before any work is done."""
    problems = []
    choices = disperse.VARIANTS + controls.CONTROLS
    if cfg.dispersion not in choices + ("none",):
        problems.append(f"dispersion={cfg.dispersion!r}; choose one of none, {', '.join(choices)}")
    for key in ("batch_size", "block_size", "gradient_accumulation_steps", "eval_interval", "eval_iters", "log_interval"):
        if getattr(cfg, key) < 1:
            problems.append(f"{key}={getattr(cfg, key)} must be at least 1")
    if cfg.max_iters < 0:
        problems.append(f"max_iters={cfg.max_iters} must be non-negative")
    if not 0 <= cfg.dropout < 1:
        problems.append(f"dropout={cfg.dropout} must be in [0, 1)")
    if cfg.dtype not in ("auto", "float32", "bfloat16", "float16"):
        problems.append(f"dtype={cfg.dtype!r}; choose auto, float32, bfloat16 or float16")
    if cfg.probe_interval and cfg.probe_interval % cfg.eval_interval:
        problems.append(f"probe_interval={cfg.probe_interval} must be a multiple of eval_interval={cfg.eval_interval}")
    if cfg.eval_tasks and not cfg.eval_data_dir:
        problems.append("eval_tasks needs eval_data_dir (the folder of <task>/<split>.jsonl files)")
    try:
        model_config_from_dict({**dataclasses.asdict(cfg), "vocab_size": cfg.vocab_size or 1})  # n_embd % n_head, ...
    except ValueError as e:
        problems.append(str(e))
    if cfg.distill_weight > 0 and not cfg.distill_from:
        problems.append("distill_weight > 0 needs distill_from (a teacher checkpoint or HF directory)")
    if cfg.dispersion_rotation not in ("run", "step"):
        problems.append(f"dispersion_rotation={cfg.dispersion_rotation!r}; choose run or step")
    if cfg.dispersion_match_interval < 1 or cfg.strength_window < 0:
        problems.append(f"dispersion_match_interval={cfg.dispersion_match_interval} must be at least 1 and "
                        f"strength_window={cfg.strength_window} at least 0")
    if cfg.wandb_log and not system.module_available("wandb"):
        problems.append("wandb_log=True but wandb is not installed; pip install wandb, or set wandb_log=False")
    if cfg.parallel not in ("ddp", "fsdp") or cfg.dist_timeout_s < 1:
        problems.append(f"parallel={cfg.parallel!r} must be ddp or fsdp and dist_timeout_s={cfg.dist_timeout_s} at least 1")
    if cfg.parallel == "fsdp":
        import fsdp
        problems += fsdp.unsupported(cfg)
    if problems:
        raise InputError("; ".join(problems))


if __name__ == "__main__":
    with system.lost_rank_reported():  # another rank died or hung: one line, not a traceback
        run_cli(main, sys.argv[1:])
