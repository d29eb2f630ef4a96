"""One ROS image in, the node's output messages out.

This is the per-frame work shared by the lifecycle node and ``cadfd bag``. It holds no rclpy
node, so both run exactly the same code: image -> capture -> (downscale) -> solver ->
REP 118 depth, camera_info, all-in-focus, confidence, organised cloud, LaserScan,
ReconstructionInfo.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from cadfd_ros.errors import CadfdError, InputImageError
from cadfd_ros.io.images import apply_input_transfer, linear_to_srgb
from cadfd_ros.optics.psf_bank import PSFBank
from cadfd_ros.params import DEPTH_ENCODINGS
from cadfd_ros.pipeline import Reconstruction, Reconstructor


@dataclass(frozen=True)
class OutputSettings:
    """What to publish and how; everything here may change between frames."""

    depth_encoding: str = "32FC1"
    min_depth: float = 0.0  # metres; depth below is invalid
    max_depth: float = 0.0  # metres; depth above is invalid; 0 disables the limit
    publish_aif: bool = True
    aif_transfer: str = "srgb"  # of the 8-bit aif/image and the cloud's rgb: srgb (display) or linear
    publish_points: bool = True
    points_colored: bool = False
    publish_confidence: bool = True
    output_frame_id: str = ""  # empty: the input image's frame_id
    points_decimation: int = 1  # every n-th pixel of every n-th row
    publish_scan: bool = True
    scan_height: int = 1  # depth rows per range, centred on cy
    scan_range_min: float | None = None  # metres; None: the bank's nearest depth
    scan_range_max: float | None = None  # metres; None: the bank's farthest depth
    scan_time: float | None = None  # seconds; None: the measured period between frames
    scan_frame_id: str = ""  # empty: the depth's frame_id (should be an x-forward frame)
    max_stamp_skew: float | None = 5.0  # seconds from the node clock; None: no check (the node's, not per frame)

    def __post_init__(self) -> None:
        if self.depth_encoding not in DEPTH_ENCODINGS:
            raise CadfdError(f"depth_encoding must be one of {', '.join(DEPTH_ENCODINGS)}, got {self.depth_encoding!r}")
        if self.min_depth < 0 or self.max_depth < 0:
            raise CadfdError(f"min_depth/max_depth must be >= 0, got {self.min_depth}/{self.max_depth}")
        if self.max_depth and self.max_depth <= self.min_depth:
            raise CadfdError(f"max_depth ({self.max_depth}) must be greater than min_depth ({self.min_depth}) or 0")
        if self.points_decimation < 1:
            raise CadfdError(f"points_decimation must be >= 1, got {self.points_decimation}")
        if self.scan_height < 1:
            raise CadfdError(f"scan_height must be >= 1, got {self.scan_height}")
        lo, hi = self.scan_range_min, self.scan_range_max
        if lo is not None and hi is not None and hi <= lo:
            raise CadfdError(f"scan_range_max ({hi}) must be greater than scan_range_min ({lo}) or 0 (the bank's)")


@dataclass
class FrameOutputs:
    """Messages for one input frame; optional outputs are None when disabled or impossible."""

    reconstruction: Reconstruction
    header: object  # std_msgs/Header with the input stamp and the output frame id
    depth: object
    depth_info: object | None
    aif: object | None
    aif_info: object | None
    confidence: object | None
    points: object | None
    info: object | None  # cadfd_ros_interfaces/ReconstructionInfo when the package is built
    intrinsics_source: str  # "camera_info" or "psf_bank" (or "none": no cloud, no camera_info)
    seconds: dict[str, float]  # per-stage wall time: convert, solve, publish-side encode
    scan: object | None = None  # sensor_msgs/LaserScan
    notes: list[str] = field(default_factory=list)  # outputs left out of this frame, and why


def _area_weights(old_size: int, factor: float) -> np.ndarray:
    """(new, old) matrix that area-averages a centred 1-D kernel by ``factor``.

    Old pixel i covers [i - c_old - 0.5, i - c_old + 0.5] (c_old the centre index); new pixel
    j covers factor-wide intervals centred on (j - c_new) * factor, so the centre stays centred.
    """
    half_old = old_size // 2
    half_new = int(math.ceil((half_old + 0.5) / factor - 0.5))
    new_size = 2 * half_new + 1
    old_lo = np.arange(old_size) - half_old - 0.5
    new_lo = (np.arange(new_size) - half_new - 0.5) * factor
    overlap = np.minimum(new_lo[:, None] + factor, old_lo[None, :] + 1) - np.maximum(new_lo[:, None], old_lo[None, :])
    return np.clip(overlap, 0, None)


def downscale_psf_bank(bank: PSFBank, factor: int) -> PSFBank:
    """The bank as seen by a camera binned ``factor`` x ``factor``: PSFs area-averaged, pitch x factor.

    Why: the blur is calibrated in full-resolution pixels; a capture shrunk by ``factor`` sees
    every PSF shrunk by the same factor, so the bank must follow or depth comes out wrong.
    """
    if factor == 1:
        return bank
    weights = _area_weights(bank.kernel_size, float(factor))
    psfs = np.einsum("jk,lckm,nm->lcjn", weights, bank.psfs.astype(np.float64), weights)
    psfs /= psfs.sum(axis=(2, 3), keepdims=True)
    metadata = dict(bank.metadata)
    if "pixel_pitch_m" in metadata:
        metadata["pixel_pitch_m"] *= factor
    for key in ("frame_width_px", "frame_height_px"):  # the calibration frame, binned alike
        if key in metadata:
            metadata[key] = max(1, int(metadata[key]) // factor)
    return PSFBank(psfs.astype(np.float32), bank.depths, metadata, source=f"{bank.source} (downscaled x{factor})")


def downscale_capture(capture: np.ndarray, factor: int) -> np.ndarray:
    """Area-average a capture by an integer factor (cv2 INTER_AREA: pixel-centre convention)."""
    if factor == 1:
        return capture
    import cv2

    height, width = capture.shape[:2]
    new_w, new_h = width // factor, height // factor
    if new_w < 1 or new_h < 1:
        raise InputImageError(f"image {width}x{height} is too small for input_downscale={factor}")
    return cv2.resize(capture, (new_w, new_h), interpolation=cv2.INTER_AREA)


def apply_depth_limits(depth: np.ndarray, min_depth: float, max_depth: float) -> np.ndarray:
    """NaN (REP 117 invalid) outside [min_depth, max_depth]; max_depth 0 means no upper limit.

    Only finite depths are limited: a solver's -Inf/+Inf (REP 117 too close / out of range)
    already says more than NaN would.
    """
    out = np.array(depth, dtype=np.float32, copy=True)
    finite = np.isfinite(out)
    with np.errstate(invalid="ignore"):
        bad = finite & (out < min_depth)
        if max_depth > 0:
            bad |= finite & (out > max_depth)
    out[bad] = np.nan
    return out


def release_heap() -> None:
    """Return freed heap pages to the OS (glibc ``malloc_trim``; a no-op elsewhere). Without it a
    big frame's buffers stay in the process's RSS long after they are freed."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _load_info_type() -> type | None:
    try:
        from cadfd_ros_interfaces.msg import ReconstructionInfo
    except ImportError:  # interfaces not built (make msgs); ~/info is then skipped
        return None
    return ReconstructionInfo


