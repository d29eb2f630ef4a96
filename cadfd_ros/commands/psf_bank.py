"""``cadfd psf-bank synth|show|design|target|calibrate|check``."""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING

from cadfd_ros.errors import CadfdError
from cadfd_ros.optics import thin_lens

if TYPE_CHECKING:
    from cadfd_ros.optics.calibration import CalibrationResult, LensFit

MAX_TARGET_SIDE = 16384  # px: the target is one image in memory


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("psf-bank", help="synthesise, inspect or design PSF banks and masks")
    sub = parser.add_subparsers(dest="psf_command", required=True, metavar="ACTION")

    synth = sub.add_parser("synth", help="PSF bank from the thin-lens model and an aperture pattern")
    synth.add_argument("--pattern", type=Path, default=None, help="mask PNG/NPY (default: config/default_mask.png)")
    lens = thin_lens.DEFAULT_LENS
    synth.add_argument("--focal-length-mm", type=float, default=lens.focal_length_m * 1e3)
    synth.add_argument("--f-number", type=float, default=lens.f_number, help="lens f-number (default: %(default)s)")
    synth.add_argument("--focus-m", type=float, default=lens.focus_distance_m,
                       help="focus distance in m (default: %(default)s)")
    synth.add_argument("--pixel-pitch-um", type=float, default=lens.pixel_pitch_m * 1e6,
                       help="sensor pixel pitch in micrometres (default: %(default)s)")
    synth.add_argument("--near-m", type=float, default=thin_lens.DEFAULT_NEAR_M,
                       help="nearest layer in m (default: %(default)s)")
    synth.add_argument("--far-m", type=float, default=thin_lens.DEFAULT_FAR_M,
                       help="farthest layer in m (default: %(default)s)")
    synth.add_argument("--layers", type=int, default=thin_lens.DEFAULT_NUM_LAYERS,
                       help="depth layers, even in inverse depth (default: %(default)s)")
    synth.add_argument("--kernel-size", type=int, default=None, help="odd; default: largest blur + 2")
    synth.add_argument("--channels", type=int, choices=(1, 3), default=1,
                       help="1: mono bank, 3: the same PSFs per colour channel (default: %(default)s)")
    synth.add_argument("--out", type=Path, required=True, help="output .npz")
    synth.set_defaults(func=_synth)

    show = sub.add_parser("show", help="PNG contact sheet of a bank")
    show.add_argument("bank", type=Path)
    show.add_argument("--out", type=Path, default=None, help="PNG path (default: BANK with .png)")
    show.set_defaults(func=_show)

    design = sub.add_parser("design", help="design a binary coded mask for depth discrimination")
    design.add_argument("--out", type=Path, required=True, help="mask PNG")
    design.add_argument("--cells", type=int, default=13, help="mask cells per side (default: %(default)s)")
    design.add_argument("--restarts", type=int, default=6, help="random restarts of the search (default: %(default)s)")
    design.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    design.add_argument("--alias-weight", type=float, default=0.0,
                        help="weight of the scale-alias term, >= 0 (0: off; 1: the setting the README measures; "
                             "default: %(default)s)")
    design.add_argument("--f-number", type=float, default=lens.f_number, help="camera the mask is designed for")
    design.add_argument("--focus-m", type=float, default=lens.focus_distance_m,
                        help="focus distance in m (default: %(default)s)")
    design.set_defaults(func=_design)

    target = sub.add_parser("target", help="printable calibration target: random texture plus dot fiducials")
    target.add_argument("--out", type=Path, required=True, help="target PNG (8-bit sRGB grey)")
    target.add_argument("--width-px", type=int, default=1600, help="target width in pixels (default: %(default)s)")
    target.add_argument("--height-px", type=int, default=1200, help="target height in pixels (default: %(default)s)")
    target.add_argument("--seed", type=int, default=0,
                        help="seed of the random texture: the same seed gives the same target (default: %(default)s)")
    target.set_defaults(func=_target)

    calibrate = sub.add_parser("calibrate", help="PSF bank from photos of the target at known distances")
    calibrate.add_argument("--target", type=Path, required=True, help="the target PNG that was printed or shown")
    calibrate.add_argument("--capture", action="append", required=True, metavar="DIST_M=CAPTURE.png",
                           help="a photo of the target at DIST_M metres (repeat; 3 or more distances)")
    calibrate.add_argument("--out", type=Path, required=True, help="output bank .npz")
    calibrate.add_argument("--layers", type=int, default=thin_lens.DEFAULT_NUM_LAYERS,
                           help="depth layers of the bank, even in inverse depth (default: %(default)s)")
    calibrate.add_argument("--near-m", type=float, default=None, help="nearest layer (default: nearest capture)")
    calibrate.add_argument("--far-m", type=float, default=None, help="farthest layer (default: farthest capture)")
    calibrate.add_argument("--report", type=Path, default=None, help="report PNG: PSFs, residuals, fitted lens")
    calibrate.add_argument("--kernel-size", type=int, default=0,
                           help="odd PSF estimation window in px; 0 = 8%% of the capture's short side")
    calibrate.add_argument("--regularisation", type=float, default=0.02,
                           help="PSF gradient penalty (x var(target); default: %(default)s)")
    calibrate.add_argument("--no-refine-registration", dest="refine_registration", action="store_false",
                           help="keep the dot homography (no joint ECC refinement with the PSF)")
    calibrate.add_argument("--focal-length-mm", type=float, default=None,
                           help="with --pixel-pitch-um: write the lens metadata (intrinsics, f-number) too")
    calibrate.add_argument("--pixel-pitch-um", type=float, default=None)
    _add_input_transfer(calibrate)
    calibrate.set_defaults(func=_calibrate)

    check = sub.add_parser("check", help="validate a bank against new target photos at known distances")
    check.add_argument("bank", type=Path)
    check.add_argument("--target", type=Path, required=True, help="the target PNG that was printed or shown")
    check.add_argument("--capture", action="append", required=True, metavar="DIST_M=CAPTURE.png")
    check.add_argument("--max-error", type=float, default=0.1,
                       help="exit status 1 when any capture's depth is off by more than this fraction "
                            "(default: %(default)s)")
    _add_input_transfer(check)
    check.set_defaults(func=_check)


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

    out = args.out or args.bank.with_suffix(".png")
    if out.suffix.lower() != ".png":  # matplotlib would append .png
        raise CadfdError(f"--out {out}: the contact sheet is a .png file")
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
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(f"wrote {out}")
    return 0


