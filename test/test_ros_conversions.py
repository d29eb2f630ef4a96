"""cadfd_ros.ros.conversions: every input encoding, REP 117/118 depth, depth_image_proc's cloud."""
from __future__ import annotations

import array
import warnings

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy not importable (ROS 2 wheels missing: run make venv)")
sensor_msgs_msg = pytest.importorskip("sensor_msgs.msg", reason="sensor_msgs not importable (run make venv)")
std_msgs_msg = pytest.importorskip("std_msgs.msg", reason="std_msgs not importable (run make venv)")
cv_bridge = pytest.importorskip("cv_bridge", reason="cv_bridge not importable (run make venv)")

from cadfd_ros.errors import InputImageError  # noqa: E402
from cadfd_ros.ros import conversions as conv  # noqa: E402

Image = sensor_msgs_msg.Image
CameraInfo = sensor_msgs_msg.CameraInfo
PointField = sensor_msgs_msg.PointField

RNG = np.random.default_rng(5)
# Channel order of each colour encoding, as indices into RGB(A).
ORDER = {"rgb": [0, 1, 2], "bgr": [2, 1, 0], "rgba": [0, 1, 2, 3], "bgra": [2, 1, 0, 3]}
# Which colour each 2x2 Bayer cell position holds, for each pattern name.
BAYER = {"rggb": "RGGB", "bggr": "BGGR", "gbrg": "GBRG", "grbg": "GRBG"}


def header(frame: str = "cam_optical", sec: int = 12, nanosec: int = 345) -> object:
    h = std_msgs_msg.Header()
    h.frame_id = frame
    h.stamp.sec = sec
    h.stamp.nanosec = nanosec
    return h


def make_image(pixels: np.ndarray, encoding: str, big_endian: bool = False, pad: int = 0) -> Image:
    """Build an Image by hand (independent of the code under test), with optional row padding."""
    pixels = np.asarray(pixels)
    height, width = pixels.shape[:2]
    dtype = pixels.dtype.newbyteorder(">" if big_endian else "<")
    rows = pixels.astype(dtype).reshape(height, -1).view(np.uint8).reshape(height, -1)
    if pad:
        rows = np.concatenate([rows, np.full((height, pad), 0xAB, np.uint8)], axis=1)
    msg = Image()
    msg.header = header()
    msg.height, msg.width = height, width
    msg.encoding = encoding
    msg.is_bigendian = int(big_endian)
    msg.step = rows.shape[1]
    data = array.array("B")
    data.frombytes(rows.tobytes())
    msg.data = data
    return msg


def random_rgb(height: int, width: int, bits: int) -> np.ndarray:
    top = 255 if bits == 8 else 65535
    return RNG.integers(0, top + 1, size=(height, width, 3)).astype(np.uint8 if bits == 8 else np.uint16)


# ----------------------------------------------------------------------------- decode


def test_supported_encodings_list() -> None:
    expected = {"mono8", "mono16", "rgb8", "bgr8", "rgba8", "bgra8"}
    expected |= {f"bayer_{p}{b}" for p in BAYER for b in (8, 16)}
    assert expected <= set(conv.SUPPORTED_ENCODINGS)


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("big_endian", [False, True])
def test_mono_roundtrip(bits: int, big_endian: bool) -> None:
    # For 8-bit data is_bigendian must simply be ignored.
    dtype = np.uint8 if bits == 8 else np.uint16
    top = np.iinfo(dtype).max
    pixels = RNG.integers(0, top + 1, size=(7, 9)).astype(dtype)
    pixels[0, 0], pixels[0, 1] = 0, top
    capture = conv.image_msg_to_capture(make_image(pixels, f"mono{bits}", big_endian))
    assert capture.dtype == np.float32 and capture.shape == (7, 9)
    np.testing.assert_allclose(capture, pixels / top, rtol=0, atol=1e-7)
    assert capture[0, 0] == 0.0 and capture[0, 1] == pytest.approx(1.0)


@pytest.mark.parametrize("layout", ["rgb", "bgr", "rgba", "bgra"])
@pytest.mark.parametrize("bits", [8, 16])
def test_colour_roundtrip_and_channel_order(layout: str, bits: int) -> None:
    rgb = random_rgb(5, 6, bits)
    rgb[0, 0] = [np.iinfo(rgb.dtype).max, 0, 0]  # pure red must come out in channel 0
    alpha = np.full((5, 6, 1), 7, rgb.dtype)
    rgba = np.concatenate([rgb, alpha], axis=2)
    pixels = rgba[:, :, ORDER[layout]]
    capture = conv.image_msg_to_capture(make_image(pixels, f"{layout}{bits}"))
    assert capture.shape == (5, 6, 3) and capture.dtype == np.float32
    np.testing.assert_allclose(capture, rgb / np.iinfo(rgb.dtype).max, atol=1e-7)
    np.testing.assert_allclose(capture[0, 0], [1.0, 0.0, 0.0], atol=1e-7)


