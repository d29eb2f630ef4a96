"""``cadfd bag``: a rosbag2 in (mcap and sqlite3), the same bag plus the node's outputs out.
The output is read back with rosbags' own deserializer, so the stored message definitions are
checked independently of rclpy."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed")
pytest.importorskip("rosbags", reason="rosbags is not installed")

from rclpy.serialization import serialize_message  # noqa: E402
from rosbags.rosbag2 import Reader, StoragePlugin, Writer  # noqa: E402
from rosbags.typesys import Stores, get_types_from_msg, get_typestore  # noqa: E402

from cadfd_ros.cli import main as cli_main  # noqa: E402
from ros_test_util import CX, FX, camera_info_msg, far_ray, image_msg, simulated_capture, small_bank  # noqa: E402

pytestmark = pytest.mark.ros
H, W = 96, 128
STAMPS = [(100, 5), (101, 7)]


def write_input(path: Path, plugin: StoragePlugin, bank: Path) -> np.ndarray:
    """Two frames of the simulated capture (and an unrelated topic); returns the scene's true depth."""
    typestore = get_typestore(Stores.ROS2_KILTED)
    capture, truth = simulated_capture(bank, H, W, rgb=True)
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        info = writer.add_connection("/cam/camera_info", "sensor_msgs/msg/CameraInfo", typestore=typestore)
        image = writer.add_connection("/cam/image_raw", "sensor_msgs/msg/Image", typestore=typestore)
        other = writer.add_connection("/chatter", "std_msgs/msg/String", typestore=typestore)
        for sec, nsec in STAMPS:
            t = sec * 10**9 + nsec
            writer.write(info, t, serialize_message(camera_info_msg(W, H, (sec, nsec), "cam_optical")))
            writer.write(image, t + 1, serialize_message(image_msg(capture, "bgr8", (sec, nsec), "cam_optical")))
        from std_msgs.msg import String

        writer.write(other, 10**9, serialize_message(String(data="kept")))
    return truth