def _design(args: argparse.Namespace) -> int:
    from cadfd_ros.optics.masks import circular_pattern, design_pattern, save_pattern, score_pattern

    if args.cells < 3:
        raise CadfdError(f"--cells {args.cells}: a mask needs at least 3 x 3 cells")
    if args.restarts < 1:
        raise CadfdError(f"--restarts {args.restarts}: at least one search is needed")
    if not (math.isfinite(args.alias_weight) and args.alias_weight >= 0):
        raise CadfdError(f"--alias-weight {args.alias_weight}: must be a finite number >= 0")
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
    from cadfd_ros.optics.target import CalibrationError, make_target, save_target, target_layout

    if max(args.width_px, args.height_px) > MAX_TARGET_SIDE:
        raise CalibrationError(f"--width-px/--height-px {args.width_px}x{args.height_px}: at most {MAX_TARGET_SIDE} "
                               f"px a side (a print at 300 dpi is 1.4 m wide)")
    layout = target_layout(args.width_px, args.height_px)
    save_target(make_target(args.width_px, args.height_px, args.seed), args.out)
    print(f"wrote {args.out}: {args.width_px}x{args.height_px} px, 5 dots of radius {layout.dot_radius:.0f} px, "
          f"texture cells {layout.cell_px} px. Print it at any size (keep its aspect ratio), or show it full-screen; "
          f"the blur must stay smaller than a dot radius in the capture")
    return 0


def _add_input_transfer(parser: argparse.ArgumentParser) -> None:
    from cadfd_ros.params import PARAM_BY_NAME

    spec = PARAM_BY_NAME["input_transfer"]
    parser.add_argument(spec.flag, dest=spec.name, choices=spec.choices, default=spec.default,
                        help="transfer curve of the photos, inverted before fitting: linear (raw sensors) or srgb "
                             f"(gamma-encoded 8-bit photos) (default: {spec.default})")


def parse_capture_spec(spec: str) -> tuple[float, str]:
    """``DIST_M=PATH`` -> (metres, path); a one-line CalibrationError naming the capture."""
    from cadfd_ros.optics.target import CalibrationError

    if "=" not in spec:
        raise CalibrationError(f"{spec}: expected DIST_M=CAPTURE.png (distance in metres, '=', the photo)")
    text, path = spec.split("=", 1)
    try:
        distance = float(text)
    except ValueError:
        distance = float("nan")
    if not (distance > 0 and distance < float("inf")):
        raise CalibrationError(f"{path}: distance {text!r} is not a positive number of metres")
    return distance, path


