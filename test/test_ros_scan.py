"""The scan against an independent port of depthimage_to_laserscan (test/d2ls_reference.py):
same angles, same NaN/Inf pattern, same ranges, for 32FC1 and 16UC1 depth with NaN, +-Inf and
out-of-range values, scan_height 1 and 5, default and custom range limits."""
from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("sensor_msgs", reason="the ROS message wheels are not installed")

from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

import d2ls_reference as ref  # noqa: E402
from cadfd_ros.errors import InputImageError  # noqa: E402
from cadfd_ros.ros.conversions import depth_image_to_laserscan, laserscan_angles  # noqa: E402

H, W = 24, 64


def info_msg(fx: float, cx: float, cy: float, fy: float | None = None, d: list[float] | None = None,
             model: str = "plumb_bob", width: int = W, height: int = H) -> CameraInfo:
    fy = fx if fy is None else fy
    info = CameraInfo()
    info.width, info.height = width, height
    info.distortion_model = model
    info.d = list(d) if d is not None else [0.0] * 5
    info.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.p = [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


def depth_msg(values: np.ndarray, encoding: str, pad: int = 0, big_endian: bool = False) -> Image:
    """Encoded by hand: little- or big-endian rows, ``pad`` bytes of padding after each."""
    dtype = {"32FC1": "f4", "16UC1": "u2"}[encoding]
    rows = np.asarray(values).astype((">" if big_endian else "<") + dtype)
    raw = np.zeros((rows.shape[0], rows.nbytes // rows.shape[0] + pad), np.uint8)
    raw[:, : rows.nbytes // rows.shape[0]] = rows.view(np.uint8).reshape(rows.shape[0], -1)
    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = 77, 880
    msg.header.frame_id = "cam_optical"
    msg.height, msg.width = rows.shape
    msg.encoding = encoding
    msg.is_bigendian = int(big_endian)
    msg.step = raw.shape[1]
    msg.data = raw.tobytes()
    return msg


def scene(seed: int, lo: float = 0.3, hi: float = 6.0) -> np.ndarray:
    """Depth in metres, partly outside any range limit, with NaN, +Inf and -Inf sprinkled in,
    and runs of them, so whole scan bins see only invalid values."""
    rng = np.random.default_rng(seed)
    depth = rng.uniform(lo, hi, (H, W)).astype(np.float32)
    special = rng.random((H, W))
    depth[special < 0.12] = np.nan
    depth[(special >= 0.12) & (special < 0.2)] = np.inf
    depth[(special >= 0.2) & (special < 0.26)] = -np.inf
    depth[:, 5:9] = np.nan  # a NaN-only stretch
    depth[:, 20:23] = np.inf  # +Inf only: stays +Inf (it beats NaN)
    depth[:, 40:43] = np.inf  # +Inf and -Inf in one bin: the last in loop order wins (period 3, so the
    depth[::3, 40:43] = -np.inf  # first and last of 5 rows differ)
    return depth


def to_mm(depth: np.ndarray) -> np.ndarray:
    """REP 118 16UC1 by hand: round half up, 0 for invalid or unrepresentable."""
    with np.errstate(invalid="ignore"):
        mm = np.floor(depth.astype(np.float64) * 1000.0 + 0.5)
        ok = np.isfinite(mm) & (mm >= 1) & (mm <= 65535)
    return np.where(ok, mm, 0).astype(np.uint16)


CAMERAS = {
    "narrow": info_msg(fx=120.0, cx=31.3, cy=11.7),
    "wide": info_msg(fx=22.0, cx=35.8, cy=12.2, fy=25.0),  # +-55 deg: bins get 0, 1 or 2 columns
}


@pytest.mark.parametrize("encoding", ["32FC1", "16UC1"])
@pytest.mark.parametrize("scan_height", [1, 5])
@pytest.mark.parametrize("limits", [(0.45, 10.0), (0.8, 3.5)])  # depthimage_to_laserscan's defaults, custom
@pytest.mark.parametrize("camera", list(CAMERAS))
def test_scan_equals_depthimage_to_laserscan(encoding, scan_height, limits, camera):
    info = CAMERAS[camera]
    depth = scene(seed=scan_height * 10 + len(camera))
    msg = depth_msg(depth if encoding == "32FC1" else to_mm(depth), encoding)
    range_min, range_max = limits
    ours = depth_image_to_laserscan(msg, info, scan_height, range_min, range_max, scan_time=0.125,
                                    frame_id="cam_link")
    theirs = ref.convert_msg(msg, info, scan_time=0.125, range_min=range_min, range_max=range_max,
                             scan_height=scan_height, output_frame_id="cam_link")
    ref.assert_same_scan(ours, theirs)

    ranges = np.asarray(ours.ranges)
    finite = ranges[np.isfinite(ranges)]
    assert finite.size >= 8, "the scene must leave real ranges to compare"
    assert np.all((finite >= np.float32(range_min)) & (finite <= np.float32(range_max)))
    if encoding == "32FC1":
        assert np.isnan(ranges).any() and np.isposinf(ranges).any(), "the NaN and +Inf rules must be exercised"
    if camera == "wide":
        # Bins no column lands in stay NaN even where all depth is valid: the original's quirk, kept.
        dense = depth_msg(np.full((H, W), 2.0, np.float32), "32FC1")
        flat = np.asarray(depth_image_to_laserscan(dense, info, 1, 0.45, 10.0).ranges)
        assert np.isnan(flat).sum() == np.isnan(np.asarray(ref.convert_msg(dense, info).ranges, np.float32)).sum() > 0


def test_scan_of_a_plane_is_its_distance_along_each_ray():
    # A wall at z = 2 m: range = hypot((u - cx) z / fx, z); angles from the rays of the edge pixels.
    info = CAMERAS["narrow"]
    scan = depth_image_to_laserscan(depth_msg(np.full((H, W), 2.0, np.float32), "32FC1"), info, 1, 0.45, 10.0)
    fx, cx = 120.0, 31.3
    assert scan.angle_max == pytest.approx(math.atan(cx / fx), abs=1e-6)
    assert scan.angle_min == pytest.approx(-math.atan((W - 1 - cx) / fx), abs=1e-6)
    assert scan.angle_increment == pytest.approx((scan.angle_max - scan.angle_min) / (W - 1), rel=1e-6)
    ranges = np.asarray(scan.ranges)
    angles = scan.angle_min + scan.angle_increment * np.arange(W)
    ok = np.isfinite(ranges)
    assert ok.mean() > 0.9
    # Bin i holds the column whose ray lies within one increment of angle_min + i * increment.
    np.testing.assert_allclose(ranges[ok], 2.0 / np.cos(angles[ok]), atol=2.0 * 0.01)
    # Bin 0 holds the rightmost column, and its neighbour too: near the edge a pixel turns the ray by
    # less than the mean increment. The shorter range (the neighbour's) wins.
    assert 2.0 < ranges[0] < math.hypot((W - 1 - cx) * 2.0 / fx, 2.0)
    assert scan.time_increment == 0.0 and scan.header.frame_id == "cam_optical"


def test_16uc1_zero_is_invalid_unless_range_min_is_zero():
    # 'double r = depth' passes 16UC1's 0 through as a range of 0: it only counts when range_min <= 0.
    mm = np.full((H, W), 1500, np.uint16)
    mm[H // 2 - 2: H // 2 + 3, 10:20] = 0
    msg, info = depth_msg(mm, "16UC1"), CAMERAS["narrow"]
    for range_min in (0.0, 0.45):
        ours = depth_image_to_laserscan(msg, info, 1, range_min, 10.0)
        theirs = ref.convert_msg(msg, info, range_min=range_min, scan_height=1)
        ref.assert_same_scan(ours, theirs)
    zeros = np.asarray(depth_image_to_laserscan(msg, info, 1, 0.0, 10.0).ranges)
    assert np.sum(zeros == 0.0) >= 9
    assert not np.any(np.asarray(depth_image_to_laserscan(msg, info, 1, 0.45, 10.0).ranges) == 0.0)


def test_step_padding_and_big_endian_are_read():
    depth = scene(3)
    info = CAMERAS["narrow"]
    plain = depth_image_to_laserscan(depth_msg(to_mm(depth), "16UC1"), info, 5, 0.45, 10.0)
    for kw in ({"pad": 6}, {"big_endian": True}):
        msg = depth_msg(to_mm(depth), "16UC1", **kw)
        ours = depth_image_to_laserscan(msg, info, 5, 0.45, 10.0)
        ref.assert_same_scan(ours, ref.convert_msg(msg, info, scan_height=5, scan_time=0.033))
        np.testing.assert_array_equal(np.asarray(ours.ranges), np.asarray(plain.ranges))


def test_scan_height_that_does_not_fit_is_refused_like_the_original():
    info = CAMERAS["narrow"]  # cy = 11.7 in 24 rows: scan_height / 2 <= 11.7 fits, so 23 does and 24 not
    msg = depth_msg(scene(4), "32FC1")
    ref.assert_same_scan(depth_image_to_laserscan(msg, info, 23, 0.45, 10.0), ref.convert_msg(msg, info, scan_height=23))
    with pytest.raises(RuntimeError, match="too large"):
        ref.convert_msg(msg, info, scan_height=24)
    with pytest.raises(InputImageError, match=r"scan_height \(24 pixels\) is too large for the image height"):
        depth_image_to_laserscan(msg, info, 24, 0.45, 10.0)


def test_distortion_changes_the_angles_as_image_geometry_does():
    depth = depth_msg(scene(5), "32FC1")
    plain = CAMERAS["narrow"]
    distorted = info_msg(fx=120.0, cx=31.3, cy=11.7, d=[-0.3, 0.12, 0.0, 0.0, 0.0])
    ours = depth_image_to_laserscan(depth, distorted, 1, 0.45, 10.0)
    ref.assert_same_scan(ours, ref.convert_msg(depth, distorted, scan_height=1))
    # The edge rays are undistorted (wider for barrel distortion), so the angles must differ.
    assert ours.angle_max > laserscan_angles(plain, W)[1] + 1e-3
    fisheye = info_msg(fx=60.0, cx=31.3, cy=11.7, d=[0.05, -0.01, 0.0, 0.0], model="equidistant")
    ref.assert_same_scan(depth_image_to_laserscan(depth, fisheye, 1, 0.45, 10.0), ref.convert_msg(depth, fisheye))
    with pytest.raises(InputImageError, match="distortion_model 'pinhole' is unknown"):
        depth_image_to_laserscan(depth, info_msg(120.0, 31.3, 11.7, model="pinhole"), 1, 0.45, 10.0)


def test_bad_inputs_name_the_problem():
    info = CAMERAS["narrow"]
    msg = depth_msg(scene(6), "32FC1")
    msg.encoding = "mono8"
    with pytest.raises(InputImageError, match="unsupported encoding 'mono8'"):
        depth_image_to_laserscan(msg, info)
    with pytest.raises(InputImageError, match=r"scan range \[5.0, 2.0\] m is empty"):
        depth_image_to_laserscan(depth_msg(scene(6), "32FC1"), info, 1, 5.0, 2.0)
    short = depth_msg(scene(6), "32FC1")
    short.data = bytes(short.data)[:-4]
    with pytest.raises(InputImageError, match="inconsistent"):
        depth_image_to_laserscan(short, info)
    with pytest.raises(InputImageError, match="cx=-5 must lie inside the 64-pixel-wide image"):
        depth_image_to_laserscan(depth_msg(scene(6), "32FC1"), info_msg(120.0, -5.0, 11.7), 1)
