"""
The dispersion losses on hidden states and the layer selection around them. Pure functions on
tensors: this file never imports the model, it is handed hidden states. The controls that stand in
for them (random_direction, rotated_angular, NEFTune, distillation) are in controls.py; how the
formulas are derived and what they do to a model is taught in docs/dispersion.md.

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

The pair losses (angular, condense, orthogonalization, cross_sequence) are written plainly below
(the 'reference' implementation, memory quadratic in T) and computed by an engine that never builds
the (B, T, T) matrix, so memory grows linearly in T: disperse_torch.py (Tiles, the CPUs' choice;
Dense, for GPUs) or disperse_triton.py. IMPLEMENTATION = 'auto' picks one (see choose_implementation).

Optional token subsampling (max_tokens) keeps the same random positions for
every sequence of the batch, like the official code, and draws them from a
dedicated torch.Generator so the global RNG (dropout, data order) is untouched.
"""

import math
import os
import sys
import time

import torch

import disperse_torch

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


def as_loss_dtype(z):
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


def unit_rows(z, eps):
    """z / (|z| + eps) along the last dimension."""
    return z / (torch.linalg.vector_norm(z, dim=-1, keepdim=True) + eps)


def _angle(cos, clamp):
    """Normalised angle arccos(c)/pi with the straight-through clamp."""
    clamped = cos.clamp(-1.0 + clamp, 1.0 - clamp)
    cos_st = cos + (clamped - cos).detach()  # forward: clamped, backward: identity
    return torch.arccos(cos_st) / math.pi


# ----------------------------------------------------------------------------
# The formulas, as plainly as PyTorch writes them: each builds the (B, T, T) matrix and lets
# autograd differentiate it. IMPLEMENTATION = 'reference' computes the pair losses this way; the
# engines (disperse_torch.py, disperse_triton.py) compute the same numbers in bounded memory.

def _angular(z, tau, eps, clamp):
    B, T, C = z.shape
    z_hat = unit_rows(z, eps)
    cos = z_hat @ z_hat.transpose(1, 2)  # (B, T, T)
    angle = _angle(cos, clamp)
    self_pairs = torch.eye(T, dtype=torch.bool, device=z.device)
    # mask the logits, not the cosines: exp(-inf) = 0 and its gradient is 0,
    # while arccos' gradient at the (clamped) diagonal stays finite, so no 0*inf
    logits = (-angle / tau).masked_fill(self_pairs, float('-inf'))
    logits = logits.flatten(1)  # (B, T*T)
    return torch.logsumexp(logits, dim=1) - math.log(T * (T - 1))  # (B,)


def _orthogonalization(z, eps, clamp, margin):
    B, T, C = z.shape
    z_hat = unit_rows(z, eps)
    angle = _angle(z_hat @ z_hat.transpose(1, 2), clamp)  # (B, T, T)
    hinge = torch.relu(margin - angle).pow(2)
    self_pairs = torch.eye(T, dtype=torch.bool, device=z.device)
    return hinge.masked_fill(self_pairs, 0.0).sum(dim=(1, 2)) / (T * (T - 1))  # (B,)


def _cross_sequence(z, tau, eps, clamp):
    B, T, C = z.shape
    z_hat = unit_rows(z, eps)
    next_seq = z_hat.roll(shifts=-1, dims=0)  # next_seq[b] = z_hat[(b+1) % B]
    angle = _angle(z_hat @ next_seq.transpose(1, 2), clamp)  # (B, T, T), all cross pairs
    logits = (-angle / tau).flatten(1)  # (B, T*T)
    return torch.logsumexp(logits, dim=1) - math.log(T * T)  # (B,)


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


# ----------------------------------------------------------------------------
# The pair losses in bounded memory
#
# angular (and condense), orthogonalization and cross_sequence reduce a function of the clamped
# cosine over all pairs of a sequence. An engine never builds the whole (B, T, T) matrix: its
# forward pass walks over pieces of it and keeps one number per sequence (a log-sum-exp, or a sum
# for orthogonalization); the gradient comes from walking over the same pieces, like
# FlashAttention's backward. Only z and those numbers (or, from a one-sweep engine, the gradient
# itself) are kept between the passes.

