"""
The tiled pair losses of disperse.py (angular, orthogonalization, cross_sequence) as fused Triton
kernels: the same formulas as disperse_torch.Tiles, over square tiles, but each block's
cosines, angles and pair terms live in registers, never in memory.

  forward    one program per (sequence, row-block of TILE rows): for each column tile on or above
             the diagonal (all column tiles for cross_sequence) it computes the cosines (a loop
             over C), the clamped angle and the pair terms, and keeps a per-row online
             log-sum-exp (or sum). It writes one partial result per program; PyTorch combines the
             partials of a sequence (logsumexp or sum over the row-blocks).
  backward   the same programs recompute each tile and add W @ columns to the gradient of their
             own rows (only this program writes them) and W^T @ rows to the gradient of the
             column tile (atomic adds: other programs write those rows too).

Only float32, contiguous (B, T, C) unit rows go in; the normalisation z / (|z| + eps) and its
chain rule stay in PyTorch (disperse.py). Used automatically on CUDA when triton imports
(disperse.IMPLEMENTATION = 'auto'), and runs on CPU under TRITON_INTERPRET=1 for the tests.
arccos is a polynomial (Cephes' asinf minimax polynomial, error below 4e-7), because
libdevice's is not available under the interpreter.
"""

import math

import torch
import triton
import triton.language as tl

# Precision of the kernels' matmuls (tl.dot's input_precision): 'ieee' multiplies in float32 on the
# CUDA cores, as exactly as the PyTorch tiles; 'tf32x3' splits each float32 into two TF32 parts and
# adds three tensor-core products (the smallest cross term dropped), close to float32 at several times
# the matmul throughput on sm_80 and newer. The interpreter ignores the precision, so only a GPU run
# checks 'tf32x3' (bench/gpu_check.sh checks and times both); until one has, 'ieee' is the default.
DOT_PRECISION = 'ieee'
DOT_PRECISIONS = ('ieee', 'tf32x3')
# (tile edge, features per step of the loop over C, warps) by dot precision and by whether the GPU's
# compute capability is 9.0 or more (H100/H200, Blackwell) or less (A100, RTX 30/40, L4), chosen so
# that ptxas spills no registers: bench/check_triton.py --compile-for 80,86,89,90,100,120 compiles the
# kernels for those GPUs without one. At Triton's default of 4 warps the 'ieee' kernels spilled at
# tile 64 (the backward over 1 KB per thread on sm_90); 'tf32x3' spilled at tile 64 in every setting
# tried, so it takes tiles of 32.
LAUNCH = {('ieee', True): (64, 32, 8), ('ieee', False): (64, 16, 8),
          ('tf32x3', True): (32, 32, 8), ('tf32x3', False): (32, 16, 8)}
# Overrides of LAUNCH's tile and chunk, for the tests (None: LAUNCH's)
TILE = None
CHUNK = None
_HALF_PI = math.pi / 2

KINDS = {'angular': 0, 'orthogonalization': 1, 'cross_sequence': 2}


def launch_settings(capability, precision=None):
    """(tile, chunk, num_warps) for a GPU of this compute capability (major * 10 + minor, e.g. 80, 90;
    None: the interpreter, which takes the newest GPUs' settings) and dot precision (None:
    DOT_PRECISION); TILE and CHUNK override the first two."""
    precision = precision or DOT_PRECISION
    if precision not in DOT_PRECISIONS:
        raise ValueError(f"disperse_triton.DOT_PRECISION={precision!r}; valid: {', '.join(DOT_PRECISIONS)}")
    tile, chunk, warps = LAUNCH[(precision, capability is None or capability >= 90)]
    return TILE or tile, CHUNK or chunk, warps


def _capability(device):
    if device.type != 'cuda':
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


@triton.jit
def _arccos(x):
    # acos from asin on [0, 1]: asin(a) = a + a^3 P(a^2) for a <= 1/2, else pi/2 - 2 asin(sqrt((1 - a) / 2))
    a = tl.abs(x)
    big = a > 0.5
    z = tl.where(big, 0.5 * (1.0 - a), a * a)
    s = tl.where(big, tl.sqrt(z), a)
    p = ((((4.2163199048e-2 * z + 2.4181311049e-2) * z + 4.5470025998e-2) * z + 7.4953002686e-2) * z
         + 1.6666752422e-1) * z * s + s
    asin_a = tl.where(big, 1.5707963267948966 - 2.0 * p, p)
    return tl.where(x >= 0, 1.5707963267948966 - asin_a, 1.5707963267948966 + asin_a)


