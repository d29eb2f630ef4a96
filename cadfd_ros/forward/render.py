"""Occlusion-aware layered rendering for simulation (Ikoma et al., ICCP 2021).

Layers k = 0..K-1 run front to back with binary masks a_k:
    A_k = sum_{j>=k} a_j
    b_k = h_k*(a_k x) / (h_k*A_k + eps),   at_k = h_k*a_k / (h_k*A_k + eps)
    y   = sum_k b_k prod_{j<k} (1 - at_j)
Plain sum_k h_k*(a_k x) leaves dark seams at occlusion edges; this does not.
"""
from __future__ import annotations

import numpy as np
import torch

from cadfd_ros.forward.layers import depth_to_layer_coord
from cadfd_ros.optics.psf_bank import PSFBank

EPS = 1e-6


def _fft_conv_same(images: torch.Tensor, psf: torch.Tensor) -> torch.Tensor:
    """Linear 'same' convolution of (N, C, H, W) with one (C, k, k) PSF, zero outside."""
    k = psf.shape[-1]
    height, width = images.shape[-2:]
    shape = (height + k - 1, width + k - 1)
    spectrum = torch.fft.rfft2(images, s=shape) * torch.fft.rfft2(psf, s=shape)
    full = torch.fft.irfft2(spectrum, s=shape)
    p = k // 2
    return full[..., p : p + height, p : p + width]


def interpolated_psfs(bank: PSFBank, substeps: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """PSFs at ``substeps`` sub-layers per bank interval (linear in the layer coordinate)."""
    psfs = bank.psfs_for_channels(channels).astype(np.float64)
    coords = np.linspace(0, bank.num_layers - 1, (bank.num_layers - 1) * substeps + 1)
    lo = np.minimum(np.floor(coords).astype(int), bank.num_layers - 2)
    frac = (coords - lo)[:, None, None, None]
    return ((1 - frac) * psfs[lo] + frac * psfs[lo + 1]).astype(np.float32), coords


def render_occlusion_aware(
    image: np.ndarray,
    depth: np.ndarray,
    bank: PSFBank,
    substeps: int = 4,
    device: str = "cpu",
) -> np.ndarray:
    """Render a coded capture of ``image`` (H x W [x 3], linear) at ``depth`` (H x W metres).

    The scene outside the frame is continued by edge replication, so the capture has the
    input's size. Depth is quantised to ``substeps`` sub-layers per bank interval, so the
    simulation is finer than the solver's layers.
    """
    image = np.asarray(image, np.float32)
    depth = np.asarray(depth, np.float32)
    if image.shape[:2] != depth.shape:
        raise ValueError(f"image {image.shape[:2]} and depth {depth.shape} must have the same size")
    if not np.all(np.isfinite(depth)) or depth.min() <= 0:
        raise ValueError("depth must be finite and positive everywhere")
    mono = image.ndim == 2
    channels = 1 if mono else image.shape[2]
    psfs, _ = interpolated_psfs(bank, substeps, channels)
    p = bank.half_size
    with torch.no_grad():
        x = torch.from_numpy(image if not mono else image[:, :, None]).permute(2, 0, 1)[None].to(device)
        x = torch.nn.functional.pad(x, (p, p, p, p), mode="replicate")
        d = torch.nn.functional.pad(torch.from_numpy(depth)[None, None].to(device), (p, p, p, p), mode="replicate")
        coord = depth_to_layer_coord(d[0, 0].double(), torch.from_numpy(bank.depths).double().to(device))
        label = torch.round(coord * substeps).long()  # index into the sub-layer list
        present = torch.unique(label).tolist()
        h = torch.from_numpy(psfs).to(device)
        out = torch.zeros_like(x)
        transmit = torch.ones_like(x)
        remaining = torch.ones_like(d)  # A_k: this layer and everything behind it
        for index in present:  # front (smallest coordinate = nearest) to back
            alpha = (label == index).to(x.dtype)[None, None]
            blurred_cover = _fft_conv_same(remaining, h[index]).clamp(min=0)
            b = _fft_conv_same(alpha * x, h[index]) / (blurred_cover + EPS)
            a_tilde = (_fft_conv_same(alpha, h[index]) / (blurred_cover + EPS)).clamp(0, 1)
            out = out + b * transmit
            transmit = transmit * (1 - a_tilde)
            remaining = remaining - alpha
    capture = out[0, :, p:-p, p:-p].permute(1, 2, 0).cpu().numpy()
    return capture[:, :, 0] if mono else capture
