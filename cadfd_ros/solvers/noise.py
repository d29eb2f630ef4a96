"""Noise level of a capture."""
from __future__ import annotations

import numpy as np

MIN_SIGMA = 1e-3  # about the quantisation noise of an 8-bit capture


def _lattice_step(magnitudes: np.ndarray) -> float | None:
    """The spacing of the values' lattice where they lie on one (a quantised capture's Haar band: multiples of
    half a code value, or finer for a channel mean), else None."""
    nonzero = magnitudes[magnitudes > 1e-6]  # below: float rounding of zero (a 16-bit code value is 1.5e-5)
    if nonzero.size < 64:
        return None
    step = float(nonzero.min())
    k = nonzero / step
    on_lattice = np.mean(np.abs(k - np.round(k)) < 0.02) >= 0.99
    return step if on_lattice and len(np.unique(np.round(k))) <= max(64, 0.05 * nonzero.size) else None


def mad_sigma(values: np.ndarray) -> float:
    """Gaussian sigma from the median absolute value (Donoho's MAD, /0.6745). On quantised values (a lattice)
    the median is interpolated within its bin, as for grouped data: the plain median jumps between lattice
    values, which put an 8-bit capture with 1 code value of noise at 0.74 of it and 1.3 code values at 1.11
    (Gaussian noise, 200x200 px); interpolated, both are within 3% from 0.5 code values up."""
    magnitudes = np.abs(np.asarray(values, np.float64).ravel())
    step = _lattice_step(magnitudes)
    if step is None:
        return float(np.median(magnitudes) / 0.6745)
    counts = np.bincount(np.round(magnitudes / step).astype(np.int64))
    cumulative = np.cumsum(counts)
    half = magnitudes.size / 2.0
    j = int(np.searchsorted(cumulative, half))
    below = cumulative[j - 1] if j > 0 else 0
    lower, width = (0.0, step / 2) if j == 0 else ((j - 0.5) * step, step)  # bin 0 holds [0, step/2)
    return float((lower + (half - below) / counts[j] * width) / 0.6745)


