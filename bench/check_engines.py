"""
Do the pair-loss engines give the float64 reference's values and gradients on this device? Every
pair variant (angular, condense, orthogonalization, cross_sequence), float32 and bf16 inputs, small
shapes (T = 2, a few odd sizes) and, with --training-shape, (4, 1024, 768); for each engine setting
that training can use on the device:

  tiled          disperse_torch.Tiles, float32 products
  dense          disperse_torch.Dense, float32 products (TF32 off)
  dense-tf32     Dense with TF32 products, as train.py runs on CUDA (it sets allow_tf32)
  dense-bf16     Dense with bf16 products (disperse.DENSE_MATMUL_DTYPE = torch.bfloat16)
  triton         disperse_triton.py, DOT_PRECISION 'ieee' (CUDA only here; bench/check_triton.py runs it
  triton-tf32x3  on the CPU under Triton's interpreter) and 'tf32x3'

The reference is disperse's plain full-matrix formulas in float64, which tests/test_disperse.py checks
against brute-force sums. Each engine is held to what its arithmetic can give: float32 products to
1e-5, TF32 (10-bit mantissa) and bf16 (7-bit) products to tolerances relative to the values' size.

    python bench/check_engines.py --device cuda --training-shape --json out.json   # bench/gpu_check.sh
    python bench/check_engines.py --device cpu                                      # tiled and dense

Every case is printed; the exit status is 1 if any is off (all of them listed).
"""

import argparse
import os
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import disperse  # noqa: E402
from bench.provenance import failure_text, write_result  # noqa: E402

VARIANTS = ('angular', 'condense', 'orthogonalization', 'cross_sequence')
# a margin that makes the hinge act on many pairs; the rest as in tests/test_disperse.py
OPTIONS = dict(tau=0.7, eps=1e-2, clamp=0.1, margin=0.8)
# (B, T, C, dtype)
SMALL = [(2, 2, 5, torch.float32), (2, 11, 7, torch.float32), (2, 32, 40, torch.float32),
         (3, 37, 33, torch.float32), (2, 21, 9, torch.bfloat16)]
TRAINING = [(4, 1024, 768, torch.float32), (4, 1024, 768, torch.bfloat16)]
# engine -> (disperse.IMPLEMENTATION, its settings, tolerance class)
ENGINES = {
    'tiled': ('tiled', {}, 'float32'),
    'dense': ('dense', {}, 'float32'),
    'dense-tf32': ('dense', {'tf32': True}, 'tf32'),
    'dense-bf16': ('dense', {'matmul_dtype': torch.bfloat16}, 'bf16'),
    'triton': ('triton', {'precision': 'ieee'}, 'float32'),
    'triton-tf32x3': ('triton', {'precision': 'tf32x3'}, 'float32'),
}
# tolerance class -> (value: absolute, plus this times |value|; gradient: absolute, in units of the largest
# reference gradient component). float32 products: the kernels' own rounding; TF32 and bf16 products round
# each cosine to about 2^-11 and 2^-8, which the angle, the softmax and the gradient carry through.
TOLERANCES = {'float32': (1e-5, 0.0, 1e-4), 'tf32': (1e-5, 2e-3, 2e-3), 'bf16': (1e-5, 1e-2, 2e-2)}


def use(engine):
    """Set the module attributes for `engine`; returns a function that restores them."""
    implementation, settings, _ = ENGINES[engine]
    saved = (disperse.IMPLEMENTATION, disperse.DENSE_MATMUL_DTYPE, torch.backends.cuda.matmul.allow_tf32)
    disperse.IMPLEMENTATION = implementation
    disperse.DENSE_MATMUL_DTYPE = settings.get('matmul_dtype')
    torch.backends.cuda.matmul.allow_tf32 = settings.get('tf32', False)
    precision = None
    if 'precision' in settings:
        import disperse_triton
        precision = disperse_triton.DOT_PRECISION
        disperse_triton.DOT_PRECISION = settings['precision']

    def restore():
        disperse.IMPLEMENTATION, disperse.DENSE_MATMUL_DTYPE, torch.backends.cuda.matmul.allow_tf32 = saved
        if precision is not None:
            import disperse_triton
            disperse_triton.DOT_PRECISION = precision
    return restore


def case_name(variant, B, T, C, dtype):
    return f"{variant} {str(dtype).removeprefix('torch.')} {(B, T, C)}"


