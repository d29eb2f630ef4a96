"""The example stack configs in config/ (Nav2, slam_toolbox, RTAB-Map): they parse (with rcl's own
YAML parser too), use only parameter names those stacks read, state the version they were
written for, and agree with the bundled bank's scan range."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config"

# Names each stack reads, copied from its source (see the header of each config file). A
# misspelt name is silently ignored by all three, so the configs may use these only.
NAV2_SOURCE_KEYS = {  # nav2_costmap_2d ObstacleLayer::onInitialize, kilted branch
    "topic", "sensor_frame", "observation_persistence", "expected_update_rate", "data_type",
    "min_obstacle_height", "max_obstacle_height", "inf_is_valid", "marking", "clearing",
    "obstacle_max_range", "obstacle_min_range", "raytrace_max_range", "raytrace_min_range",
}
NAV2_LAYER_KEYS = {"plugin", "enabled", "footprint_clearing_enabled", "min_obstacle_height", "max_obstacle_height",
                   "combination_method", "observation_sources", "tf_filter_tolerance"}
SLAM_TOOLBOX_KEYS = {  # slam_toolbox_common.cpp, laser_utils.cpp, ceres_solver.cpp (mode), PR #714
    "scan_topic", "odom_frame", "map_frame", "base_frame", "mode", "scan_queue_size", "min_laser_range",
    "max_laser_range", "resolution", "minimum_time_interval", "transform_timeout", "tf_buffer_duration",
    "minimum_travel_distance", "minimum_travel_heading", "map_update_interval", "use_scan_matching",
    "use_scan_barycenter", "do_loop_closing", "loop_search_maximum_distance", "link_scan_maximum_distance",
    "scan_buffer_maximum_scan_distance",
}
RTABMAP_ROS_KEYS = {  # CommonDataSubscriber.cpp, OdometryROS.cpp, rgbd_odometry.cpp, CoreWrapper.cpp
    "frame_id", "odom_frame_id", "map_frame_id", "publish_tf", "subscribe_depth", "subscribe_rgb", "subscribe_scan",
    "approx_sync", "topic_queue_size", "sync_queue_size", "wait_for_transform",
}


def load(name: str) -> dict:
    return yaml.safe_load((CONFIG / name).read_text())


@pytest.fixture(scope="module")
def scan_limits() -> tuple[float, float]:
    """range_min/range_max of the node's scan with the default parameters (the bundled bank), as
    the float32 LaserScan fields, promoted to double the way the consumers compare them."""
    from cadfd_ros.params import PARAMS
    from cadfd_ros.ros.parameters import build_processor, output_settings

    values = {p.name: p.default for p in PARAMS}
    values["device"] = "cpu"
    lo, hi = build_processor(values).scan_range(output_settings(values))
    return float(np.float32(lo)), float(np.float32(hi))


def test_default_bank_scan_range(scan_limits):
    assert scan_limits == (0.5, 5.0)  # the numbers the config files are written for


@pytest.mark.parametrize("name", ["nav2_costmap.yaml", "slam_toolbox.yaml", "rtabmap.yaml"])
def test_each_config_states_the_stack_version_it_was_written_for(name):
    header = (CONFIG / name).read_text().split("\n", 3)[:3]
    assert any(re.search(r"Written for \S.*\d+\.\d+", line) for line in header), header


def test_nav2_costmap_sources(scan_limits):
    range_min, range_max = scan_limits
    layer = load("nav2_costmap.yaml")["local_costmap"]["local_costmap"]["ros__parameters"]["obstacle_layer"]
    assert layer["plugin"] == "nav2_costmap_2d::ObstacleLayer"
    names = layer["observation_sources"].split()
    assert set(layer) - set(names) <= NAV2_LAYER_KEYS
    sources = {layer[n]["data_type"]: layer[n] for n in names}
    assert set(sources) == {"LaserScan", "PointCloud2"}
    assert sources["LaserScan"]["topic"].endswith("/scan") and sources["PointCloud2"]["topic"].endswith("/points")
    for data_type, source in sources.items():
        assert set(source) <= NAV2_SOURCE_KEYS, set(source) - NAV2_SOURCE_KEYS
        assert source["expected_update_rate"] > 0 and source["marking"] is True
        assert source["min_obstacle_height"] < source["max_obstacle_height"]
        assert 0 <= source["obstacle_min_range"] < source["obstacle_max_range"] <= range_max, data_type
        assert 0 <= source["raytrace_min_range"] < source["raytrace_max_range"] <= range_max, data_type
    scan = sources["LaserScan"]
    # Only a LaserScan with inf_is_valid clears where depth says "beyond range" (+Inf); Nav2 puts
    # those at range_max - 1e-4, so marking must stop short of range_max or they become obstacles.
    assert scan["inf_is_valid"] is True and scan["clearing"] is True
    assert scan["obstacle_max_range"] < range_max - 1e-4
    assert "inf_is_valid" not in sources["PointCloud2"]  # Nav2 warns: not applicable to clouds


def test_slam_toolbox_uses_the_scan_range(scan_limits):
    range_min, range_max = scan_limits
    params = load("slam_toolbox.yaml")["slam_toolbox"]["ros__parameters"]
    assert set(params) <= SLAM_TOOLBOX_KEYS, set(params) - SLAM_TOOLBOX_KEYS
    assert params["scan_topic"].startswith("/") and params["scan_topic"].endswith("/scan")
    # slam_toolbox clamps max_laser_range to range_max and min_laser_range up to range_min (each
    # with a warning), comparing its double against the float32 field: stay inside, as doubles.
    assert range_min <= params["min_laser_range"] < params["max_laser_range"] <= range_max
    assert params["scan_queue_size"] == 1


def test_rtabmap_exact_sync_on_aif_and_depth(scan_limits):
    config = load("rtabmap.yaml")
    for node in ("rtabmap", "rgbd_odometry"):
        params = config[node]["ros__parameters"]
        ros_keys = {k for k in params if "/" not in k}  # RTAB-Map's own parameters are "Group/Name"
        assert ros_keys <= RTABMAP_ROS_KEYS, ros_keys - RTABMAP_ROS_KEYS
        assert params["approx_sync"] is False  # identical stamps on aif, depth and camera_info
        assert all(isinstance(v, str) for k, v in params.items() if "/" in k)  # RTAB-Map wants strings
    rtabmap = config["rtabmap"]["ros__parameters"]
    assert rtabmap["subscribe_depth"] is True and rtabmap["subscribe_rgb"] is True
    assert float(rtabmap["Grid/RangeMax"]) <= scan_limits[1]
    # The remaps in the header's command lines: rgb/image <- aif/image, depth/image, rgb/camera_info
    # <- aif/camera_info, for both nodes.
    commands = re.findall(r"ros2 run (\S+ \S+) --ros-args[^\n]*\n#([^\n]*)", (CONFIG / "rtabmap.yaml").read_text())
    assert {c for c, _ in commands} == {"rtabmap_odom rgbd_odometry", "rtabmap_slam rtabmap"}
    for _, line in commands:
        remaps = dict(re.findall(r"-r (\S+):=(\S+)", line))
        assert remaps == {"rgb/image": "/aif/image", "depth/image": "/depth/image",
                          "rgb/camera_info": "/aif/camera_info"}


@pytest.mark.parametrize("name, node, namespace, checks", [
    ("nav2_costmap.yaml", "local_costmap", "/local_costmap",
     {"obstacle_layer.cadfd_scan.inf_is_valid": True, "obstacle_layer.cadfd_points.data_type": "PointCloud2"}),
    ("slam_toolbox.yaml", "slam_toolbox", "/", {"max_laser_range": 4.5, "scan_topic": "/scan"}),
    ("rtabmap.yaml", "rtabmap", "/", {"approx_sync": False, "Grid/RangeMax": "5.0"}),
    ("cadfd.yaml", "cadfd_node", "/any_ns", {"publish_scan": True, "scan_height": 1}),
])
def test_configs_load_as_ros_parameter_files(name, node, namespace, checks):
    """rcl's own YAML parser takes each file, and the node it names sees the values."""
    rclpy = pytest.importorskip("rclpy")
    from rclpy.node import Node

    from ros_test_util import unique_domain_id

    ctx = rclpy.context.Context()
    rclpy.init(args=["--ros-args", "--params-file", str(CONFIG / name)], context=ctx, domain_id=unique_domain_id())
    try:
        n = Node(node, namespace=namespace, context=ctx, automatically_declare_parameters_from_overrides=True)
        for key, value in checks.items():
            assert n.get_parameter(key).value == value, key
        n.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)


def test_rviz_config_shows_cloud_scan_depth_and_aif_reliably():
    """RViz subscribes Reliable (its default, which the node's REP 2003 publishers serve)."""
    rviz = load("cadfd.rviz")["Visualization Manager"]
    displays = {d["Topic"]["Value"]: d for d in rviz["Displays"] if "Topic" in d}
    assert {t: d["Class"] for t, d in displays.items()} == {
        "/points": "rviz_default_plugins/PointCloud2", "/scan": "rviz_default_plugins/LaserScan",
        "/depth/image": "rviz_default_plugins/Image", "/aif/image": "rviz_default_plugins/Image"}
    assert all(d["Topic"]["Reliability Policy"] == "Reliable" and d["Topic"]["Durability Policy"] == "Volatile"
               for d in displays.values())
    assert rviz["Global Options"]["Fixed Frame"] == "camera_link"  # the x-forward frame the scan lies flat in
