"""cadfd_node as a separate process over real DDS: lifecycle services, outputs received by a
reliable subscriber (as RViz subscribes), the scan against depthimage_to_laserscan, and a 30 Hz
stream against a slower solver (memory must stay bounded, stale frames must be dropped and counted)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, LaserScan, PointCloud2  # noqa: E402

import d2ls_reference as d2ls  # noqa: E402
from ros_test_util import (  # noqa: E402
    CX, CY, FX, FY, Collector, call_service, camera_info_msg, cloud_xyz, far_ray, depth_array, diagnostic_values,
    image_msg, prime_lifecycle_clients, simulated_capture, unique_domain_id,
)

pytestmark = [pytest.mark.ros, pytest.mark.slow]

NODE_EXE = Path(sys.executable).parent / "cadfd_node"
FRAME = "coded_cam_optical_frame"
STREAM_S = float(os.environ.get("CADFD_STREAM_S", "4"))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


class RssSampler:
    """Peak VmRSS of a process, sampled in a background thread."""

    def __init__(self, pid: int, period: float = 0.01) -> None:
        self.pid, self.period, self.peak, self._stop = pid, period, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            time.sleep(self.period)

    def reset(self) -> int:
        peak, self.peak = self.peak, 0
        return peak

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


class Client:
    def __init__(self, context, ns: str) -> None:
        self.node = Node(f"test_client_{uuid.uuid4().hex[:6]}", context=context)
        self.ns = ns
        self.out = Collector()
        # Reliable, and the node's subscription is switched to reliable through its QoS-override
        # parameter: this exercises the override, and the newest frame cannot be lost in transit.
        self.image_pub = self.node.create_publisher(Image, f"{ns}/image_raw", 5)
        self.info_pub = self.node.create_publisher(CameraInfo, f"{ns}/camera_info", qos_profile_sensor_data)
        # Reliable subscriptions, as RViz makes them: they receive only from reliable publishers
        # (REP 2003: drivers publish with SystemDefaultsQoS).
        reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        for topic, t in {"depth/image": Image, "depth/camera_info": CameraInfo, "points": PointCloud2,
                         "aif/image": Image, "scan": LaserScan}.items():
            self.node.create_subscription(t, f"{ns}/{topic}", self.out.callback(topic), reliable)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.out.callback("diagnostics"), 10)
        self.change = self.node.create_client(ChangeState, f"{ns}/cadfd_node/change_state")
        self.get_state = self.node.create_client(GetState, f"{ns}/cadfd_node/get_state")
        self.set_params = self.node.create_client(SetParameters, f"{ns}/cadfd_node/set_parameters")
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def call(self, client, request, timeout: float = 30.0):
        # get_state and set_parameters (of one value) are idempotent: a lost answer is asked again.
        return call_service(client, request, timeout=timeout)

    def prime(self) -> None:
        """Match every client's response path before the test's calls (see ``call_service``)."""
        prime_lifecycle_clients(self.get_state, self.change)
        assert self.call(self.set_params, SetParameters.Request()).results == []

    def transition(self, transition_id: int) -> bool:
        # Not resent: after prime() the answer's path is matched, and a transition is not idempotent.
        request = ChangeState.Request(transition=Transition(id=transition_id))
        return call_service(self.change, request, resend=False).success

    def state(self) -> str:
        return self.call(self.get_state, GetState.Request()).current_state.label

    def responsiveness(self) -> dict[str, float]:
        """Seconds for a get_state and a set_parameters round trip (a valid, runtime change)."""
        start = time.monotonic()
        assert self.state() == "active"
        lifecycle = time.monotonic() - start
        request = SetParameters.Request(parameters=[
            Parameter("max_depth", value=10.0).to_parameter_msg()])
        start = time.monotonic()
        assert self.call(self.set_params, request).results[0].successful
        return {"get_state": lifecycle, "set_parameters": time.monotonic() - start}

    def latest_diagnostics(self, timeout: float = 5.0) -> dict:
        name = f"{self.ns}/cadfd_node: reconstruction"
        start = len(self.out.messages.get("diagnostics", []))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # a report newer than now
            for array in self.out.messages.get("diagnostics", [])[start:]:
                values = diagnostic_values(array, name)
                if values:
                    return values[name]
            time.sleep(0.05)
        raise AssertionError(f"no diagnostics from {name} in {timeout} s")


@pytest.fixture
def node_process(tmp_path):
    if not NODE_EXE.exists():
        pytest.skip(f"{NODE_EXE} not installed (pip install -e . / make venv)")
    domain = unique_domain_id()
    ns = f"/test_ns_{uuid.uuid4().hex[:8]}"
    log = (tmp_path / "node.log").open("w+")
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [str(NODE_EXE), "--ros-args", "-r", f"__ns:={ns}", "-p", "device:=cpu", "-p", "input_downscale:=4",
         "-p", f"qos_overrides.{ns}/image_raw.subscription.reliability:=reliable", "--log-level", "info"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    context = rclpy.context.Context()
    rclpy.init(context=context, domain_id=domain)
    client = Client(context, ns)
    try:
        yield proc, client
    finally:
        client.executor.shutdown(timeout_sec=2.0)
        client.node.destroy_node()
        rclpy.shutdown(context=context)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        log.seek(0)
        sys.stdout.write("---- cadfd_node log ----\n" + log.read()[-4000:])
        log.close()


def test_node_process_lifecycle_outputs_and_30hz_stream(node_process):
    """VGA frames binned 4x (input_downscale=4) by the node: large messages, and solves of 0.1-0.5 s
    while a 30 Hz stream arrives."""
    proc, client = node_process
    height, width, down = 480, 640, 4
    # Rendered at half size with the bundled bank and doubled: a textured coded capture, cheaply.
    half, _ = simulated_capture(None, height // 2, width // 2, rgb=True)
    capture = np.repeat(np.repeat(half, 2, axis=0), 2, axis=1)
    t_start = time.monotonic()

    # Lifecycle through the services, as a manager or `ros2 lifecycle set` would.
    client.prime()
    assert client.state() == "unconfigured"
    assert client.transition(Transition.TRANSITION_CONFIGURE)
    assert client.state() == "inactive"
    assert client.transition(Transition.TRANSITION_ACTIVATE)
    assert client.state() == "active"
    deadline = time.monotonic() + 15
    while (client.image_pub.get_subscription_count() < 1 or client.info_pub.get_subscription_count() < 1
           or client.node.count_publishers(f"{client.ns}/points") < 1):
        assert time.monotonic() < deadline, "node never connected"
        time.sleep(0.05)
    time.sleep(0.5)
    sampler = RssSampler(proc.pid)  # peak RSS, sampled every 10 ms

    messages = {enc: image_msg(capture, enc, (0, 0), FRAME) for enc in ("rgb8", "bgra8")}  # encoded once
    info_msg = camera_info_msg(width, height, (0, 0), FRAME)

    def send(encoding: str) -> tuple[int, int]:
        stamp_msg = client.node.get_clock().now().to_msg()  # real stamps: latency is meaningful
        msg = messages[encoding]
        msg.header.stamp = info_msg.header.stamp = stamp_msg
        client.image_pub.publish(msg)
        client.info_pub.publish(info_msg)  # after the image, as many drivers do: paired by stamp
        return stamp_msg.sec, stamp_msg.nanosec

    def roundtrip(encoding: str) -> tuple[tuple[int, int], object]:
        for _ in range(4):  # the camera_info is best effort: the first samples can be lost while DDS warms up
            stamp = send(encoding)
            try:
                return stamp, client.out.wait_for(
                    "depth/image", lambda m: (m.header.stamp.sec, m.header.stamp.nanosec) == stamp, 30.0)
            except AssertionError:
                continue
        raise AssertionError(f"no depth/image from the node process for a {encoding} frame")

    # One frame: outputs with the input's stamp and frame, REP 118 depth at the binned size,
    # camera_info scaled with it, cloud projected with that camera_info.
    stamp, depth_msg = roundtrip("rgb8")
    at = lambda m: (m.header.stamp.sec, m.header.stamp.nanosec) == stamp  # noqa: E731
    info = client.out.wait_for("depth/camera_info", at)
    cloud = client.out.wait_for("points", at)
    aif = client.out.wait_for("aif/image", at)
    assert depth_msg.encoding == "32FC1" and depth_msg.header.frame_id == FRAME
    assert info.header.frame_id == cloud.header.frame_id == aif.header.frame_id == FRAME
    h, w = height // down, width // down
    assert (depth_msg.height, depth_msg.width) == (h, w) and (info.height, info.width) == (h, w)
    s = 1 / down
    np.testing.assert_allclose(info.k, [FX * s, 0, (CX + 0.5) * s - 0.5, 0, FY * s, (CY + 0.5) * s - 0.5, 0, 0, 1])
    depth = depth_array(depth_msg)
    valid = np.isfinite(depth)
    # the scene's near plane is its left half, the far plane its right half
    assert valid.mean() > 0.5 and np.nanmedian(depth[:, : w // 2]) < np.nanmedian(depth[:, w // 2 :])
    xyz = cloud_xyz(cloud)
    u, v = np.arange(w)[None, :], np.arange(h)[:, None]
    fx, cx, fy, cy = info.p[0], info.p[2], info.p[5], info.p[6]
    np.testing.assert_allclose(xyz[..., 0][valid], ((u - cx) * depth / fx)[valid], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(xyz[..., 1][valid], ((v - cy) * depth / fy)[valid], rtol=1e-5, atol=1e-6)
    assert aif.encoding == "rgb8" and (aif.height, aif.width) == (h, w)
    # The scan with the default parameters: depthimage_to_laserscan on the published depth and
    # depth camera_info, with the bundled bank's depth range as range limits.
    scan = client.out.wait_for("scan", at)
    assert scan.header.frame_id == FRAME and len(scan.ranges) == w and scan.scan_time >= 0.0
    d2ls.assert_same_scan(scan, d2ls.convert_msg(depth_msg, info, scan_time=scan.scan_time, range_min=0.5,
                                                 range_max=far_ray(5.0, info, w), scan_height=1))
    assert np.isfinite(scan.ranges).mean() > 0.5

    print(f"\nfirst frame done after {time.monotonic() - t_start:.1f} s")
    # Another solve so the allocator reaches its working size, then the reference point.
    roundtrip("bgra8")
    time.sleep(1.2)
    before_diag = client.latest_diagnostics()
    rss_before, peak_solving = rss_kib(proc.pid), sampler.reset()

    # 30 Hz for 4 s of VGA bgra8 (1.2 MB each, 147 MB in all) against a slower solver: memory must
    # stay flat, stale frames must be dropped and counted, and the newest frame is the one solved.
    sent, period, t0, samples, responsive = 0, 1 / 30, time.monotonic(), [], []
    while time.monotonic() - t0 < STREAM_S:
        sent += 1
        last = send("bgra8")
        if sent % 40 == 25:  # mid-stream, the solver busy: services must still answer promptly
            responsive.append(client.responsiveness())
        if sent % 30 == 0:
            samples.append(round(rss_kib(proc.pid) / 1024, 1))
        time.sleep(max(0.0, t0 + sent * period - time.monotonic()))
    print("\nRSS MiB each second of the stream:", samples)
    client.out.wait_for("depth/image", lambda m: (m.header.stamp.sec, m.header.stamp.nanosec) == last, 60.0)
    time.sleep(1.2)
    rss_after, peak = rss_kib(proc.pid), sampler.stop()
    diag = client.latest_diagnostics()
    frames_in = int(diag["frames_in"]) - int(before_diag["frames_in"])
    processed = int(diag["frames_processed"]) - int(before_diag["frames_processed"])
    dropped = int(diag["frames_dropped"]) - int(before_diag["frames_dropped"])
    print(f"30 Hz stream of {width}x{height} bgra8 for {STREAM_S:.0f} s (solved at {w}x{h}): sent {sent}, "
          f"received {frames_in}, processed {processed}, dropped {dropped}; RSS idle before "
          f"{rss_before / 1024:.1f} MiB, after {rss_after / 1024:.1f} MiB; peak while solving single frames "
          f"{peak_solving / 1024:.1f} MiB, during the stream {peak / 1024:.1f} MiB; stamp->publish latency "
          f"mean {diag['latency_mean_ms']} ms, max {diag['latency_max_ms']} ms (last 100 frames)")
    # What arrives must be accounted for: processed or dropped.
    print(f"mid-stream service round trips: {responsive}")
    assert responsive and all(seconds < 1.0 for probe in responsive for seconds in probe.values()), responsive
    # Reliable QoS: what the executor does not take in time is lost in the keep-last queue. With the
    # worker niced and a 1 ms GIL switch interval the node took 95-100% (without: 26-54%); once in about 12 runs
    # on 2026-12-04 it took 68%, so the bound sits between the two regimes, not at the edge of the first.
    assert frames_in >= 0.6 * sent, f"node received {frames_in} of {sent} frames"
    assert processed + dropped == frames_in, (processed, dropped, frames_in)
    # Stale frames are dropped, not queued: with a queue, 4 s of 30 Hz frames solved at ~60 ms each would end
    # seconds behind. (How many are dropped depends on the machine: 57-84 of 120 were measured here.)
    assert processed >= 1 and dropped >= 1, f"{dropped} of {frames_in} dropped at 30 Hz"
    assert float(diag["latency_mean_ms"]) < 1000, f"mean stamp->publish latency {diag['latency_mean_ms']} ms: a backlog"
    # Every frame kept would be +147 MB; a solve's own working memory is in both peaks. Without retention the
    # growth (allocator arenas, DDS buffers) varied from 21 to 61 MiB over 10 runs on one machine (2026-12-04),
    # so the bound is half the retention signal, not the top of that noise.
    assert peak - peak_solving < 75 * 1024, f"peak RSS grew {(peak - peak_solving) / 1024:.1f} MiB in the stream"
    assert rss_after - rss_before < 75 * 1024, f"idle RSS grew {(rss_after - rss_before) / 1024:.1f} MiB"
    assert int(diag["frames_bad"]) == 0 and int(diag["frames_failed"]) == 0
    assert diag["_level"] == 0, diag["_message"]
    assert float(diag["latency_max_ms"]) >= float(diag["latency_mean_ms"]) > 0

    print(f"stream checked after {time.monotonic() - t_start:.1f} s")
    # scan_height 5 and custom range limits (they leave out the near plane at 0.53 m), set at run
    # time through the parameter service.
    request = SetParameters.Request(parameters=[
        Parameter("scan_height", value=5).to_parameter_msg(), Parameter("scan_range_min", value=0.6).to_parameter_msg(),
        Parameter("scan_range_max", value=4.0).to_parameter_msg()])
    assert all(r.successful for r in client.call(client.set_params, request).results)
    stamp, depth_msg = roundtrip("rgb8")
    at = lambda m: (m.header.stamp.sec, m.header.stamp.nanosec) == stamp  # noqa: E731
    info, scan = client.out.wait_for("depth/camera_info", at), client.out.wait_for("scan", at)
    # scan_time: the period since the previous processed frame, the last of the stream.
    period = (stamp[0] - last[0]) + (stamp[1] - last[1]) * 1e-9
    d2ls.assert_same_scan(scan, d2ls.convert_msg(depth_msg, info, scan_time=period, range_min=0.6, range_max=4.0,
                                                 scan_height=5))
    finite = np.asarray(scan.ranges)[np.isfinite(scan.ranges)]
    assert finite.size > w // 4 and finite.min() >= 0.6 and finite.max() <= 4.0
    # Deactivate through the service: the node stays up, inactive.
    assert client.transition(Transition.TRANSITION_DEACTIVATE)
    assert client.state() == "inactive"
    assert proc.poll() is None