def _read_captures(specs: list[str], transfer: str) -> list[tuple[float, object, str]]:
    from cadfd_ros.io.images import apply_input_transfer, read_capture

    captures = []
    for spec in specs:
        distance, path = parse_capture_spec(spec)
        captures.append((distance, apply_input_transfer(read_capture(path), transfer), path))
    return captures


def _calibrate(args: argparse.Namespace) -> int:
    import sys

    from cadfd_ros.optics import calibration as cal
    from cadfd_ros.optics.psf_bank import load_psf_bank, save_psf_bank
    from cadfd_ros.optics.target import CalibrationError, load_target

    if args.kernel_size < 0 or (args.kernel_size and args.kernel_size % 2 == 0):
        raise CalibrationError(f"--kernel-size must be 0 (automatic) or a positive odd size, got {args.kernel_size}")
    if not (math.isfinite(args.regularisation) and args.regularisation >= 0):
        raise CalibrationError(f"--regularisation {args.regularisation}: must be a finite number >= 0")
    captures = _read_captures(args.capture, args.input_transfer)
    distances = sorted({d for d, _, _ in captures})
    if len(distances) < cal.MIN_DISTANCES:
        names = ", ".join(f"{name} ({d:g} m)" for d, _, name in captures)
        raise CalibrationError(f"need captures at {cal.MIN_DISTANCES} or more distinct distances, got "
                               f"{len(distances)}: {names}")
    target, layout = load_target(args.target)
    metadata = {}
    if (args.focal_length_mm is None) != (args.pixel_pitch_um is None):
        raise CalibrationError("--focal-length-mm and --pixel-pitch-um go together")
    result = cal.calibrate(target, layout, captures, args.near_m, args.far_m, args.layers,
                           args.kernel_size or None, args.regularisation, args.refine_registration)
    fit = result.fit
    if args.focal_length_mm is not None:
        metadata = lens_metadata(fit, args.focal_length_mm * 1e-3, args.pixel_pitch_um * 1e-6)
        result.bank = cal.PSFBank(result.bank.psfs, result.bank.depths, {**result.bank.metadata, **metadata},
                                  source="calibrated")
    save_psf_bank(result.bank, args.out)
    load_psf_bank(args.out)  # the loader's validation must accept what we wrote
    for r, c, m, corr in zip(result.captures, fit.cocs, fit.measured_cocs, fit.correlations):
        print(f"{r.name}: {r.distance_m:g} m, blur {m:+.2f} px (model {c:+.2f}), model/PSF correlation {corr:.3f}, "
              f"residual {r.residual_rms:.4f}, gain {r.gain:.3f} offset {r.offset:+.3f}, dots {r.registration.rms_px:.2f} px")
    print(f"fitted lens: focus {fit.focus_distance_m:.3f} m, {fit.blur_per_dioptre_px:.2f} px of blur per dioptre, "
          f"blur at infinity {fit.a_px:+.2f} px, sigma0 {fit.sigma0_px:.2f} px")
    for warning in result.warnings:
        print(f"cadfd psf-bank calibrate: warning: {warning}", file=sys.stderr)
    if result.extrapolated:
        depths = result.bank.depths
        names = ", ".join(f"{i} ({depths[i]:.3f} m)" for i in result.extrapolated)
        print(f"cadfd psf-bank calibrate: warning: layers {names} lie outside the calibrated distances "
              f"{min(distances):g}-{max(distances):g} m and are extrapolated from the fitted model", file=sys.stderr)
    bank = result.bank
    print(f"wrote {args.out}: {bank.num_layers} layers {bank.depths[0]:.3f}-{bank.depths[-1]:.3f} m, "
          f"kernel {bank.kernel_size}x{bank.kernel_size}")
    if args.report:
        write_calibration_report(result, args.report)
        print(f"wrote {args.report}")
    return 0


def lens_metadata(fit: LensFit, focal_length_m: float, pixel_pitch_m: float) -> dict[str, float]:
    """Bank metadata from the fit: c = A f (s - s_f) / (s (s_f - f) pitch) gives the aperture
    A = |b| (s_f - f) pitch / (f s_f) from the blur per dioptre |b|."""
    from cadfd_ros.optics.target import CalibrationError

    focus = fit.focus_distance_m
    if not (focus > focal_length_m and focus < float("inf")):
        raise CalibrationError(f"fitted focus distance {focus:.3f} m is not beyond the focal length: "
                               "cannot write lens metadata")
    aperture = fit.blur_per_dioptre_px * (focus - focal_length_m) * pixel_pitch_m / (focal_length_m * focus)
    return {"focal_length_m": focal_length_m, "f_number": focal_length_m / aperture,
            "focus_distance_m": focus, "pixel_pitch_m": pixel_pitch_m}