@triton.jit
def _cos_tile(rows_ptr, cols_ptr, seq_offset, r_idx, c_idx, T, C, TILE: tl.constexpr, CHUNK: tl.constexpr,
              DOT: tl.constexpr):
    """(TILE, TILE) cosines rows[r_idx] . cols[c_idx] of one sequence; 0 outside 0..T-1."""
    cos = tl.zeros((TILE, TILE), dtype=tl.float32)
    for k0 in range(0, C, CHUNK):
        k = k0 + tl.arange(0, CHUNK)
        a = tl.load(rows_ptr + seq_offset + r_idx[:, None] * C + k[None, :],
                    mask=(r_idx[:, None] < T) & (k[None, :] < C), other=0.0)  # (TILE, CHUNK)
        b = tl.load(cols_ptr + seq_offset + c_idx[:, None] * C + k[None, :],
                    mask=(c_idx[:, None] < T) & (k[None, :] < C), other=0.0)  # (TILE, CHUNK)
        cos += tl.dot(a, tl.trans(b), input_precision=DOT)
    return cos


@triton.jit
def forward_kernel(rows_ptr, cols_ptr, partial_ptr, T, C, n_blocks, lo, hi, inv_tau, margin,
                    KIND: tl.constexpr, SYMMETRIC: tl.constexpr, TILE: tl.constexpr, CHUNK: tl.constexpr,
                    DOT: tl.constexpr):
    seq = tl.program_id(0)
    block = tl.program_id(1)
    seq_offset = seq.to(tl.int64) * T * C
    r_idx = block * TILE + tl.arange(0, TILE)
    # per-row running log-sum-exp as (max, sum of exp(x - max)); every logit is >= -1/tau (angle <= 1),
    # so starting the max there keeps it finite even for rows with no pair at all
    row_max = tl.full((TILE,), 0.0, tl.float32) - inv_tau
    row_sum = tl.zeros((TILE,), dtype=tl.float32)
    if SYMMETRIC:  # the tiles on and right of the diagonal
        first = block
    else:
        first = 0
    for cb in range(first, n_blocks):
        c_idx = cb * TILE + tl.arange(0, TILE)
        cos = _cos_tile(rows_ptr, cols_ptr, seq_offset, r_idx, c_idx, T, C, TILE, CHUNK, DOT)
        angle = _arccos(tl.minimum(tl.maximum(cos, lo), hi)) * (1.0 / 3.141592653589793)
        valid = (r_idx[:, None] < T) & (c_idx[None, :] < T)
        if SYMMETRIC:
            valid = valid & (r_idx[:, None] != c_idx[None, :])
        if SYMMETRIC:  # a tile above the diagonal stands for itself and its mirror image
            count = 1.0 + (cb != block).to(tl.float32)
        else:
            count = 1.0
        if KIND == 1:
            hinge = tl.maximum(margin - angle, 0.0)
            row_sum += count * tl.sum(tl.where(valid, hinge * hinge, 0.0), axis=1)
        else:
            logits = tl.where(valid, -angle * inv_tau, float('-inf'))
            new_max = tl.maximum(row_max, tl.max(logits, axis=1))
            row_sum = row_sum * tl.exp(row_max - new_max) + count * tl.sum(tl.exp(logits - new_max[:, None]), axis=1)
            row_max = new_max
    if KIND == 1:
        tl.store(partial_ptr + seq * n_blocks + block, tl.sum(row_sum, axis=0))
    else:
        top = tl.max(row_max, axis=0)
        total = tl.sum(row_sum * tl.exp(row_max - top), axis=0)
        tl.store(partial_ptr + seq * n_blocks + block, top + tl.log(total))


