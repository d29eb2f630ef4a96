"""Aperture patterns: loading, the open circle, and the depth-discrimination criterion
used to design the project's default coded mask (README, "Default mask")."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cadfd_ros.optics.thin_lens import (
    DEFAULT_FAR_M,
    DEFAULT_LENS,
    DEFAULT_NEAR_M,
    DEFAULT_NUM_LAYERS,
    ThinLens,
    layer_depths,
    render_coded_psf,
)

MASK_CELLS = 13  # Zhou & Nayar's 13x13 binary patterns


def load_pattern(path: str | Path) -> np.ndarray:
    """Aperture transmission in [0, 1] from a PNG (grey levels) or NPY (float) file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: aperture pattern file not found")
    from cadfd_ros.io.images import read_image_values, read_npy

    if path.suffix.lower() == ".npy":
        pattern = read_npy(path, f"aperture pattern {path}").astype(np.float64)
    else:  # grey levels over the file's full range (8 or 16 bit)
        pattern = read_image_values(path, f"aperture pattern {path}", grey=True).astype(np.float64)
    if pattern.ndim != 2 or not np.all(np.isfinite(pattern)):
        raise ValueError(f"{path}: aperture pattern must be a finite 2-D array, got shape {pattern.shape}")
    if pattern.min() < 0 or pattern.max() > 1:
        raise ValueError(f"{path}: aperture transmission must lie in [0, 1]")
    if pattern.sum() <= 0:
        raise ValueError(f"{path}: aperture pattern is fully closed")
    return pattern


def save_pattern(pattern: np.ndarray, path: str | Path) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(np.clip(pattern, 0, 1) * 255).astype(np.uint8)).save(path)
    return path


def circular_pattern(cells: int = 65) -> np.ndarray:
    """An open circular aperture inscribed in the mask square."""
    r = (np.arange(cells) + 0.5) / cells - 0.5
    return (np.add.outer(r**2, r**2) <= 0.25).astype(np.float64)


@dataclass(frozen=True)
class MaskScore:
    """Depth discrimination (higher is better) and deblurring error (lower is better)."""

    min_adjacent_kl: float
    mean_adjacent_kl: float
    min_alias_power: float
    wiener_mse: float
    throughput: float

    def objective(self, alias_weight: float = 0.0) -> float:
        """Depth first; the deblurring term keeps the all-in-focus image recoverable.

        ``alias_weight`` = 1 also rewards scale-alias robustness. The bundled mask was designed
        with 0: the alias-aware design scored better on this criterion but worse on the
        bench's tuning scenes (README, "Default mask")."""
        return float(np.log(self.min_adjacent_kl) + alias_weight * np.log(self.min_alias_power)
                     - 0.5 * np.log(self.wiener_mse))


def score_pattern(
    pattern: np.ndarray,
    lens: ThinLens = DEFAULT_LENS,
    near_m: float = DEFAULT_NEAR_M,
    far_m: float = DEFAULT_FAR_M,
    num_layers: int = DEFAULT_NUM_LAYERS,
    read_noise: float = 0.005,
    fft_size: int = 64,
    supersample: int = 8,
) -> MaskScore:
    """Levin et al. 2007 criterion for telling adjacent depth layers apart.

    Under a Gaussian 1/|w|^2 image prior, a patch blurred by layer k has spectral variance
    s_k(w) = |H_k(w)|^2 S(w) + eta^2. The symmetric KL divergence between adjacent layers
    measures how well they can be told apart; the worst adjacent pair is the score.
    eta grows as the mask closes (read-noise limited: same exposure, less light), so a
    mask pays for every blocked cell.

    Scale aliases: a capture blurred by a large PSF h_j is explained by a smaller PSF h_i
    acting on a blurrier image wherever |H_i| is not negligible, since any image filter can
    absorb the ratio H_j/H_i there. Only where h_i's spectrum is below noise and h_j's is not
    can the two be told apart; ``min_alias_power`` is the smallest such power over pairs whose
    blur sizes differ by at least 25 %. Masks with a box-like outline have nested zeros
    (the zeros of h_c are zeros of h_2c) and score low. The Wiener MSE (Zhou & Nayar 2009) is the expected
    all-in-focus deblurring error averaged over layers.
    """
    throughput = float(pattern.mean()) / (np.pi / 4)  # relative to the inscribed open circle
    eta2 = (read_noise / max(throughput, 1e-6)) ** 2
    depths = layer_depths(near_m, far_m, num_layers)
    cocs = lens.coc_px(depths)
    kernel = int(np.ceil(np.abs(cocs).max())) + 2
    kernel += 1 - kernel % 2
    w = np.fft.fftfreq(fft_size) * 2 * np.pi
    grad_power = 4 * np.sin(w[:, None] / 2) ** 2 + 4 * np.sin(w[None, :] / 2) ** 2
    prior = 1.0 / (grad_power + 1e-3) * 1e-3  # image spectrum ~ 1/|w|^2, unit power at DC scale
    variances, mses = [], []
    for coc in cocs:
        psf = render_coded_psf(pattern, coc, kernel, supersample)
        otf2 = np.abs(np.fft.fft2(psf, s=(fft_size, fft_size))) ** 2
        variances.append(otf2 * prior + eta2)
        mses.append(np.mean(eta2 * prior / (otf2 * prior + eta2)))
    kls = []
    for a, b in zip(variances[:-1], variances[1:]):
        ratio = a / b
        kls.append(float(np.sum(0.5 * (ratio + 1.0 / ratio) - 1.0)))
    aliases = []
    sizes = np.abs(cocs)
    for i in range(len(cocs)):
        for j in range(len(cocs)):
            if sizes[j] >= 1.25 * sizes[i]:
                hidden = eta2 / variances[i]  # ~1 where layer i passes only noise
                aliases.append(float(np.mean((variances[j] - eta2) / eta2 * hidden)))
    min_alias = min(aliases) if aliases else 1.0
    return MaskScore(min(kls), float(np.mean(kls)), min_alias, float(np.mean(mses)), throughput)


def design_pattern(
    cells: int = MASK_CELLS,
    restarts: int = 4,
    passes: int = 3,
    seed: int = 0,
    open_fraction: float = 0.5,
    progress: bool = False,
    alias_weight: float = 0.0,
    lens: ThinLens = DEFAULT_LENS,
) -> tuple[np.ndarray, MaskScore]:
    """Greedy bit-flip search over binary cells x cells masks maximising ``MaskScore.objective``."""
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    best_pattern, best_score = None, None
    for _ in tqdm(range(restarts), desc="mask restarts", disable=not progress):
        pattern = (rng.random((cells, cells)) < open_fraction).astype(np.float64)
        score = score_pattern(pattern, lens)
        for _ in range(passes):
            improved = False
            for index in rng.permutation(cells * cells):
                r, c = divmod(int(index), cells)
                pattern[r, c] = 1 - pattern[r, c]
                if pattern.sum() == 0:
                    pattern[r, c] = 1 - pattern[r, c]
                    continue
                candidate = score_pattern(pattern, lens)
                if candidate.objective(alias_weight) > score.objective(alias_weight):
                    score, improved = candidate, True
                else:
                    pattern[r, c] = 1 - pattern[r, c]
            if not improved:
                break
        if best_score is None or score.objective(alias_weight) > best_score.objective(alias_weight):
            best_pattern, best_score = pattern.copy(), score
    return best_pattern, best_score
