"""
Train a GPT, optionally with a dispersion loss on its hidden states.

One process (CPU, one GPU, or Apple MPS):
    python train.py config/train_local_cpu.py
    python train.py --batch_size=32 --compile=False
DDP on one node with 8 GPUs:
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py
DDP on two nodes: torchrun's own flags (--nnodes, --node_rank, --master_addr, --master_port).

Settings are the module-level names below; config files and --key=value overrides replace them,
and are checked by configurator.py before any work starts.
"""

import contextlib
import ctypes
import importlib.util
import json
import math
import os
import random
import shutil
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import checkpoint
import disperse
from configurator import load_config
from data.common import get_tokenizer, open_split, read_meta, sample_batch
from errors import InputError, MissingFileError, run_cli
from model import GPT, GPTConfig, device_peak_flops, load_model, model_config_from_dict, model_config_to_dict

# dispersion settings that are controls built from the angular term's gradient (disperse.py), not losses:
# their surrogate's value means nothing, so the logged loss is CE for them
CONTROLS = ("random_direction", "rotated_angular")

# -----------------------------------------------------------------------------
# default settings: GPT-2 (124M) from scratch on OpenWebText, 8 GPUs
# I/O
out_dir = "out"
eval_interval = 2000
log_interval = 1
eval_iters = 200  # batches per loss estimate, split across ranks
eval_only = False  # evaluate once and exit
always_save_checkpoint = True  # save at every eval, not only when val loss improves
keep_best = False  # also keep the checkpoint of the lowest val loss as ckpt_best.pt (selection by val, never test)
init_from = "scratch"  # 'scratch', 'resume' (from out_dir), or weights only (fresh optimizer, iteration 0) from
#                        another run's out_dir or ckpt.pt, a hub name ('gpt2'..'gpt2-xl') or a local HF directory
allow_unsafe_pickle = False  # open checkpoints not in the safe format (older or foreign files): that can run code
seed = 1337
# data
dataset = "openwebtext"  # a folder under data/ or a path to a prepared folder (train.bin, val.bin, meta.json);
#                          meta.json names the tokenizer, which the checkpoint records (no meta.json: GPT-2's)
gradient_accumulation_steps = 5 * 8  # micro-steps per optimizer step, summed over all ranks
batch_size = 12  # sequences per micro-step per rank
block_size = 1024
# model
n_layer = 12
n_head = 12
n_embd = 768
n_inner = None  # MLP width; None is 4 * n_embd
dropout = 0.0  # 0 for pretraining; 0.1 for GPT-2 mid-training as in the paper
bias = False  # biases in Linears and LayerNorms (a pretrained GPT-2 always has them)
vocab_size = 50257
# the block's variant (model.py GPTConfig); the defaults are GPT-2's. With init_from our ckpt.pt or a Hugging
# Face GPT-2 / Llama / Qwen2 / Qwen3 directory or hub name ('Qwen/Qwen3-0.6B'), the model settings come from it.
# A Qwen3-shaped model from scratch:
# norm=rmsnorm pos_emb=rope mlp=swiglu n_kv_head=8 head_dim=128 qk_norm=True bias=False rope_theta=1e6
norm = "layernorm"  # layernorm or rmsnorm
norm_eps = 1e-5
pos_emb = "learned"  # learned positions or rope
rope_theta = 10000.0
mlp = "gelu"  # gelu, or swiglu (n_inner wide; None: 8/3 * n_embd rounded up to a multiple of 256)
n_kv_head = None  # grouped-query attention: key/value heads; None: n_head
head_dim = None  # per-head width; None: n_embd // n_head
qk_norm = False  # RMSNorm on each head's queries and keys
qkv_bias = None  # bias of the q/k/v projection alone; None: same as bias (Qwen2: bias=False, qkv_bias=True)
tie_embeddings = True  # output head shares the token embedding
gradient_checkpointing = False  # recompute each block's activations in backward: less memory, ~30% more compute
# optimizer: AdamW
learning_rate = 6e-4
max_iters = 600000
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0  # 0 disables clipping
# learning rate schedule: linear warmup, then cosine decay to min_lr
decay_lr = True
warmup_iters = 2000
lr_decay_iters = None  # None: max_iters
min_lr = 6e-5
# dispersion loss (disperse.py): total = CE + dispersion_weight * mean over layers
dispersion = "none"  # none, angular, decorrelation, l2_repel, orthogonalization, or a control:
#                      condense, cross_sequence, norm_penalty, random_direction, rotated_angular
dispersion_weight = 0.1
dispersion_tau = 1.0
dispersion_layers = "all"  # all, last, early_half, late_half, or HF hidden-state indices "1,6,12"
dispersion_max_tokens = None  # sample this many positions per sequence and layer; None: all
dispersion_clamp = 0.1  # straight-through clamp of cosines to [-1+t, 1-t] before arccos
dispersion_eps = 1e-2  # z / (|z| + eps)
dispersion_margin = 0.5  # orthogonalization's margin (0.5 = 90 degrees)
dispersion_norm_weight = 0.1  # l2_repel's norm penalty weight
dispersion_last_pre_ln = False  # last layer before ln_f instead of after (HF indexing is after)
dispersion_warmup_iters = 0  # linear warmup of the weight; 0: constant, as in the paper
dispersion_match_params = True  # rotated_angular: rescale it to the angular term's parameter-gradient norm at
#                                 every micro-step (2 extra backward passes); False: rotation only
# other controls
neftune_alpha = 0.0  # NEFTune: uniform noise alpha/sqrt(T*C) on the token embeddings
distill_from = None  # teacher: a checkpoint or Hugging Face GPT-2 directory
distill_weight = 0.0  # total += distill_weight * KL(teacher || student)
distill_temperature = 1.0
# benchmarks and condensation probes at eval steps
eval_tasks = ""  # e.g. "arc_easy,piqa"; needs eval_data_dir
eval_limit = 200
eval_data_dir = ""  # folder of <task>/<split>.jsonl
eval_num_fewshot = 0
probe_interval = 0  # probe condensation every this many iterations (multiple of eval_interval); 0: never
probe_text = ""  # text file for the probe (e.g. wikitext-103 valid); empty: the dataset's val.bin
probe_n_seq = 16
probe_seq_len = 256
# system
backend = "auto"  # DDP: nccl on CUDA, gloo on CPU
device = "auto"  # auto, cpu, cuda, cuda:1, mps
dtype = "auto"  # auto (bfloat16 where supported, else float16 on CUDA, float32 on CPU), float32, bfloat16, float16
compile = True  # torch.compile the model
peak_flops = None  # one device's peak FLOP/s for MFU; None: look it up (model.PEAK_FLOPS)
malloc_tuning = True  # glibc (Linux): keep freed memory for reuse instead of handing it back to the OS every step
# experiment tracking: Weights & Biases gets the records of metrics.jsonl (which stays the source of truth)
wandb_log = False
wandb_project = "disperse-gpt"
wandb_run_name = ""  # empty: wandb picks a name
wandb_group = ""  # e.g. the experiment, so that its arms and seeds show together
# -----------------------------------------------------------------------------
_defaults = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str, type(None)))}
_types = {  # settings whose default (None, say) does not tell their type
    "n_inner": (int, type(None)), "n_kv_head": (int, type(None)), "head_dim": (int, type(None)),
    "qkv_bias": (bool, type(None)), "lr_decay_iters": (int, type(None)), "dispersion_max_tokens": (int, type(None)),
    "distill_from": (str, type(None)), "peak_flops": (float, type(None)), "dispersion_layers": (str, int, list),
}


