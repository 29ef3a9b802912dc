"""
Dispersion losses on hidden states, plus the control regularizers and the
layer selection used around them. Pure functions on tensors: this file never
imports the model, it is handed hidden states.

Reproduces the loss family of "Dispersion Loss Counteracts Embedding
Condensation and Improves Generalization in Small Language Models"
(arXiv 2602.00217), following its official code where the two differ.

Every loss acts on ONE layer's hidden states z of shape (B, T, C). Pairs are
formed only between tokens of the same sequence (except the `cross_sequence`
control), and the per-sequence losses are averaged over the B sequences.
With z_hat_i = z_i / (||z_i|| + eps) and the normalised angle

    D_ij = arccos(clamp_st(z_hat_i . z_hat_j)) / pi          in [0, 1]

the variants are:

  angular          (the paper's main "dispersion loss")
                   L = log( 1/(T(T-1)) * sum_{i!=j} exp(-D_ij / tau) )
                   The paper writes log-SUM; we, like the official code, log
                   the log-MEAN. They differ by the constant log(T(T-1)), so
                   gradients are identical; only the logged value shifts.
                   The value lies in [-1/tau, 0].
  decorrelation    token x token Pearson correlations: each token vector is
                   standardised over its C features (unbiased std), then
                   R = zc zc^T / (C-1);   L = mean_{i!=j} R_ij^2
                   (the paper writes a sum, the official code takes the mean).
  l2_repel         on RAW z: S_ij = ||z_i - z_j||^2,
                   L = log( 1/T^2 * sum_{i,j} exp(-S_ij / tau) ) + norm_weight * mean(z^2)
                   The diagonal is NOT masked (as in the official code), so the
                   T self-pairs with S_ii = 0 contribute a floor to the sum.
  orthogonalization  L = mean_{i!=j} relu(margin - D_ij)^2; margin 0.5 = 90 deg,
                   so only acute pairs are pushed apart.
  condense         -angular: the sign-flipped negative control.
  cross_sequence   angular, but each sequence b is paired with sequence
                   (b+1) % B: all T x T cross pairs, log-mean-exp over T^2.
                   Placement control: dispersion between, not within, sequences.
  norm_penalty     mean over tokens of ||z_i||^2 (activation-norm control).

Two more controls are not losses but gradients built from the angular term's own
gradient g_i = d(weight * mean_layers angular)/d hidden[i] (taken on a detached copy),
applied through a surrogate sum(h * control_gradient) whose value means nothing
(train.py logs loss = CE for them):
  random_direction a Gaussian direction per layer with ||g_i||'s norm: matched at the
                   hidden states, but its independent per-token directions cancel in
                   the shared weights (8-50x weaker there).
  rotated_angular  g_i @ Q, Q a Haar-random orthogonal C x C matrix per optimizer step,
                   shared by all layers, rescaled by one scalar so that its gradient
                   w.r.t. the model's parameters has the angular term's norm (matched
                   in the parameters; see rotated_angular_term for why rescaling is needed).

Training logs, per selected layer, `disp/layer{i}/pair_cos`: the mean cosine over the
off-diagonal pairs of each sequence (mean_pairwise_cos), what the loss acts on. The
condensation probe's `mean_cos` (eval/condensation.py, the paper's m_l) includes the diagonal.

clamp_st is a straight-through clamp: the forward value is
clamp(c, -1+clamp, 1-clamp), the backward treats it as the identity, so
arccos' derivative is evaluated at the clamped value: bounded (<= 1/sqrt(1-(1-clamp)^2))
and non-zero even for pairs outside the band. This is why no NaN can appear
at the diagonal (c_ii ~ 1) even though it is later masked out.

All losses are computed in float32 (float64 is kept if given), with autocast
disabled, because HF-style training runs the loss under bf16 autocast and
near-parallel pairs round to exactly 1.0 in bf16.

The pair losses (angular, condense, orthogonalization, cross_sequence) never
build the (B, T, T) matrix: they walk over blocks of it (_PairLoss below), so
their memory grows linearly in T; on CUDA a fused Triton kernel
(disperse_triton.py) does the same walk when triton is installed.

Optional token subsampling (max_tokens) keeps the same random positions for
every sequence of the batch, like the official code, and draws them from a
dedicated torch.Generator so the global RNG (dropout, data order) is untouched.
"""

import math
import os

import torch

VARIANTS = ('angular', 'decorrelation', 'l2_repel', 'orthogonalization',
            'condense', 'cross_sequence', 'norm_penalty')
LAYER_CHOICES = ('all', 'last', 'early_half', 'late_half', 'embedding')

# Added to the per-token std in `decorrelation` (the official code adds none):
# keeps a constant token vector from dividing by zero.
_STD_EPS = 1e-6

# Used for subsampling when the caller passes no generator. Seeded 0 once, at
# first use; its stream then runs on across calls, so pass your own generator
# when the subsample must be reproducible per run or per seed.
_default_generator = None


def _default_gen():
    global _default_generator
    if _default_generator is None:
        _default_generator = torch.Generator().manual_seed(0)
    return _default_generator


def _as_loss_dtype(z):
    # float32 for everything but float64 (kept so that gradcheck works)
    return z if z.dtype == torch.float64 else z.float()


