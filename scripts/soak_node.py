#!/usr/bin/env python3
"""Soak cadfd_node as a separate process: a long 30 Hz stream with bad frames mixed in.

    .venv/bin/python scripts/soak_node.py --minutes 10 [--width 160 --height 120] [--bad-every 10]

Every ``--bad-every``-th frame is malformed (its data cut short, so it cannot be decoded). Every
``--period`` seconds it logs one line: the node's RSS, the input-stamp -> depth-received latency of the
frames that came back in that period, the round trip of a ``get_state`` call, and the node's counters
from /diagnostics. At the end: RSS drift (last period against the first after warm-up), the slowest
service round trip, and whether every bad frame sent was counted as bad. Exit status 1 if any of
the issue 12 targets is missed (drift < 20 MB, round trips < 1 s, every bad frame counted).
"""
from __future__ import annotations

import argparse
import copy
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


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--height", type=int, default=120)
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--bad-every", type=int, default=10, help="every N-th frame is malformed")
    parser.add_argument("--period", type=float, default=10.0, help="seconds between log lines")
    parser.add_argument("--method", default="classical")
    args = parser.parse_args()

    from diagnostic_msgs.msg import DiagnosticArray
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image

    from ros_test_util import (camera_info_msg, client_node, diagnostic_values, image_msg, simulated_capture,
                               stop_client, unique_domain_id)

    domain, ns = unique_domain_id(), f"/soak_{uuid.uuid4().hex[:6]}"
    node_cmd = [str(Path(sys.executable).parent / "cadfd_node"), "--ros-args", "-r", f"__ns:={ns}",
                "-p", "device:=cpu", "-p", f"method:={args.method}",
                "-p", f"qos_overrides.{ns}/image_raw.subscription.reliability:=reliable"]
    proc = subprocess.Popen(node_cmd, env=dict(os.environ, ROS_DOMAIN_ID=str(domain)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    context, client = client_node(domain, "soak_client")
    received: dict[tuple[int, int], float] = {}
    diagnostics: list = []
    lock = threading.Lock()

    def on_depth(msg: Image) -> None:
        with lock:
            received[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = time.time()

    client.create_subscription(Image, f"{ns}/depth/image", on_depth, qos_profile_sensor_data)
    client.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
    image_pub = client.create_publisher(Image, f"{ns}/image_raw", 5)
    info_pub = client.create_publisher(CameraInfo, f"{ns}/camera_info", qos_profile_sensor_data)
    change = client.create_client(ChangeState, f"{ns}/cadfd_node/change_state")
    get_state = client.create_client(GetState, f"{ns}/cadfd_node/get_state")
    executor = MultiThreadedExecutor(num_threads=2, context=context)
    executor.add_node(client)
    threading.Thread(target=executor.spin, daemon=True).start()

    def call(service, request, timeout: float = 60.0):
        if not service.wait_for_service(timeout_sec=timeout):
            raise SystemExit(f"service {service.srv_name} did not appear within {timeout} s")
        future = service.call_async(request)
        deadline = time.monotonic() + timeout
        while not future.done():
            if time.monotonic() > deadline:
                raise SystemExit(f"service {service.srv_name} gave no answer within {timeout} s")
            time.sleep(0.002)
        return future.result()

    def counters() -> dict:
        name = f"{ns}/cadfd_node: reconstruction"
        for array in reversed(diagnostics[-20:]):
            values = diagnostic_values(array, name)
            if values:
                return values[name]
        return {}

    capture, _ = simulated_capture(None, args.height, args.width, rgb=False)
    good = image_msg(capture, "mono8", (0, 0), "camera_optical_frame")
    bad = copy.deepcopy(good)
    bad.data = bytes(good.data)[: len(good.data) // 2]  # step * height no longer matches the data
    info = camera_info_msg(args.width, args.height, (0, 0), "camera_optical_frame", fx=200.0, fy=200.0,
                           cx=(args.width - 1) / 2, cy=(args.height - 1) / 2)
    rows, sent, bad_sent, worst_rtt = [], 0, 0, 0.0
    try:
        for transition in (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
            if not call(change, ChangeState.Request(transition=Transition(id=transition))).success:
                raise SystemExit(f"lifecycle transition {transition} failed")
        while image_pub.get_subscription_count() < 1:
            time.sleep(0.05)
        start = time.monotonic()
        next_log = start + args.period
        window_sent: list[tuple[int, int]] = []
        while time.monotonic() - start < args.minutes * 60:
            sent += 1
            msg = bad if sent % args.bad_every == 0 else good
            stamp = client.get_clock().now().to_msg()
            msg.header.stamp = info.header.stamp = stamp
            image_pub.publish(msg)
            info_pub.publish(info)
            if msg is bad:
                bad_sent += 1
            else:
                window_sent.append((stamp.sec, stamp.nanosec))
            if time.monotonic() >= next_log:
                began = time.monotonic()
                call(get_state, GetState.Request(), timeout=5.0)
                rtt = time.monotonic() - began
                worst_rtt = max(worst_rtt, rtt)
                with lock:
                    lat = [1e3 * (received[k] - (k[0] + k[1] * 1e-9)) for k in window_sent if k in received]
                c = counters()
                row = dict(t=time.monotonic() - start, rss=_rss_mib(proc.pid), rtt_ms=1e3 * rtt,
                           back=len(lat), sent=len(window_sent), lat_mean=statistics.mean(lat) if lat else float("nan"),
                           lat_max=max(lat) if lat else float("nan"), bad_sent=bad_sent,
                           bad=int(c.get("frames_bad", -1)), processed=int(c.get("frames_processed", -1)))
                rows.append(row)
                print(f"t {row['t']:6.0f} s  RSS {row['rss']:7.1f} MiB  get_state {row['rtt_ms']:6.1f} ms  "
                      f"depth back {row['back']:3d}/{row['sent']:3d}  latency mean {row['lat_mean']:6.0f} ms "
                      f"max {row['lat_max']:6.0f} ms  bad sent {bad_sent} counted {row['bad']}  "
                      f"processed {row['processed']}", flush=True)
                window_sent, next_log = [], next_log + args.period
            time.sleep(max(0.0, start + sent / args.rate - time.monotonic()))
        time.sleep(2.5)  # the last frames and one more diagnostics period
        final_bad = int(counters().get("frames_bad", -1))
    finally:
        stop_client(executor, client, context, proc)
    if len(rows) < 3:
        print("too short for a drift figure: run at least three periods")
        return 1
    drift = rows[-1]["rss"] - rows[1]["rss"]  # the first period includes the warm-up allocations
    ok = abs(drift) < 20 and worst_rtt < 1.0 and final_bad == bad_sent
    print(f"\n{args.minutes:g} min at {args.rate:g} Hz, {args.width}x{args.height} mono8, method {args.method}: "
          f"sent {sent} ({bad_sent} bad); RSS {rows[1]['rss']:.1f} -> {rows[-1]['rss']:.1f} MiB (drift {drift:+.1f}); "
          f"slowest get_state {1e3 * worst_rtt:.0f} ms; bad frames counted {final_bad} of {bad_sent}: "
          f"{'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
