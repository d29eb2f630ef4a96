"""Small image filters on torch tensors (B, C, H, W)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _box_sum_1d(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Windowed sum along ``dim`` by a cumulative sum: O(1) per pixel whatever the radius."""
    n = x.shape[dim]
    zero = torch.zeros_like(x.narrow(dim, 0, 1))
    cumulative = torch.cat([zero, x.cumsum(dim)], dim=dim)
    index = torch.arange(n, device=x.device)
    hi = (index + radius + 1).clamp(max=n)
    lo = (index - radius).clamp(min=0)
    return cumulative.index_select(dim, hi) - cumulative.index_select(dim, lo)


def box_filter(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over a (2r+1)^2 window, normalised at the borders (integral image)."""
    if radius <= 0:
        return x
    if radius <= 4:  # small windows: direct pooling beats the integral image's overhead
        return F.avg_pool2d(x, 2 * radius + 1, stride=1, padding=radius, count_include_pad=False)
    height, width = x.shape[-2:]
    counts = _box_sum_1d(torch.ones(height, 1, dtype=x.dtype, device=x.device), radius, 0) * _box_sum_1d(
        torch.ones(1, width, dtype=x.dtype, device=x.device), radius, 1
    )
    return _box_sum_1d(_box_sum_1d(x, radius, x.dim() - 2), radius, x.dim() - 1) / counts


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur: three box passes for wide windows (within a few % of the true
    Gaussian, and O(1) per pixel), a separable kernel for narrow ones."""
    if sigma <= 0:
        return x
    if sigma >= 3:
        radius = max(1, int(round((np.sqrt(4 * sigma * sigma + 1) - 1) / 2)))  # 3 (w^2-1)/12 = sigma^2
        for _ in range(3):
            x = box_filter(x, radius)
        return x
    radius = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = g / g.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, g.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, g.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def _guided_coefficients(guide: torch.Tensor, source: torch.Tensor, radius: int, eps: float
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Window-averaged local linear model source ~ a * guide + b (He et al. 2010)."""
    mean_i = box_filter(guide, radius)
    mean_p = box_filter(source, radius)
    cov_ip = box_filter(guide * source, radius) - mean_i * mean_p
    var_i = box_filter(guide * guide, radius) - mean_i * mean_i
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return box_filter(a, radius), box_filter(b, radius)


def guided_filter(guide: torch.Tensor, source: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """He et al. guided filter with a one-channel guide (B, 1, H, W) over every source channel."""
    a, b = _guided_coefficients(guide, source, radius, eps)
    return a * guide + b


def fast_guided_filter(guide: torch.Tensor, source_low: torch.Tensor, radius_low: int, eps: float) -> torch.Tensor:
    """He & Sun's fast guided filter: coefficients from a low-resolution source, applied to the
    full-resolution guide (B, 1, H, W), so edges stay sharp at full resolution."""
    guide_low = F.interpolate(guide, size=source_low.shape[-2:], mode="area")
    a, b = _guided_coefficients(guide_low, source_low, radius_low, eps)
    size = guide.shape[-2:]
    a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
    b = F.interpolate(b, size=size, mode="bilinear", align_corners=False)
    return a * guide + b


def luminance(image: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) linear -> (B, 1, H, W) Rec. 709 luminance (identity for mono)."""
    if image.shape[1] == 1:
        return image
    weights = torch.tensor([0.2126, 0.7152, 0.0722], dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    return (image * weights).sum(dim=1, keepdim=True)
