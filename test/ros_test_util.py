"""Shared helpers for the ROS tests: simulated coded captures, raw Image encoding, a spinning harness.

Images are encoded by hand here (not with the code under test), so a decoding mistake in
cadfd_ros.ros.conversions cannot cancel out against an encoding mistake.
"""
from __future__ import annotations

import math
import os
import random
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

FX, FY, CX, CY = 150.0, 160.0, 60.5, 44.0  # deliberately not centred, fx != fy


def far_ray(far: float, info: Any, width: int) -> float:
    """The scan's default range_max: the longest ray that depth ``far`` gives over ``width`` columns, as
    depthimage_to_laserscan computes a range from P (far * sqrt(1 + tan^2) at the edge column), as float32."""
    fx, cx = float(info.p[0]), float(info.p[2])
    widest = max(abs(cx), abs(width - 1 - cx)) / fx
    return float(np.float32(far * math.sqrt(1 + widest**2) * (1 + 1e-6)))


def unique_domain_id() -> int:
    # Per-run DDS domain: parallel test runs on this machine must not see each other's topics.
    return random.Random(os.getpid() ^ time.time_ns()).randint(30, 200)


def small_bank(path: Path, layers: int = 6) -> Path:
    """A few layers of the bundled bank (same optics, faster solver) written to ``path``."""
    from cadfd_ros.optics.psf_bank import PSFBank, default_psf_bank_path, load_psf_bank, save_psf_bank

    bank = load_psf_bank(default_psf_bank_path())
    idx = np.unique(np.linspace(0, bank.num_layers - 1, layers).round().astype(int))
    save_psf_bank(PSFBank(bank.psfs[idx], bank.depths[idx], bank.metadata), path)
    return path


