"""Simulated target photos for testing the calibrator (no ROS, no torch).

The simulated lens is deliberately *not* the calibrator's model: its PSF is the thin-lens mask
image shifted by a fixed sub-pixel misalignment, blurred by a small Gaussian (diffraction,
pixel crosstalk) and given a wider halo holding a few per cent of the energy (aberrations,
stray light). Captures are rendered on a 2x finer grid and area-binned, with gain, offset, a
small rotation, shift and scale of the target, a textured background and Gaussian noise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cadfd_ros.optics.calibration import warp_target
from cadfd_ros.optics.target import TargetLayout
from cadfd_ros.optics.thin_lens import render_coded_psf


@dataclass(frozen=True)
class SimulatedLens:
    pattern: np.ndarray
    focus_distance_m: float
    blur_scale_px: float  # c(d) = blur_scale (1 - focus/d)
    sigma_px: float = 0.6
    halo_fraction: float = 0.05
    halo_sigma_px: float = 2.0
    misalignment_px: tuple[float, float] = (0.3, -0.2)  # (row, col)

    def coc_px(self, distance_m: float | np.ndarray) -> np.ndarray:
        """Signed blur diameter (px) at ``distance_m``: zero at focus, negative in front of it."""
        return self.blur_scale_px * (1.0 - self.focus_distance_m / np.asarray(distance_m, np.float64))

    def psf(self, distance_m: float, kernel_size: int, upsample: int = 1) -> np.ndarray:
        from scipy.ndimage import gaussian_filter, shift

        c = float(self.coc_px(distance_m)) * upsample
        psf = render_coded_psf(self.pattern, c, kernel_size, supersample=8).astype(np.float64)
        psf = shift(psf, np.asarray(self.misalignment_px) * upsample, order=3, mode="constant")
        psf = np.clip(psf, 0, None)
        core = gaussian_filter(psf, self.sigma_px * upsample, mode="constant")
        halo = gaussian_filter(psf, self.halo_sigma_px * upsample, mode="constant")
        psf = (1 - self.halo_fraction) * core + self.halo_fraction * halo
        return psf / psf.sum()


def capture_homography(layout: TargetLayout, shape: tuple[int, int], fill: float, angle_deg: float,
                       shift_px: tuple[float, float], tilt: float = 0.0) -> np.ndarray:
    """Target -> capture: the target centred, ``fill`` of the capture's width, rotated and shifted."""
    h, w = shape
    scale = fill * w / layout.width
    a = math.radians(angle_deg)
    T1 = np.array([[1, 0, -layout.width / 2], [0, 1, -layout.height / 2], [0, 0, 1]], np.float64)
    R = np.array([[scale * math.cos(a), -scale * math.sin(a), 0], [scale * math.sin(a), scale * math.cos(a), 0],
                  [tilt, 0, 1]], np.float64)
    T2 = np.array([[1, 0, (w - 1) / 2 + shift_px[0]], [0, 1, (h - 1) / 2 + shift_px[1]], [0, 0, 1]], np.float64)
    return T2 @ R @ T1


def simulate_capture(target: np.ndarray, layout: TargetLayout, shape: tuple[int, int], lens: SimulatedLens,
                     distance_m: float, homography: np.ndarray, gain: float = 0.8, offset: float = 0.05,
                     noise: float = 0.003, rng: np.random.Generator | None = None) -> np.ndarray:
    """A linear capture in [0, 1] of ``target`` (linear) at ``distance_m``."""
    from scipy.ndimage import gaussian_filter
    from scipy.signal import fftconvolve

    rng = rng or np.random.default_rng(0)
    up = 2
    h, w = shape
    S = np.array([[up, 0, 0.5 * (up - 1)], [0, up, 0.5 * (up - 1)], [0, 0, 1]], np.float64)
    scene, inside = warp_target(target, S @ homography, (h * up, w * up))
    background = gaussian_filter(rng.random((h * up, w * up)), 6 * up)
    background = 0.15 + 0.5 * (background - background.min()) / (np.ptp(background) + 1e-12)
    scene = np.where(inside, scene, background)
    kernel = int(math.ceil(abs(float(lens.coc_px(distance_m))) * up + 8 * lens.halo_sigma_px * up)) + 2
    kernel += 1 - kernel % 2
    psf = lens.psf(distance_m, kernel, upsample=up)
    blurred = fftconvolve(np.pad(scene, kernel, mode="edge"), psf, mode="same")[kernel:-kernel, kernel:-kernel]
    binned = blurred.reshape(h, up, w, up).mean(axis=(1, 3))
    capture = gain * binned + offset + rng.normal(0, noise, binned.shape)
    return np.clip(capture, 0, 1)


def random_capture(target: np.ndarray, layout: TargetLayout, shape: tuple[int, int], lens: SimulatedLens,
                   distance_m: float, rng: np.random.Generator) -> np.ndarray:
    """A hand-held photo of the target: 78–86% fill, ±3° rotation, ±5 px shift, slight tilt, gain
    0.6–0.9, offset 0.02–0.08 and noise 0.003, drawn from ``rng`` (the simulated round trip's set)."""
    H = capture_homography(layout, shape, rng.uniform(0.78, 0.86), rng.uniform(-3, 3),
                           tuple(rng.uniform(-5, 5, 2)), tilt=rng.uniform(-3e-5, 3e-5))
    return simulate_capture(target, layout, shape, lens, distance_m, H, gain=rng.uniform(0.6, 0.9),
                            offset=rng.uniform(0.02, 0.08), noise=0.003, rng=rng)
