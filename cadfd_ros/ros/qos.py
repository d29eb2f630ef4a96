"""The node's QoS profiles (REP 2003), in one place: the node subscribes and publishes with them, and
``cadfd bag`` writes the publishers' into the bags it makes, so a replay offers what the node would."""
from __future__ import annotations

import copy
from typing import Any

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data


def sensor_qos() -> QoSProfile:
    """A fresh SensorDataQoS, for subscriptions: rclpy applies QoS-override parameters by mutating
    the profile it is given, so sharing rclpy's module-level profile would leak one topic's
    override to all."""
    return copy.copy(qos_profile_sensor_data)


def driver_qos() -> QoSProfile:
    """SystemDefaultsQoS as Fast DDS and Cyclone resolve it (reliable, volatile, keep last 1), for
    publishers: REP 2003 has sensor drivers publish so, because a reliable publisher serves
    best-effort and reliable subscribers (RViz) alike. Spelled out, so the QoS-override
    parameters and `ros2 topic info -v` show real policies instead of "system_default"."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def info_qos() -> QoSProfile:
    """``~/info``: reliable, keep last 10 (a status stream, not sensor data)."""
    return QoSProfile(depth=10)


def to_rosbag_qos(profile: QoSProfile) -> Any:
    """``profile`` in rosbag2's metadata form (rosbags' Qos; the policies' numbers are rmw's in both); durations
    0 = the default (infinite)."""
    from rosbags.rosbag2.metadata import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    zero = QosTime(sec=0, nsec=0)
    return Qos(history=QosHistory(int(profile.history)), depth=int(profile.depth),
               reliability=QosReliability(int(profile.reliability)), durability=QosDurability(int(profile.durability)),
               deadline=zero, lifespan=zero, liveliness=QosLiveliness.AUTOMATIC, liveliness_lease_duration=zero,
               avoid_ros_namespace_conventions=False)
