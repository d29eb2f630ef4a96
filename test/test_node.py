"""cadfd_node in-process, over real rclpy and DDS: lifecycle, encodings, output conventions,
parameter validation and bad frames. Frames are small (96 x 128) and the bank has 6 layers, so
each solve takes a fraction of a second."""
from __future__ import annotations

import math
import os
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed")
pytest.importorskip("rclpy.lifecycle", reason="rclpy has no lifecycle support")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, LaserScan, PointCloud2  # noqa: E402

import d2ls_reference as d2ls  # noqa: E402
from ros_test_util import (  # noqa: E402
    CX, CY, FX, FY, Collector, camera_info_msg, far_ray, cloud_xyz, depth_array, diagnostic_values, image_msg,
    simulated_capture, small_bank, unique_domain_id,
)

pytestmark = pytest.mark.ros

H, W = 96, 128
FRAME = "test_optical_frame"
ENCODINGS = ("mono8", "mono16", "rgb8", "bgr8", "rgba8", "bgra8", "rgb16", "bgr16", "rgba16", "bgra16",
             "bayer_rggb8", "bayer_bggr8", "bayer_gbrg8", "bayer_grbg8",
             "bayer_rggb16", "bayer_bggr16", "bayer_gbrg16", "bayer_grbg16")


@pytest.fixture(autouse=True)
def _float32_default():
    # The node runs with torch's default float32; a test module elsewhere in the session that
    # sets torch.set_default_dtype(float64) at import must not change what is tested here.
    torch = pytest.importorskip("torch")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(scope="module")
def context():
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx, domain_id=unique_domain_id())
    yield ctx
    rclpy.shutdown(context=ctx)


@pytest.fixture(scope="module")
def bank_path(tmp_path_factory):
    return small_bank(tmp_path_factory.mktemp("bank") / "bank6.npz")


@pytest.fixture(scope="module")
def scene(bank_path):
    return simulated_capture(bank_path, H, W, rgb=True)


class Harness:
    """The node plus a client node (publishers, output subscriptions) spinning in a thread."""

    def __init__(self, context, **params) -> None:
        from cadfd_ros.node import CadfdNode, spin_through_destroyed_entities

        self.ns = f"/t_{uuid.uuid4().hex[:8]}"
        overrides = [Parameter(k, value=v) for k, v in params.items()]
        self.node = CadfdNode(namespace=self.ns, context=context, parameter_overrides=overrides)
        self.client = Node("test_client", namespace=self.ns, context=context)
        self.out = Collector()
        self.image_pub = self.client.create_publisher(Image, "image_raw", 10)
        self.info_pub = self.client.create_publisher(CameraInfo, "camera_info", 10)
        topics = {"depth/image": Image, "depth/camera_info": CameraInfo, "points": PointCloud2, "aif/image": Image,
                  "aif/camera_info": CameraInfo, "confidence/image": Image, "scan": LaserScan}
        for topic, msg_type in topics.items():  # reliable, as RViz subscribes (the node publishes reliably)
            self.client.create_subscription(msg_type, topic, self.out.callback(topic), QoSProfile(depth=5))
        self.client.create_subscription(DiagnosticArray, "/diagnostics", self.out.callback("diagnostics"), 10)
        try:
            from cadfd_ros_interfaces.msg import ReconstructionInfo

            self.client.create_subscription(ReconstructionInfo, "cadfd_node/info", self.out.callback("info"), 10)
        except ImportError:
            pass
        self.executor = MultiThreadedExecutor(num_threads=4, context=context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.client)
        self.thread = threading.Thread(target=spin_through_destroyed_entities, args=(self.executor,), daemon=True)
        self.thread.start()

    def state(self) -> str:
        return self.node._state_machine.current_state[1]

    def start(self) -> None:
        assert self.node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert self.node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        self.wait_connected()

    def wait_connected(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.image_pub.get_subscription_count() < 1 or self.info_pub.get_subscription_count() < 1:
            assert time.monotonic() < deadline, "node never subscribed to image_raw/camera_info"
            time.sleep(0.05)
        while self.client.count_publishers(f"{self.ns}/depth/image") < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)  # let discovery settle both ways (best-effort: no retransmission)

    def send(self, capture: np.ndarray, encoding: str, stamp: tuple[int, int], info: bool = True,
             frame_id: str = FRAME, msg=None) -> None:
        msg = msg or image_msg(capture, encoding, stamp, frame_id)
        if info:
            self.info_pub.publish(camera_info_msg(msg.width, msg.height, stamp, frame_id))
            time.sleep(0.05)  # camera_info first, as drivers do
        self.image_pub.publish(msg)

    def roundtrip(self, capture, encoding, stamp, topic="depth/image", **kw):
        """Send until the output for ``stamp`` arrives (best effort may lose a message)."""
        for _ in range(3):
            self.send(capture, encoding, stamp, **kw)
            try:
                return self.out.wait_for(topic, lambda m: (m.header.stamp.sec, m.header.stamp.nanosec) == stamp, 8.0)
            except AssertionError:
                continue
        raise AssertionError(f"no {topic} for {encoding} frame at {stamp}")

    def diagnostics(self, predicate, timeout: float = 5.0) -> dict:
        name = self.node.get_fully_qualified_name()

        def match(array):
            statuses = diagnostic_values(array, name)
            return bool(statuses) and predicate(statuses)

        return diagnostic_values(self.out.wait_for("diagnostics", match, timeout), name)

    def close(self) -> None:
        self.node.stop()
        # the spin thread may still be inside a long callback (a tiled frame): let it leave before the nodes go
        self.executor.shutdown(timeout_sec=10.0)
        self.thread.join(timeout=10.0)
        self.node.destroy_node()
        self.client.destroy_node()


