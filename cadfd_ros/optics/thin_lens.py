"""Thin-lens defocus and geometric coded-aperture PSFs (METHOD.md, Optics)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cadfd_ros.optics.psf_bank import PSFBank


@dataclass(frozen=True)
class ThinLens:
    """A thin lens focused at ``focus_distance_m``; all lengths in metres."""

    focal_length_m: float
    f_number: float
    focus_distance_m: float
    pixel_pitch_m: float

    def __post_init__(self) -> None:
        for name in ("focal_length_m", "f_number", "focus_distance_m", "pixel_pitch_m"):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"ThinLens.{name} must be a positive number, got {value}")
        if self.focus_distance_m <= self.focal_length_m:
            raise ValueError(
                f"ThinLens.focus_distance_m ({self.focus_distance_m}) must exceed focal_length_m ({self.focal_length_m})"
            )

    @property
    def aperture_m(self) -> float:
        return self.focal_length_m / self.f_number

    @property
    def focal_length_px(self) -> float:
        return self.focal_length_m / self.pixel_pitch_m

    def coc_px(self, distance_m: np.ndarray | float) -> np.ndarray:
        """Signed circle of confusion in pixels: negative in front of focus, positive behind."""
        return circle_of_confusion_px(
            distance_m, self.focal_length_m, self.f_number, self.focus_distance_m, self.pixel_pitch_m
        )

    def metadata(self) -> dict[str, float]:
        return {
            "focal_length_m": self.focal_length_m,
            "f_number": self.f_number,
            "focus_distance_m": self.focus_distance_m,
            "pixel_pitch_m": self.pixel_pitch_m,
        }


# The documented default camera (README, "Default camera"): a 12 mm f/4 lens on a 7.5 um-pitch
# (2x2 binned) VGA sensor, focused at 0.23 m. The 0.5-5 m working range then lies behind focus
# (never crossing the ambiguous in-focus band) and spans blur sizes of 11.9-21 px, less than an
# octave: a blur of 2c is nearly explained by a blur of c on a blurrier image, and keeping the
# range inside one octave removes that alias (measured: README, "Default camera").
DEFAULT_LENS = ThinLens(focal_length_m=0.012, f_number=4.0, focus_distance_m=0.23, pixel_pitch_m=7.5e-6)
DEFAULT_NEAR_M = 0.5
DEFAULT_FAR_M = 5.0
DEFAULT_NUM_LAYERS = 16


def circle_of_confusion_px(
    distance_m: np.ndarray | float,
    focal_length_m: float,
    f_number: float,
    focus_distance_m: float,
    pixel_pitch_m: float,
) -> np.ndarray:
    """c(s) = A (s - s_f)/s * f/(s_f - f) / pitch; affine in 1/s, signed."""
    s = np.asarray(distance_m, dtype=np.float64)
    aperture = focal_length_m / f_number
    return aperture * (s - focus_distance_m) / s * focal_length_m / (focus_distance_m - focal_length_m) / pixel_pitch_m


def render_coded_psf(pattern: np.ndarray, coc_px: float, kernel_size: int, supersample: int = 16) -> np.ndarray:
    """Geometric PSF: the mask scaled to |c| pixels across, area-averaged, sum 1.

    In front of focus (c < 0) the image of the aperture is inverted, so the pattern is
    rotated by 180 degrees; that asymmetry is what separates near from far.
    """
    pattern = np.asarray(pattern, dtype=np.float64)
    if pattern.ndim != 2 or pattern.min() < 0 or pattern.sum() <= 0:
        raise ValueError("aperture pattern must be a 2-D non-negative array with some open area")
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    if coc_px < 0:
        pattern = pattern[::-1, ::-1]
    size = abs(float(coc_px))
    half = kernel_size // 2
    if size * 1.0 < 1.0 / supersample:  # in focus: a point
        psf = np.zeros((kernel_size, kernel_size))
        psf[half, half] = 1.0
        return psf.astype(np.float32)
    if size > kernel_size:
        raise ValueError(f"blur of {size:.1f} px does not fit in a {kernel_size}x{kernel_size} kernel")
    # Sub-pixel sample coordinates relative to the kernel centre, in pixels.
    offsets = (np.arange(kernel_size * supersample) + 0.5) / supersample - half - 0.5
    rows, cols = pattern.shape
    # Map to mask coordinates in [0, 1); samples outside the scaled mask get 0.
    u = offsets / size + 0.5
    inside = (u >= 0) & (u < 1)
    ri = np.clip((u * rows).astype(int), 0, rows - 1)
    ci = np.clip((u * cols).astype(int), 0, cols - 1)
    samples = pattern[np.ix_(ri, ci)] * np.outer(inside, inside)
    psf = samples.reshape(kernel_size, supersample, kernel_size, supersample).mean(axis=(1, 3))
    total = psf.sum()
    if total <= 0:
        psf = np.zeros((kernel_size, kernel_size))
        psf[half, half] = 1.0
        total = 1.0
    return (psf / total).astype(np.float32)


def layer_depths(near_m: float, far_m: float, num_layers: int) -> np.ndarray:
    """Depths evenly spaced in inverse depth, nearest first (equal blur steps)."""
    if not 0 < near_m < far_m:
        raise ValueError(f"need 0 < near < far, got near={near_m}, far={far_m}")
    if num_layers < 2:
        raise ValueError(f"need at least 2 layers, got {num_layers}")
    inverse = np.linspace(1.0 / near_m, 1.0 / far_m, num_layers)
    return (1.0 / inverse).astype(np.float32)


def synthesize_psf_bank(
    pattern: np.ndarray,
    lens: ThinLens = DEFAULT_LENS,
    near_m: float = DEFAULT_NEAR_M,
    far_m: float = DEFAULT_FAR_M,
    num_layers: int = DEFAULT_NUM_LAYERS,
    kernel_size: int | None = None,
    channels: int = 1,
) -> PSFBank:
    """Thin-lens + mask PSF bank; kernel size defaults to the largest blur plus a margin."""
    depths = layer_depths(near_m, far_m, num_layers)
    cocs = lens.coc_px(depths)
    if kernel_size is None:
        kernel_size = int(np.ceil(np.abs(cocs).max())) + 2
        kernel_size += 1 - kernel_size % 2
    psfs = np.stack([render_coded_psf(pattern, c, kernel_size) for c in cocs])
    psfs = np.repeat(psfs[:, None], channels, axis=1)
    return PSFBank(psfs, depths, lens.metadata(), source="synthesized")
