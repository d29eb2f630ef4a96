"""Node health: counters the callbacks and worker update, and the /diagnostics statuses built from them.

The statuses are a pure function of a counter snapshot, so every level and message can be
tested without a node; the node only calls it from its 1 Hz timer and publishes the result.
"""
from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field, fields
from typing import Any, Sequence

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

WARN_WINDOW_S = 5.0  # a bad frame / failure keeps diagnostics at WARN / ERROR this long
NO_INPUT_WARN_S = 3.0  # active with no frame for this long: diagnostics WARN
HISTORY = 100  # latency / processing samples kept for the mean and max


@dataclass(frozen=True)
class StatsSnapshot:
    """A consistent copy of ``Stats`` taken under its lock."""

    frames_in: int = 0
    processed: int = 0
    dropped: int = 0
    lost: int = 0
    bad: int = 0
    failed: int = 0
    latency_s: tuple[float, ...] = ()
    processing_s: tuple[float, ...] = ()
    last_input_mono: float = 0.0
    last_bad_mono: float = -1e9
    last_fail_mono: float = -1e9
    last_warning: str = ""
    last_error: str = ""
    last_note: str = ""
    last_note_mono: float = -1e9
    metadata_warnings: int = 0
    last_metadata_warning: str = ""
    last_metadata_mono: float = -1e9
    last_steps: int = 0
    last_tiles: int = 0
    last_noise_sigma: float = float("nan")
    last_noise_source: str = ""
    intrinsics: str = "unknown"


@dataclass
class Stats:
    """Counters the worker and callbacks update and diagnostics read (under ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    frames_in: int = 0
    processed: int = 0
    dropped: int = 0  # replaced in the latest-frame slot before the worker got to them
    lost: int = 0  # lost in the middleware before reaching the node (where the RMW reports it)
    bad: int = 0
    failed: int = 0
    latency_s: collections.deque = field(default_factory=lambda: collections.deque(maxlen=HISTORY))
    processing_s: collections.deque = field(default_factory=lambda: collections.deque(maxlen=HISTORY))
    last_input_mono: float = 0.0
    last_bad_mono: float = -1e9
    last_fail_mono: float = -1e9
    last_warning: str = ""
    last_error: str = ""
    last_note: str = ""  # the solver's latest per-frame warning (an unmet time budget)
    last_note_mono: float = -1e9
    metadata_warnings: int = 0  # frames published with suspect metadata (stamp, frame_id, camera_info)
    last_metadata_warning: str = ""
    last_metadata_mono: float = -1e9
    last_steps: int = 0  # network evaluations of the latest frame (a time budget picks them)
    last_tiles: int = 0  # tiles the latest frame was solved in (0: no frame yet)
    last_noise_sigma: float = float("nan")  # the latest frame's noise level (depth quality hangs on it)
    last_noise_source: str = ""  # where it came from: Reconstruction.noise_source
    intrinsics: str = "unknown"

    def snapshot(self) -> StatsSnapshot:
        with self.lock:
            values = {f.name: getattr(self, f.name) for f in fields(StatsSnapshot)}
            values["latency_s"], values["processing_s"] = tuple(self.latency_s), tuple(self.processing_s)
        return StatsSnapshot(**values)

    def input_started(self, now: float) -> None:
        """Activation: the silent-input timer starts now."""
        with self.lock:
            self.last_input_mono = now

    def frame_received(self, now: float) -> None:
        with self.lock:
            self.frames_in += 1
            self.last_input_mono = now

    def frame_dropped(self) -> None:
        with self.lock:
            self.dropped += 1

    def messages_lost(self, count: int) -> None:
        with self.lock:
            self.lost += count

    def bad_frame(self, text: str, now: float) -> None:
        with self.lock:
            self.bad += 1
            self.last_warning, self.last_bad_mono = text, now

    def metadata_warning(self, text: str, now: float) -> None:
        """A frame with suspect metadata that is still published (a stamp, frame_id, camera_info)."""
        with self.lock:
            self.metadata_warnings += 1
            self.last_metadata_warning, self.last_metadata_mono = text, now

    def error(self, text: str, now: float) -> None:
        """A failure that is not a frame's (a lifecycle transition)."""
        with self.lock:
            self.last_error, self.last_fail_mono = text, now

    def failed_frame(self, text: str, now: float) -> None:
        with self.lock:
            self.failed += 1
            self.last_error, self.last_fail_mono = text, now

    def clear_error(self) -> None:
        with self.lock:
            self.last_error = ""

    def frame_published(self, intrinsics: str, steps: int, notes: Sequence[str], processing_s: float,
                        latency_s: float | None, now: float, tiles: int = 1, noise_sigma: float = float("nan"),
                        noise_source: str = "") -> None:
        with self.lock:
            self.processed += 1
            self.intrinsics, self.last_steps, self.last_tiles = intrinsics, steps, tiles
            self.last_noise_sigma, self.last_noise_source = noise_sigma, noise_source
            if notes:
                self.last_note, self.last_note_mono = notes[-1], now
            self.processing_s.append(processing_s)
            if latency_s is not None:
                self.latency_s.append(latency_s)


