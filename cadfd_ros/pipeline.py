"""One frame in, depth + all-in-focus + confidence out: the API the CLI and the ROS node share.

The pipeline composes the solvers the way a diffusers pipeline composes a model and a scheduler:
the classical solver gives the estimate (and, for method dps, the sampler's ``SolverStart``); the
sampler refines it. Large frames go through in overlapping tiles. Images here are float32 linear
intensity in [0, 1], H x W (mono) or H x W x 3 (RGB).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from cadfd_ros.errors import CadfdError, InputImageError
from cadfd_ros.optics.psf_bank import PSFBank
from cadfd_ros.params import PARAM_BY_NAME, SOLVER, scope_values
from cadfd_ros.result import Reconstruction, SolverStart

if TYPE_CHECKING:  # torch-heavy: imported where used
    from cadfd_ros.solvers.dps import SamplerConfig
    from cadfd_ros.solvers.noise import NoiseModel

__all__ = ["Reconstruction", "ReconstructionConfig", "Reconstructor", "check_capture", "resolve_device"]


@dataclass(frozen=True)
class ReconstructionConfig:
    """Solver settings. ``steps`` is the exact number of prior network evaluations (dps)."""

    method: str = "classical"
    sampler: str = "auto"
    steps: int = 4
    time_budget_ms: float | None = None
    seed: int = 0
    device: str = "auto"
    prior: str = "default"
    noise_sigma: float | None = None  # None: estimated from the capture
    noise_model: str = "poisson_gaussian"  # sigma^2 = a*x + b estimated per frame, or gaussian (one sigma)
    black_level: float = 0.0  # subtracted (and the range rescaled) before solving
    saturation_level: float | None = None  # None: 1.0, the 8/16-bit maximum
    flat_field: str = ""  # path of a flat-field image the capture is divided by; "" = none
    min_confidence: float = 0.0  # depth below this confidence becomes NaN
    max_pixels: int = 2_000_000  # larger frames are solved in overlapping tiles (bounded memory)
    tile_size: int = 512  # tile side when tiling
    temporal_warm_start: bool = False  # dps: start each frame from the previous one's estimate (a video)

    def __post_init__(self) -> None:
        for name in ("method", "sampler", "steps", "time_budget_ms", "seed", "device", "noise_sigma",
                     "noise_model", "black_level", "saturation_level", "flat_field", "min_confidence", "max_pixels", "tile_size",
                     "temporal_warm_start"):
            value = getattr(self, name)
            spec = PARAM_BY_NAME[name]
            if value is None and spec.zero_is_unset:
                continue
            spec.check(value)
        if self.black_level >= (self.saturation_level or 1.0):
            raise CadfdError(f"black_level ({self.black_level:g}) must be below the saturation level "
                             f"({self.saturation_level or 1.0:g})")

    @classmethod
    def from_values(cls, values: dict) -> "ReconstructionConfig":
        """The config from parameter values (node parameters or CLI flags; 0 = unset where documented)."""
        return cls(**scope_values(values, SOLVER))

    def with_overrides(self, **kwargs: object) -> "ReconstructionConfig":
        return replace(self, **kwargs)

    def sampler_config(self) -> "SamplerConfig":
        from cadfd_ros.solvers.dps import SamplerConfig

        return SamplerConfig(sampler=self.sampler, steps=self.steps, time_budget_ms=self.time_budget_ms,
                             seed=self.seed, noise_sigma=self.noise_sigma, prior=self.prior)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise CadfdError("device 'cuda' requested but torch sees no CUDA device")
    return device


def check_capture(capture: np.ndarray, bank: PSFBank, name: str = "capture") -> np.ndarray:
    """Validate a linear capture and return it as float32 H x W or H x W x 3."""
    capture = np.asarray(capture)
    if capture.ndim == 3 and capture.shape[2] == 1:
        capture = capture[:, :, 0]
    if capture.ndim not in (2, 3) or (capture.ndim == 3 and capture.shape[2] != 3):
        raise InputImageError(f"{name}: expected H x W or H x W x 3, got shape {capture.shape}")
    if capture.dtype.kind not in "fiu":
        raise InputImageError(f"{name}: expected a numeric image, got dtype {capture.dtype}")
    capture = capture.astype(np.float32)
    if not np.all(np.isfinite(capture)):
        raise InputImageError(f"{name}: contains NaN or Inf")
    height, width = capture.shape[:2]
    if min(height, width) < 2 * bank.kernel_size:
        raise InputImageError(
            f"{name}: {width}x{height} is too small for the {bank.kernel_size}x{bank.kernel_size} PSFs "
            f"(need at least {2 * bank.kernel_size} px per side)"
        )
    return capture


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, tile - overlap))
    return starts + [length - tile]


def _ramp(shape: tuple[int, int], overlap: int, top: bool, bottom: bool, left: bool, right: bool) -> np.ndarray:
    """Blending weight of one tile: rises linearly across overlaps shared with a neighbour."""

    def axis(n: int, start: bool, end: bool) -> np.ndarray:
        w = np.ones(n)
        ramp = (np.arange(overlap) + 0.5) / overlap
        if start:
            w[:overlap] = np.minimum(w[:overlap], ramp[: min(overlap, n)])
        if end:
            w[n - overlap :] = np.minimum(w[n - overlap :], ramp[::-1][: min(overlap, n)])
        return w

    return np.outer(axis(shape[0], top, bottom), axis(shape[1], left, right))


class Reconstructor:
    """Holds the PSF bank (and, for dps, the prior) on a device; reconstructs frames.

    With ``temporal_warm_start`` (method dps) it also holds the previous frame's estimate in the sampler's
    variables and starts the next frame of the same size from it, unless the warm start's data term says
    the scene changed (a cut): then the frame starts cold, from the classical estimate. Bank and method are
    fixed per Reconstructor, so changing either makes a new one and starts cold; a size change, a tiled
    frame, ``warmup`` and ``reset_temporal_start`` forget the previous frame."""

    def __init__(self, psf_bank: PSFBank, config: ReconstructionConfig | None = None) -> None:
        from cadfd_ros.solvers.classical import ClassicalSolver

        self.psf_bank = psf_bank
        self.config = config or ReconstructionConfig()
        self.device = resolve_device(self.config.device)
        self.flat_field = None  # normalised to max 1
        if self.config.flat_field:
            from cadfd_ros.io.images import read_flat_field

            self.flat_field = read_flat_field(self.config.flat_field)
        # For method dps this solver only gives the sampler its start (and the frame's noise), with the
        # sampler's cheaper start parameters; its own estimate is never the output.
        start_params = None
        if self.config.method == "dps":
            from cadfd_ros.solvers.dps import SamplerParams

            start_params = SamplerParams().start_solver_params()
        self.classical = ClassicalSolver(psf_bank, device=self.device, noise_sigma=self.config.noise_sigma,
                                        params=start_params, noise_model=self.config.noise_model)
        self.sampler = None  # the DiffusionPosteriorSampler for method dps
        if self.config.method == "dps":
            from cadfd_ros.solvers.dps import DiffusionPosteriorSampler

            self.sampler = DiffusionPosteriorSampler(psf_bank, self.config.sampler_config(), self.device,
                                                     start_solver=self.classical)
        self._previous: SolverStart | None = None  # the last frame's sampler state (temporal_warm_start)
        self._previous_capture: np.ndarray | None = None  # its capture, to measure the motion since
        self._warm_in_a_row = 0  # warm frames since the last cold one (SamplerParams.warm_refresh_every)

    @property
    def temporal(self) -> bool:
        """Whether frames are warm-started from the previous one (temporal_warm_start with method dps)."""
        return self.config.temporal_warm_start and self.sampler is not None

    def reset_temporal_start(self) -> None:
        """Forget the previous frame: the next one starts cold (after a gap in the stream, a reconfigure)."""
        self._previous, self._previous_capture, self._warm_in_a_row = None, None, 0

    def reconstruct(self, capture: np.ndarray, saturated: np.ndarray | None = None,
                    noise: NoiseModel | None = None) -> Reconstruction:
        """``saturated`` (H x W bool): pixels known to be clipped, e.g. found before binning; by default
        those at or above the saturation level in ``capture``. ``noise``: the capture's noise model (a, b),
        measured where the capture cannot show it (a demosaiced frame's raw mosaic), in the capture's units
        before the black level; by default it is estimated from the capture."""
        start = time.perf_counter()
        capture = check_capture(capture, self.psf_bank)
        capture, saturated = self.prepare(capture, saturated)
        noise = self.prepared_noise(noise)
        if capture.shape[0] * capture.shape[1] > self.config.max_pixels:
            self.reset_temporal_start()  # tiles are solved cold: no previous frame to start from
            result = self._tiled(capture, saturated, None, start, noise)
        else:
            result = self._solve_whole(capture, start, saturated, temporal=self.temporal, noise=noise)
        if saturated is not None:
            result.notes.append(f"{saturated.mean():.1%} of pixels saturated: depth invalid there")
        return result

    def saturation_mask(self, capture: np.ndarray) -> np.ndarray:
        """Pixels (any channel) at or above the saturation level, in the capture before black-level removal."""
        level = self.config.saturation_level or 1.0
        hit = capture >= level * (1.0 - 1e-6)
        return hit.any(axis=2) if hit.ndim == 3 else hit

    def prepare(self, capture: np.ndarray, saturated: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """The saturation mask (None when nothing is clipped), then the black level subtracted and the
        range rescaled so that the saturation level maps to 1."""
        mask = self.saturation_mask(capture) if saturated is None else np.asarray(saturated, bool)
        if mask.shape != capture.shape[:2]:
            raise InputImageError(f"saturation mask {mask.shape} does not match the capture {capture.shape[:2]}")
        black, white = self.config.black_level, self.config.saturation_level or 1.0
        if black > 0 or white < 1.0:
            capture = ((capture - black) / (white - black)).astype(np.float32)
        if self.flat_field is not None:
            capture = (capture / self.flat_for(capture)).astype(np.float32)
        return capture, (mask if mask.any() else None)

    def prepared_noise(self, noise: NoiseModel | None) -> NoiseModel | None:
        """A given noise model in the units ``prepare`` leaves the capture in (black level removed, the
        saturation level at 1). A flat field's division is not applied to it: it is the sensor's noise."""
        if noise is None:
            return None
        from cadfd_ros.solvers.noise import rescale_noise_model

        a, b = float(noise[0]), float(noise[1])
        if not (np.isfinite(a) and np.isfinite(b) and a >= 0 and b > 0):
            raise CadfdError(f"noise model (a, b) must be finite with a >= 0 and b > 0, got ({a}, {b})")
        black, white = self.config.black_level, self.config.saturation_level or 1.0
        return rescale_noise_model((a, b), black, white) if black > 0 or white < 1.0 else (a, b)

    def flat_for(self, capture: np.ndarray) -> np.ndarray:
        """The flat field at the capture's size: as given, or area-binned by an integer factor (the node
        bins frames by input_downscale); mono flats apply to every channel."""
        flat = self.flat_field
        height, width = capture.shape[:2]
        fh, fw = flat.shape[:2]
        factor = fh // height if height else 0
        if (fh, fw) != (height, width):
            if factor < 2 or (fh, fw) != (factor * height, factor * width):
                raise InputImageError(f"flat_field {self.config.flat_field}: {fw}x{fh} does not match the "
                                      f"{width}x{height} capture")
            flat = flat.reshape(height, factor, width, factor, *flat.shape[2:]).mean(axis=(1, 3))
        if flat.ndim == 3 and capture.ndim == 2:
            raise InputImageError(f"flat_field {self.config.flat_field}: RGB flat field for a mono capture")
        return flat[:, :, None] if flat.ndim == 2 and capture.ndim == 3 else flat

    def _warm_solve(self, capture: np.ndarray, saturated: np.ndarray | None, noise: NoiseModel | None = None
                    ) -> tuple[Reconstruction | None, float]:
        """The frame solved from the previous frame's estimate, or None when there is none of this size or
        its data term is above the cut threshold; and that data term (NaN without a previous frame)."""
        if self._previous is None or self._previous_capture is None or self._previous_capture.shape != capture.shape:
            return None, float("nan")
        refresh = self.sampler.params.warm_refresh_every
        if refresh and self._warm_in_a_row >= refresh - 1:  # this frame is the periodic cold one
            return None, float("nan")
        import torch

        from cadfd_ros.forward.operators import image_batch
        from cadfd_ros.solvers.filters import luminance
        from cadfd_ros.solvers.motion import estimate_translation, shift_start

        began = time.perf_counter()
        sigma, _, weight = self.classical.frame_noise(capture, saturated=saturated, noise=noise)
        weight_t = None if weight is None else torch.from_numpy(weight)
        # the previous estimate moved with the scene: a misregistered start costs more than it saves
        dy, dx, _ = estimate_translation(self._previous_capture, capture)
        previous = self._previous
        if max(abs(dy), abs(dx)) <= 0.25 * min(capture.shape[:2]):  # beyond that: no match, the data term decides
            previous = shift_start(previous, dy, dx, self.psf_bank.num_layers)
        term = self.sampler.warm_data_term(capture, previous, sigma, weight_t)
        if not term <= self.sampler.params.warm_cut_data_term:  # a cut or fast motion (NaN included)
            return None, term
        image = previous.padded_image
        y = image_batch(capture, self.sampler.device)
        # the side of focus is this capture's, not the previous frame's: a twin-side error is otherwise handed on
        side = self.classical.side_evidence(luminance(y), sigma)
        if self.sampler.params.warm_start_image in ("deconvolved", "blend"):
            # the sampler's detail comes from its start image: started from its own last output only, it
            # loses a little of it on every frame (SamplerParams.warm_start_image)
            pad = self.sampler.operator(*y.shape[-2:], y.shape[1]).pad
            image_d = self.classical.all_in_focus(y, previous.layer_coord.to(y.device), sigma, pad).cpu()
            image = image_d if self.sampler.params.warm_start_image == "deconvolved" else 0.5 * (image + image_d)
        start = SolverStart(layer_coord=previous.layer_coord, padded_image=image,
                            noise_sigma=sigma, timings={"warm_check": time.perf_counter() - began},
                            evidence_weight=weight_t, side_evidence=side)
        return self.sampler.solve(capture, start, warm=True), term

    def _solve_whole(self, capture: np.ndarray, start: float, saturated: np.ndarray | None = None,
                     temporal: bool = False, noise: NoiseModel | None = None) -> Reconstruction:
        result, term = self._warm_solve(capture, saturated, noise) if temporal else (None, float("nan"))
        if result is None:
            result, solver_start = self.classical.estimate(capture, saturated, noise)
            if self.sampler is not None:
                result = self.sampler.solve(capture, solver_start)
        result.warm_data_term = term
        result.noise_source = self.classical.noise_source(noise)
        if temporal:
            self._previous, self._previous_capture = result.next_start, capture
            self._warm_in_a_row = self._warm_in_a_row + 1 if result.start == "warm" else 0
        result.next_start = None  # the state stays here; the result is the frame's output only
        if self.config.min_confidence > 0:
            result.depth = np.where(result.confidence >= self.config.min_confidence, result.depth, np.nan).astype(
                np.float32
            )
        if saturated is not None:  # their re-blur error is meaningless: no depth, no confidence
            result.depth = np.where(saturated, np.nan, result.depth).astype(np.float32)
            result.confidence = np.where(saturated, 0.0, result.confidence).astype(np.float32)
        result.timings["total"] = time.perf_counter() - start
        return result

    def reconstruct_tiled(self, capture: np.ndarray, tile_size: int | None = None,
                          saturated: np.ndarray | None = None, noise: NoiseModel | None = None) -> Reconstruction:
        """Solve overlapping tiles and blend them with linear ramps across the overlaps.

        The overlap is two PSF widths, so every blended pixel is at least one PSF width from
        the border of the tiles that contribute to it. Peak memory is that of one tile.
        Depth is blended in inverse depth (linear in blur)."""
        start = time.perf_counter()
        capture, saturated = self.prepare(check_capture(capture, self.psf_bank), saturated)
        result = self._tiled(capture, saturated, tile_size, start, self.prepared_noise(noise))
        if saturated is not None:
            result.notes.append(f"{saturated.mean():.1%} of pixels saturated: depth invalid there")
        return result

    def _tiled(self, capture: np.ndarray, saturated: np.ndarray | None, tile_size: int | None,
               start: float, noise: NoiseModel | None = None) -> Reconstruction:
        height, width = capture.shape[:2]
        overlap = 2 * self.psf_bank.kernel_size
        tile = max(tile_size or self.config.tile_size, 2 * overlap + 8)
        rows, cols = _tile_starts(height, tile, overlap), _tile_starts(width, tile, overlap)
        inverse = np.zeros((height, width), np.float64)
        inverse_weight = np.zeros((height, width), np.float64)
        aif = np.zeros(capture.shape, np.float64)
        confidence = np.zeros((height, width), np.float64)
        weight_sum = np.zeros((height, width), np.float64)
        timings: dict[str, float] = {}
        notes: list[str] = []
        residual_sq, parts, network_seconds = 0.0, None, 0.0
        for top in rows:
            for left in cols:
                window = (slice(top, min(top + tile, height)), slice(left, min(left + tile, width)))
                part_mask = None if saturated is None or not saturated[window].any() else saturated[window]
                part = self._solve_whole(capture[window], time.perf_counter(), part_mask, noise=noise)
                ramp = _ramp(part.depth.shape, overlap, top > 0, top + tile < height, left > 0, left + tile < width)
                valid = np.isfinite(part.depth)
                inverse[window] += np.where(valid, ramp / np.where(valid, part.depth, 1.0), 0.0)
                inverse_weight[window] += ramp * valid
                aif[window] += (ramp[:, :, None] if capture.ndim == 3 else ramp) * part.all_in_focus
                confidence[window] += ramp * part.confidence
                weight_sum[window] += ramp
                residual_sq += part.residual**2 * part.depth.size
                network_seconds += part.network_seconds
                for key, value in part.timings.items():
                    timings[key] = timings.get(key, 0.0) + value
                notes.extend(note for note in part.notes if note not in notes)
                parts = part
        with np.errstate(invalid="ignore", divide="ignore"):
            depth = np.where(inverse_weight > 0, inverse_weight / inverse, np.nan)
        aif /= weight_sum[:, :, None] if capture.ndim == 3 else weight_sum
        timings["total"] = time.perf_counter() - start
        return Reconstruction(
            depth=depth.astype(np.float32),
            all_in_focus=aif.astype(np.float32),
            confidence=(confidence / weight_sum).astype(np.float32),
            method=parts.method,
            sampler=parts.sampler,
            steps=parts.steps,
            network_seconds=network_seconds,
            timings=timings,
            residual=float(np.sqrt(residual_sq / (height * width))),
            noise_sigma=parts.noise_sigma,
            noise_source=parts.noise_source,
            notes=notes,
            tiles=len(rows) * len(cols),
            start=parts.start,
        )

    def warmup(self, height: int = 64, width: int = 64, channels: int = 1) -> None:
        """Run one small frame so first-frame latency (allocations, kernels) is paid up front."""
        size = max(height, width, 2 * self.psf_bank.kernel_size)
        shape = (size, size) if channels == 1 else (size, size, 3)
        self.reconstruct(np.full(shape, 0.5, np.float32))
        self.reset_temporal_start()  # the flat warm-up frame is no scene to start from

    def drop_caches(self) -> None:
        """Forget the per-frame-size operators (PSF spectra at that size): after a one-off big
        frame they would hold its memory, over 100 MB at 1000x750, until evicted."""
        self.classical._operators.clear()
        self.classical._null_cache.clear()
        self.reset_temporal_start()

    def release(self) -> None:
        """Drop cached tensors, including GPU memory."""
        self.sampler = None
        self.reset_temporal_start()
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()
