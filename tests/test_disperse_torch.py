"""Tests for the PyTorch engines of the pair losses (disperse_torch.py: Tiles over the upper
triangle, Dense over whole rows of many sequences; angular, condense, orthogonalization,
cross_sequence) and for the choice of implementation: against the brute-force float64 references of
test_disperse.py, for tile sizes that do and do not divide T, T below the tile, T = 2, strips of
several tiles, and Dense steps that split the sequences and the rows."""

import itertools
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import disperse  # noqa: E402
import disperse_torch  # noqa: E402
from disperse import dispersion_loss  # noqa: E402
from test_disperse import OPTIONS, REFERENCES, clamp_active_states, random_states  # noqa: E402

PAIR_VARIANTS = ('angular', 'condense', 'orthogonalization', 'cross_sequence')


@pytest.fixture
def tiling(monkeypatch):
    """Set the engine and its piece sizes; restored after the test. For 'dense', `tile` x T is the
    number of pairs per step (so a tile below T splits the rows, and B * T pairs or fewer the batch)."""
    def set_tiling(tile, strip_pairs=None, implementation='tiled', one_sweep=True):
        monkeypatch.setattr(disperse, 'IMPLEMENTATION', implementation)
        monkeypatch.setattr(disperse, 'TILE', tile if implementation == 'tiled' else None)
        if implementation == 'dense' and tile is not None:
            monkeypatch.setattr(disperse_torch, 'DENSE_PAIRS', tile * (strip_pairs or 1))
        elif strip_pairs is not None:
            monkeypatch.setattr(disperse_torch, 'STRIP_PAIRS', strip_pairs)
        if not one_sweep:  # forward computes the totals only, backward recomputes the blocks
            for engine in (disperse_torch.Tiles, disperse_torch.Dense):
                monkeypatch.setattr(engine, 'pair_totals_and_grad', lambda self, *args: None)
    return set_tiling


ENGINES = ['tiled', 'dense']


def value_and_grad(z, variant, options=OPTIONS):
    leaf = z.clone().requires_grad_()
    loss = dispersion_loss(leaf, variant, **options)
    (loss * 1.7).backward()  # a grad_out other than 1
    return loss, leaf.grad


def reference_value_and_grad(z, variant, options=OPTIONS):
    leaf = z.detach().double().requires_grad_()
    loss = REFERENCES[variant](leaf, options)
    (loss * 1.7).backward()
    return loss, leaf.grad


def test_blocks_cover_every_pair_once():
    # symmetric: each row-block's diagonal tile once, every pair right of it for itself and its mirror
    for T, tile, strip in itertools.product((1, 2, 5, 12, 13), (1, 3, 4, 16), (1, 16, 40)):
        for symmetric in (True, False):
            count = torch.zeros(T, T, dtype=torch.int64)
            for r0, r1, c0, c1 in disperse_torch.pair_blocks(T, tile, symmetric, strip):
                assert (r1 - r0) * (c1 - c0) <= max(tile * tile, strip, tile)  # pairs alive per sequence
                count[r0:r1, c0:c1] += 1
                if symmetric:
                    assert c0 >= r0  # on or above the diagonal
                    mirror = c0 + (r1 - r0) if c0 == r0 else c0  # right of the diagonal tile
                    assert c0 == r0 or c0 >= r1
                    count[mirror:c1, r0:r1] += 1
            assert torch.equal(count, torch.ones(T, T, dtype=torch.int64)), (T, tile, strip, symmetric)


