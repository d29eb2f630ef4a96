"""Depth <-> continuous layer coordinate <-> soft per-pixel layer weights.

The layer coordinate u in [0, L-1] is piecewise linear in inverse depth between the bank's
layers, so it is exact for any calibrated (not necessarily evenly spaced) bank. Hat weights
w_k = max(0, 1 - |u - k|) sum to 1, interpolate the PSF between neighbouring layers and make
depth a differentiable variable of the forward model.
"""
from __future__ import annotations

import numpy as np
import torch


def depth_to_layer_coord(depth: torch.Tensor, layer_depths: torch.Tensor) -> torch.Tensor:
    """Metres -> layer coordinate, clamped to [0, L-1]; NaN depths map to NaN."""
    inverse = 1.0 / depth
    # layer inverse depths decrease with the index; flip to an increasing grid for searchsorted
    grid = torch.flip(1.0 / layer_depths.to(depth), dims=[0])
    last = grid.numel() - 1
    x = inverse.clamp(grid[0], grid[-1])
    idx = torch.searchsorted(grid, x.contiguous(), right=True).clamp(1, last)
    lo, hi = grid[idx - 1], grid[idx]
    frac = (x - lo) / (hi - lo)
    coord_flipped = (idx - 1).to(depth.dtype) + frac
    return last - coord_flipped


def layer_coord_to_depth(coord: torch.Tensor, layer_depths: torch.Tensor) -> torch.Tensor:
    """Layer coordinate -> metres, linear in inverse depth between layers."""
    inverse = 1.0 / layer_depths.to(coord)
    last = inverse.numel() - 1
    u = coord.clamp(0, last)
    lo = u.floor().clamp(max=last - 1).long()
    frac = u - lo.to(u.dtype)
    inv = inverse[lo] * (1 - frac) + inverse[lo + 1] * frac
    return 1.0 / inv


def soft_layer_weights(coord: torch.Tensor, num_layers: int) -> torch.Tensor:
    """(B, H, W) layer coordinate -> (B, L, H, W) hat weights that sum to 1."""
    k = torch.arange(num_layers, dtype=coord.dtype, device=coord.device).view(1, -1, 1, 1)
    return (1.0 - (coord.unsqueeze(1) - k).abs()).clamp(min=0.0)


def depth_to_layer_coord_np(depth: np.ndarray, layer_depths: np.ndarray) -> np.ndarray:
    return depth_to_layer_coord(torch.from_numpy(np.asarray(depth, np.float64)), torch.from_numpy(
        np.asarray(layer_depths, np.float64))).numpy()


def layer_coord_to_depth_np(coord: np.ndarray, layer_depths: np.ndarray) -> np.ndarray:
    return layer_coord_to_depth(torch.from_numpy(np.asarray(coord, np.float64)), torch.from_numpy(
        np.asarray(layer_depths, np.float64))).numpy()
