"""The calibration target: broadband random texture plus five large dot fiducials (no ROS, no torch).

Layout (a pure function of the target's size, so ``calibrate`` needs only the PNG):

* five black dots of radius ``R = 6 %`` of the short side, each centred in a white quiet disc of
  radius ``2R`` so that a blurred dot never merges with the texture;
* four dots sit in the corners, the fifth on the top edge one third of the way from the top-left
  dot. The fifth dot makes the layout asymmetric: a target photographed upside down or mirrored
  is still matched to the right dots;
* everything else is a random texture of square cells (about 1/400 of the short side), uniform
  sRGB grey levels: broadband up to the cell frequency.

Blurred dot centroids move only by the PSF's own centroid, the same for every dot, which the PSF
estimate absorbs; so the dots register the target under the strongest blur the bank holds, as
long as the blur is smaller than a dot radius.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cadfd_ros.errors import CadfdError, InputImageError

DEFAULT_TARGET_WIDTH = 1600
DEFAULT_TARGET_HEIGHT = 1200
DOT_RADIUS_FRACTION = 0.06
QUIET_FACTOR = 2.0
MIN_TARGET_SIDE = 200


class CalibrationError(CadfdError):
    """A target or capture cannot be used for calibration; the message names it."""


@dataclass(frozen=True)
class TargetLayout:
    width: int
    height: int
    dot_radius: float
    quiet_radius: float
    cell_px: int
    dots: np.ndarray  # (5, 2) float64, (x, y) pixel centres in the target

    @property
    def corner_dots(self) -> np.ndarray:
        return self.dots[:4]


def target_layout(width: int = DEFAULT_TARGET_WIDTH, height: int = DEFAULT_TARGET_HEIGHT) -> TargetLayout:
    if min(width, height) < MIN_TARGET_SIDE:
        raise CalibrationError(f"target must be at least {MIN_TARGET_SIDE} px on each side, got {width}x{height}")
    short = min(width, height)
    radius = DOT_RADIUS_FRACTION * short
    quiet = QUIET_FACTOR * radius
    m = quiet + 1.0
    x0, x1, y0, y1 = m, width - 1 - m, m, height - 1 - m
    dots = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0 + (x1 - x0) / 3.0, y0]], dtype=np.float64)
    return TargetLayout(width, height, radius, quiet, max(1, int(round(short / 400))), dots)


def make_target(width: int = DEFAULT_TARGET_WIDTH, height: int = DEFAULT_TARGET_HEIGHT, seed: int = 0) -> np.ndarray:
    """The target as 8-bit sRGB grey levels, H x W uint8."""
    layout = target_layout(width, height)
    rng = np.random.default_rng(seed)
    cell = layout.cell_px
    cells = rng.integers(0, 256, size=(-(-height // cell), -(-width // cell)))
    image = np.repeat(np.repeat(cells, cell, axis=0), cell, axis=1)[:height, :width].astype(np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    for x, y in layout.dots:
        r2 = (xx - x) ** 2 + (yy - y) ** 2
        image[r2 <= layout.quiet_radius ** 2] = 255
        image[r2 <= layout.dot_radius ** 2] = 0
    return image


def save_target(image: np.ndarray, path: str | Path) -> Path:
    """The target as a lossless 8-bit PNG (a JPEG's compression would blur the texture the PSFs are read
    against); CalibrationError for another suffix."""
    from PIL import Image

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise CalibrationError(f"{path}: the target is written as a lossless .png file (compression would alter "
                               "the texture the PSFs are measured against)")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def load_target(path: str | Path) -> tuple[np.ndarray, TargetLayout]:
    """A target PNG -> (linear intensity float64 H x W, layout). The PNG is what was printed or
    shown, i.e. sRGB-encoded: it is decoded with the sRGB EOTF."""
    from cadfd_ros.io.images import read_image_values, srgb_to_linear

    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"{path}: target file not found")
    try:  # grey over the file's full range (8 or 16 bit)
        grey = read_image_values(path, str(path), grey=True).astype(np.float64)
    except InputImageError as exc:
        raise CalibrationError(str(exc)) from None
    height, width = grey.shape
    try:
        layout = target_layout(width, height)
    except CalibrationError as exc:
        raise CalibrationError(f"{path}: {exc}") from None
    for x, y in layout.dots:
        r = int(layout.dot_radius * 0.7)
        dot = grey[int(round(y)) - r:int(round(y)) + r, int(round(x)) - r:int(round(x)) + r]
        if dot.size == 0 or dot.mean() > 0.1:
            raise CalibrationError(f"{path}: no fiducial dot at ({x:.0f}, {y:.0f}); not a 'cadfd psf-bank target' "
                                   f"image (or resized after it was written)")
    return srgb_to_linear(grey).astype(np.float64), layout
