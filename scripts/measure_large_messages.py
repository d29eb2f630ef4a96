#!/usr/bin/env python3
"""Measure what a subscriber in another process receives of cadfd_node-sized messages.

    nice .venv/bin/python scripts/measure_large_messages.py              # the full matrix (~5 min)
    nice .venv/bin/python scripts/measure_large_messages.py --settings default,profile \\
        --pairs best_effort:best_effort --sizes 640x480 --count 10

Two plain rclpy processes (no cadfd_node), in a DDS domain of their own: a publisher and a
subscriber. For each size it publishes ``--count`` frames at ``--rate`` Hz, each frame being what
the node publishes per input frame: a 32FC1 depth image, an rgb8 all-in-focus image, an organised
xyz float32 PointCloud2 (``--point-step`` 16 bytes a point, as the node; 12 is the packed layout)
and then a small camera_info. The publisher waits until every topic has matched before the first
frame and, when reliable, for the acknowledgements after the last. The subscriber counts what
arrives (raw, undeserialised, so Python's speed does not limit it) and the script prints a markdown
table of delivered/sent per message and cell.

A cell is a publisher QoS x subscriber QoS (best effort -> reliable cannot match and is left
out) x transport setting. The settings are applied through the environment of both processes
(or one, for ``profile_pub``/``profile_sub``), from a clean working directory:

- ``default``: Fast DDS's built-in transports (shared memory with a 512 KiB segment + UDPv4).
- ``profile``: ``config/fastdds_large_messages.xml`` (what launch/cadfd.launch.py sets) on both.
- ``profile_pub`` / ``profile_sub``: that profile on the publisher / subscriber only.
- ``udp``: UDPv4 only, default socket buffers (as between two hosts, here over loopback).
- ``udp_4mb``: UDPv4 only, 4 MiB socket buffers (the profile's UDP part).
- ``shm<N>`` (e.g. ``shm8``): the profile with an N MiB segment instead, on both ends.
- ``PUB/SUB``: one setting per end, e.g. ``profile/udp``: the profile's publisher and a
  subscriber without shared memory, as on another host (here over loopback).

``--env KEY=VALUE`` adds a variable to both processes (e.g. ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST).

Raw JSON per cell goes to ``--out`` (default out/large_messages.json).

``--node WxH`` measures cadfd_node itself instead: the node as a process (classical, CPU) with
Fast DDS's defaults and then with the profile (the launch file's setting), and a best-effort
subscriber without it in this process (as Nav2 subscribes), for ``--count`` frames sent one at a
time:

    nice .venv/bin/python scripts/measure_large_messages.py --node 640x480 --count 6
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "config" / "fastdds_large_messages.xml"
KINDS = ("depth", "aif", "points", "camera_info")
QOS_NAMES = ("best_effort", "reliable")
# Variables that would change the transports behind the script's back.
DDS_ENV = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_BUILTIN_TRANSPORTS",
           "RMW_FASTRTPS_USE_QOS_FROM_XML", "SKIP_DEFAULT_XML_FILE")

UDP_ONLY_XML = """<?xml version="1.0" encoding="UTF-8" ?>
<dds xmlns="http://www.eprosima.com"><profiles>
  <transport_descriptors><transport_descriptor>
    <transport_id>udp_only</transport_id><type>UDPv4</type>{buffers}
  </transport_descriptor></transport_descriptors>
  <participant profile_name="udp_only" is_default_profile="true"><rtps>
    <userTransports><transport_id>udp_only</transport_id></userTransports>
    <useBuiltinTransports>false</useBuiltinTransports>
  </rtps></participant>
</profiles></dds>
"""
BUFFERS_4MB = "<sendBufferSize>4194304</sendBufferSize><receiveBufferSize>4194304</receiveBufferSize>"


# ---------------------------------------------------------------------------------------- messages
def parse_size(text: str) -> tuple[int, int]:
    """'640x480' -> (640, 480)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is not WIDTHxHEIGHT, e.g. 640x480") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"size {text!r} must be positive")
    return width, height


