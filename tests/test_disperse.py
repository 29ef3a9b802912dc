"""Tests for disperse.py: every loss against an independent brute-force float64
reference (per-pair Python loops), gradients, numerics, RNG hygiene, layer
selection and the control terms."""

import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from controls import (distillation_loss, neftune_noise, param_grad_norm, random_direction_term,  # noqa: E402
                      random_rotation, rotated_angular_term)
from disperse import VARIANTS, dispersion_loss, dispersion_term, layer_indices, mean_pairwise_cos  # noqa: E402

OPTIONS = dict(tau=0.7, eps=1e-2, clamp=0.1, margin=0.5, norm_weight=0.1)


# ----------------------------------------------------------------------------
# brute-force references: one pair at a time, float64, plain formulas

class StraightThroughArccos(torch.autograd.Function):
    """arccos(clamp(c)) forward; backward: arccos' at the clamped value times
    the identity (the clamp itself passes the gradient through)."""

    @staticmethod
    def forward(ctx, c, band):
        clamped = c.clamp(-1.0 + band, 1.0 - band)
        ctx.save_for_backward(clamped)
        return torch.arccos(clamped)

    @staticmethod
    def backward(ctx, grad_out):
        (clamped,) = ctx.saved_tensors
        return grad_out * (-1.0 / torch.sqrt(1.0 - clamped * clamped)), None


def ref_norm(a):
    return torch.sqrt((a * a).sum())


def ref_cos(a, b, eps):
    return (a * b).sum() / ((ref_norm(a) + eps) * (ref_norm(b) + eps))


def ref_angle(a, b, o):
    return StraightThroughArccos.apply(ref_cos(a, b, o['eps']), o['clamp']) / math.pi


def ref_log_mean_exp(terms):
    return torch.log(sum(torch.exp(t) for t in terms) / len(terms))


def ref_angular(z, o):
    B, T, _ = z.shape
    per_seq = [ref_log_mean_exp([-ref_angle(z[b, i], z[b, j], o) / o['tau']
                                 for i in range(T) for j in range(T) if i != j]) for b in range(B)]
    return sum(per_seq) / B


def ref_decorrelation(z, o):
    B, T, C = z.shape
    total = 0.0
    for b in range(B):
        standardised = []
        for i in range(T):
            x = z[b, i]
            mean = x.sum() / C
            std = torch.sqrt(((x - mean) ** 2).sum() / (C - 1))
            standardised.append((x - mean) / (std + 1e-6))
        pairs = [((standardised[i] * standardised[j]).sum() / (C - 1)) ** 2
                 for i in range(T) for j in range(T) if i != j]
        total = total + sum(pairs) / len(pairs)
    return total / B


def ref_l2_repel(z, o):
    B, T, C = z.shape
    per_seq = [ref_log_mean_exp([-((z[b, i] - z[b, j]) ** 2).sum() / o['tau']
                                 for i in range(T) for j in range(T)]) for b in range(B)]
    return sum(per_seq) / B + o['norm_weight'] * (z * z).sum() / (B * T * C)


def ref_orthogonalization(z, o):
    B, T, _ = z.shape
    total = 0.0
    for b in range(B):
        hinges = [torch.clamp_min(o['margin'] - ref_angle(z[b, i], z[b, j], o), 0.0) ** 2
                  for i in range(T) for j in range(T) if i != j]
        total = total + sum(hinges) / len(hinges)
    return total / B


def ref_condense(z, o):
    return -ref_angular(z, o)


def ref_cross_sequence(z, o):
    B, T, _ = z.shape
    per_seq = [ref_log_mean_exp([-ref_angle(z[b, i], z[(b + 1) % B, j], o) / o['tau']
                                 for i in range(T) for j in range(T)]) for b in range(B)]
    return sum(per_seq) / B


def ref_norm_penalty(z, o):
    B, T, _ = z.shape
    return sum((z[b, t] ** 2).sum() for b in range(B) for t in range(T)) / (B * T)


REFERENCES = {
    'angular': ref_angular, 'decorrelation': ref_decorrelation, 'l2_repel': ref_l2_repel,
    'orthogonalization': ref_orthogonalization, 'condense': ref_condense,
    'cross_sequence': ref_cross_sequence, 'norm_penalty': ref_norm_penalty,
}