@pytest.mark.parametrize('engine', ENGINES)
@pytest.mark.parametrize('one_sweep', [True, False], ids=['one sweep', 'recomputing backward'])
@pytest.mark.parametrize('variant', PAIR_VARIANTS)
@pytest.mark.parametrize('B, T, tile, strip_pairs', [
    (2, 2, 4, None),     # T = 2, below the tile
    (2, 7, 16, None),    # one tile, T < tile
    (2, 8, 4, None),     # T a multiple of the tile
    (3, 11, 4, None),    # T not a multiple: a last, partial row-block
    (2, 13, 3, 9),       # strips of one tile each (9 pairs per block)
    (2, 13, 2, 10),      # strips of several tiles, the last one partial
    (2, 5, 1, None),     # tile of one row: diagonal tiles are single masked pairs
])
def test_engines_match_brute_force_float64(tiling, engine, variant, B, T, tile, strip_pairs, one_sweep):
    tiling(tile, strip_pairs, engine, one_sweep=one_sweep)
    z = random_states(B=B, T=T, C=6, seed=T + tile, scale=0.5)
    ours, grad = value_and_grad(z, variant)
    ref, ref_grad = reference_value_and_grad(z, variant)
    assert ours.dtype == torch.float64
    assert abs(ours.item() - ref.item()) < 1e-10, (ours.item(), ref.item())
    assert ref_grad.abs().max() > 1e-4  # the comparison is not vacuous
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize('engine', ENGINES)
@pytest.mark.parametrize('variant', PAIR_VARIANTS)
def test_engines_match_brute_force_with_the_clamp_active(tiling, engine, variant):
    tiling(4, 8, engine)
    z = clamp_active_states()  # (2, 6, 5) with pairs outside the clamp band
    options = dict(OPTIONS, margin=0.8)  # a margin that makes the hinge act on many pairs
    ours, grad = value_and_grad(z, variant, options)
    ref, ref_grad = reference_value_and_grad(z, variant, options)
    assert abs(ours.item() - ref.item()) < 1e-10
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize('engine', ENGINES)
@pytest.mark.parametrize('variant', PAIR_VARIANTS)
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_engines_float32_and_bf16_inputs_match_float64_reference(tiling, engine, variant, dtype):
    tiling(4, 12, engine)
    z = random_states(B=2, T=10, C=16, seed=31).to(dtype)  # bf16: the reference sees the same rounded values
    with torch.autocast(device_type='cpu', dtype=torch.bfloat16):  # the loss must switch it off
        ours, grad = value_and_grad(z, variant)
    ref, ref_grad = reference_value_and_grad(z, variant)
    assert ours.dtype == torch.float32
    assert abs(ours.item() - ref.item()) < 1e-5, (ours.item(), ref.item())
    assert grad.dtype == dtype
    # the float32 gradient is rounded back to the input's dtype by autograd: bf16 keeps 8 bits
    rtol = 0 if dtype == torch.float32 else 2 ** -8
    torch.testing.assert_close(grad.double(), ref_grad, rtol=rtol, atol=1e-5)


@pytest.mark.parametrize('one_sweep', [True, False], ids=['one sweep', 'recomputing backward'])
@pytest.mark.parametrize('variant', PAIR_VARIANTS)
def test_engines_equal_reference_implementation_on_a_longer_sequence(tiling, variant, one_sweep):
    # more row-blocks and strips than the brute-force tests can afford
    g = torch.Generator().manual_seed(41)
    z = torch.randn(3, 150, 12, generator=g, dtype=torch.float64) + 0.3  # a cone: cosines spread out
    tiling(None, implementation='reference')
    ref, ref_grad = value_and_grad(z, variant)
    for engine, tile, strip_pairs in (('tiled', 16, 16 * 48), ('tiled', 32, None), ('tiled', 200, None),
                                      ('dense', 150, 2), ('dense', 40, None), ('dense', None, None)):
        tiling(tile, strip_pairs, engine, one_sweep=one_sweep)
        ours, grad = value_and_grad(z, variant)
        assert abs(ours.item() - ref.item()) < 1e-10
        torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize('engine', ENGINES)