def topic(prefix: str, size: tuple[int, int], kind: str) -> str:
    return f"{prefix}/s{size[0]}x{size[1]}/{kind}"


def frame_messages(size: tuple[int, int], point_step: int) -> dict[str, Any]:
    """One frame of the node's outputs at ``size``: {kind: message}."""
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField

    width, height = size
    depth = Image(height=height, width=width, encoding="32FC1", is_bigendian=0, step=4 * width)
    depth.data = bytes(4 * width * height)
    aif = Image(height=height, width=width, encoding="rgb8", is_bigendian=0, step=3 * width)
    aif.data = bytes(3 * width * height)
    fields = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1) for i, n in enumerate("xyz")]
    cloud = PointCloud2(height=height, width=width, fields=fields, is_bigendian=False, point_step=point_step,
                        row_step=point_step * width, is_dense=False)
    cloud.data = bytes(point_step * width * height)
    info = CameraInfo(height=height, width=width, distortion_model="plumb_bob")
    for msg in (depth, aif, cloud, info):
        msg.header.frame_id = "camera_optical_frame"
    return {"depth": depth, "aif": aif, "points": cloud, "camera_info": info}


def publisher_qos(name: str) -> Any:
    """As publishers use it in the field: the node reliable keep-last-1 (REP 2003
    SystemDefaultsQoS), a camera driver best effort keep-last-5 (SensorDataQoS)."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    reliable = name == "reliable"
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1 if reliable else 5,
                      reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.VOLATILE)


def subscriber_qos(name: str) -> Any:
    """SensorDataQoS's keep-last-5 (Nav2, slam_toolbox), best effort or reliable."""
    qos = publisher_qos(name)
    qos.depth = 5
    return qos


def message_type(kind: str) -> type:
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2

    return {"depth": Image, "aif": Image, "points": PointCloud2, "camera_info": CameraInfo}[kind]