class _PairLoss(torch.autograd.Function):
    """Per-sequence losses (N,) of kind 'angular', 'orthogonalization' or 'cross_sequence' of z
    (N, T, C), by `engine` (disperse_torch.Tiles or .Dense, or the disperse_triton module)."""

    @staticmethod
    def forward(ctx, z, kind, tau, eps, clamp, margin, engine):
        z_hat = unit_rows(z, eps)
        one_sweep = None
        if ctx.needs_input_grad[0] and hasattr(engine, 'pair_totals_and_grad'):
            one_sweep = engine.pair_totals_and_grad(z_hat, kind, tau, clamp, margin)
        if one_sweep is None:  # the forward pass only; backward recomputes the pieces
            total, grad_z_hat = engine.pair_totals(z_hat, kind, tau, clamp, margin), None  # (N,)
        else:  # the gradient too, kept for backward: one (N, T, C) tensor more
            total, grad_z_hat = one_sweep
        ctx.save_for_backward(z, total, grad_z_hat)
        ctx.options = kind, tau, eps, clamp, margin, engine
        return _pair_value(total, kind, z.size(1))

    @staticmethod
    def backward(ctx, grad_out):
        z, total, grad_z_hat = ctx.saved_tensors
        kind, tau, eps, clamp, margin, engine = ctx.options
        # float32 also when backward() is called inside an autocast region
        with torch.autocast(device_type=z.device.type, enabled=False):
            if grad_z_hat is None:
                grad_z_hat = engine.pair_grad(unit_rows(z, eps), kind, total, tau, clamp, margin)
            grad_z = _through_unit_rows(grad_z_hat, z, eps, grad_out.view(-1, 1, 1) / math.pi)
            return grad_z, None, None, None, None, None, None


def _through_unit_rows(grad_z_hat, z, eps, scale=1.0):
    """Chain rule through z_hat = z / (|z| + eps): the gradient on z from the one on z_hat, times
    `scale` (a number or an (N, 1, 1) tensor, folded in here to save a pass over (N, T, C)). Out of
    place: grad_z_hat may be a tensor saved for backward."""
    norm = torch.linalg.vector_norm(z, dim=-1, keepdim=True)  # (N, T, 1)
    radial = torch.linalg.vecdot(grad_z_hat, z, dim=-1).unsqueeze(-1)  # (N, T, 1)
    inverse = scale / (norm + eps)  # (N, T, 1)
    along_z = radial * inverse / (norm.clamp_min(1e-30) * (norm + eps))  # (N, T, 1)
    return torch.mul(grad_z_hat, inverse).addcmul_(z, along_z, value=-1.0)


def _pair_value(total, kind, T):
    """Per-sequence loss from the accumulated log-sum-exp (or hinge sum) over the pairs."""
    if kind == 'orthogonalization':
        return total / (T * (T - 1))
    if kind == 'cross_sequence':
        return total - math.log(T * T)
    return total - math.log(T * (T - 1))


# Which implementation computes the pair losses (angular, condense, orthogonalization, cross_sequence):
#   'auto'       on a CPU 'tiled'; on a GPU the fastest of 'dense', 'tiled' and 'triton' for each new shape,
#                timed once on the device itself (choose_implementation; AUTO_CHOICES records the timings)
#   'tiled'      disperse_torch.Tiles: the upper triangle in blocks, fewest operations' worth of arithmetic
#   'dense'      disperse_torch.Dense: whole rows, many sequences per batched matmul; its elementwise step
#                compiled with torch.compile on the devices in DENSE_COMPILE
#   'triton'     disperse_triton.py's fused kernels (CUDA, or CPU under TRITON_INTERPRET=1)
#   'reference'  the plain formulas above (memory quadratic in T)
# Benchmarks and tests set these module attributes; TILE = None lets disperse_torch.tile_size choose.
IMPLEMENTATION = 'auto'
IMPLEMENTATIONS = ('auto', 'tiled', 'dense', 'triton', 'reference')
TILE = None
DENSE_COMPILE = ('cuda',)  # device types on which Dense's elementwise step runs compiled
DENSE_MATMUL_DTYPE = None  # Dense's products: None in float32 (TF32 where torch allows it), or torch.bfloat16
MEASURE_ON = ('cuda',)  # device types on which 'auto' times the candidates (elsewhere: 'tiled', see below)
AUTO_CHOICES = {}  # (kind, shape, dtype, device, grad) -> {'choice': name, 'ms': {name: ms or error}}
_compiled_weights = None


