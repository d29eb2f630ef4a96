"""``cadfd reconstruct``: depth, all-in-focus image, confidence and cloud from one capture.

CLI contract (stable): cadfd reconstruct CAPTURE --psf-bank BANK --out-dir DIR
    [--method classical|dps] [--steps N] [--seed S] [--device auto|cpu|cuda]
The solver flags are the node's solver parameters (``cadfd_ros.params``), same names and defaults.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cadfd_ros.optics.psf_bank import PSFBank
    from cadfd_ros.pipeline import ReconstructionConfig


def add_solver_arguments(parser: argparse.ArgumentParser) -> None:
    """``--psf-bank`` and every solver flag, generated from the parameter schema (``cadfd_ros.params``)."""
    from cadfd_ros.params import INPUT, SOLVER, add_cli_arguments

    add_cli_arguments(parser, (INPUT, SOLVER), skip=("input_downscale",))


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("reconstruct", help="reconstruct depth and an all-in-focus image")
    parser.add_argument("capture", type=Path, help="8/16-bit PNG or TIFF, mono or RGB (linear, or sRGB with "
                        "--input-transfer srgb)")
    parser.add_argument("--out-dir", type=Path, required=True)
    add_solver_arguments(parser)
    for name in ("fx", "fy", "cx", "cy"):
        parser.add_argument(f"--{name}", type=float, default=None, help="intrinsics in pixels (default: bank metadata)")
    parser.set_defaults(func=_run)


def config_from_args(args: argparse.Namespace, **overrides: object) -> ReconstructionConfig:
    """The solver config from the generated flags (``overrides`` win)."""
    from cadfd_ros.params import SOLVER, values_from_args
    from cadfd_ros.pipeline import ReconstructionConfig

    return ReconstructionConfig.from_values({**values_from_args(args, (SOLVER,)), **overrides})


def warn_ignored_flags(values: dict) -> None:
    """One line on stderr naming the method-dps flags that ``values`` sets for method classical."""
    from cadfd_ros.params import PARAM_BY_NAME, ignored_by_method

    ignored = ignored_by_method(values)
    if ignored:
        flags = ", ".join(PARAM_BY_NAME[name].flag for name in ignored)
        print(f"cadfd: warning: {flags} apply to --method dps only; ignored with --method classical", file=sys.stderr)


def intrinsics_for(bank: PSFBank, width: int, height: int, args: argparse.Namespace
                   ) -> tuple[float, float, float, float]:
    """--fx/--fy/--cx/--cy, else the bank's focal length with the principal point at the centre."""
    from cadfd_ros.errors import CadfdError

    focal = bank.focal_length_px()
    fx = args.fx if args.fx is not None else focal
    fy = args.fy if args.fy is not None else (fx if args.fx is not None else focal)
    if fx is None or fy is None:
        raise CadfdError("no intrinsics: the bank has no focal_length_m and pixel_pitch_m; pass --fx/--fy, or "
                         "calibrate the bank with --focal-length-mm and --pixel-pitch-um")
    cx = args.cx if args.cx is not None else (width - 1) / 2.0
    cy = args.cy if args.cy is not None else (height - 1) / 2.0
    for name, value in (("fx", fx), ("fy", fy)):
        if not (math.isfinite(value) and value > 0):
            raise CadfdError(f"--{name} {value}: the focal length in pixels must be a finite number > 0")
    for name, value in (("cx", cx), ("cy", cy)):
        if not math.isfinite(value):
            raise CadfdError(f"--{name} {value}: the principal point must be a finite number of pixels")
    return float(fx), float(fy), float(cx), float(cy)


def _run(args: argparse.Namespace) -> int:
    from cadfd_ros.io.images import apply_input_transfer, read_capture
    from cadfd_ros.io.outputs import write_reconstruction
    from cadfd_ros.optics.psf_bank import default_psf_bank_path, load_psf_bank
    from cadfd_ros.pipeline import Reconstructor, check_capture

    from cadfd_ros.params import SOLVER, values_from_args

    bank = load_psf_bank(args.psf_bank or default_psf_bank_path())
    config = config_from_args(args)
    warn_ignored_flags(values_from_args(args, (SOLVER,)))
    capture = check_capture(apply_input_transfer(read_capture(args.capture), args.input_transfer), bank,
                            str(args.capture))  # the size check names the file, before any work
    intrinsics = intrinsics_for(bank, capture.shape[1], capture.shape[0], args)
    note = bank.frame_size_note(capture.shape[1], capture.shape[0])
    if note is not None:
        print(f"cadfd: warning: {args.capture}: {note}", file=sys.stderr)
    args.out_dir.mkdir(parents=True, exist_ok=True)  # an output under a file fails here, not after the solve
    result = Reconstructor(bank, config).reconstruct(capture)
    report = write_reconstruction(args.out_dir, result, intrinsics, (float(bank.depths[0]), float(bank.depths[-1])),
                                  {"capture": str(args.capture), "psf_bank": bank.source})
    print(f"wrote {args.out_dir}: depth {report['depth_range_m'][0]:.2f}-{report['depth_range_m'][1]:.2f} m, "
          f"residual {report['final_residual']:.4f}, {result.timings['total']:.2f} s")
    return 0