def _subsample(z, max_tokens, generator):
    """Keep max_tokens random positions, the same ones for every sequence."""
    T = z.size(1)
    if max_tokens is None or T <= max_tokens:
        return z
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1 or None, got {max_tokens}")
    gen = generator if generator is not None else _default_gen()
    positions = torch.randperm(T, generator=gen, device=gen.device)[:max_tokens]
    return z[:, positions.to(z.device)]  # (B, max_tokens, C)


def _no_pairs(z):
    # zero that is still connected to z, so backward() works and gives zeros
    return z.sum() * 0.0


def _unit_rows(z, eps):
    return z / (torch.linalg.vector_norm(z, dim=-1, keepdim=True) + eps)


def _angle(cos, clamp):
    """Normalised angle arccos(c)/pi with the straight-through clamp."""
    clamped = cos.clamp(-1.0 + clamp, 1.0 - clamp)
    cos_st = cos + (clamped - cos).detach()  # forward: clamped, backward: identity
    return torch.arccos(cos_st) / math.pi


def _angular(z, tau, eps, clamp):
    B, T, C = z.shape
    if T < 2:
        return _no_pairs(z)
    z_hat = _unit_rows(z, eps)
    cos = z_hat @ z_hat.transpose(1, 2)  # (B, T, T)
    angle = _angle(cos, clamp)
    self_pairs = torch.eye(T, dtype=torch.bool, device=z.device)
    # mask the logits, not the cosines: exp(-inf) = 0 and its gradient is 0,
    # while arccos' gradient at the (clamped) diagonal stays finite, so no 0*inf
    logits = (-angle / tau).masked_fill(self_pairs, float('-inf'))
    logits = logits.flatten(1)  # (B, T*T)
    per_sequence = torch.logsumexp(logits, dim=1) - math.log(T * (T - 1))  # (B,)
    return per_sequence.mean()


class _AngularLowMemory(torch.autograd.Function):
    """The previous implementation of the angular loss (IMPLEMENTATION = 'reference'), kept for
    comparison: a hand-written backward that recomputes the whole (B, T, T) matrices instead of
    keeping them, so only z and one number per sequence live between the passes, but each pass
    still holds a few (B, T, T) tensors at once. Same value and gradient as _angular."""

    @staticmethod
    def forward(ctx, z, tau, eps, clamp):
        B, T, C = z.shape
        z_hat = _unit_rows(z, eps)
        logits = _AngularLowMemory._logits(z_hat, tau, clamp)  # (B, T, T)
        lse = torch.logsumexp(logits.flatten(1), dim=1)  # (B,)
        ctx.save_for_backward(z, lse)
        ctx.tau, ctx.eps, ctx.clamp = tau, eps, clamp
        return (lse - math.log(T * (T - 1))).mean()

    @staticmethod
    def _logits(z_hat, tau, clamp, keep_cos=False):
        """Pair logits -arccos(c)/(pi tau), -inf on the diagonal, from the clamped cosines c;
        with keep_cos also c itself (the backward pass needs both)."""
        T = z_hat.size(1)
        cos = (z_hat @ z_hat.transpose(1, 2)).clamp_(-1.0 + clamp, 1.0 - clamp)  # (B, T, T)
        logits = torch.arccos(cos) if keep_cos else cos.arccos_()
        logits.mul_(-1.0 / (math.pi * tau))
        logits.masked_fill_(torch.eye(T, dtype=torch.bool, device=z_hat.device), float('-inf'))
        return (logits, cos) if keep_cos else logits

    @staticmethod
    def backward(ctx, grad_out):
        z, lse = ctx.saved_tensors
        tau, eps, clamp = ctx.tau, ctx.eps, ctx.clamp
        B = z.size(0)
        z_hat = _unit_rows(z, eps)
        logits, cos = _AngularLowMemory._logits(z_hat, tau, clamp, keep_cos=True)
        weights = logits.sub_(lse[:, None, None]).exp_()  # (B, T, T): softmax over the pairs, 0 on the diagonal
        # d loss / d cos_ij = w_ij / (B pi tau sqrt(1 - c_ij^2)), c the clamped cosine (straight-through)
        grad_cos = cos.square_().neg_().add_(1.0).rsqrt_().mul_(weights).mul_(grad_out / (B * math.pi * tau))
        grad_z_hat = 2.0 * (grad_cos @ z_hat)  # cos = z_hat z_hat^T and grad_cos is symmetric
        return _through_unit_rows(grad_z_hat, z, eps), None, None, None


def _through_unit_rows(grad_z_hat, z, eps, scale=1.0):
    """Chain rule through z_hat = z / (|z| + eps): the gradient on z from the one on z_hat, times
    `scale` (a number or a (B, 1, 1) tensor, folded in here to save a pass over (B, T, C)). Out of
    place: grad_z_hat may be a tensor saved for backward."""
    norm = torch.linalg.vector_norm(z, dim=-1, keepdim=True)  # (B, T, 1)
    radial = torch.linalg.vecdot(grad_z_hat, z, dim=-1).unsqueeze(-1)  # (B, T, 1)
    inverse = scale / (norm + eps)  # (B, T, 1)
    along_z = radial * inverse / (norm.clamp_min(1e-30) * (norm + eps))  # (B, T, 1)
    return torch.mul(grad_z_hat, inverse).addcmul_(z, along_z, value=-1.0)


