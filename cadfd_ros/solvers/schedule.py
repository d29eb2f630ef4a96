"""The sampler's scheduler, diffusers style: a few named tensors and ``step()`` functions that return
an output object. It owns the noise schedule and the re-noising rules, never the model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


def respaced_timesteps(start_t: int, steps: int) -> list[int]:
    """``steps`` distinct timesteps from start_t down to 0 (fewer only if start_t + 1 < steps)."""
    steps = min(steps, start_t + 1)
    return [int(round(v)) for v in np.linspace(start_t, 0, steps)]


@dataclass(frozen=True)
class SchedulerOutput:
    """x at the next timestep, and the clean estimate it was drawn around (both in model space)."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


class PosteriorScheduler:
    """Respaced timesteps over a prior's ``alphas_cumprod``; ``steps`` timesteps means ``steps``
    network evaluations."""

    def __init__(self, alphas_cumprod: torch.Tensor, timesteps: list[int]) -> None:
        self.alphas_cumprod = alphas_cumprod
        self.timesteps = list(timesteps)

    @classmethod
    def from_start(cls, alphas_cumprod: torch.Tensor, start_t: int, steps: int) -> "PosteriorScheduler":
        """``steps`` timesteps from ``start_t`` down to 0; more steps than timesteps below the start
        start higher, so the count stays exact."""
        timesteps = respaced_timesteps(start_t, steps)
        if len(timesteps) < steps:
            timesteps = respaced_timesteps(min(alphas_cumprod.numel() - 1, steps - 1), steps)
        return cls(alphas_cumprod, timesteps)

    def next_timestep(self, index: int) -> int | None:
        """The timestep after ``timesteps[index]``; None after the last."""
        return self.timesteps[index + 1] if index + 1 < len(self.timesteps) else None

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: int) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
        a = self.alphas_cumprod[t]
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def step_renoise(self, x0: torch.Tensor, x_t: torch.Tensor, t: int, t_next: int | None, zeta: float,
                     generator: torch.Generator) -> SchedulerOutput:
        """DiffPIR: x_{t-1} = sqrt(abar') x0 + sqrt(1-abar')(sqrt(1-zeta) eps_hat + sqrt(zeta) eps), with
        eps_hat the noise that x_t carries around the data-corrected x0."""
        if t_next is None:
            return SchedulerOutput(x0, x0)
        a_t, a_n = self.alphas_cumprod[t], self.alphas_cumprod[t_next]
        eps_hat = (x_t - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        fresh = torch.randn(x_t.shape, generator=generator, device=x_t.device)
        mixed = math.sqrt(1 - zeta) * eps_hat + math.sqrt(zeta) * fresh
        return SchedulerOutput(a_n.sqrt() * x0 + (1 - a_n).sqrt() * mixed, x0)

    def step_ancestral(self, eps: torch.Tensor, x0: torch.Tensor, t: int, t_next: int | None,
                       generator: torch.Generator) -> SchedulerOutput:
        """DDPM-like posterior step (DDIM with eta = 1) from the clean estimate and the noise prediction."""
        if t_next is None:
            return SchedulerOutput(x0, x0)
        a_t, a_n = self.alphas_cumprod[t], self.alphas_cumprod[t_next]
        sigma = ((1 - a_n) / (1 - a_t) * (1 - a_t / a_n)).clamp(min=0).sqrt()
        direction = (1 - a_n - sigma**2).clamp(min=0).sqrt() * eps
        fresh = torch.randn(x0.shape, generator=generator, device=x0.device)
        return SchedulerOutput(a_n.sqrt() * x0 + direction + sigma * fresh, x0)
