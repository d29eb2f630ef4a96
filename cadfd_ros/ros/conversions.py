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
import math
import warnings

import numpy as np
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField

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


def image_msg_to_capture(msg: Image) -> np.ndarray:
    """Decode a ``sensor_msgs/Image`` into float32 linear intensity in [0, 1].

    Returns H x W for mono encodings and H x W x 3 (RGB order) for colour and Bayer encodings.
    Raises InputImageError naming the field at fault for an unsupported encoding, a zero size,
    a ``step`` shorter than a row, or ``data`` whose length is not ``step * height``.
    """
    encoding = str(msg.encoding)
    if encoding not in _ENCODINGS:
        raise InputImageError(
            f"image encoding {encoding!r} is not supported; supported encodings: "
            + ", ".join(SUPPORTED_ENCODINGS)
        )
    dtype_code, channels, layout = _ENCODINGS[encoding]
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

    rows = raw.reshape(height, step)
    if step != row_bytes:
        # Row padding: drop it. The copy makes the rows contiguous for the dtype view below.
        rows = np.ascontiguousarray(rows[:, :row_bytes])
    # Byte order only matters for 16-bit data; 8-bit ignores is_bigendian.
    dtype = np.dtype(dtype_code).newbyteorder(">" if msg.is_bigendian else "<")
    pixels = rows.view(dtype).reshape(height, width, channels)
    scale = np.float32(1.0 / np.iinfo(dtype).max)

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
            mm = np.floor(depth.astype(np.float64) * 1000.0 + 0.5)
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

    Values stay *linear* (no sRGB curve), clipped to [0, 1] and rounded to 8 bits. 8-bit was
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
    depth: np.ndarray, info: CameraInfo, header: object, rgb: np.ndarray | None = None
) -> PointCloud2:
    """Organised point cloud exactly as depth_image_proc's point_cloud_xyz(rgb) builds it.

    ``depth`` is H x W metres; non-finite values (NaN, +-Inf) give NaN points, as
    depth_image_proc's float path does (its ``invalid_depth`` option is not reproduced).
    Intrinsics come from P: fx = P[0], fy = P[5], cx = P[2], cy = P[6]; Tx/Ty are ignored, as there.
    The arithmetic is float32 in depth_image_proc's order, so points match it to the bit.
    ``rgb``: None, or an H x W (grey) / H x W x 3 (RGB) image, float linear [0, 1] or uint8,
    packed as depth_image_proc does: uint32 0x00RRGGBB reinterpreted as the float32 'rgb' field.
    An rgb image of another size raises InputImageError (depth_image_proc drops such frames).
    """
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
    z = np.array(depth, dtype=np.float32, copy=True)
    z[~np.isfinite(z)] = np.nan
    centre_x, centre_y = np.float32(p[2]), np.float32(p[6])
    constant_x, constant_y = np.float32(1.0 / p[0]), np.float32(1.0 / p[5])
    u = np.arange(width, dtype=np.float32)[None, :]
    v = np.arange(height, dtype=np.float32)[:, None]
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