# ----------------------------------------------------------------------------
# The pair losses over tiles of the T x T matrix (IMPLEMENTATION = 'tiled', or 'triton')
#
# angular (and condense), orthogonalization and cross_sequence reduce a function of the clamped
# cosine over all pairs of a sequence. Instead of building the (B, T, T) matrix, the forward pass
# walks over blocks of it and keeps one partial result per sequence (a running log-sum-exp, or a
# running sum for orthogonalization); the backward pass walks over the same blocks again,
# recomputes each one and adds its share of the gradient, like FlashAttention's backward.
# Within a sequence cos_ij = cos_ji, so only the pairs on and above the diagonal are visited:
# each row-block of `tile` rows against the columns from its own first row on. The first block of
# a row-block starts with its diagonal tile (counted once, its diagonal excluded); every pair to
# the right of that tile stands for itself and its mirror image.
#
# A block is one row-block against up to _STRIP_PAIRS // tile columns: a strip of several tiles
# in one matmul, because on CPU a few large matmuls run much faster than many small ones
# (bench/bench_dispersion.py --tiles), and the pairs alive per sequence stay bounded by
# _STRIP_PAIRS whatever T is. Each block costs a handful of passes over its pairs besides the
# matmuls (clamp, arccos, exp, ...): constants are folded into as few of them as possible.

_STRIP_PAIRS = 2 ** 18  # pairs per sequence in one block: 1 MB in float32
# Largest spread (in nats) of the logits allowed for summing exp(logit - fixed shift) in one sweep:
# exp(-60) is far above the smallest normal float32 (about exp(-87)), so no term underflows.
_EXP_RANGE = 60.0


def _tile_size(T):
    """Rows per block: small enough that the diagonal tiles (whose lower halves are computed but
    not needed) are a small part of the work, large enough for efficient matmuls. On 2 CPU cores
    256 rows beat 128 at T = 1024 (bench/bench_dispersion.py --tiles --tile-sizes 128,256), though
    their diagonal tiles waste twice the work."""
    return 256


