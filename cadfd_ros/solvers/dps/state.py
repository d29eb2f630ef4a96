"""What one frame's sampling reads and writes, kept small and explicit as a diffusers scheduler's: the frozen
``FrameContext``, the ``SamplerState`` a step changes, what a step and the loop return, and the stage clock."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from cadfd_ros.forward.operators import CaptureSpectra, LayeredBlur
from cadfd_ros.solvers.dps.params import SamplerParams

if TYPE_CHECKING:
    from cadfd_ros.solvers.dps.depth_evidence import MarginalEvidence


@dataclass(frozen=True)
class FrameContext:
    """Everything about one frame that no step changes."""

    capture: torch.Tensor  # y (1, C, H, W) linear
    operator: LayeredBlur
    spectra: CaptureSpectra
    evidence: tuple[MarginalEvidence, ...]  # one per candidate tau (DiffusionPosteriorSampler.evidence_prior_stds)
    guide: torch.Tensor  # luminance of y, steers the edge-aware depth regulariser
    noise_sigma: float
    params: SamplerParams
    layer_depths: torch.Tensor  # (L,) metres, nearest first
    evidence_weight: torch.Tensor | None = None  # (1, 1, H, W): 0 where clipped pixels leave the evidence
    side_evidence: torch.Tensor | None = None  # (1, L, h, w): the start's side-of-focus score, if any
    # the exact data step's rho / sigma_y^2 for this bank (DiffusionPosteriorSampler.final_proximal_weight)
    exact_step_weight: float | None = None

    @property
    def evidence_sigma(self) -> float:
        """The sigma the depth evidence weighs the capture's error at (SamplerParams.evidence_noise_floor)."""
        return self.params.evidence_sigma(self.noise_sigma)


@dataclass
class SamplerState:
    """What a step changes: x_t (model space), the clean estimate x0 (linear, padded grid), depth."""

    x_t: torch.Tensor
    x0: torch.Tensor
    layer_coord: torch.Tensor  # (1, H, W)
    evidence: torch.Tensor | None = None  # running cost volume (1, L, h, w)
    confidence: torch.Tensor | None = None  # (1, H, W), from the latest update that computed it


@dataclass(frozen=True)
class StepOutput:
    state: SamplerState
    data_term: float | None = None  # RMS residual / sigma of the Tweedie estimate, where measured


@dataclass(frozen=True)
class SampleOutput:
    x0: torch.Tensor  # (1, C, Hp, Wp) linear
    layer_coord: torch.Tensor  # (1, H, W)
    confidence: torch.Tensor  # (1, H, W)
    trace: SamplerTrace


@dataclass
class SamplerTrace:
    """Sampling diagnostics: the data term must decrease, the network count must equal steps."""

    timesteps: list[int] = field(default_factory=list)  # one per network evaluation
    # RMS residual / sigma_y of the Tweedie estimate, where measured: at every depth update
    # (diffpir, whose blurs it reuses, so it costs nothing extra) or every step (dps)
    data_timesteps: list[int] = field(default_factory=list)
    data_term: list[float] = field(default_factory=list)
    network_evaluations: int = 0
    network_seconds: float = 0.0  # time inside the prior's network calls
    final_cg_iterations: int = 0  # iterations the final exact data step took
    # seconds outside the network, per part of the sampler: depth (evidence + regulariser), data_step
    # (per-step prox), final_data_step (prox + CG); what the overhead total / network_s is made of
    stage_seconds: dict[str, float] = field(default_factory=dict)


class StageClock:
    """Accumulates wall time per named stage (``with clock("depth"): ...``); CUDA is synchronised at
    the edges so asynchronous kernels are charged to the stage that launched them."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.seconds: dict[str, float] = {}
        self._name = ""

    def __call__(self, name: str) -> "StageClock":
        self._name = name
        return self

    def __enter__(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self._began = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds[self._name] = self.seconds.get(self._name, 0.0) + time.perf_counter() - self._began
