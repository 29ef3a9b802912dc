"""
The controls: terms a comparison puts beside the dispersion loss to tell its geometry from "any
extra push of the same strength", and the glue that adds the chosen term to a training step.

Two controls are not losses but gradients built from the angular term's own gradient
g_i = d(weight * mean_layers angular)/d hidden[i] (taken on a detached copy), applied through a
surrogate sum(h * control_gradient) whose value means nothing (train.py logs loss = CE for them):
  random_direction  a Gaussian direction per layer with ||g_i||'s norm: matched at the hidden
                    states, but its independent per-token directions cancel in the shared weights.
  rotated_angular   g_i @ Q, Q a Haar-random orthogonal C x C matrix shared by all layers, rescaled by
                    one scalar so that its gradient w.r.t. the model's parameters has the angular
                    term's norm (matched in the parameters; see rotated_angular_term).
Two more act elsewhere: NEFTune's noise on the token embeddings (neftune_noise) and distillation
from a teacher's logits (distillation_loss). The loss-shaped controls (condense, cross_sequence,
norm_penalty) are dispersion variants in disperse.py.

auxiliary_term(hidden, ...) is what train.py calls once per micro-step: the dispersion term or the
control, the part of it that enters the logged loss, and its figures for the log.
"""

import math

import numpy as np
import torch

import disperse

CONTROLS = ("random_direction", "rotated_angular")  # gradient controls: their surrogate's value means nothing


def _angular_gradients(hidden, chosen, weight, generator, angular_options):
    """Per selected layer i: the gradient of weight * mean_layers(angular) w.r.t. hidden[i], taken
    on a detached copy (so the model's graph is not touched), and the angular value itself."""
    grads, values = {}, {}
    for i in chosen:
        with torch.enable_grad():
            probe = hidden[i].detach().requires_grad_()
            angular = disperse.dispersion_loss(probe, 'angular', generator=generator, **angular_options)
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
    chosen = disperse.layer_indices(len(hidden) - 1, layers)
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
    chosen = disperse.layer_indices(len(hidden) - 1, layers)
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
        student = disperse.as_loss_dtype(student_logits).reshape(-1, vocab)  # (N, V)
        teacher = disperse.as_loss_dtype(teacher_logits).reshape(-1, vocab)  # (N, V)
        log_p_student = torch.log_softmax(student / temperature, dim=-1)
        log_p_teacher = torch.log_softmax(teacher / temperature, dim=-1)
        kl_per_token = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=-1)  # (N,)
        return kl_per_token.mean() * temperature ** 2


# ----------------------------------------------------------------------------- the term in a training step

def step_rotation(seed, step, C, device):
    """The rotated_angular control's rotation for one optimizer step: shared by every layer, micro-step
    and rank (the weights sum the gradients of all of them, and only a shared rotation keeps the
    angular gradients' Gram matrix across layers; independent ones per layer reach the weights
    1.1-1.7x more weakly, bench/bench_controls.py). Its generator is keyed by (seed, step), like the
    batches: no RNG stream moves (data order, dropout masks, the auxiliary generator) and a resumed run
    draws the same ones."""
    generator = torch.Generator().manual_seed(int(np.random.default_rng([seed, 3, step]).integers(2**62)))
    return random_rotation(C, generator).to(device)


def auxiliary_term(hidden, variant, layers, weight, options, generator, rotation=None, params=None,
                   match_params=True, with_ratio=False):
    """The auxiliary term of one micro-step on the hidden states: (term, logged, stats). term enters
    the backward pass; logged is the part that enters the logged loss (none of a control's surrogate);
    stats holds detached per-layer figures. variant: a disperse.VARIANTS name or one of CONTROLS;
    options: the loss options (tau, eps, clamp, margin, norm_weight, max_tokens); generator: the
    auxiliary generator (subsampling, random directions); rotation: rotated_angular's matrix;
    params: the model's trainable parameters (the gradient controls need them); match_params:
    rotated_angular rescaled to the angular term's parameter-gradient norm (else rotated only);
    with_ratio: also log ctrl/param_grad_ratio (two extra backward passes)."""
    if variant not in CONTROLS:
        term, stats = disperse.dispersion_term(hidden, variant, layers, weight, generator=generator, **options)
        return term, term.detach().float(), stats
    if variant == "random_direction":
        surrogate, stats, angular_grads = random_direction_term(hidden, layers, weight, generator, **options)
    else:
        surrogate, stats, angular_grads = rotated_angular_term(hidden, layers, weight, rotation,
                                                               params=params if match_params else None,
                                                               generator=generator, **options)
    if with_ratio:
        stats["ctrl/param_grad_ratio"] = param_grad_ratio(surrogate, hidden, angular_grads, params)
    return surrogate, surrogate.new_zeros(()), stats


def param_grad_ratio(surrogate, hidden, angular_grads, params):
    """||d control / d params|| / ||d (weight * angular) / d params|| on the same micro-batch. The
    angular term's parameter gradient is the backward pass of its hidden-state gradients, which the
    control computed anyway; both go through torch.autograd.grad, so .grad (the real step) is untouched.
    Cost: two extra backward passes through the model."""
    layers = list(angular_grads)
    control = param_grad_norm([surrogate], None, params)
    angular = param_grad_norm([hidden[i] for i in layers], [angular_grads[i].to(hidden[i].dtype) for i in layers], params)
    return control / angular
