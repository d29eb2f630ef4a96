"""The TF a robot needs (cadfd_node publishes none, as depth_image_proc does not): the URDF macro
gives base_link -> camera_link -> camera_optical_frame with the REP 103 optical rotation, and the
launch file's publish_tf static transforms and scan arguments match it. launch and launch_ros are
not installable here, so the launch file runs against recording stand-ins."""
from __future__ import annotations

import importlib.util
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------- URDF
def rpy_matrix(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """URDF's fixed-axis rpy: R = Rz(yaw) Ry(pitch) Rx(roll)."""
    cr, sr, cp, sp, cy, sy = math.cos(roll), math.sin(roll), math.cos(pitch), math.sin(pitch), math.cos(yaw), math.sin(yaw)
    rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    return rz @ ry @ rx


def assert_rep103_optical(rotation: np.ndarray) -> None:
    """Optical axes in the body frame: z (forward) = x, x (right) = -y, y (down) = -z."""
    np.testing.assert_allclose(rotation @ [0, 0, 1], [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(rotation @ [1, 0, 0], [0, -1, 0], atol=1e-12)
    np.testing.assert_allclose(rotation @ [0, 1, 0], [0, 0, -1], atol=1e-12)


@pytest.fixture
def expanded_example(tmp_path, monkeypatch):
    """urdf/cadfd_camera_example.urdf.xacro expanded by xacro, with $(find cadfd_ros) resolved
    through an ament index laid out as an install would (share/cadfd_ros/urdf)."""
    xacro = pytest.importorskip("xacro", reason="xacro is not installed (pip install xacro)")
    import xml.etree.ElementTree as ET

    index = tmp_path / "share" / "ament_index" / "resource_index" / "packages"
    index.mkdir(parents=True)
    (index / "cadfd_ros").write_text("")
    (tmp_path / "share" / "cadfd_ros").mkdir()
    (tmp_path / "share" / "cadfd_ros" / "urdf").symlink_to(REPO / "urdf")
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path))
    doc = xacro.process_file(str(REPO / "urdf" / "cadfd_camera_example.urdf.xacro"))
    return ET.fromstring(doc.toxml())


def joint(robot, name: str) -> dict:
    (j,) = [j for j in robot.findall("joint") if j.get("name") == name]
    origin = j.find("origin")
    return {"parent": j.find("parent").get("link"), "child": j.find("child").get("link"), "type": j.get("type"),
            "xyz": [float(v) for v in origin.get("xyz").split()], "rpy": [float(v) for v in origin.get("rpy").split()]}


def test_urdf_macro_gives_body_and_rep103_optical_frames(expanded_example):
    robot = expanded_example
    assert {link.get("name") for link in robot.findall("link")} == {"base_link", "camera_link",
                                                                     "camera_optical_frame"}
    mount = joint(robot, "camera_joint")
    assert (mount["parent"], mount["child"], mount["type"]) == ("base_link", "camera_link", "fixed")
    assert mount["xyz"] == [0.10, 0.0, 0.25] and mount["rpy"] == [0.0, 0.0, 0.0]
    optical = joint(robot, "camera_optical_joint")
    assert (optical["parent"], optical["child"], optical["type"]) == ("camera_link", "camera_optical_frame", "fixed")
    assert optical["xyz"] == [0.0, 0.0, 0.0]  # same origin: the scan in camera_link is the depth's
    np.testing.assert_allclose(optical["rpy"], [-math.pi / 2, 0.0, -math.pi / 2], atol=1e-12)
    assert_rep103_optical(rpy_matrix(*optical["rpy"]))


def test_urdf_is_installed():
    setup = (REPO / "setup.py").read_text()
    assert '("share/" + package_name + "/urdf", glob("urdf/*.xacro"))' in setup
    package = (REPO / "package.xml").read_text()
    assert "<exec_depend>xacro</exec_depend>" in package and "<exec_depend>tf2_ros</exec_depend>" in package


# ---------------------------------------------------------------------- launch file
class Recorded:
    """Stand-in for a launch class: keeps its arguments."""

    def __init__(self, *args, **kwargs) -> None:
        self.args, self.kwargs = args, kwargs


@pytest.fixture
def launch_description(monkeypatch):
    """generate_launch_description() of launch/cadfd.launch.py with launch and launch_ros
    replaced by recording stand-ins (neither is installable from PyPI)."""
    def module(name: str, **classes) -> None:
        mod = types.ModuleType(name)
        mod.__dict__.update(classes)
        monkeypatch.setitem(sys.modules, name, mod)

    stand_in = {n: type(n, (Recorded,), {}) for n in (
        "LaunchDescription", "DeclareLaunchArgument", "EmitEvent", "RegisterEventHandler", "SetEnvironmentVariable",
        "IfCondition", "EnvironmentVariable", "NotEqualsSubstitution", "LifecycleNode", "Node",
        "OnStateTransition", "ChangeState", "OpaqueFunction")}
    # perform(context): the argument's value, the context being a dict of launch argument values
    stand_in["LaunchConfiguration"] = type("LaunchConfiguration", (Recorded,),
                                           {"perform": lambda self, context: context[self.args[0]]})
    module("launch", LaunchDescription=stand_in["LaunchDescription"])
    module("launch.actions", **{k: stand_in[k] for k in ("DeclareLaunchArgument", "EmitEvent", "RegisterEventHandler",
                                                         "SetEnvironmentVariable", "OpaqueFunction")})
    module("launch.conditions", IfCondition=stand_in["IfCondition"])
    module("launch.events", matches_action=lambda action: ("matches", action))
    module("launch.substitutions", **{k: stand_in[k] for k in ("LaunchConfiguration", "EnvironmentVariable",
                                                               "NotEqualsSubstitution")})
    module("launch_ros")
    module("launch_ros.actions", LifecycleNode=stand_in["LifecycleNode"], Node=stand_in["Node"])
    module("launch_ros.event_handlers", OnStateTransition=stand_in["OnStateTransition"])
    module("launch_ros.events")
    module("launch_ros.events.lifecycle", ChangeState=stand_in["ChangeState"])
    module("ament_index_python.packages", get_package_share_directory=lambda package: f"/opt/share/{package}")
    spec = importlib.util.spec_from_file_location("cadfd_launch_under_test", REPO / "launch" / "cadfd.launch.py")
    launch_file = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch_file)
    return launch_file.generate_launch_description()