@pytest.mark.parametrize("encoding", ["mono8", "rgb8", "bgr8", "rgba8", "bgra8"])
def test_agrees_with_cv_bridge_on_8bit(encoding: str) -> None:
    """Messages made by cv_bridge decode to what cv_bridge itself reads back."""
    channels = {"mono8": 1, "rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4}[encoding]
    shape = (6, 10) if channels == 1 else (6, 10, channels)
    pixels = RNG.integers(0, 256, size=shape).astype(np.uint8)
    bridge = cv_bridge.CvBridge()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # cv_bridge calls ndarray.tostring
        msg = bridge.cv2_to_imgmsg(pixels, encoding)
        back = bridge.imgmsg_to_cv2(msg, "passthrough")
    capture = conv.image_msg_to_capture(msg)
    if channels == 1:
        expected = back
    elif encoding.startswith("rgb"):
        expected = back[:, :, :3]
    else:
        expected = back[:, :, 2::-1]
    np.testing.assert_allclose(capture, expected / 255.0, atol=1e-7)


@pytest.mark.parametrize("encoding", ["rgb8", "mono16", "bgra16"])
def test_row_padding_is_skipped(encoding: str) -> None:
    bits = 16 if encoding.endswith("16") else 8
    if encoding.startswith("mono"):
        pixels = RNG.integers(0, 65536, size=(4, 5)).astype(np.uint16)
        expected = pixels / 65535.0
    else:
        rgb = random_rgb(4, 5, bits)
        order = ORDER["rgb" if encoding.startswith("rgb") else "bgra"]
        full = np.concatenate([rgb, np.zeros((4, 5, 1), rgb.dtype)], axis=2)
        pixels = full[:, :, order]
        expected = rgb / np.iinfo(rgb.dtype).max
    msg = make_image(pixels, encoding, pad=6)  # odd-sized padding, not a multiple of the pixel size
    assert msg.step > msg.width * pixels.itemsize * (pixels.shape[2] if pixels.ndim == 3 else 1)
    np.testing.assert_allclose(conv.image_msg_to_capture(msg), expected, atol=1e-7)


def test_16bit_colour_big_endian() -> None:
    rgb = random_rgb(3, 4, 16)
    little = conv.image_msg_to_capture(make_image(rgb, "rgb16", big_endian=False))
    big_msg = make_image(rgb, "rgb16", big_endian=True)
    assert bytes(big_msg.data[:2]) == int(rgb[0, 0, 0]).to_bytes(2, "big")
    np.testing.assert_array_equal(conv.image_msg_to_capture(big_msg), little)


def bayer_mosaic(pattern: str, colour: tuple[int, int, int], height: int, width: int, dtype: type) -> np.ndarray:
    """A flat colour patch as the given Bayer sensor would record it."""
    value = dict(zip("RGB", colour))
    cells = BAYER[pattern]
    mosaic = np.zeros((height, width), dtype)
    for index, (dy, dx) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        mosaic[dy::2, dx::2] = value[cells[index]]
    return mosaic


@pytest.mark.parametrize("pattern", list(BAYER))
@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("big_endian", [False, True])
def test_bayer_flat_patch_gives_its_colour(pattern: str, bits: int, big_endian: bool) -> None:
    dtype = np.uint8 if bits == 8 else np.uint16  # 8-bit: is_bigendian is ignored
    top = np.iinfo(dtype).max
    colour = (int(0.8 * top), int(0.5 * top), int(0.1 * top))  # all channels distinct
    mosaic = bayer_mosaic(pattern, colour, 8, 10, dtype)
    capture = conv.image_msg_to_capture(make_image(mosaic, f"bayer_{pattern}{bits}", big_endian))
    assert capture.shape == (8, 10, 3)
    expected = np.array(colour) / top
    # Every pixel, borders included, is the patch colour: right pattern, right RGB order.
    np.testing.assert_allclose(capture.reshape(-1, 3), np.broadcast_to(expected, (80, 3)), atol=1.5 / top)


@pytest.mark.parametrize("bits", [8, 16])
def test_bayer_noise_is_measured_on_the_raw_mosaic(bits: int) -> None:
    """Demosaicing averages noise away: the demosaiced frame's own estimate reads a fraction of it, and the
    depth evidence then takes noise for detail. The mosaic's colour planes give the sensor's noise."""
    from cadfd_ros.solvers.noise import estimate_noise_sigma

    top = 2**bits - 1
    rng = np.random.default_rng(11)
    sigma = 0.01
    mosaic = np.round(np.clip(0.4 + sigma * rng.standard_normal((96, 128)), 0, 1) * top).astype(
        np.uint8 if bits == 8 else np.uint16)
    msg = make_image(mosaic, f"bayer_rggb{bits}")
    capture, (a, b) = conv.image_msg_to_capture_and_noise(msg)
    expected = np.sqrt(sigma**2 + (1 / top) ** 2 / 12)  # the noise plus the quantisation error
    assert np.sqrt(a * 0.4 + b) == pytest.approx(expected, rel=0.1)
    assert estimate_noise_sigma(capture) < 0.6 * expected  # what the demosaiced frame shows
    np.testing.assert_array_equal(capture, conv.image_msg_to_capture(msg))  # the same decode
    mono = make_image(mosaic, f"mono{bits}")
    assert conv.image_msg_to_capture_and_noise(mono)[1] is None  # not a mosaic: estimated from it
    too_small = make_image(mosaic[:3, :3], f"bayer_rggb{bits}")
    assert conv.image_msg_to_capture_and_noise(too_small)[1] is None  # too small to measure


def test_errors_name_field_and_problem() -> None:
    good = make_image(RNG.integers(0, 256, size=(4, 6, 3)).astype(np.uint8), "rgb8")

    unknown = make_image(np.zeros((4, 6), np.uint8), "yuv422")
    with pytest.raises(InputImageError, match=r"'yuv422' is not supported.*mono8"):
        conv.image_msg_to_capture(unknown)

    truncated = make_image(np.zeros((4, 6, 3), np.uint8), "rgb8")
    truncated.data = truncated.data[:-5]
    with pytest.raises(InputImageError, match=r"rgb8 image data is truncated: len\(data\)=67 .* 18\*4 = 72"):
        conv.image_msg_to_capture(truncated)

    too_long = make_image(np.zeros((4, 6, 3), np.uint8), "rgb8")
    too_long.data = too_long.data + array.array("B", [0])
    with pytest.raises(InputImageError, match="too long"):
        conv.image_msg_to_capture(too_long)

    bad_step = make_image(np.zeros((4, 6, 3), np.uint8), "rgb8")
    bad_step.step = 17
    with pytest.raises(InputImageError, match=r"step=17 bytes, less than one row \(width 6 x 3 bytes per pixel = 18\)"):
        conv.image_msg_to_capture(bad_step)

    wide16 = make_image(np.zeros((2, 3), np.uint16), "mono16")
    wide16.step = 5
    with pytest.raises(InputImageError, match=r"mono16 image has step=5"):
        conv.image_msg_to_capture(wide16)

    for width, height in [(0, 4), (6, 0)]:
        empty = Image()
        empty.encoding, empty.width, empty.height, empty.step = "rgb8", width, height, 3 * width
        with pytest.raises(InputImageError, match=rf"zero size \(width={width}, height={height}\)"):
            conv.image_msg_to_capture(empty)

    assert conv.image_msg_to_capture(good).shape == (4, 6, 3)  # the helper itself is fine


# ----------------------------------------------------------------------------- depth / aif / confidence


def decode_raw(msg: Image) -> np.ndarray:
    dtype = {"32FC1": "<f4", "16UC1": "<u2", "mono8": "u1", "rgb8": "u1"}[msg.encoding]
    channels = 3 if msg.encoding == "rgb8" else 1
    assert msg.step == msg.width * channels * np.dtype(dtype).itemsize
    assert len(msg.data) == msg.step * msg.height
    out = np.frombuffer(bytes(msg.data), dtype=dtype).reshape(msg.height, msg.width, channels)
    return out[:, :, 0] if channels == 1 else out


def test_depth_32fc1_metres_nan_and_inf_kept() -> None:
    depth = np.array([[1.25, np.nan, np.inf], [-np.inf, 0.5, 70.0]], np.float64)
    h = header()
    msg = conv.depth_to_image_msg(depth, h)
    assert msg.encoding == "32FC1" and msg.is_bigendian == 0
    assert (msg.width, msg.height) == (3, 2)
    assert msg.header.frame_id == "cam_optical" and msg.header.stamp.nanosec == 345
    out = decode_raw(msg)
    np.testing.assert_array_equal(out, depth.astype(np.float32))  # NaN == NaN here
    assert np.isnan(out[0, 1]) and out[0, 2] == np.inf and out[1, 0] == -np.inf


def test_depth_16uc1_millimetres_rounding_and_invalid_zero() -> None:
    depth = np.array(
        [[1.2344, 1.2346, 1.0625, 0.0004], [np.nan, np.inf, -0.5, 65.536], [65.535, 0.001, -np.inf, 2.0]],
        np.float32,
    )
    msg = conv.depth_to_image_msg(depth, header(), encoding="16UC1")
    assert msg.encoding == "16UC1" and msg.is_bigendian == 0
    out = decode_raw(msg)
    # 1.0625 m = 1062.5 mm exactly: rounded half up (depth_image_proc's + 0.5), not to even.
    expected = np.array([[1234, 1235, 1063, 0], [0, 0, 0, 0], [65535, 1, 0, 2000]], np.uint16)
    np.testing.assert_array_equal(out, expected)


def test_depth_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="depth encoding '8UC1' is not supported"):
        conv.depth_to_image_msg(np.ones((2, 2)), header(), encoding="8UC1")
    with pytest.raises(ValueError, match="H x W"):
        conv.depth_to_image_msg(np.ones((2, 2, 3)), header())


