"""Time one prior network call on CPU under the variants issue 14 asks about: fp32 (the default),
torch.inference_mode, channels-last, bf16 autocast, torch.compile and thread counts.

    .venv/bin/python scripts/bench_cpu_network.py [--size 144x184] [--repeats 10] [--no-compile]

The size is the padded frame the sampler feeds the network (160x120 plus half a 25 px PSF each side
is 184x144). Prints a markdown table of median milliseconds per call and the max abs difference of
each variant's output from fp32.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from cadfd_ros.prior.model import load_prior


def timed(fn, x, t, repeats: int) -> tuple[float, torch.Tensor]:
    out = fn(x, t)  # warm-up (and compilation)
    fn(x, t)
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        out = fn(x, t)
        times.append(time.perf_counter() - began)
    return 1e3 * statistics.median(times), out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="144x184", help="HEIGHTxWIDTH of the network input")
    parser.add_argument("--channels", type=int, default=3, choices=(1, 3))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to build)")
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    prior = load_prior("default", "cpu")
    x = torch.randn(1, args.channels, height, width, generator=torch.Generator().manual_seed(0))
    t = 200
    threads = torch.get_num_threads()

    def fp32(v, step):
        with torch.no_grad():
            return prior.predict_noise(v, step)

    def inference(v, step):
        with torch.inference_mode():
            return prior.predict_noise(v, step)

    def bf16(v, step):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return prior.predict_noise(v, step).float()

    variants = [("fp32, no_grad (default)", fp32, None), ("inference_mode", inference, None),
                ("bf16 autocast", bf16, None)]
    rows = []
    for name, fn, _ in variants:
        ms, out = timed(fn, x, t, args.repeats)
        rows.append((name, ms, out))
    reference = rows[0][2]
    prior.unet.to(memory_format=torch.channels_last)
    ms, out = timed(fp32, x.contiguous(memory_format=torch.channels_last), t, args.repeats)
    rows.append(("channels-last", ms, out))
    prior.unet.to(memory_format=torch.contiguous_format)
    for n in sorted({1, threads} - {threads}):
        torch.set_num_threads(n)
        ms, out = timed(fp32, x, t, args.repeats)
        rows.append((f"{n} thread(s)", ms, out))
    torch.set_num_threads(threads)
    if not args.no_compile:
        unet = prior.unet
        prior.unet = torch.compile(unet)
        began = time.perf_counter()
        try:
            ms, out = timed(fp32, x, t, args.repeats)
            rows.append((f"torch.compile (build {time.perf_counter() - began:.0f} s incl. warm-up)", ms, out))
        except Exception as exc:  # noqa: BLE001 - report, do not stop the table
            rows.append((f"torch.compile failed: {type(exc).__name__}: {str(exc)[:80]}", float("nan"), reference))
        prior.unet = unet
    print(f"network input {args.channels}x{height}x{width}, torch {torch.__version__}, {threads} threads\n")
    print("| variant | ms / call | vs default | max abs diff from fp32 |\n|---|---|---|---|")
    for name, ms, out in rows:
        print(f"| {name} | {ms:.1f} | {ms / rows[0][1]:.2f} | {float((out - reference).abs().max()):.2e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