def _pair_blocks(T, tile, symmetric, strip_pairs):
    """(r0, r1, c0, c1) for the blocks rows r0:r1 x columns c0:c1 that cover the pairs, in strips
    of at most max(tile, strip_pairs // tile) columns. With symmetric only the pairs on and above
    the diagonal: each row-block against the columns from r0 on, so that its first block
    (c0 == r0) starts with the diagonal tile, columns r0:r1."""
    width = max(tile, strip_pairs // tile)
    for r0 in range(0, T, tile):
        r1 = min(r0 + tile, T)
        for c0 in range(r0 if symmetric else 0, T, width):
            yield r0, r1, c0, min(c0 + width, T)


class _PairLoss(torch.autograd.Function):
    """kind 'angular', 'orthogonalization' (pairs within a sequence, diagonal excluded) or
    'cross_sequence' (sequence b against b+1, all T x T pairs). Keeps z and one number per
    sequence between the passes. The pair work is done by `engine`: a _TorchTiles (PyTorch) or the
    disperse_triton module (fused kernels), which both provide
      pair_totals(z_hat, kind, tau, clamp, margin) -> (B,) log-sum-exp (or hinge sum) over the pairs
      pair_grad(z_hat, kind, total, tau, clamp, margin) -> (B, T, C) pi * d(sum_b loss_b)/d z_hat."""

    @staticmethod
    def forward(ctx, z, kind, tau, eps, clamp, margin, engine):
        z_hat = _unit_rows(z, eps)
        one_sweep = None
        if ctx.needs_input_grad[0] and hasattr(engine, 'pair_totals_and_grad'):
            one_sweep = engine.pair_totals_and_grad(z_hat, kind, tau, clamp, margin)
        if one_sweep is None:  # the forward pass only; backward recomputes the blocks
            total, grad_z_hat = engine.pair_totals(z_hat, kind, tau, clamp, margin), None  # (B,)
        else:  # the gradient too, kept for backward: one (B, T, C) tensor more
            total, grad_z_hat = one_sweep
        ctx.save_for_backward(z, total, grad_z_hat)
        ctx.options = kind, tau, eps, clamp, margin, engine
        return _pair_value(total, kind, z.size(1)).mean()

    @staticmethod
    def backward(ctx, grad_out):
        z, total, grad_z_hat = ctx.saved_tensors
        kind, tau, eps, clamp, margin, engine = ctx.options
        # float32 also when backward() is called inside an autocast region
        with torch.autocast(device_type=z.device.type, enabled=False):
            if grad_z_hat is None:
                grad_z_hat = engine.pair_grad(_unit_rows(z, eps), kind, total, tau, clamp, margin)
            grad_z = _through_unit_rows(grad_z_hat, z, eps, grad_out / (z.size(0) * math.pi))
            return grad_z, None, None, None, None, None, None


class _TorchTiles:
    """The pair work of _PairLoss in PyTorch, one block of _pair_blocks at a time (batched over
    the sequences): at most tile x max(tile, strip_pairs // tile) pairs per sequence alive."""

    def __init__(self, tile, strip_pairs):
        self.tile, self.strip_pairs = tile, strip_pairs

    def pair_totals(self, z_hat, kind, tau, clamp, margin):
        B, T, C = z_hat.shape
        rows, cols, symmetric = _pair_operands(z_hat, kind)
        hinge = kind == 'orthogonalization'
        # per-sequence log-sum-exp (or sum, for the hinge) of the pair terms seen so far
        total = z_hat.new_full((B,), 0.0 if hinge else float('-inf'))
        # logit = -angle / tau = -arccos(c) / (pi tau); + log 2 for a pair that stands for two
        to_logit, twice = -1.0 / (math.pi * tau), z_hat.new_tensor(math.log(2.0) if symmetric else 0.0)
        for r0, r1, c0, c1 in _pair_blocks(T, self.tile, symmetric, self.strip_pairs):
            r, diagonal = r1 - r0, symmetric and c0 == r0
            cos = torch.bmm(rows[:, r0:r1], cols[:, c0:c1].transpose(1, 2))  # (B, r, c)
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
        cosines (a third of the matmul work): the pair terms are summed against a fixed shift,
        the largest logit the clamp allows, instead of the sequence's log-sum-exp. None where the
        logits the clamp allows spread over more than _EXP_RANGE, so that exp could underflow."""
        B = z_hat.size(0)
        if kind == 'orthogonalization':  # the hinge's slope needs no total
            grad, total = self._grad_sweep(z_hat, kind, None, tau, clamp, margin)
            return total, grad
        highest = -math.acos(1.0 - clamp) / (math.pi * tau)
        lowest = -math.acos(-1.0 + clamp) / (math.pi * tau)
        if highest - lowest > _EXP_RANGE:
            return None
        shift = z_hat.new_full((B,), highest)
        grad, sums = self._grad_sweep(z_hat, kind, shift, tau, clamp, margin, normalise=True)
        return sums.log() + highest, grad

    def _grad_sweep(self, z_hat, kind, offset, tau, clamp, margin, normalise=False):
        """(pi * d(sum_b loss_b)/d z_hat with the pair weights exp(logit - offset_b), divided by
        their sum over the sequence if normalise; and the per-sequence sums of those weights, or of
        the squared hinge terms for orthogonalization)."""
        B, T, C = z_hat.shape
        rows, cols, symmetric = _pair_operands(z_hat, kind)
        hinge = kind == 'orthogonalization'
        grad_rows = torch.zeros_like(z_hat)  # (B, T, C)
        grad_cols = grad_rows if symmetric else torch.zeros_like(z_hat)
        sums = z_hat.new_zeros(B)
        one, to_logit = z_hat.new_ones(()), -1.0 / (math.pi * tau)
        neg_offset = None if hinge else -offset.view(B, 1, 1)

        def summed(terms):  # (B,): the squared hinge terms' sum, or the weights' sum
            return torch.linalg.vecdot(terms, terms, dim=-1).sum(dim=1) if hinge else terms.sum(dim=(1, 2))
        for r0, r1, c0, c1 in _pair_blocks(T, self.tile, symmetric, self.strip_pairs):
            r, diagonal = r1 - r0, symmetric and c0 == r0
            cos = torch.bmm(rows[:, r0:r1], cols[:, c0:c1].transpose(1, 2))  # (B, r, c)
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
        # the softmax's normaliser; 2 for a symmetric matrix (d cos_ij / d z_hat_k counts k as the row
        # and as the column)
        factor = z_hat.new_full((B,), 2.0 / (T * (T - 1)) if hinge else 1.0 / tau)
        if normalise:
            factor = factor / sums
        if symmetric:
            return grad_rows.mul_((2.0 * factor).view(B, 1, 1)), sums
        # cols[b] is z_hat[b + 1]: scale by sequence b's factor before moving its column gradient
        grad_rows.mul_(factor.view(B, 1, 1))
        return grad_rows.add_(grad_cols.mul_(factor.view(B, 1, 1)).roll(shifts=1, dims=0)), sums


def _hinge(arccos, margin):
    """(margin - angle)+ from arccos(c) = pi * angle, in place."""
    return torch.add(arccos.new_tensor(margin), arccos, alpha=-1.0 / math.pi, out=arccos).relu_()


def _pair_operands(z_hat, kind):
    """(rows, columns, symmetric) of the pair matrix cos = rows columns^T of each sequence."""
    if kind == 'cross_sequence':
        return z_hat, z_hat.roll(shifts=-1, dims=0), False  # columns of b: sequence (b+1) % B
    return z_hat, z_hat, True


def _pair_value(total, kind, T):
    """Per-sequence loss from the accumulated log-sum-exp (or hinge sum) over the pairs."""
    if kind == 'orthogonalization':
        return total / (T * (T - 1))
    if kind == 'cross_sequence':
        return total - math.log(T * T)
    return total - math.log(T * (T - 1))


def _decorrelation(z):
    B, T, C = z.shape
    if C < 2:
        raise ValueError(f"decorrelation needs C >= 2 features, got C={C}")
    if T < 2:
        return _no_pairs(z)
    centered = z - z.mean(dim=-1, keepdim=True)
    standardised = centered / (z.std(dim=-1, keepdim=True) + _STD_EPS)  # (B, T, C)
    corr = standardised @ standardised.transpose(1, 2) / (C - 1)  # (B, T, T)
    off_diagonal = ~torch.eye(T, dtype=torch.bool, device=z.device)
    per_sequence = corr.pow(2)[:, off_diagonal].mean(dim=1)  # (B,)
    return per_sequence.mean()


def _l2_repel(z, tau, norm_weight):
    B, T, C = z.shape
    sq_norms = z.pow(2).sum(dim=-1)  # (B, T)
    sq_dist = sq_norms[:, :, None] + sq_norms[:, None, :] - 2.0 * (z @ z.transpose(1, 2))
    # the expansion can dip below 0 by rounding; self-distances are exactly 0
    self_pairs = torch.eye(T, dtype=torch.bool, device=z.device)
    sq_dist = sq_dist.clamp_min(0.0).masked_fill(self_pairs, 0.0)  # (B, T, T)
    logits = (-sq_dist / tau).flatten(1)  # (B, T*T), diagonal kept on purpose
    per_sequence = torch.logsumexp(logits, dim=1) - math.log(T * T)  # (B,)
    return per_sequence.mean() + norm_weight * z.pow(2).mean()


def _orthogonalization(z, eps, clamp, margin):
    B, T, C = z.shape
    if T < 2:
        return _no_pairs(z)
    z_hat = _unit_rows(z, eps)
    angle = _angle(z_hat @ z_hat.transpose(1, 2), clamp)  # (B, T, T)
    hinge = torch.relu(margin - angle).pow(2)
    self_pairs = torch.eye(T, dtype=torch.bool, device=z.device)
    per_sequence = hinge.masked_fill(self_pairs, 0.0).sum(dim=(1, 2)) / (T * (T - 1))  # (B,)
    return per_sequence.mean()


def _cross_sequence(z, tau, eps, clamp):
    B, T, C = z.shape
    z_hat = _unit_rows(z, eps)
    next_seq = z_hat.roll(shifts=-1, dims=0)  # next_seq[b] = z_hat[(b+1) % B]
    angle = _angle(z_hat @ next_seq.transpose(1, 2), clamp)  # (B, T, T), all cross pairs
    logits = (-angle / tau).flatten(1)  # (B, T*T)
    per_sequence = torch.logsumexp(logits, dim=1) - math.log(T * T)  # (B,)
    return per_sequence.mean()


# Which implementation computes the pair losses (angular, condense, orthogonalization, cross_sequence):
#   'auto'       the Triton kernel (disperse_triton.py) for float32 on CUDA when triton imports, else 'tiled'
#   'tiled'      PyTorch over blocks of the pair matrix (_PairLoss, _TorchTiles): memory linear in T
#   'triton'     the Triton kernel, forced (CUDA, or CPU under TRITON_INTERPRET=1)
#   'reference'  the previous full-matrix implementations, for comparison (memory quadratic in T)
# Benchmarks and tests set these two module attributes; TILE = None lets _tile_size choose.
IMPLEMENTATION = 'auto'
IMPLEMENTATIONS = ('auto', 'tiled', 'triton', 'reference')
TILE = None


def _pair_loss(z, kind, tau, eps, clamp, margin):
    """Loss `kind` ('angular', 'orthogonalization' or 'cross_sequence') by IMPLEMENTATION."""
    T = z.size(1)
    if T < 2 and kind != 'cross_sequence':
        return _no_pairs(z)
    implementation = _choose_implementation(z)
    if implementation == 'reference':
        if kind == 'angular':
            return _AngularLowMemory.apply(z, tau, eps, clamp)
        if kind == 'orthogonalization':
            return _orthogonalization(z, eps, clamp, margin)
        return _cross_sequence(z, tau, eps, clamp)
    if implementation == 'triton':
        if not _triton_usable(z.device):
            raise RuntimeError(f"disperse.IMPLEMENTATION='triton' needs `pip install triton` and a CUDA device "
                               f"(or TRITON_INTERPRET=1 on CPU); got a tensor on {z.device}")
        import disperse_triton
        return _PairLoss.apply(z.float(), kind, tau, eps, clamp, margin, disperse_triton)
    tiles = _TorchTiles(TILE if TILE is not None else _tile_size(T), _STRIP_PAIRS)
    return _PairLoss.apply(z, kind, tau, eps, clamp, margin, tiles)


def _choose_implementation(z):
    """IMPLEMENTATION resolved for these hidden states: 'auto' becomes 'triton' or 'tiled'."""
    if IMPLEMENTATION not in IMPLEMENTATIONS:
        raise ValueError(f"disperse.IMPLEMENTATION={IMPLEMENTATION!r}; valid: {', '.join(IMPLEMENTATIONS)}")
    if IMPLEMENTATION != 'auto':
        return IMPLEMENTATION
    return 'triton' if z.is_cuda and z.dtype == torch.float32 and _triton_usable(z.device) else 'tiled'


def _triton_usable(device='cuda'):
    """Whether the Triton kernel (disperse_triton.py) can run on `device`: triton imports, and the
    device is CUDA or the CPU under Triton's interpreter (TRITON_INTERPRET=1)."""
    if not (str(device).startswith('cuda') or os.environ.get('TRITON_INTERPRET') == '1'):
        return False
    try:
        import disperse_triton  # noqa: F401  (imports triton)
    except ImportError:
        return False
    return True


def dispersion_loss(z, variant, *, tau=1.0, eps=1e-2, clamp=0.1, margin=0.5,
                    norm_weight=0.1, max_tokens=None, generator=None):
    """One layer's loss. z: (B, T, C) hidden states; returns a scalar tensor
    (float32, or float64 for float64 input). See the module docstring for the
    formulas. tau: temperature; eps: added to ||z|| before normalising; clamp:
    straight-through band [-1+clamp, 1-clamp] for the cosines; margin: hinge of
    `orthogonalization`; norm_weight: weight of mean(z^2) in `l2_repel`;
    max_tokens: subsample to this many positions (shared across the batch)
    using `generator` (a module-private generator seeded 0 if None)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown dispersion variant {variant!r}; valid: {', '.join(VARIANTS)}")
    if z.dim() != 3:
        raise ValueError(f"expected hidden states of shape (B, T, C), got {tuple(z.shape)}")
    if not 0.0 < clamp < 1.0:
        raise ValueError(f"clamp must be in (0, 1) so that arccos' gradient stays finite, got {clamp}")
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    with torch.autocast(device_type=z.device.type, enabled=False):
        z = _as_loss_dtype(_subsample(z, max_tokens, generator))  # (B, T', C)
        if variant in ('angular', 'condense'):
            loss = _pair_loss(z, 'angular', tau, eps, clamp, margin)
            return loss if variant == 'angular' else -loss
        if variant in ('orthogonalization', 'cross_sequence'):
            if variant == 'cross_sequence' and z.size(0) < 2:
                raise ValueError(f"cross_sequence pairs sequence b with b+1, so it needs a batch of B >= 2, "
                                 f"got B={z.size(0)}")
            return _pair_loss(z, variant, tau, eps, clamp, margin)
        if variant == 'decorrelation':
            return _decorrelation(z)
        if variant == 'l2_repel':
            return _l2_repel(z, tau, norm_weight)
        return z.pow(2).sum(dim=-1).mean()  # norm_penalty: mean over (B, T) of ||z||^2


@torch.no_grad()
def mean_pairwise_cos(z, eps=1e-2):
    """Mean cosine over the off-diagonal pairs within each sequence, averaged
    over the batch; rows normalised by ||z|| + eps. For logging only (no grad).
    Returns 0 when T < 2 (no pairs)."""
    with torch.autocast(device_type=z.device.type, enabled=False):
        z = _as_loss_dtype(z)
        B, T, C = z.shape
        if T < 2:
            return z.new_zeros(())
        # with u_i = z_i / (|z_i| + eps), the sum over all pairs of u_i . u_j is |sum_i u_i|^2, so no
        # T x T matrix is needed; nor the (B, T, C) u itself: sum_i u_i is a (1, T) x (T, C) product
        norm = torch.linalg.vector_norm(z, dim=-1, keepdim=True)  # (B, T, 1)
        inverse = 1.0 / (norm + eps)  # (B, T, 1)
        sum_u = torch.bmm(inverse.transpose(1, 2), z)  # (B, 1, C)
        all_pairs = sum_u.square().sum(dim=(1, 2))  # (B,)
        self_pairs = (norm * inverse).square().sum(dim=(1, 2))  # (B,): |u_i|^2 summed
        return ((all_pairs - self_pairs) / (T * (T - 1))).mean()


def layer_indices(n_layer, which):
    """HF `output_hidden_states` indices chosen by `which`, for a model with
    n_layer blocks. Index 0 is the embedding output, 1..n_layer-1 the block
    outputs, n_layer = ln_f(output of block n_layer).

    which: 'all' (1..n), 'last' ([n]), 'early_half' (first floor(n/2) of 1..n),
    'late_half' (the rest), 'embedding' ([0], a placement control), or explicit
    indices in 0..n as a list/tuple of ints, a single int, or a string "1,3,12".
    Returns a list of ints in the order given."""
    all_blocks = list(range(1, n_layer + 1))
    half = n_layer // 2
    named = {
        'all': all_blocks,
        'last': [n_layer],
        'early_half': all_blocks[:half],
        'late_half': all_blocks[half:],
        'embedding': [0],
    }
    if isinstance(which, str) and which.strip() in named:
        indices = named[which.strip()]
    elif isinstance(which, str):
        try:
            indices = [int(part) for part in which.split(',') if part.strip()]
        except ValueError:
            raise ValueError(f"bad layer selection {which!r}: use one of {', '.join(LAYER_CHOICES)} "
                             f"or comma-separated indices like '1,3,{n_layer}'") from None
    elif isinstance(which, int) and not isinstance(which, bool):
        indices = [which]
    elif isinstance(which, (list, tuple)) and all(isinstance(i, int) and not isinstance(i, bool) for i in which):
        indices = list(which)
    else:
        raise ValueError(f"bad layer selection {which!r}: use one of {', '.join(LAYER_CHOICES)}, "
                         f"a list of ints, or a string like '1,3,{n_layer}'")
    if not indices:
        raise ValueError(f"layer selection {which!r} selects no layer (n_layer={n_layer})")
    for i in indices:
        if not 0 <= i <= n_layer:
            raise ValueError(f"layer index {i} out of range: valid are 0..{n_layer} "
                             f"(0 = embedding output, {n_layer} = ln_f output)")
    if len(set(indices)) != len(indices):
        raise ValueError(f"layer selection {which!r} repeats an index")
    return indices


def dispersion_term(hidden, variant, layers, weight, *, max_tokens=None, generator=None, **loss_options):
    """The auxiliary term added to the CE loss: weight * mean over the selected
    layers of dispersion_loss(hidden[i]).

    hidden: list of n_layer+1 tensors (B, T, C) in HF indexing; layers: anything
    layer_indices accepts ('all', [1, 3], "1,3", ...); the remaining keywords go
    to dispersion_loss. Returns (total, stats); stats holds detached tensors
    (no .item() here, so no device sync; convert at log steps):
    'disp/raw' (unweighted layer mean), 'disp/weighted', and per layer
    'disp/layer{i}/loss' and 'disp/layer{i}/pair_cos' (mean_pairwise_cos, the mean cosine
    over the off-diagonal pairs the loss sees, on the same subsample; not the probe's
    mean_cos, which includes the diagonal)."""
    chosen = layer_indices(len(hidden) - 1, layers)
    stats = {}
    per_layer = []
    for i in chosen:
        # one subsample per layer call, shared by the loss and its logged cosine
        h = _subsample(hidden[i], max_tokens, generator)  # (B, T', C)
        loss = dispersion_loss(h, variant, **loss_options)
        per_layer.append(loss)
        stats[f'disp/layer{i}/loss'] = loss.detach()
        stats[f'disp/layer{i}/pair_cos'] = mean_pairwise_cos(h, eps=loss_options.get('eps', 1e-2))
    raw = torch.stack(per_layer).mean()  # mean, not sum, across layers
    total = weight * raw
    stats['disp/raw'] = raw.detach()
    stats['disp/weighted'] = total.detach()
    return total, stats


def _angular_gradients(hidden, chosen, weight, generator, angular_options):
    """Per selected layer i: the gradient of weight * mean_layers(angular) w.r.t. hidden[i], taken
    on a detached copy (so the model's graph is not touched), and the angular value itself."""
    grads, values = {}, {}
    for i in chosen:
        with torch.enable_grad():
            probe = hidden[i].detach().requires_grad_()
            angular = dispersion_loss(probe, 'angular', generator=generator, **angular_options)
            (grad,) = torch.autograd.grad(weight * angular / len(chosen), probe)
        grads[i], values[i] = grad.float(), angular.detach()
    return grads, values


def _control_surrogate(hidden, control_grads):
    """sum_layers sum(h * g): a scalar whose gradient w.r.t. each hidden[i] is exactly
    control_grads[i] (the .float() cast's backward returns it in h's dtype)."""
    surrogate = 0.0
    for i, grad in control_grads.items():
        h = hidden[i]
        with torch.autocast(device_type=h.device.type, enabled=False):
            surrogate = surrogate + (h.float() * grad.to(h.device)).sum()
    return surrogate


def _control_stats(angular_grads, angular_values):
    stats = {f'ctrl/layer{i}/grad_norm': torch.linalg.vector_norm(g) for i, g in angular_grads.items()}
    stats.update({f'ctrl/layer{i}/angular': v for i, v in angular_values.items()})
    stats['ctrl/raw'] = torch.stack(list(angular_values.values())).mean()
    return stats


def random_direction_term(hidden, layers, weight, generator, **angular_options):
    """Matched-strength control: per selected layer and per call, an auxiliary
    gradient on hidden[i] with the norm that weight * mean_layers(angular)
    would give it, but in a random Gaussian direction.

    For each layer h: g = d(weight * angular(h) / n_selected)/dh on a detached
    copy; r ~ N(0, I) drawn from `generator` (also used for the angular loss's
    subsampling if max_tokens is given), rescaled to ||r|| = ||g||. The returned
    surrogate is sum_layers sum(h * r), whose gradient w.r.t. h is exactly r.
    Its VALUE is meaningless (a random projection of the activations): log the
    grad norms, never the surrogate.

    Matched at the hidden states only: the B*T independent directions cancel once
    backpropagated into the shared weights, so the parameter gradient is many times
    weaker than the angular term's (train.py logs the ratio, ctrl/param_grad_ratio);
    rotated_angular_term is the control matched in the parameters.

    Returns (surrogate, stats, angular_grads): stats holds detached
    'ctrl/layer{i}/grad_norm', 'ctrl/layer{i}/angular' and 'ctrl/raw' (mean angular);
    angular_grads maps each selected layer i to g (float32, detached), the gradient
    the angular term itself would have put on hidden[i]."""
    chosen = layer_indices(len(hidden) - 1, layers)
    angular_grads, angular_values = _angular_gradients(hidden, chosen, weight, generator, angular_options)
    directions = {}
    for i, grad in angular_grads.items():
        r = torch.randn(grad.shape, generator=generator, device=generator.device).to(grad.device)  # (B, T, C)
        directions[i] = r * (torch.linalg.vector_norm(grad) / torch.linalg.vector_norm(r))
    return _control_surrogate(hidden, directions), _control_stats(angular_grads, angular_values), angular_grads


def random_rotation(C, generator):
    """A Haar-distributed random orthogonal C x C matrix (float32), drawn from `generator`: the
    QR decomposition of a Gaussian matrix, with the signs of R's diagonal moved into Q (without
    that fix QR's sign convention makes Q not uniformly distributed; Mezzadri 2007)."""
    gaussian = torch.randn(C, C, generator=generator, device=generator.device, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    return (q * torch.sign(torch.diagonal(r))[None, :]).float()  # column j times sign(r_jj)


def param_grad_norm(outputs, grad_outputs, params):
    """||d/d params of sum_k <outputs[k], grad_outputs[k]>||, the norm over all of params, by
    torch.autograd.grad: the graph is kept and no .grad is written (one backward pass)."""
    grads = torch.autograd.grad(outputs, params, grad_outputs=grad_outputs, retain_graph=True, allow_unused=True)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads if g is not None]))