def write_calibration_report(result: CalibrationResult, path: Path) -> Path:
    """PNG: per capture the calibrated PSF, the model's PSF and the residual; the blur fit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fit = result.fit
    n = len(result.captures)
    fig, axes = plt.subplots(4, n, figsize=(2.2 * n, 8.4), squeeze=False)
    for i, (r, c) in enumerate(zip(result.captures, fit.cocs)):
        model = fit.psf(r.distance_m, r.psf.shape[-1])
        vmax = max(r.psf.max(), model.max())
        axes[0, i].imshow(r.psf, cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
        axes[0, i].set_title(f"{r.distance_m:g} m: calibrated", fontsize=8)
        axes[1, i].imshow(model, cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
        axes[1, i].set_title(f"model c={c:+.1f} px, r={fit.correlations[i]:.3f}", fontsize=8)
        res = r.residual_image
        lim = 4 * r.residual_rms * abs(r.gain) + 1e-9
        axes[2, i].imshow(np.nan_to_num(res), cmap="RdBu", vmin=-lim, vmax=lim, interpolation="nearest")
        axes[2, i].set_title(f"residual rms {r.residual_rms:.4f}", fontsize=8)
        for row in range(3):
            axes[row, i].axis("off")
    for ax in axes[3, 1:]:
        ax.remove()
    ax = fig.add_subplot(4, 1, 4)
    axes[3, 0].remove()
    u = 1.0 / np.array([r.distance_m for r in result.captures])
    grid = np.linspace(min(u.min(), 1 / result.bank.depths[-1]) * 0.9, max(u.max(), 1 / result.bank.depths[0]) * 1.1, 50)
    ax.plot(grid, fit.a_px + fit.b_px_m * grid, "-", label="thin-lens fit")
    ax.plot(u, fit.measured_cocs, "o", label="calibrated PSFs")
    ax.plot(1 / result.bank.depths, fit.coc_px(result.bank.depths), "|", ms=12, label="bank layers")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("1 / distance (dioptres)")
    ax.set_ylabel("signed blur (px)")
    ax.legend(fontsize=8)
    ax.set_title(f"focus {fit.focus_distance_m:.3f} m, {fit.blur_per_dioptre_px:.2f} px per dioptre, "
                 f"sigma0 {fit.sigma0_px:.2f} px", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _check(args: argparse.Namespace) -> int:
    import sys

    from cadfd_ros.optics import calibration as cal
    from cadfd_ros.optics.psf_bank import load_psf_bank
    from cadfd_ros.optics.target import load_target

    if not (math.isfinite(args.max_error) and args.max_error > 0):
        raise CadfdError(f"--max-error {args.max_error}: a relative depth error > 0, such as 0.1 for 10%")
    bank = load_psf_bank(args.bank)
    captures = _read_captures(args.capture, args.input_transfer)
    target, layout = load_target(args.target)
    print("| capture | distance (m) | bank reads (m) | error (m) | error | re-blur residual |")
    print("|---|---|---|---|---|---|")
    worst = 0.0
    for distance, image, name in captures:
        note = bank.frame_size_note(image.shape[1], image.shape[0])
        if note is not None:
            print(f"cadfd psf-bank check: warning: {name}: {note}", file=sys.stderr)
        row = cal.check_capture(bank, target, layout, image, distance, name)
        worst = max(worst, abs(row.relative_error))
        print(f"| {name} | {distance:g} | {row.depth_m:.3f} | {row.error_m:+.3f} | {100 * row.relative_error:+.1f}% "
              f"| {row.residual_rms:.4f} |")
    focus = bank.metadata.get("focus_distance_m")
    if focus is not None and bank.depths[0] < focus < bank.depths[-1]:
        print(f"note: the bank straddles its focus distance ({focus:.3f} m); equal blurs either side of focus "
              "differ only by the mask's 180-degree rotation, so a nearly symmetric mask can read the wrong side")
    ok = worst <= args.max_error
    print(f"{'ok' if ok else 'FAIL'}: worst depth error {100 * worst:.1f}% (limit {100 * args.max_error:.0f}%)")
    return 0 if ok else 1
