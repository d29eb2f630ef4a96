"""The image's data steps: the exact layered-model solve (prox start, conjugate gradients, the correction shrunk
where it is noise) that runs midway and last, and the gradient step of the ``gradient`` data step."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from cadfd_ros.forward.operators import squared_magnitude
from cadfd_ros.solvers.filters import gaussian_blur

if TYPE_CHECKING:
    from cadfd_ros.solvers.dps.state import FrameContext


def shrink_correction(ctx: FrameContext, x_ref: torch.Tensor, x: torch.Tensor, layer_coord: torch.Tensor,
                      rho: float, gradient_weight: float, window: float, strength: float = 1.0) -> torch.Tensor:
    """x_ref + the data step's correction (x - x_ref) times the local Wiener gain max(0, 1 - strength N / P): P the
    correction's power in a Gaussian window, N what the step's filter H*/(|H|^2 + R) gives white capture noise,
    per layer, blended by the soft weights. Where x_ref is flat the correction is that noise, and goes; where
    it carries detail well above the noise, it stays."""
    op = ctx.operator
    otf2 = squared_magnitude(op.otf)  # (L, C, Hf, Wf)
    gain = (otf2 / (otf2 + op.gradient_pull(rho, gradient_weight, otf2.dtype)) ** 2).mean(dim=(-2, -1))  # (L, C)
    weights = op.padded_weights(layer_coord)  # (1, L, Hp, Wp)
    noise = strength * ctx.noise_sigma**2 * torch.einsum("blhw,lc->bchw", weights, gain.to(weights.dtype))
    correction = x - x_ref
    power = gaussian_blur(correction * correction, window)
    return x_ref + correction * (1 - noise / power.clamp(min=1e-12)).clamp(0, 1)


def exact_data_step(ctx: FrameContext, x0: torch.Tensor, layer_coord: torch.Tensor) -> tuple[torch.Tensor, int]:
    """x0 pulled to the capture on the exact layered model: the per-layer prox as a start, conjugate gradients on
    ||y - A x||^2 + rho ||x - x0||^2 (plus the gradient pull), rho = ``ctx.exact_step_weight`` sigma_y^2, then the
    correction shrunk where it is noise. Returns the image (clamped to [0, 1]) and the CG iterations taken."""
    p, op = ctx.params, ctx.operator
    rho = ctx.exact_step_weight * ctx.noise_sigma**2
    g = p.final_gradient_weight
    x_prox = op.prox_l2(x0, layer_coord, rho, ctx.spectra, g)
    x, iterations = op.least_squares(ctx.capture, layer_coord, x0, rho, x_prox, p.final_cg_iterations,
                                     p.final_cg_tolerance, g, data_weight=ctx.evidence_weight)
    if p.final_shrink_window:
        x = shrink_correction(ctx, x0, x, layer_coord, rho, g, p.final_shrink_window, p.final_shrink_strength)
    return x.clamp(0, 1), iterations


def midway_step(steps: int) -> int | None:
    """The step after which ``SamplerParams.midway_exact_step`` runs: halfway, and never the last."""
    return steps // 2 - 1 if steps >= 2 else None


def gradient_data_step(ctx: FrameContext, x0: torch.Tensor, weights: torch.Tensor, blurred: torch.Tensor, rho: float
                       ) -> torch.Tensor:
    """Gradient steps on 1/2||y - A x||^2 + rho/2 ||x - x0||^2, starting at x0 (||A|| <= 1)."""
    p, op, y = ctx.params, ctx.operator, ctx.capture
    x = x0
    forward = (blurred * weights.unsqueeze(2)).sum(dim=1)
    for step in range(p.data_steps):
        if step > 0:
            forward = op(x, weights)
        gradient = op.A_adjoint(forward - y, weights) + rho * (x - x0)
        x = x - p.data_step_size / (1.0 + rho) * gradient
    return x
