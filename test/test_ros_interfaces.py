"""cadfd_ros_interfaces/ReconstructionInfo: generated from msg/, importable, and publishable."""
from __future__ import annotations

import math
import os
import sys
import time
import uuid
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not importable (ROS 2 wheels missing: run make venv)")
pytest.importorskip("std_msgs.msg", reason="std_msgs not importable (run make venv)")
interfaces = pytest.importorskip(
    "cadfd_ros_interfaces.msg",
    reason="cadfd_ros_interfaces not built: run `make msgs` (or colcon build the interfaces package)",
)
ReconstructionInfo = interfaces.ReconstructionInfo

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CANONICAL = REPO / "msg" / "ReconstructionInfo.msg"


def sample() -> object:
    msg = ReconstructionInfo()
    msg.header.stamp.sec = 1_700_000_000
    msg.header.stamp.nanosec = 123_456_789
    msg.header.frame_id = "coded_camera_optical"
    msg.method = "dps"
    msg.sampler = "dps-ddim"
    msg.steps = 50
    msg.network_seconds = 3.1
    msg.stage_names = ["convert", "classical", "dps", "publish"]
    msg.stage_seconds = [0.001, 0.25, 3.5, 0.002]
    msg.total_seconds = 3.753
    msg.final_residual = 0.0125
    msg.min_depth = float("nan")  # no valid pixel: NaN must survive the wire
    msg.max_depth = 4.5
    msg.valid_fraction = 0.0
    return msg


def assert_same(got: object, want: object) -> None:
    assert got.header.stamp.sec == want.header.stamp.sec
    assert got.header.stamp.nanosec == want.header.stamp.nanosec
    assert got.header.frame_id == want.header.frame_id
    assert (got.method, got.sampler, got.steps) == (want.method, want.sampler, want.steps)
    assert list(got.stage_names) == list(want.stage_names)
    assert list(got.stage_seconds) == pytest.approx(list(want.stage_seconds), rel=1e-6)
    for name in ("network_seconds", "total_seconds", "final_residual", "max_depth", "valid_fraction"):
        assert getattr(got, name) == pytest.approx(getattr(want, name), rel=1e-6), name
    assert math.isnan(got.min_depth)


def test_fields_match_the_specification() -> None:
    assert ReconstructionInfo.get_fields_and_field_types() == {
        "header": "std_msgs/Header",
        "method": "string",
        "sampler": "string",
        "steps": "uint32",
        "network_seconds": "float",
        "stage_names": "sequence<string>",
        "stage_seconds": "sequence<float>",
        "tiles": "uint32",
        "total_seconds": "float",
        "final_residual": "float",
        "min_depth": "float",
        "max_depth": "float",
        "valid_fraction": "float",
        "start": "string",
        "warm_data_term": "float",
    }


def test_installed_definition_is_the_canonical_file() -> None:
    """The built package must come from msg/ at the repo root; a stale build means run make msgs."""
    prefixes = [sys.prefix] + [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    installed = [Path(p) / "share" / "cadfd_ros_interfaces" / "msg" / "ReconstructionInfo.msg" for p in prefixes]
    installed = [p for p in installed if p.is_file()]
    if not installed:
        pytest.skip("installed ReconstructionInfo.msg not found under sys.prefix or AMENT_PREFIX_PATH")
    assert installed[0].read_text() == CANONICAL.read_text(), (
        f"{installed[0]} differs from {CANONICAL}: rebuild with `make msgs`"
    )


def test_serialization_roundtrip() -> None:
    want = sample()
    got = deserialize_message(serialize_message(want), ReconstructionInfo)
    assert_same(got, want)


@pytest.fixture
def ros_context():
    """A private rclpy context, so this test neither needs nor disturbs the global one."""
    context = rclpy.context.Context()
    rclpy.init(context=context)
    try:
        yield context
    finally:
        rclpy.shutdown(context=context)


def test_publish_and_receive_over_dds(ros_context) -> None:
    topic = f"/cadfd_test_info_{uuid.uuid4().hex[:12]}"  # unique: parallel runs must not cross-talk
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    pub_node = rclpy.create_node(f"cadfd_info_pub_{uuid.uuid4().hex[:8]}", context=ros_context)
    sub_node = rclpy.create_node(f"cadfd_info_sub_{uuid.uuid4().hex[:8]}", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    received: list[object] = []
    try:
        publisher = pub_node.create_publisher(ReconstructionInfo, topic, qos)
        sub_node.create_subscription(ReconstructionInfo, topic, received.append, qos)
        executor.add_node(pub_node)
        executor.add_node(sub_node)
        want = sample()
        deadline = time.monotonic() + 15.0
        while not received and time.monotonic() < deadline:
            # Publish until discovery has matched the two endpoints, then the first message lands.
            if publisher.get_subscription_count() > 0:
                publisher.publish(want)
            executor.spin_once(timeout_sec=0.05)
        assert received, f"no ReconstructionInfo received on {topic} within 15 s"
        assert_same(received[0], want)
    finally:
        executor.shutdown()
        pub_node.destroy_node()
        sub_node.destroy_node()
