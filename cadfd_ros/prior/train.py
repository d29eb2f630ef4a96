"""Train the diffusion prior on linear-light photo crops, resumably, on CPU.

Recipe (chosen for a small model trained for about an hour on shared CPU cores):
  * eps-prediction MSE on the DDPM schedule; crops 64 px from photos kept at 3 scales;
  * timesteps: half uniform over all t, half with log-uniform model-space sigma in
    [0.01, 1.0] (linear sigma 0.005-0.5), the low/mid range the sampler and eval spend time in;
  * ~20 % of crops desaturated (half of those with channel-identical noise) so grey scenes and
    the mono path (replicate -> 3 channels) are in distribution;
  * AdamW with linear warm-up, EMA of the weights; the EMA weights are exported.

Checkpoints hold model, EMA, optimizer, step and RNG state as safetensors + JSON (no pickle), so
``--resume`` continues bit-for-bit where the last checkpoint left off.
"""
from __future__ import annotations

import copy
import csv
import datetime as _dt
import json
import math
import os
import platform
import shutil
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from cadfd_ros.errors import PriorError
from cadfd_ros.prior import data as pdata
from cadfd_ros.prior.model import DEFAULT_SCHEDULER_CONFIG, make_scheduler, make_unet

CKPT_DIR = "checkpoint"
LOG_NAME = "train_log.csv"
LOG_FIELDS = ("step", "loss", "lr", "wall_s", "crops_per_s")
# Settings that change the training trajectory: a resume must keep them.
FROZEN_ON_RESUME = ("seed", "batch_size", "crop", "lr", "warmup", "weight_decay", "ema_decay", "grad_clip", "grey_fraction",
                    "grey_noise_fraction", "focus_fraction", "focus_sigma", "channels", "layers_per_block", "scales", "init_from")