@pytest.mark.parametrize('variant', ['angular', 'cross_sequence'])
def test_small_tau_falls_back_to_the_recomputing_backward(tiling, engine, variant):
    # tau = 0.005 spreads the logits over about 140 nats: one sweep against a fixed shift could
    # underflow, so forward keeps the online log-sum-exp and backward recomputes
    tiling(4, None, engine)
    options = dict(OPTIONS, tau=0.005)
    for made in (disperse_torch.Tiles(4, 16), disperse_torch.Dense(16)):
        assert made.pair_totals_and_grad(torch.randn(2, 5, 3), variant, 0.005, 0.1, 0.5) is None
    z = random_states(B=2, T=9, C=6, seed=51, scale=0.5).float()
    ours, grad = value_and_grad(z, variant, options)
    ref, ref_grad = reference_value_and_grad(z, variant, options)
    assert torch.isfinite(grad).all()
    assert abs(ours.item() - ref.item()) < 1e-5 * abs(ref.item())
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('engine', ENGINES)
@pytest.mark.parametrize('variant', PAIR_VARIANTS)
def test_value_without_grad_equals_value_with_grad(tiling, engine, variant):
    tiling(4, None, engine)
    z = random_states(B=2, T=10, C=6, seed=52)
    with torch.no_grad():
        plain = dispersion_loss(z, variant, **OPTIONS)  # totals only
    assert abs(plain.item() - dispersion_loss(z.clone().requires_grad_(), variant, **OPTIONS).item()) < 1e-12


@pytest.mark.parametrize('engine', ENGINES)
@pytest.mark.parametrize('variant', PAIR_VARIANTS)
@pytest.mark.parametrize('case', ['identical', 'zeros', 'T2_identical', 'bf16_identical'])
def test_engines_degenerate_inputs_stay_finite(tiling, engine, variant, case):
    tiling(2, 4, engine)
    g = torch.Generator().manual_seed(7)
    one = torch.randn(6, generator=g)
    z = {'identical': one.expand(2, 7, 6), 'zeros': torch.zeros(2, 7, 6),
         'T2_identical': one.expand(2, 2, 6), 'bf16_identical': one.expand(2, 7, 6).bfloat16()}[case]
    z = z.clone().requires_grad_()
    loss = dispersion_loss(z, variant)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad.float()).all()


