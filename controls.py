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

    Returns (surrogate, stats, angular_grads, {}): stats holds detached
    'ctrl/layer{i}/grad_norm', 'ctrl/layer{i}/angular' and 'ctrl/raw' (mean angular);
    angular_grads maps each selected layer i to g (float32, detached), the gradient
    the angular term itself would have put on hidden[i]; the last value is rotated_angular_term's
    parameter-gradient vectors, none here."""
    chosen = disperse.layer_indices(len(hidden) - 1, layers)
    angular_grads, angular_values = _angular_gradients(hidden, chosen, weight, generator, angular_options)
    directions = {}
    for i, grad in angular_grads.items():
        r = torch.randn(grad.shape, generator=generator, device=generator.device).to(grad.device)  # (B, T, C)
        directions[i] = r * (torch.linalg.vector_norm(grad) / torch.linalg.vector_norm(r))
    return _control_surrogate(hidden, directions), _control_stats(angular_grads, angular_values), angular_grads, {}


def random_rotation(C, generator):
    """A Haar-distributed random orthogonal C x C matrix (float32), drawn from `generator`: the
    QR decomposition of a Gaussian matrix, with the signs of R's diagonal moved into Q (without
    that fix QR's sign convention makes Q not uniformly distributed; Mezzadri 2007)."""
    gaussian = torch.randn(C, C, generator=generator, device=generator.device, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    return (q * torch.sign(torch.diagonal(r))[None, :]).float()  # column j times sign(r_jj)


def param_grad_vector(outputs, grad_outputs, params):
    """d/d params of sum_k <outputs[k], grad_outputs[k]>, flattened into one float32 vector over all of
    params (zeros where a parameter does not reach the outputs), by torch.autograd.grad: the graph is
    kept and no .grad is written (one backward pass)."""
    grads = torch.autograd.grad(outputs, params, grad_outputs=grad_outputs, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).float().reshape(-1) for g, p in zip(grads, params)])


def param_grad_norm(outputs, grad_outputs, params):
    """||param_grad_vector(outputs, grad_outputs, params)||: one backward pass."""
    return torch.linalg.vector_norm(param_grad_vector(outputs, grad_outputs, params))


def rotated_angular_term(hidden, layers, weight, rotation, *, params=None, scale=None, generator=None,
                         **angular_options):
    """Control matched in the parameters: the angular term's own gradient on each selected
    layer's hidden states, with every token's gradient vector rotated by the same orthogonal
    C x C matrix `rotation` (see random_rotation; train.py draws one per run, or one per step),
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
    extra backward passes from the hidden states; logged as 'ctrl/scale'. A `scale` given (a
    tensor held from an earlier step) is used instead, with no extra pass. With neither, s = 1
    (rotation only, matched at the hidden states).

    The returned surrogate sum_layers sum(h * s * (g @ rotation)) has exactly that gradient
    w.r.t. h; its VALUE is meaningless: log the grad norms, never the surrogate.
    Returns (surrogate, stats, angular_grads, vectors): as random_direction_term, and where the
    scale was computed here, vectors = {'angular': J^T g, 'control': s J^T (g @ rotation)} (the two
    terms' parameter gradients, flattened), else {}."""
    chosen = disperse.layer_indices(len(hidden) - 1, layers)
    C = hidden[chosen[0]].size(-1)
    if rotation.shape != (C, C):
        raise ValueError(f"rotation must be a ({C}, {C}) matrix for hidden states of width {C}, "
                         f"got {tuple(rotation.shape)}")
    angular_grads, angular_values = _angular_gradients(hidden, chosen, weight, generator, angular_options)
    rotation = rotation.float()
    rotated = {i: grad @ rotation.to(grad.device) for i, grad in angular_grads.items()}  # (B, T, C)
    stats, vectors = _control_stats(angular_grads, angular_values), {}
    if scale is None and params is not None:
        outputs = [hidden[i] for i in chosen]
        angular = param_grad_vector(outputs, [angular_grads[i].to(hidden[i].dtype) for i in chosen], params)
        control = param_grad_vector(outputs, [rotated[i].to(hidden[i].dtype) for i in chosen], params)
        # both 0 only when the angular gradient is 0
        scale = torch.linalg.vector_norm(angular) / torch.linalg.vector_norm(control).clamp_min(1e-30)
        vectors = {"angular": angular, "control": control * scale}
    if scale is not None:
        rotated = {i: grad * scale for i, grad in rotated.items()}
        stats['ctrl/scale'] = scale.detach()
    return _control_surrogate(hidden, rotated), stats, angular_grads, vectors


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