# ---------------------------------------------------------------------------------------- roles
def run_subscriber(args: argparse.Namespace) -> int:
    """Count what arrives on every topic until stdin closes, then print one JSON line."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    rclpy.init()
    node = rclpy.create_node(f"large_msg_sub_{os.getpid()}")
    counts: dict[str, int] = {}
    lock = threading.Lock()

    def counter(name: str):
        def count(_raw: bytes) -> None:
            with lock:
                counts[name] = counts.get(name, 0) + 1
        return count

    qos = subscriber_qos(args.sub_qos)
    for size in args.sizes:
        for kind in args.kinds:
            name = topic(args.prefix, size, kind)
            node.create_subscription(message_type(kind), name, counter(name), qos, raw=True)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    print("READY", flush=True)
    sys.stdin.read()  # the orchestrator closes stdin once the publisher is done
    with lock:
        print(json.dumps({"received": counts}), flush=True)
    executor.shutdown(timeout_sec=2.0)
    spinner.join(timeout=2.0)  # a thread still in spin at exit aborts the process
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


def run_publisher(args: argparse.Namespace) -> int:
    """Wait for every topic to match, publish the frames at the rate, print one JSON line."""
    import rclpy
    from rclpy.serialization import serialize_message

    rclpy.init()
    node = rclpy.create_node(f"large_msg_pub_{os.getpid()}")
    qos = publisher_qos(args.pub_qos)
    pubs = {(size, kind): node.create_publisher(message_type(kind), topic(args.prefix, size, kind), qos)
            for size in args.sizes for kind in args.kinds}
    deadline = time.monotonic() + args.discovery_timeout
    while any(p.get_subscription_count() < 1 for p in pubs.values()):
        if time.monotonic() > deadline:
            missing = [topic(args.prefix, s, k) for (s, k), p in pubs.items() if p.get_subscription_count() < 1]
            print(json.dumps({"error": f"no subscriber matched within {args.discovery_timeout} s", "missing": missing}),
                  flush=True)
            return 2
        time.sleep(0.05)
    time.sleep(1.0)  # the reader side matches the writer a moment after the writer sees the reader
    sent: dict[str, int] = {}
    bytes_per: dict[str, int] = {}
    period = 1.0 / args.rate
    for size in args.sizes:
        # Serialised once: the publisher's Python cost must not lower the rate.
        frame = {kind: serialize_message(msg) for kind, msg in frame_messages(size, args.point_step).items()
                 if kind in args.kinds}
        start = time.monotonic()
        for i in range(args.count):
            for kind in args.kinds:  # camera_info last, as the node publishes it after the images
                pubs[(size, kind)].publish(frame[kind])
            wait = start + (i + 1) * period - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        for kind in args.kinds:
            name = topic(args.prefix, size, kind)
            sent[name] = args.count
            bytes_per[name] = len(frame[kind])
        time.sleep(args.gap)
    if args.pub_qos == "reliable":
        for pub in pubs.values():
            pub.wait_for_all_acked(rclpy.duration.Duration(seconds=5))
    print(json.dumps({"sent": sent, "bytes": bytes_per}), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


# ---------------------------------------------------------------------------------------- orchestration
def setting_envs(setting: str, workdir: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(publisher env additions, subscriber env additions) for a transport setting."""
    if "/" in setting:  # PUB/SUB: one setting per end, e.g. profile/udp (a consumer without SHM)
        pub_setting, sub_setting = setting.split("/", 1)
        return setting_envs(pub_setting, workdir)[0], setting_envs(sub_setting, workdir)[1]
    profile = {"FASTDDS_DEFAULT_PROFILES_FILE": str(PROFILE)}
    if setting == "default":
        return {}, {}
    if setting == "profile":
        return profile, profile
    if setting == "profile_pub":
        return profile, {}
    if setting == "profile_sub":
        return {}, profile
    if setting.startswith("shm") and setting[3:].isdigit():
        # The shipped profile with another segment size (MiB), on both ends: how much is needed.
        path = workdir / f"{setting}.xml"
        text = re.sub(r"<segment_size>\d+</segment_size>", f"<segment_size>{int(setting[3:]) << 20}</segment_size>",
                      PROFILE.read_text())
        path.write_text(text)
        env = {"FASTDDS_DEFAULT_PROFILES_FILE": str(path)}
        return env, env
    if setting in ("udp", "udp_4mb"):
        path = workdir / f"{setting}.xml"
        path.write_text(UDP_ONLY_XML.format(buffers=BUFFERS_4MB if setting == "udp_4mb" else ""))
        env = {"FASTDDS_DEFAULT_PROFILES_FILE": str(path)}
        return env, env
    raise ValueError(f"unknown setting {setting!r}; choose from {', '.join(SETTINGS)}")


SETTINGS = ("default", "profile", "profile_pub", "profile_sub", "udp", "udp_4mb")
# plus shm<N>: the profile with an N MiB segment, on both ends (not in the default matrix)


def role_argv(args: argparse.Namespace, role: str, pub_qos: str, sub_qos: str, prefix: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--role", role, "--pub-qos", pub_qos,
            "--sub-qos", sub_qos, "--prefix", prefix, "--count", str(args.count), "--rate", str(args.rate),
            "--point-step", str(args.point_step), "--gap", str(args.gap), "--kinds", ",".join(args.kinds),
            "--sizes", ",".join(f"{w}x{h}" for w, h in args.sizes)]


