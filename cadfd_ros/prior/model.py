"""The natural-image diffusion prior: a diffusers ``UNet2DModel`` with a DDPM noise schedule.

Domain (what the solver must feed in):
  * linear intensity x_linear in [0, 1] (not sRGB), mapped to model space by the *affine* map
    ``x_model = 2 * x_linear - 1``. It must stay affine: the solver's forward model is linear in
    x, and an affine map keeps it linear (up to a constant) in model space. A noise std sigma in
    linear space is ``2 * sigma`` in model space.
  * one 3-channel model serves mono and RGB: a (B, 1, H, W) input is replicated to 3 channels
    and the predicted noise is averaged back to 1 channel. The default prior was trained with
    ~20 % desaturated crops (half of them with channel-identical noise) so grey scenes and mono
    noise are in distribution.
  * any frame size: inputs are reflect-padded to a multiple of the UNet's downsampling factor
    and the output cropped back (the network is fully convolutional, no attention).

Loading never touches the network: only local folders, ``local_files_only=True``, safetensors.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cadfd_ros.errors import PriorError

# diffusers/huggingface_hub read these at import time; a prior must never reach the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")

DEFAULT_PRIOR_DIR = Path(__file__).resolve().parent / "default"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"

# The architecture of the bundled prior (and the default for `cadfd prior train`). No attention
# anywhere: on CPU attention at 64^2+ costs 2-10x (shared/ENVIRONMENT.md).
DEFAULT_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (32, 64, 64, 128),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D",) * 4,
    "up_block_types": ("UpBlock2D",) * 4,
    "add_attention": False,
    "norm_num_groups": 32,
}
DEFAULT_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "linear",
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "prediction_type": "epsilon",
    "clip_sample": False,  # linear-light images may exceed [0, 1] slightly after the data step
}


def default_prior_path() -> Path:
    """Folder of the bundled prior (``unet/`` + ``scheduler/`` in diffusers layout)."""
    return DEFAULT_PRIOR_DIR


def make_unet(**overrides: Any) -> "diffusers.UNet2DModel":  # noqa: F821
    """A fresh UNet2DModel with the default architecture, optionally overridden."""
    from diffusers import UNet2DModel

    cfg = dict(DEFAULT_UNET_CONFIG)
    cfg.update(overrides)
    n = len(cfg["block_out_channels"])
    if len(cfg["down_block_types"]) != n:
        cfg["down_block_types"] = ("DownBlock2D",) * n
        cfg["up_block_types"] = ("UpBlock2D",) * n
    return UNet2DModel(**cfg)


def make_scheduler(**overrides: Any) -> "diffusers.DDPMScheduler":  # noqa: F821
    from diffusers import DDPMScheduler

    cfg = dict(DEFAULT_SCHEDULER_CONFIG)
    cfg.update(overrides)
    return DDPMScheduler(**cfg)


class DiffusionPrior:
    """A loaded prior: noise prediction, Tweedie denoising and the sigma <-> timestep map.

    Attributes: ``unet`` (diffusers UNet2DModel, eval mode), ``scheduler`` (DDPMScheduler; its
    ``alphas_cumprod`` define the noise levels), ``num_train_timesteps``, ``device``.
    """

    def __init__(self, unet: "diffusers.UNet2DModel", scheduler: "diffusers.DDPMScheduler",  # noqa: F821
                 device: str | torch.device = "cpu", source: str = "") -> None:
        cfg = unet.config
        if cfg.in_channels != cfg.out_channels or cfg.in_channels not in (1, 3):
            raise PriorError(
                f"prior {source or '<unet>'}: UNet has in_channels={cfg.in_channels}, out_channels="
                f"{cfg.out_channels}; a prior needs equal counts of 1 (mono) or 3 (RGB)")
        if getattr(cfg, "num_class_embeds", None) or getattr(cfg, "class_embed_type", None):
            raise PriorError(f"prior {source or '<unet>'}: class-conditional UNets are not supported")
        pred = scheduler.config.get("prediction_type", "epsilon")
        if pred not in ("epsilon", "sample", "v_prediction"):
            raise PriorError(f"prior {source or '<scheduler>'}: unknown prediction_type {pred!r}")
        self.device = torch.device(device)
        self.unet = unet.to(self.device).eval()
        self.unet.requires_grad_(False)  # a prior is frozen; gradients flow to x_t only
        self.memory_format = torch.contiguous_format  # of the UNet's weights and input (set_memory_format)
        self.scheduler = scheduler
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.prediction_type = pred
        self.source = source
        self.channels = int(cfg.in_channels)
        # UNet2DModel halves the resolution after every down block but the last.
        self.downsample_factor = 2 ** (len(cfg.block_out_channels) - 1)
        self.alphas_cumprod = scheduler.alphas_cumprod.to(self.device, torch.float32)
        ac = self.alphas_cumprod.double()
        self.sigmas = ((1 - ac) / ac).sqrt().float()  # model-space noise std of x_t / sqrt(abar)

    # ------------------------------------------------------------------ domain mapping
    @staticmethod
    def to_model_space(linear: torch.Tensor) -> torch.Tensor:
        """[0, 1] linear intensity -> [-1, 1] model space (affine, so linear operators stay linear)."""
        return linear * 2.0 - 1.0

    @staticmethod
    def from_model_space(x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_model_space` (no clamping: keep it affine and differentiable)."""
        return (x + 1.0) * 0.5

    # ------------------------------------------------------------------ network
    def set_memory_format(self, memory_format: torch.memory_format) -> None:
        """Run the UNet in ``memory_format`` (``torch.channels_last`` or ``torch.contiguous_format``): its
        weights are converted once, each input on the way in; outputs come back contiguous."""
        if memory_format not in (torch.channels_last, torch.contiguous_format):
            raise PriorError(f"memory_format: {memory_format} is neither channels_last nor contiguous_format")
        if memory_format == self.memory_format:
            return
        self.unet.to(memory_format=memory_format)
        self.memory_format = memory_format

    def _timesteps(self, t: int | torch.Tensor, batch: int) -> torch.Tensor:
        t = torch.as_tensor(t, device=self.device).long().reshape(-1)
        if t.numel() == 1:
            t = t.expand(batch)
        if t.numel() != batch:
            raise PriorError(f"timestep t: got {t.numel()} values for a batch of {batch}")
        if int(t.min()) < 0 or int(t.max()) >= self.num_train_timesteps:
            raise PriorError(f"timestep t: {t.tolist()} outside [0, {self.num_train_timesteps - 1}]")
        return t

    def _check(self, x: torch.Tensor, name: str) -> None:
        if x.ndim != 4:
            raise PriorError(f"{name}: expected (B, C, H, W), got shape {tuple(x.shape)}")
        c = x.shape[1]
        if c not in (1, 3):
            raise PriorError(f"{name}: {c} channels; the prior takes 1 (mono) or 3 (RGB)")
        if c == 3 and self.channels == 1:
            raise PriorError(f"{name}: RGB input but prior {self.source or ''} is a 1-channel (mono) model")

    def predict_noise(self, x_t: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """Predicted noise eps(x_t, t), same shape as ``x_t`` (B, C, H, W), C in {1, 3}.

        Mono inputs go through the 3-channel model replicated and the output is averaged back;
        frames are reflect-padded to the UNet's downsampling factor and cropped back.
        Differentiable w.r.t. ``x_t`` (no no_grad here: DPS-style samplers backprop through it).
        """
        self._check(x_t, "x_t")
        b, c, h, w = x_t.shape
        t = self._timesteps(t, b)
        x = x_t.to(self.device, torch.float32)
        if c == 1 and self.channels == 3:
            x = x.expand(b, 3, h, w)
        f = self.downsample_factor
        ph, pw = (-h) % f, (-w) % f
        if ph or pw:
            # reflect keeps image statistics at the border; replicate when the frame is too small
            mode = "reflect" if (h > ph and w > pw) else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        out = self.unet(x.contiguous(memory_format=self.memory_format), t).sample[..., :h, :w].contiguous()
        out = self._to_eps(out, x[..., :h, :w], t)
        if c == 1 and self.channels == 3:
            out = out.mean(dim=1, keepdim=True)
        return out

    def _to_eps(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.prediction_type == "epsilon":
            return out
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        if self.prediction_type == "sample":  # out = x0
            return (x_t - a.sqrt() * out) / (1 - a).sqrt()
        return a.sqrt() * out + (1 - a).sqrt() * x_t  # v-prediction

    def tweedie(self, x_t: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """Posterior-mean estimate x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), model space."""
        return self.tweedie_from_noise(x_t, self.predict_noise(x_t, t), t)

    def tweedie_from_noise(self, x_t: torch.Tensor, eps: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """:meth:`tweedie` from a noise prediction already made (a sampler that needs eps as well)."""
        a = self.alphas_cumprod[self._timesteps(t, x_t.shape[0])].view(-1, 1, 1, 1)
        return (x_t.to(self.device, torch.float32) - (1 - a).sqrt() * eps) / a.sqrt()

    def timestep_for_sigma(self, sigma_model: float) -> int:
        """The t whose sqrt((1 - abar_t) / abar_t) is closest (in log) to ``sigma_model``.

        A noisy image y = x0 + sigma_model * n in model space corresponds to x_t = sqrt(abar_t) * y.
        """
        sigma_model = float(sigma_model)
        if not math.isfinite(sigma_model) or sigma_model < 0:
            raise PriorError(f"sigma_model: {sigma_model} must be a finite value >= 0")
        if sigma_model == 0:
            return 0
        return int(torch.argmin((self.sigmas.log() - math.log(sigma_model)).abs()))

    def sigma_for_timestep(self, t: int) -> float:
        """Model-space noise std of x_t / sqrt(abar_t) at timestep t."""
        return float(self.sigmas[int(t)])

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.unet.parameters())
        return (f"DiffusionPrior(source={self.source!r}, params={n / 1e6:.2f}M, channels={self.channels}, "
                f"T={self.num_train_timesteps}, device={self.device})")


def find_unet_dir(folder: Path) -> Path:
    """The UNet folder of a prior: ``unet/`` of a pipeline folder, or the folder itself."""
    if (folder / "unet" / "config.json").is_file():
        return folder / "unet"
    if (folder / "config.json").is_file():
        return folder  # bare UNet folder
    raise PriorError(f"prior {folder}: no unet/config.json or config.json (expected a diffusers folder)")


def load_prior(spec: str | os.PathLike = "default", device: str | torch.device = "cpu") -> DiffusionPrior:
    """Load a prior from local files only.

    ``spec`` is ``"default"`` (the bundled prior) or a folder: either a diffusers pipeline-style
    folder with ``unet/`` and ``scheduler/`` subfolders, or a bare UNet2DModel folder
    (``config.json`` + ``diffusion_pytorch_model.safetensors``), which gets the default DDPM
    schedule. Weights must be safetensors (pickle-based ``.bin`` files are refused).
    """
    from diffusers import DDPMScheduler, UNet2DModel

    folder = default_prior_path() if str(spec) == "default" else Path(spec).expanduser()
    if not folder.is_dir():
        what = "is a file; a prior is a diffusers folder (unet/ with config.json)" if folder.is_file() else \
            "folder does not exist"
        raise PriorError(f"prior {spec}: {what}")
    unet_dir = find_unet_dir(folder)
    try:
        cfg = json.loads((unet_dir / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise PriorError(f"prior {unet_dir / 'config.json'}: unreadable ({exc})") from exc
    cls = cfg.get("_class_name", "UNet2DModel")
    if cls != "UNet2DModel":
        raise PriorError(f"prior {unet_dir}: is a {cls}, expected a diffusers UNet2DModel")
    if not (unet_dir / WEIGHTS_NAME).is_file():
        raise PriorError(f"prior {unet_dir}: no {WEIGHTS_NAME} (only safetensors weights are loaded)")
    try:
        unet = UNet2DModel.from_pretrained(unet_dir, local_files_only=True, use_safetensors=True,
                                           low_cpu_mem_usage=False)
    except Exception as exc:  # noqa: BLE001 - diffusers raises many types; report one clear error
        raise PriorError(f"prior {unet_dir}: cannot load UNet2DModel ({exc})") from exc
    sched_dir = folder / "scheduler"
    if not (sched_dir / "scheduler_config.json").is_file():
        sched_dir = default_prior_path() / "scheduler"  # bare UNet folder: the default DDPM schedule
    try:
        if not (sched_dir / "scheduler_config.json").is_file():
            scheduler = make_scheduler()
        else:
            # from_config accepts DDIM/PNDM configs too: the betas are what define the prior.
            scheduler = DDPMScheduler.from_config(DDPMScheduler.load_config(sched_dir, local_files_only=True))
    except Exception as exc:  # noqa: BLE001
        raise PriorError(f"prior {sched_dir}: cannot load the noise schedule ({exc})") from exc
    return DiffusionPrior(unet, scheduler, device=device, source=str(folder))