def rotated_angular_term(hidden, layers, weight, rotation, *, params=None, generator=None, **angular_options):
    """Control matched in the parameters: the angular term's own gradient on each selected
    layer's hidden states, with every token's gradient vector rotated by the same orthogonal
    C x C matrix `rotation` (see random_rotation; train.py draws one per optimizer step),
    and, if the model's `params` are given, rescaled so that its gradient w.r.t. them has
    exactly the norm the angular term's has on this batch.

    For each layer h: g = d(weight * angular(h) / n_selected)/dh on a detached copy (as in
    random_direction_term; `generator` is used only for the angular loss's subsampling);
    the control gradient is s * g @ rotation. Rotating each row keeps every token's gradient
    norm and the token x token Gram matrix g g^T, so the gradient of any linear map writing
    into the hidden state (weight W: x W^T, gradient g^T x, and its bias) keeps its norm
    exactly, and gradients of different tokens add up (or cancel) in the weights as the
    angular ones do; what it destroys is the direction, i.e. the geometry that spreads the
    tokens. Through the layers before (LayerNorm, attention, MLP) the norm is NOT kept: the
    angular gradient of token t is a combination of the other tokens' hidden vectors, so it
    lies where the hidden states lie, which is where the network's output is most sensitive
    to its weights; a random rotation moves it out. Once training has condensed the states
    into few directions, rotation alone reaches the weights up to 5x more weakly
    (bench/bench_controls.py). Hence s = ||J^T g|| / ||J^T (g @ rotation)|| (J: the Jacobian
    of the selected hidden states w.r.t. params), one scalar for all layers, computed by two
    extra backward passes from the hidden states; logged as 'ctrl/scale'. The price: at the
    hidden states the control's gradient is s times the angular one's (every layer alike).
    With params=None, s = 1 (rotation only, matched at the hidden states).

    The returned surrogate sum_layers sum(h * s * (g @ rotation)) has exactly that gradient
    w.r.t. h; its VALUE is meaningless: log the grad norms, never the surrogate.
    Returns (surrogate, stats, angular_grads) like random_direction_term."""
    chosen = layer_indices(len(hidden) - 1, layers)
    C = hidden[chosen[0]].size(-1)
    if rotation.shape != (C, C):
        raise ValueError(f"rotation must be a ({C}, {C}) matrix for hidden states of width {C}, "
                         f"got {tuple(rotation.shape)}")
    angular_grads, angular_values = _angular_gradients(hidden, chosen, weight, generator, angular_options)
    rotation = rotation.float()
    rotated = {i: grad @ rotation.to(grad.device) for i, grad in angular_grads.items()}  # (B, T, C)
    stats = _control_stats(angular_grads, angular_values)
    if params is not None:
        outputs = [hidden[i] for i in chosen]
        angular_norm = param_grad_norm(outputs, [angular_grads[i].to(hidden[i].dtype) for i in chosen], params)
        rotated_norm = param_grad_norm(outputs, [rotated[i].to(hidden[i].dtype) for i in chosen], params)
        scale = angular_norm / rotated_norm.clamp_min(1e-30)  # both 0 only when the angular gradient is 0
        rotated = {i: grad * scale for i, grad in rotated.items()}
        stats['ctrl/scale'] = scale.detach()
    return _control_surrogate(hidden, rotated), stats, angular_grads