def test_aif_mono_and_rgb_linear_clipped() -> None:
    mono = np.array([[0.0, 0.5, 1.0], [1.5, -0.2, np.nan]], np.float32)
    msg = conv.aif_to_image_msg(mono, header())
    assert msg.encoding == "mono8"
    np.testing.assert_array_equal(decode_raw(msg), [[0, 128, 255], [255, 0, 0]])

    rgb = np.zeros((2, 2, 3), np.float32)
    rgb[0, 0] = [1.0, 0.0, 0.0]
    rgb[1, 1] = [0.2, 0.4, 0.6]
    msg = conv.aif_to_image_msg(rgb, header())
    assert msg.encoding == "rgb8"
    out = decode_raw(msg)
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(out[1, 1], [51, 102, 153])  # linear: no sRGB curve


def test_confidence_is_32fc1_in_unit_range() -> None:
    conf = np.array([[0.25, 1.7], [-1.0, np.nan]], np.float64)
    msg = conv.confidence_to_image_msg(conf, header())
    assert msg.encoding == "32FC1"
    out = decode_raw(msg)
    np.testing.assert_array_equal(out[0], [0.25, 1.0])
    assert out[1, 0] == 0.0 and np.isnan(out[1, 1])


# ----------------------------------------------------------------------------- camera info


