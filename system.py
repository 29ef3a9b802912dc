"""
The machine: which device to use, its peak FLOP/s (for MFU), its memory, glibc's allocator, a
description of the hardware for reports, and the processes: a scheduler's signal to stop (StopSignals),
and another rank of the run lost (lost_rank_reported).
"""

import contextlib
import ctypes
import importlib.util
import os
import platform
import re
import signal
import sys
import threading
import weakref

import torch
import torch.distributed as dist

from errors import close_progress_bars

# Dense bf16/fp16 tensor-core peak FLOP/s per device (no sparsity), from vendor data sheets.
PEAK_FLOPS = {
    "H200": 989e12, "H100 SXM": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "GH200": 989e12,
    "A100": 312e12, "A10G": 70e12, "A10": 125e12, "L40S": 362e12, "L4": 121e12,
    "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12, "T4": 65e12, "B200": 2250e12,
    "MI300X": 1307e12, "MI250X": 383e12,
}
CPU_PEAK_FLOPS = 1e12  # a rough figure for a few cores of a modern CPU in float32; set peak_flops to measure yours
MALLOC_MMAP_THRESHOLD = 2**30  # tune_malloc: blocks at least this big are still mapped and unmapped each time


def resolve_device(name):
    """'auto' -> cuda if available, else mps, else cpu; any other name as it is."""
    if name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"


def device_peak_flops(device):
    """Best guess of one device's peak FLOP/s, for MFU. Unknown GPUs give None."""
    if str(device).startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(torch.device(device))
        # longest key first, so 'H100 PCIe' wins over 'H100'
        for key in sorted(PEAK_FLOPS, key=len, reverse=True):
            if key in name:
                return PEAK_FLOPS[key]
        return None
    if str(device).startswith("cpu"):
        return CPU_PEAK_FLOPS
    return None


def peak_memory_mb(device_type):
    """Peak memory so far: allocated by torch on a GPU, resident set of the process on a CPU."""
    if device_type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


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


def module_available(name):
    """Whether `import name` would find the module, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def hardware():
    """What a run ran on, for reports: CPU model and count, GPUs, torch, Python, platform."""
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "gpus": gpus, "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


# ---------------------------------------------------------------------- processes

class StopSignals:
    """A scheduler's notice to stop: SIGTERM (preemption, scancel, torchrun passing on its own) or SIGUSR1
    (what SLURM's --signal=USR1@SECONDS sends before the time limit). The handler only notes the signal;
    train.py asks requested() at each step boundary, saves a checkpoint and exits 0. A second signal
    while that happens is noted and changes nothing, so it cannot cut a save short.

    requested() is the same on every rank: the flags are all-reduced (max) on the CPU every step, through
    a gloo group beside NCCL's, so that every rank stops, and saves, at the same step without waiting
    for the GPU. One process reads its own flag."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.name, self.previous, self.group = None, {}, None
        if dist.is_available() and dist.is_initialized() and dist.get_backend() != "gloo":
            self.group = dist.new_group(backend="gloo")  # a collective: every rank builds its StopSignals
        me = weakref.ref(self)  # the handlers go back to what they were when this object goes (see __del__)

        def note(signum, frame):
            stop = me()
            if stop is not None and stop.name is None:  # a second signal changes nothing
                stop.name = signal.Signals(signum).name
        if threading.current_thread() is threading.main_thread():  # Python sets handlers there only
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, note)

    def requested(self):
        """Whether any rank has been told to stop (self.name: the signal); every rank calls it at the same point."""
        if not (dist.is_available() and dist.is_initialized()):
            return self.name is not None
        number = torch.tensor([signal.Signals[self.name].value if self.name else 0], dtype=torch.int32)
        dist.all_reduce(number, op=dist.ReduceOp.MAX, group=self.group)
        number = int(number[0])  # the same on every rank (a signal that comes after the reduction: next step)
        if number and self.name is None:  # another rank's signal
            self.name = signal.Signals(number).name
        return number > 0

    def restore(self):
        """The handlers as they were: at the end of train.main, or when it raised and let go of this object,
        so that a process that called it (a test, a notebook) ends on SIGTERM again."""
        if threading.current_thread() is threading.main_thread():
            for sig, handler in self.previous.items():
                signal.signal(sig, handler)
            self.previous = {}

    __del__ = restore


LOST_RANK = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "timed out", "Timed out",
             "gloo", "NCCL")  # what a collective's error says when another rank died or stopped answering


@contextlib.contextmanager
def lost_rank_reported():
    """In a run of several processes, a collective that fails because another rank died (its sockets
    close: the error comes at once) or stopped answering (after dist_timeout_s) ends this rank with one
    line saying so, not a traceback. Anything else propagates."""
    try:
        yield
    except SystemExit:  # an error already said (errors.run_cli): end the process group first, or its threads
        if dist.is_available() and dist.is_initialized():  # (FSDP's, DCP's) may abort the exit (SIGABRT)
            dist.destroy_process_group()
        raise
    except Exception as e:
        several = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not several or not (isinstance(e, dist.DistError) or any(s in str(e) for s in LOST_RANK)):
            raise
        # gloo's "[.../pair.cc:537] Read error [host]:port: Connection reset by peer. This is typically ...": the middle
        said = re.sub(r"^\[[^\]]*\] ", "", str(e).strip().split("\n")[0]).split(". ")[0][:200]
        close_progress_bars()
        sys.exit(f"error: rank {dist.get_rank()}: another process of this run died or stopped answering "
                 f"({type(e).__name__}: {said}); this one stops too. The last checkpoint written is intact: "
                 "continue with --init_from=resume")