def main(argv):
    config = load_config(_defaults, argv, _types)
    globals().update(config)  # from here on the settings are plain names, as in nanoGPT
    check_settings()
    data_dir = dataset if os.path.isdir(dataset) else os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", dataset)
    meta = read_meta(data_dir)  # names the data's tokenizer, which the benchmarks and the probe text are encoded with
    tokenizer = check_input_files(meta["tokenizer"])
    if malloc_tuning:
        tune_malloc()

    # ------------------------------------------------------------------ processes and devices
    ddp = int(os.environ.get("RANK", -1)) != -1
    dev = device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if ddp:
        if dev.startswith("cuda"):
            dev = f"cuda:{int(os.environ['LOCAL_RANK'])}"
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=("nccl" if dev.startswith("cuda") else "gloo") if backend == "auto" else backend)
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    master = rank == 0
    device_type = "cuda" if dev.startswith("cuda") else "mps" if dev.startswith("mps") else "cpu"
    if gradient_accumulation_steps % world != 0:
        raise InputError(f"gradient_accumulation_steps={gradient_accumulation_steps} must be a multiple of "
                         f"the number of processes ({world}); it counts micro-steps summed over all ranks")
    accum_per_rank = gradient_accumulation_steps // world
    tokens_per_iter = gradient_accumulation_steps * batch_size * block_size
    ptdtype_name = dtype
    if dtype == "auto":
        ptdtype_name = ("bfloat16" if torch.cuda.is_bf16_supported() else "float16") if device_type == "cuda" else "float32"
    ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[ptdtype_name]
    autocast = contextlib.nullcontext() if ptdtype == torch.float32 else torch.autocast(device_type=device_type, dtype=ptdtype)
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls and convolutions on Ampere and newer
        torch.backends.cudnn.allow_tf32 = True
    if master:
        os.makedirs(out_dir, exist_ok=True)
        for name in ("ckpt.pt.tmp", "ckpt_best.pt.tmp", "metrics.jsonl.tmp"):  # left by a run killed mid-write
            if os.path.exists(os.path.join(out_dir, name)):
                os.remove(os.path.join(out_dir, name))
        print(f"{world} process(es) on {device_type}, {ptdtype_name}; {tokens_per_iter:,} tokens per iteration "
              f"({gradient_accumulation_steps} micro-steps x {batch_size} x {block_size})")

    # ------------------------------------------------------------------ data
    train_data = open_split(data_dir, "train", block_size, vocab_size, meta)  # also checks the largest token id
    val_data = open_split(data_dir, "val", block_size, vocab_size, meta)

    def get_batch(data, key):
        x, y = sample_batch(data, batch_size, block_size, key)
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        if device_type == "cuda":
            return x.pin_memory().to(dev, non_blocking=True), y.pin_memory().to(dev, non_blocking=True)
        return x.to(dev), y.to(dev)

    # ------------------------------------------------------------------ model
    torch.manual_seed(seed + rank)  # dropout masks differ across ranks; the init is broadcast from rank 0 by DDP
    iter_num, best_val_loss, ckpt = 0, float("inf"), None
    ckpt_path = os.path.join(out_dir, "ckpt.pt")
    if init_from == "scratch":
        model = GPT(model_config_from_dict(config))  # the model settings above
    elif init_from == "resume":
        ckpt = read_checkpoint(ckpt_path)  # checksum verified, every number finite
        with fits(ckpt_path, "model"):
            model = GPT(GPTConfig(**{**ckpt["model_args"], "dropout": dropout}))
            model.load_state_dict(ckpt["model"])
        iter_num, best_val_loss = ckpt["iter_num"], ckpt["best_val_loss"]
        if master:
            print(f"resuming from {ckpt_path} at iteration {iter_num}")
    else:
        model, _ = load_model(init_from, dropout=dropout, allow_unsafe_pickle=allow_unsafe_pickle)  # a pretrained GPT-2
    if block_size < model.config.block_size:
        model.crop_block_size(block_size)
    if model.config.vocab_size != vocab_size:
        raise InputError(f"the model has vocab_size={model.config.vocab_size} but vocab_size={vocab_size}; "
                         "set vocab_size to the model's")
    model.to(dev)
    raw_model = model  # the module whose state_dict has clean names: no _orig_mod. or module. prefixes
    raw_model.gradient_checkpointing = gradient_checkpointing
    if master:
        print(f"model: {model.get_num_params() / 1e6:.2f}M parameters (without position embeddings)")

    scaler = torch.amp.GradScaler(device_type, enabled=(ptdtype == torch.float16))
    optimizer = raw_model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type)
    if ckpt is not None:
        with fits(ckpt_path, "optimizer state"):
            optimizer.load_state_dict(ckpt["optimizer"])
            scaler.load_state_dict(ckpt["scaler"])
            check_state(raw_model, ckpt["model"], optimizer)

    teacher = None
    if distill_from:
        teacher, _ = load_model(distill_from, device=dev, allow_unsafe_pickle=allow_unsafe_pickle)
        teacher.eval().requires_grad_(False)

    if compile:
        if master:
            print("compiling the model...")
        if dispersion in CONTROLS:
            # their gradient ratio (log steps) runs backward through the graph more than once (retain_graph),
            # which a compiled backward that reuses ("donates") its saved buffers refuses
            torch._functorch.config.donated_buffer = False
        model = torch.compile(model)
    if ddp:
        model = DDP(model, device_ids=[int(os.environ["LOCAL_RANK"])] if device_type == "cuda" else None)

    # the auxiliary losses draw random numbers from their own generators, so switching them on
    # changes neither the data order nor the dropout masks of a run with the same seed
    aux_gen = torch.Generator(device=dev if device_type == "cuda" else "cpu")
    aux_gen.manual_seed(seed * 1000 + 7 + rank)
    if ckpt is not None:
        states = ckpt["rng"]  # one entry per rank
        if len(states) != world and master:
            print(f"warning: the checkpoint holds RNG states of {len(states)} ranks, this run has {world}; "
                  "the resumed run will not repeat the original one exactly")
        with fits(ckpt_path, "RNG state"):
            restore_rng(states[rank % len(states)], aux_gen)
    use_hidden = dispersion != "none"
    disp_options = dict(tau=dispersion_tau, eps=dispersion_eps, clamp=dispersion_clamp, margin=dispersion_margin,
                        norm_weight=dispersion_norm_weight, max_tokens=dispersion_max_tokens, generator=aux_gen)
    disp_layers = disperse.layer_indices(raw_model.config.n_layer, dispersion_layers) if use_hidden else []

    trainable = [p for p in raw_model.parameters() if p.requires_grad]

    def aux_loss(hidden, it, rotation, with_ratio):
        """The dispersion term (or control) on the hidden states; the part of it that enters the
        logged loss (none of a control's surrogate, whose value means nothing); its figures for the log."""
        weight = dispersion_weight * (min(1.0, (it + 1) / dispersion_warmup_iters) if dispersion_warmup_iters else 1.0)
        if dispersion not in CONTROLS:
            total, stats = disperse.dispersion_term(hidden, dispersion, disp_layers, weight, **disp_options)
            return total, total.detach().float(), stats
        options = {k: v for k, v in disp_options.items() if k != "generator"}
        if dispersion == "random_direction":
            surrogate, stats, angular_grads = disperse.random_direction_term(hidden, disp_layers, weight, aux_gen, **options)
        else:
            surrogate, stats, angular_grads = disperse.rotated_angular_term(
                hidden, disp_layers, weight, rotation, params=trainable if dispersion_match_params else None,
                generator=aux_gen, **options)
        if with_ratio:
            stats["ctrl/param_grad_ratio"] = param_grad_ratio(surrogate, hidden, angular_grads)
        return surrogate, torch.zeros((), device=dev), stats

    def param_grad_ratio(surrogate, hidden, angular_grads):
        """||d control / d params|| / ||d (weight * angular) / d params|| on the same micro-batch. The
        angular term's parameter gradient is the backward pass of its hidden-state gradients, which
        the control computed anyway; both go through torch.autograd.grad, so .grad (the real step) is
        untouched. Cost: two extra backward passes through the model, at log steps only."""
        layers = list(angular_grads)
        control = disperse.param_grad_norm([surrogate], None, trainable)
        angular = disperse.param_grad_norm([hidden[i] for i in layers],
                                           [angular_grads[i].to(hidden[i].dtype) for i in layers], trainable)
        return control / angular

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def estimate_loss():
        """Mean loss over eval_iters fixed batches per split (the same batches at every eval),
        shared out across ranks."""
        out = {}
        model.eval()
        for split, data, stream in (("train", train_data, 1), ("val", val_data, 2)):
            total = torch.zeros(2, device=dev)  # loss sum, batch count
            for k in range(rank, eval_iters, world):
                x, y = get_batch(data, (seed, stream, k))
                with autocast:
                    _, loss = raw_model(x, y)
                total += torch.stack([loss.float(), torch.ones((), device=dev)])
            if ddp:
                dist.all_reduce(total)
            out[split] = (total[0] / total[1]).item()
        model.train()
        return out

    def lr_at(it):
        if not decay_lr:
            return learning_rate
        if it < warmup_iters:
            return learning_rate * (it + 1) / (warmup_iters + 1)
        decay_iters = lr_decay_iters or max_iters
        if it >= decay_iters:
            return min_lr
        ratio = (it - warmup_iters) / max(1, decay_iters - warmup_iters)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)

    probe_set = None
    if probe_interval and master:
        # a fixed set of held-out sequences, probed for condensation at every probe step
        from eval.condensation import quick_probe, read_tokens, sample_sequences
        if probe_text:
            probe_tokens = read_tokens(probe_text, tokenizer.encode)
            if len(probe_tokens) and probe_tokens.max() >= vocab_size:
                raise InputError(f"probe_text={probe_text!r} is encoded with the data's tokenizer {tokenizer.name!r}, "
                                 f"which gives ids up to {probe_tokens.max()}, but vocab_size={vocab_size}; leave "
                                 "probe_text empty to probe the dataset's val.bin")
        else:
            probe_tokens = val_data
        probe_set = sample_sequences(probe_tokens, probe_n_seq, min(probe_seq_len, block_size), seed=0)

    metrics_path = os.path.join(out_dir, "metrics.jsonl")
    if master:
        trim_metrics(metrics_path, keep_before=iter_num)  # a resumed run rewrites what followed its checkpoint
    peak = peak_flops or device_peak_flops(dev)
    flops_per_iter = raw_model.flops_per_token(block_size) * tokens_per_iter

    wandb_run = None
    if wandb_log and master:
        import wandb  # only now: wandb is optional (check_settings made sure it is installed)
        wandb_run = wandb.init(project=wandb_project, name=wandb_run_name or None, group=wandb_group or None,
                               config=config)

    def log(record):
        with open(metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if wandb_run is not None:
            wandb_run.log(record, step=record["iter"])

    # ------------------------------------------------------------------ the loop
    from tqdm import tqdm
    bar = tqdm(total=max_iters, initial=iter_num, desc="train", unit="it", disable=not master, dynamic_ncols=True)
    tokens_seen = iter_num * tokens_per_iter
    x, y = get_batch(train_data, (seed, 0, iter_num, rank))  # the first micro-batch; each next one is read while the model runs
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
    while True:
        lr = lr_at(iter_num)
        for group in optimizer.param_groups:
            group["lr"] = lr

        if iter_num % eval_interval == 0 or iter_num == max_iters or eval_only:
            stop_if_nonfinite()
            losses = estimate_loss()
            bench = run_benchmarks(raw_model, tokenizer) if eval_tasks else {}  # every rank scores its share of the items
            rng_states = [capture_rng(aux_gen)]
            if ddp:  # every rank's generators, so that each resumes with its own dropout masks
                rng_states = [None] * world
                dist.all_gather_object(rng_states, capture_rng(aux_gen))
            if master:
                record = {"iter": iter_num, "val_loss": losses["val"], "train_loss_eval": losses["train"],
                          "tokens": tokens_seen, **bench}
                bar.write(f"iter {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
                if not math.isfinite(losses["val"]):
                    sys.exit(f"error: val loss is {losses['val']} at iteration {iter_num}; stopping. "
                             f"The last good checkpoint in {ckpt_path} is left as it was.")
                changed = iter_num > (ckpt["iter_num"] if ckpt else 0)  # a just-resumed model is already saved
                improved = losses["val"] < best_val_loss
                if changed and not eval_only and (improved or always_save_checkpoint):
                    best_val_loss = min(best_val_loss, losses["val"])
                    write_checkpoint(ckpt_path, {
                        "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                        "model_args": model_config_to_dict(raw_model.config), "iter_num": iter_num,
                        "best_val_loss": best_val_loss, "config": config, "rng": rng_states,
                        "data": {"seed": seed, "next_step": iter_num}, "tokenizer": meta["tokenizer"],
                    })
                    if keep_best and improved:
                        best_path = os.path.join(out_dir, "ckpt_best.pt")
                        keep_copy(ckpt_path, best_path)
                if probe_set is not None and iter_num % probe_interval == 0:
                    record.update({f"probe/{k}": v for k, v in quick_probe(raw_model, probe_set).items()})
                    bar.write(f"iter {iter_num}: last-layer mean cos {record[f'probe/layer{raw_model.config.n_layer}/mean_cos']:.3f}, "
                              f"Spearman rho over depth {record['probe/spearman']:+.2f}")
                log(record)
            t_mark, timed = time.perf_counter(), 0
        if iter_num == max_iters or eval_only:
            break

        # one optimizer step: accumulate gradients over the micro-steps, sync them on the last one
        sums = torch.zeros(3, device=dev)  # total loss, cross-entropy, auxiliary term: summed over micro-steps
        stats_sum, stats_count = {}, {}
        log_step = iter_num % log_interval == 0  # every rank reads its figures back then (master writes them)
        rotation = None
        if dispersion == "rotated_angular":
            # one rotation per optimizer step, shared by every layer, micro-step and rank: the weights sum
            # the gradients of all of them, and only a shared rotation keeps the angular gradients' Gram
            # matrix across layers (independent ones per layer reach the weights 1.1-1.7x more weakly,
            # bench/bench_controls.py). Its generator is keyed by (seed, step), like the batches: no RNG
            # stream moves (data order, dropout masks, aux_gen) and a resumed run draws the same ones.
            rotation_gen = torch.Generator().manual_seed(int(np.random.default_rng([seed, 3, iter_num]).integers(2**62)))
            rotation = disperse.random_rotation(raw_model.config.n_embd, rotation_gen).to(dev)
        for micro_step in range(accum_per_rank):
            last = micro_step == accum_per_rank - 1
            sync = contextlib.nullcontext() if (not ddp or last) else model.no_sync()
            noise = None
            if neftune_alpha > 0:
                noise = disperse.neftune_noise((x.size(0), x.size(1), raw_model.config.n_embd), neftune_alpha,
                                               generator=aux_gen, device=dev)  # (B, T, C)
            with sync:
                with autocast:
                    if use_hidden:
                        logits, ce, hidden = model(x, y, return_hidden=True, tok_emb_noise=noise,
                                                   last_hidden_before_ln=dispersion_last_pre_ln)
                        aux, aux_value, stats = aux_loss(hidden, iter_num, rotation, master and log_step and micro_step == 0)
                    else:
                        logits, ce = model(x, y, tok_emb_noise=noise)
                        aux, aux_value, stats = torch.zeros((), device=dev), torch.zeros((), device=dev), {}
                    if teacher is not None:
                        with torch.no_grad():
                            teacher_logits, _ = teacher(x)
                        kd = disperse.distillation_loss(logits, teacher_logits, distill_temperature)
                        aux = aux + distill_weight * kd
                        aux_value = aux_value + distill_weight * kd.detach().float()
                        stats = {**stats, "distill/kl": kd.detach()}
                    loss = ce + aux
                # the next micro-batch is read, and copied to the device without blocking, while this one runs
                next_iter, next_micro = (iter_num, micro_step + 1) if not last else (iter_num + 1, 0)
                x, y = get_batch(train_data, (seed, 0, next_iter, next_micro * world + rank))
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
        if grad_clip > 0:
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), grad_clip)  # before clipping
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        tokens_seen += tokens_per_iter
        timed += 1

        if log_step:
            stop_if_nonfinite()  # reads the device: the one synchronisation of a log step
            now = time.perf_counter()
            dt, t_mark, timed = (now - t_mark) / timed, now, 0  # mean over the iterations since the last log
            mean_loss, mean_ce, mean_aux = sums.tolist()
        if log_step and master:
            mfu = flops_per_iter / dt / (peak * world) if peak else None
            record = {"iter": iter_num, "loss": mean_loss, "ce": mean_ce, "lr": lr, "tokens": tokens_seen,
                      "dt_ms": dt * 1000, "mfu": mfu, "mem_mb": peak_memory_mb(device_type)}
            if grad_norm is not None:
                record["grad_norm"] = grad_norm.item()
            if use_hidden or teacher is not None:
                record["aux"] = mean_aux
                # per-layer figures from this rank's micro-steps (computing them costs one no-grad pass over the pairs)
                record.update({k: v.item() / stats_count[k] for k, v in stats_sum.items()})
            log(record)
            bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", ms=f"{dt * 1000:.0f}",
                            mfu=f"{mfu * 100:.1f}%" if mfu else "n/a")
        bar.update(1)
        iter_num += 1

    bar.close()
    if wandb_run is not None:
        wandb_run.finish()
    if ddp:
        dist.destroy_process_group()