@pytest.mark.parametrize("storage,encoding", [("mcap", "32FC1"), ("sqlite3", "16UC1")])
def test_bag_adds_outputs_and_copies_input(tmp_path, storage, encoding):
    bank = small_bank(tmp_path / "bank6.npz")
    src, dst = tmp_path / "in", tmp_path / "out"
    truth = write_input(src, StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3, bank)
    code = cli_main(["bag", str(src), str(dst), "--psf-bank", str(bank), "--device", "cpu",
                     "--depth-encoding", encoding])
    assert code == 0
    assert any(dst.glob("*.mcap" if storage == "mcap" else "*.db3"))

    typestore = get_typestore(Stores.ROS2_KILTED)
    msg_file = Path(__file__).resolve().parents[1] / "msg" / "ReconstructionInfo.msg"
    typestore.register(get_types_from_msg(msg_file.read_text(), "cadfd_ros_interfaces/msg/ReconstructionInfo"))
    by_topic: dict[str, list] = {}
    with Reader(dst) as reader:
        for conn, timestamp, raw in reader.messages():
            by_topic.setdefault(conn.topic, []).append((timestamp, typestore.deserialize_cdr(raw, conn.msgtype)))

    # Input copied unchanged.
    assert len(by_topic["/cam/image_raw"]) == 2 and len(by_topic["/cam/camera_info"]) == 2
    assert by_topic["/chatter"][0][1].data == "kept"
    # Outputs under the camera's namespace, one per frame, with the input stamps.
    for topic in ("/cam/depth/image", "/cam/depth/camera_info", "/cam/points", "/cam/scan", "/cam/aif/image",
                  "/cam/aif/camera_info", "/cam/confidence/image", "/cam/cadfd_node/info"):
        stamps = [(m.header.stamp.sec, m.header.stamp.nanosec) for _, m in by_topic.get(topic, [])]
        assert stamps == STAMPS, f"{topic}: {stamps}"
        assert all(m.header.frame_id == "cam_optical" for _, m in by_topic[topic])
    # Written at the image's log time, so replay keeps the timing.
    assert [t for t, _ in by_topic["/cam/depth/image"]] == [s * 10**9 + n + 1 for s, n in STAMPS]

    depth = by_topic["/cam/depth/image"][0][1]
    assert depth.encoding == encoding and (depth.height, depth.width) == (H, W)
    if encoding == "32FC1":
        metres = np.frombuffer(depth.data.tobytes(), "<f4").reshape(H, W)
    else:
        mm = np.frombuffer(depth.data.tobytes(), "<u2").reshape(H, W).astype(np.float32)
        metres = np.where(mm > 0, mm / 1000.0, np.nan)
    # the scene's two planes, read back through the bag: most pixels within delta<1.25 of the truth
    # away from the border and the step between them, and the near half nearer than the far half
    inner = np.zeros((H, W), bool)
    inner[8:-8, 8 : W // 2 - 8] = inner[8:-8, W // 2 + 8 : -8] = True
    right = np.maximum(metres / truth, truth / metres) < 1.25
    assert right[inner].mean() > 0.7  # 0.81 measured
    assert np.nanmedian(metres[:, : W // 2]) < np.nanmedian(metres[:, W // 2 :])
    info = by_topic["/cam/depth/camera_info"][0][1]
    assert info.k[0] == FX and info.k[2] == CX
    cloud = by_topic["/cam/points"][0][1]
    assert (cloud.height, cloud.width, cloud.point_step) == (H, W, 16)
    rinfo = by_topic["/cam/cadfd_node/info"][0][1]
    assert rinfo.method == "classical" and rinfo.valid_fraction == pytest.approx(np.isfinite(metres).mean(), abs=1e-6)
    # The scan, one range per column, with the bank's range; offline no frame is dropped, so
    # scan_time is the bag's frame period (0 for the first frame).
    scans = [m for _, m in by_topic["/cam/scan"]]
    far = far_ray(5.0, by_topic["/cam/depth/camera_info"][0][1], W)  # the longest ray of the bank's 5 m
    assert all(len(m.ranges) == W and m.range_min == 0.5 and m.range_max == far for m in scans)
    assert scans[0].scan_time == 0.0 and scans[1].scan_time == pytest.approx(1.000000002, abs=1e-6)
    assert np.isfinite(scans[0].ranges).mean() > 0.5


def test_bag_pairs_camera_info_by_stamp_as_the_node_does(tmp_path, capsys):
    """Recordings often log a camera_info just after its image, and may carry a stray one of another size:
    each frame takes the camera_info of its own stamp; a frame without one takes the newest of its size, a
    stray size is ignored and reported; and the outputs offer the node's QoS."""
    bank = small_bank(tmp_path / "bank6.npz")
    src, dst = tmp_path / "in", tmp_path / "out"
    typestore = get_typestore(Stores.ROS2_KILTED)
    capture, _ = simulated_capture(bank, H, W, rgb=True)
    stamps = [*STAMPS, (102, 9)]  # the third frame has no camera_info of its own
    focal = {STAMPS[0]: FX, STAMPS[1]: 1.25 * FX}
    with Writer(src, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        info = writer.add_connection("/cam/camera_info", "sensor_msgs/msg/CameraInfo", typestore=typestore)
        image = writer.add_connection("/cam/image_raw", "sensor_msgs/msg/Image", typestore=typestore)
        for sec, nsec in stamps:
            t = sec * 10**9 + nsec
            stray = camera_info_msg(64, 48, (sec - 1, 0), "cam_optical")  # another size, another stamp
            writer.write(info, t - 5, serialize_message(stray))
            writer.write(image, t, serialize_message(image_msg(capture, "bgr8", (sec, nsec), "cam_optical")))
            if (sec, nsec) in focal:
                f = focal[(sec, nsec)]
                own = camera_info_msg(W, H, (sec, nsec), "cam_optical", fx=f, fy=f)
                writer.write(info, t + 10**6, serialize_message(own))  # logged 1 ms after its image
    assert cli_main(["bag", str(src), str(dst), "--psf-bank", str(bank), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "camera_info of size 64x48 ignored for 128x96 frames" in err and "intrinsics from" not in err
    with Reader(dst) as reader:
        infos = [typestore.deserialize_cdr(raw, conn.msgtype) for conn, _, raw in reader.messages()
                 if conn.topic == "/cam/depth/camera_info"]
        qos = {conn.topic: conn.ext.offered_qos_profiles for conn in reader.connections}
    assert [(m.header.stamp.sec, m.header.stamp.nanosec, m.k[0]) for m in infos] == [
        (*STAMPS[0], FX), (*STAMPS[1], 1.25 * FX), (102, 9, 1.25 * FX)]
    (depth_qos,) = qos["/cam/depth/image"]
    assert (depth_qos.history.name, depth_qos.depth, depth_qos.reliability.name, depth_qos.durability.name) == (
        "KEEP_LAST", 1, "RELIABLE", "VOLATILE")
    assert qos["/cam/cadfd_node/info"][0].depth == 10


def test_bag_without_scan(tmp_path):
    bank = small_bank(tmp_path / "bank6.npz")
    src, dst = tmp_path / "in", tmp_path / "out"
    write_input(src, StoragePlugin.MCAP, bank)
    assert cli_main(["bag", str(src), str(dst), "--psf-bank", str(bank), "--device", "cpu", "--no-publish-scan",
                     "--no-publish-aif", "--no-publish-confidence", "--max-frames", "1"]) == 0
    counts: dict[str, int] = {}
    with Reader(dst) as reader:
        for conn, _, _ in reader.messages():
            counts[conn.topic] = counts.get(conn.topic, 0) + 1
    assert "/cam/scan" not in counts and "/cam/aif/image" not in counts and "/cam/confidence/image" not in counts
    # --max-frames 1 solves the first frame only; the input is still copied whole
    assert counts["/cam/depth/image"] == 1 and counts["/cam/points"] == 1
    assert counts["/cam/image_raw"] == 2 and counts["/cam/camera_info"] == 2


def test_bag_errors_name_the_problem(tmp_path, capsys):
    bank = small_bank(tmp_path / "bank6.npz")
    src = tmp_path / "in"
    write_input(src, StoragePlugin.MCAP, bank)
    assert cli_main(["bag", str(src), str(tmp_path / "o1"), "--image-topic", "/nope"]) == 2
    assert "/nope not in the bag" in capsys.readouterr().err
    for topic, carried in (("/chatter", "std_msgs/msg/String"), ("/cam/camera_info", "sensor_msgs/msg/CameraInfo")):
        assert cli_main(["bag", str(src), str(tmp_path / "o2"), "--image-topic", topic]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and f"--image-topic {topic} carries {carried}, not sensor_msgs/msg/Image" in err
        assert not (tmp_path / "o2").exists()
    assert cli_main(["bag", str(src), str(tmp_path / "o3"), "--camera-info-topic", "/chatter"]) == 2
    assert "--camera-info-topic /chatter carries std_msgs/msg/String" in capsys.readouterr().err
    nameless = tmp_path / "nameless"  # frames without a frame_id: said once, as the node says it
    with Writer(nameless, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection("/cam/image_raw", "sensor_msgs/msg/Image",
                                     typestore=get_typestore(Stores.ROS2_KILTED))
        capture, _ = simulated_capture(bank, H, W, rgb=True)
        for k, stamp in enumerate(STAMPS):
            writer.write(conn, k + 1, serialize_message(image_msg(capture, "bgr8", stamp, "")))
    assert cli_main(["bag", str(nameless), str(tmp_path / "o5"), "--psf-bank", str(bank), "--device", "cpu",
                     "--no-publish-scan"]) == 0
    assert capsys.readouterr().err.count("empty frame_id; outputs use an empty frame_id too") == 1
    silent = tmp_path / "silent"  # an image topic without messages: a warning, not a silent copy
    with Writer(silent, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        writer.add_connection("/cam/image_raw", "sensor_msgs/msg/Image", typestore=get_typestore(Stores.ROS2_KILTED))
    assert cli_main(["bag", str(silent), str(tmp_path / "o4"), "--psf-bank", str(bank), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "warning: no messages on /cam/image_raw; the output is a copy of the input" in captured.err
    assert "0 of 0 frames" in captured.out and "with no outputs" in captured.out
    (tmp_path / "exists").mkdir()
    assert cli_main(["bag", str(src), str(tmp_path / "exists")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_bag_input_that_is_no_bag_and_negative_max_frames_are_one_line_errors(tmp_path, capsys):
    a_file, empty, bad = tmp_path / "file.mcap", tmp_path / "empty", tmp_path / "bad"
    a_file.write_bytes(b"not a bag")
    empty.mkdir()
    bad.mkdir()
    (bad / "metadata.yaml").write_text("x: [\n")
    bank = small_bank(tmp_path / "bank6.npz")
    write_input(tmp_path / "in", StoragePlugin.MCAP, bank)
    for source, extra, message in ((a_file, [], "a rosbag2 is a folder with a metadata.yaml"),
                                   (empty, [], "a rosbag2 is a folder with a metadata.yaml"),
                                   (bad, [], "not a readable rosbag2 (Could not load YAML"),
                                   (tmp_path / "in", ["--max-frames", "-1"], "--max-frames -1")):
        out = tmp_path / f"out_{source.name}"
        assert cli_main(["bag", str(source), str(out), "--psf-bank", str(bank), "--device", "cpu", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and message in err, (source, err)
        assert not out.exists()
