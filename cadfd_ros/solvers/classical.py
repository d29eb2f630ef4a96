"""Classical coded-aperture depth from defocus (Levin, Fergus, Durand, Freeman 2007 family).

1. Per-layer non-blind deconvolution of the capture under a Gaussian gradient prior (the
   quadratic natural-image prior, solved in closed form in the Fourier domain).
2. Per-pixel depth evidence: the Gaussian marginal likelihood -log p(y | layer k) in local
   windows. Its quadratic part |y - h_k*x_k|^2 / sigma^2 + |grad x_k|^2 / s^2 weighs the data
   term by the noise level; its log-determinant part is what stops the in-focus (sharpest)
   layer from explaining every blurry patch. The prior's contrast s^2 is profiled per window
   over a few scales, so high- and low-contrast texture are judged alike.
3. Edge-aware regularisation: the cost volume is smoothed by a guided filter steered by the
   capture, then the best layer is refined to a continuous layer coordinate.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cadfd_ros.forward.layers import layer_coord_to_depth, soft_layer_weights
from cadfd_ros.forward.operators import LayeredBlur, difference_power, image_batch, squared_magnitude
from cadfd_ros.optics.psf_bank import PSFBank
from cadfd_ros.result import Reconstruction, SolverStart
from cadfd_ros.solvers.filters import fast_guided_filter, gaussian_blur, luminance
from cadfd_ros.solvers.noise import NOISE_MODELS, NoiseModel, estimate_noise_model, estimate_noise_sigma


DELTA_RATIO = 1.25  # the delta<1.25 metric's depth ratio: what "the depth is right" means for confidence


@dataclass(frozen=True)
class ClassicalParams:
    """Tuned on the bench's tuning scenes (astronaut, coffee), never on its test scenes."""

    sparse_alpha: float = 1.0  # |grad x|^alpha prior; 1.0 matched Levin's 0.8 on the tuning scenes at a fraction of the cost
    # gamma: prior weight relative to the sigma^2-normalised data term. It was 3, tuned on the bundled camera; random
    # (broadband) masks invert large PSFs with little ringing, so a weak prior let the largest layers explain smooth
    # windows (sixteen-layers-16bit put most of chelsea and rocket on the two farthest layers). Camera matrix, tuning
    # photos, seeds 0 and 1, mean delta over 8 cameras: 3 0.554, 4.5 0.600, 6 0.597, 12 0.486; at 4.5 six cameras
    # gain (+0.012 to +0.189) and straddle-mono16-9 / behind-f5.6 lose 0.022 / 0.010. The sampler's start keeps 3
    # (SamplerParams.start_sparse_weight).
    sparse_weight: float = 4.5
    hqs_iterations: int = 6
    hqs_beta_start: float = 1.0  # splitting weight, in units of the prior weight
    hqs_beta_rate: float = 2.83
    prior_grad_std: float = 0.03  # s: gradient std of sharp linear images (Wiener all-in-focus)
    window_sigma: float = 10.0  # px, local evidence window
    evidence_stride: int = 4  # the windowed cost volume is aggregated at 1/stride resolution
    guided_radius: int = 8
    guided_eps: float = 1e-4
    evidence_temperature: float = 0.02  # per-pixel energy -> window log-likelihood scale
    aif_prior_scale: float = 1.0  # s^2 multiplier used for the all-in-focus deconvolution
    # The all-in-focus Wiener prior weighs the capture's error at no less than this sigma: besides the noise, the
    # capture differs from h_k * x by the layered model's own error (depth edges, a wrong layer), which does not
    # shrink with the noise. Without it a quieter capture gave the sampler a start with more ringing and worse
    # depth: tuning photos, four banks (bundled, behind-f5.6, just-behind-focus, sixteen-layers-16bit) at sigma
    # 0.003 and 0.005, DFD-DPS delta 0.717 -> 0.735 and AIF 23.92 -> 24.55 dB (sixteen-layers +0.092 / +0.035 delta
    # and +1.95 / +0.88 dB; just-behind-focus -0.010 / -0.011); at the matrix's own noise levels it moves only
    # just-behind-focus (sigma 0.005; -0.011 / -0.007 delta at seeds 0 / 1). 0: the noise sigma alone.
    aif_noise_floor: float = 0.01
    # The depth evidence's error, likewise, at no less than this sigma (the whitening and the null correction; the
    # deconvolutions' prior weight too). Weighed against the noise alone, a quiet capture's sharpest layers explained
    # the layered model's error as if it were noise: a held-out design (just behind focus, the alternative mask,
    # sigma 0.008) read most pixels at its sharpest layer. Tuning photos, seed 0, four banks at sigma 0.003 and 0.005
    # and just-behind-focus at 0.01: classical delta 0.564 -> 0.628 (just-behind-focus at its own sigma 0.005: 0.478
    # -> 0.619; sixteen-layers-16bit at 0.003: -0.018). 0: the noise sigma alone.
    evidence_noise_floor: float = 0.01
    # Clipped pixels leave the evidence with this many PSF widths around them. Half a PSF (the PSF radius)
    # cost 0.04 delta on clipped tuning scenes (coffee, astronaut x4 gain: -0.07, -0.11), a quarter and
    # none were within 0.01 of keeping everything, so a quarter: some margin for the re-blur of clipped light.
    saturation_dilation: float = 0.25
    # Side of focus (``side_evidence``), for banks that straddle focus: the hinged side score times this times
    # the window's evidence range over layers (so it scales with the evidence's own SNR). Tuning photos, the two
    # straddling cameras of the matrix, classical delta (straddle-rgb-13 / straddle-mono16-9): 0: 0.375 / 0.515;
    # 3: 0.411 / 0.522; 10: 0.450 / 0.535; 30: 0.479 / 0.538; 60: 0.493 / 0.523; 100: 0.496 / 0.515; 300: 0.473 /
    # 0.489. Unscaled, the best weight differed tenfold between the two (30 at sigma 0.01, 3 at 0.02).
    side_weight: float = 30.0
    # The score is averaged over Wiener deconvolutions with the Gaussian prior scaled by these: which frequencies
    # carry the phase depends on the camera. Pairwise accuracy (the true layer's twin scoring worse, textured
    # windows, tuning photos) on straddle-rgb-13 / straddle-mono16-9 at one scale: x0.1 0.570 / 0.708, x1 0.625 /
    # 0.532, x10 0.607 / 0.432; averaged over 0.1, 1, 10: 0.596 / 0.654; over 0.1, 0.3, 1, 3, 10: 0.600 / 0.636.
    # DFD-DPS delta on those two cameras, tuning photos, mean of seeds 0 and 1: one scale 0.525, (0.1, 1, 10)
    # 0.592, five 0.583 (none: 0.497). Three cost 58 ms a frame at 128x128 and 0.81 s at 640x480 (one: 27 / 306).
    side_prior_scales: tuple[float, ...] = (0.1, 1.0, 10.0)