def run_benchmarks(model, tokenizer):
    """Benchmark accuracies (eval/benchmarks.py) as flat metrics.jsonl keys: bench/<task>/<metric>."""
    from eval.benchmarks import evaluate
    results, _ = evaluate(model, eval_tasks, eval_data_dir, limit=eval_limit, num_fewshot=eval_num_fewshot,
                          progress=False, enc=tokenizer)
    flat = {}
    for task, metrics in results.items():
        if task == "config" or not isinstance(metrics, dict):
            continue
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not name.endswith("stderr") \
                    and name not in ("num_fewshot", "n"):
                flat[f"bench/{task}/{name}"] = value
    return flat


def check_settings():
    """Checks that need more than a type: they stop the run before any work is done."""
    problems = []
    if dispersion not in disperse.VARIANTS + CONTROLS + ("none",):
        problems.append(f"dispersion={dispersion!r}; choose one of none, {', '.join(disperse.VARIANTS + CONTROLS)}")
    for key in ("batch_size", "block_size", "gradient_accumulation_steps", "eval_interval", "eval_iters", "log_interval"):
        if globals()[key] < 1:
            problems.append(f"{key}={globals()[key]} must be at least 1")
    if max_iters < 0:
        problems.append(f"max_iters={max_iters} must be non-negative")
    if not 0 <= dropout < 1:
        problems.append(f"dropout={dropout} must be in [0, 1)")
    if dtype not in ("auto", "float32", "bfloat16", "float16"):
        problems.append(f"dtype={dtype!r}; choose auto, float32, bfloat16 or float16")
    if probe_interval and probe_interval % eval_interval:
        problems.append(f"probe_interval={probe_interval} must be a multiple of eval_interval={eval_interval}")
    if eval_tasks and not eval_data_dir:
        problems.append("eval_tasks needs eval_data_dir (the folder of <task>/<split>.jsonl files)")
    try:
        model_config_from_dict(globals())  # the model settings' own checks (n_embd % n_head, n_head % n_kv_head, ...)
    except ValueError as e:
        problems.append(str(e))
    if distill_weight > 0 and not distill_from:
        problems.append("distill_weight > 0 needs distill_from (a teacher checkpoint or HF directory)")
    if wandb_log and not module_available("wandb"):
        problems.append("wandb_log=True but wandb is not installed; pip install wandb, or set wandb_log=False")
    if problems:
        raise InputError("; ".join(problems))


