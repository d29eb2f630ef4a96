"""cadfd_node's policy without a graph: latest-frame mailbox, camera_info pairing, the worker's
failure handling, diagnostics levels and parameter rules. No rclpy.init, no DDS: these run in
milliseconds and pin the behaviour the in-process node tests only sample."""
from __future__ import annotations

import dataclasses
import threading
import time

import pytest

pytest.importorskip("sensor_msgs.msg", reason="ROS 2 message packages are not installed")

from builtin_interfaces.msg import Time as StampMsg  # noqa: E402
from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

from cadfd_ros.errors import CadfdError, InputImageError  # noqa: E402
from cadfd_ros.params import PARAMS, defaults  # noqa: E402
from cadfd_ros.ros.diagnostics import RateMeter, Stats, StatsSnapshot, diagnostic_statuses  # noqa: E402
from cadfd_ros.ros.mailbox import CameraInfoBuffer, LatestFrame  # noqa: E402
from cadfd_ros.ros.parameters import (  # noqa: E402
    CONFIGURE_NOTE, build_processor, check_values, declarations, descriptor, output_settings, validate_changes,
)
from cadfd_ros.ros.processing import OutputSettings  # noqa: E402
from cadfd_ros.ros.worker import SolverWorker, is_out_of_memory  # noqa: E402

SPEC = {p.name: p for p in PARAMS}
ALL_DEFAULTS = {p.name: p.default for p in PARAMS}
OOM = "CUDA out of memory. Tried to allocate 2.00 GiB"


def stamp(sec: int, nanosec: int = 0) -> StampMsg:
    return StampMsg(sec=sec, nanosec=nanosec)


def info_at(sec: int, nanosec: int = 0) -> CameraInfo:
    info = CameraInfo()
    info.header.stamp = stamp(sec, nanosec)
    return info


def image_at(sec: int) -> Image:
    msg = Image(width=4, height=3, encoding="rgb8")
    msg.header.stamp = stamp(sec)
    return msg


# ---------------------------------------------------------------------- mailbox
def test_latest_frame_keeps_only_the_newest_and_reports_drops():
    slot = LatestFrame()
    assert slot.put(("a",)) is False
    assert slot.put(("b",)) is True  # "a" replaced before the worker saw it: dropped
    assert slot.put(("c",)) is True
    assert slot.take() == ("c",)
    assert slot.put(("d",)) is False  # the slot was emptied by take
    assert slot.take() == ("d",)


def test_latest_frame_close_wakes_the_worker_and_open_discards_stale_frames():
    slot = LatestFrame()
    got = []
    taker = threading.Thread(target=lambda: got.append(slot.take()))
    taker.start()
    time.sleep(0.05)
    assert taker.is_alive()  # blocked: nothing to take
    slot.close()
    taker.join(timeout=2.0)
    assert not taker.is_alive() and got == [None]
    slot.put(("late",))
    assert slot.take() is None  # closed: frames are not handed out
    slot.open()
    assert slot.put(("fresh",)) is False  # open() emptied the slot
    assert slot.take() == ("fresh",)


# ---------------------------------------------------------------------- camera_info pairing
def test_exact_stamp_wins_over_newer_infos():
    infos = CameraInfoBuffer(wait_s=5.0)
    one, two, three = info_at(1), info_at(2, 5), info_at(3)
    for info in (one, two, three):
        infos.add(info)
    start = time.monotonic()
    assert infos.match(stamp(2, 5), activated_mono=-1e9) is two
    assert infos.match(stamp(1), activated_mono=-1e9) is one
    assert time.monotonic() - start < 2.5  # found: no waiting for the 5 s deadline


def test_newest_fallback_after_a_short_wait_while_infos_flow():
    infos = CameraInfoBuffer(wait_s=0.2)
    infos.add(info_at(1))
    newest = info_at(2)
    infos.add(newest)
    start = time.monotonic()
    assert infos.match(stamp(9), activated_mono=-1e9) is newest
    assert 0.18 <= time.monotonic() - start < 1.0  # a stream exists: waited for the matching one


def test_no_wait_when_no_camera_info_is_expected():
    infos = CameraInfoBuffer(wait_s=5.0)
    start = time.monotonic()
    assert infos.match(stamp(1), activated_mono=time.monotonic() - 10.0) is None
    assert time.monotonic() - start < 2.5  # no waiting for the 5 s deadline