def test_references_cover_all_variants():
    assert set(REFERENCES) == set(VARIANTS)


# ----------------------------------------------------------------------------
# inputs

def random_states(B=2, T=5, C=6, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, C, generator=g, dtype=torch.float64) * scale


def clamp_active_states(seed=1):
    """Random states plus a nearly parallel and a nearly anti-parallel pair in
    each sequence, so some cosines fall outside [-0.9, 0.9]."""
    z = random_states(B=2, T=6, C=5, seed=seed, scale=0.5)
    g = torch.Generator().manual_seed(seed + 100)
    z[:, 1] = 1.5 * z[:, 0] + 0.01 * torch.randn(2, 5, generator=g, dtype=torch.float64)
    z[:, 3] = -0.8 * z[:, 2] + 0.01 * torch.randn(2, 5, generator=g, dtype=torch.float64)
    return z


def max_abs_offdiag_cos(z):
    z_hat = z / (z.norm(dim=-1, keepdim=True) + 1e-2)
    cos = z_hat @ z_hat.transpose(1, 2)
    mask = ~torch.eye(z.size(1), dtype=torch.bool)
    return cos[:, mask].abs().max().item()


def cross_cos_max(z):
    z_hat = z / (z.norm(dim=-1, keepdim=True) + 1e-2)
    return (z_hat @ z_hat.roll(-1, 0).transpose(1, 2)).abs().max().item()


def test_clamp_active_inputs_really_leave_the_band():
    z = clamp_active_states()
    assert max_abs_offdiag_cos(z) > 0.95
    z_hat = z / (z.norm(dim=-1, keepdim=True) + 1e-2)
    cos = z_hat @ z_hat.transpose(1, 2)
    assert (cos < -0.95).any() and (cos > 0.95).any()


# ----------------------------------------------------------------------------
# value and gradient against the references

@pytest.mark.parametrize('variant', VARIANTS)
@pytest.mark.parametrize('kind', ['random', 'clamp_active'])
def test_matches_brute_force(variant, kind):
    z = random_states(scale=0.5) if kind == 'random' else clamp_active_states()
    z_ours = z.clone().requires_grad_()
    z_ref = z.clone().requires_grad_()

    ours = dispersion_loss(z_ours, variant, **OPTIONS)
    ref = REFERENCES[variant](z_ref, OPTIONS)
    assert ours.dtype == torch.float64
    assert abs(ours.item() - ref.item()) < 1e-6, (ours.item(), ref.item())

    (grad_ours,) = torch.autograd.grad(ours, z_ours)
    (grad_ref,) = torch.autograd.grad(ref, z_ref)
    assert grad_ref.abs().max() > 1e-4  # the comparison is not vacuous
    torch.testing.assert_close(grad_ours, grad_ref, rtol=0, atol=1e-6)


def test_straight_through_gives_boundary_gradient_outside_the_band():
    # pairs outside the band must still be pushed apart (boundary gradient),
    # unlike a hard clamp, which would give them none
    z = torch.zeros(1, 2, 3, dtype=torch.float64)
    z[0, 0] = torch.tensor([1.0, 0.0, 0.0])
    z[0, 1] = torch.tensor([1.0, 0.01, 0.0])  # cos ~ 0.99995, outside [-0.9, 0.9]
    z.requires_grad_()
    loss = dispersion_loss(z, 'angular', clamp=0.1)
    (grad,) = torch.autograd.grad(loss, z)
    assert grad[0, 1, 1] < 0  # moving token 1 along +y opens the angle, so the loss drops that way
    assert grad.abs().max() > 1e-3


@pytest.mark.parametrize('variant', VARIANTS)
def test_gradcheck(variant):
    # The straight-through clamp is not the derivative of the forward value
    # outside the band, so gradcheck uses inputs where it is inactive.
    z = random_states(B=2, T=4, C=8, seed=3, scale=0.7)
    assert max_abs_offdiag_cos(z) < 0.85 and cross_cos_max(z) < 0.85
    z.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: dispersion_loss(x, variant, **OPTIONS), (z,),
                                    eps=1e-6, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------
# properties of the angular loss