def launched(launch_description, **given: str) -> list:
    """The launch description's entities with its OpaqueFunction run: the declared defaults, ``given`` on top."""
    (entities,) = launch_description.args
    context = {e.args[0]: e.kwargs["default_value"] for e in entities if type(e).__name__ == "DeclareLaunchArgument"}
    context.update(given)
    (opaque,) = [e for e in entities if type(e).__name__ == "OpaqueFunction"]
    index = entities.index(opaque)
    return [*entities[:index], *opaque.kwargs["function"](context), *entities[index + 1:]]


def text(value) -> str:
    """A launch argument value (a string, a LaunchConfiguration or a list of them) as text."""
    if isinstance(value, list):
        return "".join(text(v) for v in value)
    if type(value).__name__ == "LaunchConfiguration":
        return "$(" + value.args[0] + ")"
    return str(value)


def test_launch_declares_scan_and_tf_arguments(launch_description, tmp_path):
    (entities,) = launch_description.args
    declared = {e.args[0]: e.kwargs["default_value"] for e in entities if type(e).__name__ == "DeclareLaunchArgument"}
    # empty: the params file's value stands (a launch default would overwrite it)
    assert all(declared[a] == "" for a in ("device", "publish_scan", "scan_height", "scan_frame_id"))
    assert declared["publish_tf"] == "false"  # a robot description usually provides the TF
    assert declared["camera_name"] == "camera" and declared["parent_frame"] == "base_link"
    assert all(declared[a] == "0.0" for a in ("x", "y", "z", "roll", "pitch", "yaw"))

    def parameters(**given: str) -> list:
        (node,) = [e for e in launched(launch_description, **given) if type(e).__name__ == "LifecycleNode"]
        return node.kwargs["parameters"]

    params_file = declared["params_file"]
    assert parameters() == [params_file]  # nothing given: the file alone decides
    assert parameters(params_file="/mine.yaml") == ["/mine.yaml"]
    assert parameters(publish_scan="false", scan_height="5", scan_frame_id="base_scan", device="cuda") == [
        params_file, {"publish_scan": False, "scan_height": 5, "scan_frame_id": "base_scan", "device": "cuda"}]
    # the static transforms create <camera_name>_link: the scan goes there unless another frame is given
    assert parameters(publish_tf="true", camera_name="front") == [params_file, {"scan_frame_id": "front_link"}]
    assert parameters(publish_tf="true", scan_frame_id="base_scan") == [params_file, {"scan_frame_id": "base_scan"}]
    own = tmp_path / "mine.yaml"  # a user's file that names this node's scan frame: publish_tf leaves it be
    own.write_text("cam1:\n  cadfd_node:\n    ros__parameters:\n      scan_frame_id: base_scan\n"
                   "/cam2/cadfd_node:\n  ros__parameters:\n    scan_frame_id: cam2_link\n")
    link = {"scan_frame_id": "camera_link"}
    assert parameters(publish_tf="true", params_file=str(own), namespace="cam1") == [str(own)]
    assert parameters(publish_tf="true", params_file=str(own), namespace="/cam2") == [str(own)]
    # another node's entry is not this node's: cam3 gets the link
    assert parameters(publish_tf="true", params_file=str(own), namespace="cam3") == [str(own), link]
    own.write_text("/**:\n  ros__parameters:\n    scan_frame_id: camera_link\n"
                   "/cam1/cadfd_node:\n  ros__parameters:\n    scan_frame_id: ''\n")  # the specific entry wins
    assert parameters(publish_tf="true", params_file=str(own), namespace="cam1") == [str(own), link]
    assert parameters(publish_tf="true", params_file=str(own), namespace="cam4") == [str(own)]  # the wildcard
    own.write_bytes(b"\xff\xfe not utf-8")  # unreadable: the node reports it, the launch goes on
    assert parameters(publish_tf="true", params_file=str(own)) == [str(own), link]
    with pytest.raises(ValueError, match="launch argument scan_height:=five: expected an integer"):
        parameters(scan_height="five")
    with pytest.raises(ValueError, match="launch argument publish_scan:=yes: expected true or false"):
        parameters(publish_scan="yes")