def test_waits_after_activation_for_a_late_camera_info():
    infos = CameraInfoBuffer(wait_s=5.0)
    late = info_at(7)
    start = time.monotonic()
    threading.Timer(0.05, infos.add, args=(late,)).start()
    assert infos.match(stamp(7), activated_mono=time.monotonic()) is late
    # woken by the arrival, not by the 5 s deadline (bounds loose: CI machines are loaded)
    assert 0.04 <= time.monotonic() - start < 2.5
    # Just activated, nothing arrives: None after the wait (bank intrinsics).
    empty = CameraInfoBuffer(wait_s=0.1)
    start = time.monotonic()
    assert empty.match(stamp(1), activated_mono=time.monotonic()) is None
    assert 0.09 <= time.monotonic() - start < 2.0


def test_history_is_bounded_and_clear_empties_it():
    infos = CameraInfoBuffer(history=3, wait_s=0.0)
    kept = [info_at(sec) for sec in range(1, 6)]
    for info in kept:
        infos.add(info)
    assert len(infos) == 3
    assert infos.match(stamp(3), -1e9) is kept[2]
    assert infos.match(stamp(1), -1e9) is kept[4]  # evicted: newest instead
    infos.clear()
    assert len(infos) == 0 and infos.match(stamp(5), -1e9) is None


# ---------------------------------------------------------------------- worker
class FakeProcessor:
    """Answers each call with the next entry of ``script``: an exception to raise or a value."""

    def __init__(self, *script: object) -> None:
        self.script = list(script)
        self.calls: list[tuple[object, object, bool]] = []

    def process(self, image_msg, camera_info, settings, tiled=False):
        self.calls.append((camera_info, settings, tiled))
        result = self.script.pop(0)
        if isinstance(result, BaseException):
            raise result
        return result


class FakeLogger:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict]] = []

    def warning(self, message, **kwargs):
        self.lines.append(("warning", message, kwargs))

    def error(self, message, **kwargs):
        self.lines.append(("error", message, kwargs))


def make_worker(processor, infos=None, frames=None):
    published, stats, logger = [], Stats(), FakeLogger()
    settings = OutputSettings(depth_encoding="16UC1")
    worker = SolverWorker(processor, frames or LatestFrame(), infos or CameraInfoBuffer(wait_s=0.0),
                          lambda: settings, lambda out, received: published.append((out, received)), stats,
                          logger, "/ns/image_raw")
    return worker, published, stats, logger, settings


def test_worker_publishes_with_the_paired_camera_info_and_current_settings():
    infos = CameraInfoBuffer(wait_s=0.0)
    paired = info_at(5)
    infos.add(paired)
    infos.add(info_at(6))
    processor = FakeProcessor("outputs")
    worker, published, stats, logger, settings = make_worker(processor, infos)
    worker.handle(image_at(5), 12.5)
    assert published == [("outputs", 12.5)]
    assert processor.calls == [(paired, settings, False)]
    assert stats.bad == stats.failed == 0 and logger.lines == []


def test_worker_counts_a_bad_frame_and_does_not_publish():
    processor = FakeProcessor(InputImageError("unsupported encoding 'yuv'"))
    worker, published, stats, logger, _ = make_worker(processor)
    worker.handle(image_at(1), 0.0)
    text = "skipped frame 4x3 'rgb8' on /ns/image_raw: unsupported encoding 'yuv'"
    assert published == [] and len(processor.calls) == 1
    assert (stats.bad, stats.failed, stats.last_warning, stats.last_error) == (1, 0, text, "")
    assert logger.lines == [("warning", text, {"throttle_duration_sec": 5.0})]


def test_worker_counts_a_failed_frame_without_retrying():
    processor = FakeProcessor(CadfdError("solver diverged"))
    worker, published, stats, logger, _ = make_worker(processor)
    worker.handle(image_at(1), 0.0)
    text = "reconstruction failed: CadfdError: solver diverged"
    assert published == [] and [c[2] for c in processor.calls] == [False]
    assert (stats.bad, stats.failed, stats.last_error) == (0, 1, text)
    assert logger.lines == [("error", text, {"throttle_duration_sec": 5.0})]


