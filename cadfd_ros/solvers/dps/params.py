"""The sampler's options (``SamplerConfig``: the user's) and its tuned constants (``SamplerParams``)."""
from __future__ import annotations

from dataclasses import dataclass, replace

from cadfd_ros.errors import CadfdError
from cadfd_ros.params import PARAM_BY_NAME
from cadfd_ros.solvers.classical import ClassicalParams


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
    # The depth evidence weighs the capture's error at no less than this sigma (linear), as the start image does
    # (ClassicalParams.aif_noise_floor): the capture differs from h_k * x0 by the layered model's own error too,
    # which does not shrink with the noise, and weighed against the noise alone a quiet capture's evidence read
    # large blurs as small ones. Tuning photos, 4 steps, with the start's floor: four banks (bundled, behind-f5.6,
    # just-behind-focus, sixteen-layers-16bit) at sigma 0.003 and 0.005, DFD-DPS delta 0.735 -> 0.757, AIF 24.55 ->
    # 24.66 dB (just-behind-focus +0.084 / +0.050, bundled +0.033 / +0.016, sixteen-layers -0.012 / -0.001); at the
    # camera matrix's own noise levels only just-behind-focus (sigma 0.005) moves: 0.637 -> 0.687 / 0.650 -> 0.700
    # at seeds 0 / 1. Without the start's floor it traded banks (behind-f5.6 -0.024, bundled -0.030). 0: off.
    evidence_noise_floor: float = 0.01
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
        if not self.evidence_noise_floor >= 0:
            raise CadfdError(f"evidence_noise_floor must be 0 or more, got {self.evidence_noise_floor}")
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

    def evidence_sigma(self, noise_sigma: float) -> float:
        """The sigma the depth evidence weighs the capture's error at: the noise's, at least ``evidence_noise_floor``."""
        return max(noise_sigma, self.evidence_noise_floor)

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