def _shrink(v: torch.Tensor, lam: float, alpha: float, iterations: int = 3) -> torch.Tensor:
    """argmin_w (w - v)^2 / 2 + lam |w|^alpha: generalised iterated shrinkage (Zuo et al. 2013)."""
    if alpha >= 1.0:
        return torch.sign(v) * (v.abs() - lam).clamp(min=0)
    tau = (2 * lam * (1 - alpha)) ** (1 / (2 - alpha)) + alpha * lam * (2 * lam * (1 - alpha)) ** ((alpha - 1) / (2 - alpha))
    magnitude = v.abs()
    w = magnitude.clone()
    for _ in range(iterations):
        w = magnitude - alpha * lam * w.clamp(min=1e-12) ** (alpha - 1)
    return torch.where(magnitude > tau, torch.sign(v) * w.clamp(min=0), torch.zeros_like(v))


def add_side_evidence(energy: torch.Tensor, side: torch.Tensor, weight: float) -> torch.Tensor:
    """The evidence volume (B, L, h, w) plus the side-of-focus score (``ClassicalSolver.side_evidence``),
    weighted by ``weight`` times each window's evidence range over layers: the score is a scale-free log
    ratio, the evidence grows with the signal-to-noise ratio, so this keeps one weight right for both."""
    if side.shape[-2:] != energy.shape[-2:]:
        side = F.interpolate(side, size=energy.shape[-2:], mode="bilinear", align_corners=False)
    spread = energy.amax(dim=1, keepdim=True) - energy.amin(dim=1, keepdim=True)
    return energy + weight * side * spread


