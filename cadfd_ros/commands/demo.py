"""``cadfd demo``: reconstruct the bundled sample capture with DFD-DPS beside the classical solver,
and write the pictures.

The sample is scikit-image's "coffee" photo (CC0, Rachel Michetti), rendered through the
bundled PSF bank over a procedural depth map; ``--regenerate`` rebuilds it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from cadfd_ros.optics.psf_bank import PSFBank
    from cadfd_ros.result import Reconstruction

SAMPLE_SEED = 7
SAMPLE_NOISE = 0.01


def register(subparsers: argparse._SubParsersAction) -> None:
    from cadfd_ros.params import INPUT, SOLVER, add_cli_arguments

    parser = subparsers.add_parser("demo", help="reconstruct the bundled sample capture (DFD-DPS and classical)")
    parser.add_argument("--out-dir", type=Path, default=Path("out/demo"))
    parser.add_argument("--regenerate", action="store_true", help="rebuild the bundled sample from its photo")
    parser.add_argument("--methods", default="dps,classical",
                        help="comma list of methods to run and compare (default: dps,classical); the first is the "
                             "headline, written to OUT_DIR, the others to OUT_DIR/METHOD/")
    add_cli_arguments(parser, (INPUT, SOLVER), skip=("input_downscale", "input_transfer", "method"))
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
    from cadfd_ros.errors import CadfdError
    from cadfd_ros.io.images import read_capture, read_photo_linear
    from cadfd_ros.io.outputs import write_reconstruction
    from cadfd_ros.optics.psf_bank import default_psf_bank_path, load_psf_bank
    from cadfd_ros.params import METHODS
    from cadfd_ros.pipeline import Reconstructor

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods or any(m not in METHODS for m in methods):
        raise CadfdError(f"--methods must be a comma list of {', '.join(METHODS)}, got {args.methods!r}")
    if args.regenerate:
        regenerate_sample()
    paths = sample_paths()
    bank = load_psf_bank(args.psf_bank or default_psf_bank_path())
    capture = read_capture(paths["capture"])
    with np.load(paths["depth"], allow_pickle=False) as data:
        truth = data["depth"]
    sharp = read_photo_linear(paths["photo"])
    height, width = capture.shape[:2]
    focal = bank.focal_length_px()
    intrinsics = (focal, focal, (width - 1) / 2.0, (height - 1) / 2.0)
    border = evaluation_mask(truth.shape, bank.half_size)
    textured = border & textured_mask(sharp)
    step = float(np.abs(np.diff(bank.inverse_depths)).mean())
    args.out_dir.mkdir(parents=True, exist_ok=True)  # an output under a file fails here, not after the solves
    results, all_scores = {}, {"capture_vs_sharp": image_metrics(capture, sharp, border)}
    for index, method in enumerate(methods):
        result = Reconstructor(bank, config_from_args(args, method=method)).reconstruct(capture)
        scores = {
            "depth_textured": depth_metrics(result.depth, truth, textured, step),
            "depth_all": depth_metrics(result.depth, truth, border, step),
            "all_in_focus": image_metrics(result.all_in_focus, sharp, border),
            "seconds": result.timings["total"],
        }
        out_dir = args.out_dir if index == 0 else args.out_dir / method
        write_reconstruction(out_dir, result, intrinsics, (float(bank.depths[0]), float(bank.depths[-1])),
                             {"capture": str(paths["capture"]), "psf_bank": bank.source, "scores_vs_truth": scores})
        results[method], all_scores[method] = result, scores
        print(f"demo: {width}x{height} capture reconstructed with {result.method} in {result.timings['total']:.2f} s: "
              f"delta<1.25 (textured) {scores['depth_textured']['delta1']:.3f}, all-in-focus "
              f"{scores['all_in_focus']['psnr']:.2f} dB (capture {all_scores['capture_vs_sharp']['psnr']:.2f} dB)")
    summary = save_summary(args.out_dir / "summary.png", capture, results, truth, sharp, bank, all_scores)
    print(json.dumps(all_scores, indent=2))
    others = ", ".join(f"{m}/" for m in methods[1:])
    print(f"wrote {args.out_dir}/ ({methods[0]}: depth.npy, aif.npy, aif.png, confidence.npy, depth.png, points.ply, "
          f"report.json{'; ' + others if others else ''}) and {summary}")
    return 0


def save_summary(path: Path, capture: np.ndarray, results: dict[str, Reconstruction], truth: np.ndarray,
                 sharp: np.ndarray, bank: PSFBank, scores: dict) -> Path:
    """One row of truth, then one row per method: depth, all-in-focus, confidence, with their scores."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cadfd_ros.io.images import linear_to_srgb

    near, far = float(bank.depths[0]), float(bank.depths[-1])
    names = {"dps": "DFD-DPS", "classical": "classical"}
    fig, axes = plt.subplots(1 + len(results), 3, figsize=(12, 2.8 * (1 + len(results))), squeeze=False)
    rows = [[(capture, f"coded capture ({scores['capture_vs_sharp']['psnr']:.1f} dB)", None),
             (truth, "true depth", "depth"), (sharp, "true sharp image", None)]]
    for method, result in results.items():
        s = scores[method]
        label = f"{names.get(method, method)}, {s['seconds']:.0f} s"
        rows.append([(result.depth, f"{label}: depth, δ<1.25 {s['depth_textured']['delta1']:.2f}", "depth"),
                     (result.all_in_focus, f"all-in-focus {s['all_in_focus']['psnr']:.1f} dB, "
                                           f"SSIM {s['all_in_focus']['ssim']:.2f}", None),
                     (result.confidence, "confidence", "conf")])
    for row_axes, row in zip(axes, rows):
        for ax, (image, title, kind) in zip(row_axes, row):
            if kind == "depth":
                shown = ax.imshow(image, cmap="turbo_r", vmin=near, vmax=far)
                fig.colorbar(shown, ax=ax, fraction=0.035, pad=0.02, label="m")
            elif kind == "conf":
                shown = ax.imshow(image, cmap="viridis", vmin=0, vmax=1)
                fig.colorbar(shown, ax=ax, fraction=0.035, pad=0.02)
            else:
                ax.imshow(linear_to_srgb(np.clip(image, 0, 1)), cmap="gray" if image.ndim == 2 else None)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