def test_angular_scale_invariant_per_token():
    z = random_states(B=2, T=6, C=8, seed=4).float() * 1000.0  # norms >> eps
    scaled = z.clone()
    scaled[:, 2] *= 3.0
    scaled[1, 4] *= 0.5
    base = dispersion_loss(z, 'angular').item()
    assert abs(base - dispersion_loss(scaled, 'angular').item()) < 1e-4
    # sanity: the l2 variant is not scale-invariant, so the check above can fail
    assert abs(dispersion_loss(z / 1000, 'l2_repel').item()
               - dispersion_loss(scaled / 1000, 'l2_repel').item()) > 1e-3


def test_angular_orthogonal_beats_cone_and_descent_disperses():
    orthogonal = torch.eye(8)[None]  # (1, 8, 8), every pair at 90 degrees
    g = torch.Generator().manual_seed(5)
    cone = torch.ones(1, 8, 8) + 0.1 * torch.randn(1, 8, 8, generator=g)
    assert abs(dispersion_loss(orthogonal, 'angular').item() - (-0.5)) < 1e-5
    assert dispersion_loss(orthogonal, 'angular') < dispersion_loss(cone, 'angular') - 0.3

    z = (torch.ones(1, 16, 32) + 0.2 * torch.randn(1, 16, 32, generator=g)).requires_grad_()
    start_cos = mean_pairwise_cos(z).item()
    optimizer = torch.optim.SGD([z], lr=20.0)
    for _ in range(50):
        optimizer.zero_grad()
        dispersion_loss(z, 'angular').backward()
        optimizer.step()
    end_cos = mean_pairwise_cos(z).item()
    assert start_cos > 0.8
    assert end_cos < start_cos - 0.3, (start_cos, end_cos)


def test_condense_is_negative_angular():
    z = random_states(seed=6)
    assert dispersion_loss(z, 'condense').item() == pytest.approx(-dispersion_loss(z, 'angular').item(), abs=1e-12)


# ----------------------------------------------------------------------------
# numerics: no NaN/inf anywhere, fp32 under autocast

def degenerate_inputs():
    g = torch.Generator().manual_seed(7)
    one = torch.randn(6, generator=g)
    return {
        'identical': one.expand(2, 5, 6).clone(),
        'zeros': torch.zeros(2, 5, 6),
        'constant_feature': torch.full((2, 5, 6), 0.1),
        'bf16': torch.randn(2, 5, 6, generator=g).bfloat16(),
        'bf16_identical': one.expand(2, 5, 6).clone().bfloat16(),
        'fp16': torch.randn(2, 5, 6, generator=g).half(),
        'T1': torch.randn(2, 1, 6, generator=g),
        'T2': torch.randn(2, 2, 6, generator=g),
        'T2_identical': one.expand(2, 2, 6).clone(),
    }


@pytest.mark.parametrize('variant', VARIANTS)
@pytest.mark.parametrize('case', list(degenerate_inputs()))
def test_no_nan_or_inf(variant, case):
    z = degenerate_inputs()[case].requires_grad_()
    loss = dispersion_loss(z, variant)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    loss.backward()
    assert z.grad is not None and z.grad.shape == z.shape
    assert torch.isfinite(z.grad.float()).all()


@pytest.mark.parametrize('variant', ['angular', 'orthogonalization', 'decorrelation', 'condense'])
def test_single_token_has_no_pairs(variant):
    z = torch.randn(3, 1, 4, requires_grad=True)
    loss = dispersion_loss(z, variant)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))


@pytest.mark.parametrize('variant', VARIANTS)
def test_float32_under_autocast(variant):
    z = random_states(seed=8).float()
    plain = dispersion_loss(z, variant)
    with torch.autocast(device_type='cpu', dtype=torch.bfloat16):
        inside = dispersion_loss(z, variant)
        from_bf16 = dispersion_loss(z.bfloat16(), variant)
    assert inside.dtype == torch.float32 and from_bf16.dtype == torch.float32
    assert inside.item() == plain.item()  # autocast really is off inside


# ----------------------------------------------------------------------------
# subsampling

