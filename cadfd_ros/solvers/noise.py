"""Noise level of a capture."""
from __future__ import annotations

import numpy as np

MIN_SIGMA = 1e-3  # about the quantisation noise of an 8-bit capture


def estimate_noise_sigma(capture: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Donoho's MAD estimate on the finest diagonal Haar band, in linear units.

    Defocus removes the finest image detail, so that band of a coded capture is dominated
    by noise; the estimate is floored at quantisation level. ``valid`` (H x W bool) restricts it
    to those pixels (clipped regions have no noise and would pull the median down).
    """
    image = np.asarray(capture, np.float64)
    image = image if image.ndim == 2 else image.mean(axis=2) * np.sqrt(image.shape[2])  # keep per-channel sigma
    h, w = (image.shape[0] // 2) * 2, (image.shape[1] // 2) * 2
    a, b = image[0:h:2, 0:w:2], image[0:h:2, 1:w:2]
    c, d = image[1:h:2, 0:w:2], image[1:h:2, 1:w:2]
    diagonal = (a - b - c + d) / 2.0
    if valid is not None:
        v = np.asarray(valid, bool)
        keep = v[0:h:2, 0:w:2] & v[0:h:2, 1:w:2] & v[1:h:2, 0:w:2] & v[1:h:2, 1:w:2]
        if keep.sum() >= 64:
            diagonal = diagonal[keep]
    return float(max(np.median(np.abs(diagonal)) / 0.6745, MIN_SIGMA))