def _haar_diagonal(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """The finest diagonal Haar band (noise std preserved) and the 2x2 block means beside it."""
    h, w = (image.shape[0] // 2) * 2, (image.shape[1] // 2) * 2
    a, b = image[0:h:2, 0:w:2], image[0:h:2, 1:w:2]
    c, d = image[1:h:2, 0:w:2], image[1:h:2, 1:w:2]
    return (a - b - c + d) / 2.0, (a + b + c + d) / 4.0, (h, w)


def _valid_blocks(valid: np.ndarray, h: int, w: int) -> np.ndarray:
    """The 2x2 blocks of the Haar band whose four pixels are all valid."""
    v = np.asarray(valid, bool)
    return v[0:h:2, 0:w:2] & v[0:h:2, 1:w:2] & v[1:h:2, 0:w:2] & v[1:h:2, 1:w:2]


def estimate_noise_sigma(capture: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Donoho's MAD estimate on the finest diagonal Haar band, in linear units.

    Defocus removes the finest image detail, so that band of a coded capture is dominated
    by noise; the estimate is floored at quantisation level. ``valid`` (H x W bool) restricts it
    to those pixels (clipped regions have no noise and would pull the median down).
    """
    image = np.asarray(capture, np.float64)
    image = image if image.ndim == 2 else image.mean(axis=2) * np.sqrt(image.shape[2])  # keep per-channel sigma
    diagonal, _, (h, w) = _haar_diagonal(image)
    if valid is not None:
        keep = _valid_blocks(valid, h, w)
        if keep.sum() >= 64:
            diagonal = diagonal[keep]
    return float(max(mad_sigma(diagonal), MIN_SIGMA))


NOISE_MODELS = ("gaussian", "poisson_gaussian")
NoiseModel = tuple[float, float]  # (a, b) of sigma^2(x) = a*x + b, linear units


def estimate_mosaic_noise_model(mosaic: np.ndarray) -> NoiseModel:
    """The Poisson-Gaussian noise of a raw Bayer mosaic (H x W, linear [0, 1]), from its four colour planes.

    Demosaicing interpolates two thirds of the colour samples, which averages noise away and correlates it
    over neighbouring pixels: measured on the demosaiced RGB frame, the finest Haar band reads about a third
    of the sensor's noise (a simulated capture with sigma 0.007: 0.0023), and the depth evidence then takes
    fine texture for noise-free detail. Each plane (every second pixel of every second row) holds only raw
    samples, so the estimate runs on those, as one image with four channels."""
    raw = np.asarray(mosaic, np.float64)
    if raw.ndim != 2 or raw.shape[0] < 4 or raw.shape[1] < 4:
        raise ValueError(f"mosaic must be an H x W array of at least 4 x 4, got shape {raw.shape}")
    h, w = (raw.shape[0] // 2) * 2, (raw.shape[1] // 2) * 2
    planes = np.stack([raw[dy:h:2, dx:w:2] for dy in (0, 1) for dx in (0, 1)], axis=2)
    return estimate_noise_model(planes)


def rescale_noise_model(model: NoiseModel, black: float, white: float) -> NoiseModel:
    """The model after x' = (x - black) / (white - black): sigma'^2 = (a (black + (white - black) x') + b) /
    (white - black)^2."""
    a, b = model
    span = white - black
    return a / span, (a * black + b) / (span * span)


def estimate_noise_model(capture: np.ndarray, valid: np.ndarray | None = None, bins: int = 12
                         ) -> tuple[float, float]:
    """Poisson-Gaussian noise sigma^2(x) = a*x + b fitted to the capture, in linear units.

    The finest diagonal Haar band carries the noise (defocus removed the detail); its variance in
    bins of local mean intensity (robust: MAD, so leftover texture and edges barely count) is fitted
    by a line, weighted by the samples per bin. a >= 0; b is floored at quantisation level."""
    from scipy.ndimage import gaussian_filter

    image = np.asarray(capture, np.float64)
    intensity = image if image.ndim == 2 else image.mean(axis=2)
    scale = 1.0 if image.ndim == 2 else np.sqrt(image.shape[2])  # per-channel noise, as estimate_noise_sigma
    diagonal, mean, (h, w) = _haar_diagonal(intensity)
    diagonal = diagonal * scale
    mean = gaussian_filter(mean, 1.0)
    keep = np.ones(diagonal.shape, bool) if valid is None else _valid_blocks(valid, h, w)
    r, m = diagonal[keep], mean[keep]
    if r.size < 64 * 4:
        sigma = estimate_noise_sigma(capture, valid)
        return 0.0, sigma * sigma
    edges = np.unique(np.quantile(m, np.linspace(0, 1, bins + 1)))
    index = np.clip(np.searchsorted(edges, m, side="right") - 1, 0, len(edges) - 2)
    xs, vs, ns = [], [], []
    for k in range(len(edges) - 1):
        sel = index == k
        if sel.sum() < 32:
            continue
        xs.append(m[sel].mean())
        vs.append(mad_sigma(r[sel]) ** 2)
        ns.append(sel.sum())
    xs, vs, ns = np.array(xs), np.array(vs), np.array(ns, float)
    floor = MIN_SIGMA * MIN_SIGMA
    if len(xs) < 3 or np.ptp(xs) < 1e-3:
        return 0.0, max(float(np.average(vs, weights=ns)) if len(vs) else floor, floor)
    # Each bin's variance is a minimum over what texture adds, so fit robustly: drop bins far above
    # the first line (texture-dominated), then refit.
    for _ in range(2):
        A = np.stack([xs, np.ones_like(xs)], axis=1)
        coef, *_ = np.linalg.lstsq(A * np.sqrt(ns)[:, None], vs * np.sqrt(ns), rcond=None)
        a, b = float(max(coef[0], 0.0)), float(coef[1])
        if coef[0] < 0:  # no signal dependence: a constant level
            a, b = 0.0, float(np.average(vs, weights=ns))
        if b < floor:  # a negative intercept: the line through the floor instead (clamping b alone would
            b = floor  # keep the steeper slope and put every level above the data)
            a = float(max(np.sum(ns * (vs - b) * xs) / np.sum(ns * xs * xs), 0.0))
        fit = a * xs + b
        good = vs <= 2.0 * np.maximum(fit, floor)
        if good.all() or good.sum() < 3:
            break
        xs, vs, ns = xs[good], vs[good], ns[good]
    return a, max(b, floor)