def test_camera_info_from_intrinsics() -> None:
    h = header()
    info = conv.camera_info_from_intrinsics(h, 640, 480, 500.0, 510.0, 319.5, 239.5)
    assert (info.width, info.height) == (640, 480)
    assert info.distortion_model == "plumb_bob"
    np.testing.assert_array_equal(info.d, np.zeros(5))
    np.testing.assert_array_equal(info.k, [500, 0, 319.5, 0, 510, 239.5, 0, 0, 1])
    np.testing.assert_array_equal(info.r, np.eye(3).ravel())
    np.testing.assert_array_equal(info.p, [500, 0, 319.5, 0, 0, 510, 239.5, 0, 0, 0, 1, 0])
    assert info.header.frame_id == "cam_optical"
    conv.check_camera_info(info, 640, 480)
    with pytest.raises(ValueError, match="fx, fy must be finite and > 0"):
        conv.camera_info_from_intrinsics(h, 640, 480, 0.0, 500.0, 1.0, 1.0)


def test_check_camera_info_rejects_bad_info() -> None:
    info = conv.camera_info_from_intrinsics(header(), 640, 480, 500.0, 500.0, 319.5, 239.5)
    with pytest.raises(InputImageError, match="camera_info size 640x480 does not match the image 320x240"):
        conv.check_camera_info(info, 320, 240)
    zero_p = conv.camera_info_from_intrinsics(header(), 640, 480, 500.0, 500.0, 319.5, 239.5)
    zero_p.p = [0.0] * 12
    with pytest.raises(InputImageError, match=r"P is degenerate \(fx=P\[0\]=0.0"):
        conv.check_camera_info(zero_p, 640, 480)
    nan_k = conv.camera_info_from_intrinsics(header(), 640, 480, 500.0, 500.0, 319.5, 239.5)
    k = list(nan_k.k)
    k[4] = 0.0
    nan_k.k = k
    with pytest.raises(InputImageError, match=r"K is degenerate"):
        conv.check_camera_info(nan_k, 640, 480)
    uncalibrated = CameraInfo()
    with pytest.raises(InputImageError, match="camera_info size 0x0"):
        conv.check_camera_info(uncalibrated, 640, 480)