def test_automatic_tile_and_implementation():
    assert disperse.IMPLEMENTATION == 'auto' and disperse.TILE is None  # the defaults used in training
    for T in (2, 100, 256, 1024, 4096, 32768):
        tile = disperse_torch.tile_size(T)
        assert 1 <= tile and tile * min(T, disperse_torch.STRIP_PAIRS // tile) <= disperse_torch.STRIP_PAIRS
    assert disperse.choose_implementation(torch.zeros(1, 2, 3)) == 'tiled'  # CPU: the PyTorch tiles
    assert disperse.choose_implementation(torch.zeros(1, 2, 3, dtype=torch.float64)) == 'tiled'


def test_dense_steps_cover_every_row_once_within_the_pair_budget():
    for N, T, pairs in itertools.product((1, 3, 7), (2, 5, 16), (1, 10, 16, 40, 1000)):
        count = torch.zeros(N, T, dtype=torch.int64)
        for s0, s1, r0, r1 in disperse_torch.Dense(pairs)._steps(N, T):
            assert (s1 - s0) * (r1 - r0) * T <= max(pairs, T)  # at least one row of one sequence per step
            count[s0:s1, r0:r1] += 1
        assert torch.equal(count, torch.ones(N, T, dtype=torch.int64)), (N, T, pairs)


@pytest.mark.parametrize('variant', ['angular', 'orthogonalization'])
def test_auto_times_the_engines_once_per_shape_and_keeps_the_fastest(monkeypatch, variant):
    """On a device in MEASURE_ON, 'auto' runs every engine on a random tensor of the shape, keeps
    the fastest, and asks again only for a new shape; the losses agree whichever wins."""
    monkeypatch.setattr(disperse, 'MEASURE_ON', ('cpu',))
    monkeypatch.setattr(disperse, 'AUTO_CHOICES', {})
    monkeypatch.delenv('TRITON_INTERPRET', raising=False)  # no interpreted Triton among the candidates
    fake_ms = {'dense': 1.0, 'tiled': 2.0}
    calls = []

    def fake_measure(z, kind, *args):
        calls.append(tuple(z.shape))
        return {'choice': min(fake_ms, key=fake_ms.get), 'ms': dict(fake_ms)}
    monkeypatch.setattr(disperse, '_measure', fake_measure)
    z = random_states(B=2, T=9, C=6, seed=3).float().requires_grad_()
    assert disperse.choose_implementation(z, variant) == 'dense'
    assert disperse.choose_implementation(z, variant) == 'dense' and len(calls) == 1  # remembered
    fake_ms['tiled'] = 0.5
    assert disperse.choose_implementation(torch.zeros(2, 10, 6, requires_grad=True), variant) == 'tiled'
    assert len(calls) == 2
    # and the real measurement runs every engine and returns a valid choice with its timings
    monkeypatch.undo()
    monkeypatch.setattr(disperse, 'MEASURE_ON', ('cpu',))
    monkeypatch.setattr(disperse, 'AUTO_CHOICES', {})
    monkeypatch.delenv('TRITON_INTERPRET', raising=False)
    ours = dispersion_loss(z, variant, **OPTIONS)
    (choice,) = [v for v in disperse.AUTO_CHOICES.values()]
    assert choice['choice'] in ('dense', 'tiled') and set(choice['ms']) == {'dense', 'tiled'}
    assert all(isinstance(ms, float) and ms > 0 for ms in choice['ms'].values())
    ref, _ = reference_value_and_grad(z, variant)
    assert abs(ours.item() - ref.item()) < 1e-5


def test_dense_compiled_step_equals_the_eager_one(monkeypatch):
    """The elementwise step as torch.compile fuses it on GPUs (here compiled for the CPU) gives the
    eager step's losses and gradients."""
    z = random_states(B=3, T=12, C=8, seed=5).float()
    results = []
    for compiled in (False, True):
        monkeypatch.setattr(disperse, 'IMPLEMENTATION', 'dense')
        monkeypatch.setattr(disperse, 'DENSE_COMPILE', ('cpu',) if compiled else ())
        results.append(value_and_grad(z, 'angular'))
    (eager, eager_grad), (fused, fused_grad) = results
    assert abs(eager.item() - fused.item()) < 1e-6
    torch.testing.assert_close(fused_grad, eager_grad, rtol=1e-4, atol=1e-6)


def test_dense_bf16_products_stay_close_to_float32(monkeypatch):
    z = random_states(B=2, T=32, C=16, seed=9).float() + 0.2
    monkeypatch.setattr(disperse, 'IMPLEMENTATION', 'dense')
    exact, exact_grad = value_and_grad(z, 'angular')
    monkeypatch.setattr(disperse, 'DENSE_MATMUL_DTYPE', torch.bfloat16)
    rough, rough_grad = value_and_grad(z, 'angular')
    assert abs(rough.item() - exact.item()) < 2e-3 * abs(exact.item())
    assert (rough_grad - exact_grad).norm() < 2e-2 * exact_grad.norm()


def test_bad_implementation_names_the_valid_ones(tiling):
    tiling(None, implementation='fast')
    with pytest.raises(ValueError, match="'fast'.*auto, tiled, dense, triton, reference"):
        dispersion_loss(torch.randn(2, 5, 4), 'angular')


def test_forcing_triton_without_a_gpu_says_what_is_missing(monkeypatch):
    monkeypatch.delenv('TRITON_INTERPRET', raising=False)
    monkeypatch.setattr(disperse, 'IMPLEMENTATION', 'triton')
    with pytest.raises(RuntimeError, match='triton.*CUDA device.*TRITON_INTERPRET=1'):
        disperse.dispersion_loss(torch.randn(2, 5, 4), 'angular')
