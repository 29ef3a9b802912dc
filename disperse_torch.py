"""
The pair losses of disperse.py (angular and condense, orthogonalization, cross_sequence) computed
in PyTorch without keeping any T x T matrix for backward: two engines, beside the Triton one
(disperse_triton.py). disperse.dispersion_loss drives them (through its autograd Function); each provides

    pair_totals(z_hat, kind, tau, clamp, margin)           -> (N,) per-sequence log-sum-exp over the
                                                               pairs (for orthogonalization: the sum
                                                               of the squared hinge terms)
    pair_grad(z_hat, kind, total, tau, clamp, margin)      -> (N, T, C) pi * d(sum of the per-sequence
                                                               losses)/d z_hat, given pair_totals' result
    pair_totals_and_grad(z_hat, kind, tau, clamp, margin)  -> both from one sweep, or None where that
                                                               is not safe (see EXP_RANGE)

z_hat (N, T, C) holds unit rows z / (|z| + eps), float32 or float64; N sequences (of one layer or of
several stacked), pairs only within a sequence (cross_sequence: sequence n against n + 1).

  Tiles   the upper triangle of each sequence's pair matrix, one block of rows x a strip of columns
          at a time: half the arithmetic (cos_ij = cos_ji), many medium matmuls. The fastest on
          CPUs (bench/bench_dispersion.py --tiles).
  Dense   whole rows of the pair matrix for many sequences at once: one batched matmul for the
          cosines, one pass of elementwise work (which torch.compile fuses into one kernel on GPUs),
          one batched matmul for the gradient. Twice the arithmetic of the triangle, but a handful
          of large operations instead of hundreds of small ones: what a GPU wants.

Both keep at most a bounded number of pairs alive per step, so their memory grows linearly in T.

The one-sweep trick. A log-sum-exp over the pairs normally needs their maximum first. But every
logit -arccos(c)/(pi tau) lies between the values the clamp allows for c = 1 - clamp and c = -1 +
clamp, so summing exp(logit - that largest value) cannot overflow, and cannot underflow while the
spread of allowed logits stays below EXP_RANGE nats: the sum, the log-sum-exp and the softmax
weights of the gradient then come from one pass over the pairs.
"""

import math

import torch

STRIP_PAIRS = 2 ** 18  # Tiles: pairs per sequence in one block: 1 MB in float32
DENSE_PAIRS = 2 ** 25  # Dense: pairs in one step, over all its sequences: 128 MB per float32 (n, r, T) tensor
# Largest spread (in nats) of the logits allowed for summing exp(logit - fixed shift) in one sweep:
# exp(-60) is far above the smallest normal float32 (about exp(-87)), so no term underflows.
EXP_RANGE = 60.0


def tile_size(T):
    """Rows per block of Tiles: small enough that the diagonal tiles (whose lower halves are computed
    but not needed) are a small part of the work, large enough for efficient matmuls. On 2 CPU cores
    256 rows beat 128 at T = 1024 (bench/bench_dispersion.py --tiles --tile-sizes 128,256), though
    their diagonal tiles waste twice the work."""
    return 256