@triton.jit
def backward_kernel(rows_ptr, cols_ptr, total_ptr, grad_rows_ptr, grad_cols_ptr, T, C, n_blocks,
                     lo, hi, inv_tau, margin, pair_scale,
                     KIND: tl.constexpr, SYMMETRIC: tl.constexpr, TILE: tl.constexpr, CHUNK: tl.constexpr,
                     DOT: tl.constexpr):
    seq = tl.program_id(0)
    block = tl.program_id(1)
    seq_offset = seq.to(tl.int64) * T * C
    r_idx = block * TILE + tl.arange(0, TILE)
    total = tl.load(total_ptr + seq)  # the sequence's log-sum-exp (unused by the hinge)
    if SYMMETRIC:  # the tiles on and right of the diagonal
        first = block
    else:
        first = 0
    for cb in range(first, n_blocks):
        c_idx = cb * TILE + tl.arange(0, TILE)
        cos = _cos_tile(rows_ptr, cols_ptr, seq_offset, r_idx, c_idx, T, C, TILE, CHUNK, DOT)
        cos = tl.minimum(tl.maximum(cos, lo), hi)
        angle = _arccos(cos) * (1.0 / 3.141592653589793)
        valid = (r_idx[:, None] < T) & (c_idx[None, :] < T)
        if SYMMETRIC:
            valid = valid & (r_idx[:, None] != c_idx[None, :])
        # slope: -d(pair term)/d(angle) over the sequence's normaliser, as in disperse_torch.Tiles
        if KIND == 1:
            slope = tl.maximum(margin - angle, 0.0) * pair_scale
        else:
            slope = tl.exp(-angle * inv_tau - total) * inv_tau
        w = tl.where(valid, slope / tl.sqrt(1.0 - cos * cos), 0.0)  # (TILE, TILE): pi * d loss / d cos
        for k0 in range(0, C, CHUNK):
            k = k0 + tl.arange(0, CHUNK)
            k_ok = k[None, :] < C
            row_off = seq_offset + r_idx[:, None] * C + k[None, :]
            col_off = seq_offset + c_idx[:, None] * C + k[None, :]
            row_ok = (r_idx[:, None] < T) & k_ok
            col_ok = (c_idx[:, None] < T) & k_ok
            cols = tl.load(cols_ptr + col_off, mask=col_ok, other=0.0)  # (TILE, CHUNK)
            # only this program writes these rows of grad_rows: a plain read-modify-write
            acc = tl.load(grad_rows_ptr + row_off, mask=row_ok, other=0.0)
            tl.store(grad_rows_ptr + row_off, acc + tl.dot(w, cols, input_precision=DOT), mask=row_ok)
            # the mirror image: W^T @ rows for the column tile, except on the diagonal tile (W is
            # symmetric there, and grad_rows already has it)
            if SYMMETRIC:
                mirror_ok = col_ok & (c_idx[:, None] >= (block + 1) * TILE)  # a tile right of the diagonal
            else:
                mirror_ok = col_ok
            rows = tl.load(rows_ptr + row_off, mask=row_ok, other=0.0)
            tl.atomic_add(grad_cols_ptr + col_off, tl.dot(tl.trans(w), rows, input_precision=DOT),
                          mask=mirror_ok)


def _launch_options(z_hat, kind, clamp, tau, margin):
    """(rows, cols, n_blocks, keyword arguments of both kernels' launches) for z_hat (B, T, C)."""
    B, T, C = z_hat.shape
    rows = z_hat.contiguous()
    cols = rows.roll(shifts=-1, dims=0).contiguous() if kind == 'cross_sequence' else rows
    tile, chunk, warps = launch_settings(_capability(z_hat.device))
    options = dict(lo=-1.0 + clamp, hi=1.0 - clamp, inv_tau=1.0 / tau, margin=margin, KIND=KINDS[kind],
                   SYMMETRIC=kind != 'cross_sequence', TILE=tile, CHUNK=chunk, DOT=DOT_PRECISION, num_warps=warps)
    return rows, cols, triton.cdiv(T, tile), options


def pair_totals(z_hat, kind, tau, clamp, margin):
    """Per-sequence log-sum-exp (angular, cross_sequence) or hinge sum (orthogonalization) over the
    pairs of float32 unit rows z_hat (B, T, C); the same as disperse_torch.Tiles.pair_totals."""
    B, T, C = z_hat.shape
    rows, cols, n_blocks, options = _launch_options(z_hat, kind, clamp, tau, margin)
    partial = torch.empty(B, n_blocks, device=z_hat.device, dtype=torch.float32)  # one per (sequence, row-block)
    forward_kernel[(B, n_blocks)](rows, cols, partial, T, C, n_blocks, **options)
    return partial.sum(dim=1) if kind == 'orthogonalization' else torch.logsumexp(partial, dim=1)


def pair_grad(z_hat, kind, total, tau, clamp, margin):
    """pi * d(sum over sequences of the per-sequence loss)/d z_hat, from `total` of pair_totals."""
    B, T, C = z_hat.shape
    rows, cols, n_blocks, options = _launch_options(z_hat, kind, clamp, tau, margin)
    grad_rows = torch.zeros_like(rows)
    grad_cols = torch.zeros_like(rows)
    pair_scale = 2.0 / (T * (T - 1)) if T > 1 else 0.0  # the hinge's slope factor
    backward_kernel[(B, n_blocks)](rows, cols, total.contiguous(), grad_rows, grad_cols, T, C, n_blocks,
                                    pair_scale=pair_scale, **options)
    if kind == 'cross_sequence':
        return grad_rows.add_(grad_cols.roll(shifts=1, dims=0))  # cols[b] is z_hat[b + 1]
    return grad_rows.add_(grad_cols).mul_(2.0)  # d cos_ij / d z_hat_k counts k as the row and as the column
