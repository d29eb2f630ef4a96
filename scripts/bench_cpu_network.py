"""Time one prior network call on CPU under the variants issue 14 asks about: fp32 and bf16 autocast (where
the CPU has native bf16), channels-last and contiguous, torch.inference_mode, torch.compile and thread counts.
The sampler's default on this CPU (``default_network_dtype``, ``default_network_memory_format``) is marked.

    .venv/bin/python scripts/bench_cpu_network.py [--size 144x184] [--repeats 10] [--no-compile]

The size is the padded frame the sampler feeds the network (160x120 plus half a 25 px PSF each side
is 184x144). Prints a markdown table of median milliseconds per call and the max abs difference of
each variant's output from fp32 contiguous, each the median over interleaved rounds.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from cadfd_ros.bench.speed import median_call_ms
from cadfd_ros.prior.model import load_prior
from cadfd_ros.runtime import keep_freed_memory
from cadfd_ros.solvers.dps import default_network_dtype, default_network_memory_format


def timed(fn, x, t, repeats: int) -> tuple[float, torch.Tensor]:
    out = fn(x, t)  # warm-up (and compilation); a second untimed call below
    return median_call_ms(lambda: fn(x, t), "cpu", repeats, warmup=1), out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="144x184", help="HEIGHTxWIDTH of the network input")
    parser.add_argument("--channels", type=int, default=3, choices=(1, 3))
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per variant and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the variants")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to build)")
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    keep_freed_memory()  # as cadfd and the node do
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

    contiguous, channels_last = torch.contiguous_format, torch.channels_last
    # (name, call, memory format, threads); fp32 contiguous first: the reference for the differences
    variants = [("fp32, no_grad, contiguous", fp32, contiguous, threads),
                ("fp32, no_grad, channels-last", fp32, channels_last, threads),
                ("fp32, inference_mode, channels-last", inference, channels_last, threads)]
    native_bf16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if native_bf16:  # emulated bf16 took 6.3 s a call on the AMD EPYC without AVX512-BF16: not worth timing
        variants += [("bf16 autocast, no_grad, contiguous", bf16, contiguous, threads),
                     ("bf16 autocast, no_grad, channels-last", bf16, channels_last, threads)]
    fewer = sorted({1, threads} - {threads})
    variants += [(f"fp32, {n} thread(s), channels-last", fp32, channels_last, n) for n in fewer]
    if native_bf16:
        variants += [(f"bf16 autocast, {n} thread(s), channels-last", bf16, channels_last, n) for n in fewer]
    cpu = torch.device("cpu")
    default = (f"{'bf16 autocast' if default_network_dtype(cpu) == torch.bfloat16 else 'fp32'}, no_grad, "
               f"{'channels-last' if default_network_memory_format(cpu) == channels_last else 'contiguous'}")
    # Interleaved rounds, median over them: the first variant timed in a fresh process reads high, so a
    # single pass in order favours the later ones.
    times: dict[str, list[float]] = {name: [] for name, *_ in variants}
    outputs: dict[str, torch.Tensor] = {}
    for _ in range(args.rounds):
        for name, fn, memory_format, n in variants:
            prior.set_memory_format(memory_format)
            torch.set_num_threads(n)
            ms, outputs[name] = timed(fn, x, t, args.repeats)
            times[name].append(ms)
    rows = [(name, statistics.median(times[name]), outputs[name]) for name, *_ in variants]
    reference = rows[0][2]
    prior.set_memory_format(contiguous)
    torch.set_num_threads(threads)
    if not args.no_compile:
        unet = prior.unet
        prior.unet = torch.compile(unet)
        began = time.perf_counter()
        try:
            ms, out = timed(fp32, x, t, args.repeats)
            rows.append((f"torch.compile, contiguous (build {time.perf_counter() - began:.0f} s incl. warm-up)", ms, out))
        except Exception as exc:  # noqa: BLE001 - report, do not stop the table
            rows.append((f"torch.compile failed: {type(exc).__name__}: {str(exc)[:80]}", float("nan"), reference))
        prior.unet = unet
    print(f"network input {args.channels}x{height}x{width}, torch {torch.__version__}, {threads} threads\n")
    if not native_bf16:
        print("bf16 autocast: not timed, this CPU has no native bf16 (the sampler runs fp32 here)\n")
    base = next(ms for name, ms, _ in rows if name == default)
    print("| variant | ms / call | vs default | max abs diff from fp32 |\n|---|---|---|---|")
    for name, ms, out in rows:
        label = f"**{name} (the sampler's default here)**" if name == default else name
        print(f"| {label} | {ms:.1f} | {ms / base:.2f} | {float((out - reference).abs().max()):.2e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