def tune_malloc():
    """Make glibc's malloc keep big freed blocks for reuse. By default it gives every block above
    32 MB (the (B, T, vocab) logits and their gradient, the activations) back to the OS when it is
    freed, so the next step maps it again and page-faults it in, a page at a time: on the CPU that
    kernel time (sys) was as large as the compute (bench/bench_sys_time.py). Serving such blocks
    from the heap, and never trimming it, ends that. Returns whether it was applied: a no-op off
    Linux or without glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # <malloc.h>; the values are C ints
    return bool(mallopt(M_MMAP_THRESHOLD, ctypes.c_int(MALLOC_MMAP_THRESHOLD))
                and mallopt(M_TRIM_THRESHOLD, ctypes.c_int(2**31 - 1)))


MALLOC_MMAP_THRESHOLD = 2**30  # blocks at least this big are still mapped and unmapped each time


def module_available(name):
    """Whether `import name` would find the module, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def peak_memory_mb(device_type):
    """Peak memory so far: allocated by torch on a GPU, resident set of the process on a CPU."""
    if device_type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# ---------------------------------------------------------------------- checkpoints and RNG state

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


write_checkpoint = checkpoint.write  # atomic, with its checksum


def read_checkpoint(path):
    """The checkpoint to resume from, verified: its checksum, its entries, and finite numbers
    everywhere in the model and optimizer states (a diverged run is not resumed)."""
    if not os.path.exists(path):
        raise MissingFileError(f"init_from='resume' but there is no checkpoint at {path}; "
                               "check out_dir or start with init_from='scratch'")
    ckpt = checkpoint.read(path, allow_unsafe_pickle)
    missing = [k for k in ("model", "optimizer", "scaler", "model_args", "iter_num", "best_val_loss", "rng") if k not in ckpt]
    if missing:
        raise checkpoint.CheckpointError(f"checkpoint {path} lacks {missing}; it was not written by this train.py")
    if not isinstance(ckpt["iter_num"], int) or ckpt["iter_num"] < 0 or not isinstance(ckpt["rng"], list) or not ckpt["rng"]:
        raise checkpoint.CheckpointError(f"checkpoint {path}: iter_num={ckpt['iter_num']!r} or its RNG states are malformed")
    checkpoint.check_finite({"model": ckpt["model"], "optimizer": ckpt["optimizer"]["state"]}, path)
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
        raise checkpoint.CheckpointError(f"checkpoint {path}: its {what} does not fit this run "
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


def check_input_files(tokenizer_name):
    """Files and folders named by settings exist, before anything is trained or overwritten. Returns
    the data's tokenizer where the eval hooks need it (eval_tasks, probe_text), else None."""
    if probe_text and not os.path.isfile(probe_text):
        raise MissingFileError(f"probe_text={probe_text!r}: no such file")
    tokenizer = get_tokenizer(tokenizer_name) if (eval_tasks or probe_text) else None
    if eval_tasks:
        from eval import tasks as T
        try:
            names = T.expand(eval_tasks)
        except KeyError as e:
            raise InputError(f"eval_tasks: {e.args[0]}") from None
        if vocab_size < tokenizer.vocab_size:
            raise InputError(f"eval_tasks: the benchmarks are encoded with the data's tokenizer {tokenizer.name!r} "
                             f"({tokenizer.vocab_size} ids) but vocab_size={vocab_size}; train with vocab_size >= "
                             f"{tokenizer.vocab_size} or leave eval_tasks empty")
        missing = [n for n in names if not T.has_split(T.TASKS[n], T.TASKS[n].split, eval_data_dir)]
        if missing:
            raise MissingFileError(f"eval_tasks: no data for {', '.join(missing)} in eval_data_dir={eval_data_dir!r} "
                                   "(it should hold <dataset>/<split>.jsonl files, e.g. shared/benchmarks)")
    return tokenizer


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


def trim_metrics(path, keep_before):
    """Drop log lines of iterations at or after keep_before (those are redone after a resume).
    The new log is written beside the old one and renamed over it, so a kill never loses it.
    Only a cut last line (a kill mid-write; always of an iteration the resumed run redoes) is
    dropped silently; any other unreadable line stops the run with the log untouched."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    kept = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            it = record["iter"]
        except (json.JSONDecodeError, TypeError, KeyError):
            if n == len(lines) and not line.endswith("\n"):
                continue
            raise InputError(f"{path}, line {n}: not a log record ({line[:60].strip()!r}); fix or move "
                             "that line (or the file) away and start again") from None
        if it < keep_before:
            kept.append(line if line.endswith("\n") else line + "\n")
    if kept == lines:
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