def test_worker_counts_a_failed_publish_and_goes_on():
    """An exception while publishing (a middleware error) is a failed frame, not the end of the solver thread."""
    processor = FakeProcessor("outputs", "outputs")
    stats, logger, attempts = Stats(), FakeLogger(), []

    def publish(out, received):
        attempts.append(received)
        if len(attempts) == 1:
            raise RuntimeError("history full")

    worker = SolverWorker(processor, LatestFrame(), CameraInfoBuffer(wait_s=0.0), lambda: OutputSettings(), publish,
                          stats, logger, "/ns/image_raw")
    worker.handle(image_at(1), 1.0)
    worker.handle(image_at(2), 2.0)
    text = "publishing failed: RuntimeError: history full"
    assert attempts == [1.0, 2.0] and (stats.failed, stats.last_error) == (1, text)
    assert logger.lines == [("error", text, {"throttle_duration_sec": 5.0})]


@pytest.fixture
def cuda_cache_calls(monkeypatch):
    torch = pytest.importorskip("torch")
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append(1))
    return calls


def test_out_of_memory_releases_the_cache_once_and_retries_tiled(cuda_cache_calls):
    processor = FakeProcessor(RuntimeError(OOM), "tiled outputs")
    worker, published, stats, logger, _ = make_worker(processor)
    worker.handle(image_at(1), 3.0)
    assert [c[2] for c in processor.calls] == [False, True]
    assert published == [("tiled outputs", 3.0)] and len(cuda_cache_calls) == 1
    assert stats.failed == 0 and logger.lines == []


def test_out_of_memory_twice_is_one_failed_frame(cuda_cache_calls):
    processor = FakeProcessor(RuntimeError(OOM), RuntimeError(OOM))
    worker, published, stats, logger, _ = make_worker(processor)
    worker.handle(image_at(1), 0.0)
    assert [c[2] for c in processor.calls] == [False, True]  # retried once, not more
    assert published == [] and stats.failed == 1 and len(cuda_cache_calls) == 1
    assert stats.last_error == (f"reconstruction out of memory ({OOM}); the tiled retry failed too ({OOM}); "
                                "lower input_downscale or use device cpu")
    assert [level for level, _, _ in logger.lines] == ["error"]