def _engine(implementation, z):
    if implementation == 'triton':
        if not triton_usable(z.device):
            raise RuntimeError(f"disperse.IMPLEMENTATION='triton' needs `pip install triton` and a CUDA device "
                               f"(or TRITON_INTERPRET=1 on CPU); got a tensor on {z.device}")
        import disperse_triton
        return disperse_triton
    if implementation == 'dense':
        return disperse_torch.Dense(disperse_torch.DENSE_PAIRS, _dense_weights_fn(z.device), DENSE_MATMUL_DTYPE)
    return disperse_torch.Tiles(TILE if TILE is not None else disperse_torch.tile_size(z.size(1)),
                                disperse_torch.STRIP_PAIRS)


def _dense_weights_fn(device):
    """Dense's elementwise step: compiled (once per process) on the device types of DENSE_COMPILE."""
    global _compiled_weights
    if device.type not in DENSE_COMPILE:
        return disperse_torch.dense_weights
    if _compiled_weights is None:
        _compiled_weights = torch.compile(disperse_torch.dense_weights, dynamic=False)
    return _compiled_weights


def pair_losses(z, kind, tau, eps, clamp, margin):
    """Per-sequence losses (N,) of `kind` ('angular', 'orthogonalization' or 'cross_sequence') of
    float32 or float64 hidden states z (N, T, C), by IMPLEMENTATION."""
    T = z.size(1)
    if T < 2 and kind != 'cross_sequence':
        return z.sum(dim=(1, 2)) * 0.0
    implementation = choose_implementation(z, kind, tau, eps, clamp, margin)
    if implementation == 'reference':
        if kind == 'angular':
            return _angular(z, tau, eps, clamp)
        if kind == 'orthogonalization':
            return _orthogonalization(z, eps, clamp, margin)
        return _cross_sequence(z, tau, eps, clamp)
    if implementation == 'triton':
        z = z.float()  # the kernels take float32
    return _PairLoss.apply(z, kind, tau, eps, clamp, margin, _engine(implementation, z))


def choose_implementation(z, kind='angular', tau=1.0, eps=1e-2, clamp=0.1, margin=0.5):
    """IMPLEMENTATION resolved for these hidden states. 'auto' is 'tiled' on devices outside
    MEASURE_ON: on 2 CPU cores the tiles beat every other engine (docs/performance.md). On the others
    (GPUs) the first call with a new (kind, shape, dtype, device) times every usable engine on a
    random tensor of that shape, forward and backward, and keeps the fastest for the rest of the
    process; the timings are in AUTO_CHOICES and printed once."""
    if IMPLEMENTATION not in IMPLEMENTATIONS:
        raise ValueError(f"disperse.IMPLEMENTATION={IMPLEMENTATION!r}; valid: {', '.join(IMPLEMENTATIONS)}")
    if IMPLEMENTATION != 'auto':
        return IMPLEMENTATION
    if z.device.type not in MEASURE_ON:
        return 'tiled'
    if torch.compiler.is_compiling():  # inside a compiled region nothing can be timed; Dense traces well
        return 'dense'
    key = (kind, tuple(z.shape), str(z.dtype), str(z.device), z.requires_grad)
    if key not in AUTO_CHOICES:
        AUTO_CHOICES[key] = _measure(z, kind, tau, eps, clamp, margin)
        timings = ", ".join(f"{name} {ms:.2f} ms" if isinstance(ms, float) else f"{name} failed ({ms})"
                            for name, ms in AUTO_CHOICES[key]['ms'].items())
        print(f"disperse: {kind} on {tuple(z.shape)} {z.device}: {timings} -> {AUTO_CHOICES[key]['choice']}",
              file=sys.stderr)
    return AUTO_CHOICES[key]['choice']


