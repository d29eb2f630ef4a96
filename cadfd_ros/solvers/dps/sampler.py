"""``DiffusionPosteriorSampler``: the prior on its device, the per-frame context, the time budget, and ``sample()``,
the loop over ``steps.STEPS`` with the final exact data step and depth update."""
from __future__ import annotations

import logging
import time
from dataclasses import astuple, dataclass, replace

import numpy as np
import torch

from cadfd_ros.errors import CadfdError
from cadfd_ros.forward.layers import layer_coord_to_depth, soft_layer_weights
from cadfd_ros.forward.operators import LayeredBlur, image_batch
from cadfd_ros.optics.psf_bank import PSFBank
from cadfd_ros.result import Reconstruction, SolverStart
from cadfd_ros.solvers.classical import ClassicalSolver
from cadfd_ros.solvers.dps import data_steps, depth_evidence, steps as sampler_steps
from cadfd_ros.solvers.dps.depth_evidence import MarginalEvidence, capture_signal
from cadfd_ros.solvers.dps.params import SamplerConfig, SamplerParams
from cadfd_ros.solvers.dps.state import FrameContext, SampleOutput, SamplerState, SamplerTrace, StageClock
from cadfd_ros.solvers.filters import luminance
from cadfd_ros.solvers.schedule import PosteriorScheduler

_log = logging.getLogger(__name__)


def default_network_dtype(device: torch.device) -> torch.dtype:
    """bf16 autocast on CUDA and on CPUs with native bf16 (oneDNN): on the 2-core AVX512-BF16 machine a
    160x120 RGB call took 0.62x the fp32 time, and the camera matrix (tuning photos, 20 steps) moved by
    at most 0.001 in delta and 0.01 dB (scripts/bench_cpu_network.py, README). fp32 elsewhere."""
    if device.type == "cuda":
        return torch.bfloat16
    if device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.bfloat16
    return torch.float32


