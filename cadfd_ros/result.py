"""What every solver returns and what one solver hands the next: the contract the pipeline composes.

Images are float32 linear intensity in [0, 1], H x W (mono) or H x W x 3 (RGB). No solver imports
the pipeline; the pipeline imports the solvers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch


@dataclass
class Reconstruction:
    """Solver outputs at the capture's size."""

    depth: np.ndarray  # float32 H x W, metres, NaN where invalid
    all_in_focus: np.ndarray  # float32 H x W or H x W x 3, linear
    confidence: np.ndarray  # float32 H x W in [0, 1]
    method: str
    sampler: str = ""
    steps: int = 0
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    network_seconds: float = 0.0  # of those, the time inside prior network calls (0 for classical)
    residual: float = float("nan")  # RMS of capture - forward(all_in_focus, depth)
    noise_sigma: float = float("nan")
    # where noise_sigma came from: "noise_sigma parameter", "noise model" (one handed in: the node's, from a
    # Bayer frame's raw mosaic) or "capture"
    noise_source: str = ""
    notes: list[str] = field(default_factory=list)  # this frame's solver warnings (an unmet time budget)
    tiles: int = 1  # tiles the frame was solved in (1: whole); a count, so not in ``timings``
    # What the sampler started from: classical (SDEdit from the classical estimate), noise, or warm (the
    # previous frame's estimate, temporal_warm_start); "" for the classical method
    start: str = ""
    # RMS of capture - forward(previous frame's image and depth) / noise sigma: the warm start's data term,
    # compared against the cut threshold; NaN when there was no previous frame to check
    warm_data_term: float = float("nan")
    # The sampler's final state in its own variables, the next frame's warm start (not an output)
    next_start: "SolverStart | None" = field(default=None, repr=False, compare=False)

    @property
    def valid_fraction(self) -> float:
        return float(np.isfinite(self.depth).mean())

    def depth_range(self) -> tuple[float, float]:
        valid = self.depth[np.isfinite(self.depth)]
        return (float(valid.min()), float(valid.max())) if valid.size else (float("nan"), float("nan"))


@dataclass(frozen=True)
class SolverStart:
    """A first estimate in the solver's own variables, for a solver that refines it (the sampler).

    ``padded_image`` lives on the operator's grid (the frame padded by half a PSF, see
    ``LayeredBlur``); ``timings`` is the time already spent producing it, which a time budget counts."""

    layer_coord: torch.Tensor  # (1, H, W) continuous layer coordinate
    padded_image: torch.Tensor  # (1, C, H + 2p, W + 2p) linear all-in-focus image
    noise_sigma: float
    timings: dict[str, float] = field(default_factory=dict)
    evidence_weight: torch.Tensor | None = None  # (H, W): 0 where clipped pixels leave the depth evidence
    # (1, L, h, w) side-of-focus score of the capture (ClassicalSolver.side_evidence); None: none for this bank
    side_evidence: torch.Tensor | None = None


class Solver(Protocol):
    """One capture in, one reconstruction out; ``start`` seeds a solver that refines an estimate."""

    def solve(self, capture: np.ndarray, start: SolverStart | None = None) -> Reconstruction: ...
