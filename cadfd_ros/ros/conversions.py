"""Conversions between ROS 2 messages and the arrays the solver uses. Pure functions, no node.

Conventions (REP 117, REP 118, depth_image_proc):

* Captures come in as ``sensor_msgs/Image`` and leave as float32 *linear* intensity in [0, 1]:
  8-bit data is divided by 255, 16-bit by 65535. No gamma is removed: a depth-from-defocus
  camera must deliver linear (raw) data, because the blur model is linear in intensity.
  Mono stays H x W; colour becomes H x W x 3 in RGB order; Bayer mosaics are demosaiced to RGB.
* Depth leaves per REP 118 / REP 117: 32FC1 in metres with NaN = invalid (+-Inf passed through),
  or 16UC1 in millimetres with 0 = invalid.
* The point cloud copies depth_image_proc (point_cloud_xyz / point_cloud_xyzrgb) so it is a
  drop-in replacement: organised, x/y/z float32 at 0/4/8, point_step 16 (32 with rgb at 16),
  X = (u - cx) Z / fx, Y = (v - cy) Z / fy from CameraInfo.P, non-finite depth -> NaN point.

cv_bridge (the PyPI 1.13 port of the ROS 1 code) is used to build the output images, where it is
correct. It is NOT used to decode input images, because its ``imgmsg_to_cv2``:
  - ignores ``step``, so any row padding shears the image (or raises on a short buffer);
  - maps 16UC1..16UC4 to 8-bit OpenCV types (wrong shape and values);
  - has no conversion for bayer_grbg8 (its table key is misspelt "bayer_grbg": KeyError) and
    none for any 16-bit Bayer encoding.
Decoding is therefore numpy over the raw buffer plus ``cv2.cvtColor`` for demosaicing.
"""
from __future__ import annotations

import array
import functools
import math
import warnings

import numpy as np
from sensor_msgs.msg import CameraInfo, Image, LaserScan, PointCloud2, PointField

from cadfd_ros.errors import InputImageError

# encoding -> (numpy dtype of one channel, channels, layout). Layout says how to reach RGB:
# "mono" (stays one channel), "rgb"/"bgr" (channel order; alpha dropped), or the name of the
# OpenCV demosaic code for Bayer (OpenCV >= 4.5 names them by the ROS pattern: RGGB = BayerBG).
_ENCODINGS: dict[str, tuple[str, int, str]] = {
    "mono8": ("u1", 1, "mono"),
    "mono16": ("u2", 1, "mono"),
    "rgb8": ("u1", 3, "rgb"),
    "bgr8": ("u1", 3, "bgr"),
    "rgba8": ("u1", 4, "rgb"),
    "bgra8": ("u1", 4, "bgr"),
    "rgb16": ("u2", 3, "rgb"),
    "bgr16": ("u2", 3, "bgr"),
    "rgba16": ("u2", 4, "rgb"),
    "bgra16": ("u2", 4, "bgr"),
    "bayer_rggb8": ("u1", 1, "COLOR_BayerRGGB2RGB"),
    "bayer_bggr8": ("u1", 1, "COLOR_BayerBGGR2RGB"),
    "bayer_gbrg8": ("u1", 1, "COLOR_BayerGBRG2RGB"),
    "bayer_grbg8": ("u1", 1, "COLOR_BayerGRBG2RGB"),
    "bayer_rggb16": ("u2", 1, "COLOR_BayerRGGB2RGB"),
    "bayer_bggr16": ("u2", 1, "COLOR_BayerBGGR2RGB"),
    "bayer_gbrg16": ("u2", 1, "COLOR_BayerGBRG2RGB"),
    "bayer_grbg16": ("u2", 1, "COLOR_BayerGRBG2RGB"),
}

SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_ENCODINGS)

DEPTH_ENCODINGS: tuple[str, ...] = ("32FC1", "16UC1")

_FLOAT32 = PointField.FLOAT32  # 7


# --------------------------------------------------------------------------- input images


def check_image_layout(msg: Image) -> np.ndarray:
    """The checks of ``image_msg_to_capture`` that need no decoding (encoding, size, step, data length):
    cheap enough for the subscription callback, so a malformed frame is counted even when the solver is
    busy and the frame would have been dropped. Returns the data as uint8 (no copy)."""
    encoding = str(msg.encoding)
    if encoding not in _ENCODINGS:
        raise InputImageError(
            f"image encoding {encoding!r} is not supported; supported encodings: "
            + ", ".join(SUPPORTED_ENCODINGS)
        )
    dtype_code, channels, _ = _ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise InputImageError(f"{encoding} image has zero size (width={width}, height={height})")
    item = np.dtype(dtype_code).itemsize
    row_bytes = width * channels * item
    if step < row_bytes:
        raise InputImageError(
            f"{encoding} image has step={step} bytes, less than one row "
            f"(width {width} x {channels * item} bytes per pixel = {row_bytes})"
        )
    raw = _as_uint8(msg.data)
    if raw.size != step * height:
        problem = "truncated" if raw.size < step * height else "too long"
        raise InputImageError(
            f"{encoding} image data is {problem}: len(data)={raw.size} bytes, expected "
            f"step*height = {step}*{height} = {step * height}"
        )
    return raw


