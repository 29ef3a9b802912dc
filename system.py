"""
The machine: which device to use, its peak FLOP/s (for MFU), its memory, glibc's allocator, and a
description of the hardware for reports.
"""

import ctypes
import importlib.util
import os
import platform
import sys

import torch

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
