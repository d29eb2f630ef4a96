"""``cadfd bag IN OUT``: run the node's pipeline over a rosbag2 and write a bag with the outputs added.

Every input connection and message is copied unchanged; for each frame on the image topic the
same per-frame code as ``cadfd_node`` (``cadfd_ros.ros.processing``) adds depth/image,
depth/camera_info, points, scan, aif/image, aif/camera_info, confidence/image and (when
cadfd_ros_interfaces is built) cadfd_node/info, all with the input frame's stamp. Offline,
no frame is dropped, so the scan's scan_time is the bag's frame period. Outputs are written at the input message's log time so replay keeps
the original timing.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from cadfd_ros.params import INPUT, OUTPUT, SOLVER, add_cli_arguments

    p = subparsers.add_parser(
        "bag",
        help="reconstruct every frame of a rosbag2 (mcap or sqlite3) and write a bag with the outputs added",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", type=Path, help="input rosbag2 folder (mcap or sqlite3)")
    p.add_argument("output", type=Path, help="output rosbag2 folder (must not exist)")
    p.add_argument("--image-topic", help="coded capture topic (default: the bag's only sensor_msgs/msg/Image topic)")
    p.add_argument("--camera-info-topic",
                   help="camera info topic (default: <image topic's namespace>/camera_info if present; "
                        "without one, intrinsics come from the PSF bank)")
    p.add_argument("--output-namespace",
                   help="prefix of the output topics (default: the image topic's namespace, like a node "
                        "running in the camera's namespace)")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), help="output storage (default: same as input)")
    # the node's solver, input and output parameters, same names and defaults (cadfd_ros.params)
    add_cli_arguments(p, (INPUT, SOLVER, OUTPUT))
    p.add_argument("--max-frames", type=int, default=0, help="stop reconstructing after N frames (0 = all)")
    p.set_defaults(func=run)


def _namespace(topic: str) -> str:
    return topic.rsplit("/", 1)[0] if "/" in topic.strip("/") else ""


def _pick_image_topic(connections: list, requested: str | None) -> str:
    images = sorted({c.topic for c in connections if c.msgtype == "sensor_msgs/msg/Image"})
    if requested:
        types = {c.msgtype for c in connections if c.topic == requested}
        if not types:
            raise ValueError(f"image topic {requested} not in the bag (image topics: {', '.join(images) or 'none'})")
        if types != {"sensor_msgs/msg/Image"}:
            raise ValueError(f"--image-topic {requested} carries {', '.join(sorted(types))}, not sensor_msgs/msg/Image "
                             f"(image topics: {', '.join(images) or 'none'})")
        return requested
    if len(images) != 1:
        raise ValueError(
            f"the bag has {len(images)} sensor_msgs/msg/Image topics ({', '.join(images) or 'none'}); "
            "choose one with --image-topic"
        )
    return images[0]


def run(args: argparse.Namespace) -> int:
    from rclpy.serialization import deserialize_message, serialize_message
    from rosbags.rosbag2 import Reader, ReaderError, StoragePlugin, Writer
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore
    from sensor_msgs.msg import CameraInfo, Image

    from cadfd_ros.commands.reconstruct import warn_ignored_flags
    from cadfd_ros.errors import CadfdError, InputImageError
    from cadfd_ros.params import INPUT, OUTPUT, SOLVER, values_from_args
    from cadfd_ros.ros.mailbox import CameraInfoBuffer
    from cadfd_ros.ros.parameters import build_processor, output_settings
    from cadfd_ros.ros.qos import driver_qos, info_qos, to_rosbag_qos

    if args.output.exists():
        raise ValueError(f"output {args.output} already exists; choose a new folder")
    if not args.input.exists():
        raise FileNotFoundError(f"input bag {args.input} not found")
    if not (args.input / "metadata.yaml").is_file():
        raise CadfdError(f"input bag {args.input}: a rosbag2 is a folder with a metadata.yaml and its storage files")
    if args.max_frames < 0:
        raise CadfdError(f"--max-frames {args.max_frames}: must be 0 (all frames) or more")
    try:  # before the solver is built: a folder that is no bag is one line, not a traceback
        with Reader(args.input):
            pass
    except ReaderError as exc:
        raise CadfdError(f"input bag {args.input}: not a readable rosbag2 ({' '.join(str(exc).split())})") from None
    values = values_from_args(args, (INPUT, SOLVER, OUTPUT))
    settings = output_settings(values)
    warn_ignored_flags(values)
    processor = build_processor(values)  # the node's own construction: same bank, downscale and config

    typestore = get_typestore(Stores.ROS2_KILTED)
    info_type_name = "cadfd_ros_interfaces/msg/ReconstructionInfo"
    if processor.info_type is not None:
        msg_file = Path(__file__).resolve().parents[2] / "msg" / "ReconstructionInfo.msg"
        if not msg_file.is_file():  # installed layout: share/cadfd_ros/msg
            msg_file = Path(sys.prefix) / "share" / "cadfd_ros" / "msg" / "ReconstructionInfo.msg"
        if msg_file.is_file():
            typestore.register(get_types_from_msg(msg_file.read_text(), info_type_name))
        else:
            print(f"cadfd bag: {msg_file.name} not found; info topic not written", file=sys.stderr)
            processor.info_type = None

    with Reader(args.input) as reader:
        connections = list(reader.connections)
        image_topic = _pick_image_topic(connections, args.image_topic)
        info_topic = args.camera_info_topic
        if info_topic is None:
            guess = f"{_namespace(image_topic)}/camera_info"
            info_topic = guess if any(c.topic == guess for c in connections) else None
        elif not any(c.topic == info_topic for c in connections):
            raise ValueError(f"camera info topic {info_topic} not in the bag")
        elif {c.msgtype for c in connections if c.topic == info_topic} != {"sensor_msgs/msg/CameraInfo"}:
            raise ValueError(f"--camera-info-topic {info_topic} carries "
                             f"{', '.join(sorted({c.msgtype for c in connections if c.topic == info_topic}))}, "
                             "not sensor_msgs/msg/CameraInfo")
        # Pairing as the node does (CameraInfoBuffer): the camera_info with the image's stamp, wherever the
        # recording logged it (often just after the image), else the newest logged before it of the image's size.
        infos_by_stamp: dict[tuple[int, int], bytes] = {}  # serialised: an hour at 30 Hz is tens of MB
        if info_topic is not None:
            info_conns = [c for c in connections if c.topic == info_topic]
            for _, _, raw in reader.messages(connections=info_conns):
                stamp = deserialize_message(bytes(raw), CameraInfo).header.stamp
                infos_by_stamp[(stamp.sec, stamp.nanosec)] = bytes(raw)
        ns = (args.output_namespace if args.output_namespace is not None else _namespace(image_topic)).rstrip("/")
        storage = args.storage or ("mcap" if any(args.input.glob("*.mcap")) or args.input.suffix == ".mcap" else "sqlite3")
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3

        with Writer(args.output, version=9, storage_plugin=plugin) as writer:
            copied = {}
            for conn in connections:
                # Keep the bag's own definition; older bags (rosbag2 < v9) have none, so take
                # it from the typestore where the type is known there.
                msgdef = conn.msgdef.data if conn.msgdef is not None and conn.msgdef.data else None
                known = msgdef is None and conn.msgtype in typestore.types
                copied[conn.id] = writer.add_connection(
                    conn.topic, conn.msgtype, msgdef=msgdef, rihs01=(conn.digest or None) if msgdef else None,
                    typestore=typestore if known else None,
                    serialization_format=conn.ext.serialization_format,
                    offered_qos_profiles=conn.ext.offered_qos_profiles,
                )
            outputs = {
                "depth": (f"{ns}/depth/image", "sensor_msgs/msg/Image"),
                "depth_info": (f"{ns}/depth/camera_info", "sensor_msgs/msg/CameraInfo"),
                "points": (f"{ns}/points", "sensor_msgs/msg/PointCloud2"),
                "aif": (f"{ns}/aif/image", "sensor_msgs/msg/Image"),
                "aif_info": (f"{ns}/aif/camera_info", "sensor_msgs/msg/CameraInfo"),
                "confidence": (f"{ns}/confidence/image", "sensor_msgs/msg/Image"),
                "scan": (f"{ns}/scan", "sensor_msgs/msg/LaserScan"),
            }
            if processor.info_type is not None:
                outputs["info"] = (f"{ns}/cadfd_node/info", info_type_name)
            out_conns = {}

            def out_conn(key: str):  # created lazily: a disabled output leaves no empty topic
                if key not in out_conns:
                    topic, msgtype = outputs[key]
                    # the node's publisher QoS, so a replay offers what the node would
                    qos = to_rosbag_qos(info_qos() if key == "info" else driver_qos())
                    out_conns[key] = writer.add_connection(topic, msgtype, typestore=typestore,
                                                           offered_qos_profiles=[qos])
                return out_conns[key]

            logged_infos = CameraInfoBuffer(wait_s=0.0)  # in log order, for frames without their own stamp's
            frames = done = bad = 0
            noted: set[str] = set()
            start = time.perf_counter()
            for conn, timestamp, raw in reader.messages():
                writer.write(copied[conn.id], timestamp, raw)
                if conn.topic == info_topic:
                    logged_infos.add(deserialize_message(bytes(raw), CameraInfo))
                    continue
                if conn.topic != image_topic or (args.max_frames and frames >= args.max_frames):
                    continue
                frames += 1
                image = deserialize_message(bytes(raw), Image)
                if not image.header.frame_id and not settings.output_frame_id and "frame_id" not in noted:
                    noted.add("frame_id")  # as the node's metadata check says it
                    print(f"cadfd bag: frame {frames} at t={timestamp}: empty frame_id; outputs use an empty "
                          "frame_id too (set --output-frame-id; reported once)", file=sys.stderr)
                stamp = image.header.stamp
                own = infos_by_stamp.get((stamp.sec, stamp.nanosec))
                camera_info = deserialize_message(own, CameraInfo) if own is not None else None
                if camera_info is None:
                    camera_info, passed_over = logged_infos.pair(stamp, -1e9, (int(image.width), int(image.height)))
                    for info_size in passed_over:
                        note = (f"camera_info of size {info_size[0]}x{info_size[1]} ignored for {image.width}x"
                                f"{image.height} frames (no camera_info of their size and stamp)")
                        if note not in noted:
                            noted.add(note)
                            print(f"cadfd bag: frame {frames} at t={timestamp}: {note}", file=sys.stderr)
                try:
                    out = processor.process(image, camera_info, settings)
                except InputImageError as exc:
                    bad += 1
                    print(f"cadfd bag: frame {frames} at t={timestamp} skipped: {exc}", file=sys.stderr)
                    continue
                except CadfdError as exc:
                    raise CadfdError(f"frame {frames} at t={timestamp}: {exc}") from exc
                for note in out.notes:  # an output left out (a scan_height too large): say so once
                    if note not in noted:
                        noted.add(note)
                        print(f"cadfd bag: frame {frames} at t={timestamp}: {note}", file=sys.stderr)
                for key in ("depth", "depth_info", "points", "scan", "aif", "aif_info", "confidence", "info"):
                    msg = getattr(out, key)
                    if msg is not None and key in outputs:
                        writer.write(out_conn(key), timestamp, serialize_message(msg))
                done += 1
                if done % 25 == 0:  # long bags: show it is moving
                    print(f"cadfd bag: {done} frames, {time.perf_counter() - start:.0f} s", file=sys.stderr)
                if out.intrinsics_source != "camera_info" and "intrinsics" not in noted:
                    noted.add("intrinsics")
                    where = f"no usable camera_info on {info_topic} for it" if info_topic else "no camera_info topic"
                    print(f"cadfd bag: frame {frames} at t={timestamp}: {where}; intrinsics from "
                          f"{out.intrinsics_source} (reported once)", file=sys.stderr)
    elapsed = time.perf_counter() - start
    if not frames:
        print(f"cadfd bag: warning: no messages on {image_topic}; the output is a copy of the input", file=sys.stderr)
    print(
        f"cadfd bag: {done} of {frames} frames on {image_topic} reconstructed ({bad} skipped) in {elapsed:.1f} s; "
        f"wrote {args.output} ({storage}) with "
        f"{', '.join(t for t, _ in (outputs[k] for k in out_conns)) or 'no outputs'}"
    )
    return 0 if done or not frames else 1