@pytest.fixture
def harness(context, bank_path):
    created = []

    def make(**params):
        params.setdefault("psf_bank", str(bank_path))
        params.setdefault("device", "cpu")
        params.setdefault("scan_frame_id", "test_link")  # x-forward, as a user should set (else a WARN, once)
        h = Harness(context, **params)
        created.append(h)
        return h

    yield make
    for h in created:
        h.close()


def test_lifecycle_failed_configure_then_recovery(harness, bank_path, tmp_path):
    h = harness(psf_bank=str(tmp_path / "missing.npz"))
    assert h.state() == "unconfigured"
    # Bad bank path: FAILURE (not ERROR), still unconfigured, and diagnostics say why.
    assert h.node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert h.state() == "unconfigured"
    statuses = h.diagnostics(lambda s: any("missing.npz" in v["_message"] for v in s.values()))
    rec = next(v for k, v in statuses.items() if k.endswith("reconstruction"))
    assert rec["_level"] == 2 and "PSF bank file not found" in rec["_message"]

    # A file that is not an npz: same, with a message naming the file.
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"not a zip archive")
    assert h.node.set_parameters([Parameter("psf_bank", value=str(corrupt))])[0].successful
    assert h.node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert "corrupt.npz" in h.node._stats.last_error and h.state() == "unconfigured"

    # Fix the parameter, configure again: success, and the full cycle works.
    assert h.node.set_parameters([Parameter("psf_bank", value=str(bank_path))])[0].successful
    assert h.node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert h.state() == "inactive"
    # Solver parameters are refused while configured, with a reason.
    result = h.node.set_parameters([Parameter("psf_bank", value="/elsewhere.npz")])[0]
    assert not result.successful and "cleanup" in result.reason
    assert h.node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    assert h.state() == "active" and len(h.node._subs) == 2 and h.node._worker.is_alive()
    assert h.node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert h.state() == "inactive" and h.node._subs == [] and h.node._worker is None
    assert h.node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    assert h.state() == "unconfigured" and h.node._processor is None and h.node._pubs == {}
    assert h.node.set_parameters([Parameter("steps", value=5)])[0].successful  # allowed again
    assert h.node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert h.node.trigger_shutdown() == TransitionCallbackReturn.SUCCESS
    assert h.state() == "finalized" and h.node._processor is None


def test_dps_configure_fails_cleanly_or_succeeds(harness, tmp_path):
    # An unloadable prior must give FAILURE with a reason, never an exception or ERROR.
    h = harness(method="dps", prior=str(tmp_path / "no_prior"))
    result = h.node.trigger_configure()
    assert result == TransitionCallbackReturn.FAILURE
    assert h.state() == "unconfigured"
    assert h.node._stats.last_error.startswith("configure failed")


