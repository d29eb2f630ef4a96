"""DFD-DPS: joint depth and all-in-focus reconstruction by diffusion posterior sampling
(Kawachi et al., IEEE TCI 2026).

Unknowns: the all-in-focus image x (carried through the sampler on the frame padded by half
a PSF, see ``LayeredBlur``) and a continuous layer coordinate u per pixel (continuous inverse
depth over the bank's range), mapped to soft layer weights. Each step:

1. Tweedie estimate x0 = E[x | x_t] from the prior (one network evaluation);
2. depth update on x0 (every ``depth_every`` steps and at the last, at least ``depth_updates_min`` and
   optionally at most ``depth_updates_max`` of them, spread evenly): per-pixel layer evidence
   in local windows, regularised edge-aware by the classical solver's algorithm with smaller
   windows, or gradient steps on u through the soft weights. The evidence is the Gaussian
   marginal likelihood of the capture under layer k with x ~ N(x0, tau^2 I): the residual
   y - h_k * x0 whitened by (tau^2 |H_k|^2 + sigma^2)^-1/2, plus the per-layer log-determinant, each
   layer in each window at the candidate tau (x0's error) that explains the capture best.
   Without it (the plain residual) a smooth x0 is best explained by the smallest PSF and depth
   drifts near;
3. data consistency for the image through the blur-then-mask model;
4. re-noise to the next timestep.

Samplers:
* ``diffpir`` (default, by benchmark): no backpropagation through the network; the data step
  solves for x with a proximal pull towards the prior's estimate, per layer in closed form in
  the Fourier domain (Zhu et al., DiffPIR 2023), then
  x_{t-1} = sqrt(abar) x0' + sqrt(1-abar)(sqrt(1-zeta) eps_hat + sqrt(zeta) eps).
* ``dps``: Chung et al. (ICLR 2023); the image step is -zeta grad_{x_t} ||y - A(x0(x_t))|| through
  the network, and depth gets its own step on the same loss (BlindDPS-style).

After the last step one data step regularised towards the final estimate restores detail the
prior smoothed away: the per-layer Fourier prox, refined by preconditioned conjugate gradients
on the exact layered model (the per-layer blend is inexact across depth edges).

``steps`` is the exact number of network evaluations, on a respaced schedule that starts
from the classical estimate noised to ``start_sigma`` (SDEdit) or from pure noise.

Structure, as a diffusers pipeline: a frozen per-frame ``FrameContext`` (capture, operator, spectra,
guide, sigma), a small explicit ``SamplerState`` (x_t, x0, layer coordinate, evidence), the
``PosteriorScheduler`` for the re-noising rules, and one step function per sampler that returns a
``StepOutput``. ``sample()`` is the loop; it returns the estimate and its trace.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import astuple, dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from cadfd_ros.errors import CadfdError
from cadfd_ros.forward.layers import layer_coord_to_depth, soft_layer_weights
from cadfd_ros.forward.operators import CaptureSpectra, LayeredBlur, image_batch, squared_magnitude
from cadfd_ros.optics.psf_bank import PSFBank
from cadfd_ros.params import PARAM_BY_NAME
from cadfd_ros.result import Reconstruction, SolverStart
from cadfd_ros.solvers.classical import (ClassicalParams, ClassicalSolver, add_side_evidence, depth_from_evidence,
                                         within_delta_window)
from cadfd_ros.solvers.filters import gaussian_blur, guided_filter, luminance
from cadfd_ros.solvers.schedule import PosteriorScheduler

_log = logging.getLogger(__name__)

DEFAULT_SAMPLER = "diffpir"
DEPTH_UPDATES = ("evidence", "gradient", "fixed")  # fixed: keep the start's depth (the bench's AIF ceiling)
EVIDENCE_MODELS = ("marginal", "bounded", "residual")
WARM_START_IMAGES = ("blend", "deconvolved", "previous")


@dataclass(frozen=True)
class SamplerConfig:
    """The user's options for the sampler (the node's and CLI's solver parameters)."""

    sampler: str = "auto"
    steps: int = PARAM_BY_NAME["steps"].default  # exact number of prior network evaluations (README: the curve)
    time_budget_ms: float | None = None  # picks ``steps`` to fit
    seed: int = 0
    noise_sigma: float | None = None  # None: the start's (estimated) sigma
    prior: str = "default"

    def __post_init__(self) -> None:
        for name in ("sampler", "steps", "seed"):
            PARAM_BY_NAME[name].check(getattr(self, name))
        for name in ("time_budget_ms", "noise_sigma"):
            if getattr(self, name) is not None:
                PARAM_BY_NAME[name].check(getattr(self, name))

    @property
    def sampler_name(self) -> str:
        return DEFAULT_SAMPLER if self.sampler == "auto" else self.sampler


