"""``cadfd simulate``: a coded capture of an image at a depth map (occlusion-aware)."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("simulate", help="render a noisy coded capture from an image and a depth map")
    parser.add_argument("--image", type=Path, required=True, help="sRGB photo (PNG/JPEG), linearised before rendering")
    parser.add_argument("--depth", type=Path, required=True, help="float32 .npy, metres, at the image's size")
    parser.add_argument("--psf-bank", type=Path, default=None, help="PSF bank .npz (default: bundled)")
    parser.add_argument("--noise", type=float, default=0.01, help="Gaussian noise sigma, linear [0,1] units")
    parser.add_argument("--out", type=Path, required=True, help="capture PNG (16-bit, linear)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import numpy as np

    from cadfd_ros.errors import InputImageError
    from cadfd_ros.forward.render import render_occlusion_aware
    from cadfd_ros.io.images import read_npy, read_photo_linear, write_png
    from cadfd_ros.optics.psf_bank import default_psf_bank_path, load_psf_bank

    if args.seed < 0:
        raise InputImageError(f"--seed {args.seed}: a seed is an integer >= 0")
    if not 0 <= args.noise < 1:
        raise InputImageError(f"--noise must be in [0, 1), got {args.noise}")
    args.out.parent.mkdir(parents=True, exist_ok=True)  # an output under a file fails before the render
    bank = load_psf_bank(args.psf_bank or default_psf_bank_path())
    if not args.image.is_file():
        raise InputImageError(f"{args.image}: image file not found")
    image = read_photo_linear(args.image)
    if not args.depth.is_file():
        raise InputImageError(f"{args.depth}: depth file not found")
    depth = read_npy(args.depth, f"depth map {args.depth}")
    if depth.shape != image.shape[:2]:
        raise InputImageError(f"{args.depth}: depth is {depth.shape}, image is {image.shape[:2]}; sizes must match")
    if not np.all(np.isfinite(depth)) or depth.min() <= 0:
        raise InputImageError(f"{args.depth}: depth must be finite positive metres")
    clean = render_occlusion_aware(image, depth.astype(np.float32), bank)
    rng = np.random.default_rng(args.seed)
    capture = np.clip(clean + rng.normal(0, args.noise, clean.shape), 0, 1)
    write_png(args.out, capture, bits=16)
    print(f"wrote {args.out} ({capture.shape[1]}x{capture.shape[0]}, noise {args.noise})")
    return 0
