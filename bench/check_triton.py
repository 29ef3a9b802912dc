"""
Do the Triton kernels (disperse_triton.py) give the float64 reference's values and gradients?
Every pair variant (angular, condense, orthogonalization, cross_sequence), float32 and bf16 inputs:
small shapes at the kernel's smallest tile (T = 2, T below the tile, a multiple of it and not, C not
a multiple of the kernel's chunk) and, on CUDA, the training shape (4, 1024, 768) at the kernel's own
tile, for both dot precisions (disperse_triton.DOT_PRECISIONS: 'ieee', and 'tf32x3', which only a GPU
can check, since the interpreter multiplies in float32 whatever the precision). The reference is
disperse's full-matrix implementation in float64, which tests/test_disperse.py checks against
brute-force sums.

    python bench/check_triton.py --device cuda --json bench/results/triton_check_cuda.json   # on a GPU
    TRITON_INTERPRET=1 python bench/check_triton.py --device cpu   # on the CPU, under Triton's interpreter
    python bench/check_triton.py --compile-for 80,86,89,90,100,120 # compile for CUDA GPUs, none needed

tests/test_disperse_triton.py runs the last two; bench/gpu_check.sh runs the first. Every case is
checked and printed; the exit status is 1 if any is off (all of them listed), 2 if the kernels cannot
run on the device at all.

--compile-for takes CUDA compute capabilities (80 A100, 86/89 RTX 30/40 and L4, 90 H100/H200,
100/120 Blackwell) and compiles both kernels, for every kind and both dot precisions, with the
launch settings disperse_triton.LAUNCH gives them, through Triton's own CUDA backend (its bundled
ptxas; no GPU or driver is needed): what the interpreter cannot tell, whether the kernels compile,
ptxas' register, spill and shared-memory figures, and whether their matmuls became tensor-core
instructions (HMMA, HGMMA) or float32 multiply-adds on the CUDA cores (FFMA). A kernel that fails
to compile or spills registers fails the check.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import disperse  # noqa: E402
from bench.provenance import failure_text, write_result  # noqa: E402

VARIANTS = ('angular', 'condense', 'orthogonalization', 'cross_sequence')
# a margin that makes the hinge act on many pairs; the rest as in tests/test_disperse.py
OPTIONS = dict(tau=0.7, eps=1e-2, clamp=0.1, margin=0.8)
SMALL_TILE = 16  # the smallest tile tl.dot takes: several row-blocks at small T
# (B, T, C, dtype); the gradient's absolute tolerance is 1e-5 for these
SMALL = [(2, 2, 5, torch.float32), (2, 11, 7, torch.float32), (2, 32, 40, torch.float32),
         (3, 37, 33, torch.float32), (2, 21, 9, torch.bfloat16)]
# the training shape; its gradients are of order 1/T^2, so their tolerance is relative to the largest
TRAINING = [(4, 1024, 768, torch.float32), (4, 1024, 768, torch.bfloat16)]


def check(variant, B, T, C, dtype, device, relative_atol, generator):
    """One case: {case, value_diff, grad_diff, grad_scale, ok}, or {case, error, ok} where it raised."""
    try:
        return compare(variant, B, T, C, dtype, device, relative_atol, generator)
    except Exception as e:  # noqa: BLE001  (a kernel that fails on this GPU is the finding; the other cases still run)
        return {"case": case_name(variant, B, T, C, dtype), "error": failure_text(e), "ok": False}


def case_name(variant, B, T, C, dtype):
    return f"{variant} {str(dtype).removeprefix('torch.')} {(B, T, C)}"


def compare(variant, B, T, C, dtype, device, relative_atol, generator):
    z = (torch.randn(B, T, C, generator=generator, dtype=torch.float64) * 0.5 + 0.2).to(device)
    leaf = z.to(dtype).requires_grad_()
    disperse.IMPLEMENTATION = 'triton'
    ours = disperse.dispersion_loss(leaf, variant, **OPTIONS)
    (ours * 1.7).backward()  # a gradient from above that is not 1
    ref_leaf = leaf.detach().double().requires_grad_()  # the same (rounded) input, in float64
    disperse.IMPLEMENTATION = 'reference'
    ref = disperse.dispersion_loss(ref_leaf, variant, **OPTIONS)
    (ref * 1.7).backward()
    grad_scale = ref_leaf.grad.abs().max().item()
    # autograd rounds the float32 gradient back to the input's dtype: bf16 keeps 8 bits
    rtol = 0.0 if dtype == torch.float32 else 2 ** -8
    atol = 1e-4 * grad_scale if relative_atol else 1e-5
    grad_diff = (leaf.grad.double() - ref_leaf.grad).abs()
    excess = grad_diff - (atol + rtol * ref_leaf.grad.abs())
    value_diff = abs(ours.item() - ref.item())
    ok = (ours.dtype == torch.float32 and value_diff < 1e-5 and excess.max().item() <= 0
          and grad_scale > (1e-4 if not relative_atol else 0.0))
    return {"case": case_name(variant, B, T, C, dtype), "value_diff": value_diff,
            "grad_diff": grad_diff.max().item(), "grad_scale": grad_scale, "ok": bool(ok)}


def compile_for(archs):
    """Rows {kernel, precision, kind, arch, tile, chunk, num_warps, registers, spill_bytes, shared_bytes,
    ok} for both kernels, both dot precisions and every kind, compiled ahead of time with their launch
    settings (disperse_triton.LAUNCH) for each CUDA compute capability in archs."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.compiler import ASTSource

    import disperse_triton
    constexprs = ('KIND', 'SYMMETRIC', 'TILE', 'CHUNK', 'DOT')

    def arg_type(name):  # the kernels' naming: *_ptr are float32 pointers, T, C, n_blocks ints, the rest floats
        return ('constexpr' if name in constexprs else '*fp32' if name.endswith('_ptr')
                else 'i32' if name in ('T', 'C', 'n_blocks') else 'fp32')
    rows = []
    for kernel in (disperse_triton.forward_kernel, disperse_triton.backward_kernel):
        names = kernel.arg_names
        for precision in disperse_triton.DOT_PRECISIONS:
            for kind, code in disperse_triton.KINDS.items():
                for arch in archs:
                    tile, chunk, warps = disperse_triton.launch_settings(arch, precision)
                    values = dict(KIND=code, SYMMETRIC=kind != 'cross_sequence', TILE=tile, CHUNK=chunk, DOT=precision)
                    source = ASTSource(fn=kernel, signature={name: arg_type(name) for name in names},
                                       constexprs={(names.index(name),): value for name, value in values.items()})
                    row = {"kernel": kernel.__name__, "precision": precision, "kind": kind, "arch": arch,
                           "tile": tile, "chunk": chunk, "num_warps": warps}
                    try:
                        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                                                  options=dict(num_warps=warps))
                        row.update(ptxas_usage(get_ptxas(arch).path, compiled.asm["ptx"], arch),
                                   shared_bytes=compiled.metadata.shared, **matmul_instructions(compiled.asm["cubin"]))
                        row["ok"] = row["spill_bytes"] == 0
                    except Exception as e:  # noqa: BLE001  (a kernel that does not compile is the finding)
                        row.update(error=failure_text(e), ok=False)
                    rows.append(row)
    return rows


