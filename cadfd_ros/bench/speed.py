"""``cadfd bench --speed``: seconds per frame, the time inside the prior's network, the overhead
(total / network) and peak memory, over frame sizes, mono and RGB, and step counts.

The overhead is what the sampler adds around the network: the classical start, the depth evidence,
the per-step data step and the final exact data step. Peak memory is the process's resident set
on CPU (sampled every few milliseconds while the frame is solved) and ``max_memory_allocated`` on CUDA.
"""
from __future__ import annotations

import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from cadfd_ros.optics.psf_bank import PSFBank
from cadfd_ros.pipeline import ReconstructionConfig, Reconstructor

SPEED_SIZES = ((120, 160), (240, 320), (480, 640))
SPEED_STEPS = (1, 2, 4, 8, 20)
SPEED_PHOTO = "astronaut"  # a tuning photo: content changes the final data step's iteration count a little


@dataclass
class SpeedRow:
    height: int
    width: int
    channels: int
    steps: int
    seconds: float  # median over the timed frames, whole reconstruction
    network_s: float  # median time inside the network calls
    peak_mb: float  # peak RSS (CPU) or max_memory_allocated (CUDA) over the timed frames
    stages: dict[str, float] = field(default_factory=dict)  # median seconds per solver stage

    @property
    def overhead(self) -> float:
        return self.seconds / self.network_s if self.network_s > 0 else float("nan")

    @property
    def hz(self) -> float:
        return 1.0 / self.seconds


class PeakResidentMemory:
    """The process's peak resident set while the block runs, from /proc/self/statm every few ms
    (ru_maxrss is the peak of the whole process so far, so it cannot attribute a peak to one frame)."""

    def __init__(self, period_s: float = 0.005) -> None:
        import os

        self.period_s = period_s
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = 0
        self._stop = threading.Event()

    def _read(self) -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * self.page

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._read())
            self._stop.wait(self.period_s)

    def __enter__(self) -> "PeakResidentMemory":
        self.peak = self._read()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._read())


def speed_capture(bank: PSFBank, height: int, width: int, channels: int, seed: int = 0) -> np.ndarray:
    """A coded capture (noise 0.01) of a tuning photo over procedural depth in the bank's range."""
    from cadfd_ros.bench.scenes import make_scene

    return make_scene(SPEED_PHOTO, bank, height, width, 0.01, seed, channels=channels).capture


def speed_reconstructor(bank: PSFBank, steps: int, device: str, config: ReconstructionConfig | None = None
                        ) -> Reconstructor:
    """DFD-DPS at ``steps`` on ``device`` with the other solver settings of ``config`` (default: the defaults)."""
    from dataclasses import replace

    return Reconstructor(bank, replace(config or ReconstructionConfig(), method="dps", steps=steps, device=device))


def measure(bank: PSFBank, height: int, width: int, channels: int, steps: int, device: str = "cpu",
            repeats: int = 2, reconstructor: Reconstructor | None = None,
            config: ReconstructionConfig | None = None) -> SpeedRow:
    """One row: a warm-up frame (allocations, kernels, the operator's OTFs), then ``repeats`` timed ones."""
    import torch

    rec = reconstructor or speed_reconstructor(bank, steps, device, config)
    capture = speed_capture(bank, height, width, channels)
    rec.reconstruct(capture)
    cuda = rec.device == "cuda"
    seconds, network, stages, peak = [], [], {}, 0.0
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        with PeakResidentMemory() as rss:
            result = rec.reconstruct(capture)
            if cuda:
                torch.cuda.synchronize()
        peak = max(peak, torch.cuda.max_memory_allocated() / 2**20 if cuda else rss.peak / 2**20)
        seconds.append(result.timings["total"])
        network.append(result.network_seconds)
        for key, value in result.timings.items():
            if key != "total":
                stages.setdefault(key, []).append(value)
    return SpeedRow(height, width, channels, steps, statistics.median(seconds), statistics.median(network), peak,
                    {key: statistics.median(values) for key, values in stages.items()})