def run_rotation(seed, C, device):
    """The rotated_angular control's rotation for a whole run (the default): one Haar-random orthogonal
    matrix keyed by the run's seed, shared by every layer, step, micro-step and rank. A fixed rotation
    keeps the control's parameter gradients as coherent from step to step as the angular term's own
    (which the optimizer's momentum sums over about ten steps); a fresh one per step makes them
    uncorrelated, and their push over ten steps is far weaker (step_rotation; docs/dispersion.md).
    Shared across layers, because only a shared rotation keeps the angular gradients' Gram matrix
    across layers (independent ones reach the weights 1.1-1.7x more weakly, bench/bench_controls.py).
    Its generator is its own: no RNG stream moves, and a resumed run draws the same one."""
    generator = torch.Generator().manual_seed(int(np.random.default_rng([seed, 3]).integers(2**62)))
    return random_rotation(C, generator).to(device)


def step_rotation(seed, step, C, device):
    """A fresh rotation for each optimizer step (dispersion_rotation='step'), keyed by (seed, step)
    like the batches, so a resumed run draws the same ones."""
    generator = torch.Generator().manual_seed(int(np.random.default_rng([seed, 3, step]).integers(2**62)))
    return random_rotation(C, generator).to(device)


def auxiliary_term(hidden, variant, layers, weight, options, generator, rotation=None, params=None,
                   match_params=True, scale=None, with_ratio=False, with_vectors=False):
    """The auxiliary term of one micro-step on the hidden states: (term, logged, stats, vectors). term
    enters the backward pass; logged is the part that enters the logged loss (none of a control's
    surrogate); stats holds detached per-layer figures. variant: a disperse.VARIANTS name or one of
    CONTROLS; options: the loss options (tau, eps, clamp, margin, norm_weight, max_tokens); generator:
    the auxiliary generator (subsampling, random directions); rotation: rotated_angular's matrix;
    params: the model's trainable parameters (the gradient controls need them); match_params:
    rotated_angular rescaled to the angular term's parameter-gradient norm (else rotated only), by
    `scale` where one is given (held from an earlier step), else computed here (two extra backward
    passes; stats['ctrl/scale'] holds it). with_ratio: also log ctrl/param_grad_ratio.
    with_vectors: vectors = {'aux': the term's parameter gradient, flattened; and for a control
    'angular': the angular term's on the same micro-batch} (an extra backward pass each, unless the
    rescaling computed them), else None: what the strength meter (Push) sums over steps."""
    vectors = None
    if variant not in CONTROLS:
        term, stats = disperse.dispersion_term(hidden, variant, layers, weight, generator=generator, **options)
        if with_vectors:
            vectors = {"aux": param_grad_vector([term], None, params)}
        return term, term.detach().float(), stats, vectors
    if variant == "random_direction":
        surrogate, stats, angular_grads, found = random_direction_term(hidden, layers, weight, generator, **options)
    else:
        surrogate, stats, angular_grads, found = rotated_angular_term(
            hidden, layers, weight, rotation, params=params if match_params else None,
            scale=scale if match_params else None, generator=generator, **options)
    if with_ratio or with_vectors:
        layers_ = list(angular_grads)
        control = found.get("control")
        if control is None:
            control = param_grad_vector([surrogate], None, params)
        angular = found.get("angular")
        if angular is None:
            angular = param_grad_vector([hidden[i] for i in layers_],
                                        [angular_grads[i].to(hidden[i].dtype) for i in layers_], params)
        if with_ratio:
            stats["ctrl/param_grad_ratio"] = torch.linalg.vector_norm(control) / torch.linalg.vector_norm(angular)
        if with_vectors:
            vectors = {"aux": control, "angular": angular}
    return surrogate, surrogate.new_zeros(()), stats, vectors


