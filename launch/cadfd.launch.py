"""Start cadfd_node as a managed (lifecycle) node that configures and activates itself.

    ros2 launch cadfd_ros cadfd.launch.py namespace:=cam1 image:=/cam1/image_raw \
        camera_info:=/cam1/camera_info device:=cuda

Configure is emitted at start; activate is emitted when the node reaches 'inactive'. A failed
configure (bad PSF bank, unloadable prior) leaves the node unconfigured and logs why; fix the
parameter with `ros2 param set` and run `ros2 lifecycle set <node> configure` again.
"""
from __future__ import annotations

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, RegisterEventHandler
from launch.conditions import IfCondition
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition


def generate_launch_description() -> LaunchDescription:
    default_params = os.path.join(get_package_share_directory("cadfd_ros"), "config", "cadfd.yaml")
    args = [
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument("node_name", default_value="cadfd_node", description="node name"),
        DeclareLaunchArgument("image", default_value="image_raw", description="coded capture topic (remap of image_raw)"),
        DeclareLaunchArgument("camera_info", default_value="camera_info",
                              description="camera info topic (remap of camera_info)"),
        DeclareLaunchArgument("device", default_value="auto", description="auto | cpu | cuda"),
        DeclareLaunchArgument("params_file", default_value=default_params, description="parameter YAML"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="emit configure and activate transitions at start"),
    ]
    node = LifecycleNode(
        package="cadfd_ros",
        executable="cadfd_node",
        name=LaunchConfiguration("node_name"),
        namespace=LaunchConfiguration("namespace"),
        parameters=[LaunchConfiguration("params_file"), {"device": LaunchConfiguration("device")}],
        remappings=[("image_raw", LaunchConfiguration("image")), ("camera_info", LaunchConfiguration("camera_info"))],
        output="screen",
        emulate_tty=True,
    )
    configure = EmitEvent(
        event=ChangeState(lifecycle_node_matcher=matches_action(node), transition_id=Transition.TRANSITION_CONFIGURE),
        condition=IfCondition(LaunchConfiguration("autostart")),
    )
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
    # Activate only after configure (start_state): a later deactivate must not bounce back.
    # The handler is registered before the configure event is emitted, so it cannot miss it.
    return LaunchDescription([*args, activate_when_inactive, node, configure])