def pair_blocks(T, tile, symmetric, strip_pairs):
    """(r0, r1, c0, c1) for the blocks rows r0:r1 x columns c0:c1 that cover the pairs, in strips
    of at most max(tile, strip_pairs // tile) columns. With symmetric only the pairs on and above
    the diagonal: each row-block against the columns from r0 on, so that its first block
    (c0 == r0) starts with the diagonal tile, columns r0:r1."""
    width = max(tile, strip_pairs // tile)
    for r0 in range(0, T, tile):
        r1 = min(r0 + tile, T)
        for c0 in range(r0 if symmetric else 0, T, width):
            yield r0, r1, c0, min(c0 + width, T)


def pair_operands(z_hat, kind):
    """(rows, columns, symmetric) of the pair matrix cos = rows columns^T of each sequence."""
    if kind == 'cross_sequence':
        return z_hat, z_hat.roll(shifts=-1, dims=0), False  # columns of n: sequence (n+1) % N
    return z_hat, z_hat, True


def logit_range(tau, clamp):
    """(highest, lowest) logit -arccos(c)/(pi tau) that the clamp to [-1+clamp, 1-clamp] allows."""
    return -math.acos(1.0 - clamp) / (math.pi * tau), -math.acos(-1.0 + clamp) / (math.pi * tau)


def _hinge(arccos, margin):
    """(margin - angle)+ from arccos(c) = pi * angle, in place."""
    return torch.add(arccos.new_tensor(margin), arccos, alpha=-1.0 / math.pi, out=arccos).relu_()


def _finish_grad(grad_rows, grad_cols, factor, symmetric):
    """The gradient from its row and column halves, times the per-sequence constant factor: for a
    symmetric pair matrix both halves are the same (d cos_ij / d z_hat_k counts k as the row and
    as the column), for cross_sequence the column half of sequence n belongs to sequence n + 1."""
    N = grad_rows.size(0)
    if symmetric:
        return grad_rows.mul_((2.0 * factor).view(N, 1, 1))
    grad_rows.mul_(factor.view(N, 1, 1))
    return grad_rows.add_(grad_cols.mul_(factor.view(N, 1, 1)).roll(shifts=1, dims=0))


# ----------------------------------------------------------------------------- the upper triangle in tiles

class Tiles:
    """Pair work one block of pair_blocks at a time, batched over the sequences: at most
    tile x max(tile, strip_pairs // tile) pairs per sequence alive. Within a sequence cos_ij =
    cos_ji, so only the pairs on and above the diagonal are visited: each row-block of `tile` rows
    against the columns from its own first row on; the first block of a row-block starts with its
    diagonal tile (counted once, its diagonal excluded), and every pair right of that tile stands
    for itself and its mirror image. A block is a strip of several tiles in one matmul, because on
    a CPU a few large matmuls run much faster than many small ones. Each block costs a handful of
    passes over its pairs besides the matmuls (clamp, arccos, exp, ...): constants are folded into
    as few of them as possible."""

    def __init__(self, tile, strip_pairs):
        self.tile, self.strip_pairs = tile, strip_pairs

    def pair_totals(self, z_hat, kind, tau, clamp, margin):
        N, T, C = z_hat.shape
        rows, cols, symmetric = pair_operands(z_hat, kind)
        hinge = kind == 'orthogonalization'
        # per-sequence log-sum-exp (or sum, for the hinge) of the pair terms seen so far
        total = z_hat.new_full((N,), 0.0 if hinge else float('-inf'))
        # logit = -angle / tau = -arccos(c) / (pi tau); + log 2 for a pair that stands for two
        to_logit, twice = -1.0 / (math.pi * tau), z_hat.new_tensor(math.log(2.0) if symmetric else 0.0)
        for r0, r1, c0, c1 in pair_blocks(T, self.tile, symmetric, self.strip_pairs):
            r, diagonal = r1 - r0, symmetric and c0 == r0
            cos = torch.bmm(rows[:, r0:r1], cols[:, c0:c1].transpose(1, 2))  # (N, r, c)
            arccos = cos.clamp_(-1.0 + clamp, 1.0 - clamp).arccos_()  # pi * angle
            if hinge:
                terms = _hinge(arccos, margin).square_()
                if diagonal:
                    terms.diagonal(dim1=1, dim2=2).zero_()
                block = terms.sum(dim=(1, 2))
                if symmetric:  # the pairs right of the diagonal tile stand for two
                    block = 2.0 * block - (terms[:, :, :r].sum(dim=(1, 2)) if diagonal else 0.0)
                total += block
            else:
                logits = torch.add(twice, arccos, alpha=to_logit, out=arccos)
                if diagonal:  # the diagonal tile's pairs are all there, each once
                    logits[:, :, :r].sub_(twice).diagonal(dim1=1, dim2=2).fill_(float('-inf'))
                total = torch.logaddexp(total, torch.logsumexp(logits, dim=(1, 2)))
        return total

    def pair_grad(self, z_hat, kind, total, tau, clamp, margin):
        return self._grad_sweep(z_hat, kind, total, tau, clamp, margin)[0]

    def pair_totals_and_grad(self, z_hat, kind, tau, clamp, margin):
        """(pair_totals, pair_grad) from one sweep instead of two, which saves recomputing the
        cosines (a third of the matmul work); None where the allowed logits spread over more than
        EXP_RANGE (see the module docstring)."""
        N = z_hat.size(0)
        if kind == 'orthogonalization':  # the hinge's slope needs no total
            grad, total = self._grad_sweep(z_hat, kind, None, tau, clamp, margin)
            return total, grad
        highest, lowest = logit_range(tau, clamp)
        if highest - lowest > EXP_RANGE:
            return None
        shift = z_hat.new_full((N,), highest)
        grad, sums = self._grad_sweep(z_hat, kind, shift, tau, clamp, margin, normalise=True)
        return sums.log() + highest, grad

    def _grad_sweep(self, z_hat, kind, offset, tau, clamp, margin, normalise=False):
        """(pi * d(sum_n loss_n)/d z_hat with the pair weights exp(logit - offset_n), divided by
        their sum over the sequence if normalise; and the per-sequence sums of those weights, or of
        the squared hinge terms for orthogonalization)."""
        N, T, C = z_hat.shape
        rows, cols, symmetric = pair_operands(z_hat, kind)
        hinge = kind == 'orthogonalization'
        grad_rows = torch.zeros_like(z_hat)  # (N, T, C)
        grad_cols = grad_rows if symmetric else torch.zeros_like(z_hat)
        sums = z_hat.new_zeros(N)
        one, to_logit = z_hat.new_ones(()), -1.0 / (math.pi * tau)
        neg_offset = None if hinge else -offset.view(N, 1, 1)

        def summed(terms):  # (N,): the squared hinge terms' sum, or the weights' sum
            return torch.linalg.vecdot(terms, terms, dim=-1).sum(dim=1) if hinge else terms.sum(dim=(1, 2))
        for r0, r1, c0, c1 in pair_blocks(T, self.tile, symmetric, self.strip_pairs):
            r, diagonal = r1 - r0, symmetric and c0 == r0
            cos = torch.bmm(rows[:, r0:r1], cols[:, c0:c1].transpose(1, 2))  # (N, r, c)
            cos.clamp_(-1.0 + clamp, 1.0 - clamp)
            arccos = torch.arccos(cos)  # pi * angle
            # the slope -d(pair term)/d(angle), up to a constant factor applied at the end:
            # (margin - angle)+ for the hinge, exp(logit - offset) for the log-sum-exp
            terms = _hinge(arccos, margin) if hinge else \
                torch.add(neg_offset, arccos, alpha=to_logit, out=arccos).exp_()
            if diagonal:
                terms.diagonal(dim1=1, dim2=2).zero_()
            block = summed(terms)
            if symmetric:  # the pairs right of the diagonal tile stand for two
                block = 2.0 * block - (summed(terms[:, :, :r]) if diagonal else 0.0)
            sums += block
            # the angle's derivative -1/(pi sqrt(1 - c^2)), taken at the clamped c (straight-through)
            grad_cos = torch.addcmul(one, cos, cos, value=-1.0, out=cos).rsqrt_().mul_(terms)
            grad_rows[:, r0:r1].baddbmm_(grad_cos, cols[:, c0:c1])
            # the same pairs seen from their columns; the diagonal tile already holds both sides
            mirror = r if diagonal else 0
            if c0 + mirror < c1:
                grad_cols[:, c0 + mirror:c1].baddbmm_(grad_cos[:, :, mirror:].transpose(1, 2), rows[:, r0:r1])
        # the constant factors: the hinge's 2 / (T(T-1)) from the mean of squares, or 1 / tau and
        # the softmax's normaliser
        factor = z_hat.new_full((N,), 2.0 / (T * (T - 1)) if hinge else 1.0 / tau)
        if normalise:
            factor = factor / sums
        return _finish_grad(grad_rows, grad_cols, factor, symmetric), sums


# ----------------------------------------------------------------------------- whole rows, many sequences at once

def dense_weights(cos, keep, offset, to_logit, clamp, margin, hinge: bool):
    """The elementwise work of one Dense step, (n, r, T) pairs: the pair weights pi * d(pair
    term)/d cos (up to the constant factor applied at the end), zero where keep is 0 (a sequence's
    own diagonal), and per sequence the sum of the pair terms exp(logit - offset) (or of the squared
    hinge terms). keep: (r, T) of 1.0 and 0.0; offset: (n, 1, 1). On GPUs torch.compile fuses all
    of it into one kernel that reads the cosines once and writes the weights once."""
    c = cos.clamp(-1.0 + clamp, 1.0 - clamp)
    arccos = torch.arccos(c)  # pi * angle
    if hinge:
        slope = (margin - arccos * (1.0 / math.pi)).relu() * keep  # (margin - angle)+
        terms = slope * slope
    else:
        slope = torch.exp(arccos * to_logit - offset) * keep  # exp(logit - offset): the softmax weight, unnormalised
        terms = slope
    # the angle's derivative -1/(pi sqrt(1 - c^2)) at the clamped c (straight-through)
    return slope * torch.rsqrt(1.0 - c * c), terms.sum(dim=(1, 2))


class Dense:
    """Pair work on whole rows of the pair matrix, n sequences x r rows x T columns per step with
    n * r * T <= pairs (all rows of several sequences at T = 1024; fewer rows than T only when one
    sequence's matrix is larger than that). Per step: cos = bmm (n, r, C) x (n, C, T); the weights
    and term sums in one elementwise pass (dense_weights, or `weights_fn`: the same function compiled);
    grad rows += bmm(weights, columns), and for cross_sequence grad columns += bmm(weights^T, rows).
    matmul_dtype: None multiplies in z_hat's dtype (float32: TF32 where torch allows it), or
    torch.bfloat16 (the products in bf16 with float32 accumulation: faster, about 3 decimal digits)."""

    def __init__(self, pairs, weights_fn=dense_weights, matmul_dtype=None):
        self.pairs, self.weights_fn, self.matmul_dtype = pairs, weights_fn, matmul_dtype

    def pair_totals(self, z_hat, kind, tau, clamp, margin):
        if kind == 'orthogonalization':
            return self._sweep(z_hat, kind, None, tau, clamp, margin, with_grad=False)[1]
        highest, lowest = logit_range(tau, clamp)
        if highest - lowest <= EXP_RANGE:
            sums = self._sweep(z_hat, kind, z_hat.new_full((z_hat.size(0),), highest), tau, clamp, margin,
                               with_grad=False)[1]
            return sums.log() + highest
        return self._logsumexp(z_hat, kind, tau, clamp)

    def pair_grad(self, z_hat, kind, total, tau, clamp, margin):
        grad, sums = self._sweep(z_hat, kind, total, tau, clamp, margin)
        return grad

    def pair_totals_and_grad(self, z_hat, kind, tau, clamp, margin):
        if kind == 'orthogonalization':
            grad, total = self._sweep(z_hat, kind, None, tau, clamp, margin)
            return total, grad
        highest, lowest = logit_range(tau, clamp)
        if highest - lowest > EXP_RANGE:
            return None
        grad, sums = self._sweep(z_hat, kind, z_hat.new_full((z_hat.size(0),), highest), tau, clamp, margin,
                                 normalise=True)
        return sums.log() + highest, grad

    def _steps(self, N, T):
        """(s0, s1, r0, r1): sequences s0:s1, rows r0:r1 of each, with (s1 - s0) * (r1 - r0) * T <= pairs."""
        rows = max(1, min(T, self.pairs // T))
        seqs = max(1, self.pairs // (rows * T))
        for s0 in range(0, N, seqs):
            for r0 in range(0, T, rows):
                yield s0, min(s0 + seqs, N), r0, min(r0 + rows, T)

    def _operands(self, z_hat, kind):
        rows, cols, symmetric = pair_operands(z_hat, kind)
        if self.matmul_dtype is not None and self.matmul_dtype != z_hat.dtype:
            rows = rows.to(self.matmul_dtype)
            cols = rows.roll(shifts=-1, dims=0) if not symmetric else rows
        return rows, cols, symmetric

    def _sweep(self, z_hat, kind, offset, tau, clamp, margin, normalise=False, with_grad=True):
        """(pi * d(sum_n loss_n)/d z_hat, or None without with_grad; the per-sequence sums of the
        pair terms exp(logit - offset_n), or of the squared hinge terms)."""
        N, T, C = z_hat.shape
        rows, cols, symmetric = self._operands(z_hat, kind)
        hinge = kind == 'orthogonalization'
        grad_rows = torch.zeros_like(z_hat) if with_grad else None  # (N, T, C)
        grad_cols = None if (symmetric or not with_grad) else torch.zeros_like(z_hat)
        sums = z_hat.new_zeros(N)
        zero = z_hat.new_zeros((N, 1, 1))
        offsets = zero if hinge else offset.view(N, 1, 1)
        to_logit = -1.0 / (math.pi * tau)
        for s0, s1, r0, r1 in self._steps(N, T):
            keep = torch.ones(r1 - r0, T, dtype=z_hat.dtype, device=z_hat.device)  # (r, T)
            if symmetric:  # a sequence's own pairs exclude i == j
                keep.diagonal(offset=r0).zero_()
            cos = torch.bmm(rows[s0:s1, r0:r1], cols[s0:s1].transpose(1, 2)).to(z_hat.dtype)  # (n, r, T)
            weights, block_sums = self.weights_fn(cos, keep, offsets[s0:s1], to_logit, clamp, margin, hinge)
            sums[s0:s1] += block_sums
            if with_grad:
                weights = weights.to(rows.dtype)
                grad_rows[s0:s1, r0:r1] += torch.bmm(weights, cols[s0:s1]).to(z_hat.dtype)
                if not symmetric:
                    grad_cols[s0:s1] += torch.bmm(weights.transpose(1, 2), rows[s0:s1, r0:r1]).to(z_hat.dtype)
        if not with_grad:
            return None, sums
        # the constant factors, as in Tiles (whose rows also end up holding every pair of theirs once)
        factor = z_hat.new_full((N,), 2.0 / (T * (T - 1)) if hinge else 1.0 / tau)
        if normalise:
            factor = factor / sums
        return _finish_grad(grad_rows, grad_cols, factor, symmetric), sums

    def _logsumexp(self, z_hat, kind, tau, clamp):
        """Per-sequence log-sum-exp over the pairs with a running maximum: for a tau so small that the
        allowed logits spread over more than EXP_RANGE nats."""
        N, T, C = z_hat.shape
        rows, cols, symmetric = self._operands(z_hat, kind)
        total = z_hat.new_full((N,), float('-inf'))
        for s0, s1, r0, r1 in self._steps(N, T):
            cos = torch.bmm(rows[s0:s1, r0:r1], cols[s0:s1].transpose(1, 2)).to(z_hat.dtype)  # (n, r, T)
            logits = cos.clamp_(-1.0 + clamp, 1.0 - clamp).arccos_().mul_(-1.0 / (math.pi * tau))
            if symmetric:
                logits.diagonal(offset=r0, dim1=1, dim2=2).fill_(float('-inf'))
            total[s0:s1] = torch.logaddexp(total[s0:s1], torch.logsumexp(logits, dim=(1, 2)))
        return total