def simulated_capture(bank_path: Path | None, height: int = 96, width: int = 128, rgb: bool = False,
                      seed: int = 0, noise: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """(capture, true depth): textured scene, near plane on the left, far plane on the right, with Gaussian
    noise of ``noise`` as a camera has. Noiseless renders are no test of a sensor: there the solvers' noise
    model (each layer's noise-only energy subtracted) has no noise to explain, and a mono render read its near
    plane at the far end."""
    from cadfd_ros.forward import render_occlusion_aware
    from cadfd_ros.optics.psf_bank import default_psf_bank_path, load_psf_bank

    bank = load_psf_bank(bank_path or default_psf_bank_path())
    rng = np.random.default_rng(seed)
    coarse = rng.random((height // 4 + 1, width // 4 + 1, 3 if rgb else 1))
    texture = np.kron(coarse, np.ones((4, 4, 1)))[:height, :width]
    texture = 0.15 + 0.7 * (0.6 * texture + 0.4 * rng.random(texture.shape))
    image = texture.astype(np.float32) if rgb else texture[:, :, 0].astype(np.float32)
    depth = np.full((height, width), float(bank.depths[-2]), np.float32)
    depth[:, : width // 2] = float(bank.depths[1])
    capture = render_occlusion_aware(image, depth, bank)
    capture = capture + noise * rng.standard_normal(capture.shape)
    return np.clip(capture, 0, 1).astype(np.float32), depth


def bayer_mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """Sample an H x W x 3 image into a Bayer mosaic; ``pattern`` like 'rggb' (2x2, row-major)."""
    index = {"r": 0, "g": 1, "b": 2}
    out = np.empty(rgb.shape[:2], rgb.dtype)
    for k, colour in enumerate(pattern):
        dy, dx = divmod(k, 2)
        out[dy::2, dx::2] = rgb[dy::2, dx::2, index[colour]]
    return out


def encode(capture: np.ndarray, encoding: str) -> tuple[bytes, int, int]:
    """(data, step, channels) of a linear [0,1] capture in ``encoding`` (little-endian)."""
    rgb = capture if capture.ndim == 3 else np.repeat(capture[:, :, None], 3, axis=2)
    mono = capture if capture.ndim == 2 else capture.mean(axis=2)
    to8 = lambda a: np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)  # noqa: E731
    to16 = lambda a: np.round(np.clip(a, 0, 1) * 65535).astype("<u2")  # noqa: E731
    alpha = np.ones(rgb.shape[:2] + (1,), np.float32)
    arrays = {
        "mono8": lambda: to8(mono),
        "mono16": lambda: to16(mono),
        "rgb8": lambda: to8(rgb),
        "bgr8": lambda: to8(rgb[:, :, ::-1]),
        "rgba8": lambda: to8(np.concatenate([rgb, alpha], axis=2)),
        "bgra8": lambda: to8(np.concatenate([rgb[:, :, ::-1], alpha], axis=2)),
        "rgb16": lambda: to16(rgb),
        "bgr16": lambda: to16(rgb[:, :, ::-1]),
        "rgba16": lambda: to16(np.concatenate([rgb, alpha], axis=2)),
        "bgra16": lambda: to16(np.concatenate([rgb[:, :, ::-1], alpha], axis=2)),
    }
    if encoding in arrays:
        array = np.ascontiguousarray(arrays[encoding]())
    elif encoding.startswith("bayer_"):
        pattern, bits = encoding[6:10], encoding[10:]
        array = np.ascontiguousarray((to8 if bits == "8" else to16)(bayer_mosaic(rgb, pattern)))
    else:
        raise ValueError(encoding)
    height, width = array.shape[:2]
    return array.tobytes(), array.nbytes // height, 1 if array.ndim == 2 else array.shape[2]


def image_msg(capture: np.ndarray, encoding: str, stamp: tuple[int, int], frame_id: str) -> Any:
    from sensor_msgs.msg import Image

    data, step, _ = encode(capture, encoding)
    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = capture.shape[:2]
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = step
    msg.data = data
    return msg


def camera_info_msg(width: int, height: int, stamp: tuple[int, int], frame_id: str,
                    fx: float = FX, fy: float = FY, cx: float = CX, cy: float = CY) -> Any:
    from sensor_msgs.msg import CameraInfo

    info = CameraInfo()
    info.header.stamp.sec, info.header.stamp.nanosec = stamp
    info.header.frame_id = frame_id
    info.width, info.height = width, height
    info.distortion_model = "plumb_bob"
    info.d = [0.0] * 5
    info.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.p = [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


def depth_array(msg: Any) -> np.ndarray:
    """REP 118 depth image as float32 metres with NaN invalid, decoded by hand."""
    if msg.encoding == "32FC1":
        assert msg.step == 4 * msg.width, f"32FC1 step {msg.step} != 4*{msg.width}"
        return np.frombuffer(bytes(msg.data), "<f4").reshape(msg.height, msg.width).copy()
    assert msg.encoding == "16UC1", msg.encoding
    assert msg.step == 2 * msg.width
    mm = np.frombuffer(bytes(msg.data), "<u2").reshape(msg.height, msg.width)
    out = mm.astype(np.float32) / 1000.0
    out[mm == 0] = np.nan
    return out


def cloud_xyz(msg: Any) -> np.ndarray:
    """H x W x 3 float32 from an organised PointCloud2 (fields x, y, z at 0, 4, 8)."""
    assert not msg.is_bigendian
    raw = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.row_step)
    rows = raw[:, : msg.width * msg.point_step].reshape(msg.height, msg.width, msg.point_step)
    return np.ascontiguousarray(rows[:, :, :12]).view("<f4").reshape(msg.height, msg.width, 3)


class Collector:
    """Thread-safe per-topic message lists with a wait helper."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.messages: dict[str, list] = {}

    def callback(self, topic: str) -> Callable[[Any], None]:
        def store(msg: Any) -> None:
            with self._cond:
                self.messages.setdefault(topic, []).append(msg)
                self._cond.notify_all()

        return store

    def wait_for(self, topic: str, predicate: Callable[[Any], bool] = lambda m: True, timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for msg in self.messages.get(topic, []):
                    if predicate(msg):
                        return msg
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = len(self.messages.get(topic, []))
                    raise AssertionError(f"no matching message on {topic} within {timeout} s ({seen} seen)")
                self._cond.wait(left)

    def clear(self) -> None:
        with self._cond:
            self.messages.clear()


def diagnostic_values(array: Any, name_part: str) -> dict[str, dict[str, str]]:
    """{status name: {key: value, '_level': level, '_message': message}} for statuses containing name_part."""
    out = {}
    for status in array.status:
        if name_part in status.name:
            values = {kv.key: kv.value for kv in status.values}
            values["_level"] = int.from_bytes(status.level, "little") if isinstance(status.level, bytes) else int(status.level)
            values["_message"] = status.message
            out[status.name] = values
    return out


def client_node(domain: int, name: str) -> tuple[Any, Any]:
    """A fresh rclpy context on ``domain`` and one plain node in it, for a client of a node process."""
    import rclpy

    context = rclpy.context.Context()
    rclpy.init(context=context, domain_id=domain)
    return context, rclpy.create_node(name, context=context)


def stop_client(executor: Any, node: Any, context: Any, process: Any) -> None:
    """Undo ``client_node`` and stop the node process with SIGINT (killed after 10 s)."""
    import signal
    import subprocess

    import rclpy

    executor.shutdown(timeout_sec=2)
    node.destroy_node()
    rclpy.shutdown(context=context)
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


def call_service(client: Any, request: Any, timeout: float = 30.0, attempt_s: float = 5.0,
                 resend: bool = True) -> Any:
    """The response to ``request`` from a client spun elsewhere; an idempotent request is resent.

    Fast DDS drops a response whose client reader the server has not matched within 100 ms of sending
    ("failed to send response (timeout): client will not receive response", rmw_fastrtps #467): on a
    loaded machine a client's first call can get no answer although ``wait_for_service`` passed.
    """
    assert client.wait_for_service(timeout_sec=timeout), f"service {client.srv_name} not available"
    deadline = time.monotonic() + timeout
    while True:
        future = client.call_async(request)
        attempt_end = min(deadline, time.monotonic() + (attempt_s if resend else timeout))
        while not future.done() and time.monotonic() < attempt_end:
            time.sleep(0.01)
        if future.done():
            return future.result()
        client.remove_pending_request(future)
        assert resend and time.monotonic() < deadline, f"{client.srv_name} did not answer in {timeout} s"


def prime_lifecycle_clients(get_state: Any, change_state: Any) -> None:
    """Round-trip both lifecycle clients with requests that change nothing, resent until answered, so
    later calls (a timed or non-idempotent transition) do not meet Fast DDS's unmatched first response.
    A transition named by an unknown label is answered ``success=False`` and leaves the state alone."""
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState

    call_service(get_state, GetState.Request())
    no_op = ChangeState.Request(transition=Transition(label="cadfd_test_no_such_transition"))
    assert not call_service(change_state, no_op).success