def test_scale_camera_info_halves_and_keeps_centre() -> None:
    h = header(frame="left_optical")
    info = conv.camera_info_from_intrinsics(h, 640, 480, 500.0, 520.0, 319.5, 239.5)
    p = list(info.p)
    p[3] = -40.0  # a right stereo camera's Tx = -fx * baseline
    info.p = p
    half = conv.scale_camera_info(info, 320, 240)
    assert (half.width, half.height) == (320, 240)
    assert half.header.frame_id == "left_optical" and half.header.stamp.sec == 12
    # fx, fy halve; the image centre stays the image centre under the pixel-centre convention.
    np.testing.assert_allclose(half.k, [250, 0, 159.5, 0, 260, 119.5, 0, 0, 1])
    np.testing.assert_allclose(half.p, [250, 0, 159.5, -20, 0, 260, 119.5, 0, 0, 0, 1, 0])
    assert half.distortion_model == "plumb_bob"
    conv.check_camera_info(half, 320, 240)
    assert info.width == 640 and info.k[0] == 500.0  # the input is not modified


def test_scale_camera_info_matches_cv2_area_resize() -> None:
    """A bright dot's centroid after cv2 INTER_AREA downscale lands where the scaled K says."""
    import cv2

    info = conv.camera_info_from_intrinsics(header(), 64, 48, 100.0, 100.0, 20.0, 11.0)
    image = np.zeros((48, 64), np.float32)
    image[11, 20] = 1.0  # the principal point itself
    small = cv2.resize(image, (16, 12), interpolation=cv2.INTER_AREA)
    scaled = conv.scale_camera_info(info, 16, 12)
    ys, xs = np.nonzero(small)
    weights = small[ys, xs]
    centroid = (np.sum(xs * weights) / weights.sum(), np.sum(ys * weights) / weights.sum())
    # INTER_AREA maps a source pixel centre to a pixel box; the dot's box straddles, so compare
    # against the box containing the scaled principal point.
    assert int(np.floor(scaled.k[2] + 0.5)) == int(np.round(centroid[0]))
    assert int(np.floor(scaled.k[5] + 0.5)) == int(np.round(centroid[1]))
    assert scaled.k[2] == pytest.approx((20 + 0.5) / 4 - 0.5)


# ----------------------------------------------------------------------------- point cloud


