"""cadfd_node under hostile input (issue 12), in process over real rclpy and DDS unless a case
needs a process of its own: bad start-up parameters, honest reports, camera_info pairing,
stray metadata, sim time without /clock, oversized frames and lifecycle calls during a long
solve. Frames are small and the bank has 6 layers, so every case runs in seconds."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed")
pytest.importorskip("rclpy.lifecycle", reason="rclpy has no lifecycle support")

from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from ros_test_util import (  # noqa: E402
    call_service, camera_info_msg, image_msg, prime_lifecycle_clients, unique_domain_id,
)
# the same fixtures as test_node: float32 default, a DDS context, the small bank and its scene
from test_node import FRAME, Harness, _float32_default, bank_path, context, scene  # noqa: E402,F401

pytestmark = pytest.mark.ros

H, W = 96, 128
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def harness(context, bank_path):
    created = []

    def make(ctx=None, **params):
        if ctx is None:
            params.setdefault("psf_bank", str(bank_path))
            params.setdefault("device", "cpu")
            params.setdefault("scan_frame_id", "test_link")  # x-forward, as a user should set (else a WARN, once)
        h = Harness(ctx or context, **params)
        if ctx is None:  # a test with its own context closes its harness before shutting it down
            created.append(h)
        return h

    yield make
    for h in created:
        h.close()


def _status(statuses: dict, suffix: str) -> dict:
    return next(v for k, v in statuses.items() if k.endswith(suffix))


def _stamp_of(m) -> tuple[int, int]:
    return (m.header.stamp.sec, m.header.stamp.nanosec)


# ---------------------------------------------------------------- item 5: start-up parameters
def test_bad_startup_parameters_leave_the_node_up_unconfigured_with_an_error(harness, bank_path, tmp_path):
    params_file = tmp_path / "bad.yaml"
    params_file.write_text("/**:\n  ros__parameters:\n    input_downscale: 0\n    noise_sigma: 0\n"
                           f"    psf_bank: {bank_path}\n    device: cpu\n")
    ctx = rclpy.context.Context()
    rclpy.init(args=["--ros-args", "--params-file", str(params_file), "-p", "steps:=abc"], context=ctx,
               domain_id=unique_domain_id())
    try:
        h = harness(ctx)  # before the fix: InvalidParameterTypeException out of the constructor
        node = h.node
        assert h.state() == "unconfigured"
        assert set(node._startup_errors) == {"steps", "input_downscale"}  # an int for a double is fine
        assert "steps accepts an integer in [1, 1000]" in node._startup_errors["steps"]
        assert "input_downscale accepts an integer in [1, 8]" in node._startup_errors["input_downscale"]
        assert node.get_parameter("noise_sigma").value == 0.0
        statuses = h.diagnostics(lambda s: any("start-up parameter" in v["_message"] for v in s.values()))
        rec = _status(statuses, "reconstruction")
        assert rec["_level"] == 2 and "accepts" in rec["_message"]
        # Exactly like a bad value at configure: FAILURE, still unconfigured, ready for a fix.
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert h.state() == "unconfigured"
        assert node.set_parameters([Parameter("steps", value=5)])[0].successful
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE  # input_downscale still refused
        assert node.set_parameters([Parameter("input_downscale", value=2)])[0].successful
        assert not node._startup_errors
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node._processor.input_downscale == 2
    finally:
        h.close()
        rclpy.shutdown(context=ctx)


def test_bad_startup_parameter_in_a_process_gives_one_line_and_no_traceback(tmp_path):
    env = dict(os.environ, ROS_DOMAIN_ID=str(unique_domain_id()), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
               RCUTILS_LOGGING_BUFFERED_STREAM="0")
    exe = Path(sys.executable).with_name("cadfd_node")
    proc = subprocess.Popen([str(exe), "--ros-args", "-r", "__ns:=/faults_startup", "-p", "input_downscale:=0",
                             "-p", "autostart:=true"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    lines = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "cadfd_node up" in line:
                break
        time.sleep(0.5)
        assert proc.poll() is None, "".join(lines)  # still up
    finally:
        proc.terminate()
        out = proc.communicate(timeout=10)[0]
    text = "".join(lines) + out
    assert "Traceback" not in text, text
    mentions = [line for line in text.splitlines() if "input_downscale" in line]
    assert len(mentions) == 1 and "[1, 8]" in mentions[0] and "ERROR" in mentions[0], text
    assert "configured:" not in text  # autostart does not configure with the refused value replaced


# ---------------------------------------------------------------- item 7: honest reports
def test_info_and_diagnostics_agree_on_steps_and_tiles(harness, scene):
    capture, _ = scene
    h = harness(max_pixels=4096, tile_size=64)  # 96 x 128 > 4096 pixels: solved in tiles
    h.start()
    if h.node._processor.info_type is None:
        pytest.skip("cadfd_ros_interfaces not built (make msgs)")
    stamp = (900, 0)
    h.roundtrip(capture, "rgb8", stamp)
    info = h.out.wait_for("info", lambda m: _stamp_of(m) == stamp)
    assert info.method == "classical" and info.steps == 0 and info.sampler == ""
    assert "tiles" not in info.stage_names and info.tiles >= 2  # a count, in its own field
    # the node's own stages add up to the frame's total, and no solver stage is longer than it
    own = [seconds for name, seconds in zip(info.stage_names, info.stage_seconds) if name.startswith("node_")]
    assert own and sum(own) == pytest.approx(info.total_seconds, rel=1e-5)
    assert len(info.stage_seconds) == len(info.stage_names)
    assert all(0.0 <= s <= info.total_seconds + 1e-6 for s in info.stage_seconds)
    statuses = h.diagnostics(lambda s: any(v.get("frames_processed") == "1" for v in s.values()))
    rec = _status(statuses, "reconstruction")
    assert (rec["method"], rec["steps"], rec["tiles"]) == (info.method, str(info.steps), str(info.tiles))


# ---------------------------------------------------------------- item 3: camera_info pairing
def test_a_stray_camera_info_is_reported_once_and_never_poisons_later_frames(harness, scene):
    from ros_test_util import FX

    capture, _ = scene
    h = harness(max_stamp_skew=0.0)  # stamps of 1970: only the camera_info is suspect here
    h.start()
    h.info_pub.publish(camera_info_msg(320, 240, (700, 0), FRAME))  # another camera's size and stamp
    time.sleep(0.1)
    for i in range(2):  # before: every one skipped as "size mismatch"
        msg = h.roundtrip(capture, "rgb8", (701 + i, 0), info=False)
        assert (msg.width, msg.height) == (W, H)
    info = h.out.wait_for("depth/camera_info", lambda m: _stamp_of(m) == (702, 0))
    assert info.k[0] != FX  # the PSF bank's intrinsics, not the stray's
    # A camera_info of the frame's size (older stamp) is used although a stray one is newer.
    h.info_pub.publish(camera_info_msg(W, H, (704, 0), FRAME))
    time.sleep(0.05)
    h.info_pub.publish(camera_info_msg(320, 240, (705, 0), FRAME))
    time.sleep(0.1)
    h.roundtrip(capture, "rgb8", (706, 0), info=False)
    info = h.out.wait_for("depth/camera_info", lambda m: _stamp_of(m) == (706, 0))
    assert info.k[0] == FX and (info.width, info.height) == (W, H)
    statuses = h.diagnostics(lambda s: any(v.get("frames_processed") == "3" for v in s.values()))
    inp = _status(statuses, "input")
    assert inp["frames_bad"] == "0" and inp["metadata_warnings"] == "1"  # reported once
    assert "320x240 ignored for 128x96" in inp["last_metadata_warning"]
    assert h.node._stats.bad == 0


# ---------------------------------------------------------------- item 4: stray metadata
def test_suspect_stamps_and_frame_ids_warn_and_stay_out_of_the_latency(harness, scene):
    capture, _ = scene
    h = harness(output_frame_id="fallback_frame")
    h.start()

    def now_plus(seconds: float) -> tuple[int, int]:
        ns = h.client.get_clock().now().nanoseconds + int(seconds * 1e9)
        return (ns // 1_000_000_000, ns % 1_000_000_000)

    good = now_plus(0.0)
    h.roundtrip(capture, "rgb8", good)
    suspect = [now_plus(-3600.0), (0, 0), now_plus(3600.0)]
    for stamp in suspect:  # 1 h behind, zero, 1 h ahead: published as they are, each reported
        h.roundtrip(capture, "rgb8", stamp)
    msg = h.roundtrip(capture, "rgb8", now_plus(0.0), frame_id="")  # empty frame_id
    assert msg.header.frame_id == "fallback_frame"
    statuses = h.diagnostics(lambda s: any(v.get("frames_processed") == "5" for v in s.values()))
    inp, rec = _status(statuses, "input"), _status(statuses, "reconstruction")
    assert inp["_level"] == 1 and inp["_message"].startswith("suspect metadata") and "frame_id" in inp["_message"]
    assert int(inp["metadata_warnings"]) >= 4  # before: none, and latency_max_ms 3,600,677
    assert "frame_id" in inp["last_metadata_warning"]
    # Only the two good stamps count: a latency of seconds, not of hours, and never negative.
    assert 0 < float(rec["latency_mean_ms"]) <= float(rec["latency_max_ms"]) < 30_000
    assert h.node._stats.bad == 0


def test_stamp_checker_policy():
    from cadfd_ros.ros.metadata import NS, StampChecker

    check = StampChecker()
    now = 1000 * NS
    assert check.check(now, "cam", now, 5.0) == ([], True)
    problems, trusted = check.check(now - 2 * NS, "cam", now, 5.0)  # backwards, within the skew
    assert not trusted and problems == ["stamp went backwards by 2.000 s"]
    problems, trusted = check.check(now + 10 * NS, "cam", now, 5.0)
    assert not trusted and "10.000 s ahead of the node clock" in problems[0]
    assert check.check(now + 20 * NS, "cam", now, None) == ([], True)  # check off
    assert check.check(now + 30 * NS, "cam", 0, 5.0) == ([], True)  # sim time before /clock
    assert check.check(0, "cam", now, 5.0) == (["stamp is zero"], False)
    check.reset()
    assert check.check(now, "", now, 5.0, "out")[0] == ["empty frame_id; outputs use output_frame_id 'out'"]


# ---------------------------------------------------------------- item 6: sim time without /clock
def test_diagnostics_keep_publishing_under_sim_time_without_clock(harness):
    h = harness(use_sim_time=True)  # nothing publishes /clock in this domain
    assert h.node.get_clock().now().nanoseconds == 0
    h.diagnostics(lambda s: True, timeout=5.0)  # before: the 1 Hz timer on ROS time never fired
    count = len(h.out.messages["diagnostics"])
    time.sleep(2.2)
    assert len(h.out.messages["diagnostics"]) - count >= 2


# ---------------------------------------------------------------- item 1: frame-size policy
def test_an_oversized_frame_is_binned_with_camera_info_scaled_and_one_warning(harness, scene):
    from ros_test_util import CX, FX

    capture, _ = scene
    h = harness(max_input_pixels=4096)  # 128 x 96 = 12288 pixels: binned 2x2 to 64 x 48
    h.start()
    depth = h.roundtrip(capture, "rgb8", (600, 0))
    assert (depth.width, depth.height) == (W // 2, H // 2)  # before: solved at full size, silently
    info = h.out.wait_for("depth/camera_info", lambda m: _stamp_of(m) == (600, 0))
    assert (info.width, info.height) == (W // 2, H // 2) and info.k[0] == pytest.approx(FX / 2)
    assert info.k[2] == pytest.approx((CX + 0.5) / 2 - 0.5)
    statuses = h.diagnostics(lambda s: any("max_input_pixels" in v["_message"] for v in s.values()))
    rec = _status(statuses, "reconstruction")
    assert rec["_level"] == 1 and "binned 2x2 to 64x48" in rec["_message"]
    noted = h.node._stats.last_note_mono
    h.roundtrip(capture, "rgb8", (601, 0))
    assert h.node._stats.last_note_mono == noted  # once per size
    assert h.node._stats.bad == 0
    # the binned frame went to a solver of the 2x2-binned bank; the configured solver keeps the full one
    processor = h.node._processor
    full = processor.reconstructor.psf_bank
    (binned,) = processor._binned.values()
    assert binned.psf_bank.focal_length_px() == pytest.approx(full.focal_length_px() / 2)
    assert binned.psf_bank.kernel_size <= full.kernel_size // 2 + 2 < full.kernel_size


def test_an_oversized_frame_is_refused_when_asked(harness, scene):
    capture, _ = scene
    h = harness(max_input_pixels=4096, oversize_policy="refuse")
    h.start()
    h.send(capture, "rgb8", (610, 0))
    statuses = h.diagnostics(lambda s: any(v.get("frames_bad") == "1" for v in s.values()), timeout=8.0)
    inp = _status(statuses, "input")
    assert "over max_input_pixels 4096" in inp["last_warning"] and inp["frames_processed"] == "0"
    small = np.ascontiguousarray(capture[:64, :64])  # 4096 pixels: within the limit
    depth = h.roundtrip(small, "rgb8", (611, 0))
    assert (depth.width, depth.height) == (64, 64)


# ---------------------------------------------------------------- item 2: lifecycle during a long solve
def test_lifecycle_services_answer_while_a_long_solve_runs(harness, scene):
    import threading

    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState

    capture, _ = scene
    h = harness()
    h.start()
    recon = h.node._processor.reconstructor
    original, solving, solved = recon.reconstruct, threading.Event(), threading.Event()

    def long_solve(c, **options):  # a frame that takes 4 s (as a big frame does), then its real result
        solving.set()
        time.sleep(4.0)
        try:
            return original(c, **options)
        finally:
            solved.set()

    recon.reconstruct = long_solve
    get_state = h.client.create_client(GetState, f"{h.ns}/cadfd_node/get_state")
    change = h.client.create_client(ChangeState, f"{h.ns}/cadfd_node/change_state")
    assert get_state.wait_for_service(5.0) and change.wait_for_service(5.0)
    prime_lifecycle_clients(get_state, change)  # the timed calls below must not meet an unmatched answer

    def call(client, request) -> tuple[float, object]:
        start = time.monotonic()
        result = call_service(client, request, timeout=10.0, resend=False)
        return time.monotonic() - start, result

    h.send(capture, "rgb8", (500, 0))
    assert solving.wait(5.0)
    # Each answer comes while the 4 s solve still runs (``solved`` unset): nothing waits for it.
    _, state = call(get_state, GetState.Request())
    assert state.current_state.label == "active" and not solved.is_set()
    seconds, result = call(change, ChangeState.Request(transition=Transition(id=Transition.TRANSITION_DEACTIVATE)))
    assert result.success and not solved.is_set(), f"deactivate took {seconds:.2f} s"  # before: the whole solve
    _, state = call(get_state, GetState.Request())
    assert state.current_state.label == "inactive" and not solved.is_set()
    # Activate again while the abandoned solve still runs; its frame is never published.
    recon.reconstruct = original
    _, result = call(change, ChangeState.Request(transition=Transition(id=Transition.TRANSITION_ACTIVATE)))
    assert result.success and not solved.is_set()
    h.wait_connected()
    h.roundtrip(capture, "rgb8", (501, 0))  # the new session works meanwhile
    assert solved.wait(10.0)
    time.sleep(0.5)
    assert not [m for m in h.out.messages.get("depth/image", []) if _stamp_of(m) == (500, 0)]


def test_get_state_answers_while_a_long_configure_runs(harness, monkeypatch):
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState

    from cadfd_ros.ros.processing import FrameProcessor

    original = FrameProcessor.warmup
    monkeypatch.setattr(FrameProcessor, "warmup", lambda self: (time.sleep(2.5), original(self)))
    h = harness()
    get_state = h.client.create_client(GetState, f"{h.ns}/cadfd_node/get_state")
    change = h.client.create_client(ChangeState, f"{h.ns}/cadfd_node/change_state")
    assert get_state.wait_for_service(5.0) and change.wait_for_service(5.0)
    prime_lifecycle_clients(get_state, change)
    configure = change.call_async(ChangeState.Request(transition=Transition(id=Transition.TRANSITION_CONFIGURE)))
    time.sleep(0.5)  # inside the 2.5 s warm-up
    start = time.monotonic()
    future = get_state.call_async(GetState.Request())
    while not future.done() and time.monotonic() - start < 10.0:
        time.sleep(0.005)
    # answered while the configure (2.5 s warm-up) still runs: the service does not wait for it
    assert future.done(), "get_state got no answer during configure"
    assert future.result().current_state.label == "configuring" and not configure.done()
    deadline = time.monotonic() + 20.0
    while not configure.done() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert configure.result().success and h.state() == "inactive"


def test_an_oversized_frame_leaves_no_per_size_caches(bank_path, scene):
    # RSS returns to where it was after a big frame only if its per-size operators are dropped
    # (measured on 4000x3000 mono8: 303 -> 609 MiB with them kept, 306 MiB without).

    from cadfd_ros.params import PARAMS
    from cadfd_ros.ros.parameters import build_processor, output_settings

    values = {p.name: p.default for p in PARAMS}
    values.update(psf_bank=str(bank_path), device="cpu", max_input_pixels=4096)
    processor = build_processor(values)
    out = processor.process(image_msg(scene[0], "rgb8", (1, 0), FRAME), None, output_settings(values))
    assert (out.depth.width, out.depth.height) == (W // 2, H // 2) and out.notes
    (binned,) = processor._binned.values()
    assert binned.classical._operators == {} and binned.classical._null_cache == {}


# ---------------------------------------------------------------- item 9: every bad frame counted
def test_malformed_frames_are_counted_even_while_the_solver_is_busy(harness, scene):
    import threading

    capture, _ = scene
    h = harness()
    h.start()
    recon = h.node._processor.reconstructor
    original, solving = recon.reconstruct, threading.Event()

    def slow_solve(c, **options):  # the solver busy for 2 s: frames arriving meanwhile would replace each other
        solving.set()
        time.sleep(2.0)
        return original(c, **options)

    recon.reconstruct = slow_solve
    h.send(capture, "rgb8", (700, 0))
    assert solving.wait(5.0)
    for i in range(5):  # burst inside the solve: before, at most one reached the decoder
        bad = image_msg(capture, "rgb8", (701 + i, 0), FRAME)
        bad.data = bytes(bad.data)[: len(bad.data) // 2]
        h.send(None, "", (701 + i, 0), msg=bad)
        time.sleep(0.05)
    statuses = h.diagnostics(lambda s: any(v.get("frames_bad") == "5" for v in s.values()), timeout=8.0)
    inp = _status(statuses, "input")
    assert inp["frames_bad"] == "5" and "truncated" in inp["last_warning"]
    recon.reconstruct = original
    assert h.roundtrip(capture, "rgb8", (720, 0)).width == W