def subpixel_argmin(cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per pixel of a cost volume (B, L, H, W): the best layer and its cost (B, 1, H, W), and the layer
    coordinate refined by a parabola through the neighbouring costs (interior layers only)."""
    num_layers = cost.shape[1]
    c0, best = cost.min(dim=1, keepdim=True)  # not argmin: 8x faster over dim 1 on CPU, the same first-index ties
    lo = (best - 1).clamp(0, num_layers - 1)
    hi = (best + 1).clamp(0, num_layers - 1)
    cm, cp = cost.gather(1, lo), cost.gather(1, hi)
    denom = cm - 2 * c0 + cp
    offset = torch.where(denom > 1e-12, 0.5 * (cm - cp) / denom, torch.zeros_like(denom)).clamp(-0.5, 0.5)
    interior = (best > 0) & (best < num_layers - 1)
    return best, c0, best.to(cost.dtype) + torch.where(interior, offset, torch.zeros_like(offset))


def within_delta_window(depth: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """True where ``depth`` lies within a factor DELTA_RATIO of ``reference``, either way (broadcast): what the
    delta<1.25 metric counts as the right depth, and so what the confidence asks about."""
    ratio = depth / reference
    return torch.maximum(ratio, 1 / ratio) < DELTA_RATIO


def depth_from_evidence(evidence: torch.Tensor, guide: torch.Tensor, params: ClassicalParams,
                        with_confidence: bool = True, layer_depths: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Edge-aware smoothing of the cost volume, then sub-layer argmin and confidence.

    Confidence is the posterior mass of the layers whose depth lies within a factor 1.25 of the
    chosen layer's (``layer_depths`` given; else within one layer), rescaled from chance: it asks
    whether the depth is right, not whether one PSF won. Layers a bank cannot tell apart (sub-pixel
    blurs near focus) share the mass, so a wide band of them gets low confidence."""
    p = params
    guide = guide / guide.amax().clamp(min=1e-6)
    cost = fast_guided_filter(guide, evidence, max(1, round(p.guided_radius * evidence.shape[-2] / guide.shape[-2])),
                              p.guided_eps)
    num_layers = cost.shape[1]
    best, c0, coord = subpixel_argmin(cost)
    if not with_confidence:
        return coord[:, 0], None
    prob = torch.softmax(-(cost - c0) / p.evidence_temperature, dim=1)
    if layer_depths is None:
        k = torch.arange(num_layers, device=cost.device).view(1, -1, 1, 1)
        near = ((k - best).abs() <= 1).to(cost.dtype)
    else:
        d = layer_depths.to(cost.device, cost.dtype)
        # (1, L, H, W): each layer's depth against the chosen one
        near = within_delta_window(d.view(1, -1, 1, 1), d[best]).to(cost.dtype)
    mass = (prob * near).sum(dim=1, keepdim=True)
    chance = near.sum(dim=1, keepdim=True) / num_layers
    confidence = ((mass - chance) / (1 - chance)).clamp(0, 1)
    return coord[:, 0], confidence[:, 0]


class ClassicalSolver:
    """Depth, all-in-focus image and confidence from one capture, in about a second at VGA."""

    def __init__(
        self,
        psf_bank: PSFBank,
        device: str = "cpu",
        noise_sigma: float | None = None,
        params: ClassicalParams | None = None,
        noise_model: str = "gaussian",
    ) -> None:
        if noise_model not in NOISE_MODELS:
            raise ValueError(f"noise_model must be one of {', '.join(NOISE_MODELS)}, got {noise_model!r}")
        self.noise_model = noise_model  # poisson_gaussian: a per-pixel sigma map whitens the evidence
        self.bank = psf_bank
        self.device = torch.device(device)
        self.noise_sigma = noise_sigma
        self.params = params or ClassicalParams()
        self._null_cache: dict[float, torch.Tensor] = {}
        self._operators: dict[tuple[int, int, int], LayeredBlur] = {}

    def operator(self, height: int, width: int, channels: int) -> LayeredBlur:
        """The bank's operator for one frame size, cached (a few sizes: bounded memory)."""
        key = (height, width, channels)
        if key not in self._operators:
            if len(self._operators) >= 4:
                self._operators.pop(next(iter(self._operators)))
            psfs = torch.from_numpy(self.bank.psfs_for_channels(channels)).to(self.device)
            self._operators[key] = LayeredBlur(psfs, height, width)
        return self._operators[key]

    def deconvolve_layers(self, capture: torch.Tensor, sigma: float, layers: range | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Sparse-prior (|grad x|^alpha) deconvolution of every channel by every layer's PSF.

        Half-quadratic splitting (Krishnan & Fergus 2009) with a generalised shrinkage step:
        each iteration is one closed-form Fourier x-step per layer. Returns the deconvolved
        images (L, C, Hpad, Wpad), the capture (C, Hpad, Wpad) on the reflect-padded grid, and
        the padding used.
        """
        p = self.params
        op = self.operator(*capture.shape[-2:], capture.shape[1])
        pad = op.capture_pad
        y_pad = op.pad_capture(capture)[0]  # (C, Hp, Wp)
        shape = op.capture_grid
        otf = op.capture_otf  # (L, C, Hf, Wf)
        if layers is not None:
            otf = otf[list(layers)]
        otf2 = squared_magnitude(otf)
        spectrum = torch.fft.rfft2(y_pad).unsqueeze(0)
        wy = torch.fft.fftfreq(shape[0], device=self.device)
        wx = torch.fft.rfftfreq(shape[1], device=self.device)
        # forward differences x[n+1] - x[n] as OTFs on the rfft grid
        dx = (torch.exp(2j * math.pi * wx) - 1).view(1, -1).expand(shape[0], -1)
        dy = (torch.exp(2j * math.pi * wy) - 1).view(-1, 1).expand(-1, wx.numel())
        dpow = dx.abs() ** 2 + dy.abs() ** 2
        weight = p.sparse_weight * sigma * sigma  # lambda, in units of the data term |y-hx|^2
        numerator_data = otf.conj() * spectrum
        x_spec = numerator_data / (otf2 + weight * dpow + 1e-8)
        beta = p.hqs_beta_start * weight
        for _ in range(p.hqs_iterations):
            x = torch.fft.irfft2(x_spec, s=shape)
            gx = torch.roll(x, -1, dims=-1) - x
            gy = torch.roll(x, -1, dims=-2) - x
            wx_ = _shrink(gx, weight / beta, p.sparse_alpha)
            wy_ = _shrink(gy, weight / beta, p.sparse_alpha)
            rhs = numerator_data + beta * (dx.conj() * torch.fft.rfft2(wx_) + dy.conj() * torch.fft.rfft2(wy_))
            x_spec = rhs / (otf2 + beta * dpow + 1e-8)
            beta *= p.hqs_beta_rate
        return torch.fft.irfft2(x_spec, s=shape), y_pad, pad

    def evidence_weight(self, saturated: np.ndarray | None) -> np.ndarray | None:
        """1 where a pixel's re-blur error is evidence, 0 within ``saturation_dilation`` x the PSF size of a
        saturated pixel (the re-blur of a clipped pixel is wrong, and so is its neighbours'); None when
        nothing is clipped."""
        if saturated is None or not np.any(saturated):
            return None
        from scipy.ndimage import maximum_filter

        size = 2 * int(self.params.saturation_dilation * self.bank.kernel_size) + 1
        return 1.0 - maximum_filter(np.asarray(saturated, np.uint8), size=size).astype(np.float32)

    def evidence_grid(self, height: int, width: int) -> tuple[tuple[int, int], float]:
        """The windowed evidence's resolution (1/stride of the frame) and its window sigma there."""
        p = self.params
        low = (max(1, height // p.evidence_stride), max(1, width // p.evidence_stride))
        return low, p.window_sigma * low[0] / height

    def layer_evidence(self, capture: torch.Tensor, sigma: float, calibrate: bool = True,
                       weight: torch.Tensor | None = None, sigma_map: torch.Tensor | None = None,
                       side: torch.Tensor | None = None) -> torch.Tensor:
        """Local reconstruction error per pixel and layer, windowed: (1, L, H, W), lower is better.

        x_k is the sparse-prior deconvolution by layer k with the prior weighed against the
        1/sigma^2 data term, so a PSF larger than the true one cannot invert the capture without
        ringing that the prior suppresses, and the re-blurred x_k then misses the capture; a PSF
        much smaller than the true one leaves zeros of the true OTF unexplained. Measured on the
        bench's tuning scenes, adding the prior value itself (MAP energy) or a normalised
        sparsity term to this error made depth worse: both favour the sharpest layer.

        ``weight`` (H x W, 0..1) leaves pixels out of the windowed error (normalised convolution);
        windows with almost no weight get the noise-only level, i.e. no preference between layers.
        ``sigma_map`` (H x W): per-pixel noise std (signal-dependent noise) that whitens the error
        instead of the scalar ``sigma``, which still sets the deconvolution's prior weight. ``side``
        (``side_evidence``) adds the side-of-focus term to the calibrated evidence."""
        p = self.params
        sigma = max(sigma, p.evidence_noise_floor)
        if sigma_map is not None:
            sigma_map = sigma_map.clamp(min=p.evidence_noise_floor)
        y = luminance(capture)
        x, y_pad, pad = self.deconvolve_layers(y, sigma)
        height, width = y.shape[-2:]
        op = self.operator(height, width, 1)
        reblur = torch.fft.irfft2(torch.fft.rfft2(x) * op.capture_otf, s=op.capture_grid)
        crop = (slice(None), 0, slice(pad, pad + height), slice(pad, pad + width))
        if sigma_map is None:
            data = (reblur - y_pad.unsqueeze(0)) ** 2 / (sigma * sigma)
        else:
            data = torch.zeros_like(reblur)
            s2 = sigma_map.to(data.device, data.dtype).view(1, height, width) ** 2
            data[crop] = (reblur[crop] - y_pad.unsqueeze(0)[crop]) ** 2 / s2
        # The window is wide, so the energy is smooth: aggregate it at 1/stride resolution.
        low, window = self.evidence_grid(height, width)
        if weight is None:
            energy = F.interpolate(data[crop].unsqueeze(0), size=low, mode="area")
            energy = gaussian_blur(energy, window)
        else:
            w = weight.to(data.device, data.dtype).view(1, 1, height, width)
            energy = gaussian_blur(F.interpolate(data[crop].unsqueeze(0) * w, size=low, mode="area"), window)
            mass = gaussian_blur(F.interpolate(w, size=low, mode="area"), window)
            null = self.null_energy(sigma).view(1, -1, 1, 1)
            energy = torch.where(mass > 1e-3, energy / mass.clamp(min=1e-6), null.expand_as(energy))
        if calibrate:
            energy = energy - self.null_energy(sigma).view(1, -1, 1, 1)
            if side is not None:
                energy = add_side_evidence(energy, side, p.side_weight)
        return energy

    def side_evidence(self, luma: torch.Tensor, sigma: float) -> torch.Tensor | None:
        """Which side of focus, per layer, on the evidence grid (1, L, h, w), or None for a bank that does not
        straddle focus (or has no focus distance). The log of the windowed normalised sparsity (L1/L2 of the
        gradients, Krishnan et al. 2011) of the capture deconvolved by layer k, minus the same for its
        deconvolution by h_k rotated 180 degrees, hinged at 0: positive where the rotated PSF makes the
        sparser image, i.e. where the capture looks as if it came from the other side of focus.

        In front of focus the PSF is the mask rotated 180 degrees, so a layer and its twin across focus have
        the same |OTF|: the re-blur error and the Gaussian evidence cannot tell them apart, and a wrong-side
        deconvolution is the true image with its phases scrambled (ghost copies of every edge). The rotated
        PSF has exactly the same |OTF| and noise gain as layer k itself, so this term favours no blur size;
        it is zero for a symmetric mask and for sub-pixel blurs. The hinge: for a layer whose size does not
        match the capture's blur the score's sign is arbitrary, and rewarding it (the signed score) lost
        delta on the tuning photos at every weight above 3; the true layer's expected score is negative, so
        the hinge never counts against it. On the centred capture grid the rotated PSF's OTF is conj(H_k)."""
        if not self.params.side_weight or not self.bank.straddles_focus():
            return None
        height, width = luma.shape[-2:]
        low, window = self.evidence_grid(height, width)
        op = self.operator(height, width, 1)
        spectrum = torch.fft.rfft2(op.pad_capture(luma)[0])  # (1, Hs, Wf)
        otf = op.capture_otf[:, 0]  # (L, Hs, Wf)
        otf_power = squared_magnitude(otf)
        prior = self._gaussian_prior(op.capture_grid, sigma)
        pad = op.capture_pad

        def sparsity(image_spectrum: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
            x = torch.fft.irfft2(image_spectrum / denominator, s=op.capture_grid)
            gx, gy = torch.roll(x, -1, dims=-1) - x, torch.roll(x, -1, dims=-2) - x
            crop = (slice(None), slice(pad, pad + height), slice(pad, pad + width))
            l1 = (gx.abs() + gy.abs())[crop].unsqueeze(0)
            l2 = (gx * gx + gy * gy)[crop].unsqueeze(0)
            l1, l2 = (gaussian_blur(F.interpolate(v, size=low, mode="area"), window) for v in (l1, l2))
            return torch.log(l1.clamp(min=1e-12)) - 0.5 * torch.log(l2.clamp(min=1e-24))

        score = torch.zeros(())
        for scale in self.params.side_prior_scales:
            denominator = otf_power + scale * prior
            score = score + sparsity(otf.conj() * spectrum, denominator) - sparsity(otf * spectrum, denominator)
        return (score / len(self.params.side_prior_scales)).clamp(min=0)

    def _gaussian_prior(self, shape: tuple[int, int], sigma: float) -> torch.Tensor:
        """sigma^2 |D|^2 / s^2 (+ a small ridge): the Gaussian gradient prior of the Wiener deconvolutions."""
        reg = sigma**2 * (difference_power(shape, torch.float32, self.device) + 1e-4)
        return reg / (self.params.aif_prior_scale * self.params.prior_grad_std**2)

    def null_energy(self, sigma: float, size: int = 128) -> torch.Tensor:
        """Mean energy per layer on a noise-only capture of the same sigma.

        Smaller PSFs fit noise better (more degrees of freedom), which biases weakly textured
        windows toward the sharpest layer; subtracting this null level removes that Occam bias
        (measured on the tuning scenes: delta<1.25 0.60 -> 0.68)."""
        key = round(float(sigma), 6)
        if key not in self._null_cache:
            generator = torch.Generator().manual_seed(0)
            noise = 0.5 + sigma * torch.randn(1, 1, size, size, generator=generator)
            energy = self.layer_evidence(noise.to(self.device), sigma, calibrate=False)
            margin = max(1, self.bank.kernel_size // (2 * self.params.evidence_stride))  # low-res pixels
            self._null_cache[key] = energy[0, :, margin:-margin, margin:-margin].mean(dim=(1, 2))
        return self._null_cache[key]

    def all_in_focus(
        self, capture: torch.Tensor, coord: torch.Tensor, sigma: float, pad_out: int
    ) -> torch.Tensor:
        """Per-layer Wiener deconvolution of every channel, blended by the soft layer weights.

        Returns the image on the frame padded by ``pad_out`` (the solver operator's x)."""
        channels = capture.shape[1]
        height, width = capture.shape[-2:]
        op = self.operator(height, width, channels)
        pad = op.capture_pad
        y_pad = op.pad_capture(capture)
        shape = op.capture_grid
        otf = op.capture_otf  # (L, C, Hf, Wf)
        spectrum = torch.fft.rfft2(y_pad[0])  # (C, Hf, Wf)
        reg = self._gaussian_prior(shape, max(sigma, self.params.aif_noise_floor))
        coord_pad = F.pad(coord.unsqueeze(1), (pad_out,) * 4, mode="replicate")[:, 0]
        weights = soft_layer_weights(coord_pad, self.bank.num_layers)[0]  # (L, H+2p, W+2p)
        out = torch.zeros(channels, height + 2 * pad_out, width + 2 * pad_out, device=self.device)
        crop = slice(pad - pad_out, pad + pad_out + height), slice(pad - pad_out, pad + pad_out + width)
        for k in range(self.bank.num_layers):
            w = weights[k]
            if float(w.max()) <= 0:
                continue
            x_k = torch.fft.irfft2(otf[k].conj() * spectrum / (otf[k].abs() ** 2 + reg), s=shape)
            out += w * x_k[:, crop[0], crop[1]]
        return out.unsqueeze(0)

    def solve(self, capture: np.ndarray, start: SolverStart | None = None) -> Reconstruction:
        """The classical estimate; it starts from nothing, so ``start`` is not used."""
        return self.estimate(capture)[0]

    @torch.no_grad()
    def frame_noise(self, capture: np.ndarray, image: torch.Tensor | None = None, saturated: np.ndarray | None = None,
                    noise: NoiseModel | None = None) -> tuple[float, torch.Tensor | None, np.ndarray | None]:
        """The frame's noise sigma (the frame average under the Poisson-Gaussian model), the per-pixel
        sigma map where the model gives one, and the evidence weight of clipped pixels: what a warm-started
        frame still needs from this solver when it skips the classical estimate. ``noise``: the frame's
        (a, b) measured elsewhere (a Bayer frame's raw mosaic), used instead of an estimate from ``capture``."""
        weight = self.evidence_weight(saturated)
        valid = None if weight is None else weight > 0
        if image is None:
            image = image_batch(capture, self.device)
        sigma_map = None
        if self.noise_sigma is not None:  # a fixed sigma overrides any model
            sigma = self.noise_sigma
        elif self.noise_model == "poisson_gaussian" or noise is not None:
            a, b = noise if noise is not None else estimate_noise_model(capture, valid)
            local = gaussian_blur(luminance(image), 1.0)[0, 0].clamp(min=0)
            variance = a * local + b
            sigma = float(np.sqrt(variance.mean().item()))  # the frame's average level: the prior weight
            if self.noise_model == "poisson_gaussian":
                sigma_map = variance.sqrt()
        else:
            sigma = estimate_noise_sigma(capture, valid)
        return sigma, sigma_map, weight

    def noise_source(self, noise: NoiseModel | None = None) -> str:
        """Where ``frame_noise`` takes the level from, in its order: the fixed sigma, a given model, the capture."""
        if self.noise_sigma is not None:
            return "noise_sigma parameter"
        return "noise model" if noise is not None else "capture"

    @torch.no_grad()
    def estimate(self, capture: np.ndarray, saturated: np.ndarray | None = None, noise: NoiseModel | None = None
                 ) -> tuple[Reconstruction, SolverStart]:
        """The reconstruction, and the same estimate in solver variables to start a refining solver.

        ``saturated`` (H x W bool): clipped pixels, left out of the noise estimate and the depth evidence.
        ``noise``: the frame's noise model measured elsewhere (``frame_noise``)."""
        timings: dict[str, float] = {}
        start = time.perf_counter()
        image = image_batch(capture, self.device)
        sigma, sigma_map, weight = self.frame_noise(capture, image, saturated, noise)
        timings["noise_estimate"] = time.perf_counter() - start

        t = time.perf_counter()
        side = self.side_evidence(luminance(image), sigma)
        evidence = self.layer_evidence(image, sigma, weight=None if weight is None else torch.from_numpy(weight),
                                       sigma_map=sigma_map, side=side)
        timings["evidence"] = time.perf_counter() - t

        t = time.perf_counter()
        coord, confidence = depth_from_evidence(evidence, luminance(image), self.params,
                                                layer_depths=torch.from_numpy(self.bank.depths))
        depth = layer_coord_to_depth(coord.double(), torch.from_numpy(self.bank.depths).double().to(self.device))
        timings["regularise"] = time.perf_counter() - t

        t = time.perf_counter()
        operator = self.operator(*image.shape[-2:], image.shape[1])
        x = self.all_in_focus(image, coord, sigma, operator.pad)
        weights = soft_layer_weights(coord, self.bank.num_layers)
        residual = torch.sqrt(torch.mean((operator(x, weights) - image) ** 2)).item()
        timings["all_in_focus"] = time.perf_counter() - t

        aif = operator.crop_image(x)[0].permute(1, 2, 0).cpu().numpy()
        result = Reconstruction(
            depth=depth[0].float().cpu().numpy(),
            all_in_focus=np.ascontiguousarray(aif[:, :, 0] if capture.ndim == 2 else aif, dtype=np.float32),
            confidence=confidence[0].float().cpu().numpy(),
            method="classical",
            timings=timings,
            residual=residual,
            noise_sigma=sigma,
        )
        return result, SolverStart(layer_coord=coord.cpu(), padded_image=x.cpu(), noise_sigma=sigma,
                                   timings=dict(timings),
                                   evidence_weight=None if weight is None else torch.from_numpy(weight),
                                   side_evidence=None if side is None else side.cpu())
