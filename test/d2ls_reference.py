"""A reference port of depthimage_to_laserscan, for the tests only.

Written line by line from the C++ of ros-perception/depthimage_to_laserscan (ros2 branch:
``DepthImageToLaserScan::convert_msg``, ``convert<T>``, ``use_point``, ``angle_between_rays``,
``magnitude_of_ray``, ``DepthTraits``) and the parts of image_geometry's PinholeCameraModel it
calls (``fromCameraInfo``'s distortion state, ``rectifyPoint``, ``projectPixelTo3dRay``, ``cx()``
... from P). Plain per-pixel loops, float and double kept where the C++ has them (numpy float32
scalars for ``float``, Python floats for ``double``). It deliberately shares no code with the
vectorised ``cadfd_ros.ros.conversions``, and decodes the message bytes itself.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

f32 = np.float32


# ------------------------------------------------------------------ image_geometry (the parts used)
class PinholeCameraModel:
    def __init__(self, info) -> None:
        self.info = info
        self.P = [float(v) for v in info.p]
        model = info.distortion_model
        if model in ("plumb_bob", "rational_polynomial", "equidistant"):
            self.distortion_state = "CALIBRATED" if any(d != 0 for d in info.d) else "NONE"
        else:
            self.distortion_state = "UNKNOWN"

    def fx(self) -> float:
        return self.P[0]

    def cx(self) -> float:
        return self.P[2]

    def cy(self) -> float:
        return self.P[6]

    def rectifyPoint(self, uv_raw: tuple[float, float]) -> tuple[float, float]:
        if self.distortion_state == "NONE":
            return uv_raw
        if self.distortion_state == "UNKNOWN":
            raise RuntimeError("Cannot call rectifyPoint when distortion is unknown.")
        import cv2

        raw32 = np.array([[[uv_raw[0], uv_raw[1]]]], np.float32)  # cv::Point2f
        K = np.array(self.info.k, np.float64).reshape(3, 3)
        R = np.array(self.info.r, np.float64).reshape(3, 3)
        P = np.array(self.info.p, np.float64).reshape(3, 4)
        D = np.array(self.info.d, np.float64)
        if self.info.distortion_model == "equidistant":
            rect32 = cv2.fisheye.undistortPoints(raw32, K, D, R=R, P=P)
        else:
            rect32 = cv2.undistortPoints(raw32, K, D, R=R, P=P)
        return float(rect32[0, 0, 0]), float(rect32[0, 0, 1])

    def projectPixelTo3dRay(self, uv_rect: tuple[float, float]) -> tuple[float, float, float]:
        fx, fy, cx, cy, Tx, Ty = self.P[0], self.P[5], self.P[2], self.P[6], self.P[3], self.P[7]
        return ((uv_rect[0] - cx - Tx) / fx, (uv_rect[1] - cy - Ty) / fy, 1.0)


# ------------------------------------------------------------------ DepthImageToLaserScan
def magnitude_of_ray(ray) -> float:
    return math.sqrt(math.pow(ray[0], 2.0) + math.pow(ray[1], 2.0) + math.pow(ray[2], 2.0))


def angle_between_rays(ray1, ray2) -> float:
    dot_product = ray1[0] * ray2[0] + ray1[1] * ray2[1] + ray1[2] * ray2[2]
    magnitude1 = magnitude_of_ray(ray1)
    magnitude2 = magnitude_of_ray(ray2)
    return math.acos(dot_product / (magnitude1 * magnitude2))


def use_point(new_value: np.float32, old_value: np.float32, range_min: np.float32, range_max: np.float32) -> bool:
    new_finite = math.isfinite(new_value)
    old_finite = math.isfinite(old_value)
    if not new_finite and not old_finite:
        return not math.isnan(new_value)
    range_check = range_min <= new_value and new_value <= range_max
    if not range_check:
        return False
    if not old_finite:
        return True
    return bool(new_value < old_value)


@dataclass
class Scan:
    frame_id: str
    stamp: tuple[int, int]
    angle_min: np.float32
    angle_max: np.float32
    angle_increment: np.float32
    time_increment: np.float32
    scan_time: np.float32
    range_min: np.float32
    range_max: np.float32
    ranges: list = field(default_factory=list)


def _pixels(depth_msg) -> tuple[list, bool]:
    """Rows of pixel values read from the raw bytes (step, endianness), and whether it is 16UC1."""
    if depth_msg.encoding == "16UC1":
        dtype, uint16 = np.dtype(">u2" if depth_msg.is_bigendian else "<u2"), True
    elif depth_msg.encoding == "32FC1":
        dtype, uint16 = np.dtype(">f4" if depth_msg.is_bigendian else "<f4"), False
    else:
        raise RuntimeError(f"Depth image has unsupported encoding: {depth_msg.encoding}")
    data = bytes(depth_msg.data)
    rows = []
    for v in range(depth_msg.height):
        start = v * depth_msg.step
        row = np.frombuffer(data[start: start + depth_msg.width * dtype.itemsize], dtype)
        rows.append([np.uint16(x) if uint16 else np.float32(x) for x in row])
    return rows, uint16


def convert_msg(depth_msg, info_msg, scan_time: float = 0.033, range_min: float = 0.45, range_max: float = 10.0,
                scan_height: int = 1, output_frame_id: str = "") -> Scan:
    cam_model = PinholeCameraModel(info_msg)

    left_ray = cam_model.projectPixelTo3dRay(cam_model.rectifyPoint((0.0, cam_model.cy())))
    right_ray = cam_model.projectPixelTo3dRay(cam_model.rectifyPoint((float(depth_msg.width - 1), cam_model.cy())))
    center_ray = cam_model.projectPixelTo3dRay(cam_model.rectifyPoint((cam_model.cx(), cam_model.cy())))

    angle_max = angle_between_rays(left_ray, center_ray)
    angle_min = -angle_between_rays(center_ray, right_ray)

    scan = Scan(
        frame_id=output_frame_id if len(output_frame_id) > 0 else depth_msg.header.frame_id,
        stamp=(depth_msg.header.stamp.sec, depth_msg.header.stamp.nanosec),
        angle_min=f32(angle_min), angle_max=f32(angle_max), angle_increment=f32(0),
        time_increment=f32(0.0), scan_time=f32(scan_time), range_min=f32(range_min), range_max=f32(range_max),
    )
    scan.angle_increment = (scan.angle_max - scan.angle_min) / f32(depth_msg.width - 1)

    if float(scan_height) / 2.0 > cam_model.cy() or float(scan_height) / 2.0 > depth_msg.height - cam_model.cy():
        raise RuntimeError(f"scan_height ( {scan_height} pixels) is too large for the image height.")

    scan.ranges = [f32(math.nan)] * depth_msg.width
    rows, uint16 = _pixels(depth_msg)
    convert(rows, uint16, depth_msg.width, cam_model, scan, scan_height)
    return scan


def convert(rows: list, uint16: bool, width: int, cam_model: PinholeCameraModel, scan: Scan, scan_height: int) -> None:
    center_x = f32(cam_model.cx())

    # DepthTraits<T>::toMeters(T(1)): uint16 -> 1 * 0.001f (float); float -> 1.0f
    unit_scaling = float(f32(1) * f32(0.001)) if uint16 else 1.0
    constant_x = f32(unit_scaling / cam_model.fx())

    offset = int(cam_model.cy() - float(scan_height) / 2.0)
    for v in range(offset, offset + scan_height):
        depth_row = rows[v]
        for u in range(width):
            depth = depth_row[u]

            r = float(depth)  # Assign to pass through NaNs and Infs
            th = -math.atan2(float(f32(u) - center_x) * float(constant_x), unit_scaling)
            index = int((th - float(scan.angle_min)) / float(scan.angle_increment))
            assert 0 <= index < width, f"index {index} out of the scan (the C++ would write out of bounds)"

            valid = depth != 0 if uint16 else math.isfinite(depth)
            if valid:
                x = float((f32(u) - center_x) * f32(depth) * constant_x)
                z = float(f32(depth) * f32(0.001)) if uint16 else float(depth)
                r = math.sqrt(math.pow(x, 2.0) + math.pow(z, 2.0))

            if use_point(f32(r), scan.ranges[index], scan.range_min, scan.range_max):
                scan.ranges[index] = f32(r)


def assert_same_scan(ours, theirs: Scan) -> None:
    """A sensor_msgs/LaserScan against the reference's: float32 fields bit for bit, the same NaN
    and +-Inf pattern, finite ranges within 1e-6 m."""
    assert ours.header.frame_id == theirs.frame_id
    assert (ours.header.stamp.sec, ours.header.stamp.nanosec) == theirs.stamp
    # float32 fields: bit for bit.
    for name in ("angle_min", "angle_max", "angle_increment", "time_increment", "scan_time", "range_min",
                 "range_max"):
        assert np.float32(getattr(ours, name)) == getattr(theirs, name), name
    mine = np.asarray(ours.ranges, np.float32)
    expected = np.asarray(theirs.ranges, np.float32)
    assert mine.shape == expected.shape == (len(theirs.ranges),)
    np.testing.assert_array_equal(np.isnan(mine), np.isnan(expected), err_msg="NaN pattern")
    np.testing.assert_array_equal(np.isposinf(mine), np.isposinf(expected), err_msg="+Inf pattern")
    np.testing.assert_array_equal(np.isneginf(mine), np.isneginf(expected), err_msg="-Inf pattern")
    finite = np.isfinite(expected)
    np.testing.assert_allclose(mine[finite], expected[finite], rtol=0, atol=1e-6)