class Push:
    """How hard the auxiliary term pushes the weights over a window of optimizer steps, measured on its
    parameter gradients a_t (per step, the mean over micro-steps: what enters the update). For each
    window of W steps: push = ||sum_t a_t|| (what momentum, which sums about ten steps, sees), step_norm
    = mean_t ||a_t||, coherence = push / (W step_norm) (1: every step pushes the same way; about
    1/sqrt(W) for unrelated directions), step_cos = the mean cosine of consecutive a_t. Kept per name:
    'aux' (the term itself) and, for a control, 'angular' (what the angular term would have pushed on
    the same batches), so a control's match is checked over time, not only within a step."""

    def __init__(self, window):
        self.window = window
        self.sums, self.previous, self.norms, self.cosines, self.steps = {}, {}, {}, {}, 0

    def add_step(self, vectors):
        """vectors: {name: a_t} of one optimizer step. Returns the window's figures when it closes, else None."""
        for name, v in vectors.items():
            self.sums[name] = self.sums[name] + v if name in self.sums else v.clone()
            self.norms.setdefault(name, []).append(torch.linalg.vector_norm(v))
            if name in self.previous:
                cos = torch.dot(v, self.previous[name]) / (self.norms[name][-1] * torch.linalg.vector_norm(
                    self.previous[name])).clamp_min(1e-30)
                self.cosines.setdefault(name, []).append(cos)
            self.previous[name] = v
        self.steps += 1
        if self.steps < self.window:
            return None
        out = {}
        for name, total in self.sums.items():
            prefix = "strength/" if name == "aux" else f"strength/{name}_"
            push, step_norm = torch.linalg.vector_norm(total), torch.stack(self.norms[name]).mean()
            out[prefix + "push"] = push
            out[prefix + "step_norm"] = step_norm
            out[prefix + "coherence"] = push / (self.steps * step_norm).clamp_min(1e-30)
            if self.cosines.get(name):
                out[prefix + "step_cos"] = torch.stack(self.cosines[name]).mean()
        if "angular" in self.sums:
            out["strength/push_ratio"] = out["strength/push"] / out["strength/angular_push"].clamp_min(1e-30)
        self.sums, self.previous, self.norms, self.cosines, self.steps = {}, {}, {}, {}, 0
        return out


def describe(cfg, layers):
    """One line on what train.py adds to the cross-entropy (cfg: its settings; layers: the hidden states the
    term acts on), printed at the start of a run."""
    parts = []
    if cfg.dispersion != "none":
        where = f"hidden states {layers[0]}..{layers[-1]}" if layers == list(range(layers[0], layers[-1] + 1)) \
            else f"hidden states {layers}"
        positions = f"{cfg.dispersion_max_tokens} sampled positions" if cfg.dispersion_max_tokens else "all positions"
        what = "control" if cfg.dispersion in CONTROLS else "loss"
        parts.append(f"{cfg.dispersion} {what} x {cfg.dispersion_weight} on {where} ({positions}, tau {cfg.dispersion_tau}, "
                     f"clamp {cfg.dispersion_clamp}" + (f", warmup {cfg.dispersion_warmup_iters} iters" if
                                                      cfg.dispersion_warmup_iters else "") + ")")
    if cfg.neftune_alpha > 0:
        parts.append(f"NEFTune noise alpha {cfg.neftune_alpha}")
    if cfg.distill_from:
        parts.append(f"distillation from {cfg.distill_from} x {cfg.distill_weight} (T {cfg.distill_temperature})")
    return "auxiliary terms: " + ("; ".join(parts) if parts else "none (cross-entropy only)")