def check(engine, variant, B, T, C, dtype, device, generator, small_grad_atol=None):
    """One case: {case, engine, value_diff, grad_diff, grad_scale, ok}, or {case, engine, error, ok}
    where it raised (a kernel that fails on this device is the finding; the other cases still run).
    small_grad_atol: an absolute gradient tolerance instead of the relative one (small shapes, whose
    gradients are of order 1)."""
    row = {"case": case_name(variant, B, T, C, dtype), "engine": engine}
    restore = use(engine)
    try:
        row.update(compare(engine, variant, B, T, C, dtype, device, generator, small_grad_atol))
    except Exception as e:  # noqa: BLE001
        row.update(error=failure_text(e), ok=False)
    finally:
        restore()
    return row


def compare(engine, variant, B, T, C, dtype, device, generator, small_grad_atol):
    z = (torch.randn(B, T, C, generator=generator, dtype=torch.float64) * 0.5 + 0.2).to(device)
    leaf = z.to(dtype).requires_grad_()
    ours = disperse.dispersion_loss(leaf, variant, **OPTIONS)
    (ours * 1.7).backward()  # a gradient from above that is not 1
    ref_leaf = leaf.detach().double().requires_grad_()  # the same (rounded) input, in float64
    implementation = disperse.IMPLEMENTATION
    disperse.IMPLEMENTATION = 'reference'
    try:
        ref = disperse.dispersion_loss(ref_leaf, variant, **OPTIONS)
    finally:
        disperse.IMPLEMENTATION = implementation
    (ref * 1.7).backward()
    value_abs, value_rel, grad_rel = TOLERANCES[ENGINES[engine][2]]
    grad_scale = ref_leaf.grad.abs().max().item()
    # autograd rounds the float32 gradient back to the input's dtype: bf16 keeps 8 bits
    rtol = 0.0 if dtype == torch.float32 else 2 ** -8
    atol = max(grad_rel * grad_scale, small_grad_atol or 0.0)
    grad_diff = (leaf.grad.double() - ref_leaf.grad).abs()
    excess = grad_diff - (atol + rtol * ref_leaf.grad.abs())
    value_diff = abs(ours.item() - ref.item())
    ok = (ours.dtype == torch.float32 and value_diff <= value_abs + value_rel * abs(ref.item())
          and excess.max().item() <= 0 and grad_scale > 0)
    return {"value_diff": value_diff, "grad_diff": grad_diff.max().item(), "grad_scale": grad_scale, "ok": bool(ok)}


def run_cases(engines, device, training, generator=None):
    generator = generator or torch.Generator().manual_seed(0)
    rows = []
    for engine in engines:
        for variant in VARIANTS:
            rows += [check(engine, variant, *case, device, generator, small_grad_atol=1e-5) for case in SMALL]
            if training:
                rows += [check(engine, variant, *case, device, generator) for case in TRAINING]
    return rows


def print_rows(rows):
    for row in rows:
        figures = row["error"] if "error" in row else (f"value {row['value_diff']:.1e}  gradient "
                                                        f"{row['grad_diff']:.1e} (largest {row['grad_scale']:.1e})")
        print(f"{'ok ' if row['ok'] else 'OFF'} {row['engine']:14s} {row['case']:42s} {figures}")
    return [f"{row['engine']} {row['case']}" for row in rows if not row["ok"]]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--engines", default=None,
                   help=f"comma-separated, of {', '.join(ENGINES)} (default: all that run on the device; on a CPU "
                        "tiled and dense)")
    p.add_argument("--training-shape", action="store_true", help="also check (4, 1024, 768)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        sys.exit(f"error: --device {args.device} but torch sees no CUDA device; use --device cpu")
    if args.engines:
        engines = [e for e in args.engines.split(",") if e]
        unknown = [e for e in engines if e not in ENGINES]
        if unknown:
            sys.exit(f"error: --engines: unknown {', '.join(unknown)}; choose from {', '.join(ENGINES)}")
    else:
        engines = ['tiled', 'dense'] + (['dense-tf32', 'dense-bf16'] if cuda else [])
        engines += ['triton', 'triton-tf32x3'] if cuda and disperse.triton_usable(args.device) else []
    rows = run_cases(engines, args.device, args.training_shape)
    failed = print_rows(rows)
    if args.json:
        write_result(args.json, {"device": torch.cuda.get_device_name() if cuda else "cpu", "options": OPTIONS,
                                 "tolerances": TOLERANCES, "results": rows, "failed": failed})
    if failed:
        sys.exit(f"{len(failed)} of {len(rows)} cases off the float64 reference: {', '.join(failed)}")
    print(f"all {len(rows)} checks passed ({', '.join(engines)})")


if __name__ == "__main__":
    main()