def default_network_memory_format(device: torch.device) -> torch.memory_format:
    """channels-last on CPU, where oneDNN's convolutions prefer it: on the 2-core AMD EPYC (fp32) one call
    on a 160x120 RGB frame took 111 ms instead of 127, mono 117 instead of 127, 320x240 RGB 379 instead of
    417 (5 alternating rounds of 10 calls; outputs within 1e-5); 0.91x on the first machine in fp32.
    Contiguous on CUDA until a GPU measures it."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


class _CountingDenoiser:
    """The prior's noise prediction under the device's autocast and memory format, counted so the step
    budget can be verified exactly."""

    def __init__(self, prior, device: torch.device, dtype: torch.dtype | None = None) -> None:
        prior.set_memory_format(default_network_memory_format(device))
        self.prior = prior
        self.device = device
        self.dtype = dtype if dtype is not None else default_network_dtype(device)
        self.count = 0
        self.seconds = 0.0  # wall time inside the network; CUDA is synchronised around each call

    def __call__(self, x_t: torch.Tensor, t: int) -> torch.Tensor:
        self.count += 1
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
        began = time.perf_counter()
        reduced = self.dtype != torch.float32
        with torch.autocast(self.device.type, dtype=self.dtype if reduced else None, enabled=reduced):
            out = self.prior.predict_noise(x_t, t).float()
        if cuda:
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - began
        return out


@dataclass(frozen=True)
class FrameCosts:
    """Seconds one cold diffpir frame of a size spent, split so a time budget can price any step count: per network
    call, per step outside it (the prox data step), per depth update, per exact data step, and once (the frame's
    context and what no stage clock holds). Measured on the cold frames of that size
    (``DiffusionPosteriorSampler.frame_costs``)."""

    call_s: float
    step_s: float
    depth_update_s: float
    exact_step_s: float
    once_s: float


def first_frame_costs(call_s: float, channels: int) -> FrameCosts:
    """A frame size's costs before any cold frame of it was measured: ratios to one timed network call, the upper
    end of what the speed bench measured from 160x120 to 640x480 (2026-12-07, 2-core EPYC, bf16 network), so a
    first frame ends early rather than late. The evidence and the data steps run per colour channel, the network
    once: mono a depth update 0.26-0.44 calls and an exact step 0.8-2.0, RGB 0.67-1.35 and 2.0-4.2. With the
    middle of those ranges (one set for both), first RGB frames ran 13-16% over their budget."""
    if channels == 1:
        return FrameCosts(call_s=call_s, step_s=0.1 * call_s, depth_update_s=0.45 * call_s,
                          exact_step_s=2.0 * call_s, once_s=0.1 * call_s)
    return FrameCosts(call_s=call_s, step_s=0.3 * call_s, depth_update_s=1.4 * call_s,
                      exact_step_s=4.2 * call_s, once_s=0.2 * call_s)


class DiffusionPosteriorSampler:
    """Joint depth and all-in-focus sampler; the prior is loaded once and kept on the device.

    ``start_solver`` gives the start when ``solve`` gets none (the pipeline passes its classical
    solver, so there is one). The caller chooses torch's thread count. Its network calls set the prior (a
    passed-in one too) to the device's memory format (``default_network_memory_format``)."""

    def __init__(self, psf_bank: PSFBank, config: SamplerConfig | None = None, device: str = "cpu",
                 params: SamplerParams | None = None, prior=None, start_solver: ClassicalSolver | None = None
                 ) -> None:
        from cadfd_ros.prior import load_prior

        self.bank = psf_bank
        self.config = config or SamplerConfig()
        self.device = torch.device(device)
        self.params = params or SamplerParams()
        self.sampler = self.config.sampler_name
        self.prior = prior if prior is not None else load_prior(self.config.prior, device=self.device)
        self.start_solver = start_solver
        self._operators: dict[tuple[int, int, int], LayeredBlur] = {}
        self._network_seconds: dict[tuple[int, int, int], float] = {}
        self._frame_costs: dict[tuple[int, int, int], FrameCosts] = {}  # measured; priced by steps_for_budget
        self.network_dtype: torch.dtype | None = None  # None: default_network_dtype(device)
        self.smallest_psf_px = float(psf_bank.effective_diameters_px().min())  # fixed with the bank

    # ------------------------------------------------------------------ helpers
    @property
    def final_proximal_weight(self) -> float | None:
        """The last data step's weight for this bank (SamplerParams.final_proximal_weight and its near-focus twin)."""
        p = self.params
        return p.final_proximal_weight_near_focus if self.reaches_focus else p.final_proximal_weight

    @property
    def evidence_prior_stds(self) -> tuple[float, ...]:
        """The depth evidence's candidate taus for this bank (SamplerParams.evidence_prior_stds and its near-focus twin)."""
        p = self.params
        return p.evidence_prior_stds_near_focus if self.reaches_focus else p.evidence_prior_stds

    @property
    def reaches_focus(self) -> bool:
        """Whether a layer's PSF is under ``SamplerParams.near_focus_psf_px`` across (near a point)."""
        return self.smallest_psf_px < self.params.near_focus_psf_px

    def operator(self, height: int, width: int, channels: int) -> LayeredBlur:
        key = (height, width, channels)
        if key not in self._operators:
            psfs = torch.from_numpy(self.bank.psfs_for_channels(channels)).to(self.device)
            self._operators = {key: LayeredBlur(psfs, height, width)}  # keep one size: bounded memory
        return self._operators[key]

    def frame_context(self, y: torch.Tensor, noise_sigma: float, evidence_weight: torch.Tensor | None = None,
                      side_evidence: torch.Tensor | None = None) -> FrameContext:
        """The frozen per-frame context of capture y (1, C, H, W); ``evidence_weight`` (H, W) leaves
        clipped pixels out of the depth evidence; ``side_evidence`` joins every depth update's evidence."""
        op = self.operator(y.shape[-2], y.shape[-1], y.shape[1])
        spectra = op.capture_spectra(y)
        bounded = self.params.evidence == "bounded"
        evidence_sigma = self.params.evidence_sigma(noise_sigma)
        signal = capture_signal(spectra, evidence_sigma) if bounded else None
        return FrameContext(capture=y, operator=op, spectra=spectra,
                            evidence=tuple(MarginalEvidence.from_spectra(
                                spectra, tau / evidence_sigma, evidence_sigma if bounded else None,
                                self.params.evidence_bound_scale, self.params.evidence_bound_floor, signal)
                                for tau in self.evidence_prior_stds),
                            guide=luminance(y), noise_sigma=noise_sigma, params=self.params,
                            layer_depths=torch.from_numpy(self.bank.depths).to(self.device),
                            evidence_weight=None if evidence_weight is None else
                            evidence_weight.to(self.device, torch.float32).view(1, 1, *y.shape[-2:]),
                            side_evidence=None if side_evidence is None else side_evidence.to(self.device),
                            exact_step_weight=self.final_proximal_weight)

    @staticmethod
    def _size_key(capture_shape: tuple[int, ...]) -> tuple[int, int, int]:
        return (capture_shape[0], capture_shape[1], 1 if len(capture_shape) == 2 else 3)

    def network_seconds(self, capture_shape: tuple[int, ...], repeats: int = 1, cached: bool = True) -> float:
        """Time of one prior network call on this capture size (after a warm-up call); cached per
        size, so a stream of frames pays for the measurement once."""
        key = self._size_key(capture_shape)
        height, width, channels = key
        if cached and key in self._network_seconds:
            return self._network_seconds[key]
        op = self.operator(height, width, channels)
        x = torch.zeros(1, channels, *op.padded_shape, device=self.device)
        denoiser = _CountingDenoiser(self.prior, self.device, self.network_dtype)
        with torch.no_grad():
            denoiser(x, 10)  # warm-up
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(repeats):
                denoiser(x, 10)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
        self._network_seconds[key] = (time.perf_counter() - start) / repeats
        return self._network_seconds[key]

    def frame_costs(self, capture_shape: tuple[int, ...]) -> FrameCosts | None:
        """The costs measured on the cold diffpir frames of this size (each frame's averaged with the record
        before it), or None before one."""
        return self._frame_costs.get(self._size_key(capture_shape))

    def _record_frame_costs(self, capture_shape: tuple[int, ...], trace: SamplerTrace, other_s: float = 0.0) -> None:
        """Split a cold frame's measured seconds into ``FrameCosts`` (diffpir; the dps sampler's per-step cost
        is its network call with gradients, priced by the constants in ``predicted_seconds``)."""
        steps, stage = trace.network_evaluations, trace.stage_seconds
        if self.sampler != "diffpir" or steps < 1 or "final_data_step" not in stage:
            return
        exact_steps = 1 + int("midway_data_step" in stage)
        updates = len(trace.data_timesteps) + int(self.params.final_depth_update)
        measured = FrameCosts(
            call_s=trace.network_seconds / steps,
            step_s=stage.get("data_step", 0.0) / steps,
            depth_update_s=stage.get("depth", 0.0) / max(1, updates),
            exact_step_s=(stage["final_data_step"] + stage.get("midway_data_step", 0.0)) / exact_steps,
            once_s=stage.get("frame_context", 0.0) + other_s)
        key = self._size_key(capture_shape)
        previous = self._frame_costs.get(key)
        if previous is not None:  # one frame's timings jitter by 10-20% on a shared CPU: average with the last
            measured = FrameCosts(*(0.5 * (a + b) for a, b in zip(astuple(previous), astuple(measured))))
        self._frame_costs[key] = measured

    def predicted_seconds(self, capture_shape: tuple[int, ...], steps: int, warm: bool = False) -> float:
        """The sampler's seconds for a frame of this size at ``steps`` (the start not included): priced from
        the cold frames of this size (``frame_costs``) or, before one, from the timed network call and the ratios
        of ``first_frame_costs``. ``warm``: a warm frame, which also refits its start image by an exact data step
        (``SamplerParams.warm_exact_step``)."""
        p = self.params
        costs = self.frame_costs(capture_shape)
        if costs is None:
            call = self.network_seconds(capture_shape)
            if self.sampler == "dps":  # gradients through the network, a depth step every step (README)
                return steps * 3.0 * call + 2.5 * call
            costs = first_frame_costs(call, self._size_key(capture_shape)[2])
        updates = len(sampler_steps.depth_update_steps(steps, p.depth_every, p.depth_updates_max, p.depth_updates_min))
        updates += int(p.final_depth_update)
        midway = p.midway_exact_step and data_steps.midway_step(steps) is not None
        exact_steps = 1 + int(midway) + int(warm and p.warm_exact_step)
        return (costs.once_s + steps * (costs.call_s + costs.step_s) + updates * costs.depth_update_s
                + exact_steps * costs.exact_step_s)

    def steps_for_budget(self, capture_shape: tuple[int, ...], budget_ms: float, spent_ms: float = 0.0,
                         warm: bool = False) -> tuple[int, str | None]:
        """Largest step count whose predicted time (``predicted_seconds``, a warm frame's with ``warm``) fits what
        is left of the budget after ``spent_ms`` (the classical start or the warm check, the timing call); at
        least one, with a warning then."""
        left_s = 1e-3 * (budget_ms - spent_ms)
        steps = 0  # the predicted time never falls as steps grow (depth updates and exact steps only get added)
        while steps < 1000 and self.predicted_seconds(capture_shape, steps + 1, warm) <= left_s:
            steps += 1
        warning = None
        if steps < 1:
            warning = (f"time budget {budget_ms:.0f} ms is below one {'warm ' if warm else ''}sampler step at "
                       f"{'x'.join(map(str, capture_shape))} (about {spent_ms:.0f} ms spent, "
                       f"{1e3 * self.predicted_seconds(capture_shape, 1, warm):.0f} ms for one step and its exact "
                       f"data steps): running 1 step")
        return max(1, steps), warning

    # ------------------------------------------------------------------ main entry
    def solve(self, capture: np.ndarray, start: SolverStart | None = None, warm: bool = False) -> Reconstruction:
        return self.solve_with_trace(capture, start, warm)[0]

    @torch.no_grad()
    def warm_data_term(self, capture: np.ndarray, previous: SolverStart, noise_sigma: float,
                       evidence_weight: torch.Tensor | None = None) -> float:
        """RMS of capture - A(previous image, previous depth), divided by the noise sigma: about 1 when the
        previous frame's estimate still explains this capture, large after a cut or fast motion. Clipped
        pixels (``evidence_weight`` 0) are left out."""
        y = image_batch(capture, self.device)
        if tuple(previous.layer_coord.shape[-2:]) != tuple(y.shape[-2:]):
            raise CadfdError(f"warm start: the previous frame is {tuple(previous.layer_coord.shape[-2:])}, "
                             f"the capture {tuple(y.shape[-2:])}")
        op = self.operator(*y.shape[-2:], y.shape[1])
        x = previous.padded_image.to(self.device, torch.float32)
        weights = soft_layer_weights(previous.layer_coord.to(self.device, torch.float32), op.num_layers)
        residual = op(x, weights) - y
        if evidence_weight is None:
            mean_square = torch.mean(residual**2)
        else:
            w = evidence_weight.to(self.device, torch.float32).view(1, 1, *y.shape[-2:])
            mean_square = (residual**2 * w).sum() / (w.sum() * y.shape[1]).clamp(min=1.0)
        return float(torch.sqrt(mean_square)) / noise_sigma

    def solve_with_trace(self, capture: np.ndarray, start: SolverStart | None = None, warm: bool = False
                         ) -> tuple[Reconstruction, SamplerTrace]:
        """``warm``: ``start`` is the previous frame's estimate, refined from ``params.warm_start_sigma`` in
        ``params.warm_steps`` evaluations (or fewer, when a time budget allows fewer)."""
        entered = time.perf_counter()
        if warm and start is None:
            raise CadfdError("a warm start needs the previous frame's estimate (start)")
        if start is None:
            if self.start_solver is None:
                self.start_solver = ClassicalSolver(self.bank, device=str(self.device),
                                                    noise_sigma=self.config.noise_sigma,
                                                    params=self.params.start_solver_params())
            _, start = self.start_solver.estimate(capture)
            entered = time.perf_counter()  # the start's time is counted from its timings
        timings = dict(start.timings)
        sigma_y = float(self.config.noise_sigma or start.noise_sigma)
        steps, notes = (self.params.warm_steps if warm else self.config.steps), []
        if self.config.time_budget_ms is not None:
            self.network_seconds(capture.shape)  # timed once per frame size: spent from this budget too
            spent_ms = 1e3 * (sum(start.timings.values()) + time.perf_counter() - entered)
            budget_steps, budget_warning = self.steps_for_budget(capture.shape, self.config.time_budget_ms, spent_ms,
                                                                 warm)
            steps = min(steps, budget_steps) if warm else budget_steps
            if budget_warning:
                _log.warning(budget_warning)
                notes.append(budget_warning)
        began = time.perf_counter()
        y = image_batch(capture, self.device)
        out = self.sample(y, start.padded_image.to(self.device, torch.float32),
                          start.layer_coord.to(self.device, torch.float32), sigma_y, steps,
                          evidence_weight=start.evidence_weight,
                          start_sigma=self.params.warm_start_sigma if warm else None,
                          side_evidence=start.side_evidence, refit_start=warm and self.params.warm_exact_step)
        timings["dps"] = time.perf_counter() - began
        timings.update({f"dps_{name}": value for name, value in out.trace.stage_seconds.items()})
        op = self.operator(*y.shape[-2:], y.shape[1])
        with torch.no_grad():
            weights = soft_layer_weights(out.layer_coord, self.bank.num_layers)
            residual = float(torch.sqrt(torch.mean((op(out.x0, weights) - y) ** 2)))
        depth = layer_coord_to_depth(out.layer_coord.double(),
                                     torch.from_numpy(self.bank.depths).double().to(self.device))
        aif = op.crop_image(out.x0)[0].permute(1, 2, 0).cpu().numpy()
        result = Reconstruction(
            depth=depth[0].float().cpu().numpy(),
            all_in_focus=np.ascontiguousarray(aif[:, :, 0] if capture.ndim == 2 else aif, dtype=np.float32),
            confidence=out.confidence[0].float().cpu().numpy(),
            method="dps",
            sampler=self.sampler,
            steps=out.trace.network_evaluations,
            network_seconds=out.trace.network_seconds,
            timings=timings,
            residual=residual,
            noise_sigma=sigma_y,
            notes=notes,
            start="warm" if warm else self.params.start,
            next_start=SolverStart(layer_coord=out.layer_coord, padded_image=out.x0, noise_sigma=sigma_y),
        )
        # what no stage clock holds (noise draws, the schedule, conversions to the result): priced once a frame
        timings["dps_other"] = max(0.0, time.perf_counter() - began - out.trace.network_seconds
                                   - sum(out.trace.stage_seconds.values()))
        if not warm:
            self._record_frame_costs(capture.shape, out.trace, timings["dps_other"])
        return result, out.trace

    def sample(self, y: torch.Tensor, x_init: torch.Tensor, coord_init: torch.Tensor, sigma_y: float, steps: int,
               evidence_weight: torch.Tensor | None = None, start_sigma: float | None = None,
               side_evidence: torch.Tensor | None = None, refit_start: bool = False) -> SampleOutput:
        """Run the sampler. y (1,C,H,W) linear; x_init (1,C,Hp,Wp) linear; coord_init (1,H,W). ``start_sigma``:
        the model-space noise level x_init is noised to (a warm start's); None: ``params.start``'s rule.
        ``side_evidence``: the start's side-of-focus score (``ClassicalSolver.side_evidence``). ``refit_start``:
        x_init first goes through the exact data step at coord_init (SamplerParams.warm_exact_step)."""
        p, prior = self.params, self.prior
        denoiser = _CountingDenoiser(prior, self.device, self.network_dtype)
        generator = torch.Generator(device=self.device).manual_seed(int(self.config.seed))
        clock = StageClock(self.device)
        with clock("frame_context"):
            ctx = self.frame_context(y, sigma_y, evidence_weight, side_evidence)
        if start_sigma is not None and ctx.exact_step_weight is not None:  # a warm frame (warm_exact_step_weight_scale)
            ctx = replace(ctx, exact_step_weight=ctx.exact_step_weight * p.warm_exact_step_weight_scale,
                          params=replace(p, final_shrink_strength=p.warm_shrink_strength))
        if refit_start and ctx.exact_step_weight is not None:
            with torch.no_grad(), clock("data_step"):
                x_init = data_steps.exact_data_step(ctx, x_init.clamp(0, 1), coord_init)[0]
        if start_sigma is not None:
            t_start = prior.timestep_for_sigma(start_sigma)
        else:
            t_start = prior.num_train_timesteps - 1 if p.start == "noise" else prior.timestep_for_sigma(p.start_sigma)
        scheduler = PosteriorScheduler.from_start(prior.alphas_cumprod, t_start, steps)
        x0_model = prior.to_model_space(x_init.clamp(0, 1))
        noise = torch.randn(x0_model.shape, generator=generator, device=self.device)
        state = SamplerState(scheduler.add_noise(x0_model, noise, scheduler.timesteps[0]), x_init, coord_init.clone())
        step = sampler_steps.STEPS[self.sampler]
        trace = SamplerTrace()
        for index, t in enumerate(scheduler.timesteps):
            out = step(ctx, state, scheduler, index, denoiser, prior, generator, clock)
            state = out.state
            if out.data_term is not None:
                trace.data_timesteps.append(int(t))
                trace.data_term.append(out.data_term)
            trace.timesteps.append(int(t))
        x0 = state.x0
        with torch.no_grad(), clock("final_data_step"):
            if ctx.exact_step_weight is not None:
                # The last steps' rho_t is so large that x0 is the prior's estimate; one moderate data
                # step regularised towards it (not towards smoothness) restores detail the prior lost.
                x0, trace.final_cg_iterations = data_steps.exact_data_step(ctx, x0, state.layer_coord)
        with torch.no_grad(), clock("depth"):
            layer_coord, confidence = state.layer_coord, state.confidence
            # diffpir (its last step's update gave a confidence): depth read once more from the final image; the dps
            # sampler: the final estimate's evidence for its confidence only
            final_update = p.final_depth_update and confidence is not None
            if final_update or confidence is None:
                error, blurred = depth_evidence.image_layer_error(ctx, x0)
                coord, _, confidence = depth_evidence.depth_update(ctx, blurred, layer_coord, state.evidence,
                                                                   error=error)
                if final_update:
                    layer_coord = coord
        trace.network_evaluations = denoiser.count
        trace.network_seconds = denoiser.seconds
        trace.stage_seconds = clock.seconds
        return SampleOutput(x0.detach(), layer_coord.detach(), confidence, trace)
