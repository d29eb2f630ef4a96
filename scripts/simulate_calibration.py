#!/usr/bin/env python3
"""Simulated target photos, to try ``cadfd psf-bank calibrate`` and ``check`` without a camera.

    .venv/bin/python scripts/simulate_calibration.py out/calibration
    # then run the two commands it prints

Writes ``target.png`` (640x480) and 320x240 captures through a simulated lens that is *not* the
calibrator's model (cadfd_ros/optics/calibration_sim.py: the default mask misaligned by a
sub-pixel shift, a Gaussian core and a 5 % halo), focused at 1 m with 12 px of blur per
dioptre, at 0.55, 0.7, 1.4, 2 and 4 m (calibration) and 1.7 and 3 m (check), each with its own
gain, offset, rotation, shift and noise. It is the set test/test_calibration.py uses. With
``--true-bank`` it also writes the simulated lens's own bank at the calibrated layers, for
comparison.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--true-bank", action="store_true")
    args = parser.parse_args()

    from cadfd_ros.io.images import srgb_to_linear, write_png
    from cadfd_ros.optics.calibration_sim import SimulatedLens, random_capture
    from cadfd_ros.optics.masks import load_pattern
    from cadfd_ros.optics.psf_bank import PSFBank, save_psf_bank
    from cadfd_ros.optics.target import make_target, save_target, target_layout
    from cadfd_ros.optics.thin_lens import layer_depths
    from cadfd_ros.resources import config_dir

    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    image, layout = make_target(640, 480, 0), target_layout(640, 480)
    save_target(image, out / "target.png")
    linear = srgb_to_linear(image / 255.0).astype(np.float64)
    lens = SimulatedLens(load_pattern(config_dir() / "default_mask.png"), focus_distance_m=1.0, blur_scale_px=12.0)
    rng = np.random.default_rng(args.seed)
    shape = (240, 320)
    specs = {"calibrate": [], "check": []}
    for use, distances in (("calibrate", (0.55, 0.7, 1.4, 2.0, 4.0)), ("check", (1.7, 3.0))):
        for d in distances:
            capture = random_capture(linear, layout, shape, lens, d, rng)
            path = out / f"{use}_{d:g}m.png"
            write_png(path, capture, bits=16)
            specs[use].append(f"--capture {d:g}={path}")
    if args.true_bank:
        depths = layer_depths(0.55, 4.0, 8)
        save_psf_bank(PSFBank(np.stack([lens.psf(float(d), 17) for d in depths]), depths, {}), out / "true_bank.npz")
    print(f"cadfd psf-bank calibrate --target {out / 'target.png'} {' '.join(specs['calibrate'])} "
          f"--out {out / 'bank.npz'} --layers 8 --report {out / 'report.png'}")
    print(f"cadfd psf-bank check {out / 'bank.npz'} --target {out / 'target.png'} {' '.join(specs['check'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