def test_out_of_memory_detection():
    torch = pytest.importorskip("torch")
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("x"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: not enough memory... out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_worker_thread_runs_frames_until_the_mailbox_closes():
    import sys

    frames = LatestFrame()
    frames.open()
    processor = FakeProcessor("first", "second")
    done = threading.Event()
    published = []
    worker = SolverWorker(processor, frames, CameraInfoBuffer(wait_s=0.0), OutputSettings,
                          lambda out, received: (published.append(out), done.set()), Stats(), FakeLogger(),
                          "/ns/image_raw")
    worker.start()
    assert worker.is_alive() and sys.getswitchinterval() <= 0.001
    frames.put((image_at(1), 0.0))
    assert done.wait(2.0) and published == ["first"]
    frames.close()
    worker.join()
    assert not worker.is_alive() and len(processor.calls) == 1


def test_worker_thread_survives_a_frame_that_fails_outside_the_solve():
    """An exception in a frame's handling (here the camera_info pairing) is a failed frame; the next is solved."""
    class BrokenOnce(CameraInfoBuffer):
        calls = 0

        def pair(self, *args, **kwargs):
            BrokenOnce.calls += 1
            if BrokenOnce.calls == 1:
                raise RuntimeError("infos corrupted")
            return super().pair(*args, **kwargs)

    frames = LatestFrame()
    frames.open()
    done, published, stats = threading.Event(), [], Stats()
    worker = SolverWorker(FakeProcessor("second"), frames, BrokenOnce(wait_s=0.0), OutputSettings,
                          lambda out, received: (published.append(out), done.set()), stats, FakeLogger(),
                          "/ns/image_raw")
    worker.start()
    frames.put((image_at(1), 0.0))
    deadline = time.monotonic() + 2.0
    while stats.failed < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    frames.put((image_at(2), 0.0))
    assert done.wait(2.0) and published == ["second"] and worker.is_alive()
    assert stats.last_error == "frame handling failed: RuntimeError: infos corrupted"
    frames.close()
    worker.join()


# ---------------------------------------------------------------------- diagnostics
NOW = 1000.0


def report(state: str = "active", steps: int = 20, in_rate: float = 0.0, out_rate: float = 0.0, **snap) -> dict:
    snap.setdefault("last_input_mono", NOW - 0.1)  # receiving unless a test says otherwise
    inp, rec = diagnostic_statuses(StatsSnapshot(**snap), state, NOW, in_rate, out_rate, "classical", "cpu", steps,
                                   "/ns/cadfd_node", "/ns/image_raw")

    def values(status: DiagnosticStatus) -> dict:
        out = {kv.key: kv.value for kv in status.values}
        level = status.level
        out["_level"] = int.from_bytes(level, "little") if isinstance(level, bytes) else int(level)
        out["_message"], out["_name"], out["_hw"] = status.message, status.name, status.hardware_id
        return out

    return {"input": values(inp), "reconstruction": values(rec)}


def test_diagnostics_inactive():
    r = report(state="inactive")
    assert (r["input"]["_level"], r["input"]["_message"]) == (0, "not subscribed (inactive)")
    assert (r["reconstruction"]["_level"], r["reconstruction"]["_message"]) == (
        1, "lifecycle state inactive: not producing depth")
    assert r["reconstruction"]["state"] == "inactive"


def test_diagnostics_unconfigured_with_an_old_error_is_error():
    r = report(state="unconfigured", last_error="configure failed: PSF bank file not found: x.npz",
               last_fail_mono=NOW - 60.0)
    assert (r["reconstruction"]["_level"], r["reconstruction"]["_message"]) == (
        2, "configure failed: PSF bank file not found: x.npz")
    assert r["reconstruction"]["last_error"] == "configure failed: PSF bank file not found: x.npz"
    # Without an error, unconfigured is only a warning.
    assert report(state="unconfigured")["reconstruction"]["_level"] == 1


def test_diagnostics_recent_failure_is_error_even_while_active():
    r = report(last_error="reconstruction failed: X: y", last_fail_mono=NOW - 1.0)
    assert (r["reconstruction"]["_level"], r["reconstruction"]["_message"]) == (2, "reconstruction failed: X: y")
    assert report(last_error="reconstruction failed: X: y", last_fail_mono=NOW - 6.0)["reconstruction"]["_level"] == 0


def test_diagnostics_recent_bad_frame_warns_on_input():
    r = report(bad=2, last_warning="skipped frame 4x3 'x' on /ns/image_raw: bad", last_bad_mono=NOW - 2.0)
    assert (r["input"]["_level"], r["input"]["_message"]) == (
        1, "bad frames skipped: skipped frame 4x3 'x' on /ns/image_raw: bad")
    assert r["input"]["frames_bad"] == "2" and r["reconstruction"]["_level"] == 0
    assert report(bad=2, last_bad_mono=NOW - 5.5)["input"]["_level"] == 0  # outside the window


def test_diagnostics_silent_input_warns():
    r = report(last_input_mono=NOW - 3.5)
    assert (r["input"]["_level"], r["input"]["_message"]) == (1, "no frames on /ns/image_raw for 3 s")
    assert report(last_input_mono=NOW - 2.5)["input"]["_level"] == 0


def test_diagnostics_solver_note_warns():
    note = "time budget 1 ms is below one step (est. 40 ms): ran 1 step"
    r = report(last_note=note, last_note_mono=NOW - 1.0, last_steps=1)
    assert (r["reconstruction"]["_level"], r["reconstruction"]["_message"]) == (1, note)
    assert r["reconstruction"]["steps"] == "1"  # what the latest frame ran, not the configured 20
    assert report(last_note=note, last_note_mono=NOW - 6.0)["reconstruction"]["_level"] == 0


def test_diagnostics_ok_with_rates_and_exact_keys():
    r = report(in_rate=29.97, out_rate=10.0, frames_in=30, processed=10, dropped=20, lost=1,
               latency_s=(0.1, 0.3), intrinsics="camera_info")
    inp, rec = r["input"], r["reconstruction"]
    assert (inp["_level"], inp["_message"], inp["_name"], inp["_hw"]) == (
        0, "receiving 30.0 Hz", "/ns/cadfd_node: input", "/ns/image_raw")
    assert (rec["_level"], rec["_message"], rec["_name"], rec["_hw"]) == (
        0, "publishing 10.0 Hz", "/ns/cadfd_node: reconstruction", "cpu")
    counts = ["frames_in", "frames_processed", "frames_dropped", "frames_lost", "frames_bad", "frames_failed"]
    assert [k for k in inp if not k.startswith("_")] == ["topic", "input_rate_hz", "intrinsics", *counts,
                                                         "last_warning", "metadata_warnings",
                                                         "last_metadata_warning"]
    assert [k for k in rec if not k.startswith("_")] == [
        "state", "method", "device", "steps", "tiles", "noise_sigma", "noise_source", "output_rate_hz",
        "latency_mean_ms", "latency_max_ms",
        "processing_mean_ms", "processing_max_ms", *counts, "last_error"]
    assert (inp["input_rate_hz"], inp["intrinsics"], inp["frames_in"], inp["frames_dropped"]) == (
        "29.970", "camera_info", "30", "20")
    assert (rec["output_rate_hz"], rec["latency_mean_ms"], rec["latency_max_ms"]) == ("10.000", "200.000", "300.000")
    assert (rec["processing_mean_ms"], rec["steps"], rec["frames_lost"]) == ("nan", "20", "1")
    assert (rec["noise_sigma"], rec["noise_source"]) == ("nan", "")  # no frame yet


def test_diagnostics_report_the_latest_frames_noise_and_where_it_came_from():
    stats = Stats()
    stats.frame_published("psf_bank", 0, [], 0.2, None, 6.0, noise_sigma=0.0071234, noise_source="noise model")
    inp, rec = diagnostic_statuses(stats.snapshot(), "active", 6.5, 1.0, 1.0, "classical", "cpu", 8,
                                   "/ns/cadfd_node", "/ns/image_raw")
    values = {kv.key: kv.value for kv in rec.values}
    assert (values["noise_sigma"], values["noise_source"]) == ("0.00712", "noise model")


def test_stats_snapshot_is_an_immutable_copy_and_rates_follow_it():
    stats = Stats()
    for _ in range(3):
        stats.frame_received(5.0)
    stats.frame_dropped()
    stats.frame_published("psf_bank", 4, ["late"], 0.25, None, 6.0)
    snap = stats.snapshot()
    stats.frame_published("camera_info", 5, [], 0.5, 0.1, 7.0)
    assert (snap.frames_in, snap.dropped, snap.processed, snap.intrinsics, snap.last_steps) == (3, 1, 1, "psf_bank", 4)
    assert (snap.processing_s, snap.latency_s, snap.last_note, snap.last_note_mono) == ((0.25,), (), "late", 6.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.frames_in = 0
    meter = RateMeter(now=10.0)
    assert meter.update(snap, 12.0) == (1.5, 0.5)
    assert meter.update(stats.snapshot(), 13.0) == (0.0, 1.0)  # one more processed in 1 s


# ---------------------------------------------------------------------- parameters
def test_descriptors_carry_ranges_choices_and_flags():
    steps = descriptor(SPEC["steps"])
    assert (steps.integer_range[0].from_value, steps.integer_range[0].to_value, steps.integer_range[0].step) == (
        1, 1000, 1)
    assert not steps.floating_point_range and steps.description == SPEC["steps"].description
    depth = descriptor(SPEC["max_depth"])
    assert (depth.floating_point_range[0].from_value, depth.floating_point_range[0].to_value) == (0.0, 1000.0)
    assert descriptor(SPEC["method"]).additional_constraints == "one of: classical, dps; " + CONFIGURE_NOTE
    assert descriptor(SPEC["depth_encoding"]).additional_constraints == "one of: 32FC1, 16UC1"  # any time
    assert descriptor(SPEC["psf_bank"]).additional_constraints == CONFIGURE_NOTE
    autostart = descriptor(SPEC["autostart"])
    assert autostart.read_only and autostart.additional_constraints == ""
    assert not descriptor(SPEC["steps"]).read_only
    tiles = descriptor(SPEC["max_pixels"])
    assert (tiles.integer_range[0].from_value, tiles.integer_range[0].to_value) == (4096, 2**31 - 1)


def test_zero_is_unset_ranges_start_at_zero():
    budget = descriptor(SPEC["time_budget_ms"]).floating_point_range[0]
    sigma = descriptor(SPEC["noise_sigma"]).floating_point_range[0]
    assert (budget.from_value, budget.to_value) == (0.0, 600000.0)
    assert (sigma.from_value, sigma.to_value) == (0.0, 0.5)
    unset = [p for p in PARAMS if p.zero_is_unset]
    assert {p.name for p in unset} >= {"time_budget_ms", "noise_sigma"}
    for p in unset:
        d = descriptor(p)
        assert (d.floating_point_range or d.integer_range)[0].from_value == 0, p.name


def test_declarations_carry_each_kind_of_constraint():
    """What `ros2 param describe` shows, per kind of parameter: an integer range, a float range, a list of
    choices, the configure-time note (solver parameters only), written out here rather than re-derived."""
    declared = {name: (default, d) for name, default, d in declarations()}
    default, steps = declared["steps"]
    assert default == 4 and not steps.floating_point_range
    assert (steps.integer_range[0].from_value, steps.integer_range[0].to_value) == (1, 1000)
    default, floor = declared["min_confidence"]
    assert default == 0.0 and not floor.integer_range
    assert (floor.floating_point_range[0].from_value, floor.floating_point_range[0].to_value) == (0.0, 1.0)
    _, method = declared["method"]
    assert "one of: classical, dps" in method.additional_constraints
    assert "applied on configure" in method.additional_constraints
    _, encoding = declared["depth_encoding"]  # an output: may change while active
    assert "one of: 32FC1, 16UC1" in encoding.additional_constraints
    assert "applied on configure" not in encoding.additional_constraints
    assert {"max_pixels", "tile_size"} <= set(declared)


def test_configure_time_parameters_refused_while_configured():
    refused = "psf_bank is applied on configure; deactivate and cleanup the node before changing it"
    assert validate_changes({"psf_bank": "/elsewhere.npz"}, ALL_DEFAULTS, configured=True) == refused
    assert validate_changes({"psf_bank": "/elsewhere.npz"}, ALL_DEFAULTS, configured=False) is None
    assert validate_changes({"worker_niceness": 3}, ALL_DEFAULTS, configured=True).startswith("worker_niceness is")
    assert validate_changes({"tile_size": 256}, ALL_DEFAULTS, configured=True).startswith("tile_size is")
    assert validate_changes({"depth_encoding": "16UC1"}, ALL_DEFAULTS, configured=True) is None  # any time


def test_bad_choice_and_out_of_range_refused():
    assert validate_changes({"method": "magic"}, ALL_DEFAULTS, False) == (
        "method must be one of classical, dps, got 'magic'")
    assert validate_changes({"sampler": "ddim"}, ALL_DEFAULTS, False).startswith("sampler must be one of auto")
    assert validate_changes({"steps": 0}, ALL_DEFAULTS, False) == "steps must be in [1, 1000], got 0"
    # Inside the ROS range (which starts at 0) but below the schema's: only 0 itself means unset.
    assert validate_changes({"noise_sigma": 5e-5}, ALL_DEFAULTS, False) == (
        "noise_sigma must be in [0.0001, 0.5] or 0 (unset), got 5e-05")
    assert validate_changes({"noise_sigma": 0.0}, ALL_DEFAULTS, False) is None
    assert validate_changes({"use_sim_time": True, "qos_overrides./x.publisher.depth": 3}, ALL_DEFAULTS, True) is None


def test_min_max_depth_checked_as_a_pair():
    current = dict(ALL_DEFAULTS, max_depth=3.0)
    assert validate_changes({"min_depth": 4.0}, current, True) == (
        "max_depth (3.0) must be greater than min_depth (4.0) or 0")
    assert "max_depth" in validate_changes({"min_depth": 3.0}, current, True)  # equal: no valid range
    assert validate_changes({"min_depth": 4.0, "max_depth": 6.0}, current, True) is None
    assert validate_changes({"min_depth": 4.0, "max_depth": 0.0}, current, True) is None  # 0 = no limit


def test_output_settings_from_output_scope_values():
    values = dict(ALL_DEFAULTS, depth_encoding="16UC1", min_depth=1.0, max_depth=2.5, points_colored=True,
                  output_frame_id="cam", method="dps")
    assert output_settings(values) == OutputSettings(depth_encoding="16UC1", min_depth=1.0, max_depth=2.5,
                                                     points_colored=True, output_frame_id="cam")
    assert output_settings(defaults(["output"])) == OutputSettings()


def test_configure_checks_values_that_bypassed_the_set_callback():
    # A YAML file or -p can set a choice the descriptor cannot express: configure names it.
    with pytest.raises(CadfdError, match=r"^parameter method must be one of classical, dps, got 'magic'$"):
        check_values(dict(ALL_DEFAULTS, method="magic"))
    with pytest.raises(CadfdError, match="max_depth"):
        check_values(dict(ALL_DEFAULTS, min_depth=2.0, max_depth=1.0))
    with pytest.raises(CadfdError, match=r"^parameter device must be one of"):
        build_processor(dict(ALL_DEFAULTS, device="tpu", psf_bank="/never/loaded.npz"))
    check_values(ALL_DEFAULTS)  # the defaults are valid


def test_processing_uses_the_schema_depth_encodings():
    import cadfd_ros.params
    import cadfd_ros.ros.processing

    assert cadfd_ros.ros.processing.DEPTH_ENCODINGS is cadfd_ros.params.DEPTH_ENCODINGS


def sized_info(sec: int, width: int, height: int) -> CameraInfo:
    info = info_at(sec)
    info.width, info.height = width, height
    return info


def test_fallback_is_the_newest_camera_info_of_the_frame_size():
    infos = CameraInfoBuffer(wait_s=0.0)
    right, stray, exact_other = sized_info(1, 4, 3), sized_info(2, 8, 6), sized_info(5, 8, 6)
    for info in (right, stray, exact_other):
        infos.add(info)
    assert infos.pair(stamp(9), -1e9, (4, 3)) == (right, [(8, 6)])
    assert infos.pair(stamp(5), -1e9, (4, 3)) == (exact_other, [])  # the exact stamp wins (then checked)
    assert infos.pair(stamp(9), -1e9, (2, 2)) == (None, [(8, 6), (4, 3)])
    assert infos.match(stamp(9), -1e9) is exact_other  # no size: the newest, as before


def test_worker_reports_a_stray_camera_info_once_and_uses_none():
    infos = CameraInfoBuffer(wait_s=0.0)
    infos.add(sized_info(1, 8, 6))
    processor = FakeProcessor("a", "b")
    worker, published, stats, logger, _ = make_worker(processor, infos)
    worker.handle(image_at(2), 0.0)
    worker.handle(image_at(3), 0.0)
    assert [c[0] for c in processor.calls] == [None, None] and len(published) == 2
    assert stats.metadata_warnings == 1 and stats.bad == 0 and len(logger.lines) == 1
    assert "8x6 ignored for 4x3" in logger.lines[0][1]


def test_an_abandoned_worker_publishes_nothing_more():
    processor = FakeProcessor("late")
    worker, published, stats, logger, _ = make_worker(processor)
    worker.abandon()  # deactivate during the solve
    worker.handle(image_at(1), 0.0)
    assert len(processor.calls) == 1 and published == []


def test_spin_carries_on_past_an_entity_destroyed_during_a_wait():
    # rclpy raises InvalidHandle out of spin when a transition destroys a subscription while another executor
    # thread builds a wait set (ros2/rclpy#1284): the node's spin loop must go on, and return at shutdown
    InvalidHandle = pytest.importorskip("rclpy.exceptions").InvalidHandle

    from cadfd_ros.node import spin_through_destroyed_entities

    class Executor:
        def __init__(self, failures: int) -> None:
            self.failures, self.spins = failures, 0

        def spin(self) -> None:
            self.spins += 1
            if self.spins <= self.failures:
                raise InvalidHandle("cannot use Destroyable because destruction was requested")

    class Logger:
        def __init__(self) -> None:
            self.messages: list[str] = []

        def debug(self, message: str) -> None:
            self.messages.append(message)

    executor, logger = Executor(failures=2), Logger()
    spin_through_destroyed_entities(executor, logger)
    assert executor.spins == 3 and len(logger.messages) == 2 and "destroyed" in logger.messages[0]

    class Failing:
        def spin(self) -> None:
            raise RuntimeError("context invalid")

    with pytest.raises(RuntimeError, match="context invalid"):  # anything else still ends the node
        spin_through_destroyed_entities(Failing())