def test_subsampling_uses_its_own_generator():
    z = random_states(B=3, T=20, C=8, seed=9).float()
    state = torch.get_rng_state()
    first = dispersion_loss(z, 'angular', max_tokens=6, generator=torch.Generator().manual_seed(11))
    again = dispersion_loss(z, 'angular', max_tokens=6, generator=torch.Generator().manual_seed(11))
    other = dispersion_loss(z, 'angular', max_tokens=6, generator=torch.Generator().manual_seed(12))
    dispersion_loss(z, 'angular', max_tokens=6)  # module default generator
    assert torch.equal(state, torch.get_rng_state())
    assert first.item() == again.item()
    assert first.item() != other.item()

    # same positions for every sequence: randperm(T)[:max_tokens] of that generator
    positions = torch.randperm(20, generator=torch.Generator().manual_seed(11))[:6]
    assert first.item() == pytest.approx(dispersion_loss(z[:, positions], 'angular').item(), abs=1e-7)


def test_no_subsampling_when_short_enough():
    z = random_states(B=2, T=6, C=8, seed=10).float()
    full = dispersion_loss(z, 'angular')
    assert dispersion_loss(z, 'angular', max_tokens=6, generator=torch.Generator()).item() == full.item()
    assert dispersion_loss(z, 'angular', max_tokens=None).item() == full.item()


# ----------------------------------------------------------------------------
# errors

def test_unknown_variant_names_it_and_the_valid_ones():
    with pytest.raises(ValueError, match="'angluar'.*angular.*decorrelation"):
        dispersion_loss(torch.randn(2, 3, 4), 'angluar')


def test_cross_sequence_needs_two_sequences():
    with pytest.raises(ValueError, match='B >= 2'):
        dispersion_loss(torch.randn(1, 5, 4), 'cross_sequence')


def test_bad_shapes_and_options():
    with pytest.raises(ValueError, match='B, T, C'):
        dispersion_loss(torch.randn(5, 4), 'angular')
    with pytest.raises(ValueError, match='clamp'):
        dispersion_loss(torch.randn(2, 5, 4), 'angular', clamp=0.0)


# ----------------------------------------------------------------------------
# mean_pairwise_cos

def test_mean_pairwise_cos_matches_brute_force():
    z = random_states(B=3, T=5, C=4, seed=12)
    per_seq = []
    for b in range(3):
        cosines = [ref_cos(z[b, i], z[b, j], 1e-2).item() for i in range(5) for j in range(5) if i != j]
        per_seq.append(sum(cosines) / len(cosines))
    assert mean_pairwise_cos(z).item() == pytest.approx(sum(per_seq) / 3, abs=1e-10)
    assert not mean_pairwise_cos(z.clone().requires_grad_()).requires_grad


# ----------------------------------------------------------------------------
# layer selection

def test_layer_indices_named():
    assert layer_indices(12, 'all') == list(range(1, 13))
    assert layer_indices(12, 'last') == [12]
    assert layer_indices(12, 'early_half') == [1, 2, 3, 4, 5, 6]
    assert layer_indices(12, 'late_half') == [7, 8, 9, 10, 11, 12]
    assert layer_indices(5, 'early_half') == [1, 2]
    assert layer_indices(5, 'late_half') == [3, 4, 5]
    assert layer_indices(12, 'embedding') == [0]


def test_layer_indices_explicit():
    assert layer_indices(12, [1, 3, 12]) == [1, 3, 12]
    assert layer_indices(12, (0, 2)) == [0, 2]
    assert layer_indices(12, '1,3,12') == [1, 3, 12]
    assert layer_indices(12, ' 4, 2 ') == [4, 2]
    assert layer_indices(12, 7) == [7]


@pytest.mark.parametrize('bad, message', [
    ([13], 'layer index 13 out of range: valid are 0..12'),
    ('1,13', 'layer index 13 out of range'),
    ([-1], 'layer index -1 out of range'),
    ('middle', "bad layer selection 'middle'"),
    ('1,x', "bad layer selection '1,x'"),
    ([1.0], 'bad layer selection'),
    ([True], 'bad layer selection'),
    ([], 'selects no layer'),
    ('', 'selects no layer'),
    ([2, 2], 'repeats'),
])
def test_layer_indices_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        layer_indices(12, bad)


def test_layer_indices_empty_half():
    with pytest.raises(ValueError, match='selects no layer'):
        layer_indices(1, 'early_half')


# ----------------------------------------------------------------------------
# dispersion_term

def hidden_states(n_layer=4, B=2, T=7, C=8, seed=13):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, T, C, generator=g).requires_grad_() for _ in range(n_layer + 1)]


