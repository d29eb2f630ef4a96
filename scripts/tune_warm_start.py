"""Choose the warm start's constants (SamplerParams.warm_start_sigma, warm_steps) on tuning photos only.

One sequence of the sequence bench (tuning photos of config/cameras.toml), the cold arm once, then the warm
arm per candidate (sigma, steps), with cut detection off (threshold inf) so every frame after the first of a
segment is warm; prints the paired differences, the drift and the data terms of warm frames against those
at the cuts (for warm_cut_data_term).

usage: python scripts/tune_warm_start.py [--frames 60] [--cut-every 30] [--size 120x160]
       [--candidates 0.1:1,0.2:1,0.4:1,0.2:2]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    import torch

    from cadfd_ros.bench.runner import score
    from cadfd_ros.bench.sequence import SequenceConfig, make_sequence
    from cadfd_ros.optics.psf_bank import default_psf_bank_path, load_psf_bank
    from cadfd_ros.pipeline import ReconstructionConfig, Reconstructor

    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--cut-every", type=int, default=30)
    parser.add_argument("--size", default="120x160")
    parser.add_argument("--photos", default="astronaut,coffee,chelsea")  # tuning split
    parser.add_argument("--candidates", default="0.1:1,0.2:1,0.4:1,0.2:2")
    parser.add_argument("--shift", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--cold-cache", default="", help="JSON file keeping the cold arm's scores between runs")
    args = parser.parse_args()
    torch.set_num_threads(2)
    height, width = (int(v) for v in args.size.split("x"))
    bank = load_psf_bank(default_psf_bank_path())
    config = SequenceConfig(frames=args.frames, cut_every=args.cut_every, height=height, width=width,
                            max_shift_px=args.shift, seed=args.seed)
    scenes = list(make_sequence(bank, tuple(args.photos.split(",")), config))
    solver = ReconstructionConfig(method="dps", device="cpu")
    cold = Reconstructor(bank, solver)
    cache = Path(args.cold_cache) if args.cold_cache else None
    key = f"{args.frames}-{args.cut_every}-{args.size}-{args.photos}-{args.shift}-{args.seed}"
    cached = json.loads(cache.read_text()) if cache and cache.is_file() else {}
    t = time.perf_counter()
    if key in cached:  # the cold arm depends on nothing tuned here
        cold_scores = cached[key]
    else:
        cold_scores = []
        for _, _, scene in scenes:
            r = cold.reconstruct(scene.capture)
            cold_scores.append(score(r.depth, r.all_in_focus, scene, bank))
        if cache:
            cache.write_text(json.dumps({**cached, key: cold_scores}))
    print(f"cold: {len(scenes)} frames in {time.perf_counter() - t:.0f} s; delta {np.mean([m['tex_delta1'] for m in cold_scores]):.4f}"
          f" psnr {np.mean([m['aif_psnr'] for m in cold_scores]):.3f}", flush=True)
    for candidate in args.candidates.split(","):
        sigma, steps = candidate.split(":")
        warm = Reconstructor(bank, replace(solver, temporal_warm_start=True))
        warm.sampler.prior = cold.sampler.prior
        warm.sampler.params = replace(warm.sampler.params, warm_start_sigma=float(sigma), warm_steps=int(steps),
                                      warm_cut_data_term=float("inf"))
        d_delta, d_psnr, terms, cut_terms, seconds = [], [], [], [], []
        t = time.perf_counter()
        for (index, segment, scene), c in zip(scenes, cold_scores):
            began = time.perf_counter()
            r = warm.reconstruct(scene.capture)
            m = score(r.depth, r.all_in_focus, scene, bank)
            if index % config.cut_every == 0:
                cut_terms.append(r.warm_data_term)
                warm.reset_temporal_start()  # measured the cut's data term; start the segment cold
                warm.reconstruct(scene.capture)
                continue
            seconds.append(time.perf_counter() - began)
            terms.append(r.warm_data_term)
            d_delta.append(m["tex_delta1"] - c["tex_delta1"])
            d_psnr.append(m["aif_psnr"] - c["aif_psnr"])
        n = len(d_delta)
        third = max(1, n // 3)
        print(f"sigma {sigma} steps {steps}: paired delta {np.mean(d_delta):+.4f} psnr {np.mean(d_psnr):+.3f} dB; "
              f"last third delta {np.mean(d_delta[-third:]):+.4f} psnr {np.mean(d_psnr[-third:]):+.3f}; "
              f"warm s/frame {np.median(seconds):.2f}; data term warm frames median {np.median(terms):.2f} "
              f"max {np.max(terms):.2f}; at cuts {[round(float(v), 1) for v in cut_terms if np.isfinite(v)]}; "
              f"{time.perf_counter() - t:.0f} s", flush=True)


if __name__ == "__main__":
    main()