def cloud_points(cloud: object) -> np.ndarray:
    floats = np.frombuffer(bytes(cloud.data), dtype="<f4").reshape(cloud.height, cloud.width, cloud.point_step // 4)
    return floats


def field_layout(cloud: object) -> list[tuple[str, int, int, int]]:
    return [(f.name, f.offset, f.datatype, f.count) for f in cloud.fields]


def test_pointcloud_layout_xyz() -> None:
    info = conv.camera_info_from_intrinsics(header(), 8, 6, 10.0, 10.0, 3.5, 2.5)
    cloud = conv.depth_to_pointcloud2(np.full((6, 8), 2.0, np.float32), info, header())
    assert field_layout(cloud) == [("x", 0, PointField.FLOAT32, 1), ("y", 4, PointField.FLOAT32, 1), ("z", 8, PointField.FLOAT32, 1)]
    assert cloud.point_step == 16 and cloud.row_step == 16 * 8
    assert (cloud.height, cloud.width) == (6, 8)
    assert cloud.is_dense is False and cloud.is_bigendian is False
    assert len(cloud.data) == cloud.row_step * cloud.height
    assert cloud.header.frame_id == "cam_optical" and cloud.header.stamp.sec == 12


def test_pointcloud_projection_uses_p_on_a_known_plane() -> None:
    width, height = 16, 12
    # K deliberately disagrees with P: depth_image_proc projects with P (rectified image).
    info = conv.camera_info_from_intrinsics(header(), width, height, 20.0, 25.0, 7.0, 5.5)
    info.k = [999.0, 0.0, 1.0, 0.0, 999.0, 1.0, 0.0, 0.0, 1.0]
    p = list(info.p)
    p[3] = -5.0  # Tx is ignored, as in depth_image_proc
    info.p = p
    # Tilted plane n . X = d with n = (0.2, -0.1, 1): depth per pixel from the ray through (u, v).
    u, v = np.meshgrid(np.arange(width), np.arange(height))
    rays = np.stack([(u - 7.0) / 20.0, (v - 5.5) / 25.0, np.ones_like(u, dtype=float)], axis=-1)
    normal, dist = np.array([0.2, -0.1, 1.0]), 3.0
    depth = dist / (rays @ normal)
    depth[2, 3] = np.nan
    depth[4, 5] = np.inf
    depth[5, 6] = -np.inf
    cloud = conv.depth_to_pointcloud2(depth.astype(np.float32), info, header())
    pts = cloud_points(cloud)[:, :, :3].astype(np.float64)
    valid = np.isfinite(depth)
    np.testing.assert_allclose(pts[valid], (rays * depth[..., None])[valid], rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(pts[valid] @ normal, dist, rtol=1e-5)  # every point lies on the plane
    for r, c in [(2, 3), (4, 5), (5, 6)]:
        assert np.all(np.isnan(pts[r, c])), (r, c, pts[r, c])


@pytest.mark.parametrize("model, d", [("plumb_bob", [-0.25, 0.08, 0.001, -0.002, 0.0]),
                                      ("equidistant", [0.05, -0.01, 0.002, 0.0])])
def test_pointcloud_of_a_distorted_camera_undistorts_each_ray(model, d) -> None:
    """Our depth is on the raw grid: with non-zero D every point, projected back through K and D (OpenCV's
    forward model), lands on its own pixel; the plain P projection would be off by pixels at the edges."""
    import cv2

    width, height = 64, 48
    info = conv.camera_info_from_intrinsics(header(), width, height, 50.0, 52.0, 31.0, 24.5)
    info.distortion_model, info.d = model, d
    depth = np.full((height, width), 2.0, np.float32)
    pts = cloud_points(conv.depth_to_pointcloud2(depth, info, header()))[:, :, :3].astype(np.float64)
    np.testing.assert_allclose(pts[:, :, 2], 2.0)
    k = np.asarray(info.k).reshape(3, 3)
    project = cv2.fisheye.projectPoints if model == "equidistant" else cv2.projectPoints
    if model == "equidistant":
        pixels, _ = project(pts.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), k, np.asarray(d))
    else:
        pixels, _ = project(pts.reshape(-1, 3), np.zeros(3), np.zeros(3), k, np.asarray(d))
    u, v = np.meshgrid(np.arange(width), np.arange(height))
    np.testing.assert_allclose(pixels.reshape(height, width, 2), np.stack([u, v], axis=-1), atol=1e-4)
    plain = (u[0, 0] - 31.0) / 50.0 * 2.0  # the corner's x without undistortion
    assert abs(pts[0, 0, 0] - plain) > 0.05  # so the test would see a cloud that ignores D
    decimated = cloud_points(conv.depth_to_pointcloud2(depth, info, header(), decimation=4))[:, :, :3]
    full = cloud_points(conv.depth_to_pointcloud2(depth, info, header()))
    np.testing.assert_array_equal(decimated, full[::4, ::4, :3])
    info.r = [0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]  # a stereo rectification: not the depth's frame
    np.testing.assert_array_equal(cloud_points(conv.depth_to_pointcloud2(depth, info, header()))[:, :, :3],
                                  full[:, :, :3])
    info.distortion_model = "tilted_prism"
    with pytest.raises(InputImageError, match="distortion_model 'tilted_prism' is unknown"):
        conv.depth_to_pointcloud2(depth, info, header())


def test_pointcloud_float32_order_matches_depth_image_proc_bitwise() -> None:
    info = conv.camera_info_from_intrinsics(header(), 5, 4, 525.0, 524.0, 2.3, 1.7)
    depth = RNG.uniform(0.3, 9.0, size=(4, 5)).astype(np.float32)
    pts = cloud_points(conv.depth_to_pointcloud2(depth, info, header()))
    # The C++ loop: float constant_x = 1.0 / fx; x = (u - center_x) * depth * constant_x, in float.
    cx, cy = np.float32(2.3), np.float32(1.7)
    kx, ky = np.float32(1.0 / 525.0), np.float32(1.0 / 524.0)
    for v in range(4):
        for u in range(5):
            assert pts[v, u, 0] == (np.float32(u) - cx) * depth[v, u] * kx
            assert pts[v, u, 1] == (np.float32(v) - cy) * depth[v, u] * ky
            assert pts[v, u, 2] == depth[v, u]


@pytest.mark.parametrize("n, shape", [(2, (4, 5)), (3, (3, 4)), (8, (1, 2))])
def test_pointcloud_decimation_keeps_every_nth_pixel_projected_at_full_resolution(n, shape) -> None:
    height, width = 7, 10
    info = conv.camera_info_from_intrinsics(header(), width, height, 30.0, 28.0, 4.2, 3.1)
    depth = RNG.uniform(0.5, 5.0, size=(height, width)).astype(np.float32)
    depth[0, 0] = np.nan
    rgb = RNG.random((height, width, 3)).astype(np.float32)
    full = conv.depth_to_pointcloud2(depth, info, header(), rgb=rgb)
    cloud = conv.depth_to_pointcloud2(depth, info, header(), rgb=rgb, decimation=n)
    # ceil(H/n) x ceil(W/n), organised, same layout.
    assert (cloud.height, cloud.width) == shape == (-(-height // n), -(-width // n))
    assert cloud.point_step == 32 and cloud.row_step == 32 * cloud.width and not cloud.is_dense
    # Each point is the full cloud's point at its pixel, bit for bit (colour included): the
    # full-resolution intrinsics project it, so it agrees with camera_info at the full size.
    kept = cloud_points(full)[::n, ::n]
    np.testing.assert_array_equal(cloud_points(cloud).view("<u4"), kept.view("<u4"))
    u, v = n * np.arange(cloud.width), n * np.arange(cloud.height)
    pts = cloud_points(cloud)
    np.testing.assert_allclose(pts[1:, :, 0], ((u[None, :] - 4.2) * depth[::n, ::n] / 30.0)[1:], rtol=1e-5)
    np.testing.assert_allclose(pts[:, 1:, 1], ((v[:, None] - 3.1) * depth[::n, ::n] / 28.0)[:, 1:], rtol=1e-5)
    assert np.all(np.isnan(pts[0, 0, :3]))
    with pytest.raises(ValueError, match="decimation must be an integer >= 1"):
        conv.depth_to_pointcloud2(depth, info, header(), decimation=0)


def unpack_rgb(cloud: object) -> np.ndarray:
    raw = np.frombuffer(bytes(cloud.data), dtype="<u4").reshape(cloud.height, cloud.width, cloud.point_step // 4)
    return raw[:, :, 4]


def test_pointcloud_rgb_layout_and_packing() -> None:
    info = conv.camera_info_from_intrinsics(header(), 4, 3, 10.0, 10.0, 1.5, 1.0)
    rgb = np.zeros((3, 4, 3), np.float32)
    rgb[0, 0] = [1.0, 0.0, 0.0]
    rgb[0, 1] = [0.0, 1.0, 0.0]
    rgb[0, 2] = [0.0, 0.0, 1.0]
    rgb[1, 1] = [0.2, 0.4, 0.6]
    rgb[2, 3] = [1.3, -0.1, np.nan]  # clipped; NaN -> 0
    depth = np.ones((3, 4), np.float32)
    depth[1, 1] = np.nan  # colour is still written for invalid points, as depth_image_proc does
    cloud = conv.depth_to_pointcloud2(depth, info, header(), rgb=rgb)
    assert field_layout(cloud)[-1] == ("rgb", 16, PointField.FLOAT32, 1)
    assert len(cloud.fields) == 4
    assert cloud.point_step == 32 and cloud.row_step == 32 * 4
    assert len(cloud.data) == 32 * 12 and cloud.is_dense is False
    packed = unpack_rgb(cloud)
    assert packed[0, 0] == 0x00FF0000 and packed[0, 1] == 0x0000FF00 and packed[0, 2] == 0x000000FF
    assert packed[1, 1] == (51 << 16) | (102 << 8) | 153
    assert packed[2, 3] == 0x00FF0000
    assert np.all(np.isnan(cloud_points(cloud)[1, 1, :3]))
    # padding bytes stay zero
    raw = np.frombuffer(bytes(cloud.data), dtype="<u4").reshape(3, 4, 8)
    assert not raw[:, :, [3, 5, 6, 7]].any()


def test_pointcloud_grey_and_uint8_colour() -> None:
    info = conv.camera_info_from_intrinsics(header(), 3, 2, 10.0, 10.0, 1.0, 0.5)
    grey = np.array([[0.0, 0.5, 1.0], [0.25, 0.75, 1.0]], np.float32)
    packed = unpack_rgb(conv.depth_to_pointcloud2(np.ones((2, 3)), info, header(), rgb=grey))
    assert packed[0, 1] == (128 << 16) | (128 << 8) | 128
    rgb8 = np.zeros((2, 3, 3), np.uint8)
    rgb8[1, 2] = [10, 20, 30]
    packed = unpack_rgb(conv.depth_to_pointcloud2(np.ones((2, 3)), info, header(), rgb=rgb8))
    assert packed[1, 2] == (10 << 16) | (20 << 8) | 30


def test_pointcloud_rejects_mismatched_rgb_and_bad_p() -> None:
    info = conv.camera_info_from_intrinsics(header(), 8, 6, 10.0, 10.0, 3.5, 2.5)
    with pytest.raises(InputImageError, match=r"rgb image of shape \(3, 4, 3\) does not match the depth image 8x6"):
        conv.depth_to_pointcloud2(np.ones((6, 8)), info, header(), rgb=np.zeros((3, 4, 3)))
    info.p = [0.0] * 12
    with pytest.raises(InputImageError, match="P is degenerate"):
        conv.depth_to_pointcloud2(np.ones((6, 8)), info, header())
    other = conv.camera_info_from_intrinsics(header(), 16, 12, 10.0, 10.0, 3.5, 2.5)
    with pytest.raises(InputImageError, match="camera_info size 16x12 does not match the depth image 8x6"):
        conv.depth_to_pointcloud2(np.ones((6, 8)), other, header())


def test_vga_frame_through_every_conversion() -> None:
    """A full 640x480 frame (the size the node runs at) through every conversion, checked pixel for pixel
    against arithmetic written out here: the vectorised paths hold at full size, not only on toy frames.
    Their cost per frame is part of the node overhead that `scripts/measure_node.py` measures, not a test."""
    rgb = random_rgb(480, 640, 8)
    info = conv.camera_info_from_intrinsics(header(), 640, 480, 500.0, 500.0, 319.5, 239.5)
    depth = RNG.uniform(0.5, 5.0, size=(480, 640)).astype(np.float32)
    depth[7, 11] = np.nan
    capture = conv.image_msg_to_capture(make_image(rgb, "rgb8"))
    np.testing.assert_allclose(capture, rgb / 255.0, atol=1e-6)
    np.testing.assert_array_equal(decode_raw(conv.depth_to_image_msg(depth, header())), depth)
    millimetres = decode_raw(conv.depth_to_image_msg(depth, header(), "16UC1"))
    assert millimetres[7, 11] == 0 and millimetres[479, 639] == round(1000 * float(depth[479, 639]))
    np.testing.assert_array_equal(decode_raw(conv.aif_to_image_msg(capture, header())), rgb)
    confidence = decode_raw(conv.confidence_to_image_msg(np.nan_to_num(depth) / 5, header()))
    np.testing.assert_allclose(confidence[200:210, 300:310], depth[200:210, 300:310] / 5, rtol=1e-6)
    cloud = conv.depth_to_pointcloud2(depth, info, header(), rgb=capture)
    pts = cloud_points(cloud)
    assert (cloud.height, cloud.width) == (480, 640)
    u, v = 600, 400
    np.testing.assert_allclose(pts[v, u, :3], [(u - 319.5) * depth[v, u] / 500.0, (v - 239.5) * depth[v, u] / 500.0,
                                               depth[v, u]], rtol=1e-5)
    assert np.all(np.isnan(pts[7, 11, :3]))
    r, g, b_ = (int(c) for c in rgb[v, u])
    assert unpack_rgb(cloud)[v, u] == (r << 16) | (g << 8) | b_


def test_tiny_bayer_and_integer_aif_are_rejected() -> None:
    with pytest.raises(InputImageError, match=r"bayer_rggb8 image is 4x1; demosaicing needs at least 2x2"):
        conv.image_msg_to_capture(make_image(np.zeros((1, 4), np.uint8), "bayer_rggb8"))
    with pytest.raises(ValueError, match="got dtype uint16"):
        conv.aif_to_image_msg(np.zeros((2, 2), np.uint16), header())
    uint8_aif = np.array([[0, 7], [200, 255]], np.uint8)  # uint8 passes through unchanged
    np.testing.assert_array_equal(decode_raw(conv.aif_to_image_msg(uint8_aif, header())), uint8_aif)