def test_launch_static_tf_matches_the_urdf(launch_description):
    (entities,) = launch_description.args
    tf_nodes = {e.kwargs["name"]: e for e in entities if type(e).__name__ == "Node"}
    assert set(tf_nodes) == {"cadfd_camera_mount_tf", "cadfd_camera_optical_tf"}
    for tf in tf_nodes.values():
        assert (tf.kwargs["package"], tf.kwargs["executable"]) == ("tf2_ros", "static_transform_publisher")
        assert text(tf.kwargs["condition"].args[0]) == "$(publish_tf)"

    def flags(tf) -> dict[str, str]:
        args = [text(a) for a in tf.kwargs["arguments"]]
        assert all(a.startswith("--") for a in args[::2])  # new-style flags only
        return dict(zip(args[::2], args[1::2]))

    mount = flags(tf_nodes["cadfd_camera_mount_tf"])
    assert mount == {"--x": "$(x)", "--y": "$(y)", "--z": "$(z)", "--roll": "$(roll)", "--pitch": "$(pitch)",
                     "--yaw": "$(yaw)", "--frame-id": "$(parent_frame)", "--child-frame-id": "$(camera_name)_link"}
    optical = flags(tf_nodes["cadfd_camera_optical_tf"])
    assert optical["--frame-id"] == "$(camera_name)_link"
    assert optical["--child-frame-id"] == "$(camera_name)_optical_frame"  # the urdf macro's names
    # tf2's setRPY is URDF's fixed-axis convention: the same REP 103 rotation as the macro's joint.
    rpy = [float(optical[k]) for k in ("--roll", "--pitch", "--yaw")]
    np.testing.assert_allclose(rpy, [-math.pi / 2, 0.0, -math.pi / 2], atol=1e-12)
    assert_rep103_optical(rpy_matrix(*rpy))


def test_launch_sets_the_large_message_profile_before_the_node(launch_description):
    """FASTDDS_DEFAULT_PROFILES_FILE: the environment's value, else the shipped profile; not set
    for fastdds_profile:=''; and set before any process starts (Fast DDS reads it once)."""
    entities = launched(launch_description)  # the node included
    (arg,) = [e for e in entities if type(e).__name__ == "DeclareLaunchArgument" and e.args[0] == "fastdds_profile"]
    default = arg.kwargs["default_value"]
    assert type(default).__name__ == "EnvironmentVariable" and default.args[0] == "FASTDDS_DEFAULT_PROFILES_FILE"
    assert default.kwargs["default_value"] == "/opt/share/cadfd_ros/config/fastdds_large_messages.xml"
    assert (REPO / "config" / "fastdds_large_messages.xml").is_file()  # installed by setup.py's config/*

    (env,) = [e for e in entities if type(e).__name__ == "SetEnvironmentVariable"]
    assert env.args[0] == "FASTDDS_DEFAULT_PROFILES_FILE" and text(env.args[1]) == "$(fastdds_profile)"
    (test,) = env.kwargs["condition"].args
    assert type(test).__name__ == "NotEqualsSubstitution"
    assert [text(v) for v in test.args] == ["$(fastdds_profile)", ""]
    processes = [i for i, e in enumerate(entities) if type(e).__name__ in ("LifecycleNode", "Node")]
    assert entities.index(env) < min(processes)


def test_launch_configures_then_activates_the_node_when_autostart(launch_description):
    """autostart: configure is emitted once the node is launched, and activate only on configuring -> inactive (a
    later deactivate must not bounce back); the handler is registered before the configure event, so it cannot
    miss it. Both follow $(autostart). The real launch test (test_launch.py) needs launch_testing."""
    from lifecycle_msgs.msg import Transition

    entities = launched(launch_description)
    (node,) = [e for e in entities if type(e).__name__ == "LifecycleNode"]
    (handler,) = [e for e in entities if type(e).__name__ == "RegisterEventHandler"]
    (configure,) = [e for e in entities if type(e).__name__ == "EmitEvent"]
    (on_transition,) = handler.args
    assert on_transition.kwargs["target_lifecycle_node"] is node
    assert (on_transition.kwargs["start_state"], on_transition.kwargs["goal_state"]) == ("configuring", "inactive")
    (activate,) = on_transition.kwargs["entities"]
    for event, transition in ((activate.kwargs["event"], Transition.TRANSITION_ACTIVATE),
                              (configure.kwargs["event"], Transition.TRANSITION_CONFIGURE)):
        assert event.kwargs["transition_id"] == transition
        assert event.kwargs["lifecycle_node_matcher"] == ("matches", node)
    for action in (handler, configure):
        assert text(action.kwargs["condition"].args[0]) == "$(autostart)"
    assert entities.index(handler) < entities.index(configure) and entities.index(node) < entities.index(configure)