def test_output_conventions(harness, scene, bank_path):
    capture, true_depth = scene
    h = harness(max_stamp_skew=0.0)  # stamps of 1970 on purpose: the clock check is off, latency is counted
    h.start()
    stamp = (1234, 567_000_000)
    depth_msg = h.roundtrip(capture, "rgb8", stamp)
    at_stamp = lambda m: (m.header.stamp.sec, m.header.stamp.nanosec) == stamp  # noqa: E731
    info = h.out.wait_for("depth/camera_info", at_stamp)
    cloud = h.out.wait_for("points", at_stamp)
    aif = h.out.wait_for("aif/image", at_stamp)
    aif_info = h.out.wait_for("aif/camera_info", at_stamp)
    conf = h.out.wait_for("confidence/image", at_stamp)
    scan = h.out.wait_for("scan", at_stamp)
    for msg in (depth_msg, info, cloud, aif, aif_info, conf):
        assert msg.header.frame_id == FRAME
    assert scan.header.frame_id == "test_link"  # scan_frame_id: the x-forward frame (the harness sets it)

    # REP 2003: the outputs are published reliable and volatile (so reliable subscribers such as RViz
    # and best-effort ones both receive them); the input is subscribed best effort (SensorDataQoS).
    from rclpy.qos import DurabilityPolicy, ReliabilityPolicy

    for topic in ("depth/image", "depth/camera_info", "points", "scan", "aif/image", "confidence/image"):
        (pub,) = h.client.get_publishers_info_by_topic(f"{h.ns}/{topic}")
        assert pub.qos_profile.reliability == ReliabilityPolicy.RELIABLE, topic
        assert pub.qos_profile.durability == DurabilityPolicy.VOLATILE, topic  # (discovery carries no depth)
    (sub,) = h.client.get_subscriptions_info_by_topic(f"{h.ns}/image_raw")
    assert sub.node_name == "cadfd_node" and sub.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT

    # scan: depthimage_to_laserscan on the published depth and camera_info, with the bank's range (from
    # 0.5 m to the longest ray of 5 m depth) and no frame period yet (the first frame after activation).
    assert scan.range_max == pytest.approx(far_ray(5.0, info, W), rel=1e-7) and scan.range_max > 5.4
    d2ls.assert_same_scan(scan, d2ls.convert_msg(depth_msg, info, scan_time=0.0, range_min=0.5,
                                                 range_max=far_ray(5.0, info, W), output_frame_id="test_link"))
    assert len(scan.ranges) == W and np.isfinite(scan.ranges).mean() > 0.5

    # REP 118: 32FC1 metres, NaN invalid, values inside the bank's range.
    assert depth_msg.encoding == "32FC1" and (depth_msg.height, depth_msg.width) == (H, W)
    depth = depth_array(depth_msg)
    valid = np.isfinite(depth)
    assert valid.mean() > 0.5
    assert np.all(depth[valid] >= 0.5 - 1e-3) and np.all(depth[valid] <= 5.0 + 1e-3)
    assert not np.any(np.isinf(depth))
    # The near half must come out nearer than the far half (the scene is two planes).
    near = np.nanmedian(depth[:, 16: W // 2 - 16])
    far = np.nanmedian(depth[:, W // 2 + 16: -16])
    assert near < far, (near, far)

    # camera_info: same size, our intrinsics.
    assert (info.width, info.height) == (W, H)
    assert np.allclose(info.k, [FX, 0, CX, 0, FY, CY, 0, 0, 1])
    assert np.allclose(aif_info.k, info.k)
    assert (aif.width, aif.height) == (W, H)

    assert conf.encoding == "32FC1"
    c = np.frombuffer(bytes(conf.data), "<f4")
    assert c.size == H * W and np.nanmin(c) >= 0 and np.nanmax(c) <= 1

    # Cloud: organised, depth_image_proc layout, projection from CameraInfo.P.
    assert (cloud.height, cloud.width) == (H, W) and not cloud.is_dense
    fields = {f.name: (f.offset, f.datatype, f.count) for f in cloud.fields}
    assert fields["x"] == (0, 7, 1) and fields["y"] == (4, 7, 1) and fields["z"] == (8, 7, 1)
    assert cloud.point_step == 16 and cloud.row_step == 16 * W
    xyz = cloud_xyz(cloud)
    v, u = np.mgrid[0:H, 0:W]
    z = xyz[:, :, 2]
    assert np.array_equal(np.isfinite(z), valid)
    np.testing.assert_allclose(z[valid], depth[valid], rtol=1e-6)
    np.testing.assert_allclose(xyz[:, :, 0][valid], ((u - CX) * depth / FX)[valid], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(xyz[:, :, 1][valid], ((v - CY) * depth / FY)[valid], rtol=1e-5, atol=1e-6)
    assert np.all(np.isnan(xyz[~valid]))

    if h.node._processor.info_type is not None:  # ~/info exists once `make msgs` has run
        rinfo = h.out.wait_for("info", at_stamp)
        assert rinfo.method == "classical" and rinfo.header.frame_id == FRAME
        assert len(rinfo.stage_names) == len(rinfo.stage_seconds) > 0
        assert math.isclose(rinfo.valid_fraction, valid.mean(), rel_tol=1e-5)

    # 16UC1 millimetres with 0 invalid, a max_depth limit, an output frame id, a coloured cloud.
    assert all(r.successful for r in h.node.set_parameters([
        Parameter("depth_encoding", value="16UC1"), Parameter("max_depth", value=2.0),
        Parameter("output_frame_id", value="other_frame"), Parameter("points_colored", value=True),
    ]))
    stamp2 = (1235, 1)
    mm_msg = h.roundtrip(capture, "rgb8", stamp2)
    assert mm_msg.encoding == "16UC1" and mm_msg.header.frame_id == "other_frame"
    mm = np.frombuffer(bytes(mm_msg.data), "<u2").reshape(H, W)
    limited = np.where(depth <= 2.0, depth, np.nan)  # same input, deterministic solver
    np.testing.assert_array_equal(mm == 0, ~np.isfinite(limited))
    np.testing.assert_allclose(mm[mm > 0], np.round(limited[np.isfinite(limited)] * 1000), atol=1)
    assert mm.max() <= 2000
    cloud2 = h.out.wait_for("points", lambda m: (m.header.stamp.sec, m.header.stamp.nanosec) == stamp2)
    fields2 = {f.name: f.offset for f in cloud2.fields}
    assert cloud2.point_step == 32 and fields2["rgb"] == 16 and cloud2.header.frame_id == "other_frame"
    info2 = h.out.wait_for("depth/camera_info", lambda m: (m.header.stamp.sec, m.header.stamp.nanosec) == stamp2)
    assert info2.header.frame_id == "other_frame"
    # The scan of the 16UC1 message (whole millimetres); scan_time is the measured frame period.
    scan2 = h.out.wait_for("scan", lambda m: (m.header.stamp.sec, m.header.stamp.nanosec) == stamp2)
    period = (1235 + 1e-9) - (1234 + 0.567)
    d2ls.assert_same_scan(scan2, d2ls.convert_msg(mm_msg, info2, scan_time=period, range_min=0.5,
                                                  range_max=far_ray(5.0, info2, W), output_frame_id="test_link"))
    assert scan2.scan_time == pytest.approx(0.433, abs=1e-6)

    # Diagnostics: at least once a second, with rates, latency, counters, device and steps.
    statuses = h.diagnostics(lambda s: any(v.get("frames_processed") == "2" for v in s.values()))
    rec = next(v for k, v in statuses.items() if k.endswith("reconstruction"))
    inp = next(v for k, v in statuses.items() if k.endswith("input"))
    assert rec["_level"] == 0 and rec["state"] == "active" and rec["device"] == "cpu"
    assert rec["method"] == "classical" and rec["steps"] == "0" and rec["last_error"] == ""
    assert 0 < float(rec["latency_mean_ms"]) <= float(rec["latency_max_ms"])  # stamps 1234 s: huge but finite
    assert "output_rate_hz" in rec and "input_rate_hz" in inp and inp["frames_dropped"] == "0"
    assert inp["intrinsics"] == "camera_info"
    count = len(h.out.messages["diagnostics"])
    time.sleep(2.2)
    assert len(h.out.messages["diagnostics"]) - count >= 2


def test_scan_and_cloud_parameters(harness, scene):
    """scan_height 5, custom range limits, a scan frame and a decimated cloud; then a scan_height
    the frame cannot hold: that frame has no scan, says why, and still publishes depth."""
    capture, _ = scene
    h = harness(depth_encoding="16UC1", scan_height=5, scan_range_min=0.8, scan_range_max=3.0,
                scan_frame_id="test_link", points_decimation=2)
    h.start()
    stamp = (5000, 0)
    at = lambda m: (m.header.stamp.sec, m.header.stamp.nanosec) == stamp  # noqa: E731
    depth_msg = h.roundtrip(capture, "rgb8", stamp)
    info, scan = h.out.wait_for("depth/camera_info", at), h.out.wait_for("scan", at)
    assert scan.header.frame_id == "test_link" and depth_msg.header.frame_id == FRAME
    d2ls.assert_same_scan(scan, d2ls.convert_msg(depth_msg, info, scan_time=0.0, range_min=0.8, range_max=3.0,
                                                 scan_height=5, output_frame_id="test_link"))
    ranges = np.asarray(scan.ranges)
    assert np.isfinite(ranges).sum() > W // 4 and np.nanmax(ranges) <= 3.0 and np.nanmin(ranges) >= 0.8

    # Cloud of every 2nd pixel, projected at its full-resolution pixel with depth/camera_info.
    cloud = h.out.wait_for("points", at)
    assert (cloud.height, cloud.width) == (H // 2, W // 2) and cloud.row_step == 16 * (W // 2)
    depth = depth_array(depth_msg)[::2, ::2]
    xyz = cloud_xyz(cloud)
    valid = np.isfinite(depth)
    u, v = np.arange(0, W, 2)[None, :], np.arange(0, H, 2)[:, None]
    np.testing.assert_array_equal(np.isfinite(xyz[:, :, 2]), valid)
    np.testing.assert_allclose(xyz[:, :, 2][valid], depth[valid], atol=6e-4)  # 16UC1 rounds to mm
    np.testing.assert_allclose(xyz[:, :, 0][valid], ((u - CX) * depth / FX)[valid], atol=1e-3)
    np.testing.assert_allclose(xyz[:, :, 1][valid], ((v - CY) * depth / FY)[valid], atol=1e-3)

    # 96 rows around cy = 44 hold at most 88: scan_height 89 is refused for this frame only.
    assert h.node.set_parameters([Parameter("scan_height", value=89)])[0].successful
    stamp = (5001, 0)
    h.roundtrip(capture, "rgb8", stamp)
    statuses = h.diagnostics(lambda s: any("scan not published" in v["_message"] for v in s.values()))
    rec = next(v for k, v in statuses.items() if k.endswith("reconstruction"))
    assert rec["_level"] == 1 and "scan_height (89 pixels) is too large for the image height" in rec["_message"]
    assert h.node._stats.bad == 0 and h.node._stats.failed == 0 and h.state() == "active"
    time.sleep(0.3)
    assert not [m for m in h.out.messages.get("scan", []) if m.header.stamp.sec == 5001]
    # And 88 fits again.
    assert h.node.set_parameters([Parameter("scan_height", value=88)])[0].successful
    h.roundtrip(capture, "rgb8", (5002, 0), topic="scan")


def test_every_encoding_end_to_end(harness, scene):
    """One frame per encoding through one node. The colour channels have distinct levels, so a
    decoder that swaps or drops channels shows up in the all-in-focus colours; failures are
    collected so the report names every encoding that broke."""
    from cadfd_ros.ros.conversions import SUPPORTED_ENCODINGS

    assert set(ENCODINGS) == set(SUPPORTED_ENCODINGS)  # every advertised encoding is exercised
    capture = scene[0] * np.array([1.0, 0.6, 0.3], np.float32)  # R > G > B on average
    h = harness()
    h.start()
    failures, aifs = {}, {}
    for i, encoding in enumerate(ENCODINGS):
        stamp = (2000 + i, 42)
        try:
            depth_msg = h.roundtrip(capture, encoding, stamp)
            depth = depth_array(depth_msg)
            assert (depth_msg.height, depth_msg.width) == (H, W) and depth_msg.header.frame_id == FRAME
            assert np.isfinite(depth).mean() > 0.5, f"valid fraction {np.isfinite(depth).mean():.2f}"
            near, far = np.nanmedian(depth[:, 16 : W // 2 - 16]), np.nanmedian(depth[:, W // 2 + 16 : -16])
            assert near < far, f"near plane at {near:.2f} m, far plane at {far:.2f} m"
            aif = h.out.wait_for("aif/image", lambda m: (m.header.stamp.sec, m.header.stamp.nanosec) == stamp)
            channels = 1 if encoding.startswith("mono") else 3
            assert aif.encoding == ("mono8" if channels == 1 else "rgb8"), aif.encoding
            aifs[encoding] = np.frombuffer(bytes(aif.data), np.uint8).reshape(H, W, channels).astype(float)
        except AssertionError as exc:
            failures[encoding] = str(exc)
    for encoding, aif in aifs.items():
        # Same bit depth only: the solver estimates noise from the capture, and 8-bit
        # quantisation noise alone changes the all-in-focus result.
        ref = aifs.get("rgb16" if encoding.endswith("16") else "rgb8")
        if ref is None or aif.shape != ref.shape:
            continue
        core = (slice(16, -16), slice(16, -16))  # away from the frame border
        diff = np.abs(aif - ref)[core].mean()
        means = aif[core].reshape(-1, 3).mean(axis=0)
        limit = 30.0 if encoding.startswith("bayer") else 0.5  # demosaicing (measured 10-17) vs exact (0)
        if diff > limit or not means[0] > means[1] > means[2]:
            failures[encoding] = f"AIF differs from rgb8's by {diff:.1f} levels; channel means {means.round(1)}"
    assert not failures, failures
    assert h.node._stats.bad == 0


def test_parameter_validation(harness):
    h = harness()
    node = h.node
    rejected = {
        "method": "magic", "device": "tpu", "depth_encoding": "8UC1", "steps": 0, "input_downscale": 9,
        "min_confidence": 1.5, "max_depth": -1.0, "points_decimation": 9, "scan_height": 0, "scan_range_min": -1.0,
    }
    for name, value in rejected.items():
        before = node.get_parameter(name).value
        result = node.set_parameters([Parameter(name, value=value)])[0]
        assert not result.successful, f"{name}={value!r} was accepted"
        assert node.get_parameter(name).value == before
    # Wrong type is refused too.
    assert not node.set_parameters([Parameter("steps", value="ten")])[0].successful
    # min/max depth are checked as a pair, whatever order they arrive in.
    assert node.set_parameters([Parameter("max_depth", value=3.0)])[0].successful
    result = node.set_parameters([Parameter("min_depth", value=4.0)])[0]
    assert not result.successful and "max_depth" in result.reason
    assert node.set_parameters_atomically([Parameter("min_depth", value=4.0), Parameter("max_depth", value=6.0)]).successful
    assert node._settings.min_depth == 4.0 and node._settings.max_depth == 6.0
    # So are the scan's range limits; 0 (the bank's) is always accepted.
    assert node.set_parameters([Parameter("scan_range_max", value=2.0)])[0].successful
    result = node.set_parameters([Parameter("scan_range_min", value=2.5)])[0]
    assert not result.successful and "scan_range_max" in result.reason
    assert node.set_parameters([Parameter("scan_range_max", value=0.0)])[0].successful
    assert node.set_parameters([Parameter("scan_range_min", value=2.5)])[0].successful
    assert node._settings.scan_range_min == 2.5 and node._settings.scan_range_max is None
    # Good values are accepted; the descriptor documents ranges and choices.
    assert node.set_parameters([Parameter("method", value="dps")])[0].successful
    assert node.set_parameters([Parameter("method", value="classical")])[0].successful
    desc = node.describe_parameter("steps")
    assert desc.integer_range[0].from_value == 1 and desc.integer_range[0].to_value == 1000 and desc.description
    assert "classical" in node.describe_parameter("method").additional_constraints
    assert node.describe_parameter("autostart").read_only
    # QoS overrides are declared (read-only) once the publishers exist.
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.get_parameter(f"qos_overrides.{h.ns}/depth/image.publisher.reliability").value == "reliable"
    assert node.get_parameter(f"qos_overrides.{h.ns}/scan.publisher.depth").value == 1


def test_bad_frames_skipped_and_counted(harness, scene):
    capture, _ = scene
    h = harness()
    h.start()
    good = image_msg(capture, "rgb8", (3000, 0), FRAME)

    def variant(**changes):
        msg = image_msg(capture, "rgb8", (3000, 0), FRAME)
        for k, v in changes.items():
            setattr(msg, k, v)
        return msg

    bad_frames = [
        variant(encoding="yuv422_yuy2_weird"),                      # unsupported encoding
        variant(data=bytes(good.data)[: len(good.data) // 2]),      # truncated data
        variant(step=good.step - 3),                                # inconsistent step
    ]
    for i, msg in enumerate(bad_frames):
        msg.header.stamp.sec = 3001 + i
        h.send(None, "", (3001 + i, 0), msg=msg)
        time.sleep(0.4)  # one at a time, so none is dropped as stale
    # Size inconsistent with camera_info: the frame is 96x128 but camera_info says 64x64.
    h.info_pub.publish(camera_info_msg(64, 64, (3010, 0), FRAME))
    time.sleep(0.1)
    h.send(capture, "rgb8", (3010, 0), info=False)
    time.sleep(0.4)

    statuses = h.diagnostics(lambda s: any(v.get("frames_bad") == "4" for v in s.values()), timeout=8.0)
    inp = next(v for k, v in statuses.items() if k.endswith("input"))
    assert inp["_level"] == 1 and "skipped" in inp["_message"]
    assert int(inp["frames_processed"]) == 0
    # Still alive and working: a good frame comes through.
    assert h.state() == "active"
    depth_msg = h.roundtrip(capture, "rgb8", (3020, 0))
    assert depth_msg.width == W
    assert h.node._stats.failed == 0


def test_intrinsics_from_bank_when_no_camera_info(harness, scene, bank_path):
    from cadfd_ros.optics.psf_bank import load_psf_bank

    capture, _ = scene
    h = harness(input_downscale=2)
    h.start()
    stamp = (4000, 0)
    depth_msg = h.roundtrip(capture, "rgb8", stamp, info=False)
    assert (depth_msg.height, depth_msg.width) == (H // 2, W // 2)  # binned 2x2
    info = h.out.wait_for("depth/camera_info", lambda m: (m.header.stamp.sec, m.header.stamp.nanosec) == stamp)
    f = load_psf_bank(bank_path).focal_length_px() / 2  # binning halves the focal length in pixels
    assert (info.width, info.height) == (W // 2, H // 2)
    np.testing.assert_allclose(info.k, [f, 0, (W // 2 - 1) / 2, 0, f, (H // 2 - 1) / 2, 0, 0, 1], rtol=1e-6)
    statuses = h.diagnostics(lambda s: any(v.get("intrinsics") == "psf_bank" for v in s.values()))
    assert statuses


def test_uncalibrated_camera_info_falls_back_to_the_bank(harness, scene, bank_path):
    """A driver without a calibration file publishes fx = K[0] = 0 (here a 0x0 size too): the frame is published
    with the bank's intrinsics and a WARN, not skipped as bad."""
    from cadfd_ros.optics.psf_bank import load_psf_bank

    capture, _ = scene
    h = harness()
    h.start()
    stamp = (4100, 0)
    uncalibrated = camera_info_msg(0, 0, stamp, FRAME, fx=0.0, fy=0.0, cx=0.0, cy=0.0)
    for _ in range(3):  # best effort: resend until the frame's outputs arrive
        h.info_pub.publish(uncalibrated)
        time.sleep(0.05)
        h.send(capture, "rgb8", stamp, info=False)
        try:
            info = h.out.wait_for("depth/camera_info",
                                  lambda m: (m.header.stamp.sec, m.header.stamp.nanosec) == stamp, 8.0)
            break
        except AssertionError:
            continue
    else:
        raise AssertionError("no depth/camera_info for a frame with an uncalibrated camera_info")
    f = load_psf_bank(bank_path).focal_length_px()
    np.testing.assert_allclose(info.k, [f, 0, (W - 1) / 2, 0, f, (H - 1) / 2, 0, 0, 1], rtol=1e-6)
    h.out.wait_for("points", lambda m: (m.header.stamp.sec, m.header.stamp.nanosec) == stamp)
    statuses = h.diagnostics(lambda s: any("camera_info is uncalibrated" in v["_message"] for v in s.values()))
    assert any(v.get("intrinsics") == "psf_bank" for v in statuses.values()), statuses
    assert h.node._stats.snapshot().bad == 0


def test_every_frame_note_reaches_the_log(harness, scene, monkeypatch):
    """Two notes on one frame (an uncalibrated camera_info, repeated every frame, and a scan in the optical frame,
    said once) both reach the log: rclpy throttles by call site, so the node throttles per note text instead."""
    capture, _ = scene
    h = harness(scan_frame_id="")
    noted, log_note = [], h.node._log_note
    monkeypatch.setattr(h.node, "_log_note", lambda note: (noted.append(note), log_note(note)))
    h.start()
    stamp = (4200, 0)
    for _ in range(3):  # best effort: resend until the frame's outputs arrive
        h.info_pub.publish(camera_info_msg(W, H, stamp, FRAME, fx=0.0, fy=0.0, cx=0.0, cy=0.0))
        time.sleep(0.05)
        h.send(capture, "rgb8", stamp, info=False)
        try:
            h.out.wait_for("depth/image", lambda m: (m.header.stamp.sec, m.header.stamp.nanosec) == stamp, 8.0)
            break
        except AssertionError:
            continue
    deadline = time.monotonic() + 5.0  # the notes are logged after the frame's messages go out
    while h.node._stats.snapshot().processed < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert any("camera_info is uncalibrated" in n for n in noted), noted
    assert any("scan is published in the depth's optical frame" in n for n in noted), noted

    warnings = []

    class Recorder:
        def warning(self, message, **kwargs):
            warnings.append(message)

    monkeypatch.setattr(h.node, "get_logger", lambda: Recorder())
    for note in ("repeated", "once", "repeated"):
        log_note(note)
    assert warnings == ["repeated", "once"]  # each text on its own period, the second "repeated" within it


def test_config_yaml_and_docs_match_the_declared_parameters(tmp_path):
    """config/cadfd.yaml loads through --params-file and holds exactly the declared defaults;
    README.md documents every parameter. Keeps code, config and docs from drifting apart."""
    import re
    from pathlib import Path

    import yaml

    from cadfd_ros.node import CadfdNode
    from cadfd_ros.params import PARAMS

    repo = Path(__file__).resolve().parents[1]
    yaml_file = repo / "config" / "cadfd.yaml"
    values = yaml.safe_load(yaml_file.read_text())["/**"]["ros__parameters"]
    declared = {p.name: p.default for p in PARAMS if p.name != "autostart"}
    assert values == declared

    ctx = rclpy.context.Context()
    rclpy.init(args=["--ros-args", "--params-file", str(yaml_file), "-p", "steps:=7"], context=ctx,
               domain_id=unique_domain_id())
    try:
        node = CadfdNode(namespace="/yaml_check", context=ctx)
        assert node.get_parameter("steps").value == 7  # command line over file
        assert node.get_parameter("depth_encoding").value == "32FC1"
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)

    documented = set(re.findall(r"^\| `([a-z_]+)` \|", (repo / "README.md").read_text(), re.M))
    assert {p.name for p in PARAMS} <= documented


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="thread priorities need os.setpriority (Linux)")
def test_solver_thread_runs_at_lower_priority(harness, scene):
    # The worker lowers its own priority before its first solve; torch's CPU threads inherit it.
    def niceness(thread_id: int) -> int:
        return int(Path(f"/proc/self/task/{thread_id}/stat").read_text().rsplit(")", 1)[1].split()[16])

    h = harness(worker_niceness=7)
    h.start()
    h.roundtrip(scene[0], "rgb8", (8000, 0))
    worker = next(t for t in threading.enumerate() if t.name == "cadfd_worker")
    assert niceness(worker.native_id) == niceness(threading.get_native_id()) + 7
    assert sys.getswitchinterval() <= 0.001  # executor threads get the GIL back within 1 ms


def test_classical_configure_warns_of_dps_parameters(harness, tmp_path, monkeypatch):
    # method classical never loads the prior: a bad prior path configures, and the log says it is unused
    h = harness(prior=str(tmp_path / "no_prior"), steps=8)
    logger, warnings = h.node.get_logger(), []

    class Recorder:
        def __getattr__(self, name):
            return getattr(logger, name)

        def warning(self, message, **kwargs):
            warnings.append(message)
            return logger.warning(message, **kwargs)

    monkeypatch.setattr(h.node, "get_logger", lambda: Recorder())
    assert h.node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert "prior, steps apply to method dps only; ignored with method classical" in warnings


def test_deactivate_lets_a_frame_in_publication_go_out_whole(harness, scene):
    """Exact-time synchronisers need every output of a frame: a deactivate that arrives while a frame is being
    published waits for the rest of it (milliseconds), and nothing of a later frame goes out."""
    capture, _ = scene
    h = harness()
    h.start()
    entered, release = threading.Event(), threading.Event()
    points = h.node._pubs["points"]  # published third of seven
    original = points.publish

    def held_publish(msg):
        entered.set()
        assert release.wait(10.0)
        original(msg)

    points.publish = held_publish
    old_session = h.node._worker._publish.keywords["session"]  # what this activation's worker publishes under
    stamp = (5000, 0)
    h.send(capture, "rgb8", stamp)
    assert entered.wait(30.0), "the frame never reached its publication"
    deactivated = threading.Event()
    thread = threading.Thread(target=lambda: (h.node.trigger_deactivate(), deactivated.set()))
    thread.start()
    time.sleep(0.3)
    assert not deactivated.is_set()  # waits for the frame in publication
    release.set()
    thread.join(10.0)
    assert deactivated.is_set() and h.state() == "inactive"
    for topic in ("depth/image", "points", "aif/image", "confidence/image", "scan"):  # before and after points
        h.out.wait_for(topic, lambda m: (m.header.stamp.sec, m.header.stamp.nanosec) == stamp)
    # After re-activation, a late frame of the old worker publishes nothing: its session is refused before the
    # outputs are read (None here would raise if they were).
    assert h.node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    assert h.node._worker._publish.keywords["session"] != old_session
    assert h.node._publish(None, 0.0, session=old_session) is None


def test_exception_in_a_transition_is_logged_and_recovered(harness):
    # rclpy turns an exception in a transition callback into a silent ERROR; the node must log
    # it, release everything in on_error and end up unconfigured, ready to configure again.
    h = harness()
    assert h.node.trigger_configure() == TransitionCallbackReturn.SUCCESS

    def boom() -> None:
        raise RuntimeError("boom")

    h.node._slot.open = boom
    assert h.node.trigger_activate() == TransitionCallbackReturn.ERROR
    assert h.state() == "unconfigured"
    assert "activate failed: RuntimeError: boom" in h.node._stats.last_error
    assert h.node._processor is None and h.node._pubs == {} and h.node._subs == []
    del h.node._slot.open  # back to the class method
    assert h.node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert h.node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    assert h.state() == "active"


def test_out_of_memory_falls_back_to_tiles_or_reports(harness, scene):
    capture, _ = scene
    h = harness()
    h.start()
    recon = h.node._processor.reconstructor
    original = recon.reconstruct

    def oom(_capture, **_options):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    # Tiles run out of memory too: the frame fails, is counted and reported, and the node goes on.
    recon.reconstruct = oom
    recon.reconstruct_tiled = oom
    h.send(capture, "rgb8", (5000, 0))
    statuses = h.diagnostics(lambda s: any(v.get("frames_failed") == "1" for v in s.values()), timeout=8.0)
    rec = next(v for k, v in statuses.items() if k.endswith("reconstruction"))
    assert rec["_level"] == 2 and "out of memory" in rec["_message"] and "input_downscale" in rec["_message"]
    # Tiles fit: the frame is retried with Reconstructor.reconstruct_tiled and published.
    tiled_calls = []
    recon.reconstruct_tiled = lambda c, **options: tiled_calls.append(c.shape) or original(c, **options)
    depth_msg = h.roundtrip(capture, "rgb8", (5001, 0))
    assert depth_msg.width == W and tiled_calls and h.node._stats.failed == 1


def test_dps_end_to_end_reports_its_steps(harness, scene):
    # method dps with the bundled prior and 2 network evaluations: depth comes out, and ~/info
    # and /diagnostics report the sampler and the exact step count.
    pytest.importorskip("cadfd_ros.solvers.dps", reason="the diffusion sampler is not in this build")
    capture, _ = scene
    h = harness(method="dps", steps=2, seed=3)
    h.start()
    stamp = (6000, 0)
    depth = depth_array(h.roundtrip(capture, "rgb8", stamp))
    assert np.isfinite(depth).mean() > 0.5
    if h.node._processor.info_type is not None:
        info = h.out.wait_for("info", lambda m: (m.header.stamp.sec, m.header.stamp.nanosec) == stamp)
        assert info.method == "dps" and info.steps == 2 and info.sampler
        assert "dps" in info.stage_names and info.total_seconds > 0
    statuses = h.diagnostics(lambda s: any(v.get("frames_processed") == "1" for v in s.values()))
    rec = next(v for k, v in statuses.items() if k.endswith("reconstruction"))
    assert rec["method"] == "dps" and rec["steps"] == "2"


def test_info_reports_the_warm_start(harness, scene):
    # temporal_warm_start: the first frame after activation starts from the classical estimate, the next
    # one (the same scene) from the previous frame's, in the warm step count; ~/info says which
    pytest.importorskip("cadfd_ros.solvers.dps", reason="the diffusion sampler is not in this build")
    capture, _ = scene
    h = harness(method="dps", steps=2, temporal_warm_start=True, worker_niceness=0)
    h.start()
    if h.node._processor.info_type is None:
        pytest.skip("cadfd_ros_interfaces not built: no ~/info")
    infos = []
    for stamp in ((6100, 0), (6101, 0)):
        for attempt in range(3):  # best effort may lose a frame; a loaded CPU may take long over one
            h.send(capture, "rgb8", stamp)
            try:
                infos.append(h.out.wait_for("info", lambda m, s=stamp: (m.header.stamp.sec, m.header.stamp.nanosec) == s,
                                            30.0))
                break
            except AssertionError:
                assert attempt < 2, f"no ~/info for the frame at {stamp}"
    assert infos[0].start == "classical" and infos[0].steps == 2 and math.isnan(infos[0].warm_data_term)
    params = h.node._processor.reconstructor.sampler.params
    assert infos[1].start == "warm" and infos[1].steps == params.warm_steps
    assert 0 < infos[1].warm_data_term <= params.warm_cut_data_term
    assert "evidence" in infos[0].stage_names  # the classical start's stages, skipped on the warm frame
    assert "evidence" not in infos[1].stage_names and "warm_check" in infos[1].stage_names


def test_unmet_time_budget_warns_in_diagnostics(harness, scene):
    # A budget no step fits: the frame still comes out (one step), and /diagnostics says why it is late.
    pytest.importorskip("cadfd_ros.solvers.dps", reason="the diffusion sampler is not in this build")
    capture, _ = scene
    h = harness(method="dps", time_budget_ms=1.0)
    h.start()
    depth = depth_array(h.roundtrip(capture, "rgb8", (7000, 0)))
    assert np.isfinite(depth).mean() > 0.5
    statuses = h.diagnostics(lambda s: any(v.get("frames_processed") == "1" for v in s.values()))
    rec = next(v for k, v in statuses.items() if k.endswith("reconstruction"))
    assert rec["_level"] == 1 and "time budget 1 ms" in rec["_message"] and rec["steps"] == "1"