def image_msg_to_capture(msg: Image) -> np.ndarray:
    """Decode a ``sensor_msgs/Image`` into float32 linear intensity in [0, 1].

    Returns H x W for mono encodings and H x W x 3 (RGB order) for colour and Bayer encodings.
    Raises InputImageError naming the field at fault for an unsupported encoding, a zero size,
    a ``step`` shorter than a row, or ``data`` whose length is not ``step * height``.
    """
    return _decoded(msg, *_pixels(msg))


def image_msg_to_capture_and_noise(msg: Image) -> tuple[np.ndarray, tuple[float, float] | None]:
    """``image_msg_to_capture``, and for a Bayer encoding the sensor's noise model (a, b) of sigma^2 = a x + b
    in [0, 1] units, measured on the raw mosaic's colour planes (``estimate_mosaic_noise_model``): the
    demosaiced frame reads about a third of it. The raw level is kept, not the demosaiced pixels' own spread
    (0.77 of it, the interpolated ones averaged): on the node tests' two-plane scene the far plane's delta was
    0.52-0.91 with the raw level and 0.30-0.76 with 0.77 of it, over six Bayer encodings. The model is None for
    every other encoding (and for a mosaic under 4 x 4), whose noise is estimated from the capture itself."""
    pixels, dtype, layout = _pixels(msg)
    return _decoded(msg, pixels, dtype, layout), _mosaic_noise_model(msg, pixels, dtype)


def _decoded(msg: Image, pixels: np.ndarray, dtype: np.dtype, layout: str) -> np.ndarray:
    scale = np.float32(1.0 / np.iinfo(dtype).max)
    encoding, height, width = str(msg.encoding), int(msg.height), int(msg.width)

    if layout == "mono":
        return _scaled(pixels[:, :, 0], scale)
    if layout == "rgb":
        return _scaled(pixels[:, :, :3], scale)
    if layout == "bgr":
        return _scaled(pixels[:, :, 2::-1], scale)
    import cv2

    if height < 2 or width < 2:
        raise InputImageError(f"{encoding} image is {width}x{height}; demosaicing needs at least 2x2")
    # cv2 wants native byte order; astype to '=' swaps big-endian data.
    mosaic = np.ascontiguousarray(pixels[:, :, 0].astype(dtype.newbyteorder("=")))
    return _scaled(cv2.cvtColor(mosaic, getattr(cv2, layout)), scale)


def _pixels(msg: Image) -> tuple[np.ndarray, np.dtype, str]:
    """The message's pixels as an H x W x channels view (row padding dropped), their dtype with the message's
    byte order, and the encoding's layout."""
    raw = check_image_layout(msg)
    dtype_code, channels, layout = _ENCODINGS[str(msg.encoding)]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    row_bytes = width * channels * np.dtype(dtype_code).itemsize
    rows = raw.reshape(height, step)
    if step != row_bytes:
        # Row padding: drop it. The copy makes the rows contiguous for the dtype view below.
        rows = np.ascontiguousarray(rows[:, :row_bytes])
    # Byte order only matters for 16-bit data; 8-bit ignores is_bigendian.
    dtype = np.dtype(dtype_code).newbyteorder(">" if msg.is_bigendian else "<")
    return rows.view(dtype).reshape(height, width, channels), dtype, layout


def _mosaic_noise_model(msg: Image, pixels: np.ndarray, dtype: np.dtype) -> tuple[float, float] | None:
    from cadfd_ros.solvers.noise import estimate_mosaic_noise_model

    if not str(msg.encoding).startswith("bayer_") or pixels.shape[0] < 4 or pixels.shape[1] < 4:
        return None
    return estimate_mosaic_noise_model(_scaled(pixels[:, :, 0], np.float32(1.0 / np.iinfo(dtype).max)))


def _scaled(values: np.ndarray, scale: np.float32) -> np.ndarray:
    """Integer pixels to a new contiguous float32 array times ``scale`` (one allocation)."""
    out = values.astype(np.float32, order="C")  # also swaps big-endian data to native order
    out *= scale
    return out


def _as_uint8(data: object) -> np.ndarray:
    """A zero-copy uint8 view of a message's ``data`` (array.array, bytes or a list)."""
    if isinstance(data, (array.array, bytes, bytearray, memoryview, np.ndarray)):
        return np.frombuffer(data, dtype=np.uint8)
    return np.asarray(data, dtype=np.uint8)


# --------------------------------------------------------------------------- camera info


def camera_info_uncalibrated(info: CameraInfo) -> bool:
    """True for the camera_info of an uncalibrated camera: K[0] (fx) is 0, as a driver without a calibration file
    publishes it; image_proc's rectify node reads the same test as "uncalibrated"."""
    return float(info.k[0]) == 0.0