def run_speed(bank: PSFBank, sizes: tuple[tuple[int, int], ...] = SPEED_SIZES, steps: tuple[int, ...] = SPEED_STEPS,
              channels: tuple[int, ...] = (1, 3), device: str = "cpu",
              repeats: int = 2, progress: bool = True, config: ReconstructionConfig | None = None) -> list[SpeedRow]:
    """Every (size, channels, steps) combination; one Reconstructor per step count. ``config``: the solver
    settings (``cadfd bench``'s solver flags); method, steps and device are this function's."""
    from tqdm import tqdm

    combos = [(s, c, n) for s in sizes for c in channels for n in steps]
    rows = []
    recs: dict[int, Reconstructor] = {}
    for (height, width), ch, n in tqdm(combos, desc="speed", disable=not progress):
        if n not in recs:
            recs[n] = speed_reconstructor(bank, n, device, config)
        rows.append(measure(bank, height, width, ch, n, device, repeats, reconstructor=recs[n]))
    return rows


START_STAGES = ("noise_estimate", "evidence", "regularise", "all_in_focus")  # the classical start's stages
OVERHEAD_COLUMNS = (("start", START_STAGES), ("depth", ("dps_depth",)),
                    ("data steps", ("dps_data_step", "dps_midway_data_step")), ("final step", ("dps_final_data_step",)))


def speed_table(rows: list[SpeedRow]) -> str:
    """One line per row; the seconds outside the network split into the classical start, the depth updates,
    the per-step data steps and the final exact data step."""
    head = " | ".join(name for name, _ in OVERHEAD_COLUMNS)
    lines = [f"| size | channels | steps | s / frame | Hz | network_s | overhead | {head} | peak MB |",
             "|---|---|---|---|---|---|---|" + "---|" * len(OVERHEAD_COLUMNS) + "---|"]
    for r in rows:
        parts = " | ".join(f"{sum(r.stages.get(k, 0.0) for k in keys):.3f}" for _, keys in OVERHEAD_COLUMNS)
        lines.append(f"| {r.width}x{r.height} | {'RGB' if r.channels == 3 else 'mono'} | {r.steps} | "
                     f"{r.seconds:.3f} | {r.hz:.2f} | {r.network_s:.3f} | {r.overhead:.2f} | {parts} | {r.peak_mb:.0f} |")
    return "\n".join(lines)


def rows_json(rows: list[SpeedRow]) -> list[dict]:
    return [dict(asdict(r), overhead=r.overhead, hz=r.hz) for r in rows]


def parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    """'160x120,320x240' (WIDTHxHEIGHT, as camera resolutions are written) -> ((120, 160), (240, 320))."""
    from cadfd_ros.errors import CadfdError

    sizes = []
    for item in filter(None, (v.strip() for v in text.split(","))):
        try:
            width, height = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise CadfdError(f"--speed-sizes: {item!r} is not WIDTHxHEIGHT (e.g. 160x120)") from None
        if width < 16 or height < 16:
            raise CadfdError(f"--speed-sizes: {item!r} is smaller than 16x16")
        sizes.append((height, width))
    if not sizes:
        raise CadfdError("--speed-sizes: no size given")
    return tuple(sizes)


def write_speed(out_dir: Path, rows: list[SpeedRow], header: str) -> str:
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    text = header + "\n\n" + speed_table(rows) + "\n"
    (out_dir / "speed.md").write_text(text)
    (out_dir / "speed.json").write_text(json.dumps(rows_json(rows), indent=2) + "\n")
    return text


def machine_description(device: str) -> str:
    import os
    import platform

    import torch

    if device == "cuda":
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__} " \
           f"({torch.get_num_threads()} threads)"


def timestamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def median_call_ms(call: Callable[[], object], device: str, repeats: int, warmup: int = 3) -> float:
    """Median milliseconds of ``call()`` over ``repeats`` timed calls after ``warmup`` untimed ones (compilation,
    allocator, cuDNN autotuning), synchronised on CUDA so that asynchronous kernels are counted."""
    import torch

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        call()
    sync()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        call()
        sync()
        times.append(1e3 * (time.perf_counter() - began))
    return float(np.median(times))
