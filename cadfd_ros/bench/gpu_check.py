"""The whole GPU measurement in one command (``scripts/gpu_check.sh``), for the first time a GPU is lent.

Four checks and one measurement, written as one markdown report:

1. the speed table (``cadfd bench --speed``) on the GPU;
2. a CUDA reconstruction against the CPU one on the same capture: depth delta within 0.02 and
   all-in-focus PSNR within 0.2 dB, both scored against the scene's truth;
3. the network in bf16 autocast against fp32, the same way;
4. the tiled path on a frame that does not fit: the whole-frame solve under a memory cap must
   run out of memory, and the tiled solve must finish under the same cap;
5. what the sampler does not use yet, timed against what it uses, so one run decides (issue 14): the
   network call under ``torch.compile``, under ``torch.compile(mode="reduce-overhead")`` (CUDA graphs) and
   as a CUDA graph captured by hand, and the frame's upload from pinned against pageable host memory.
   It comes after the verdict, so a run cut off here has every check written; a variant that fails is a
   row of its table, not a failed run.

``--dry-run`` runs every check on the CPU at tiny sizes, so the script is tested where no GPU is
(the comparisons are then CPU against CPU and fp32 against CPU bf16; the memory cap is skipped; of the
variants only the eager call runs: ``torch.compile`` takes about a minute to build on that CPU).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from cadfd_ros.bench.scenes import Scene
    from cadfd_ros.optics.psf_bank import PSFBank
    from cadfd_ros.pipeline import Reconstructor

DELTA_TOLERANCE = 0.02
PSNR_TOLERANCE_DB = 0.2


def _scene(bank, height: int, width: int, channels: int, seed: int = 3):
    from cadfd_ros.bench.scenes import make_scene

    return make_scene("astronaut", bank, height, width, 0.01, seed, channels=channels)


def _score(result, scene, bank) -> dict[str, float]:
    from cadfd_ros.bench.runner import score

    return score(result.depth, result.all_in_focus, scene, bank)


def _reconstructor(bank, device: str, steps: int, **config):
    from cadfd_ros.pipeline import ReconstructionConfig, Reconstructor

    return Reconstructor(bank, ReconstructionConfig(method="dps", steps=steps, device=device, seed=0, **config))


def compare(bank: PSFBank, scene: Scene, first: Reconstructor, second: Reconstructor, labels: tuple[str, str]
            ) -> tuple[bool, str]:
    """Score two reconstructors on one capture against its truth; pass if they agree within tolerance."""
    scores = []
    for rec in (first, second):
        result = rec.reconstruct(scene.capture)
        scores.append(dict(_score(result, scene, bank), seconds=result.timings["total"]))
    d_delta = abs(scores[0]["tex_delta1"] - scores[1]["tex_delta1"])
    d_psnr = abs(scores[0]["aif_psnr"] - scores[1]["aif_psnr"])
    ok = d_delta <= DELTA_TOLERANCE and d_psnr <= PSNR_TOLERANCE_DB
    lines = ["| run | delta (textured) | AIF PSNR dB | s |", "|---|---|---|---|"]
    for label, s in zip(labels, scores):
        lines.append(f"| {label} | {s['tex_delta1']:.3f} | {s['aif_psnr']:.2f} | {s['seconds']:.3f} |")
    lines.append(f"\n|delta difference| {d_delta:.3f} (<= {DELTA_TOLERANCE}), |PSNR difference| {d_psnr:.2f} dB "
                 f"(<= {PSNR_TOLERANCE_DB}): **{'PASS' if ok else 'FAIL'}**")
    return ok, "\n".join(lines)


def tiled_out_of_memory(bank: PSFBank, device: str, size: tuple[int, int], cap_gib: float | None, tile: int
                        ) -> tuple[bool, str]:
    """Whole frame under a memory cap (must fail on CUDA), then the tiled solve under the same cap."""
    import torch

    scene = _scene(bank, *size, channels=3)
    rec = _reconstructor(bank, device, 2, max_pixels=10**9, tile_size=tile)
    lines = []
    whole_failed = None
    if device == "cuda" and cap_gib is not None:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib * 2**30 / total))
        try:
            rec.reconstruct(scene.capture)
            whole_failed = False
        except Exception as exc:  # noqa: BLE001 - sorted below
            if not (isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()):
                raise
            whole_failed = True
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        lines.append(f"whole {size[1]}x{size[0]} frame under a {cap_gib} GiB cap: "
                     f"{'out of memory, as forced' if whole_failed else 'fitted: the cap did not force the tiled path'}")
    began = time.perf_counter()
    result = rec.reconstruct_tiled(scene.capture, tile)
    seconds = time.perf_counter() - began
    s = _score(result, scene, bank)
    peak = f", peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device == "cuda" else ""
    if device == "cuda" and cap_gib is not None:
        torch.cuda.set_per_process_memory_fraction(1.0)
    ok = bool(np.isfinite(result.depth).mean() > 0.99 and s["aif_psnr"] > 15 and whole_failed is not False)
    lines.append(f"tiled solve ({tile} px tiles): {seconds:.2f} s{peak}, delta {s['tex_delta1']:.3f}, "
                 f"AIF PSNR {s['aif_psnr']:.2f} dB: **{'PASS' if ok else 'FAIL'}**")
    return ok, "\n".join(lines)


def network_variants(device: str, size: tuple[int, int], dry_run: bool, repeats: int = 20) -> str:
    """The UNet call on a (1, 3, H, W) input at the sampler's dtype and memory format (eager), against
    torch.compile, torch.compile(mode="reduce-overhead") and a hand-captured CUDA graph; then the frame's
    upload from pageable and from pinned host memory. A markdown table; a variant that fails is a row."""
    import torch

    from cadfd_ros.bench.speed import median_call_ms
    from cadfd_ros.prior import load_prior
    from cadfd_ros.solvers.dps import default_network_dtype, default_network_memory_format

    dev = torch.device(device)
    prior = load_prior("default", device=device)
    memory_format = default_network_memory_format(dev)
    prior.set_memory_format(memory_format)
    dtype = default_network_dtype(dev)
    f = prior.downsample_factor
    height, width = (-(-size[0] // f) * f, -(-size[1] // f) * f)  # the padded size the sampler feeds it
    x = torch.randn(1, 3, height, width, device=dev).contiguous(memory_format=memory_format)
    t = torch.full((1,), prior.num_train_timesteps // 4, device=dev, dtype=torch.long)

    def forward(unet):
        def call():
            with torch.no_grad(), torch.autocast(dev.type, dtype=dtype, enabled=dtype != torch.float32):
                return unet(x, t).sample.float()
        return call

    eager = forward(prior.unet)
    reference = eager()
    lines = [f"UNet call on 1×3×{height}×{width} ({dtype}, "
             f"{'channels-last' if memory_format == torch.channels_last else 'contiguous'}), median of {repeats}:", "",
             "| variant | ms / call | vs eager | max abs diff from eager | note |", "|---|---|---|---|---|"]
    base = median_call_ms(eager, device, repeats)
    lines.append(f"| eager (the sampler's) | {base:.2f} | 1.00 | 0 | |")

    def row(name: str, make, cuda_only: bool = False) -> None:
        if dry_run:
            lines.append(f"| {name} | | | | skipped in the dry run |")
            return
        if cuda_only and device != "cuda":
            lines.append(f"| {name} | | | | CUDA only |")
            return
        try:
            began = time.perf_counter()
            call = make()
            out = call()
            build = time.perf_counter() - began
            ms = median_call_ms(call, device, repeats)
            diff = float((out - reference).abs().max())
            lines.append(f"| {name} | {ms:.2f} | {ms / base:.2f} | {diff:.1e} | first call {build:.0f} s |")
        except Exception as exc:  # noqa: BLE001 - a variant that does not work here is a finding, not a crash
            lines.append(f"| {name} | | | | failed: {type(exc).__name__}: {str(exc)[:80]} |")
        finally:
            torch._dynamo.reset()  # each compiled variant builds from the plain UNet

    row("torch.compile", lambda: forward(torch.compile(prior.unet)))
    row("torch.compile, reduce-overhead (CUDA graphs)",
        lambda: forward(torch.compile(prior.unet, mode="reduce-overhead")), cuda_only=True)

    def captured():
        call = forward(prior.unet)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                call()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = call()

        def replay():
            graph.replay()  # x and t are the captured buffers: a sampler would copy_ each step's into them
            return static_out
        return replay

    row("CUDA graph, captured by hand", captured, cuda_only=True)

    if device != "cuda" or dry_run:
        lines.append(f"\nUpload of a 640×480 RGB float frame: skipped ({'dry run' if dry_run else 'CPU'}).")
    else:
        frame = np.random.default_rng(0).random((480, 640, 3), dtype=np.float32)
        try:
            pageable = median_call_ms(lambda: torch.from_numpy(frame).to(dev), device, repeats)
            pinned_host = torch.from_numpy(frame).pin_memory()
            pinned = median_call_ms(lambda: pinned_host.to(dev, non_blocking=True), device, repeats)
            lines.append(f"\nUpload of a 640×480 RGB float frame: pageable {pageable:.3f} ms, pinned {pinned:.3f} ms "
                         f"(the copy into pinned memory, once a frame, not counted).")
        except Exception as exc:  # noqa: BLE001
            lines.append(f"\nUpload of a 640×480 RGB float frame: failed: {type(exc).__name__}: {str(exc)[:80]}")
    return "\n".join(lines)


def run(out_dir: Path, dry_run: bool) -> int:
    import torch

    from cadfd_ros.bench import speed
    from cadfd_ros.optics.psf_bank import default_psf_bank_path, load_psf_bank

    if not dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False); use --dry-run on a CPU machine",
              file=sys.stderr)
        return 2
    device = "cpu" if dry_run else "cuda"
    bank = load_psf_bank(default_psf_bank_path())
    out_dir.mkdir(parents=True, exist_ok=True)
    report = [f"# GPU check{' (dry run on CPU)' if dry_run else ''}", "",
              f"{speed.machine_description(device)}, {speed.timestamp()}, bank {Path(bank.source).name}.", ""]
    results: dict[str, bool] = {}

    def section(title: str, body: str) -> None:
        report.extend([f"## {title}", "", body, ""])
        (out_dir / "gpu_check.md").write_text("\n".join(report))  # written as it goes: a timeout keeps the rest
        print(f"## {title}\n{body}\n", flush=True)

    sizes = ((56, 64),) if dry_run else speed.SPEED_SIZES
    steps = (1, 2) if dry_run else speed.SPEED_STEPS
    rows = speed.run_speed(bank, sizes, steps, (1,) if dry_run else (1, 3), device, repeats=1 if dry_run else 2,
                           progress=False)
    (out_dir / "speed.json").write_text(json.dumps(speed.rows_json(rows), indent=2) + "\n")
    section("Speed (DFD-DPS)", speed.speed_table(rows))

    size = (64, 64) if dry_run else (240, 320)
    scene = _scene(bank, *size, channels=3)
    steps_cmp = 2 if dry_run else 20
    results["cuda_vs_cpu"], body = compare(bank, scene, _reconstructor(bank, device, steps_cmp),
                                           _reconstructor(bank, "cpu", steps_cmp), (device, "cpu"))
    section(f"{device.upper()} against CPU, {size[1]}x{size[0]} RGB, {steps_cmp} steps", body)

    fp32 = _reconstructor(bank, device, steps_cmp)
    fp32.sampler.network_dtype = torch.float32
    bf16 = _reconstructor(bank, device, steps_cmp)
    bf16.sampler.network_dtype = torch.bfloat16
    results["bf16_vs_fp32"], body = compare(bank, scene, bf16, fp32, ("bf16 autocast", "fp32"))
    section(f"bf16 against fp32 on {device}", body)

    big, cap, tile = ((96, 128), None, 64) if dry_run else ((2160, 3840), 4.0, 512)
    results["tiled_oom"], body = tiled_out_of_memory(bank, device, big, cap, tile)
    section("Tiled path on a frame forced out of memory", body)

    verdict = ", ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in results.items())
    section("Verdict", verdict)
    (out_dir / "gpu_check.json").write_text(json.dumps({"device": device, "checks": results}, indent=2) + "\n")
    # a measurement, not a check: after the verdict, so a run that times out here has every check written
    section("Network variants not in the sampler yet", network_variants(device, (64, 64) if dry_run else (480, 640),
                                                                        dry_run, repeats=3 if dry_run else 20))
    return 0 if all(results.values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.md, gpu_check.json, speed.json")
    parser.add_argument("--dry-run", action="store_true", help="every check on the CPU at tiny sizes")
    args = parser.parse_args(argv)
    return run(args.out, args.dry_run)


if __name__ == "__main__":
    raise SystemExit(main())