def check_camera_info(info: CameraInfo, width: int, height: int) -> None:
    """Raise InputImageError unless ``info`` describes a ``width`` x ``height`` image with usable
    intrinsics (finite K and P, fx, fy > 0 in both). Binning and ROI are not supported."""
    if int(info.width) != int(width) or int(info.height) != int(height):
        raise InputImageError(
            f"camera_info size {info.width}x{info.height} does not match the image {width}x{height}"
        )
    if int(info.binning_x) > 1 or int(info.binning_y) > 1:
        raise InputImageError(
            f"camera_info binning {info.binning_x}x{info.binning_y} is not supported; publish unbinned intrinsics"
        )
    roi = info.roi
    if int(roi.width) not in (0, int(width)) or int(roi.height) not in (0, int(height)) or roi.x_offset or roi.y_offset:
        raise InputImageError(
            f"camera_info roi (x={roi.x_offset}, y={roi.y_offset}, {roi.width}x{roi.height}) is not supported; "
            "publish intrinsics of the full image"
        )
    k = np.asarray(info.k, dtype=np.float64)
    p = np.asarray(info.p, dtype=np.float64)
    if not (np.all(np.isfinite(k)) and k[0] > 0 and k[4] > 0):
        raise InputImageError(f"camera_info K is degenerate (fx=K[0]={k[0]}, fy=K[4]={k[4]}; both must be > 0 and finite)")
    if not (np.all(np.isfinite(p)) and p[0] > 0 and p[5] > 0):
        raise InputImageError(
            f"camera_info P is degenerate (fx=P[0]={p[0]}, fy=P[5]={p[5]}; both must be > 0 and finite) "
            "- is the camera calibrated?"
        )


