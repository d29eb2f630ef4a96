"""The solver thread: newest frame in, outputs handed to a publish callback.

Its failure policy (bad frame, out of memory, other failure) lives here rather than in the node
so it can be tested with a fake processor and no rclpy node. A failed frame never stops it.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, Callable, Protocol

from cadfd_ros.errors import InputImageError
from cadfd_ros.ros.diagnostics import Stats
from cadfd_ros.ros.mailbox import CameraInfoBuffer, LatestFrame
from cadfd_ros.ros.processing import FrameOutputs, OutputSettings

# The executor threads share the GIL with the worker. At Python's default 5 ms switch interval a
# busy worker under a 30 Hz VGA stream held lifecycle calls for up to 3.3 s and the executor took
# under half the frames (2 cores, measured); at 1 ms both stayed under 0.2 s and above 92%.
WORKER_SWITCH_INTERVAL_S = 0.001
THREAD_NAME = "cadfd_worker"
LOG_THROTTLE_S = 5.0


class Logger(Protocol):
    def warning(self, message: str, **kwargs: Any) -> Any: ...

    def error(self, message: str, **kwargs: Any) -> Any: ...


class Processor(Protocol):
    def process(self, image_msg: Any, camera_info: Any | None, settings: OutputSettings,
                tiled: bool = False) -> FrameOutputs: ...


def empty_cuda_cache() -> None:
    """Return cached CUDA blocks to the driver (no-op without torch or CUDA)."""
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def is_out_of_memory(exc: BaseException) -> bool:
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:
        pass
    return "out of memory" in str(exc).lower()


class SolverWorker:
    """Takes frames from ``frames`` until it is closed, pairs each with its camera_info, runs the
    processor and calls ``publish(outputs, received_mono)``; bad and failed frames are logged and
    counted in ``stats``."""

    def __init__(self, processor: Processor, frames: LatestFrame, infos: CameraInfoBuffer,
                 settings: Callable[[], OutputSettings], publish: Callable[[FrameOutputs, float], None],
                 stats: Stats, logger: Logger, image_topic: str, niceness: int = 0) -> None:
        self._processor = processor
        self._frames, self._infos = frames, infos
        self._settings, self._publish = settings, publish
        self._stats, self._logger = stats, logger
        self._image_topic, self._niceness = image_topic, niceness
        self._activated_mono = time.monotonic()
        self._reported_sizes: set[tuple[tuple[int, int], tuple[int, int]]] = set()
        self._abandoned = threading.Event()
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)

    def start(self) -> None:
        sys.setswitchinterval(min(sys.getswitchinterval(), WORKER_SWITCH_INTERVAL_S))
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the frame in flight (at most one solve); close ``frames`` first."""
        self._thread.join(timeout)

    def abandon(self) -> None:
        """Publish nothing more, not even the frame in flight: a solve cannot be interrupted, so
        it finishes in the background and its outputs are dropped; then the thread ends (once
        ``frames`` is closed). Lets deactivate return at once, whatever a solve takes."""
        self._abandoned.set()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        self._lower_priority()
        while not self._abandoned.is_set():
            item = self._frames.take()
            if item is None:
                return
            try:
                self.handle(*item)
            except Exception as exc:  # noqa: BLE001 - whatever a frame meets, the next one is solved
                self._failed_frame(f"frame handling failed: {type(exc).__name__}: {exc}")

    def _lower_priority(self) -> None:
        """Runs before the first solve, so torch's CPU threads, which this thread creates, inherit it."""
        if self._niceness <= 0:
            return
        try:
            thread = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + self._niceness)
        except (AttributeError, OSError) as exc:  # not Linux, or a sandbox that forbids it
            self._logger.warning(f"worker_niceness {self._niceness} not applied: {exc}")

    def handle(self, msg: Any, received: float) -> None:
        """One frame: process, sort a failure, or publish."""
        size = (int(msg.width), int(msg.height))
        info, passed_over = self._infos.pair(msg.header.stamp, self._activated_mono, size)
        for info_size in passed_over:
            self._stray_camera_info(info_size, size)
        settings = self._settings()
        try:
            outputs = self._processor.process(msg, info, settings)
        except InputImageError as exc:
            self.report_bad_frame(msg, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - a failed frame must not stop the node
            if not is_out_of_memory(exc):
                self._failed_frame(f"reconstruction failed: {type(exc).__name__}: {exc}")
                return
            empty_cuda_cache()  # then once more in tiles: bounded peak memory
            try:
                outputs = self._processor.process(msg, info, settings, tiled=True)
            except Exception as retry_exc:  # noqa: BLE001
                self._failed_frame(f"reconstruction out of memory ({exc}); the tiled retry failed too ({retry_exc}); "
                                   "lower input_downscale or use device cpu")
                return
        if self._abandoned.is_set():
            return  # deactivated during the solve: these outputs belong to no active session
        try:
            self._publish(outputs, received)
        except Exception as exc:  # noqa: BLE001 - e.g. a KEEP_ALL history override full: the thread must go on
            self._failed_frame(f"publishing failed: {type(exc).__name__}: {exc}")

    def _stray_camera_info(self, info_size: tuple[int, int], size: tuple[int, int]) -> None:
        """Reported once per pair of sizes (a log line and a diagnostics WARN), then ignored."""
        if (info_size, size) in self._reported_sizes:
            return
        self._reported_sizes.add((info_size, size))
        text = (f"camera_info of size {info_size[0]}x{info_size[1]} ignored for {size[0]}x{size[1]} frames on "
                f"{self._image_topic} (no camera_info of their size and stamp); reported once")
        self._logger.warning(text)
        self._stats.metadata_warning(text, time.monotonic())

    def report_bad_frame(self, msg: Any, reason: str) -> None:
        text = f"skipped frame {msg.width}x{msg.height} {msg.encoding!r} on {self._image_topic}: {reason}"
        self._logger.warning(text, throttle_duration_sec=LOG_THROTTLE_S)
        self._stats.bad_frame(text, time.monotonic())

    def _failed_frame(self, text: str) -> None:
        self._logger.error(text, throttle_duration_sec=LOG_THROTTLE_S)
        self._stats.failed_frame(text, time.monotonic())