def _measure(z, kind, tau, eps, clamp, margin, reps=3):
    """{'choice', 'ms'}: the median time of `reps` forward (and, if z needs a gradient, backward)
    passes of each usable engine on random states of z's shape; one untimed pass first (compiling,
    autotuning). An engine that raises is reported and passed over."""
    candidates = ['dense', 'tiled'] + (['triton'] if triton_usable(z.device) else [])
    sample = torch.randn(z.shape, device=z.device, dtype=z.dtype, generator=torch.Generator(z.device).manual_seed(0))
    timings = {}
    for name in candidates:
        def run():
            x = sample.detach().requires_grad_(z.requires_grad)
            with torch.enable_grad() if z.requires_grad else torch.no_grad():
                losses = _PairLoss.apply(x.float() if name == 'triton' else x, kind, tau, eps, clamp, margin,
                                         _engine(name, x))
                if z.requires_grad:
                    losses.sum().backward()
        try:
            run()
            times = []
            for _ in range(reps):
                _synchronize(z.device)
                t0 = time.perf_counter()
                run()
                _synchronize(z.device)
                times.append((time.perf_counter() - t0) * 1000)
            timings[name] = sorted(times)[len(times) // 2]
        except Exception as e:  # noqa: BLE001  (a kernel that fails to build on this device: use another)
            timings[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
    valid = {name: ms for name, ms in timings.items() if isinstance(ms, float)}
    if not valid:
        raise RuntimeError(f"no dispersion engine ran on {z.device}: {timings}")
    return {'choice': min(valid, key=valid.get), 'ms': timings}


def _synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def triton_usable(device='cuda'):
    """Whether the Triton kernel (disperse_triton.py) can run on `device`: triton imports, and the
    device is CUDA or the CPU under Triton's interpreter (TRITON_INTERPRET=1)."""
    if not (str(device).startswith('cuda') or os.environ.get('TRITON_INTERPRET') == '1'):
        return False
    try:
        import disperse_triton  # noqa: F401  (imports triton)
    except ImportError:
        return False
    return True


def _check_options(variant, clamp, tau):
    if variant not in VARIANTS:
        raise ValueError(f"unknown dispersion variant {variant!r}; valid: {', '.join(VARIANTS)}")
    if not 0.0 < clamp < 1.0:
        raise ValueError(f"clamp must be in (0, 1) so that arccos' gradient stays finite, got {clamp}")
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")


def _per_sequence(z, variant, tau, eps, clamp, margin, norm_weight):
    """The pair variants' per-sequence losses (N,) of float32/float64 z (N, T, C); the other
    variants' loss (a scalar, already averaged over the batch)."""
    if variant in ('angular', 'condense'):
        losses = pair_losses(z, 'angular', tau, eps, clamp, margin)
        return losses if variant == 'angular' else -losses
    if variant in ('orthogonalization', 'cross_sequence'):
        if variant == 'cross_sequence' and z.size(0) < 2:
            raise ValueError(f"cross_sequence pairs sequence b with b+1, so it needs a batch of B >= 2, "
                             f"got B={z.size(0)}")
        return pair_losses(z, variant, tau, eps, clamp, margin)
    if variant == 'decorrelation':
        return _decorrelation(z)
    if variant == 'l2_repel':
        return _l2_repel(z, tau, norm_weight)
    return z.pow(2).sum(dim=-1).mean()  # norm_penalty: mean over (B, T) of ||z||^2


def dispersion_loss(z, variant, *, tau=1.0, eps=1e-2, clamp=0.1, margin=0.5,
                    norm_weight=0.1, max_tokens=None, generator=None):
    """One layer's loss. z: (B, T, C) hidden states; returns a scalar tensor
    (float32, or float64 for float64 input). See the module docstring for the
    formulas. tau: temperature; eps: added to ||z|| before normalising; clamp:
    straight-through band [-1+clamp, 1-clamp] for the cosines; margin: hinge of
    `orthogonalization`; norm_weight: weight of mean(z^2) in `l2_repel`;
    max_tokens: subsample to this many positions (shared across the batch)
    using `generator` (a module-private generator seeded 0 if None)."""
    _check_options(variant, clamp, tau)
    if z.dim() != 3:
        raise ValueError(f"expected hidden states of shape (B, T, C), got {tuple(z.shape)}")
    with torch.autocast(device_type=z.device.type, enabled=False):
        z = as_loss_dtype(_subsample(z, max_tokens, generator))  # (B, T', C)
        return _per_sequence(z, variant, tau, eps, clamp, margin, norm_weight).mean()


@torch.no_grad()
def mean_pairwise_cos(z, eps=1e-2):
    """Mean cosine over the off-diagonal pairs within each sequence, averaged
    over the batch; rows normalised by ||z|| + eps. For logging only (no grad).
    Returns 0 when T < 2 (no pairs)."""
    return pairwise_cos_per_sequence(z, eps).mean()


@torch.no_grad()
def pairwise_cos_per_sequence(z, eps=1e-2):
    """mean_pairwise_cos of each sequence of z (N, T, C): (N,), float32 (float64 for float64 z)."""
    with torch.autocast(device_type=z.device.type, enabled=False):
        z = as_loss_dtype(z)
        N, T, C = z.shape
        if T < 2:
            return z.new_zeros(N)
        # with u_i = z_i / (|z_i| + eps), the sum over all pairs of u_i . u_j is |sum_i u_i|^2, so no
        # T x T matrix is needed; nor the (N, T, C) u itself: sum_i u_i is a (1, T) x (T, C) product
        norm = torch.linalg.vector_norm(z, dim=-1, keepdim=True)  # (N, T, 1)
        inverse = 1.0 / (norm + eps)  # (N, T, 1)
        sum_u = torch.bmm(inverse.transpose(1, 2), z)  # (N, 1, C)
        all_pairs = sum_u.square().sum(dim=(1, 2))  # (N,)
        self_pairs = (norm * inverse).square().sum(dim=(1, 2))  # (N,): |u_i|^2 summed
        return (all_pairs - self_pairs) / (T * (T - 1))


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
    mean_cos, which includes the diagonal).

    The selected layers of a within-sequence pair loss (angular, condense, orthogonalization) go
    through the engine together, as one (L * B, T, C) batch: one call instead of L, which on a GPU
    is most of the saving at short T."""
    options = dict(tau=1.0, eps=1e-2, clamp=0.1, margin=0.5, norm_weight=0.1)
    options.update(loss_options)
    _check_options(variant, options['clamp'], options['tau'])
    chosen = layer_indices(len(hidden) - 1, layers)
    # one subsample per layer, shared by the loss and its logged cosine
    states = [_subsample(hidden[i], max_tokens, generator) for i in chosen]  # L x (B, T', C)
    with torch.autocast(device_type=states[0].device.type, enabled=False):
        if variant in ('angular', 'condense', 'orthogonalization') and len({s.shape for s in states}) == 1:
            stacked = torch.stack([as_loss_dtype(s) for s in states])  # (L, B, T', C)
            L, B = stacked.shape[:2]
            per_layer = _per_sequence(stacked.flatten(0, 1), variant, **options).view(L, B).mean(dim=1)  # (L,)
            pair_cos = pairwise_cos_per_sequence(stacked.flatten(0, 1), options['eps']).view(L, B).mean(dim=1)
        else:
            per_layer = torch.stack([_per_sequence(as_loss_dtype(s), variant, **options).mean() for s in states])
            pair_cos = torch.stack([mean_pairwise_cos(s, options['eps']) for s in states])
    stats = {}
    for k, i in enumerate(chosen):
        stats[f'disp/layer{i}/loss'] = per_layer[k].detach()
        stats[f'disp/layer{i}/pair_cos'] = pair_cos[k]
    raw = per_layer.mean()  # mean, not sum, across layers
    total = weight * raw
    stats['disp/raw'] = raw.detach()
    stats['disp/weighted'] = total.detach()
    return total, stats