def run_cell(args: argparse.Namespace, setting: str, pub_qos: str, sub_qos: str, domain: int,
             workdir: Path) -> dict[str, Any]:
    """One publisher and one subscriber process; {'sent', 'received', 'bytes'} or {'error'}."""
    pub_add, sub_add = setting_envs(setting, workdir)
    base = {k: v for k, v in os.environ.items() if k not in DDS_ENV}
    base.update(ROS_DOMAIN_ID=str(domain), PYTHONUNBUFFERED="1")
    base.update(item.split("=", 1) for item in args.env)
    prefix = f"/lm_{os.getpid()}_{random.randrange(1 << 30):x}"
    sub_log = (workdir / f"sub_{setting.replace('/', '-')}_{pub_qos}_{sub_qos}.log").open("w+")
    sub = subprocess.Popen(role_argv(args, "sub", pub_qos, sub_qos, prefix), env=dict(base, **sub_add), cwd=workdir,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=sub_log, text=True)
    try:
        if sub.stdout.readline().strip() != "READY":
            return {"error": "subscriber did not start: " + sub_log.name}
        pub = subprocess.run(role_argv(args, "pub", pub_qos, sub_qos, prefix), env=dict(base, **pub_add),
                             cwd=workdir, capture_output=True, text=True, timeout=args.cell_timeout)
        lines = [line for line in pub.stdout.splitlines() if line.startswith("{")]
        result = json.loads(lines[-1]) if lines else {"error": f"publisher exit {pub.returncode}: {pub.stderr[-500:]}"}
        time.sleep(args.linger)
        out, _ = sub.communicate(timeout=30)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        result.update(json.loads(lines[-1]) if lines else {"error": "subscriber printed no counts"})
        if pub.stderr.strip():
            result["publisher_stderr"] = pub.stderr[-2000:]
        sub_log.seek(0)
        log = sub_log.read().strip()
        if log:
            result["subscriber_stderr"] = log[-2000:]
        return result
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
        sub_log.close()


def markdown_table(args: argparse.Namespace, cells: dict[str, dict[str, Any]]) -> str:
    names = list(cells)
    header = "| message | size | MB | " + " | ".join(f"`{n}`" for n in names) + " |"
    lines = [header, "|" + "---|" * (3 + len(names))]
    any_bytes = next((c["bytes"] for c in cells.values() if "bytes" in c), {})
    for size in args.sizes:
        for kind in args.kinds:
            label = {"depth": "depth 32FC1", "aif": "AIF rgb8", "points": f"cloud {args.point_step} B/pt",
                     "camera_info": "camera_info"}[kind]
            key = topic("", size, kind)
            mb = next((v for k, v in any_bytes.items() if k.endswith(key)), 0) / 1e6
            row = [label, f"{size[0]}x{size[1]}", f"{mb:.3g}"]
            for cell in cells.values():
                if "error" in cell:
                    row.append("error")
                    continue
                name = next((k for k in cell["sent"] if k.endswith(key)), None)
                row.append(f"{cell['received'].get(name, 0)}/{cell['sent'][name]}" if name else "-")
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- the node itself
NODE_TOPICS = ("depth/image", "aif/image", "confidence/image", "points", "depth/camera_info", "aif/camera_info")


