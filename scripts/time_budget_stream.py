"""Does ``time_budget_ms`` hold on a stream? Frames of one size through one ``Reconstructor`` (method dps), as the
node runs them: the steps each frame took and its whole time (classical start included) against the budget.

The first frame is priced from a timed network call and upper-end ratios to it (``first_frame_costs``), the later
ones from the cold frames before (``DiffusionPosteriorSampler.predicted_seconds``). Tuning photo astronaut, σ 0.01, the bundled bank.

With ``--temporal-warm-start`` the frames after the first start warm (the same capture each frame, so no cut): a
warm frame runs its one step whatever the budget and warns when its own price (the start refit included) does not fit.

usage: python scripts/time_budget_stream.py [--runs 160x120:mono:300,320x240:rgb:1500,640x480:rgb:6000] [--frames 4]
       [--temporal-warm-start]
"""
from __future__ import annotations

import argparse
import time

from cadfd_ros.bench.scenes import make_scene
from cadfd_ros.optics.psf_bank import load_psf_bank
from cadfd_ros.pipeline import ReconstructionConfig, Reconstructor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="160x120:mono:300,320x240:rgb:1500,640x480:rgb:6000",
                        help="WIDTHxHEIGHT:mono|rgb:BUDGET_MS, comma-separated")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--bank", default="config/default_psf_bank.npz")
    parser.add_argument("--temporal-warm-start", action="store_true", help="warm-start the frames after the first")
    args = parser.parse_args()
    bank = load_psf_bank(args.bank)
    for run in args.runs.split(","):
        size, channels, budget = run.split(":")
        width, height = (int(v) for v in size.split("x"))
        scene = make_scene("astronaut", bank, height, width, noise_sigma=0.01)
        capture = scene.capture if channels == "rgb" else scene.capture.mean(axis=2)
        reconstructor = Reconstructor(bank, ReconstructionConfig(
            method="dps", time_budget_ms=float(budget), seed=0, temporal_warm_start=args.temporal_warm_start))
        frames = []
        for _ in range(args.frames):
            began = time.perf_counter()
            result = reconstructor.reconstruct(capture)
            warned = " (warned)" if any("time budget" in note for note in result.notes) else ""
            frames.append(f"{result.start} {result.steps} steps in {1e3 * (time.perf_counter() - began):.0f} ms{warned}")
        print(f"{size} {channels}, budget {float(budget):.0f} ms: " + "; ".join(frames), flush=True)


if __name__ == "__main__":
    main()