def test_dispersion_term_is_weighted_layer_mean():
    hidden = hidden_states()
    total, stats = dispersion_term(hidden, 'angular', 'all', 0.3, tau=0.5)
    per_layer = [dispersion_loss(h, 'angular', tau=0.5) for h in hidden[1:]]
    expected = 0.3 * sum(p.item() for p in per_layer) / 4
    assert total.item() == pytest.approx(expected, abs=1e-6)

    keys = {'disp/raw', 'disp/weighted'}
    keys |= {f'disp/layer{i}/{k}' for i in range(1, 5) for k in ('loss', 'pair_cos')}
    assert set(stats) == keys
    for value in stats.values():
        assert isinstance(value, torch.Tensor) and not value.requires_grad
        float(value)
    assert stats['disp/raw'].item() == pytest.approx(expected / 0.3, abs=1e-6)
    assert stats['disp/layer2/loss'].item() == pytest.approx(per_layer[1].item(), abs=1e-7)
    assert stats['disp/layer2/pair_cos'].item() == pytest.approx(mean_pairwise_cos(hidden[2]).item(), abs=1e-7)

    total.backward()
    assert hidden[0].grad is None  # embedding output excluded under 'all'
    assert all(h.grad is not None and h.grad.abs().sum() > 0 for h in hidden[1:])


def test_dispersion_term_logs_cos_on_the_same_subsample():
    hidden = hidden_states(T=20)
    _, stats = dispersion_term(hidden, 'angular', [2, 4], 1.0, max_tokens=5,
                               generator=torch.Generator().manual_seed(3))
    replay = torch.Generator().manual_seed(3)
    for i in (2, 4):  # one draw per selected layer, in order
        positions = torch.randperm(20, generator=replay)[:5]
        sub = hidden[i][:, positions]
        assert stats[f'disp/layer{i}/loss'].item() == pytest.approx(dispersion_loss(sub, 'angular').item(), abs=1e-7)
        assert stats[f'disp/layer{i}/pair_cos'].item() == pytest.approx(mean_pairwise_cos(sub).item(), abs=1e-7)


# ----------------------------------------------------------------------------
# random_direction_term

def control_and_angular_gradients(control, layers, weight, *args):
    """hidden_states() after backward of control(hidden, layers, weight, *args, tau=0.5)'s
    surrogate, its stats, and hidden_states() after backward of the angular term it copies."""
    hidden = hidden_states()
    surrogate, stats, _, _ = control(hidden, layers, weight, *args, tau=0.5)
    surrogate.backward()
    reference = hidden_states()
    total, _ = dispersion_term(reference, 'angular', layers, weight, tau=0.5)
    total.backward()
    return hidden, stats, reference


def test_random_direction_matches_angular_gradient_norm_not_direction():
    weight = 0.7
    layers = [1, 3, 4]
    hidden, stats, reference = control_and_angular_gradients(random_direction_term, layers, weight,
                                                             torch.Generator().manual_seed(4))
    assert hidden[0].grad is None and hidden[2].grad is None
    for i in layers:
        ours, target = hidden[i].grad, reference[i].grad
        assert ours.norm().item() == pytest.approx(target.norm().item(), rel=1e-5)
        assert stats[f'ctrl/layer{i}/grad_norm'].item() == pytest.approx(target.norm().item(), rel=1e-5)
        cosine = (ours * target).sum() / (ours.norm() * target.norm())
        assert abs(cosine.item()) < 0.5
    assert not any(v.requires_grad for v in stats.values())


