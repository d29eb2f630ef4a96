"""launch/cadfd.launch.py under launch_testing: the node configures and activates itself, and a
published coded capture comes back as depth and as a scan (in the launch argument's frame) with
the same stamp, received by reliable subscribers.

Needs launch, launch_ros and launch_testing (a ROS 2 install or colcon workspace); they are not
on PyPI, so this module is skipped in the pip-only venv. Run it with
``colcon test --packages-select cadfd_ros`` or ``launch_test test/test_launch.py``.
"""
from __future__ import annotations

import os
import time
import unittest
import uuid
from pathlib import Path

import pytest

pytest.importorskip("launch_testing", reason="launch_testing is not installed (ROS 2 install only, not on PyPI)")
pytest.importorskip("launch_ros", reason="launch_ros is not installed (ROS 2 install only, not on PyPI)")

import launch  # noqa: E402
import launch_testing.actions  # noqa: E402
import launch_testing.asserts  # noqa: E402
import rclpy  # noqa: E402
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
from lifecycle_msgs.srv import GetState  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

import sys  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `launch_test FILE` does not add it
from ros_test_util import camera_info_msg, image_msg, simulated_capture  # noqa: E402

NAMESPACE = f"launch_test_{uuid.uuid4().hex[:6]}"
LAUNCH_FILE = Path(__file__).resolve().parents[1] / "launch" / "cadfd.launch.py"


@pytest.mark.launch_test
def generate_test_description():
    include = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(LAUNCH_FILE)),
        launch_arguments={"namespace": NAMESPACE, "device": "cpu", "image": "camera/image_raw",
                          "camera_info": "camera/camera_info", "scan_height": "3",
                          "scan_frame_id": "cam_link"}.items(),
    )
    # ReadyToTest right away; the tests themselves wait for the 'active' state, which the launch
    # file reaches through its ChangeState events.
    return launch.LaunchDescription([include, launch_testing.actions.ReadyToTest()])


class TestCadfdLaunch(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        rclpy.init()
        cls.node = rclpy.create_node(f"launch_test_client_{os.getpid()}")

    @classmethod
    def tearDownClass(cls) -> None:
        cls.node.destroy_node()
        rclpy.shutdown()

    def _wait_active(self, timeout: float = 60.0) -> None:
        client = self.node.create_client(GetState, f"/{NAMESPACE}/cadfd_node/get_state")
        self.assertTrue(client.wait_for_service(timeout_sec=timeout), "lifecycle services never appeared")
        deadline = time.monotonic() + timeout
        label = ""
        while time.monotonic() < deadline:
            future = client.call_async(GetState.Request())
            rclpy.spin_until_future_complete(self.node, future, timeout_sec=5.0)
            label = future.result().current_state.label if future.result() else ""
            if label == "active":
                return
            time.sleep(0.2)
        self.fail(f"cadfd_node did not become active (state {label!r})")

    def test_self_activates_and_publishes_depth_and_scan(self) -> None:
        self._wait_active()
        from rclpy.qos import QoSProfile
        from sensor_msgs.msg import CameraInfo, LaserScan

        received, scans = [], []
        # Reliable, as RViz subscribes: the node publishes reliably (REP 2003).
        self.node.create_subscription(Image, f"/{NAMESPACE}/depth/image", received.append, QoSProfile(depth=5))
        self.node.create_subscription(LaserScan, f"/{NAMESPACE}/scan", scans.append, QoSProfile(depth=5))
        image_pub = self.node.create_publisher(Image, f"/{NAMESPACE}/camera/image_raw", 5)
        info_pub = self.node.create_publisher(CameraInfo, f"/{NAMESPACE}/camera/camera_info", 5)
        capture, _ = simulated_capture(None, 96, 128)
        stamp = (321, 654)
        deadline = time.monotonic() + 60.0
        while not (received and scans) and time.monotonic() < deadline:
            info_pub.publish(camera_info_msg(128, 96, stamp, "cam"))
            image_pub.publish(image_msg(capture, "mono8", stamp, "cam"))
            end = time.monotonic() + 5.0
            while not (received and scans) and time.monotonic() < end:
                rclpy.spin_once(self.node, timeout_sec=0.1)
        self.assertTrue(received, "no depth/image from the launched node")
        depth = received[0]
        self.assertEqual((depth.header.stamp.sec, depth.header.stamp.nanosec), stamp)
        self.assertEqual(depth.encoding, "32FC1")
        self.assertEqual((depth.height, depth.width), (96, 128))
        self.assertTrue(scans, "no scan from the launched node")
        scan = scans[0]
        self.assertEqual((scan.header.stamp.sec, scan.header.stamp.nanosec), stamp)
        self.assertEqual(scan.header.frame_id, "cam_link")  # the scan_frame_id launch argument
        self.assertEqual(len(scan.ranges), 128)
        self.assertLess(scan.angle_min, 0.0)
        self.assertGreater(scan.angle_max, 0.0)


@launch_testing.post_shutdown_test()
class TestCadfdShutdown(unittest.TestCase):
    def test_exit_code(self, proc_info) -> None:
        # SIGINT at the end of the test must give a clean exit.
        launch_testing.asserts.assertExitCodes(proc_info, allowable_exit_codes=[0, -2, 130])