def ptxas_usage(ptxas, ptx, arch):
    """{registers, spill_bytes} of the PTX, from `ptxas -v`."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        log = subprocess.run([ptxas, f"-arch=sm_{arch}{'a' if arch >= 90 else ''}", "-v", path, "-o", os.devnull],
                             capture_output=True, text=True, check=True).stderr
    return {"registers": int(re.search(r"Used (\d+) registers", log).group(1)),
            "spill_bytes": int(re.search(r"(\d+) bytes spill stores", log).group(1))}


def matmul_instructions(cubin):
    """{tensor_core_mma, ffma}: how many of the compiled kernel's instructions are tensor-core matrix
    multiply-adds (HMMA, HGMMA) and float32 fused multiply-adds on the CUDA cores (FFMA), from nvdisasm."""
    from triton import knobs
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        sass = subprocess.run([knobs.nvidia.nvdisasm.path, path], capture_output=True, text=True, check=True).stdout
    return {"tensor_core_mma": len(re.findall(r"\bH(?:G)?MMA\b", sass)), "ffma": len(re.findall(r"\bFFMA\b", sass))}


def report_compiled(rows, json_path):
    for row in rows:
        figures = (f"{row['registers']} registers, {row['spill_bytes']} bytes spilled, {row['shared_bytes']} bytes "
                   f"shared, {row['tensor_core_mma']} tensor-core MMA / {row['ffma']} FFMA instructions"
                   if "error" not in row else row["error"])
        print(f"{'ok ' if row['ok'] else 'OFF'} {row['kernel']:17s} {row['precision']:6s} {row['kind']:18s} "
              f"sm_{row['arch']}, tile {row['tile']}, chunk {row['chunk']}, {row['num_warps']} warps: {figures}")
    failed = [f"{row['kernel']} {row['precision']} {row['kind']} sm_{row['arch']}" for row in rows if not row["ok"]]
    if json_path:
        write_result(json_path, {"mode": "compile", "results": rows, "failed": failed})
    if failed:
        sys.exit(f"{len(failed)} of {len(rows)} kernels failed to compile or spill registers: {', '.join(failed)}")
    print(f"all {len(rows)} kernels compile without spills")


def run_cases(device, training):
    """Every case's row (check), each tagged with its dot precision and chunk override. A GPU runs
    every dot precision (the interpreter ignores it) with its generation's chunk; the interpreter runs
    the small cases with each chunk of disperse_triton.LAUNCH."""
    import disperse_triton
    cuda = device.startswith("cuda")
    precisions = disperse_triton.DOT_PRECISIONS if cuda else (disperse_triton.DOT_PRECISION,)
    chunks = [None] if cuda else sorted({chunk for _, chunk, _ in disperse_triton.LAUNCH.values()}, reverse=True)
    default_precision, generator, rows = disperse_triton.DOT_PRECISION, torch.Generator().manual_seed(0), []
    try:
        for precision in precisions:
            disperse_triton.DOT_PRECISION = precision
            disperse_triton.TILE = SMALL_TILE
            for chunk in chunks:
                disperse_triton.CHUNK = chunk
                for variant in VARIANTS:
                    rows += [dict(check(variant, *case, device, False, generator), precision=precision, chunk=chunk)
                             for case in SMALL]
            disperse_triton.TILE = disperse_triton.CHUNK = None
            if training:
                for variant in VARIANTS:
                    rows += [dict(check(variant, *case, device, True, generator), precision=precision, chunk=None)
                             for case in TRAINING]
    finally:
        disperse_triton.TILE = disperse_triton.CHUNK = None
        disperse_triton.DOT_PRECISION, disperse.IMPLEMENTATION = default_precision, 'auto'
    return rows


def refuse(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default), or cpu under TRITON_INTERPRET=1")
    p.add_argument("--training-shape", choices=("auto", "yes", "no"), default="auto",
                   help="also check (4, 1024, 768) at the kernel's own tile (auto: on CUDA only, since the "
                        "interpreter would take many minutes)")
    p.add_argument("--compile-for", default=None, metavar="ARCHS",
                   help="comma-separated CUDA compute capabilities (e.g. 80,90): compile the kernels for them "
                        "instead of running them (no GPU needed)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.compile_for:
        try:
            archs = [int(a) for a in args.compile_for.split(",")]
        except ValueError:
            refuse(f"--compile-for {args.compile_for!r}: give compute capabilities as integers, e.g. 80,90")
        if any(a < 75 for a in archs):
            refuse(f"--compile-for {args.compile_for}: Triton's CUDA backend needs compute capability 75 or more")
        try:
            import triton.backends.nvidia.compiler  # noqa: F401
        except ImportError as e:
            refuse(f"--compile-for needs triton with its CUDA backend (pip install triton): {e}")
        return report_compiled(compile_for(archs), args.json)
    if not disperse.triton_usable(args.device):
        refuse(f"the Triton kernels cannot run on --device {args.device}: they need `pip install triton` and a "
               "CUDA device, or TRITON_INTERPRET=1 in the environment for the CPU")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        refuse(f"--device {args.device} but torch sees no CUDA device; use --device cpu with TRITON_INTERPRET=1")
    import disperse_triton
    cuda = args.device.startswith("cuda")
    training = args.training_shape == "yes" or (args.training_shape == "auto" and cuda)
    rows = run_cases(args.device, training)
    for row in rows:
        row["case"] += (f", {row['precision']}" if cuda else "") + (f", chunk {row['chunk']}" if row["chunk"] else "")
        figures = row["error"] if "error" in row else (f"value {row['value_diff']:.1e}  gradient "
                                                        f"{row['grad_diff']:.1e} (largest {row['grad_scale']:.1e})")
        print(f"{'ok ' if row['ok'] else 'OFF'} {row['case']:52s} {figures}")
    failed = [row["case"] for row in rows if not row["ok"]]
    if args.json:
        write_result(args.json, {"device": args.device, "launch": {f"{p} sm90+" if new else f"{p} before sm90": v
                                                                   for (p, new), v in disperse_triton.LAUNCH.items()},
                                 "small_tile": SMALL_TILE, "options": OPTIONS, "results": rows, "failed": failed})
    if failed:
        sys.exit(f"{len(failed)} of {len(rows)} cases off the float64 reference: {', '.join(failed)}")
    print(f"all {len(rows)} triton checks passed")


if __name__ == "__main__":
    main()