def run_node_check(size: tuple[int, int], frames: int, with_profile: bool) -> dict[str, tuple[int, int]]:
    """cadfd_node as a process (classical, CPU), with the profile or Fast DDS's defaults; this
    process subscribes best effort (SensorDataQoS, no profile: a Nav2-like consumer) and sends
    ``frames`` coded captures one at a time (reliably, so the input is not what is measured).
    Returns {topic: (frames received, frames sent)}."""
    sys.path.insert(0, str(REPO / "test"))
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from ros_test_util import camera_info_msg, client_node, image_msg, simulated_capture, stop_client, unique_domain_id
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2

    from cadfd_ros_interfaces.msg import ReconstructionInfo

    width, height = size
    domain, ns = unique_domain_id(), f"/lm_node_{os.getpid()}_{random.randrange(1 << 24):x}"
    env = {k: v for k, v in os.environ.items() if k not in DDS_ENV}
    env["ROS_DOMAIN_ID"] = str(domain)
    if with_profile:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(PROFILE)
    exe = Path(sys.executable).parent / "cadfd_node"
    with tempfile.TemporaryDirectory(prefix="large_msg_node_") as tmp:
        proc = subprocess.Popen(
            [str(exe), "--ros-args", "-r", f"__ns:={ns}", "-p", "device:=cpu", "-p", "autostart:=true",
             "-p", f"qos_overrides.{ns}/image_raw.subscription.reliability:=reliable"],
            env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        context, node = client_node(domain, f"large_msg_node_client_{os.getpid()}")
        received: dict[str, set] = {t: set() for t in NODE_TOPICS}
        done: set = set()
        cond = threading.Condition()

        def counter(name: str):
            def count(msg: Any) -> None:
                with cond:
                    received[name].add((msg.header.stamp.sec, msg.header.stamp.nanosec))
            return count

        def on_info(msg: Any) -> None:
            with cond:
                done.add((msg.header.stamp.sec, msg.header.stamp.nanosec))
                cond.notify_all()

        types = {"points": PointCloud2, "depth/camera_info": CameraInfo, "aif/camera_info": CameraInfo}
        for name in NODE_TOPICS:
            node.create_subscription(types.get(name, Image), f"{ns}/{name}", counter(name), qos_profile_sensor_data)
        node.create_subscription(ReconstructionInfo, f"{ns}/cadfd_node/info", on_info, 10)  # reliable: frame done
        image_pub = node.create_publisher(Image, f"{ns}/image_raw", 5)
        info_pub = node.create_publisher(CameraInfo, f"{ns}/camera_info", 5)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        threading.Thread(target=executor.spin, daemon=True).start()
        capture, _ = simulated_capture(None, height, width)
        image = image_msg(capture, "mono8", (0, 0), "camera_optical_frame")
        info = camera_info_msg(width, height, (0, 0), "camera_optical_frame", fx=400.0, fy=400.0,
                               cx=(width - 1) / 2, cy=(height - 1) / 2)
        sent: list = []
        try:
            deadline = time.monotonic() + 90
            while image_pub.get_subscription_count() < 1 or any(
                    node.count_publishers(f"{ns}/{name}") < 1 for name in NODE_TOPICS):
                if time.monotonic() > deadline:
                    raise SystemExit("cadfd_node did not come up within 90 s")
                time.sleep(0.1)
            time.sleep(2.0)  # the node's writers match our readers a moment after we see them
            for i in range(frames + 1):  # frame 0 is a warm-up at this size
                stamp = node.get_clock().now().to_msg()
                key = (stamp.sec, stamp.nanosec)
                image.header.stamp = info.header.stamp = stamp
                info_pub.publish(info)
                image_pub.publish(image)
                with cond:
                    if not cond.wait_for(lambda: key in done, timeout=120):
                        raise SystemExit(f"frame {i}: no ~/info from cadfd_node within 120 s")
                if i:
                    sent.append(key)
                time.sleep(0.5)
            time.sleep(1.0)
            with cond:
                return {name: (len(received[name] & set(sent)), len(sent)) for name in NODE_TOPICS}
        finally:
            stop_client(executor, node, context, proc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=("orchestrate", "pub", "sub"), default="orchestrate",
                        help=argparse.SUPPRESS)
    parser.add_argument("--pub-qos", choices=QOS_NAMES, default="best_effort", help=argparse.SUPPRESS)
    parser.add_argument("--sub-qos", choices=QOS_NAMES, default="best_effort", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default="/large_msg", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default="160x120,320x240,640x480,1280x960",
                        type=lambda s: [parse_size(v) for v in s.split(",")], help="WxH[,WxH...]")
    parser.add_argument("--kinds", default=",".join(KINDS), type=lambda s: [k for k in KINDS if k in s.split(",")],
                        help=f"messages per frame, of {','.join(KINDS)} (aif,camera_info: a camera's image stream)")
    parser.add_argument("--count", type=int, default=20, help="frames per size")
    parser.add_argument("--rate", type=float, default=10.0, help="frames per second")
    parser.add_argument("--point-step", type=int, choices=(12, 16), default=16, help="cloud bytes per point")
    parser.add_argument("--gap", type=float, default=0.5, help="pause between sizes (s)")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma list of {', '.join(SETTINGS)}")
    parser.add_argument("--pairs", default="best_effort:best_effort,reliable:best_effort,reliable:reliable",
                        help="publisher:subscriber QoS pairs")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for both processes (repeatable)")
    parser.add_argument("--domain", type=int, default=0, help="ROS_DOMAIN_ID (0: pick one in 150-230)")
    parser.add_argument("--discovery-timeout", type=float, default=20.0)
    parser.add_argument("--linger", type=float, default=1.0, help="wait after the publisher exits (s)")
    parser.add_argument("--cell-timeout", type=float, default=180.0)
    parser.add_argument("--out", type=Path, default=REPO / "out" / "large_messages.json")
    parser.add_argument("--node", type=parse_size, metavar="WxH",
                        help="instead: cadfd_node itself at this input size, default transports vs the profile on "
                             "the node only, to a best-effort subscriber here; --count frames (one at a time)")
    args = parser.parse_args(argv)
    if args.role == "sub":
        return run_subscriber(args)
    if args.role == "pub":
        return run_publisher(args)
    if args.node:
        rows = {setting: run_node_check(args.node, args.count, setting == "profile on the node")
                for setting in ("default", "profile on the node")}
        print(f"| cadfd_node {args.node[0]}x{args.node[1]} mono8 -> best-effort subscriber | "
              + " | ".join(NODE_TOPICS) + " |")
        print("|---|" + "---|" * len(NODE_TOPICS))
        for setting, counts in rows.items():
            print(f"| {setting} | " + " | ".join(f"{counts[t][0]}/{counts[t][1]}" for t in NODE_TOPICS) + " |")
        return 0

    settings = [s for s in args.settings.split(",") if s]
    for s in settings:
        for end in s.split("/", 1):
            if end not in SETTINGS and not (end.startswith("shm") and end[3:].isdigit()):
                parser.error(f"unknown setting {end!r}; choose from {', '.join(SETTINGS)}, shm<MiB>, PUB/SUB")
    if not args.kinds or len(args.kinds) != len(set(args.kinds)):
        parser.error(f"--kinds takes a comma list of {', '.join(KINDS)}")
    for item in args.env:
        if "=" not in item or not item.split("=", 1)[0]:
            parser.error(f"--env {item!r} is not KEY=VALUE")
    pairs = [tuple(p.split(":")) for p in args.pairs.split(",") if p]
    for pair in pairs:
        if len(pair) != 2 or any(q not in QOS_NAMES for q in pair):
            parser.error(f"pair {':'.join(pair)!r} is not PUB:SUB with each one of {', '.join(QOS_NAMES)}")
        if pair == ("best_effort", "reliable"):
            parser.error("best_effort:reliable never matches (a reliable reader needs a reliable writer)")
    domain = args.domain or random.Random(time.time_ns() ^ os.getpid()).randint(150, 230)
    cells: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="large_msg_") as tmp:
        for setting in settings:
            for pub_qos, sub_qos in pairs:
                name = f"{setting} {'BE' if pub_qos == 'best_effort' else 'R'}->{'BE' if sub_qos == 'best_effort' else 'R'}"
                repeat = sum(1 for n in cells if n == name or n.startswith(name + " #"))
                name += f" #{repeat + 1}" if repeat else ""  # a setting given twice is a repeat run
                print(f"cell {name} ...", file=sys.stderr, flush=True)
                cells[name] = run_cell(args, setting, pub_qos, sub_qos, domain, Path(tmp))
                if "error" in cells[name]:
                    print(f"  {cells[name]['error']}", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "host_cpus": os.cpu_count(),
              "load_avg": os.getloadavg(), "count": args.count, "rate": args.rate, "cells": cells}
    args.out.write_text(json.dumps(record, indent=1))
    print(markdown_table(args, cells))
    print(f"\n{args.count} frames per size at {args.rate:g} Hz; load average {os.getloadavg()[0]:.1f}; "
          f"raw results in {args.out}")
    return 1 if any("error" in c for c in cells.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