class FrameProcessor:
    """Turns sensor_msgs/Image (+ optional CameraInfo) into the node's output messages."""

    def __init__(self, reconstructor: Reconstructor, input_downscale: int = 1, input_transfer: str = "linear",
                 max_input_pixels: int | None = None, oversize_policy: str = "bin",
                 full_bank: PSFBank | None = None) -> None:
        # The reconstructor must already hold the bank matching ``input_downscale``; ``full_bank``
        # (unbinned) is what a larger, per-frame binning factor is derived from.
        self.reconstructor = reconstructor
        self.input_downscale = int(input_downscale)
        self.input_transfer = input_transfer  # inverted before binning: binning is only right in linear light
        self.max_input_pixels = max_input_pixels
        self.oversize_policy = oversize_policy
        self._full_bank = full_bank if full_bank is not None else (reconstructor.psf_bank if input_downscale == 1
                                                                   else None)
        self._binned: dict[int, Reconstructor] = {}  # per-frame binning factor -> its solver (at most 2)
        self._reported_sizes: set[tuple[int, int]] = set()
        self._reported_scan_frames: set[str] = set()  # depth frames whose scan went out without scan_frame_id
        self._reported_frame_sizes: set[tuple[int, int]] = set()  # frame sizes checked against the calibration
        self.info_type = _load_info_type()
        self._previous_stamp_ns: int | None = None  # of the previous frame: the scan's measured period

    def restart_frame_clock(self) -> None:
        """Forget the previous frame's stamp (after a pause, the gap is no frame period), and the previous
        frame's estimate (temporal_warm_start): the first frame after a pause starts cold."""
        self._previous_stamp_ns = None
        self.reconstructor.reset_temporal_start()
        for binned in self._binned.values():
            binned.reset_temporal_start()

    def frame_period(self, stamp: object) -> float:
        """Seconds since the previous frame's stamp, 0 for the first frame or a stamp that did not
        advance (a replayed bag, a clock reset). Between processed frames: the rate scans come out."""
        now = int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
        previous, self._previous_stamp_ns = self._previous_stamp_ns, now
        if previous is None or now <= previous:
            return 0.0
        return (now - previous) * 1e-9

    def scan_range(self, settings: OutputSettings, info: object | None = None, width: int | None = None
                   ) -> tuple[float, float]:
        """(range_min, range_max) of the scan: the settings', else the bank's nearest depth and the longest ray
        its farthest depth gives over the frame's columns (``info``'s P and ``width``; without them the farthest
        depth). A ray's range is depth / cos(angle): with range_max at the farthest depth, a depth at the bank's
        far end read out of range everywhere but the centre column, so a far background neither marked nor
        cleared; now it is in range, and a costmap whose obstacle range stops short of it clears through it.
        The scan reads the published depth: with 16UC1 the bank's ends as whole millimetres (rounded half up)."""
        from cadfd_ros.ros.conversions import millimetres

        def published(depth: float) -> float:  # as the depth image carries it
            return float(millimetres(depth)) / 1000.0 if settings.depth_encoding == "16UC1" else depth

        lo = settings.scan_range_min
        if lo is None:  # (a ray is never shorter than its depth: no margin)
            lo = min(float(self.bank.depths[0]), published(float(self.bank.depths[0])))
        hi = settings.scan_range_max
        if hi is None:
            hi = max(float(self.bank.depths[-1]), published(float(self.bank.depths[-1])))
            if info is not None and width is not None:
                p = [float(v) for v in info.p]
                widest = max(abs(p[2]), abs(width - 1 - p[2])) / p[0]  # the edge column's tan(angle), as d2ls
                hi *= math.sqrt(1.0 + widest**2) * (1 + 1e-6)  # the margin: the edge ray's float32 rounding
        return lo, hi

    def warmup(self) -> None:
        """Pay first-frame costs up front: solver allocations, and the lazy imports and first
        calls of the conversions (cv_bridge, cv2), which cost about a second on the first frame."""
        from std_msgs.msg import Header

        from cadfd_ros.ros import conversions as conv

        self.reconstructor.warmup(channels=self.bank.num_channels)
        header, small = Header(), np.full((8, 8), 1.0, np.float32)
        conv.depth_to_image_msg(small, header, "32FC1")
        conv.depth_to_image_msg(small, header, "16UC1")
        conv.aif_to_image_msg(np.stack([small] * 3, axis=2), header)
        conv.confidence_to_image_msg(small, header)
        info = conv.camera_info_from_intrinsics(header, 8, 8, 10.0, 10.0, 3.5, 3.5)
        conv.depth_to_pointcloud2(small, info, header, rgb=small)
        conv.depth_image_to_laserscan(conv.depth_to_image_msg(small, header, "16UC1"), info, 1, 0.5, 5.0)

    @property
    def bank(self) -> PSFBank:
        return self.reconstructor.psf_bank

    def binning_for(self, width: int, height: int) -> int:
        """The binning factor of a ``width`` x ``height`` frame: ``input_downscale``, or the
        smallest larger one that brings it within ``max_input_pixels``."""
        factor, limit = self.input_downscale, self.max_input_pixels
        if limit:
            while (width // factor) * (height // factor) > limit and factor < min(width, height):
                factor += 1
        return factor

    def reconstructor_for(self, factor: int) -> Reconstructor:
        """The solver of a binning factor, built from the full bank on first use (method dps: with
        its own sampler), the two most recent kept."""
        if factor == self.input_downscale or self._full_bank is None:
            return self.reconstructor
        if factor not in self._binned:
            while len(self._binned) >= 2:
                self._binned.pop(next(iter(self._binned))).release()
            self._binned[factor] = Reconstructor(downscale_psf_bank(self._full_bank, factor), self.reconstructor.config)
        return self._binned[factor]

    def release(self) -> None:
        """Drop the solvers of per-frame binning factors, then the configured one's caches."""
        from cadfd_ros.ros.conversions import clear_ray_cache

        for recon in self._binned.values():
            recon.release()
        self._binned.clear()
        self.reconstructor.release()
        clear_ray_cache()

    def _oversize(self, width: int, height: int) -> tuple[int, list[str]]:
        """(binning factor, notes) of a frame; raises InputImageError when it is refused."""
        factor = self.binning_for(width, height)
        if factor == self.input_downscale:
            return factor, []
        limit = self.max_input_pixels
        if self.oversize_policy == "refuse" or self._full_bank is None:
            raise InputImageError(
                f"{width}x{height} is {width * height} pixels (after input_downscale {self.input_downscale}: "
                f"{(width // self.input_downscale) * (height // self.input_downscale)}), over max_input_pixels "
                f"{limit}; oversize_policy refuse: bin it upstream, raise max_input_pixels or set oversize_policy bin")
        if (width, height) in self._reported_sizes:
            return factor, []
        self._reported_sizes.add((width, height))
        return factor, [f"{width}x{height} frames are over max_input_pixels {limit}: binned {factor}x{factor} to "
                        f"{width // factor}x{height // factor}, camera_info scaled (reported once per size)"]

    def bank_camera_info(self, header: object, width: int, height: int, bank: PSFBank | None = None) -> object | None:
        """Intrinsics from the bank's optics: fx = fy = focal_length_m / pixel_pitch_m, centred."""
        from cadfd_ros.ros.conversions import camera_info_from_intrinsics

        focal_px = (bank or self.bank).focal_length_px()
        if focal_px is None:
            return None
        cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
        return camera_info_from_intrinsics(header, width, height, focal_px, focal_px, cx, cy)

    def process(
        self, image_msg: object, camera_info: object | None, settings: OutputSettings, tiled: bool = False
    ) -> FrameOutputs:
        """Run one frame; raises InputImageError for a bad frame, CadfdError for a solver failure.

        ``tiled``: solve with ``Reconstructor.reconstruct_tiled`` (the out-of-memory fallback).
        """
        import time

        from std_msgs.msg import Header

        from cadfd_ros.ros import conversions as conv

        seconds: dict[str, float] = {}
        start = time.perf_counter()
        factor, notes = self._oversize(int(image_msg.width), int(image_msg.height))  # before decoding it
        size = (int(image_msg.width), int(image_msg.height))
        if size not in self._reported_frame_sizes:  # against the bank's calibration frame, once per size
            self._reported_frame_sizes.add(size)
            if self._full_bank is not None:
                note = self._full_bank.frame_size_note(*size)
            else:  # only the binned bank: compare binned sizes
                note = self.bank.frame_size_note(size[0] // self.input_downscale, size[1] // self.input_downscale)
            if note is not None:
                notes.append(note)
        recon = self.reconstructor_for(factor)
        # A demosaiced frame reads about a third of the sensor's noise; the raw mosaic shows it. Not after an
        # sRGB curve, nor after binning: a binned frame's own estimate is close to the raw level over the factor
        # (2x2 bins of the node tests' scene: 0.0036-0.0037 against 0.0037-0.0040, the same depth).
        if factor == 1 and self.input_transfer == "linear":
            capture, noise = conv.image_msg_to_capture_and_noise(image_msg)
        else:
            capture, noise = conv.image_msg_to_capture(image_msg), None
        in_h, in_w = capture.shape[:2]
        if camera_info is not None and conv.camera_info_uncalibrated(camera_info):
            # a guess beats no output: the frame goes on with the bank's optics, and says so
            notes.append("camera_info is uncalibrated (K[0] = fx is 0): intrinsics from the PSF bank's optics; "
                         "calibrate the camera for metric points and scan")
            camera_info = None
        if camera_info is not None:
            conv.check_camera_info(camera_info, in_w, in_h)
        capture = apply_input_transfer(capture, self.input_transfer)
        # Clipping is found at full resolution: a binned clipped pixel averages below the level.
        saturated = recon.saturation_mask(capture)
        capture = downscale_capture(capture, factor)
        saturated = downscale_capture(saturated.astype(np.float32), factor) > 0
        height, width = capture.shape[:2]

        header = Header()
        header.stamp = image_msg.header.stamp  # exact input stamp: consumers sync on it
        header.frame_id = settings.output_frame_id or image_msg.header.frame_id
        if camera_info is not None:
            info = conv.scale_camera_info(camera_info, width, height) if (width, height) != (in_w, in_h) else camera_info
            info = _with_header(info, header)
            source = "camera_info"
        else:
            info = self.bank_camera_info(header, width, height, recon.psf_bank)
            source = "psf_bank" if info is not None else "none"
        seconds["convert"] = time.perf_counter() - start

        start = time.perf_counter()
        solve = recon.reconstruct_tiled if tiled else recon.reconstruct
        result = solve(capture, saturated=saturated if saturated.any() else None, noise=noise)
        seconds["solve"] = time.perf_counter() - start

        start = time.perf_counter()
        depth = apply_depth_limits(result.depth, settings.min_depth, settings.max_depth)
        result.depth = depth
        depth_msg = conv.depth_to_image_msg(depth, header, encoding=settings.depth_encoding)
        # 8-bit images are read as display-encoded: the linear solution goes out through the sRGB curve by default
        aif_8bit = result.all_in_focus
        if settings.aif_transfer == "srgb" and (settings.publish_aif or settings.points_colored):
            aif_8bit = linear_to_srgb(aif_8bit)
        aif_msg = conv.aif_to_image_msg(aif_8bit, header) if settings.publish_aif else None
        conf_msg = conv.confidence_to_image_msg(result.confidence, header) if settings.publish_confidence else None
        points = None
        if settings.publish_points and info is not None:
            rgb = aif_8bit if settings.points_colored else None
            try:
                points = conv.depth_to_pointcloud2(depth, info, header, rgb=rgb, decimation=settings.points_decimation)
            except InputImageError as exc:  # e.g. a distortion model without known rays: the rest is still good
                notes.append(f"points not published: {exc}")
        period = self.frame_period(header.stamp)
        scan = None
        if settings.publish_scan and info is not None:
            # From the published message, as depthimage_to_laserscan would read it (16UC1: whole mm).
            range_min, range_max = self.scan_range(settings, info, width)
            try:
                scan = conv.depth_image_to_laserscan(
                    depth_msg, info, settings.scan_height, range_min, range_max,
                    settings.scan_time if settings.scan_time is not None else period, settings.scan_frame_id)
            except InputImageError as exc:  # the other outputs are still good
                notes.append(f"scan not published: {exc}")
            if scan is not None and not settings.scan_frame_id and header.frame_id not in self._reported_scan_frames:
                self._reported_scan_frames.add(header.frame_id)
                notes.append(f"scan is published in the depth's optical frame {header.frame_id!r}: a LaserScan's rays "
                             "lie in its frame's x-y plane, so consumers place them across the view; set scan_frame_id "
                             "to the x-forward frame at the camera, e.g. camera_link (reported once per frame id)")
        seconds["encode"] = time.perf_counter() - start
        if recon is not self.reconstructor:
            # An oversized frame: give its memory back now (measured on 4000x3000 mono8: RSS 303 ->
            # 609 MiB after the frame without this, 306 MiB with it).
            recon.drop_caches()
            release_heap()
        return FrameOutputs(
            reconstruction=result,
            header=header,
            depth=depth_msg,
            depth_info=info,
            aif=aif_msg,
            aif_info=_with_header(info, header) if (aif_msg is not None and info is not None) else None,
            confidence=conf_msg,
            points=points,
            info=self.info_message(result, header, seconds),
            intrinsics_source=source,
            seconds=seconds,
            scan=scan,
            notes=notes,
        )

    def info_message(self, result: Reconstruction, header: object, seconds: dict[str, float]) -> object | None:
        if self.info_type is None:
            return None
        msg = self.info_type()
        msg.header = header
        msg.method = result.method
        msg.sampler = result.sampler or ""
        msg.steps = int(result.steps)
        msg.network_seconds = float(result.network_seconds)
        msg.tiles = int(result.tiles)
        # Solver stages first (from the Reconstructor), then the node's own stages.
        stages = {k: float(v) for k, v in result.timings.items() if k != "total"}
        stages.update({f"node_{k}": v for k, v in seconds.items()})
        msg.stage_names = list(stages)
        msg.stage_seconds = [float(v) for v in stages.values()]
        msg.total_seconds = float(sum(seconds.values()))
        msg.final_residual = float(result.residual)
        lo, hi = result.depth_range()
        msg.min_depth = float(lo)
        msg.max_depth = float(hi)
        msg.valid_fraction = float(result.valid_fraction)
        msg.start = result.start
        msg.warm_data_term = float(result.warm_data_term)
        return msg


def _with_header(info: object, header: object) -> object:
    """A copy of a CameraInfo carrying ``header`` (stamp and frame id must match the image)."""
    import copy

    out = copy.copy(info)
    out.header = header
    return out
