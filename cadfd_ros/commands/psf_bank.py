"""``cadfd psf-bank synth|show|design|target|calibrate|check``."""
from __future__ import annotations

import argparse
from pathlib import Path

from cadfd_ros.optics import thin_lens


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("psf-bank", help="synthesise, inspect or design PSF banks and masks")
    sub = parser.add_subparsers(dest="psf_command", required=True, metavar="ACTION")

    synth = sub.add_parser("synth", help="PSF bank from the thin-lens model and an aperture pattern")
    synth.add_argument("--pattern", type=Path, default=None, help="mask PNG/NPY (default: config/default_mask.png)")
    lens = thin_lens.DEFAULT_LENS
    synth.add_argument("--focal-length-mm", type=float, default=lens.focal_length_m * 1e3)
    synth.add_argument("--f-number", type=float, default=lens.f_number)
    synth.add_argument("--focus-m", type=float, default=lens.focus_distance_m)
    synth.add_argument("--pixel-pitch-um", type=float, default=lens.pixel_pitch_m * 1e6)
    synth.add_argument("--near-m", type=float, default=thin_lens.DEFAULT_NEAR_M)
    synth.add_argument("--far-m", type=float, default=thin_lens.DEFAULT_FAR_M)
    synth.add_argument("--layers", type=int, default=thin_lens.DEFAULT_NUM_LAYERS)
    synth.add_argument("--kernel-size", type=int, default=None, help="odd; default: largest blur + 2")
    synth.add_argument("--channels", type=int, choices=(1, 3), default=1)
    synth.add_argument("--out", type=Path, required=True, help="output .npz")
    synth.set_defaults(func=_synth)

    show = sub.add_parser("show", help="PNG contact sheet of a bank")
    show.add_argument("bank", type=Path)
    show.add_argument("--out", type=Path, default=None, help="PNG path (default: BANK with .png)")
    show.set_defaults(func=_show)

    design = sub.add_parser("design", help="design a binary coded mask for depth discrimination")
    design.add_argument("--out", type=Path, required=True, help="mask PNG")
    design.add_argument("--cells", type=int, default=13)
    design.add_argument("--restarts", type=int, default=6)
    design.add_argument("--seed", type=int, default=0)
    design.add_argument("--alias-weight", type=float, default=0.0, help="weight of the scale-alias term (0 or 1)")
    design.add_argument("--f-number", type=float, default=lens.f_number, help="camera the mask is designed for")
    design.add_argument("--focus-m", type=float, default=lens.focus_distance_m)
    design.set_defaults(func=_design)

    target = sub.add_parser("target", help="printable calibration target: random texture plus dot fiducials")
    target.add_argument("--out", type=Path, required=True, help="target PNG (8-bit sRGB grey)")
    target.add_argument("--width-px", type=int, default=1600)
    target.add_argument("--height-px", type=int, default=1200)
    target.add_argument("--seed", type=int, default=0)
    target.set_defaults(func=_target)


def _synth(args: argparse.Namespace) -> int:
    from cadfd_ros.optics.masks import load_pattern
    from cadfd_ros.optics.psf_bank import save_psf_bank
    from cadfd_ros.resources import config_dir

    pattern = load_pattern(args.pattern or config_dir() / "default_mask.png")
    lens = thin_lens.ThinLens(args.focal_length_mm * 1e-3, args.f_number, args.focus_m, args.pixel_pitch_um * 1e-6)
    bank = thin_lens.synthesize_psf_bank(pattern, lens, args.near_m, args.far_m, args.layers,
                                         args.kernel_size, args.channels)
    save_psf_bank(bank, args.out)
    cocs = lens.coc_px(bank.depths)
    print(f"wrote {args.out}: {bank.num_layers} layers {bank.depths[0]:.3f}-{bank.depths[-1]:.3f} m, "
          f"blur {cocs.min():+.1f}..{cocs.max():+.1f} px, kernel {bank.kernel_size}x{bank.kernel_size}")
    return 0


def _show(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from cadfd_ros.optics.psf_bank import load_psf_bank

    bank = load_psf_bank(args.bank)
    cols = min(8, bank.num_layers)
    rows = int(np.ceil(bank.num_layers / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows), squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index < bank.num_layers:
            psf = bank.psfs[index]
            image = psf[0] if bank.num_channels == 1 else np.moveaxis(psf / psf.max(), 0, -1)
            ax.imshow(image, cmap="gray", interpolation="nearest")
            ax.set_title(f"{bank.depths[index]:.2f} m", fontsize=8)
    fig.suptitle(f"{args.bank.name}: {bank.num_layers} layers, {bank.kernel_size}x{bank.kernel_size}")
    fig.tight_layout()
    out = args.out or args.bank.with_suffix(".png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(f"wrote {out}")
    return 0


def _design(args: argparse.Namespace) -> int:
    from cadfd_ros.optics.masks import circular_pattern, design_pattern, save_pattern, score_pattern

    base = thin_lens.DEFAULT_LENS
    lens = thin_lens.ThinLens(base.focal_length_m, args.f_number, args.focus_m, base.pixel_pitch_m)
    pattern, score = design_pattern(cells=args.cells, restarts=args.restarts, seed=args.seed, progress=True,
                                    alias_weight=args.alias_weight, lens=lens)
    save_pattern(pattern, args.out)
    circle = score_pattern(circular_pattern(), lens)
    print(f"wrote {args.out}")
    print("| aperture | min adjacent KL | min alias power | Wiener MSE | light vs circle |")
    print("|---|---|---|---|---|")
    for name, s in (("designed", score), ("open circle", circle)):
        print(f"| {name} | {s.min_adjacent_kl:.2f} | {s.min_alias_power:.4f} | {s.wiener_mse:.2e} | {s.throughput:.2f} |")
    return 0


def _target(args: argparse.Namespace) -> int:
    from cadfd_ros.optics.target import make_target, save_target, target_layout

    layout = target_layout(args.width_px, args.height_px)
    save_target(make_target(args.width_px, args.height_px, args.seed), args.out)
    print(f"wrote {args.out}: {args.width_px}x{args.height_px} px, 5 dots of radius {layout.dot_radius:.0f} px, "
          f"texture cells {layout.cell_px} px. Print it without scaling to fit, or show it full-screen; "
          f"the blur must stay smaller than a dot radius in the capture")
    return 0