def test_random_direction_leaves_global_rng_alone():
    hidden = hidden_states()
    state = torch.get_rng_state()
    random_direction_term(hidden, 'all', 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(state, torch.get_rng_state())


def test_random_direction_returns_the_angular_gradients():
    hidden = hidden_states()
    _, _, angular_grads, _ = random_direction_term(hidden, [2, 4], 0.7, torch.Generator().manual_seed(4), tau=0.5)
    reference = hidden_states()
    total, _ = dispersion_term(reference, 'angular', [2, 4], 0.7, tau=0.5)
    total.backward()
    assert sorted(angular_grads) == [2, 4]
    for i in (2, 4):
        assert torch.allclose(angular_grads[i], reference[i].grad.float(), atol=1e-7, rtol=1e-5)


# ----------------------------------------------------------------------------
# rotated_angular_term

def test_random_rotation_is_the_sign_fixed_qr_of_a_gaussian():
    q = random_rotation(6, torch.Generator().manual_seed(5))
    gaussian = torch.randn(6, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert q.dtype == torch.float32 and q.shape == (6, 6)
    assert torch.allclose(q.double().T @ q.double(), torch.eye(6, dtype=torch.float64), atol=1e-6)
    r = q.double().T @ gaussian  # the R of gaussian = Q R: upper triangular with a positive diagonal
    assert torch.allclose(torch.tril(r, -1), torch.zeros(6, 6, dtype=torch.float64), atol=1e-5)
    assert (torch.diagonal(r) > 0).all()
    assert torch.equal(q, random_rotation(6, torch.Generator().manual_seed(5)))


def test_random_rotation_is_uniform():
    # Haar: every entry has mean 0 and variance 1/C. Without the sign fix, QR's convention makes
    # q[0, 0] = -|g_00| / |g_0| < 0 in every draw.
    g = torch.Generator().manual_seed(6)
    draws = torch.stack([random_rotation(3, g) for _ in range(2000)]).double()  # (2000, 3, 3)
    se = (1 / 3) ** 0.5 / 2000 ** 0.5
    assert draws.mean(dim=0).abs().max() < 4 * se
    assert torch.allclose(draws.pow(2).mean(dim=0), torch.full((3, 3), 1 / 3, dtype=torch.float64), atol=0.03)


def test_rotated_angular_gradient_is_the_rotated_angular_gradient():
    weight, layers = 0.7, [1, 3, 4]
    rotation = random_rotation(8, torch.Generator().manual_seed(7))
    hidden, stats, reference = control_and_angular_gradients(rotated_angular_term, layers, weight, rotation)
    _, _, angular_grads, _ = rotated_angular_term(hidden_states(), layers, weight, rotation, tau=0.5)
    assert hidden[0].grad is None and hidden[2].grad is None
    for i in layers:
        ours, target = hidden[i].grad, reference[i].grad
        assert torch.allclose(ours, target @ rotation, atol=1e-7, rtol=1e-5)
        # what the rotation keeps: each token's gradient norm and the token x token Gram matrix
        assert torch.allclose(ours.norm(dim=-1), target.norm(dim=-1), rtol=1e-5, atol=1e-9)
        assert torch.allclose(ours @ ours.transpose(1, 2), target @ target.transpose(1, 2), rtol=1e-4, atol=1e-9)
        assert abs(((ours * target).sum() / (ours.norm() * target.norm())).item()) < 0.5  # what it changes
        assert stats[f'ctrl/layer{i}/grad_norm'].item() == pytest.approx(target.norm().item(), rel=1e-5)
        assert torch.allclose(angular_grads[i], target.float(), atol=1e-7, rtol=1e-5)
    assert 'ctrl/scale' not in stats
    with pytest.raises(ValueError, match=r"rotation must be a \(8, 8\) matrix"):
        rotated_angular_term(hidden, layers, weight, torch.eye(7))


def test_rotation_keeps_the_weight_gradient_of_a_linear_map_into_the_hidden_state():
    # h = x W^T + b: grad_W = g^T x and grad_b = sum_t g_t, and (g R)^T x = R^T g^T x has the same norm
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 7, 5, generator=g, dtype=torch.float64)
    norms = {}
    for arm in ('angular', 'rotated'):
        linear = torch.nn.Linear(5, 8).double()
        torch.nn.init.normal_(linear.weight, generator=torch.Generator().manual_seed(9))
        torch.nn.init.normal_(linear.bias, generator=torch.Generator().manual_seed(10))
        hidden = [x, linear(x)]
        if arm == 'angular':
            term, _ = dispersion_term(hidden, 'angular', [1], 0.5)
        else:
            term, _, _, _ = rotated_angular_term(hidden, [1], 0.5, random_rotation(8, torch.Generator().manual_seed(10)))
        term.backward()
        norms[arm] = (linear.weight.grad.norm().item(), linear.bias.grad.norm().item())
    assert norms['rotated'] == pytest.approx(norms['angular'], rel=1e-5)


def tiny_network(seed=11, B=2, T=6, C=8):
    """Hidden states of a two-layer residual network with nonlinearities, and its parameters."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    w1, w2 = (torch.randn(C, C, generator=g, dtype=torch.float64).requires_grad_() for _ in range(2))
    h1 = x + torch.tanh(x @ w1)
    h2 = h1 + torch.tanh(h1 @ w2)
    return [x, h1, h2], [w1, w2]


def test_rotated_angular_with_params_matches_the_angular_parameter_gradient_norm():
    rotation = random_rotation(8, torch.Generator().manual_seed(12))
    hidden, params = tiny_network()
    surrogate, stats, _, _ = rotated_angular_term(hidden, 'all', 0.3, rotation, params=params)
    surrogate.backward()
    control = torch.cat([p.grad.flatten() for p in params]).norm().item()

    hidden, params = tiny_network()
    total, _ = dispersion_term(hidden, 'angular', 'all', 0.3)
    total.backward()
    angular = torch.cat([p.grad.flatten() for p in params]).norm().item()

    hidden, params = tiny_network()
    plain, _, _, _ = rotated_angular_term(hidden, 'all', 0.3, rotation)
    plain.backward()
    rotated_only = torch.cat([p.grad.flatten() for p in params]).norm().item()

    assert control == pytest.approx(angular, rel=1e-5)
    assert stats['ctrl/scale'].item() == pytest.approx(angular / rotated_only, rel=1e-5)
    assert abs(stats['ctrl/scale'].item() - 1) > 0.05  # through tanh the rotation alone does not keep the norm


def test_param_grad_norm_leaves_grads_and_graph_alone():
    hidden, params = tiny_network()
    seed_grad = torch.ones_like(hidden[2])
    norm = param_grad_norm([hidden[2]], [seed_grad], params)
    assert all(p.grad is None for p in params)
    hidden[2].sum().backward()  # the graph is still there
    assert norm.item() == pytest.approx(torch.cat([p.grad.flatten() for p in params]).norm().item(), rel=1e-6)


# ----------------------------------------------------------------------------
# NEFTune noise and distillation

def test_neftune_noise_range_and_rng():
    tok_emb = torch.zeros(2, 16, 32, dtype=torch.bfloat16)
    state = torch.get_rng_state()
    noise = neftune_noise(tok_emb.shape, 5.0, generator=torch.Generator().manual_seed(1), dtype=tok_emb.dtype)
    assert torch.equal(state, torch.get_rng_state())
    assert noise.shape == tok_emb.shape and noise.dtype == torch.bfloat16
    bound = 5.0 / math.sqrt(16 * 32)
    assert noise.float().abs().max() <= bound * (1 + 1e-2)
    assert noise.float().abs().max() > 0.9 * bound
    assert noise.float().mean().abs() < 0.1 * bound
    again = neftune_noise(tok_emb.shape, 5.0, generator=torch.Generator().manual_seed(1), dtype=tok_emb.dtype)
    assert torch.equal(noise, again)


def test_distillation_zero_for_equal_logits():
    logits = torch.randn(2, 3, 11)
    assert abs(distillation_loss(logits, logits.clone(), 2.0).item()) < 1e-6


def test_distillation_matches_brute_force_kl():
    g = torch.Generator().manual_seed(14)
    student = torch.randn(2, 3, 7, generator=g, dtype=torch.float64)
    teacher = torch.randn(2, 3, 7, generator=g, dtype=torch.float64) * 2
    temperature = 1.5

    def softmax(row):
        exps = [math.exp(v / temperature) for v in row]
        return [e / sum(exps) for e in exps]

    kls = []
    for s_row, t_row in zip(student.reshape(-1, 7).tolist(), teacher.reshape(-1, 7).tolist()):
        p_s, p_t = softmax(s_row), softmax(t_row)
        kls.append(sum(t * math.log(t / s) for t, s in zip(p_t, p_s)))
    expected = sum(kls) / len(kls) * temperature ** 2

    assert distillation_loss(student, teacher, temperature).item() == pytest.approx(expected, abs=1e-10)
    assert distillation_loss(student.float(), teacher.float(), temperature).item() == pytest.approx(expected, abs=1e-5)
    with torch.autocast(device_type='cpu', dtype=torch.bfloat16):
        assert distillation_loss(student.bfloat16(), teacher.bfloat16(), temperature).dtype == torch.float32
