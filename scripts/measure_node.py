#!/usr/bin/env python3
"""Measure cadfd_node as a separate process: end-to-end latency and 30 Hz drop behaviour.

    .venv/bin/python scripts/measure_node.py --width 320 --height 240 --frames 10 --stream-seconds 10

1. Starts ``.venv/bin/cadfd_node`` in its own namespace and DDS domain, configures and
   activates it through the lifecycle services.
2. Latency: sends ``--frames`` simulated coded captures one at a time (each after the previous
   depth came back, so nothing queues) stamped with the current time; latency is input stamp ->
   depth/image received here, and the node's own stamp -> publish figure from /diagnostics.
3. Stream: publishes at ``--rate`` Hz for ``--stream-seconds`` and reports frames sent,
   received, processed and dropped (from /diagnostics) and the node's VmRSS before and after.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "test"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--encoding", default="mono8")
    parser.add_argument("--downscale", type=int, default=1, help="node parameter input_downscale")
    parser.add_argument("--method", default="classical")
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--stream-seconds", type=float, default=10.0)
    args = parser.parse_args()

    from diagnostic_msgs.msg import DiagnosticArray
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from rclpy.time import Time
    from sensor_msgs.msg import CameraInfo, Image

    from ros_test_util import (camera_info_msg, client_node, diagnostic_values, image_msg, simulated_capture,
                               stop_client, unique_domain_id)

    exe = Path(sys.executable).parent / "cadfd_node"
    domain, ns = unique_domain_id(), f"/measure_{uuid.uuid4().hex[:6]}"
    proc = subprocess.Popen(
        [str(exe), "--ros-args", "-r", f"__ns:={ns}", "-p", "device:=cpu", "-p", f"method:={args.method}",
         "-p", f"input_downscale:={args.downscale}",
         "-p", f"qos_overrides.{ns}/image_raw.subscription.reliability:=reliable"],
        env=dict(os.environ, ROS_DOMAIN_ID=str(domain)), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    context, node = client_node(domain, "measure_client")
    got: dict[tuple[int, int], float] = {}
    diags: list = []
    cond = threading.Condition()

    def on_depth(msg: Image) -> None:
        with cond:
            got[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = time.time()
            cond.notify_all()

    node.create_subscription(Image, f"{ns}/depth/image", on_depth, qos_profile_sensor_data)
    node.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
    image_pub = node.create_publisher(Image, f"{ns}/image_raw", 5)
    info_pub = node.create_publisher(CameraInfo, f"{ns}/camera_info", qos_profile_sensor_data)
    change = node.create_client(ChangeState, f"{ns}/cadfd_node/change_state")
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()

    def transition(tid: int) -> None:
        assert change.wait_for_service(timeout_sec=60)
        future = change.call_async(ChangeState.Request(transition=Transition(id=tid)))
        while not future.done():
            time.sleep(0.02)
        assert future.result().success, f"transition {tid} failed"

    def rss_mib() -> float:
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def node_diag() -> dict:
        name = f"{ns}/cadfd_node: reconstruction"
        start = len(diags)
        while len(diags) == start or not diagnostic_values(diags[-1], name):
            time.sleep(0.05)
        return diagnostic_values(diags[-1], name)[name]

    capture, _ = simulated_capture(None, args.height, args.width, rgb=args.encoding not in ("mono8", "mono16"))
    msg = image_msg(capture, args.encoding, (0, 0), "camera_optical_frame")
    info = camera_info_msg(args.width, args.height, (0, 0), "camera_optical_frame",
                           fx=400.0, fy=400.0, cx=(args.width - 1) / 2, cy=(args.height - 1) / 2)

    def send() -> tuple[int, int]:
        stamp = node.get_clock().now().to_msg()
        msg.header.stamp = info.header.stamp = stamp
        image_pub.publish(msg)
        info_pub.publish(info)
        return stamp.sec, stamp.nanosec

    try:
        t0 = time.monotonic()
        transition(Transition.TRANSITION_CONFIGURE)
        transition(Transition.TRANSITION_ACTIVATE)
        print(f"node configured+activated in {time.monotonic() - t0:.1f} s (incl. process start)")
        while image_pub.get_subscription_count() < 1:
            time.sleep(0.05)
        time.sleep(0.5)
        latencies = []
        for i in range(args.frames + 1):  # the first frame is a warm-up at this size
            key = send()
            with cond:
                if not cond.wait_for(lambda: key in got, timeout=120):
                    raise SystemExit("no depth/image within 120 s")
            if i:
                latencies.append((got[key] - Time(seconds=key[0], nanoseconds=key[1]).nanoseconds * 1e-9) * 1e3)
            time.sleep(0.2)
        time.sleep(1.1)
        d = node_diag()
        print(f"latency {args.width}x{args.height} {args.encoding} (solved at {args.width // args.downscale}x"
              f"{args.height // args.downscale}, method {args.method}), {len(latencies)} frames one at a time: "
              f"input stamp -> depth received: mean {statistics.mean(latencies):.0f} ms, median "
              f"{statistics.median(latencies):.0f} ms, min {min(latencies):.0f} ms, max {max(latencies):.0f} ms; "
              f"node-side stamp -> publish mean {d['latency_mean_ms']} ms, max {d['latency_max_ms']} ms")

        before, rss_before = node_diag(), rss_mib()
        sent, start, last, peak = 0, time.monotonic(), None, rss_before
        while time.monotonic() - start < args.stream_seconds:
            sent += 1
            last = send()
            peak = max(peak, rss_mib())
            time.sleep(max(0.0, start + sent / args.rate - time.monotonic()))
        with cond:
            cond.wait_for(lambda: last in got, timeout=120)
        time.sleep(1.1)
        after, rss_after = node_diag(), rss_mib()
        delta = {k: int(after[k]) - int(before[k]) for k in ("frames_in", "frames_processed", "frames_dropped",
                                                              "frames_lost", "frames_bad", "frames_failed")}
        print(f"stream {args.rate:.0f} Hz for {args.stream_seconds:.0f} s: sent {sent}, node received "
              f"{delta['frames_in']}, processed {delta['frames_processed']}, dropped {delta['frames_dropped']}, "
              f"lost in transport {delta['frames_lost']}, bad {delta['frames_bad']}, failed {delta['frames_failed']}; "
              f"newest frame processed: {last in got}; RSS before {rss_before:.1f} MiB, peak {peak:.1f} MiB, "
              f"after {rss_after:.1f} MiB")
    finally:
        stop_client(executor, node, context, proc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