def neftune_noise(shape, alpha, generator=None, device="cpu", dtype=torch.float32):
    """NEFTune (Jain et al. 2023): noise U(-s, s), s = alpha / sqrt(T*C), of the
    token embeddings' shape (B, T, C), to ADD to them in training only. Pass a
    generator so the noise does not shift the global RNG (dropout, sampling)."""
    B, T, C = shape
    scale = alpha / math.sqrt(T * C)
    draw_device = generator.device if generator is not None else device
    uniform01 = torch.rand(shape, generator=generator, device=draw_device)  # (B, T, C)
    return ((uniform01 * 2.0 - 1.0) * scale).to(device=device, dtype=dtype)


def distillation_loss(student_logits, teacher_logits, temperature):
    """KL(teacher || student) between softmax(logits / temperature), times
    temperature^2 (keeps gradient scale independent of the temperature), mean
    over all tokens (every leading dim). Computed in float32. The teacher
    logits are not detached here: pass them computed under no_grad."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        vocab = student_logits.size(-1)
        student = _as_loss_dtype(student_logits).reshape(-1, vocab)  # (N, V)
        teacher = _as_loss_dtype(teacher_logits).reshape(-1, vocab)  # (N, V)
        log_p_student = torch.log_softmax(student / temperature, dim=-1)
        log_p_teacher = torch.log_softmax(teacher / temperature, dim=-1)
        kl_per_token = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=-1)  # (N,)
        return kl_per_token.mean() * temperature ** 2
