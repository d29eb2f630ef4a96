"""Natural-image diffusion prior (issue 3): a small diffusers UNet2DModel + DDPM schedule trained
on linear-light photos. See ``cadfd_ros/prior/default/README.md`` for the model card.

    prior = load_prior("default")              # or a local diffusers folder
    x_t = ...                                   # (B, C, H, W) model space, C in {1, 3}
    x0_hat = prior.tweedie(x_t, t)

Importing this package imports torch and diffusers; the CLI imports it lazily.
"""
from cadfd_ros.prior.model import DiffusionPrior, default_prior_path, load_prior

__all__ = ["DiffusionPrior", "default_prior_path", "load_prior"]
