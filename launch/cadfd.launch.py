"""Start cadfd_node as a managed (lifecycle) node that configures and activates itself.

    ros2 launch cadfd_ros cadfd.launch.py namespace:=cam1 image:=/cam1/image_raw \
        camera_info:=/cam1/camera_info device:=cuda

Configure is emitted at start; activate is emitted when the node reaches 'inactive'. A failed
configure (bad PSF bank, unloadable prior) leaves the node unconfigured and logs why; fix the
parameter with `ros2 param set` and run `ros2 lifecycle set <node> configure` again.

TF: the node publishes none (as depth_image_proc does not). A robot description with the
urdf/cadfd_camera.urdf.xacro macro provides parent -> <camera_name>_link ->
<camera_name>_optical_frame; without one, publish_tf:=true starts two static transform
publishers for the same frames, the mount pose from x, y, z, roll, pitch, yaw:

    ros2 launch cadfd_ros cadfd.launch.py publish_tf:=true parent_frame:=base_link \
        x:=0.10 z:=0.25 scan_frame_id:=camera_link

Large messages: FASTDDS_DEFAULT_PROFILES_FILE is set to config/fastdds_large_messages.xml (a 64 MiB
shared-memory segment) unless the environment already sets it, so best-effort subscribers on
this host (Nav2, slam_toolbox) receive the clouds and images (README, QoS > Large messages).
fastdds_profile:=/path/to/other.xml points elsewhere; fastdds_profile:='' leaves the variable
as the environment has it (Fast DDS's 512 KiB default when unset). Fast DDS reads it when the
process creates its participant, so it is set before the node starts; the processes started
after it by this launch (the static TF publishers) get it too.
"""
from __future__ import annotations

import math
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import (DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler,
                            SetEnvironmentVariable)
from launch.conditions import IfCondition
from launch.events import matches_action
from launch.substitutions import EnvironmentVariable, LaunchConfiguration, NotEqualsSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition


# Fast DDS 3 reads this variable (2.x read FASTRTPS_DEFAULT_PROFILES_FILE) at participant creation.
FASTDDS_PROFILE_VAR = "FASTDDS_DEFAULT_PROFILES_FILE"
# Node parameters that are also launch arguments, with their types. Empty (the default) keeps params_file's value:
# later parameter entries win in ROS 2 launch, so a default here would overwrite the user's file.
PARAMETER_ARGUMENTS = {"device": str, "publish_scan": bool, "scan_height": int, "scan_frame_id": str}


def _matches(pattern: list[str], tokens: list[str]) -> bool:
    """rcl's node-name match: '**' is any number of name tokens, '*' exactly one."""
    if not pattern:
        return not tokens
    if pattern[0] == "**":
        return any(_matches(pattern[1:], tokens[k:]) for k in range(len(tokens) + 1))
    return bool(tokens) and pattern[0] in ("*", tokens[0]) and _matches(pattern[1:], tokens[1:])


def file_sets(params_file: str, name: str, node: str) -> bool:
    """Whether ``params_file`` gives parameter ``name`` a non-empty value for the node whose fully qualified name
    is ``node`` ('/cam1/cadfd_node'): among the entries whose key matches it (nested keys joined, wildcards as
    rcl reads them), the most specific one that sets ``name`` decides."""
    import yaml

    found: list[tuple[int, object]] = []  # (wildcard count, value)
    target = [t for t in node.split("/") if t]

    def walk(entry: object, path: list[str]) -> None:
        if not isinstance(entry, dict):
            return
        parameters = entry.get("ros__parameters")
        if isinstance(parameters, dict) and name in parameters and _matches(path, target):
            found.append((sum(t in ("*", "**") for t in path), parameters[name]))
        for key, value in entry.items():
            if key != "ros__parameters":
                walk(value, path + [t for t in str(key).split("/") if t])

    try:
        with open(params_file, encoding="utf-8") as stream:
            walk(yaml.safe_load(stream), [])
    except (OSError, UnicodeError, yaml.YAMLError):
        return False  # the node reports an unreadable file itself
    return bool(found) and min(found, key=lambda item: item[0])[1] not in (None, "")