class RateMeter:
    """Input and output rates between two consecutive reports."""

    def __init__(self, now: float) -> None:
        self._last = (now, 0, 0)

    def update(self, snap: StatsSnapshot, now: float) -> tuple[float, float]:
        t0, in0, out0 = self._last
        dt = max(now - t0, 1e-3)
        self._last = (now, snap.frames_in, snap.processed)
        return (snap.frames_in - in0) / dt, (snap.processed - out0) / dt


def _key_values(**pairs: Any) -> list[KeyValue]:
    return [KeyValue(key=k, value=(f"{v:.3f}" if isinstance(v, float) else str(v))) for k, v in pairs.items()]


def _mean_ms(samples: tuple[float, ...]) -> float:
    return 1e3 * sum(samples) / len(samples) if samples else float("nan")


def _max_ms(samples: tuple[float, ...]) -> float:
    return 1e3 * max(samples) if samples else float("nan")


def diagnostic_statuses(snap: StatsSnapshot, state: str, now: float, input_rate_hz: float, output_rate_hz: float,
                        method: str, device: str, steps: int, node_name: str,
                        image_topic: str) -> tuple[DiagnosticStatus, DiagnosticStatus]:
    """The ``<node>: input`` and ``<node>: reconstruction`` statuses; ``steps`` is the configured
    count (the node passes 0 for classical), replaced by what the latest frame ran (a time budget
    chooses it); ``tiles`` is what the latest frame was solved in (0 before the first frame)."""
    recent_bad = now - snap.last_bad_mono < WARN_WINDOW_S
    recent_fail = now - snap.last_fail_mono < WARN_WINDOW_S
    silent = now - snap.last_input_mono > NO_INPUT_WARN_S
    recent_metadata = now - snap.last_metadata_mono < WARN_WINDOW_S
    recent_note = snap.last_note if now - snap.last_note_mono < WARN_WINDOW_S else ""
    counts = dict(frames_in=snap.frames_in, frames_processed=snap.processed, frames_dropped=snap.dropped,
                  frames_lost=snap.lost, frames_bad=snap.bad, frames_failed=snap.failed)

    inp = DiagnosticStatus(name=f"{node_name}: input", hardware_id=image_topic)
    if state != "active":
        inp.level, inp.message = DiagnosticStatus.OK, f"not subscribed ({state})"
    elif recent_bad:
        inp.level, inp.message = DiagnosticStatus.WARN, "bad frames skipped: " + snap.last_warning
    elif recent_metadata:
        inp.level, inp.message = DiagnosticStatus.WARN, "suspect metadata: " + snap.last_metadata_warning
    elif silent:
        inp.level, inp.message = DiagnosticStatus.WARN, f"no frames on {image_topic} for {NO_INPUT_WARN_S:.0f} s"
    else:
        inp.level, inp.message = DiagnosticStatus.OK, f"receiving {input_rate_hz:.1f} Hz"
    inp.values = _key_values(topic=image_topic, input_rate_hz=input_rate_hz, intrinsics=snap.intrinsics, **counts,
                             last_warning=snap.last_warning, metadata_warnings=snap.metadata_warnings,
                             last_metadata_warning=snap.last_metadata_warning)

    rec = DiagnosticStatus(name=f"{node_name}: reconstruction", hardware_id=device)
    last_error = snap.last_error
    if last_error and recent_fail:
        rec.level, rec.message = DiagnosticStatus.ERROR, last_error
    elif state != "active":
        level = DiagnosticStatus.ERROR if last_error and state == "unconfigured" else DiagnosticStatus.WARN
        rec.level, rec.message = level, (last_error or f"lifecycle state {state}: not producing depth")
    elif recent_note:
        rec.level, rec.message = DiagnosticStatus.WARN, recent_note
    else:
        rec.level, rec.message = DiagnosticStatus.OK, f"publishing {output_rate_hz:.1f} Hz"
    rec.values = _key_values(
        state=state, method=method, device=device, steps=snap.last_steps or steps,
        tiles=snap.last_tiles, noise_sigma=f"{snap.last_noise_sigma:.5f}", noise_source=snap.last_noise_source,
        output_rate_hz=output_rate_hz,
        latency_mean_ms=_mean_ms(snap.latency_s), latency_max_ms=_max_ms(snap.latency_s),
        processing_mean_ms=_mean_ms(snap.processing_s), processing_max_ms=_max_ms(snap.processing_s),
        **counts, last_error=last_error,
    )
    return inp, rec