@dataclass
class TrainConfig:
    data: list[str]
    out: str
    steps: int = 3000
    batch_size: int = 16
    crop: int = 64
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0
    grey_fraction: float = 0.2
    grey_noise_fraction: float = 0.5
    focus_fraction: float = 0.5
    focus_sigma: tuple[float, float] = (0.01, 1.0)
    channels: tuple[int, ...] = (32, 64, 64, 128)
    layers_per_block: int = 1
    scales: tuple[int, ...] = (256, 512, 1024)
    save_every: int = 100
    log_every: int = 10
    threads: int = 1
    init_from: str | None = None
    max_minutes: float | None = None
    progress: bool = True

    def validate(self) -> None:
        if self.steps < 1:
            raise PriorError(f"--steps: {self.steps} must be >= 1")
        if self.batch_size < 1:
            raise PriorError(f"--batch-size: {self.batch_size} must be >= 1")
        f = 2 ** (len(self.channels) - 1)
        if self.crop < f or self.crop % f:
            raise PriorError(f"--crop: {self.crop} must be a positive multiple of the UNet downsampling factor {f}")
        for name in ("grey_fraction", "grey_noise_fraction", "focus_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise PriorError(f"--{name.replace('_', '-')}: {v} must be in [0, 1]")
        if not 0 < self.focus_sigma[0] < self.focus_sigma[1]:
            raise PriorError(f"--focus-sigma: {self.focus_sigma} must be 0 < lo < hi")
        if min(self.channels) < 1 or any(c % 8 for c in self.channels):
            raise PriorError(f"--channels: {self.channels} must be positive multiples of 8 (GroupNorm)")


# --------------------------------------------------------------------------- helpers


def _unet_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    # GroupNorm needs channels divisible by the group count: 32 for the default, smaller for tiny test models.
    groups = math.gcd(32, *cfg.channels)
    return {"sample_size": cfg.crop, "block_out_channels": tuple(cfg.channels),
            "layers_per_block": cfg.layers_per_block, "norm_num_groups": groups}


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v.contiguous()
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def _machine() -> dict[str, Any]:
    return {"host": platform.node(), "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__}


class _Stop:
    """SIGTERM/SIGINT -> finish the current step, checkpoint, exit cleanly."""

    def __init__(self) -> None:
        self.flag = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_Stop":
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not in the main thread (e.g. some test runners)
                pass
        return self

    def _handle(self, *_: Any) -> None:
        self.flag = True

    def __exit__(self, *_: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


# --------------------------------------------------------------------------- the trainer


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False, pool: pdata.CropPool | None = None) -> None:
        from safetensors.torch import load_file

        cfg.validate()
        self.cfg = cfg
        self.out = Path(cfg.out)
        ckpt = self.out / CKPT_DIR
        state: dict[str, Any] | None = None
        if ckpt.is_dir() and (ckpt / "state.json").is_file():
            if not resume:
                raise PriorError(f"--out {self.out}: already holds a training checkpoint; pass --resume or use a new folder")
            state = json.loads((ckpt / "state.json").read_text())
            saved = state["config"]
            bad = [k for k in FROZEN_ON_RESUME if json.dumps(saved.get(k)) != json.dumps(_jsonable(getattr(cfg, k)))]
            if bad:
                raise PriorError(f"--resume {self.out}: settings differ from the checkpoint: "
                                 + ", ".join(f"{k} (was {saved.get(k)}, now {_jsonable(getattr(cfg, k))})" for k in bad))
        self.out.mkdir(parents=True, exist_ok=True)

        torch.manual_seed(cfg.seed)  # weight init
        self.model = make_unet(**_unet_kwargs(cfg)).train()
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.scheduler = make_scheduler()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        self.wall_s = 0.0
        self.loss_ema: float | None = None
        ac = self.scheduler.alphas_cumprod.double()
        self.sigmas = ((1 - ac) / ac).sqrt()

        if state is not None:
            self.model.load_state_dict(load_file(ckpt / "model.safetensors"))
            self.ema.load_state_dict(load_file(ckpt / "ema.safetensors"))
            self.opt.load_state_dict(_unflatten_optimizer(load_file(ckpt / "optimizer.safetensors"), state["optimizer"]))
            self.gen.set_state(load_file(ckpt / "rng.safetensors")["generator"])
            self.step = int(state["step"])
            self.wall_s = float(state["wall_s"])
            self.loss_ema = state.get("loss_ema")
            self._truncate_log(self.step)
        else:
            with open(self.out / LOG_NAME, "w", newline="") as f:
                csv.writer(f).writerow(LOG_FIELDS)
        # A resume keeps the record taken when the leg began: by now --init-from may hold this leg's own export.
        if state is not None and "init" in state:
            self.init = state["init"]
        else:
            self.init = self._init_record(cfg.init_from) if cfg.init_from else None
        if self.init is not None and state is None:  # a resume already has its own weights
            self.model.load_state_dict(self._init_weights(cfg.init_from))
            self.ema.load_state_dict(self.model.state_dict())
        self.resumed_from = self.step

        if pool is None:
            paths = pdata.list_images(cfg.data)
            pool = pdata.CropPool(paths, pdata.PoolConfig(tuple(cfg.scales)), progress=cfg.progress)
            self.data_files = [p.name for p in paths]
        else:
            self.data_files = sorted(set(s.split("@")[0] for s in pool.sources))
        self.pool = pool

    def _init_weights(self, spec: str) -> dict[str, torch.Tensor]:
        """UNet weights of an exported run to continue from (with a fresh optimizer)."""
        from safetensors.torch import load_file

        from cadfd_ros.prior.model import find_unet_dir

        try:
            weights_path = find_unet_dir(Path(spec)) / "diffusion_pytorch_model.safetensors"
        except PriorError as error:
            raise PriorError(f"--init-from {spec}: {error}") from None
        if not weights_path.is_file():
            raise PriorError(f"--init-from {spec}: no {weights_path.name} (expected an exported prior folder)")
        weights = load_file(weights_path)
        own = self.model.state_dict()
        bad = sorted(set(own) ^ set(weights)) + [k for k in own if k in weights and own[k].shape != weights[k].shape]
        if bad:
            raise PriorError(f"--init-from {spec}: weights do not fit a UNet with --channels {self.cfg.channels} "
                             f"--layers-per-block {self.cfg.layers_per_block} (first mismatch: {bad[0]})")
        return weights

    @staticmethod
    def _init_record(spec: str) -> dict[str, Any]:
        """The continued run's budget, from its TRAINING.json (absent: unknown)."""
        record = Path(spec) / "TRAINING.json"
        prev = json.loads(record.read_text()) if record.is_file() else {}
        return {"from": str(spec), "steps": prev.get("total_steps", prev.get("steps")),
                "wall_time_s": prev.get("total_wall_time_s", prev.get("wall_time_s"))}

    # ---------------------------------------------------------------- one step
    def _sample_t(self, b: int) -> torch.Tensor:
        g, cfg = self.gen, self.cfg
        t_uniform = torch.randint(0, self.scheduler.config.num_train_timesteps, (b,), generator=g)
        lo, hi = math.log(cfg.focus_sigma[0]), math.log(cfg.focus_sigma[1])
        sig = torch.exp(lo + (hi - lo) * torch.rand(b, generator=g, dtype=torch.float64))
        t_focus = torch.searchsorted(self.sigmas, sig).clamp(max=len(self.sigmas) - 1)
        use_focus = torch.rand(b, generator=g) < cfg.focus_fraction
        return torch.where(use_focus, t_focus, t_uniform)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(noisy x_t, t, eps) for one step; all randomness from self.gen, in a fixed order."""
        cfg, g = self.cfg, self.gen
        b = cfg.batch_size
        lin = self.pool.sample(g, b, cfg.crop)
        grey = torch.rand(b, generator=g) < cfg.grey_fraction
        mono_noise = grey & (torch.rand(b, generator=g) < cfg.grey_noise_fraction)
        t = self._sample_t(b)
        eps = torch.randn(lin.shape, generator=g)
        if grey.any():
            lin[grey] = pdata.desaturate(lin[grey])
        if mono_noise.any():
            eps[mono_noise] = eps[mono_noise][:, :1].expand(-1, 3, -1, -1)
        x0 = lin * 2.0 - 1.0  # the prior's affine domain map (model.DiffusionPrior.to_model_space)
        a = self.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1).float()
        return a.sqrt() * x0 + (1 - a).sqrt() * eps, t, eps

    def train_step(self) -> float:
        cfg = self.cfg
        lr = cfg.lr * min(1.0, (self.step + 1) / max(1, cfg.warmup))
        for group in self.opt.param_groups:
            group["lr"] = lr
        x_t, t, eps = self.batch()
        loss = torch.nn.functional.mse_loss(self.model(x_t, t).sample, eps)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:  # guards the short, high-lr run against rare spikes
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        self.step += 1
        d = min(cfg.ema_decay, (1 + self.step) / (10 + self.step))  # warm-up so early EMA is not stuck at init
        with torch.no_grad():
            for pe, pm in zip(self.ema.parameters(), self.model.parameters()):
                pe.mul_(d).add_(pm.detach(), alpha=1 - d)
        return float(loss.detach())

    # ---------------------------------------------------------------- persistence
    def _truncate_log(self, step: int) -> None:
        log = self.out / LOG_NAME
        rows = []
        if log.is_file():
            with open(log, newline="") as f:
                rows = [r for r in csv.reader(f)][1:]
        with open(log, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(LOG_FIELDS)
            w.writerows(r for r in rows if r and int(r[0]) <= step)

    def save_checkpoint(self) -> None:
        from safetensors.torch import save_file

        tmp = self.out / (CKPT_DIR + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, tmp / "model.safetensors")
        save_file({k: v.contiguous() for k, v in self.ema.state_dict().items()}, tmp / "ema.safetensors")
        opt_tensors, opt_meta = _flatten_optimizer(self.opt)
        save_file(opt_tensors, tmp / "optimizer.safetensors")
        save_file({"generator": self.gen.get_state()}, tmp / "rng.safetensors")
        state = {"step": self.step, "wall_s": self.wall_s, "loss_ema": self.loss_ema,
                 "config": _jsonable(asdict(self.cfg)), "optimizer": opt_meta, "init": self.init,
                 "saved_at": _now()}
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        final = self.out / CKPT_DIR
        old = self.out / (CKPT_DIR + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)  # a crash leaves either the old or the new checkpoint complete
        shutil.rmtree(old, ignore_errors=True)

    def export(self) -> Path:
        """Write the EMA weights as a diffusers folder (unet/, scheduler/) plus TRAINING.json."""
        self.ema.save_pretrained(self.out / "unet", safe_serialization=True)
        self.scheduler.save_pretrained(self.out / "scheduler")
        info = {
            "steps": self.step, "wall_time_s": round(self.wall_s, 1),
            "crops_seen": self.step * self.cfg.batch_size, "final_loss_ema": self.loss_ema,
            "weights": "EMA", "machine": _machine(), "threads": self.cfg.threads,
            "config": _jsonable(asdict(self.cfg)), "scheduler": DEFAULT_SCHEDULER_CONFIG,
            "params": sum(p.numel() for p in self.ema.parameters()),
            "data_files": self.data_files, "pool_entries": len(self.pool), "exported_at": _now(),
            "domain": "x_model = 2 * x_linear - 1, x_linear = sRGB EOTF(photo) in [0, 1]",
        }
        if self.init is not None:  # a continued run: record the whole budget, not only this leg
            info["init"] = self.init
            info["total_steps"] = self.step + (self.init["steps"] or 0)
            info["total_wall_time_s"] = round(self.wall_s + (self.init["wall_time_s"] or 0.0), 1)
        (self.out / "TRAINING.json").write_text(json.dumps(info, indent=1))
        return self.out

    # ---------------------------------------------------------------- loop
    def run(self, on_log: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        cfg = self.cfg
        torch.set_num_threads(max(1, cfg.threads))
        deadline = time.monotonic() + cfg.max_minutes * 60 if cfg.max_minutes else None
        bar = None
        if cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, desc="train prior", unit="step", dynamic_ncols=True)
        window: list[float] = []
        t_win = time.monotonic()
        with _Stop() as stop:
            while self.step < cfg.steps:
                t0 = time.monotonic()
                loss = self.train_step()
                self.wall_s += time.monotonic() - t0
                self.loss_ema = loss if self.loss_ema is None else 0.98 * self.loss_ema + 0.02 * loss
                window.append(loss)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{self.loss_ema:.4f}")
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    now = time.monotonic()
                    row = {"step": self.step, "loss": sum(window) / len(window), "lr": self.opt.param_groups[0]["lr"],
                           "wall_s": round(self.wall_s, 2),
                           "crops_per_s": round(len(window) * cfg.batch_size / max(now - t_win, 1e-9), 2)}
                    with open(self.out / LOG_NAME, "a", newline="") as f:
                        csv.writer(f).writerow([f"{row[k]:.6g}" if isinstance(row[k], float) else row[k] for k in LOG_FIELDS])
                    if on_log:
                        on_log(row)
                    window, t_win = [], now
                out_of_time = deadline is not None and time.monotonic() >= deadline
                if self.step % cfg.save_every == 0 or stop.flag or out_of_time:
                    self.save_checkpoint()
                    self.export()
                if stop.flag or out_of_time:
                    break
        if bar is not None:
            bar.close()
        self.save_checkpoint()
        self.export()
        return {"step": self.step, "wall_s": self.wall_s, "loss_ema": self.loss_ema, "out": str(self.out),
                "finished": self.step >= cfg.steps}


def train(cfg: TrainConfig, resume: bool = False, pool: pdata.CropPool | None = None) -> dict[str, Any]:
    """Train (or resume) and export; returns a summary dict."""
    return Trainer(cfg, resume=resume, pool=pool).run()


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
