"""``cadfd prior train|eval|sample``: train, evaluate and sample the natural-image diffusion prior.

torch/diffusers are imported inside the handlers so ``cadfd --help`` stays fast.
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from cadfd_ros.errors import PriorError


def _floats(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from exc
    if not vals:
        raise argparse.ArgumentTypeError("empty list")
    return vals


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from exc


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("prior", help="train / evaluate / sample the diffusion prior",
                              description="The natural-image diffusion prior (diffusers UNet2DModel + DDPM).")
    sub = p.add_subparsers(dest="prior_command", required=True, metavar="SUBCOMMAND")

    t = sub.add_parser("train", help="train or resume a prior on photo folders (CPU-friendly)")
    t.add_argument("--data", nargs="+", required=True, metavar="DIR", help="folders of sRGB photos (training only!)")
    t.add_argument("--out", required=True, metavar="DIR", help="output folder: checkpoint/, unet/, scheduler/, train_log.csv")
    t.add_argument("--steps", type=int, default=3000, help="total optimizer steps (default 3000)")
    t.add_argument("--resume", action="store_true", help="continue from --out/checkpoint")
    t.add_argument("--init-from", metavar="DIR", default=None,
                   help="start from an exported prior's weights (fresh optimizer and warm-up), e.g. to train the bundled one further")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--crop", type=int, default=64, help="crop size in px (multiple of the downsampling factor)")
    t.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate after warm-up")
    t.add_argument("--warmup", type=int, default=100)
    t.add_argument("--ema-decay", type=float, default=0.999)
    t.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (0 = off)")
    t.add_argument("--grey-fraction", type=float, default=0.2, help="fraction of desaturated crops")
    t.add_argument("--grey-noise-fraction", type=float, default=0.5,
                   help="of the grey crops, fraction with channel-identical (mono) noise")
    t.add_argument("--focus-fraction", type=float, default=0.5,
                   help="fraction of timesteps drawn log-uniform in --focus-sigma instead of uniform in t")
    t.add_argument("--focus-sigma", type=_floats, default=[0.01, 1.0], metavar="LO,HI",
                   help="model-space sigma range for the focused timesteps")
    t.add_argument("--channels", type=_ints, default=(32, 64, 64, 128), metavar="C1,C2,...", help="UNet block_out_channels")
    t.add_argument("--layers-per-block", type=int, default=1)
    t.add_argument("--scales", type=_ints, default=(256, 512, 1024), metavar="S1,S2,...",
                   help="short-side sizes each photo is kept at for cropping")
    t.add_argument("--save-every", type=int, default=100, help="checkpoint + export every N steps")
    t.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine is shared)")
    t.add_argument("--max-minutes", type=float, default=None, help="stop cleanly (checkpoint + export) after this long")
    t.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="one-step denoising PSNR of the prior vs BM3D and TV on a folder of images")
    e.add_argument("--images", required=True, metavar="DIR", help="held-out images (sRGB files; linearised)")
    e.add_argument("--sigmas", type=_floats, default=[0.05, 0.1, 0.2], help="noise std in linear [0,1] units")
    e.add_argument("--prior", default="default", metavar="SPEC", help="'default' or a local diffusers folder")
    e.add_argument("--size", type=int, default=256, help="center-crop/downscale images to this square size (0 = as is)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--assume-linear", action="store_true", help="files already hold linear intensity")
    e.add_argument("--no-tv", action="store_true", help="skip the total-variation baseline")
    e.add_argument("--no-bm3d", action="store_true",
                   help="skip the BM3D reference (about 10 s per 256 px RGB image and sigma on a 2-core CPU)")
    e.add_argument("--samples-png", metavar="PATH", help="also write a grid of unconditional samples here")
    e.add_argument("--json", action="store_true", help="last output line: JSON of per-sigma PSNRs")
    e.add_argument("--threads", type=int, default=None)
    e.set_defaults(func=_eval)

    s = sub.add_parser("sample", help="write a grid of unconditional samples (DDIM)")
    s.add_argument("--out", required=True, metavar="PNG")
    s.add_argument("--prior", default="default", metavar="SPEC")
    s.add_argument("--num", type=int, default=16)
    s.add_argument("--size", type=int, default=64)
    s.add_argument("--steps", type=int, default=50, help="DDIM steps")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--threads", type=int, default=None)
    s.set_defaults(func=_sample)


def _set_threads(n: int | None) -> None:
    if n is not None and n < 1:
        raise PriorError(f"--threads {n}: at least 1")
    if n:
        import torch

        torch.set_num_threads(n)


def _train(args: argparse.Namespace) -> int:
    from cadfd_ros.prior.train import TrainConfig, train

    if len(args.focus_sigma) != 2:
        raise PriorError(f"--focus-sigma: expected LO,HI, got {args.focus_sigma}")
    cfg = TrainConfig(
        data=list(args.data), out=args.out, steps=args.steps, batch_size=args.batch_size, crop=args.crop,
        lr=args.lr, warmup=args.warmup, ema_decay=args.ema_decay, grad_clip=args.grad_clip, seed=args.seed,
        grey_fraction=args.grey_fraction, grey_noise_fraction=args.grey_noise_fraction,
        focus_fraction=args.focus_fraction, focus_sigma=tuple(args.focus_sigma), channels=tuple(args.channels),
        layers_per_block=args.layers_per_block, scales=tuple(args.scales), save_every=args.save_every,
        threads=args.threads, init_from=args.init_from, max_minutes=args.max_minutes, progress=not args.no_progress)
    res = train(cfg, resume=args.resume)
    state = "finished" if res["finished"] else "stopped (resume with --resume)"
    print(f"prior training {state} at step {res['step']} ({res['wall_s']:.0f} s of compute, "
          f"loss EMA {res['loss_ema']:.4f}); weights in {res['out']}/unet")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from cadfd_ros.prior.evaluate import evaluate_denoising, format_table, write_samples_png
    from cadfd_ros.prior.model import load_prior

    _set_threads(args.threads)
    if args.size and args.size < 16:
        raise PriorError(f"--size {args.size}: 0 (as is) or at least 16 px")
    prior = load_prior(args.prior)
    res = evaluate_denoising(prior, args.images, args.sigmas, size=args.size or None, seed=args.seed,
                             linearize=not args.assume_linear, tv=not args.no_tv, bm3d=not args.no_bm3d)
    print(format_table(res), flush=True)
    if args.samples_png:
        path = write_samples_png(prior, args.samples_png, seed=args.seed)
        print(f"samples written to {path}", flush=True)
    if args.json:  # machine-readable, always the last stdout line
        print(json.dumps(res["summary"]), flush=True)
    return 0


def _sample(args: argparse.Namespace) -> int:
    from cadfd_ros.prior.evaluate import write_samples_png
    from cadfd_ros.prior.model import load_prior

    _set_threads(args.threads)
    if args.size < 8 or args.num < 1 or args.steps < 1:
        raise PriorError(f"--size {args.size}, --num {args.num}, --steps {args.steps}: size at least 8 px, "
                         "at least one sample and one step")
    prior = load_prior(args.prior)
    path = write_samples_png(prior, args.out, num=args.num, size=args.size, steps=args.steps, seed=args.seed)
    print(f"samples written to {path}")
    return 0