def camera_info_from_intrinsics(
    header: object, width: int, height: int, fx: float, fy: float, cx: float, cy: float
) -> CameraInfo:
    """A distortion-free pinhole CameraInfo: plumb_bob with zero D, K, R = I, P = [K | 0]."""
    if width <= 0 or height <= 0:
        raise ValueError(f"camera_info_from_intrinsics: size must be positive, got {width}x{height}")
    if not (math.isfinite(fx) and math.isfinite(fy) and fx > 0 and fy > 0):
        raise ValueError(f"camera_info_from_intrinsics: fx, fy must be finite and > 0, got fx={fx}, fy={fy}")
    if not (math.isfinite(cx) and math.isfinite(cy)):
        raise ValueError(f"camera_info_from_intrinsics: cx, cy must be finite, got cx={cx}, cy={cy}")
    info = CameraInfo()
    info.header = header
    info.width, info.height = int(width), int(height)
    info.distortion_model = "plumb_bob"
    info.d = [0.0] * 5
    info.k = [float(fx), 0.0, float(cx), 0.0, float(fy), float(cy), 0.0, 0.0, 1.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.p = [float(fx), 0.0, float(cx), 0.0, 0.0, float(fy), float(cy), 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


def scale_camera_info(info: CameraInfo, width: int, height: int) -> CameraInfo:
    """A copy of ``info`` for the same view resampled to ``width`` x ``height`` (input_downscale).

    Focal lengths scale by s = new/old per axis; principal points use the pixel-centre
    convention of cv2.resize (INTER_AREA / INTER_LINEAR): c' = (c + 0.5) s - 0.5. image_proc's
    resize uses c' = c s instead, which is off by (s - 1)/2 px (a quarter pixel at s = 1/2).
    P's Tx, Ty (P[3], P[7], in pixels x baseline) scale with fx, fy. Header, D, R and the rest
    are copied; binning and ROI are reset (the new image is a whole image).
    """
    if int(info.width) <= 0 or int(info.height) <= 0:
        raise InputImageError(f"camera_info has zero size {info.width}x{info.height}; cannot scale it")
    if width <= 0 or height <= 0:
        raise ValueError(f"scale_camera_info: target size must be positive, got {width}x{height}")
    sx = float(width) / float(info.width)
    sy = float(height) / float(info.height)
    k = [float(v) for v in info.k]
    p = [float(v) for v in info.p]
    k[0] *= sx
    k[2] = (k[2] + 0.5) * sx - 0.5
    k[4] *= sy
    k[5] = (k[5] + 0.5) * sy - 0.5
    p[0] *= sx
    p[2] = (p[2] + 0.5) * sx - 0.5
    p[3] *= sx
    p[5] *= sy
    p[6] = (p[6] + 0.5) * sy - 0.5
    p[7] *= sy
    out = CameraInfo()
    out.header = info.header
    out.width, out.height = int(width), int(height)
    out.distortion_model = info.distortion_model
    out.d = [float(v) for v in info.d]
    out.k = k
    out.r = [float(v) for v in info.r]
    out.p = p
    return out


# --------------------------------------------------------------------------- output images


def _cv2_to_imgmsg(array_: np.ndarray, encoding: str, header: object) -> Image:
    """cv_bridge's cv2_to_imgmsg with its numpy-1.26 DeprecationWarning (``tostring``) silenced."""
    from cv_bridge import CvBridge

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        msg = CvBridge().cv2_to_imgmsg(np.ascontiguousarray(array_), encoding=encoding)
    msg.header = header
    msg.is_bigendian = False  # arrays are made little-endian ('<') before the call
    return msg


def millimetres(depth: np.ndarray | float) -> np.ndarray:
    """Metres to the whole millimetres 16UC1 carries: rounded half up, like depth_image_proc's ``fromMeters``."""
    return np.floor(np.asarray(depth, dtype=np.float64) * 1000.0 + 0.5)


def depth_to_image_msg(depth: np.ndarray, header: object, encoding: str = "32FC1") -> Image:
    """REP 118 depth image.

    32FC1: metres as float32; NaN (invalid) and +-Inf (REP 117: too close / out of range) pass
    through unchanged. 16UC1: millimetres, rounded half up like depth_image_proc's
    ``fromMeters`` (floor(1000 d + 0.5)); NaN, +-Inf and anything outside 1..65535 mm become 0,
    which REP 118 reserves for "invalid".
    """
    depth = np.asarray(depth)
    if depth.ndim != 2 or depth.size == 0:
        raise ValueError(f"depth must be a non-empty H x W array, got shape {depth.shape}")
    if encoding == "32FC1":
        return _cv2_to_imgmsg(depth.astype("<f4"), "32FC1", header)
    if encoding == "16UC1":
        with np.errstate(invalid="ignore", over="ignore"):
            mm = millimetres(depth)
            ok = np.isfinite(mm) & (mm >= 1) & (mm <= 65535)
        out = np.where(ok, mm, 0).astype("<u2")
        # cv_bridge maps "16UC1" to an 8-bit type and would refuse a uint16 array; "passthrough"
        # derives the name from the dtype, which gives the correct "16UC1".
        msg = _cv2_to_imgmsg(out, "passthrough", header)
        assert msg.encoding == "16UC1", msg.encoding
        return msg
    raise ValueError(f"depth encoding {encoding!r} is not supported; use one of {DEPTH_ENCODINGS}")


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Linear [0, 1] floats to uint8, clipped and rounded half up (NaN -> 0); uint8 passes through."""
    if values.dtype == np.uint8:
        return values
    if not np.issubdtype(values.dtype, np.floating):
        raise ValueError(f"expected float values in [0, 1] or uint8, got dtype {values.dtype}")
    # fmax/fmin drop NaN (fmax(NaN, 0) = 0), so no separate nan_to_num pass is needed.
    scaled = np.fmax(values.astype(np.float32), np.float32(0.0))
    np.fmin(scaled, np.float32(1.0), out=scaled)
    scaled *= np.float32(255.0)
    scaled += np.float32(0.5)
    return scaled.astype(np.uint8)


def aif_to_image_msg(aif: np.ndarray, header: object) -> Image:
    """All-in-focus image for display: H x W -> mono8, H x W x 3 (RGB) -> rgb8.

    Values are written as given (the caller applies the transfer curve, ``aif_transfer``), clipped to
    [0, 1] and rounded to 8 bits. 8-bit was
    chosen because RViz2's Image display shows mono8/rgb8 as they are, has no rgb16, and
    rescales mono16 per frame by its min/max (brightness would flicker between frames).
    """
    aif = np.asarray(aif)
    if aif.ndim == 3 and aif.shape[2] == 1:
        aif = aif[:, :, 0]
    if aif.size == 0 or not (aif.ndim == 2 or (aif.ndim == 3 and aif.shape[2] == 3)):
        raise ValueError(f"all-in-focus image must be H x W or H x W x 3 (RGB), got shape {aif.shape}")
    return _cv2_to_imgmsg(_to_uint8(aif), "mono8" if aif.ndim == 2 else "rgb8", header)


def confidence_to_image_msg(confidence: np.ndarray, header: object) -> Image:
    """Per-pixel confidence as 32FC1, clipped to [0, 1] (NaN stays NaN)."""
    confidence = np.asarray(confidence)
    if confidence.ndim != 2 or confidence.size == 0:
        raise ValueError(f"confidence must be a non-empty H x W array, got shape {confidence.shape}")
    return _cv2_to_imgmsg(np.clip(confidence.astype("<f4"), 0.0, 1.0), "32FC1", header)


# --------------------------------------------------------------------------- point cloud


def depth_to_pointcloud2(
    depth: np.ndarray, info: CameraInfo, header: object, rgb: np.ndarray | None = None, decimation: int = 1
) -> PointCloud2:
    """Organised point cloud exactly as depth_image_proc's point_cloud_xyz(rgb) builds it.

    ``depth`` is H x W metres; non-finite values (NaN, +-Inf) give NaN points, as
    depth_image_proc's float path does (its ``invalid_depth`` option is not reproduced).
    Intrinsics come from P: fx = P[0], fy = P[5], cx = P[2], cy = P[6]; Tx/Ty are ignored, as there.
    The arithmetic is float32 in depth_image_proc's order, so points match it to the bit.
    With non-zero D (our depth is on the raw sensor grid: the PSFs are calibrated there, so it is not
    rectified), each pixel's ray is undistorted through K and D (``undistorted_rays``), in the raw camera frame;
    depth_image_proc, which assumes a rectified image, would bend the cloud.
    ``rgb``: None, or an H x W (grey) / H x W x 3 (RGB) image, float linear [0, 1] or uint8,
    packed as depth_image_proc does: uint32 0x00RRGGBB reinterpreted as the float32 'rgb' field.
    An rgb image of another size raises InputImageError (depth_image_proc drops such frames).
    ``decimation`` n keeps every n-th pixel of every n-th row (from pixel (0, 0)): the cloud is
    ceil(H/n) x ceil(W/n), and each point is projected with the full-resolution intrinsics at its
    own pixel, so it is the point the full cloud has there (and the one image_proc's
    crop_decimate + point_cloud_xyz would give). Full clouds are what make small computers lag.
    """
    if int(decimation) != decimation or decimation < 1:
        raise ValueError(f"points decimation must be an integer >= 1, got {decimation!r}")
    depth = np.asarray(depth)
    if depth.ndim != 2 or depth.size == 0:
        raise ValueError(f"depth must be a non-empty H x W array, got shape {depth.shape}")
    height, width = depth.shape
    p = [float(v) for v in info.p]
    if not (p[0] > 0 and p[5] > 0 and all(math.isfinite(v) for v in p)):
        raise InputImageError(f"camera_info P is degenerate (fx=P[0]={p[0]}, fy=P[5]={p[5]}); cannot project depth")
    if int(info.width) and int(info.height) and (int(info.width), int(info.height)) != (width, height):
        raise InputImageError(
            f"camera_info size {info.width}x{info.height} does not match the depth image {width}x{height}"
        )

    colour = None
    if rgb is not None:
        rgb = np.asarray(rgb)
        if rgb.shape[:2] != (height, width) or not (rgb.ndim == 2 or (rgb.ndim == 3 and rgb.shape[2] in (1, 3))):
            raise InputImageError(
                f"rgb image of shape {rgb.shape} does not match the depth image {width}x{height} "
                "(need H x W or H x W x 3 at the depth resolution; depth_image_proc drops such frames)"
            )
        colour = _to_uint8(rgb)
        if colour.ndim == 3 and colour.shape[2] == 1:
            colour = colour[:, :, 0]

    # float32 in depth_image_proc's order: constant = float(1.0 / f) (double, then float),
    # x = (u - cx) * depth * constant.
    # Non-finite depth -> NaN z first (2-D, cheap); x and y then come out NaN by arithmetic.
    step = int(decimation)
    z = np.array(depth[::step, ::step], dtype=np.float32, copy=True)
    z[~np.isfinite(z)] = np.nan
    if colour is not None and step > 1:
        colour = colour[::step, ::step]
    height, width = z.shape  # the cloud's size from here on
    centre_x, centre_y = np.float32(p[2]), np.float32(p[6])
    constant_x, constant_y = np.float32(1.0 / p[0]), np.float32(1.0 / p[5])
    u = np.arange(0, depth.shape[1], step, dtype=np.float32)[None, :]  # full-resolution pixel coordinates
    v = np.arange(0, depth.shape[0], step, dtype=np.float32)[:, None]
    if np.any(np.asarray(info.d, dtype=np.float64) != 0):
        ray_x, ray_y = undistorted_rays(info, u[0], v[:, 0])
        x, y = ray_x * z, ray_y * z
    else:
        x = (u - centre_x) * z * constant_x
        y = (v - centre_y) * z * constant_y

    floats_per_point = 8 if colour is not None else 4
    buffer = np.zeros((height, width, floats_per_point), dtype="<f4")
    buffer[:, :, 0] = x
    buffer[:, :, 1] = y
    buffer[:, :, 2] = z
    if colour is not None:
        # 'rgb' is uint32 0x00RRGGBB stored little-endian at offset 16: bytes b, g, r, 0. Writing
        # the bytes directly avoids building uint32 intermediates.
        rgb_bytes = buffer.view(np.uint8).reshape(height, width, 32)
        if colour.ndim == 2:  # grey: r = g = b, as depth_image_proc's mono8 path
            rgb_bytes[:, :, 16] = rgb_bytes[:, :, 17] = rgb_bytes[:, :, 18] = colour
        else:
            rgb_bytes[:, :, 16] = colour[:, :, 2]
            rgb_bytes[:, :, 17] = colour[:, :, 1]
            rgb_bytes[:, :, 18] = colour[:, :, 0]

    cloud = PointCloud2()
    cloud.header = header
    cloud.height, cloud.width = height, width
    cloud.fields = [
        PointField(name="x", offset=0, datatype=_FLOAT32, count=1),
        PointField(name="y", offset=4, datatype=_FLOAT32, count=1),
        PointField(name="z", offset=8, datatype=_FLOAT32, count=1),
    ]
    if colour is not None:
        cloud.fields.append(PointField(name="rgb", offset=16, datatype=_FLOAT32, count=1))
    cloud.is_bigendian = False
    cloud.point_step = 4 * floats_per_point
    cloud.row_step = cloud.point_step * width
    cloud.is_dense = False
    data = array.array("B")
    data.frombytes(memoryview(buffer).cast("B"))  # one copy; array.array skips the setter's per-byte check
    cloud.data = data
    return cloud


# --------------------------------------------------------------------------- laser scan
#
# depthimage_to_laserscan (ros-perception, ros2 branch: DepthImageToLaserScan::convert_msg and
# convert<T>, with image_geometry's PinholeCameraModel), vectorised. The C++ mixes float and
# double; that mix is kept operation by operation, because it decides which scan index a pixel
# lands in (atan is not linear in u, so some indices get two pixels and some none) and so which
# indices stay NaN. With it, the same depth message gives the same scan as that node.

_DISTORTION_MODELS = ("plumb_bob", "rational_polynomial", "equidistant")  # image_geometry's supported ones


def _rectify_pixel(info: CameraInfo, u: float, v: float) -> tuple[float, float]:
    """image_geometry's ``rectifyPoint``: the pixel as is without distortion, else undistorted by
    OpenCV in float32; an unknown distortion model is an error there, so it is one here."""
    model = str(info.distortion_model)
    if model not in _DISTORTION_MODELS:
        raise InputImageError(
            f"camera_info distortion_model {model!r} is unknown (image_geometry supports "
            f"{', '.join(_DISTORTION_MODELS)}); depthimage_to_laserscan cannot rectify it, so no scan"
        )
    d = np.asarray(info.d, dtype=np.float64)
    if not np.any(d != 0):
        return u, v
    import cv2

    k = np.asarray(info.k, dtype=np.float64).reshape(3, 3)
    r = np.asarray(info.r, dtype=np.float64).reshape(3, 3)
    p = np.asarray(info.p, dtype=np.float64).reshape(3, 4)
    point = np.array([[[u, v]]], dtype=np.float32)  # image_geometry passes a cv::Point2f
    try:
        if model == "equidistant":
            out = cv2.fisheye.undistortPoints(point, k, d, R=r, P=p)
        else:
            out = cv2.undistortPoints(point, k, d, R=r, P=p)
    except cv2.error as exc:
        raise InputImageError(f"camera_info D ({len(d)} coefficients) cannot undistort with model {model!r}: {exc}")
    return float(out[0, 0, 0]), float(out[0, 0, 1])


def undistorted_rays(info: CameraInfo, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x/z, y/z) of the ray of every raw pixel (u columns x v rows) in the camera's own optical frame, undistorted
    through K and D by OpenCV (cv2.fisheye for 'equidistant'): len(v) x len(u) float32 each, read-only (cached per
    camera and grid: a VGA grid takes OpenCV tens of milliseconds). R is left out: it turns a stereo camera's rays
    into the rectified frame, and our depth lies along the raw optical axis, in the frame the header names.
    Raises InputImageError for a distortion model image_geometry does not know or a D OpenCV cannot use."""
    model = str(info.distortion_model)
    if model not in _DISTORTION_MODELS:
        raise InputImageError(f"camera_info distortion_model {model!r} is unknown (image_geometry supports "
                              f"{', '.join(_DISTORTION_MODELS)}) and D is not zero: the pixels' rays are unknown")
    return _undistorted_rays(model, tuple(float(x) for x in info.k), tuple(float(x) for x in info.d),
                             tuple(float(x) for x in u), tuple(float(x) for x in v))


@functools.lru_cache(maxsize=2)  # (8 bytes a pixel each; FrameProcessor.release clears it)
def _undistorted_rays(model: str, k: tuple, d: tuple, u: tuple, v: tuple) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    k_matrix = np.asarray(k).reshape(3, 3)
    grid = np.stack(np.meshgrid(np.asarray(u), np.asarray(v)), axis=-1).reshape(-1, 1, 2)
    try:
        if model == "equidistant":
            normalised = cv2.fisheye.undistortPoints(grid, k_matrix, np.asarray(d))
        else:
            # 20 iterations, not undistortPoints' 5: its rays miss their pixels by 4e-3 px at the corners
            criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 20, 1e-10)
            normalised = cv2.undistortPointsIter(grid, k_matrix, np.asarray(d), None, None, criteria)
    except cv2.error as exc:
        raise InputImageError(f"camera_info D ({len(d)} coefficients) cannot undistort with model {model!r}: "
                              f"{' '.join(str(exc).split())}") from None
    normalised = normalised.reshape(len(v), len(u), 2).astype(np.float32)
    rays = normalised[:, :, 0].copy(), normalised[:, :, 1].copy()
    for ray in rays:
        ray.flags.writeable = False
    return rays


def clear_ray_cache() -> None:
    """Drop the cached undistorted rays (a solver released: its memory with it)."""
    _undistorted_rays.cache_clear()


def _pixel_ray(p: list[float], u: float, v: float) -> tuple[float, float, float]:
    """image_geometry's ``projectPixelTo3dRay`` (from P, with its Tx and Ty)."""
    return (u - p[2] - p[3]) / p[0], (v - p[6] - p[7]) / p[5], 1.0


def _angle_between_rays(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    dot = a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
    norm = math.sqrt(a[0] ** 2 + a[1] ** 2 + a[2] ** 2) * math.sqrt(b[0] ** 2 + b[1] ** 2 + b[2] ** 2)
    cosine = dot / norm
    return math.acos(cosine) if -1.0 <= cosine <= 1.0 else math.nan  # C++ acos gives NaN, Python raises


def laserscan_angles(info: CameraInfo, width: int) -> tuple[np.float32, np.float32, np.float32]:
    """(angle_min, angle_max, angle_increment) of the scan of a ``width``-wide depth image, as the
    float32 LaserScan fields depthimage_to_laserscan fills: angle_max is the angle between the rays
    of pixels (0, cy) and (cx, cy), angle_min minus that between (cx, cy) and (width - 1, cy), and
    the increment (angle_max - angle_min) / (width - 1) in float."""
    if width < 2:
        raise InputImageError(f"depth image is {width} pixel(s) wide; a scan needs at least 2 columns")
    p = [float(v) for v in info.p]
    if not (p[0] > 0 and p[5] > 0 and all(math.isfinite(v) for v in p)):
        raise InputImageError(f"camera_info P is degenerate (fx=P[0]={p[0]}, fy=P[5]={p[5]}); cannot compute a scan")
    cx, cy = p[2], p[6]
    if not 0.0 <= cx <= width - 1:  # acos is unsigned: the C++ would index outside its ranges
        raise InputImageError(f"camera_info cx={cx:g} must lie inside the {width}-pixel-wide image for a scan")
    left = _pixel_ray(p, *_rectify_pixel(info, 0.0, cy))
    right = _pixel_ray(p, *_rectify_pixel(info, float(width - 1), cy))
    centre = _pixel_ray(p, *_rectify_pixel(info, cx, cy))
    angle_max = np.float32(_angle_between_rays(left, centre))
    # Negative: the scan turns counter-clockwise, the image's u axis the other way.
    angle_min = np.float32(-_angle_between_rays(centre, right))
    increment = np.float32(angle_max - angle_min) / np.float32(width - 1)
    if not (np.isfinite(angle_min) and np.isfinite(angle_max) and increment > 0):
        raise InputImageError(
            f"scan angles are degenerate (angle_min={angle_min}, angle_max={angle_max}, cx={cx:g}, "
            f"width {width})"
        )
    return angle_min, angle_max, increment


def check_scan_height(scan_height: int, cy: float, height: int) -> int:
    """The first of the ``scan_height`` rows the scan uses, int(cy - scan_height / 2); refused
    (InputImageError) when the rows do not fit around cy, as depthimage_to_laserscan refuses them."""
    half = float(scan_height) / 2.0
    if scan_height < 1 or half > cy or half > float(height) - cy:
        raise InputImageError(
            f"scan_height ({scan_height} pixels) is too large for the image height: {height} rows with the "
            f"principal point at cy={cy:g} leave room for at most {int(2 * max(0.0, min(cy, height - cy)))}"
        )
    return int(cy - half)


def laserscan_ranges(
    depth: np.ndarray, fx: float, cx: float, cy: float, angle_min: float, angle_increment: float,
    scan_height: int, range_min: float, range_max: float,
) -> np.ndarray:
    """One range per column (float32), as depthimage_to_laserscan's ``convert<T>``.

    ``depth``: H x W float32 metres (32FC1) or uint16 millimetres (16UC1, 0 = invalid). For each
    pixel of the ``scan_height`` rows from int(cy - scan_height/2): th = -atan2((u - cx)/fx, 1),
    index = int((th - angle_min) / angle_increment), r = hypot((u - cx) z / fx, z). Invalid
    depth passes through as r (NaN, +-Inf; 0 for 16UC1, which then only counts if range_min <= 0).
    A range starts as NaN and a new r replaces it by ``use_point``: a finite r in
    [range_min, range_max] beats a non-finite one, +-Inf beats NaN, the shorter finite r wins.
    Pixels whose index falls outside the scan are skipped (the C++ would write out of bounds).
    """
    depth = np.asarray(depth)
    if depth.ndim != 2 or depth.dtype not in (np.uint16, np.float32):
        raise ValueError(f"depth must be H x W uint16 (mm) or float32 (m), got {depth.dtype} {depth.shape}")
    height, width = depth.shape
    offset = check_scan_height(scan_height, cy, height)
    rows = depth[offset: offset + scan_height]

    du = np.arange(width, dtype=np.float32) - np.float32(cx)  # (u - center_x) in float
    if depth.dtype == np.uint16:
        unit = np.float32(0.001)  # DepthTraits<uint16_t>::toMeters: depth * 0.001f
        unit_scaling = float(unit)
        values = rows.astype(np.float32)
        valid = rows != 0
        z = values * unit
    else:
        unit_scaling = 1.0
        values = rows
        valid = np.isfinite(rows)
        z = rows
    constant_x = np.float32(unit_scaling / fx)
    # Atan2(x, z) with the depth divided out, in double; the index truncates towards zero like int().
    th = -np.arctan2(du.astype(np.float64) * np.float64(constant_x), unit_scaling)
    index = np.trunc((th - np.float64(angle_min)) / np.float64(angle_increment)).astype(np.int64)
    in_scan = (index >= 0) & (index < width)

    with np.errstate(invalid="ignore", over="ignore"):
        x = (du[None, :] * values) * constant_x  # float, in the C++ order
        r = np.sqrt(np.square(x, dtype=np.float64) + np.square(z, dtype=np.float64)).astype(np.float32)
    r = np.where(valid, r, values)  # 'double r = depth' passes NaN/Inf (and 16UC1's 0) through

    rmin, rmax = np.float32(range_min), np.float32(range_max)  # use_point compares in float
    with np.errstate(invalid="ignore"):
        usable = np.isfinite(r) & (r >= rmin) & (r <= rmax) & in_scan[None, :]
    ranges = np.full(width, np.nan, dtype=np.float32)
    # Usable values: the shortest wins, whatever the order.
    columns = usable.any(axis=0)
    if columns.any():
        column_min = np.where(usable, r, np.inf).min(axis=0)
        best = np.full(width, np.inf, dtype=np.float32)
        np.minimum.at(best, index[columns], column_min[columns])
        found = np.isfinite(best)
        ranges[found] = best[found]
    else:
        found = np.zeros(width, dtype=bool)
    # No usable value: the last +-Inf in loop order (rows, then columns) wins over NaN.
    infinite = np.isinf(r) & in_scan[None, :]
    if infinite.any():
        v, u = np.nonzero(infinite)
        last = np.full(width, -1, dtype=np.int64)
        np.maximum.at(last, index[u], v * width + u)
        take = (last >= 0) & ~found
        ranges[take] = r.ravel()[last[take]]
    return ranges


def _depth_pixels(msg: Image) -> np.ndarray:
    """A REP 118 depth message's pixels: H x W float32 (32FC1) or uint16 (16UC1), native order."""
    encoding = str(msg.encoding)
    codes = {"32FC1": "f4", "16UC1": "u2"}
    if encoding not in codes:
        raise InputImageError(f"depth image has unsupported encoding {encoding!r}; a scan needs 32FC1 or 16UC1")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    dtype = np.dtype(codes[encoding]).newbyteorder(">" if msg.is_bigendian else "<")
    raw = _as_uint8(msg.data)
    if height <= 0 or width <= 0 or step < width * dtype.itemsize or raw.size != step * height:
        raise InputImageError(
            f"{encoding} depth image is inconsistent: {width}x{height}, step={step}, len(data)={raw.size}"
        )
    rows = np.ascontiguousarray(raw.reshape(height, step)[:, : width * dtype.itemsize])
    return rows.view(dtype).reshape(height, width).astype(dtype.newbyteorder("="))


def depth_image_to_laserscan(
    depth_msg: Image, info: CameraInfo, scan_height: int = 1, range_min: float = 0.45, range_max: float = 10.0,
    scan_time: float = 0.033, frame_id: str = "",
) -> LaserScan:
    """depthimage_to_laserscan's ``convert_msg``: a LaserScan from a published 32FC1/16UC1 depth
    image and its camera_info, one range per column (see ``laserscan_ranges``).

    The header is the depth's, with ``frame_id`` when given; that frame must be x-forward
    (REP 103 body frame, not the optical frame), like the original's ``output_frame``.
    time_increment is 0, as there. Raises InputImageError for an unsupported encoding, a
    ``scan_height`` too large for the image, or intrinsics the scan cannot use.
    """
    from std_msgs.msg import Header

    if not (0 <= range_min < range_max):
        raise InputImageError(f"scan range [{range_min}, {range_max}] m is empty; need 0 <= range_min < range_max")
    depth = _depth_pixels(depth_msg)
    angle_min, angle_max, increment = laserscan_angles(info, depth.shape[1])
    p = [float(v) for v in info.p]
    ranges = laserscan_ranges(depth, p[0], p[2], p[6], angle_min, increment, int(scan_height), range_min, range_max)

    scan = LaserScan()
    scan.header = Header(stamp=depth_msg.header.stamp, frame_id=frame_id or depth_msg.header.frame_id)
    scan.angle_min, scan.angle_max, scan.angle_increment = float(angle_min), float(angle_max), float(increment)
    scan.time_increment = 0.0
    scan.scan_time = float(np.float32(scan_time))
    scan.range_min, scan.range_max = float(np.float32(range_min)), float(np.float32(range_max))
    data = array.array("f")
    data.frombytes(ranges.astype(np.float32).tobytes())  # array.array skips the setter's per-value check
    scan.ranges = data
    return scan