def node_parameters(params_file: str, given: dict[str, str], publish_tf: bool, camera_name: str,
                    node: str = "/cadfd_node") -> list:
    """params_file, then the parameter arguments given on the command line (non-empty), typed. With publish_tf,
    and scan_frame_id neither given nor set in the file for ``node`` (its fully qualified name), the scan goes in
    the x-forward <camera_name>_link those transforms create."""
    overrides: dict[str, object] = {}
    for name, text in given.items():
        if text == "":
            continue
        kind = PARAMETER_ARGUMENTS[name]
        if kind is bool:  # the spellings launch's IfCondition takes
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"launch argument {name}:={text}: expected true or false")
            overrides[name] = text.lower() in ("true", "1")
        elif kind is int:
            try:
                overrides[name] = int(text)
            except ValueError:
                raise ValueError(f"launch argument {name}:={text}: expected an integer") from None
        else:
            overrides[name] = text
    if publish_tf and "scan_frame_id" not in overrides and not file_sets(params_file, "scan_frame_id", node):
        overrides["scan_frame_id"] = f"{camera_name}_link"
    return [params_file, overrides] if overrides else [params_file]


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("cadfd_ros")
    default_params = os.path.join(share, "config", "cadfd.yaml")
    large_messages_profile = os.path.join(share, "config", "fastdds_large_messages.xml")
    args = [
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument("node_name", default_value="cadfd_node", description="node name"),
        DeclareLaunchArgument("image", default_value="image_raw", description="coded capture topic (remap of image_raw)"),
        DeclareLaunchArgument("camera_info", default_value="camera_info",
                              description="camera info topic (remap of camera_info)"),
        DeclareLaunchArgument("device", default_value="", description="auto | cpu | cuda; empty = params_file's"),
        DeclareLaunchArgument("params_file", default_value=default_params, description="parameter YAML"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="emit configure and activate transitions at start"),
        # scan (given, these override params_file's values; empty keeps them)
        DeclareLaunchArgument("publish_scan", default_value="", description="publish scan (LaserScan): true | false"),
        DeclareLaunchArgument("scan_height", default_value="", description="depth rows per scan range"),
        DeclareLaunchArgument("scan_frame_id", default_value="",
                              description="frame of scan: an x-forward frame such as camera_link; empty = "
                                          "params_file's (<camera_name>_link with publish_tf)"),
        # TF, for robots without a robot description that has the urdf/ macro
        DeclareLaunchArgument("publish_tf", default_value="false",
                              description="publish parent_frame -> <camera_name>_link -> <camera_name>_optical_frame "
                                          "with static_transform_publisher"),
        DeclareLaunchArgument("camera_name", default_value="camera",
                              description="frames <camera_name>_link (x forward) and <camera_name>_optical_frame"),
        DeclareLaunchArgument("parent_frame", default_value="base_link", description="frame the camera is mounted on"),
        *(DeclareLaunchArgument(axis, default_value="0.0", description=f"camera mount pose in parent_frame: {what}")
          for axis, what in (("x", "x (m)"), ("y", "y (m)"), ("z", "z (m)"), ("roll", "roll (rad)"),
                             ("pitch", "pitch (rad)"), ("yaw", "yaw (rad)"))),
        # A user's own profile in the environment wins over ours.
        DeclareLaunchArgument("fastdds_profile",
                              default_value=EnvironmentVariable(FASTDDS_PROFILE_VAR,
                                                                default_value=large_messages_profile),
                              description="Fast DDS XML profile for the node (FASTDDS_DEFAULT_PROFILES_FILE); "
                                          "default: the environment's, else config/fastdds_large_messages.xml "
                                          "(best-effort delivery of large messages on this host); '' = do not set"),
    ]
    fastdds_profile = SetEnvironmentVariable(
        FASTDDS_PROFILE_VAR, LaunchConfiguration("fastdds_profile"),
        condition=IfCondition(NotEqualsSubstitution(LaunchConfiguration("fastdds_profile"), "")),
    )
    camera_link = [LaunchConfiguration("camera_name"), "_link"]
    optical_frame = [LaunchConfiguration("camera_name"), "_optical_frame"]
    publish_tf = IfCondition(LaunchConfiguration("publish_tf"))
    mount_tf = Node(
        package="tf2_ros", executable="static_transform_publisher", name="cadfd_camera_mount_tf",
        namespace=LaunchConfiguration("namespace"), condition=publish_tf, output="screen",
        arguments=["--x", LaunchConfiguration("x"), "--y", LaunchConfiguration("y"), "--z", LaunchConfiguration("z"),
                   "--roll", LaunchConfiguration("roll"), "--pitch", LaunchConfiguration("pitch"),
                   "--yaw", LaunchConfiguration("yaw"), "--frame-id", LaunchConfiguration("parent_frame"),
                   "--child-frame-id", camera_link],
    )
    # REP 103: the optical frame is the body frame turned by rpy = (-pi/2, 0, -pi/2), as in the urdf/ macro.
    optical_tf = Node(
        package="tf2_ros", executable="static_transform_publisher", name="cadfd_camera_optical_tf",
        namespace=LaunchConfiguration("namespace"), condition=publish_tf, output="screen",
        arguments=["--roll", str(-math.pi / 2), "--pitch", "0", "--yaw", str(-math.pi / 2),
                   "--frame-id", camera_link, "--child-frame-id", optical_frame],
    )
    def launch_node(context: object) -> list:
        """The node, its configure event and its activate handler, with the parameters known at launch time."""
        given = {name: LaunchConfiguration(name).perform(context) for name in PARAMETER_ARGUMENTS}
        publish_tf_value = LaunchConfiguration("publish_tf").perform(context).lower() in ("true", "1")
        namespace = LaunchConfiguration("namespace").perform(context).strip("/")
        node_name = LaunchConfiguration("node_name").perform(context)
        parameters = node_parameters(LaunchConfiguration("params_file").perform(context), given, publish_tf_value,
                                     LaunchConfiguration("camera_name").perform(context),
                                     "/" + "/".join(t for t in (namespace, node_name) if t))
        node = LifecycleNode(
            package="cadfd_ros",
            executable="cadfd_node",
            name=LaunchConfiguration("node_name"),
            namespace=LaunchConfiguration("namespace"),
            parameters=parameters,
            remappings=[("image_raw", LaunchConfiguration("image")),
                        ("camera_info", LaunchConfiguration("camera_info"))],
            output="screen",
            emulate_tty=True,
        )
        configure = EmitEvent(
            event=ChangeState(lifecycle_node_matcher=matches_action(node),
                              transition_id=Transition.TRANSITION_CONFIGURE),
            condition=IfCondition(LaunchConfiguration("autostart")),
        )
        # Activate only after configure (start_state): a later deactivate must not bounce back.
        activate_when_inactive = RegisterEventHandler(
            OnStateTransition(
                target_lifecycle_node=node,
                start_state="configuring",
                goal_state="inactive",
                entities=[
                    EmitEvent(
                        event=ChangeState(
                            lifecycle_node_matcher=matches_action(node), transition_id=Transition.TRANSITION_ACTIVATE
                        )
                    )
                ],
            ),
            condition=IfCondition(LaunchConfiguration("autostart")),
        )
        # The handler is registered before the configure event is emitted, so it cannot miss it.
        return [activate_when_inactive, node, configure]

    # The variable is set before any process starts: Fast DDS reads it once, at participant creation.
    return LaunchDescription([*args, fastdds_profile, mount_tf, optical_tf, OpaqueFunction(function=launch_node)])
