"""Evaluate a prior: one-network-call Gaussian denoising vs BM3D and total variation, and sample grids.

Denoising protocol (``cadfd prior eval``): every image is linearised (sRGB EOTF), center-cropped
and area-downscaled to ``size`` px, and gets i.i.d. Gaussian noise of std sigma in linear [0, 1]
units (not clipped, so the noise model is exact). The prior denoises with ONE network call: the
noisy image in model space has noise std 2*sigma, so with t = timestep_for_sigma(2*sigma),
x_t = sqrt(abar_t) * y_model and the Tweedie estimate is the denoised image. The classical
comparison is scikit-image's ``denoise_tv_chambolle`` with its weight picked per sigma from a
grid to maximise the mean PSNR on the same images (an oracle choice, i.e. optimistic for TV).
The reference is BM3D (the ``bm3d`` package: ``bm3d_rgb`` for colour, ``bm3d`` for mono) given
the true sigma, as it is usually reported; a prior that loses to it is weaker than a classical
denoiser.
Mono images stay mono (1 channel, mono noise). All PSNRs are on [0, 1]-clipped outputs.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from cadfd_ros.errors import PriorError
from cadfd_ros.prior import data as pdata
from cadfd_ros.prior.model import DiffusionPrior

# TV weight grid, in units of sigma (skimage's weight scales with the noise level).
TV_WEIGHT_FACTORS = (0.3, 0.5, 0.8, 1.2, 1.8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB for images in [0, 1] (data range 1)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def load_eval_images(folder: str | os.PathLike, size: int | None = 256, linearize: bool = True) -> list[tuple[str, np.ndarray]]:
    """(name, image) pairs: float32 (H, W) or (H, W, 3) in [0, 1], center-cropped/downscaled to size."""
    out = []
    for p in pdata.list_images([folder]):
        img = pdata.load_image(p, linearize=linearize)
        if size:
            img = pdata.center_crop_resize(img, size)
        out.append((p.stem, img))
    return out


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
    return t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t[0]
    return (t[0] if t.shape[0] == 1 else t.permute(1, 2, 0)).detach().cpu().numpy()


@torch.no_grad()
def prior_denoise(prior: DiffusionPrior, noisy_linear: torch.Tensor, sigma_linear: float) -> tuple[torch.Tensor, int]:
    """One-call Tweedie denoising of (B, C, H, W) linear images with noise std ``sigma_linear``.
    Returns the denoised linear image (not clipped) and the timestep used."""
    y = prior.to_model_space(noisy_linear.to(prior.device))
    t = prior.timestep_for_sigma(2.0 * sigma_linear)  # affine map doubles the noise std
    a = prior.alphas_cumprod[t]
    x0 = prior.tweedie(a.sqrt() * y, t)
    return prior.from_model_space(x0), t


def bm3d_denoise(noisy: np.ndarray, sigma: float) -> np.ndarray:
    """BM3D with the true noise std: ``bm3d_rgb`` for (H, W, 3), ``bm3d`` for (H, W)."""
    import bm3d as bm3d_lib

    noisy = np.asarray(noisy, np.float64)
    if noisy.ndim == 3 and noisy.shape[2] == 3:
        return np.asarray(bm3d_lib.bm3d_rgb(noisy, sigma), np.float32)
    return np.asarray(bm3d_lib.bm3d(noisy, sigma), np.float32)


def evaluate_denoising(prior: DiffusionPrior, images: str | os.PathLike | Sequence[tuple[str, np.ndarray]],
                       sigmas: Sequence[float], size: int | None = 256, seed: int = 0, linearize: bool = True,
                       tv: bool = True, bm3d: bool = True) -> dict[str, Any]:
    """Mean PSNR of noisy / BM3D / TV / prior-denoised images per sigma.

    Returns {"summary": {"0.1": {"noisy_psnr", "prior_psnr", ["bm3d_psnr"], ["tv_psnr", "tv_weight"],
    "timestep"}},
    "per_image": [...], "num_images": n}. ``images`` is a folder or a list of (name, array) pairs.
    """
    imgs = load_eval_images(images, size, linearize) if isinstance(images, (str, os.PathLike)) else list(images)
    if not imgs:
        raise PriorError(f"eval images {images}: none found")
    for s in sigmas:
        if not (s > 0 and math.isfinite(s)):
            raise PriorError(f"--sigmas: {s} must be a positive number")
    summary: dict[str, dict[str, float]] = {}
    per_image: list[dict[str, Any]] = []
    for si, sigma in enumerate(sigmas):
        noisy_p, prior_p, tv_p = [], [], {f: [] for f in TV_WEIGHT_FACTORS}
        t_used = 0
        for ii, (name, clean) in enumerate(imgs):
            g = torch.Generator().manual_seed(seed * 1_000_003 + si * 1009 + ii)
            x = _to_tensor(clean)
            noisy = x + sigma * torch.randn(x.shape, generator=g)
            den, t_used = prior_denoise(prior, noisy, sigma)
            noisy_np = _to_numpy(noisy)
            rec = {"image": name, "sigma": sigma,
                   "noisy_psnr": psnr(np.clip(noisy_np, 0, 1), clean),
                   "prior_psnr": psnr(np.clip(_to_numpy(den), 0, 1), clean)}
            noisy_p.append(rec["noisy_psnr"])
            prior_p.append(rec["prior_psnr"])
            if bm3d:
                rec["bm3d_psnr"] = psnr(np.clip(bm3d_denoise(noisy_np, sigma), 0, 1), clean)
            if tv:
                from skimage.restoration import denoise_tv_chambolle

                for f in TV_WEIGHT_FACTORS:
                    out = denoise_tv_chambolle(noisy_np, weight=f * sigma, channel_axis=-1 if noisy_np.ndim == 3 else None)
                    tv_p[f].append(psnr(np.clip(out, 0, 1), clean))
            per_image.append(rec)
        entry = {"noisy_psnr": round(float(np.mean(noisy_p)), 3), "prior_psnr": round(float(np.mean(prior_p)), 3)}
        if bm3d:
            entry["bm3d_psnr"] = round(float(np.mean([r["bm3d_psnr"] for r in per_image if r["sigma"] == sigma])), 3)
        if tv:
            best = max(TV_WEIGHT_FACTORS, key=lambda f: np.mean(tv_p[f]))
            entry["tv_psnr"] = round(float(np.mean(tv_p[best])), 3)
            entry["tv_weight"] = round(best * sigma, 4)
            for k, rec in enumerate(r for r in per_image if r["sigma"] == sigma):
                rec["tv_psnr"] = tv_p[best][k]
        entry["timestep"] = t_used
        summary[f"{sigma:g}"] = entry
    return {"summary": summary, "per_image": per_image, "num_images": len(imgs)}


def format_table(res: dict[str, Any]) -> str:
    """Human-readable table of an :func:`evaluate_denoising` result."""
    lines = [f"mean PSNR (dB) over {res['num_images']} images",
             f"{'sigma':>7} {'noisy':>8} {'TV':>8} {'BM3D':>8} {'prior':>8} {'prior-BM3D':>10}  {'TV weight':>9} {'t':>5}"]
    for s, e in res["summary"].items():
        tv = f"{e['tv_psnr']:8.2f}" if "tv_psnr" in e else f"{'-':>8}"
        b = f"{e['bm3d_psnr']:8.2f}" if "bm3d_psnr" in e else f"{'-':>8}"
        lead = f"{e['prior_psnr'] - e['bm3d_psnr']:+10.2f}" if "bm3d_psnr" in e else f"{'-':>10}"
        w = f"{e['tv_weight']:9.3g}" if "tv_weight" in e else f"{'-':>9}"
        lines.append(f"{s:>7} {e['noisy_psnr']:8.2f} {tv} {b} {e['prior_psnr']:8.2f} {lead}  {w} {e['timestep']:5d}")
    return "\n".join(lines)


@torch.no_grad()
def sample(prior: DiffusionPrior, num: int = 16, size: int = 64, steps: int = 50, seed: int = 0,
           channels: int = 3) -> torch.Tensor:
    """Unconditional DDIM (eta=0) samples, (num, channels, size, size) in linear [0, 1] (clipped)."""
    from diffusers import DDIMScheduler

    if num < 1 or size < 1 or steps < 1:
        raise PriorError(f"sample: num={num}, size={size}, steps={steps} must all be >= 1")
    sched = DDIMScheduler.from_config(prior.scheduler.config, clip_sample=False)
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num, channels, size, size, generator=g).to(prior.device)
    for t in sched.timesteps:
        eps = prior.predict_noise(x, int(t))
        x = sched.step(eps, t, x, eta=0.0).prev_sample
    return prior.from_model_space(x).clamp(0, 1).cpu()


def write_samples_png(prior: DiffusionPrior, path: str | os.PathLike, num: int = 16, size: int = 64,
                      steps: int = 50, seed: int = 0, zoom: int = 2) -> Path:
    """Grid of unconditional samples as an sRGB PNG (tiles upscaled ``zoom``x, nearest)."""
    from PIL import Image

    x = sample(prior, num=num, size=size, steps=steps, seed=seed)
    cols = int(math.ceil(math.sqrt(num)))
    rows = int(math.ceil(num / cols))
    tile, pad = size * zoom, 2
    grid = np.ones((rows * (tile + pad) + pad, cols * (tile + pad) + pad, 3), np.float32)
    for k in range(num):
        img = pdata.linear_to_srgb(x[k].permute(1, 2, 0).numpy())
        img = img.repeat(zoom, 0).repeat(zoom, 1)
        r, c = divmod(k, cols)
        grid[pad + r * (tile + pad): pad + r * (tile + pad) + tile, pad + c * (tile + pad): pad + c * (tile + pad) + tile] = img
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((grid * 255 + 0.5).astype(np.uint8)).save(path)
    return path