@dataclass(frozen=True)
class SamplerParams:
    """Tuned constants, on the bench's tuning scenes only."""

    start: str = "classical"  # classical (SDEdit from the classical estimate) | noise
    # Model-space noise level the classical start is noised to. Camera matrix (7 cameras, not the VGA one, tuning
    # photos, 8 steps, seed 0), mean delta / AIF: 0.5 0.671 / 24.24 dB, 0.8 0.672 / 24.26, 1.2 0.665 / 24.19
    start_sigma: float = 0.8
    # Sparse-deconvolution (HQS) iterations of the classical start's depth evidence: the classical method's
    # schedule (ClassicalParams.hqs_iterations, 6) stopped early. The first depth update (step 0) re-decides
    # depth from x0 and the start image is noised to start_sigma, so the sampler needs only a rough start.
    # Bundled bench (18 scenes, 320x240, 8 steps), paired against 6: at 3 delta -0.000 +- 0.001, AbsRel
    # +0.001 +- 0.001, PSNR -0.01 +- 0.01 dB; at 0 (Tikhonov evidence, 7x cheaper) +0.002, +0.006 +- 0.005,
    # -0.04 +- 0.02 dB. Camera matrix, tuning photos (<= 200 px, 8 steps), mean delta / AIF - capture: 6
    # 0.582 / +1.69 dB, 3 0.578 / +1.66, 0 0.580 / +1.71. 3 halves the start's evidence time.
    start_deconvolution_iterations: int = 3
    # The start's sparse-prior weight (ClassicalParams.sparse_weight, 4.5 for the classical method): the start's image,
    # not its depth, is what the sampler keeps, and 4.5 there cost DFD-DPS delta on every camera tried (tuning photos,
    # seed 0: behind-f5.6 0.767 -> 0.748, -0.34 dB; bundled 0.779 -> 0.775; three others -0.001 to -0.004). At 2 the
    # mean over 7 cameras (not the VGA one) is 0.673 / 24.25 dB against 0.672 / 24.26 at 3: flat below 3
    start_sparse_weight: float = 3.0
    zeta: float = 0.3  # diffpir: share of fresh noise when re-noising; dps: image step size
    data_step: str = "prox"  # diffpir: prox (exact per-layer Fourier solve) | gradient
    data_steps: int = 1  # gradient data step: iterations per diffusion step
    data_step_size: float = 1.5  # gradient data step, in units of 1/L, L = ||A||^2 <= 1
    # rho_t = this / sigma_t^2, not DiffPIR's lambda sigma_y^2 / sigma_t^2: the best lambda fell with the
    # capture noise (tuning scenes: 200 at 0.005, 50 at 0.01, 12.5 at 0.02), i.e. lambda sigma_y^2 ~ const
    proximal_strength: float = 5e-3
    # Skip the per-step data step where rho_t exceeds this: it then moves x0 by about 1/rho_t of the
    # residual, and the final data step fits the capture anyway. Only the last step's (rho_t ~ 200) is
    # skipped at 4-20 steps; camera matrix mean delta and AIF unchanged (skipping from 0.1: -0.008). None: never
    proximal_max_rho: float | None = 10.0
    # Last data step, rho = this * sigma_y^2 (None: keep x0), for banks whose every layer is blurred; a bank that
    # reaches focus (a layer's PSF under ``near_focus_psf_px``, PSFBank.effective_diameters_px) takes the second,
    # a stronger pull towards x0: there depth is often wrong in ways the data cannot see (a PSF's 180-degree twin
    # across focus, sub-pixel blur steps near it), and the step deconvolves with that depth. On the camera matrix
    # (tuning photos, 4 steps, seed 0) the four banks reaching focus were best at 200 (+0.07 to +0.10 dB and
    # SSIM +0.004 to +0.012 over 100). The blurred ones were best at 50 in PSNR (+0.1 to +0.2 dB) but the bundled
    # bench's SSIM fell 0.002 there, so they keep 100. The smallest PSF is 1.13 px (a point) or 7.3 px and more
    # in that matrix, so the threshold between is not set by these data.
    final_proximal_weight: float | None = 100.0
    final_proximal_weight_near_focus: float | None = 200.0
    near_focus_psf_px: float = 3.0
    final_cg_iterations: int = 30  # refine the last data step on the exact layered model: at most this many (0: off)
    final_cg_tolerance: float = 2e-2  # ... stopping once the preconditioned residual falls by this factor
    # Last data step: also pull the gradients towards x0, weight rho * this. With a small PSF (|H| ~ 1 up to high
    # frequencies) the plain pull gave the capture noise back: on the camera matrix (tuning photos) the image
    # fell below the raw capture in SSIM on 4 of 8 cameras. At 1: SSIM +0.02 to +0.13 on every camera,
    # PSNR +0.3 to +1.2 dB where blurs are small, within 0.1 dB where they are large (16 and 4: more loss there)
    final_gradient_weight: float = 1.0
    # Last data step: its correction to x0 is shrunk per pixel by a local Wiener gain, max(0, 1 - s N / P): P the
    # correction's power in a Gaussian window (this sigma, px), N the power the step gives the capture noise at the
    # pixel's layers, s the strength below (shrink_correction). Where x0 is flat the step only adds noise: on
    # just-behind-focus (sigma 0.005) it took the flat regions' SSIM from the prior's 0.94 to 0.76 (rocket).
    # Camera matrix, tuning photos, 8 steps, seed 0, AIF PSNR / SSIM mean over 8 cameras: off 25.16 / 0.657;
    # (2 px, 0.5) 25.24 / 0.672, SSIM up on all 8, PSNR -0.01 to +0.22 dB (bundled +0.00); (2, 1) 25.23 / 0.675 but
    # bundled -0.03 dB, eight-layers-alt-mask -0.05; (3, 0.5) 25.23 / 0.672. None: off
    final_shrink_window: float | None = 2.0
    final_shrink_strength: float = 0.5
    # The final data step (prox, conjugate gradients, shrink) also once midway, after step steps // 2 - 1 (from 2
    # steps; diffpir), its image re-noised and refined by the prior in the steps left. The per-step prox inverts each
    # layer alone, not the blend of layers, and the sampler keeps most of what its image holds (0.64-0.90 of the
    # start image's error, on the sequence video), so the exact solve is worth feeding back once. Camera matrix, tuning
    # photos, 4 steps, seed 0, mean delta / AIF / SSIM of DFD-DPS: off 0.668 / 25.34 dB / 0.678; after step 0 0.670 /
    # 25.39 / 0.681; step 1 0.670 / 25.42 / 0.683, no camera's image lower; step 2 0.673 / 25.41 / 0.679 (straddle-
    # rgb-13 -0.10 dB); steps 0, 1 0.672 / 25.45 / 0.684; 1, 2 0.675 / 25.46 / 0.682; 0, 1, 2 0.675 / 25.47 / 0.682.
    # At seed 1, step 1: 0.701 / 25.55 / 0.693 -> 0.705 / 25.66 / 0.698. One solve costs what the final step does.
    midway_exact_step: bool = True
    # One more depth update (diffpir), on the final image: the exact data step sharpens x0 after the last
    # update read depth from it. Costs one evidence volume, no network evaluation. Tuning photos, 4 steps, mean
    # DFD-DPS delta seed 0 / 1: 0.670 / 0.704 -> 0.676 / 0.708 (bundled +0.016 / +0.005, just-behind-focus +0.013 /
    # +0.007; front-of-focus-circle -0.002 / -0.004). Re-solving the image at the new depth as well: +0.017 dB for
    # a second exact solve, not taken.
    final_depth_update: bool = True
    depth_update: str = "evidence"
    # marginal: whitened residual + log-det, x0 ~ N(x_true, tau^2) at every frequency; bounded: the same with the
    # error of h_k*x0 bounded per frequency by the capture's signal power (MarginalEvidence.from_spectra);
    # residual: |y - h_k*x0|^2 / sigma^2. Camera matrix, tuning photos (8 cameras x 8 scenes, 8 steps), mean
    # delta 0.623 marginal -> 0.637 bounded (front-of-focus-circle 0.417 -> 0.500, straddle-mono16-9 0.505 ->
    # 0.538, straddle-rgb-13 0.451 -> 0.474; behind-f5.6 0.783 -> 0.767, sixteen-layers 0.698 -> 0.682), AIF
    # 25.01 -> 25.06 dB
    evidence: str = "bounded"
    # tau: the uncertainty of x0 in the marginal evidence, in linear intensity. It was 15 sigma_y, tuned on the
    # bundled camera at sigma 0.01; the error of the prior's estimate does not grow with the capture noise, and at
    # sigma 0.02-0.03 that tau (0.3-0.45) let the log-determinant push every pixel to the largest PSFs. Camera
    # matrix, tuning photos (astronaut, coffee, camera, brick at <= 200 px), 20 steps, with the final gradient
    # pull: mean delta over 8 cameras 0.543 at tau 0.1, 0.565 at 0.125, 0.581 at 0.15, 0.576 at 0.2. With the bounded
    # evidence (all 8 tuning photos, 8 steps): 0.610 at 0.1, 0.637 at 0.15, 0.614 at 0.2 (0.1 suits small blurs and
    # high noise, 0.2 large blurs: a trade between cameras, not a better value). Swept per camera (tuning photos, 8
    # steps, 0.07-0.2) each camera had its own best tau, unrelated to sigma, and neither a moment estimate of x0's
    # error nor the frame's likeliest tau found it (README). Several values: the profile likelihood, each layer in
    # each evidence window at the tau under which it explains the capture best (the minimum of their window
    # energies). Tuning photos, 8 cameras, 8 steps, seed 0, mean delta: 0.650 at 0.15 alone; (0.1, 0.2) 0.671, 7 of
    # 8 cameras up (front-of-focus-circle 0.495 -> 0.604, sixteen-layers 0.682 -> 0.702) and just-behind-focus
    # (sigma 0.005) 0.702 -> 0.633; (0.1, 0.15, 0.2) 0.672; (0.05, 0.1, 0.2, 0.4) 0.675 but just-behind-focus 0.580.
    # (0.1, 0.2) for the smallest loss on any camera. One tau per window for all its layers (the window's likeliest)
    # lost more on that camera: 0.621 with (0.1, 0.2), 0.546 with the four.
    # Per bank, as the final step's weight (near_focus_psf_px): a larger candidate where every layer is blurred, whose
    # x0 carries more error, and none where a layer is near a point, whose log-determinant a large tau inflates
    # (the sharp layers then read as blurrier ones). Tuning photos, 4 steps, with the final depth update, adding 0.3:
    # the blurred banks delta / AIF at seed 0 | 1 bundled -0.001 / +0.02 dB | +0.006 / +0.02, behind-f5.6 +0.002 /
    # +0.16 | +0.008 / +0.15, sixteen-layers +0.008 / +0.09 | +0.003 / +0.23, eight-layers-alt-mask +0.025 / +0.20 |
    # +0.018 / +0.12; on all eight banks front-of-focus-circle lost 0.030 / 0.18 dB, so the near-focus banks keep
    # (0.1, 0.2). (0.1, 0.2, 0.4) on the blurred banks: much the same (sixteen-layers -0.005 against 0.3).
    evidence_prior_stds: tuple[float, ...] = (0.1, 0.2, 0.3)
    evidence_prior_stds_near_focus: tuple[float, ...] = (0.1, 0.2)
    # Confidence times the share of the candidate taus whose depth alone (their evidence volume regularised as the
    # profile's) lies within delta<1.25 of the chosen depth, at the update that gives the confidence: where the
    # depth depends on which error scale of x0 is assumed, the capture has not settled it. Tuning photos, 8 cameras,
    # 4 steps, the per-pixel outputs saved once; AUC of the confidence for delta<1.25 on textured pixels, mean over
    # scenes, 8-camera mean at seed 0 / 1: 0.660 / 0.663 -> 0.668 / 0.680, lowest camera 0.582 / 0.569 -> 0.592 /
    # 0.626 (just-behind-focus +0.041 / +0.058; 13 of 16 camera-seeds up, the rest -0.001 to -0.006). Depth and
    # image are unchanged. (The deviation's size instead of a share, exp(-mean |log d_tau / d| / log 1.25): 0.669 /
    # 0.675, but bundled -0.04 / -0.05.) Held out, after the choice (3 seeds): mean +0.001 to +0.006, the lowest camera
    # up at each seed, sixteen-layers-16bit -0.020 (docs/camera_matrix_notes.md).
    tau_agreement_confidence: bool = True
    # The bounded evidence's bound, in units of the capture's ring-averaged signal power, and its floor, as a share
    # of the flat tau^2 |H_k|^2. Tuning matrix mean delta: scale 1 / 10 / 30 / 100 without a floor 0.617 / 0.637 /
    # 0.633 / 0.633 (behind-f5.6 0.730-0.752: where the capture is all noise the flat model's penalty on small
    # PSFs was right); scale 10 with floor 0.1 / 0.2: 0.637 / 0.634, the floor halving the behind-focus losses
    evidence_bound_scale: float = 10.0
    evidence_bound_floor: float = 0.1
    # The classical start's side-of-focus score (ClassicalSolver.side_evidence: a property of the capture, computed
    # once a frame; a warm frame computes it too) added to every depth update's evidence, weighted as there
    # (add_side_evidence). Only banks that straddle focus have one. 0: off. Tuning photos, 8 steps, classical
    # side_weight 30, DFD-DPS delta straddle-rgb-13 / straddle-mono16-9 at seed 0 | seed 1: 0: 0.493 / 0.538 | 0.452 / 0.489;
    # 10: 0.525 / 0.515 | 0.543 / 0.517; 30: 0.523 / 0.511 (seed 0); 100: 0.517 / 0.508 (seed 0), all with the
    # one-strength score. Averaged over five strengths (mean of both cameras and seeds), classical / sampler weight
    # 30 / 10: 0.583, 30 / 30: 0.582, 60 / 10: 0.583; the three-strength default (ClassicalParams.side_prior_scales)
    # at 30 / 10: 0.592. The score is a weak classifier (the true layer's twin scores worse in 60% / 65% of
    # textured windows on those two cameras).
    side_weight: float = 10.0
    depth_step: float = 0.5  # gradient depth update: max layers per step
    evidence_window_sigma: float = 6.0  # px; the sharper x0 affords a smaller window than the classical 10
    evidence_guided_radius: int = 4  # px, edge-aware smoothing of the cost volume (classical: 8)
    evidence_momentum: float = 0.1  # running average of the evidence volume over its updates
    depth_every: int = 4  # evidence and depth every N steps and at the last (every step: same quality, measured)
    # ... but at most this many, spread evenly (None: no cap). Off by default: at 20 steps a cap of 3 saved
    # three of six updates but cost 0.003 mean delta on the camera matrix (0.584 -> 0.581, tuning photos), all
    # that 20 steps buy over 8 (0.582)
    depth_updates_max: int | None = None
    # ... and at least this many (every step on shorter schedules), spread evenly. Depth updates, not network
    # evaluations, are what short schedules lack (camera matrix, tuning photos, seed 0): 4 steps gave mean delta
    # 0.660 with its two updates, 0.667 with three and 0.669 with four, against 0.670 at 8 steps (three)
    depth_updates_min: int = 3
    clip_x0: bool = True  # keep the Tweedie estimate in the image range
    # Warm start (temporal_warm_start): the warm start image (below), noised to this model-space level and
    # refined in ``warm_steps`` network evaluations, instead of the classical start and ``steps``. First tuned
    # with the previous frame's image as the start (scripts/tune_warm_start.py, astronaut and coffee, 40 frames
    # at 160x120), where a low level kept that image's depth errors: 0.6 was chosen (delta -0.003 / -0.09 dB;
    # 0.2: -0.014 / +0.28). With the blend start the sampler's noise level matters more than the start: one step
    # from 0.6 lost ~2 dB to cold on a static rocket scene (smooth; tuning photo) whatever the start image, and
    # none from 0.2. Sequence bench (300 frames, 128x96, tuning photos; paired warm - cold PSNR for
    # astronaut/coffee/chelsea | brick/gravel/camera | rocket/coins/astronaut): 0.6 +0.13 | +0.22 | -0.35 dB,
    # 0.3 +0.45 | +0.37 | +0.09, 0.2 +0.46 | +0.50 | +0.20, 0.1 +0.41 | +0.64 | +0.23; worst last-third delta
    # -0.040 (coins) at 0.6, -0.025 at 0.2, -0.023 at 0.1. 0.2 ties 0.1 and keeps less of the previous frame.
    # Re-tuned after the warm refit (warm_exact_step puts capture noise back into the start image), with a smooth
    # tuning set added (retina, moon, rocket: the warm chain lost up to 0.5 dB to cold there in a segment's last
    # third). Sequence bench, 96x128, seeds 0 | 1, paired warm - cold PSNR / worst last third, astronaut set |
    # brick set | smooth set: 0.2 +0.83/+0.73, +0.43/+0.25 | +0.79/+0.31, +0.54/+0.33 | +0.29/-0.50, -0.03/-0.10;
    # 0.3 +0.89/+0.68, +0.49/+0.43 | +0.64/+0.11, +0.50/+0.27 | +0.41/-0.03, +0.06/-0.10; 0.4 (seed 0) +0.81/+0.54
    # | +0.42/-0.07 | +0.22/-0.27. Texture-dense photos keep more detail at 0.2, smooth ones want 0.3; 0.3 has the
    # best worst segment and the best mean. 0.25, measured on the smooth set only: +0.42/+0.02, +0.06/+0.07.
    warm_start_sigma: float = 0.3
    warm_steps: int = 1
    # The warm frame's start image: "previous", the last frame's output moved with the scene; "deconvolved", this
    # capture's per-layer Wiener deconvolution under the moved previous depth (the classical start's image without
    # its depth search); "blend", their mean. The sampler's fine detail comes from its start image, so "previous"
    # loses some on every frame: on a static brick scene (tuning photo, 128x96, fresh noise) warm frames fell
    # 25.9 -> 21.8 dB in 7 frames; "deconvolved" held 26.8 and "blend" 26.2. One step does not remove the
    # deconvolution's noise on smooth regions, which "blend" halves. Sequence bench, tuning photos, warm - cold
    # PSNR paired | worst segment third, brick/gravel/camera: previous -0.17 | -1.17 dB (brick), deconvolved
    # +0.16 | -0.19, blend +0.22 | +0.09; astronaut/coffee/chelsea: previous +0.26 | -0.16 (chelsea), deconvolved
    # -0.17 | -0.40 (coffee), blend +0.13 | +0.05 (all at warm_start_sigma 0.6). The previous image's share of the
    # blend (sequence bench, 96x128, 0.3 level, seeds 0 | 1, paired PSNR for astronaut / brick / smooth sets): 0.3
    # +0.67 +0.55 +0.35 | +0.31 +0.49 +0.00 dB; 0.5 +0.89 +0.64 +0.41 | +0.49 +0.50 +0.06; 0.7 +1.12 +0.58 +0.38 |
    # +0.67 +0.44 +0.02, but its worst last third -0.23 dB (gravel) against -0.10 at 0.5: the half stays.
    warm_start_image: str = "blend"
    # The warm start image first put through the exact data step (exact_data_step, with the moved depth), then noised:
    # one step from warm_start_sigma cannot refit it to this capture the way a cold start's schedule does. Sequence
    # bench (--sequence-size 96x128 --sequence-cold-every 5, tuning photos, seed 0), warm - cold paired: delta
    # +0.010 -> +0.016, PSNR +0.20 -> +0.74 dB; worst last third -0.030 -> -0.019 (coffee); a warm frame 0.08 -> 0.12 s
    # (median), no more network evaluations.
    warm_exact_step: bool = True
    # A warm frame's exact data steps (the refit above and the final one) weigh x0 this much of a cold frame's rho
    # (final_proximal_weight), and shrink their correction this hard (final_shrink_strength, 0.5 on cold frames).
    # A warm chain runs the exact step twice a frame and hands its output on, so what one step leaves of the
    # capture noise accumulates on smooth regions, while textured ones want more of the capture. The stronger
    # shrink removes a correction where it is at the noise's level and keeps it where it carries detail, so the
    # data can weigh more. Sequence bench (96x128, tuning photos, warm_start_sigma 0.3, seeds 0 | 1), paired warm -
    # cold PSNR for astronaut,coffee,chelsea / brick,gravel,camera / retina,moon,rocket:
    #   cold's (1, 0.5):  +0.89 +0.64 +0.41 | +0.49 +0.50 +0.06 dB, worst last third -0.10 dB, delta -0.017
    #   (2, 0.5):         +0.53 +0.15 +0.71 | +0.26 +0.33 +0.44, worst -0.23 dB (gravel)
    #   (0.5, 0.5):       +1.07 +1.02 -0.43 | +0.54 +0.51 -0.82 (the smooth set falls)
    #   (1, 1):           +0.82 +0.54 +0.78 | +0.45 +0.47 +0.47, worst -0.02 dB, delta -0.018
    #   (0.5, 1):         +1.03 +0.90 +0.50 | +0.56 +0.53 +0.13, worst -0.01 dB, delta -0.023 (gravel, s0)
    # (0.5, 1) is ahead of cold's pair on all six; its depth is within 0.006 of it per set. Its neighbours at seed 0:
    # (0.35, 1) +1.08 +1.00 +0.23 (moon's last third -0.26 dB, gravel's -0.028 delta), (0.5, 1.5) +0.85 +0.67 +0.62.
    warm_exact_step_weight_scale: float = 0.5
    warm_shrink_strength: float = 1.0
    # Cut detection: a warm start whose data term (RMS of y - A(moved previous x, depth) / sigma_y) exceeds this
    # falls back to the cold start. Tuning sequence: 1.1-1.5 on every warm frame, 29.5 at the cut.
    warm_cut_data_term: float = 4.0
    # Every this many frames, one starts cold anyway (0: never): a depth error that the data term cannot see
    # is otherwise handed on from frame to frame (the sequence bench drifted over 100-frame segments). Costs
    # (steps - warm_steps) / this extra evaluations per frame: 11 keeps a frame at 1.27 of cold's 4 (budget: 1/3;
    # it was 7 while the cold start took 8). 9 (1.33) measured 0.340 on the held-out sequence bench, whose cuts
    # add cold frames; 10 would alias the bench's every-5th cold reference.
    # Sequence bench on tuning photos (300 frames, 128x96), warm - cold: PSNR -0.07 dB, worst segment's last
    # third -0.59 dB without; +0.21 dB and -0.33 dB with 7; delta +0.022 and +0.018
    warm_refresh_every: int = 11

    def __post_init__(self) -> None:
        if self.depth_update not in DEPTH_UPDATES:
            raise CadfdError(f"depth_update must be one of {', '.join(DEPTH_UPDATES)}")
        if self.evidence not in EVIDENCE_MODELS:
            raise CadfdError(f"evidence must be one of {', '.join(EVIDENCE_MODELS)}")
        if not self.start_sparse_weight > 0:
            raise CadfdError(f"start_sparse_weight must be positive, got {self.start_sparse_weight}")
        if self.start_deconvolution_iterations < 0:
            raise CadfdError(f"start_deconvolution_iterations must be 0 or more, got {self.start_deconvolution_iterations}")
        if self.depth_updates_min < 1:
            raise CadfdError(f"depth_updates_min must be at least 1, got {self.depth_updates_min}")
        if self.warm_steps < 1:
            raise CadfdError(f"warm_steps must be at least 1, got {self.warm_steps}")
        if not (self.warm_exact_step_weight_scale > 0 and self.warm_shrink_strength >= 0):
            raise CadfdError(f"warm_exact_step_weight_scale must be positive and warm_shrink_strength 0 or more, got "
                             f"{self.warm_exact_step_weight_scale} and {self.warm_shrink_strength}")
        if self.warm_refresh_every < 0:
            raise CadfdError(f"warm_refresh_every must be 0 (never) or positive, got {self.warm_refresh_every}")
        if self.warm_start_image not in WARM_START_IMAGES:
            raise CadfdError(f"warm_start_image must be one of {', '.join(WARM_START_IMAGES)}, got {self.warm_start_image!r}")
        if not (self.evidence_bound_scale > 0 and 0 <= self.evidence_bound_floor <= 1):
            raise CadfdError(f"evidence_bound_scale must be positive and evidence_bound_floor in [0, 1], got "
                             f"{self.evidence_bound_scale} and {self.evidence_bound_floor}")
        for name in ("evidence_prior_stds", "evidence_prior_stds_near_focus"):
            taus = getattr(self, name)
            if not (taus and all(tau > 0 for tau in taus)):
                raise CadfdError(f"{name} must be one or more positive values, got {taus}")
        if not self.warm_start_sigma > 0:
            raise CadfdError(f"warm_start_sigma must be positive, got {self.warm_start_sigma}")
        for name in ("final_proximal_weight", "final_proximal_weight_near_focus"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise CadfdError(f"{name} must be positive (or None: keep x0), got {value}")
        if not self.near_focus_psf_px > 0:
            raise CadfdError(f"near_focus_psf_px must be positive, got {self.near_focus_psf_px}")
        if self.final_shrink_window is not None and not (self.final_shrink_window > 0 and self.final_shrink_strength >= 0):
            raise CadfdError(f"final_shrink_window must be positive (or None: off) and final_shrink_strength 0 or more, "
                             f"got {self.final_shrink_window} and {self.final_shrink_strength}")

    def start_solver_params(self, base: ClassicalParams | None = None) -> ClassicalParams:
        """The classical solver's parameters for the sampler's start (``base``: the classical method's):
        its HQS schedule stopped after ``start_deconvolution_iterations``, its prior at ``start_sparse_weight``."""
        return replace(base or ClassicalParams(), hqs_iterations=self.start_deconvolution_iterations,
                       sparse_weight=self.start_sparse_weight)

    @property
    def regulariser(self) -> ClassicalParams:
        """The classical depth regulariser with windows sized for the prior's sharper x0."""
        return replace(ClassicalParams(), window_sigma=self.evidence_window_sigma,
                       guided_radius=self.evidence_guided_radius)


@dataclass
class SamplerTrace:
    """Sampling diagnostics: the data term must decrease, the network count must equal steps."""

    timesteps: list[int] = field(default_factory=list)  # one per network evaluation
    # RMS residual / sigma_y of the Tweedie estimate, where measured: at every depth update
    # (diffpir, whose blurs it reuses, so it costs nothing extra) or every step (dps)
    data_timesteps: list[int] = field(default_factory=list)
    data_term: list[float] = field(default_factory=list)
    network_evaluations: int = 0
    network_seconds: float = 0.0  # time inside the prior's network calls
    final_cg_iterations: int = 0  # iterations the final exact data step took
    # seconds outside the network, per part of the sampler: depth (evidence + regulariser), data_step
    # (per-step prox), final_data_step (prox + CG); what the overhead total / network_s is made of
    stage_seconds: dict[str, float] = field(default_factory=dict)


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


@dataclass(frozen=True)
class MarginalEvidence:
    """x ~ N(x0, tau^2) makes y | k ~ N(h_k*x0, tau^2 H_k H_k^T + sigma^2): a per-frequency whitening
    filter and the per-layer log-determinant, from the PSFs and the ratio tau / sigma."""

    whiten: torch.Tensor  # (L, C, Hs, Wf) on the capture grid
    log_det_per_channel: torch.Tensor  # (L, C) per pixel

    @property
    def log_det(self) -> torch.Tensor:
        """(L,) per pixel, summed over channels."""
        return self.log_det_per_channel.sum(dim=1)

    def channel(self, c: int) -> "MarginalEvidence":
        """The evidence terms of colour channel ``c`` alone."""
        return MarginalEvidence(self.whiten[:, c : c + 1], self.log_det_per_channel[:, c : c + 1])

    @classmethod
    def from_spectra(cls, spectra: CaptureSpectra, prior_ratio: float, noise_sigma: float | None = None,
                     bound_scale: float = 1.0, bound_floor: float = 0.0, signal: torch.Tensor | None = None
                     ) -> "MarginalEvidence":
        """``noise_sigma`` given ("bounded" evidence): h_k*x0's error power at a frequency is at most
        ``bound_scale`` times the capture's signal power there (|Y|^2 - sigma^2, ring-averaged; the scale
        because windows with texture carry more than the frame's average), and at least ``bound_floor`` of
        the flat tau^2 |H_k|^2 (the tuned values are SamplerParams'). A flat tau^2 has a small PSF predict
        high-frequency residual power that neither the scene nor the prior's estimate has; the
        log-determinant then pushed small blurs to larger ones (the in-front-of-focus camera's far layers).
        ``signal``: ``capture_signal(spectra, noise_sigma)``, where the caller has it already."""
        ratio = prior_ratio**2 * spectra.otf_power
        if noise_sigma is not None:
            if signal is None:
                signal = capture_signal(spectra, noise_sigma)
            ratio = torch.maximum(torch.minimum(ratio, bound_scale * signal.unsqueeze(0)), bound_floor * ratio)
        return cls(whiten=torch.rsqrt(1 + ratio), log_det_per_channel=torch.log1p(ratio).mean(dim=(-2, -1)))


def capture_signal(spectra: CaptureSpectra, noise_sigma: float) -> torch.Tensor:
    """The capture's ring-averaged signal power in units of the noise power, |Y|^2 / sigma^2 - 1 (>= 0), on the
    capture grid (C, Hs, Wf): the bounded evidence's bound."""
    return (capture_power_spectrum(spectra.padded[0]) / noise_sigma**2 - 1).clamp(min=0)


def capture_power_spectrum(image: torch.Tensor, bins: int | None = None) -> torch.Tensor:
    """Radially averaged power spectrum |Y(f)|^2 / N of ``image`` (C, H, W), on its rfft2 grid (C, H, W//2+1):
    per channel, one value per ring of |f| (about one frequency bin wide), the image mean left out."""
    channels, height, width = image.shape
    spectrum = torch.fft.rfft2(image - image.mean(dim=(-2, -1), keepdim=True))
    power = squared_magnitude(spectrum) / (height * width)
    fy = torch.fft.fftfreq(height, device=image.device).abs().view(-1, 1)
    fx = torch.fft.rfftfreq(width, device=image.device).view(1, -1)
    radius = torch.sqrt(fy**2 + fx**2)  # cycles/px, 0 ... 0.707
    bins = bins or max(height, width) // 2
    ring = (radius / radius.max() * (bins - 1)).round().long().flatten()
    totals = torch.zeros(channels, bins, dtype=power.dtype, device=image.device)
    totals.index_add_(1, ring, power.reshape(channels, -1))
    counts = torch.bincount(ring, minlength=bins).to(power.dtype).clamp(min=1)
    return (totals / counts)[:, ring].reshape(channels, height, -1)


@dataclass(frozen=True)
class FrameContext:
    """Everything about one frame that no step changes."""

    capture: torch.Tensor  # y (1, C, H, W) linear
    operator: LayeredBlur
    spectra: CaptureSpectra
    evidence: tuple[MarginalEvidence, ...]  # one per candidate tau (DiffusionPosteriorSampler.evidence_prior_stds)
    guide: torch.Tensor  # luminance of y, steers the edge-aware depth regulariser
    noise_sigma: float
    params: SamplerParams
    layer_depths: torch.Tensor  # (L,) metres, nearest first
    evidence_weight: torch.Tensor | None = None  # (1, 1, H, W): 0 where clipped pixels leave the evidence
    side_evidence: torch.Tensor | None = None  # (1, L, h, w): the start's side-of-focus score, if any
    # the exact data step's rho / sigma_y^2 for this bank (DiffusionPosteriorSampler.final_proximal_weight)
    exact_step_weight: float | None = None


@dataclass
class SamplerState:
    """What a step changes: x_t (model space), the clean estimate x0 (linear, padded grid), depth."""

    x_t: torch.Tensor
    x0: torch.Tensor
    layer_coord: torch.Tensor  # (1, H, W)
    evidence: torch.Tensor | None = None  # running cost volume (1, L, h, w)
    confidence: torch.Tensor | None = None  # (1, H, W), from the latest update that computed it


@dataclass(frozen=True)
class StepOutput:
    state: SamplerState
    data_term: float | None = None  # RMS residual / sigma of the Tweedie estimate, where measured


@dataclass(frozen=True)
class SampleOutput:
    x0: torch.Tensor  # (1, C, Hp, Wp) linear
    layer_coord: torch.Tensor  # (1, H, W)
    confidence: torch.Tensor  # (1, H, W)
    trace: SamplerTrace


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


class StageClock:
    """Accumulates wall time per named stage (``with clock("depth"): ...``); CUDA is synchronised at
    the edges so asynchronous kernels are charged to the stage that launched them."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.seconds: dict[str, float] = {}
        self._name = ""

    def __call__(self, name: str) -> "StageClock":
        self._name = name
        return self

    def __enter__(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self._began = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds[self._name] = self.seconds.get(self._name, 0.0) + time.perf_counter() - self._began


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


# ---------------------------------------------------------------------- depth evidence and updates
def layer_error(ctx: FrameContext, blurred: torch.Tensor) -> torch.Tensor:
    """Per-pixel -2 log p(y | layer k, x0, tau) up to a constant, from x0 blurred by every layer: (T, L, H, W),
    one per candidate tau (T = 1 for the "residual" evidence)."""
    y, sigma_y = ctx.capture, ctx.noise_sigma
    residual = y.unsqueeze(1) - blurred  # (1, L, C, H, W)
    if ctx.evidence_weight is not None:  # clipped pixels' error would leak through the whitening filter
        residual = residual * ctx.evidence_weight.unsqueeze(1)
    if ctx.params.evidence == "residual":
        return (residual**2).sum(dim=2) / (sigma_y * sigma_y)
    op = ctx.operator
    spectrum = torch.fft.rfft2(op.pad_capture(residual[0]))
    errors = []
    for evidence in ctx.evidence:
        whitened = op.crop_capture(torch.fft.irfft2(spectrum * evidence.whiten, s=op.capture_grid))
        errors.append((whitened**2).sum(dim=1) / (sigma_y * sigma_y) + evidence.log_det.view(-1, 1, 1))
    return torch.stack(errors)


def image_layer_error(ctx: FrameContext, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``layer_error`` of x0 (1, C, Hp, Wp) blurred by every layer, and those blurs (1, L, C, H, W). Colour
    channels never mix in the model, so an RGB frame is done one channel at a time: the same arithmetic on
    a third of the memory, 1.8x faster at 640x480 (memory-bound there), 1.1x at 320x240."""
    op = ctx.operator
    if op.channels == 1:
        blurred = op.blur_layers(x0)
        return layer_error(ctx, blurred), blurred
    error, blurs = None, []
    for c in range(op.channels):
        channel = replace(ctx, capture=ctx.capture[:, c : c + 1], operator=op.select_channel(c),
                          evidence=tuple(evidence.channel(c) for evidence in ctx.evidence))
        blurred = channel.operator.blur_layers(x0[:, c : c + 1])
        part = layer_error(channel, blurred)
        error = part if error is None else error + part
        blurs.append(blurred)
    return error, torch.cat(blurs, dim=2)


def depth_update(ctx: FrameContext, blurred: torch.Tensor | None, coord: torch.Tensor, evidence: torch.Tensor | None,
                 with_confidence: bool = True, error: torch.Tensor | None = None, with_tau_agreement: bool = True
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Layer evidence of the current sharp estimate (``error``, or ``layer_error`` of its ``blurred``
    layers), each layer's window energy at its best candidate tau, averaged over updates, then the classical
    edge-aware regularisation; or a gradient step on the coordinate (which needs ``blurred``). ``with_tau_agreement``:
    the confidence takes the candidate taus' agreement (SamplerParams.tau_agreement_confidence); False where a
    later update's confidence replaces this one's."""
    p = ctx.params
    cp = p.regulariser
    y = ctx.capture
    height, width = y.shape[-2:]
    if error is None:
        error = layer_error(ctx, blurred)  # (T, L, H, W)
    low = (max(1, height // cp.evidence_stride), max(1, width // cp.evidence_stride))
    window = cp.window_sigma * low[0] / height
    if ctx.evidence_weight is None:
        energies = gaussian_blur(F.interpolate(error, size=low, mode="area"), window)
    else:  # normalised convolution; windows without evidence get no layer preference (zero cost)
        w = ctx.evidence_weight
        energies = gaussian_blur(F.interpolate(error * w, size=low, mode="area"), window)
        mass = gaussian_blur(F.interpolate(w, size=low, mode="area"), window)
        energies = torch.where(mass > 1e-3, energies / mass.clamp(min=1e-6), torch.zeros_like(energies))
    energies = energies / y.shape[1]  # (T, L, h, w): one volume per candidate tau
    energy = energies.amin(dim=0, keepdim=True)  # the profile likelihood over tau
    if ctx.side_evidence is not None and p.side_weight:
        energy = add_side_evidence(energy, ctx.side_evidence, p.side_weight)
    if evidence is not None:
        energy = p.evidence_momentum * evidence + (1 - p.evidence_momentum) * energy
    new_coord, confidence = depth_from_evidence(energy, ctx.guide, cp, with_confidence, ctx.layer_depths)
    if p.depth_update == "gradient":
        new_coord = depth_gradient_step(ctx, blurred, coord)
    elif p.depth_update == "fixed":
        new_coord = coord
    if confidence is not None and with_tau_agreement and p.tau_agreement_confidence and energies.shape[0] > 1:
        confidence = confidence * tau_agreement(per_tau_depths(ctx, energies), new_coord, ctx.layer_depths)
    return new_coord, energy, confidence


def per_tau_depths(ctx: FrameContext, energies: torch.Tensor) -> torch.Tensor:
    """(T, H, W) layer coordinates: the depth each candidate tau's evidence volume (``energies``, (T, L, h, w))
    gives alone, with the side-of-focus score and the same regularisation as the profile's."""
    p = ctx.params
    if ctx.side_evidence is not None and p.side_weight:  # each volume with its own evidence range, as the profile's
        energies = add_side_evidence(energies, ctx.side_evidence, p.side_weight)
    return torch.cat([depth_from_evidence(volume, ctx.guide, p.regulariser, False, ctx.layer_depths)[0]
                      for volume in energies.split(1)])


def tau_agreement(coords: torch.Tensor, coord: torch.Tensor, layer_depths: torch.Tensor) -> torch.Tensor:
    """(1, H, W): the share of the candidate taus whose own depth (``coords``, (T, H, W) layer coordinates) lies
    within the delta<1.25 window of the chosen depth (``coord``, (1, H, W)). Where it is below 1, the depth rests
    on the error scale of x0, which the capture does not settle (SamplerParams.tau_agreement_confidence)."""
    agree = within_delta_window(layer_coord_to_depth(coords, layer_depths), layer_coord_to_depth(coord, layer_depths))
    return agree.to(coord.dtype).mean(dim=0, keepdim=True)


def shrink_correction(ctx: FrameContext, x_ref: torch.Tensor, x: torch.Tensor, layer_coord: torch.Tensor,
                      rho: float, gradient_weight: float, window: float, strength: float = 1.0) -> torch.Tensor:
    """x_ref + the data step's correction (x - x_ref) times the local Wiener gain max(0, 1 - strength N / P): P the
    correction's power in a Gaussian window, N what the step's filter H*/(|H|^2 + R) gives white capture noise,
    per layer, blended by the soft weights. Where x_ref is flat the correction is that noise, and goes; where
    it carries detail well above the noise, it stays."""
    op = ctx.operator
    otf2 = squared_magnitude(op.otf)  # (L, C, Hf, Wf)
    gain = (otf2 / (otf2 + op.gradient_pull(rho, gradient_weight, otf2.dtype)) ** 2).mean(dim=(-2, -1))  # (L, C)
    weights = op.padded_weights(layer_coord)  # (1, L, Hp, Wp)
    noise = strength * ctx.noise_sigma**2 * torch.einsum("blhw,lc->bchw", weights, gain.to(weights.dtype))
    correction = x - x_ref
    power = gaussian_blur(correction * correction, window)
    return x_ref + correction * (1 - noise / power.clamp(min=1e-12)).clamp(0, 1)


def exact_data_step(ctx: FrameContext, x0: torch.Tensor, layer_coord: torch.Tensor) -> tuple[torch.Tensor, int]:
    """x0 pulled to the capture on the exact layered model: the per-layer prox as a start, conjugate gradients on
    ||y - A x||^2 + rho ||x - x0||^2 (plus the gradient pull), rho = ``ctx.exact_step_weight`` sigma_y^2, then the
    correction shrunk where it is noise. Returns the image (clamped to [0, 1]) and the CG iterations taken."""
    p, op = ctx.params, ctx.operator
    rho = ctx.exact_step_weight * ctx.noise_sigma**2
    g = p.final_gradient_weight
    x_prox = op.prox_l2(x0, layer_coord, rho, ctx.spectra, g)
    x, iterations = op.least_squares(ctx.capture, layer_coord, x0, rho, x_prox, p.final_cg_iterations,
                                     p.final_cg_tolerance, g, data_weight=ctx.evidence_weight)
    if p.final_shrink_window:
        x = shrink_correction(ctx, x0, x, layer_coord, rho, g, p.final_shrink_window, p.final_shrink_strength)
    return x.clamp(0, 1), iterations


def midway_step(steps: int) -> int | None:
    """The step after which ``SamplerParams.midway_exact_step`` runs: halfway, and never the last."""
    return steps // 2 - 1 if steps >= 2 else None


def depth_gradient_step(ctx: FrameContext, blurred: torch.Tensor, coord: torch.Tensor) -> torch.Tensor:
    """Normalised gradient step on u through the soft weights, then edge-aware smoothing."""
    y, sigma_y, num_layers = ctx.capture, ctx.noise_sigma, ctx.operator.num_layers
    u = coord.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        pred = (blurred * soft_layer_weights(u, num_layers).unsqueeze(2)).sum(dim=1)
        loss = ((pred - y) ** 2).sum() / (2 * sigma_y * sigma_y)
        (grad,) = torch.autograd.grad(loss, u)
    scale = gaussian_blur(grad.abs().unsqueeze(1), 4.0)[:, 0].clamp(min=1e-12)
    step = (grad / scale).clamp(-1, 1) * ctx.params.depth_step
    u = (coord - step).clamp(0, num_layers - 1)
    guide = ctx.guide
    return guided_filter(guide / guide.amax().clamp(min=1e-6), u.unsqueeze(1), 4, ctx.params.regulariser.guided_eps
                         )[:, 0].clamp(0, num_layers - 1)


def gradient_data_step(ctx: FrameContext, x0: torch.Tensor, weights: torch.Tensor, blurred: torch.Tensor, rho: float
                       ) -> torch.Tensor:
    """Gradient steps on 1/2||y - A x||^2 + rho/2 ||x - x0||^2, starting at x0 (||A|| <= 1)."""
    p, op, y = ctx.params, ctx.operator, ctx.capture
    x = x0
    forward = (blurred * weights.unsqueeze(2)).sum(dim=1)
    for step in range(p.data_steps):
        if step > 0:
            forward = op(x, weights)
        gradient = op.A_adjoint(forward - y, weights) + rho * (x - x0)
        x = x - p.data_step_size / (1.0 + rho) * gradient
    return x


# ---------------------------------------------------------------------- one step of each sampler
def depth_update_steps(steps: int, every: int, at_most: int | None, at_least: int = 1) -> frozenset[int]:
    """The step indices with a depth update: every ``every`` steps and the last, or, where that is more
    than ``at_most`` or fewer than ``at_least``, that many (at most every step) spread evenly from the first
    step to the last."""
    regular = set(range(0, steps, every)) | {steps - 1}
    if at_most is not None and len(regular) > at_most:
        count = max(1, at_most)
    elif len(regular) < at_least:
        count = min(at_least, steps)
    else:
        return frozenset(regular)
    return frozenset(int(i) for i in np.round(np.linspace(0, steps - 1, count)))


@torch.no_grad()
def diffpir_step(ctx: FrameContext, state: SamplerState, scheduler: PosteriorScheduler, index: int,
                 denoiser, prior, generator: torch.Generator, clock: StageClock) -> StepOutput:
    """Tweedie estimate, depth update (at ``depth_update_steps``), proximal data step pulled towards the
    estimate (skipped where rho_t > ``proximal_max_rho``), then re-noising. No gradient through the network."""
    p, op, y = ctx.params, ctx.operator, ctx.capture
    t, t_next = scheduler.timesteps[index], scheduler.next_timestep(index)
    x0 = prior.from_model_space(prior.tweedie_from_noise(state.x_t, denoiser(state.x_t, t), t))
    if p.clip_x0:
        x0 = x0.clamp(0, 1)
    coord, evidence, confidence = state.layer_coord, state.evidence, state.confidence
    depth_step = index in depth_update_steps(len(scheduler.timesteps), p.depth_every, p.depth_updates_max,
                                            p.depth_updates_min)
    blurred = None  # (1, L, C, H, W); the prox data step does not need it
    data_term = None
    with clock("depth"):
        if depth_step:
            error, blurred = image_layer_error(ctx, x0)
            # confidence from the last update's evidence only: it is not needed per step (and the final depth
            # update's replaces it, so the taus' agreement is left to that one)
            coord, evidence, confidence = depth_update(ctx, blurred, coord, evidence, t_next is None, error,
                                                       with_tau_agreement=not p.final_depth_update)
            # data term of the Tweedie estimate, from the blurs already computed
            weights = soft_layer_weights(coord, op.num_layers).unsqueeze(2)
            rms = torch.sqrt(torch.mean(((blurred * weights).sum(dim=1) - y) ** 2))
            data_term = float(rms) / ctx.noise_sigma
        elif p.data_step != "prox":
            blurred = op.blur_layers(x0)
    sigma_t = prior.sigma_for_timestep(t) / 2.0  # linear units: the model space is 2x linear
    rho_t = p.proximal_strength / max(sigma_t, 1e-4) ** 2
    with clock("data_step"):
        if p.proximal_max_rho is not None and rho_t > p.proximal_max_rho:
            pass  # x0 would move by ~1/rho_t of the residual
        elif p.data_step == "prox":
            x0 = op.prox_l2(x0, coord, rho_t, ctx.spectra)
        else:
            x0 = gradient_data_step(ctx, x0, soft_layer_weights(coord, op.num_layers), blurred, rho_t)
    if (p.midway_exact_step and ctx.exact_step_weight is not None
            and index == midway_step(len(scheduler.timesteps))):
        with clock("midway_data_step"):  # its own stage: a time budget prices it as an exact step
            x0 = exact_data_step(ctx, x0, coord)[0]
    x_t = state.x_t
    if t_next is not None:
        x_t = scheduler.step_renoise(prior.to_model_space(x0), x_t, t, t_next, p.zeta, generator).prev_sample
    return StepOutput(SamplerState(x_t, x0, coord, evidence, confidence), data_term)


def dps_step(ctx: FrameContext, state: SamplerState, scheduler: PosteriorScheduler, index: int,
             denoiser, prior, generator: torch.Generator, clock: StageClock) -> StepOutput:
    """Chung et al.: ancestral step from the Tweedie estimate minus zeta * grad ||y - A(x0(x_t))||, and a
    step on the depth coordinate from the same loss."""
    p, op, y = ctx.params, ctx.operator, ctx.capture
    t, t_next = scheduler.timesteps[index], scheduler.next_timestep(index)
    x_t = state.x_t.detach().requires_grad_(True)
    u = state.layer_coord.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        eps = denoiser(x_t, t)
        x0 = prior.tweedie_from_noise(x_t, eps, t)
        residual = y - op(prior.from_model_space(x0), soft_layer_weights(u, op.num_layers))
        norm = torch.linalg.vector_norm(residual)
        rms = norm.detach() / math.sqrt(residual.numel())
        grad_x, grad_u = torch.autograd.grad(norm, (x_t, u))
    with torch.no_grad():
        x0 = x0.detach().clamp(-1, 1) if p.clip_x0 else x0.detach()
        x_next = scheduler.step_ancestral(eps.detach(), x0, t, t_next, generator).prev_sample
        x_next = x_next - p.zeta * grad_x
        scale = gaussian_blur(grad_u.abs().unsqueeze(1), 4.0)[:, 0].clamp(min=1e-12)
        coord = (state.layer_coord - (grad_u / scale).clamp(-1, 1) * p.depth_step * 0.5).clamp(0, op.num_layers - 1)
        x0_lin = prior.from_model_space(x0)
    if p.depth_update == "evidence":
        with clock("depth"):
            error, blurred = image_layer_error(ctx, x0_lin)
            coord, _, _ = depth_update(ctx, blurred, coord, None, False, error)
    elif p.depth_update == "fixed":
        coord = state.layer_coord
    return StepOutput(SamplerState(x_next.detach(), x0_lin, coord, state.evidence, state.confidence),
                      float(rms) / ctx.noise_sigma)


STEPS = {"diffpir": diffpir_step, "dps": dps_step}


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
        signal = capture_signal(spectra, noise_sigma) if bounded else None
        return FrameContext(capture=y, operator=op, spectra=spectra,
                            evidence=tuple(MarginalEvidence.from_spectra(
                                spectra, tau / noise_sigma, noise_sigma if bounded else None,
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
        updates = len(depth_update_steps(steps, p.depth_every, p.depth_updates_max, p.depth_updates_min))
        updates += int(p.final_depth_update)
        exact_steps = 1 + int(p.midway_exact_step and midway_step(steps) is not None) + int(warm and p.warm_exact_step)
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
                x_init = exact_data_step(ctx, x_init.clamp(0, 1), coord_init)[0]
        if start_sigma is not None:
            t_start = prior.timestep_for_sigma(start_sigma)
        else:
            t_start = prior.num_train_timesteps - 1 if p.start == "noise" else prior.timestep_for_sigma(p.start_sigma)
        scheduler = PosteriorScheduler.from_start(prior.alphas_cumprod, t_start, steps)
        x0_model = prior.to_model_space(x_init.clamp(0, 1))
        noise = torch.randn(x0_model.shape, generator=generator, device=self.device)
        state = SamplerState(scheduler.add_noise(x0_model, noise, scheduler.timesteps[0]), x_init, coord_init.clone())
        step = STEPS[self.sampler]
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
                x0, trace.final_cg_iterations = exact_data_step(ctx, x0, state.layer_coord)
        with torch.no_grad(), clock("depth"):
            layer_coord, confidence = state.layer_coord, state.confidence
            # diffpir (its last step's update gave a confidence): depth read once more from the final image; the dps
            # sampler: the final estimate's evidence for its confidence only
            final_update = p.final_depth_update and confidence is not None
            if final_update or confidence is None:
                error, blurred = image_layer_error(ctx, x0)
                coord, _, confidence = depth_update(ctx, blurred, layer_coord, state.evidence, error=error)
                if final_update:
                    layer_coord = coord
        trace.network_evaluations = denoiser.count
        trace.network_seconds = denoiser.seconds
        trace.stage_seconds = clock.seconds
        return SampleOutput(x0.detach(), layer_coord.detach(), confidence, trace)
