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

Files by concern: ``params`` (options and tuned constants), ``state`` (the frame context, the state a step
changes, the outputs), ``depth_evidence`` (depth from x0), ``data_steps`` (the image's data steps), ``steps`` (one
step of each sampler) and ``sampler`` (``DiffusionPosteriorSampler`` and its loop).
"""
from cadfd_ros.solvers.dps.data_steps import exact_data_step, gradient_data_step, midway_step, shrink_correction
from cadfd_ros.solvers.dps.depth_evidence import (MarginalEvidence, capture_power_spectrum, capture_signal,
                                                 depth_gradient_step, depth_update, image_layer_error, layer_error,
                                                 per_tau_depths, tau_agreement)
from cadfd_ros.solvers.dps.params import (DEFAULT_SAMPLER, DEPTH_UPDATES, EVIDENCE_MODELS, WARM_START_IMAGES,
                                         SamplerConfig, SamplerParams)
from cadfd_ros.solvers.dps.sampler import (DiffusionPosteriorSampler, FrameCosts, default_network_dtype,
                                          default_network_memory_format, first_frame_costs)
from cadfd_ros.solvers.dps.state import (FrameContext, SampleOutput, SamplerState, SamplerTrace, StageClock,
                                        StepOutput)
from cadfd_ros.solvers.dps.steps import STEPS, depth_update_steps, diffpir_step, dps_step

__all__ = [
    "DEFAULT_SAMPLER", "DEPTH_UPDATES", "EVIDENCE_MODELS", "STEPS", "WARM_START_IMAGES", "DiffusionPosteriorSampler",
    "FrameContext", "FrameCosts", "MarginalEvidence", "SampleOutput", "SamplerConfig", "SamplerParams", "SamplerState",
    "SamplerTrace", "StageClock", "StepOutput", "capture_power_spectrum", "capture_signal", "default_network_dtype",
    "default_network_memory_format", "depth_gradient_step", "depth_update", "depth_update_steps", "diffpir_step",
    "dps_step", "exact_data_step", "first_frame_costs", "gradient_data_step", "image_layer_error", "layer_error",
    "midway_step", "per_tau_depths", "shrink_correction", "tau_agreement",
]
