"""``cadfd demo``: reconstruct the bundled sample capture and write the pictures.

The sample is scikit-image's "coffee" photo (CC0, Rachel Michetti), rendered through the
bundled PSF bank over a procedural depth map; ``--regenerate`` rebuilds it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

SAMPLE_SEED = 7
SAMPLE_NOISE = 0.01


def register(subparsers: argparse._SubParsersAction) -> None:
    from cadfd_ros.commands.reconstruct import add_solver_arguments

    parser = subparsers.add_parser("demo", help="reconstruct the bundled sample capture")
    parser.add_argument("--out-dir", type=Path, default=Path("out/demo"))
    parser.add_argument("--regenerate", action="store_true", help="rebuild the bundled sample from its photo")
    add_solver_arguments(parser)
    parser.set_defaults(func=_run)


def sample_paths() -> dict[str, Path]:
    from cadfd_ros.resources import DATA_DIR

    return {
        "photo": DATA_DIR / "sample_photo.png",
        "depth": DATA_DIR / "sample_depth.npz",
        "capture": DATA_DIR / "sample_capture.png",
    }


def regenerate_sample() -> None:
    import numpy as np
    from PIL import Image

    from cadfd_ros.bench.scenes import load_photo, make_scene
    from cadfd_ros.io.images import write_png
    from cadfd_ros.optics.psf_bank import default_psf_bank_path, load_psf_bank

    paths = sample_paths()
    bank = load_psf_bank(default_psf_bank_path())
    scene = make_scene(load_photo("coffee"), bank, 400, 600, SAMPLE_NOISE, seed=SAMPLE_SEED, name="coffee")
    import skimage.data

    Image.fromarray(skimage.data.coffee()).save(paths["photo"])
    np.savez_compressed(paths["depth"], depth=scene.depth.astype(np.float32))
    write_png(paths["capture"], scene.capture, bits=16)


def _run(args: argparse.Namespace) -> int:
    import numpy as np

    from cadfd_ros.bench.metrics import depth_metrics, evaluation_mask, image_metrics, textured_mask
    from cadfd_ros.commands.reconstruct import config_from_args
    from cadfd_ros.io.images import read_capture, read_photo_linear
    from cadfd_ros.io.outputs import write_reconstruction
    from cadfd_ros.optics.psf_bank import default_psf_bank_path, load_psf_bank
    from cadfd_ros.pipeline import Reconstructor

    if args.regenerate:
        regenerate_sample()
    paths = sample_paths()
    bank = load_psf_bank(args.psf_bank or default_psf_bank_path())
    capture = read_capture(paths["capture"])
    with np.load(paths["depth"], allow_pickle=False) as data:
        truth = data["depth"]
    sharp = read_photo_linear(paths["photo"])
    result = Reconstructor(bank, config_from_args(args)).reconstruct(capture)
    height, width = capture.shape[:2]
    focal = bank.focal_length_px()
    intrinsics = (focal, focal, (width - 1) / 2.0, (height - 1) / 2.0)
    border = evaluation_mask(truth.shape, bank.half_size)
    textured = border & textured_mask(sharp)
    step = float(np.abs(np.diff(bank.inverse_depths)).mean())
    scores = {
        "depth_textured": depth_metrics(result.depth, truth, textured, step),
        "depth_all": depth_metrics(result.depth, truth, border, step),
        "all_in_focus": image_metrics(result.all_in_focus, sharp, border),
        "capture_vs_sharp": image_metrics(capture, sharp, border),
    }
    write_reconstruction(args.out_dir, result, intrinsics, (float(bank.depths[0]), float(bank.depths[-1])),
                         {"capture": str(paths["capture"]), "psf_bank": bank.source, "scores_vs_truth": scores})
    summary = save_summary(args.out_dir / "summary.png", capture, result, truth, sharp, bank)
    print(f"demo: {width}x{height} capture reconstructed with {result.method} in {result.timings['total']:.2f} s")
    print(json.dumps(scores, indent=2))
    print(f"wrote {args.out_dir}/ (depth.npy, aif.npy, aif.png, confidence.npy, depth.png, points.ply, "
          f"report.json) and {summary}")
    return 0


def save_summary(path: Path, capture, result, truth, sharp, bank) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cadfd_ros.io.images import linear_to_srgb

    near, far = float(bank.depths[0]), float(bank.depths[-1])
    fig, axes = plt.subplots(2, 3, figsize=(12, 5.6))
    panels = [
        (capture, "coded capture", None), (result.depth, f"depth ({result.method})", "depth"),
        (result.all_in_focus, "all-in-focus", None), (result.confidence, "confidence", "conf"),
        (truth, "true depth", "depth"), (sharp, "true sharp image", None),
    ]
    for ax, (image, title, kind) in zip(axes.flat, panels):
        if kind == "depth":
            shown = ax.imshow(image, cmap="turbo_r", vmin=near, vmax=far)
            fig.colorbar(shown, ax=ax, fraction=0.035, pad=0.02, label="m")
        elif kind == "conf":
            shown = ax.imshow(image, cmap="viridis", vmin=0, vmax=1)
            fig.colorbar(shown, ax=ax, fraction=0.035, pad=0.02)
        else:
            ax.imshow(linear_to_srgb(image), cmap="gray" if image.ndim == 2 else None)
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
