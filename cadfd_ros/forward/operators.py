"""The solver's forward model as an operator object (forward and adjoint), deepinv style.

    y = sum_k w_k * (h_k conv x)

x is the all-in-focus image padded by p = k//2 on every side, because a capture pixel near the
border sees scene content from outside the frame; the convolution is 'valid', so y has the
capture's size H x W. Convolutions are circular FFT products at the padded size, whose
bottom-right H x W block equals the valid linear convolution exactly.
"""
from __future__ import annotations

import copy

import torch


class LayeredBlur:
    """Blur-then-mask operator for one frame size; differentiable in x and in the weights."""

    def __init__(self, psfs: torch.Tensor, height: int, width: int) -> None:
        if psfs.ndim != 4 or psfs.shape[-1] != psfs.shape[-2] or psfs.shape[-1] % 2 == 0:
            raise ValueError(f"psfs must be (L, C, k, k) with odd k, got {tuple(psfs.shape)}")
        self.num_layers, self.channels, k, _ = psfs.shape
        self.kernel_size = k
        self.pad = k // 2
        self.height, self.width = height, width
        self.padded_shape = (height + 2 * self.pad, width + 2 * self.pad)
        kernel = torch.zeros(self.num_layers, self.channels, *self.padded_shape, dtype=psfs.dtype, device=psfs.device)
        kernel[..., :k, :k] = psfs
        self.otf = torch.fft.rfft2(kernel)  # (L, C, Hp, Wp//2+1)
        self.psfs = psfs

    def select_layers(self, layers: torch.Tensor) -> "LayeredBlur":
        """The operator restricted to some layers; shares their OTFs (no FFTs)."""
        sub = copy.copy(self)
        sub.otf, sub.psfs = self.otf[layers], self.psfs[layers]
        sub.num_layers = int(sub.otf.shape[0])
        return sub

    @property
    def device(self) -> torch.device:
        return self.otf.device

    def _crop(self, full: torch.Tensor) -> torch.Tensor:
        k1 = self.kernel_size - 1
        return full[..., k1 : k1 + self.height, k1 : k1 + self.width]

    def _embed(self, y: torch.Tensor) -> torch.Tensor:
        """Adjoint of _crop: zero image of the padded size with y in the valid block."""
        k1 = self.kernel_size - 1
        out = y.new_zeros(*y.shape[:-2], *self.padded_shape)
        out[..., k1 : k1 + self.height, k1 : k1 + self.width] = y
        return out

    def blur_layers(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, Hp, Wp) -> (B, L, C, H, W): x blurred by every layer's PSF."""
        spectrum = torch.fft.rfft2(x).unsqueeze(1)  # (B, 1, C, Hp, Wf)
        blurred = torch.fft.irfft2(spectrum * self.otf, s=self.padded_shape)
        return self._crop(blurred)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x (B, C, Hp, Wp), weights (B, L, H, W) -> capture (B, C, H, W)."""
        return (self.blur_layers(x) * weights.unsqueeze(2)).sum(dim=1)

    __call__ = forward

    def adjoint(self, y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Adjoint in x for fixed weights: (B, C, H, W) -> (B, C, Hp, Wp)."""
        masked = self._embed(y.unsqueeze(1) * weights.unsqueeze(2))  # (B, L, C, Hp, Wp)
        spectrum = torch.fft.rfft2(masked) * self.otf.conj()
        return torch.fft.irfft2(spectrum.sum(dim=1), s=self.padded_shape)

    def pad_image(self, image: torch.Tensor) -> torch.Tensor:
        """Capture-sized image -> padded size by edge replication (a starting guess for x)."""
        p = self.pad
        return torch.nn.functional.pad(image, (p, p, p, p), mode="replicate")

    def crop_image(self, x: torch.Tensor) -> torch.Tensor:
        """Padded x -> the capture's field of view."""
        p = self.pad
        return x[..., p : p + self.height, p : p + self.width]
