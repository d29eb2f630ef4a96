"""One step of each sampler (``STEPS``): Tweedie estimate, depth update, data step, re-noise. The evidence and
the data steps are called through their modules, so a test can count or record them in one place."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from cadfd_ros.forward.layers import soft_layer_weights
from cadfd_ros.solvers.dps import data_steps, depth_evidence
from cadfd_ros.solvers.dps.state import FrameContext, SamplerState, StageClock, StepOutput
from cadfd_ros.solvers.filters import gaussian_blur
from cadfd_ros.solvers.schedule import PosteriorScheduler

if TYPE_CHECKING:
    from cadfd_ros.prior.model import DiffusionPrior

# The network's noise prediction at (x_t, t): the sampler's counting wrapper around the prior.
Denoiser = Callable[[torch.Tensor, "int | torch.Tensor"], torch.Tensor]


def depth_update_steps(steps: int, every: int, at_most: int | None, at_least: int = 1) -> frozenset[int]:
    """The step indices with a depth update: every ``every`` steps and the last, or, where that is more
    than ``at_most`` or fewer than ``at_least``, that many (at most every step) spread evenly from the first
    step to the last."""
    regular = set(range(0, steps, every)) | {steps - 1}
    if at_most is not None and len(regular) > at_most:
        count = max(1, at_most)
    elif len(regular) < at_least:
        count = min(at_least, steps)
    else:
        return frozenset(regular)
    return frozenset(int(i) for i in np.round(np.linspace(0, steps - 1, count)))


@torch.no_grad()
def diffpir_step(ctx: FrameContext, state: SamplerState, scheduler: PosteriorScheduler, index: int,
                 denoiser: Denoiser, prior: DiffusionPrior, generator: torch.Generator, clock: StageClock
                 ) -> StepOutput:
    """Tweedie estimate, depth update (at ``depth_update_steps``), proximal data step pulled towards the
    estimate (skipped where rho_t > ``proximal_max_rho``), then re-noising. No gradient through the network."""
    p, op, y = ctx.params, ctx.operator, ctx.capture
    t, t_next = scheduler.timesteps[index], scheduler.next_timestep(index)
    x0 = prior.from_model_space(prior.tweedie_from_noise(state.x_t, denoiser(state.x_t, t), t))
    if p.clip_x0:
        x0 = x0.clamp(0, 1)
    coord, evidence, confidence = state.layer_coord, state.evidence, state.confidence
    depth_step = index in depth_update_steps(len(scheduler.timesteps), p.depth_every, p.depth_updates_max,
                                            p.depth_updates_min)
    blurred = None  # (1, L, C, H, W); the prox data step does not need it
    data_term = None
    with clock("depth"):
        if depth_step:
            error, blurred = depth_evidence.image_layer_error(ctx, x0)
            # confidence from the last update's evidence only: it is not needed per step (and the final depth
            # update's replaces it, so the taus' agreement is left to that one)
            coord, evidence, confidence = depth_evidence.depth_update(ctx, blurred, coord, evidence, t_next is None,
                                                                      error, with_tau_agreement=not p.final_depth_update)
            # data term of the Tweedie estimate, from the blurs already computed
            weights = soft_layer_weights(coord, op.num_layers).unsqueeze(2)
            rms = torch.sqrt(torch.mean(((blurred * weights).sum(dim=1) - y) ** 2))
            data_term = float(rms) / ctx.noise_sigma
        elif p.data_step != "prox":
            blurred = op.blur_layers(x0)
    sigma_t = prior.sigma_for_timestep(t) / 2.0  # linear units: the model space is 2x linear
    rho_t = p.proximal_strength / max(sigma_t, 1e-4) ** 2
    with clock("data_step"):
        if p.proximal_max_rho is not None and rho_t > p.proximal_max_rho:
            pass  # x0 would move by ~1/rho_t of the residual
        elif p.data_step == "prox":
            x0 = op.prox_l2(x0, coord, rho_t, ctx.spectra)
        else:
            x0 = data_steps.gradient_data_step(ctx, x0, soft_layer_weights(coord, op.num_layers), blurred, rho_t)
    if (p.midway_exact_step and ctx.exact_step_weight is not None
            and index == data_steps.midway_step(len(scheduler.timesteps))):
        with clock("midway_data_step"):  # its own stage: a time budget prices it as an exact step
            x0 = data_steps.exact_data_step(ctx, x0, coord)[0]
    x_t = state.x_t
    if t_next is not None:
        x_t = scheduler.step_renoise(prior.to_model_space(x0), x_t, t, t_next, p.zeta, generator).prev_sample
    return StepOutput(SamplerState(x_t, x0, coord, evidence, confidence), data_term)


def dps_step(ctx: FrameContext, state: SamplerState, scheduler: PosteriorScheduler, index: int,
             denoiser: Denoiser, prior: DiffusionPrior, generator: torch.Generator, clock: StageClock) -> StepOutput:
    """Chung et al.: ancestral step from the Tweedie estimate minus zeta * grad ||y - A(x0(x_t))||, and a
    step on the depth coordinate from the same loss."""
    p, op, y = ctx.params, ctx.operator, ctx.capture
    t, t_next = scheduler.timesteps[index], scheduler.next_timestep(index)
    x_t = state.x_t.detach().requires_grad_(True)
    u = state.layer_coord.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        eps = denoiser(x_t, t)
        x0 = prior.tweedie_from_noise(x_t, eps, t)
        residual = y - op(prior.from_model_space(x0), soft_layer_weights(u, op.num_layers))
        norm = torch.linalg.vector_norm(residual)
        rms = norm.detach() / math.sqrt(residual.numel())
        grad_x, grad_u = torch.autograd.grad(norm, (x_t, u))
    with torch.no_grad():
        x0 = x0.detach().clamp(-1, 1) if p.clip_x0 else x0.detach()
        x_next = scheduler.step_ancestral(eps.detach(), x0, t, t_next, generator).prev_sample
        x_next = x_next - p.zeta * grad_x
        scale = gaussian_blur(grad_u.abs().unsqueeze(1), 4.0)[:, 0].clamp(min=1e-12)
        coord = (state.layer_coord - (grad_u / scale).clamp(-1, 1) * p.depth_step * 0.5).clamp(0, op.num_layers - 1)
        x0_lin = prior.from_model_space(x0)
    if p.depth_update == "evidence":
        with clock("depth"):
            error, blurred = depth_evidence.image_layer_error(ctx, x0_lin)
            coord, _, _ = depth_evidence.depth_update(ctx, blurred, coord, None, False, error)
    elif p.depth_update == "fixed":
        coord = state.layer_coord
    return StepOutput(SamplerState(x_next.detach(), x0_lin, coord, state.evidence, state.confidence),
                      float(rms) / ctx.noise_sigma)


STEPS = {"diffpir": diffpir_step, "dps": dps_step}
