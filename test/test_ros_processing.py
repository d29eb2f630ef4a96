"""cadfd_ros.ros.processing helpers that need no ROS graph: PSF/capture binning, depth limits."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import fftconvolve

from cadfd_ros.optics.psf_bank import default_psf_bank_path, load_psf_bank
from cadfd_ros.ros.processing import apply_depth_limits, downscale_capture, downscale_psf_bank


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_binned_psfs_commute_with_binning(factor):
    # Binning the capture of a scene must equal capturing the binned scene with the binned PSF:
    # bin(x * h) ~= bin(x) * bin_psf(h). This is what makes input_downscale give the same depth.
    bank = load_psf_bank(default_psf_bank_path())
    small = downscale_psf_bank(bank, factor)
    assert small.kernel_size % 2 == 1 and small.kernel_size <= bank.kernel_size // factor + 2
    np.testing.assert_allclose(small.psfs.sum(axis=(2, 3)), 1.0, atol=1e-5)
    assert small.metadata["pixel_pitch_m"] == pytest.approx(bank.metadata["pixel_pitch_m"] * factor)
    assert small.focal_length_px() == pytest.approx(bank.focal_length_px() / factor)

    rng = np.random.default_rng(0)
    size = 48 * factor * 4
    x = np.kron(rng.random((size // 4, size // 4)), np.ones((4, 4))).astype(np.float32)
    layer = bank.num_layers - 1  # the largest, most asymmetric blur
    h, h_small = bank.psfs[layer, 0], small.psfs[layer, 0]
    full = downscale_capture(fftconvolve(x, h, mode="same").astype(np.float32), factor)
    binned = fftconvolve(downscale_capture(x, factor), h_small, mode="same")
    unscaled = fftconvolve(downscale_capture(x, factor), h, mode="same")  # the mistake it prevents
    m = bank.kernel_size  # ignore the borders
    err = np.abs(full - binned)[m:-m, m:-m].mean()
    wrong = np.abs(full - unscaled)[m:-m, m:-m].mean()
    assert err < 0.25 * wrong, (err, wrong)
    assert err < 0.02


def test_depth_limits_make_nan():
    depth = np.array([[0.2, 1.0, 3.0, np.nan]], np.float32)
    np.testing.assert_array_equal(apply_depth_limits(depth, 0.5, 2.0), [[np.nan, 1.0, np.nan, np.nan]])
    np.testing.assert_array_equal(apply_depth_limits(depth, 0.0, 0.0), depth)  # 0: no upper limit
    assert apply_depth_limits(depth, 0.0, 0.0) is not depth  # a copy: the solver's array is not touched
    inf = np.array([[-np.inf, np.inf]], np.float32)  # REP 117 too close / out of range stay as they are
    np.testing.assert_array_equal(apply_depth_limits(inf, 0.5, 2.0), inf)


def test_downscale_capture_sizes():
    assert downscale_capture(np.zeros((97, 130, 3), np.float32), 2).shape == (48, 65, 3)
    ones = np.ones((8, 8), np.float32)
    assert downscale_capture(ones, 1) is ones  # factor 1: the frame itself, no copy
    # an integer factor averages each block (INTER_AREA)
    ramp = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_allclose(downscale_capture(ramp, 2), [[2.5, 4.5], [10.5, 12.5]], atol=1e-6)


def test_a_scan_in_the_optical_frame_is_reported_once(tmp_path):
    """Without scan_frame_id the scan carries the depth's (optical) frame, where its rays would lie across the
    view: the first frame says so, once per frame id; with scan_frame_id set nothing is said."""
    from ros_test_util import camera_info_msg, image_msg, simulated_capture, small_bank

    from cadfd_ros.params import PARAMS
    from cadfd_ros.ros.parameters import build_processor, output_settings

    bank = small_bank(tmp_path / "bank6.npz")
    capture, _ = simulated_capture(bank, 96, 128, rgb=True)
    values = {**{p.name: p.default for p in PARAMS}, "psf_bank": str(bank), "device": "cpu"}
    processor = build_processor(values)

    def notes(frame_id: str, stamp: tuple[int, int], **settings) -> tuple[list[str], str]:
        out = processor.process(image_msg(capture, "rgb8", stamp, frame_id),
                                camera_info_msg(128, 96, stamp, frame_id), output_settings({**values, **settings}))
        return [n for n in out.notes if "scan is published" in n], out.scan.header.frame_id

    first, frame = notes("cam_optical_frame", (1, 0))
    assert len(first) == 1 and "'cam_optical_frame'" in first[0] and "set scan_frame_id" in first[0]
    assert frame == "cam_optical_frame"
    assert notes("cam_optical_frame", (2, 0)) == ([], "cam_optical_frame")  # once per frame id
    assert len(notes("other_optical_frame", (3, 0))[0]) == 1
    assert notes("third_optical_frame", (4, 0), scan_frame_id="cam_link") == ([], "cam_link")


def test_a_cloud_without_known_rays_is_left_out_and_the_frame_kept(tmp_path):
    """A distortion model image_geometry does not know, with non-zero D: no cloud (its rays are unknown) and a
    note saying why; depth, its camera_info and the image still go out."""
    from ros_test_util import camera_info_msg, image_msg, simulated_capture, small_bank

    from cadfd_ros.params import PARAMS
    from cadfd_ros.ros.parameters import build_processor, output_settings

    bank = small_bank(tmp_path / "bank6.npz")
    capture, _ = simulated_capture(bank, 96, 128, rgb=True)
    values = {**{p.name: p.default for p in PARAMS}, "psf_bank": str(bank), "device": "cpu",
              "scan_frame_id": "cam_link"}
    info = camera_info_msg(128, 96, (1, 0), "cam_optical_frame")
    info.distortion_model, info.d = "tilted_prism", [0.1] + [0.0] * 13
    out = build_processor(values).process(image_msg(capture, "rgb8", (1, 0), "cam_optical_frame"), info,
                                          output_settings(values))
    assert out.points is None and out.depth is not None and out.depth_info is not None and out.aif is not None
    assert any(n.startswith("points not published:") and "'tilted_prism' is unknown" in n for n in out.notes)


def test_aif_image_and_cloud_colour_go_out_through_the_srgb_curve_by_default(tmp_path):
    """mono8/rgb8 are read as display-encoded: aif/image and the cloud's rgb are the linear solution through the
    sRGB curve, unless aif_transfer is linear."""
    from ros_test_util import camera_info_msg, image_msg, simulated_capture, small_bank

    from cadfd_ros.io.images import linear_to_srgb
    from cadfd_ros.params import PARAMS
    from cadfd_ros.ros.parameters import build_processor, output_settings

    bank = small_bank(tmp_path / "bank6.npz")
    capture, _ = simulated_capture(bank, 96, 128, rgb=True)
    values = {**{p.name: p.default for p in PARAMS}, "psf_bank": str(bank), "device": "cpu",
              "scan_frame_id": "cam_link", "points_colored": True}
    processor = build_processor(values)
    for transfer, curve in (("srgb", linear_to_srgb), ("linear", lambda x: x)):
        out = processor.process(image_msg(capture, "rgb8", (1, 0), "cam"), camera_info_msg(128, 96, (1, 0), "cam"),
                                output_settings({**values, "aif_transfer": transfer}))
        expected = np.round(np.clip(curve(np.clip(out.reconstruction.all_in_focus, 0, 1)), 0, 1) * 255)
        image = np.frombuffer(bytes(out.aif.data), np.uint8).reshape(96, 128, 3)
        np.testing.assert_array_equal(image, expected.astype(np.uint8))
        cloud = np.frombuffer(bytes(out.points.data), np.uint8).reshape(96, 128, 32)
        np.testing.assert_array_equal(cloud[:, :, 16:19][:, :, ::-1], image)  # bytes b, g, r
    assert values["aif_transfer"] == "srgb"  # the default


@pytest.mark.parametrize("encoding", ["32FC1", "16UC1"])
def test_walls_at_the_banks_ends_are_in_the_scans_range(tmp_path, encoding):
    """A wall at the bank's farthest depth (where a far background is read): with range_max at that depth only
    the centre column was in range, so the wall neither marked nor cleared a costmap; the default range_max is
    now the longest ray that depth gives, and every ray of the scan is in range, also when the depth goes out in
    whole millimetres (16UC1) and the far depth (4.1236 m here) is not a whole millimetre; and a wall at the
    nearest depth, which 16UC1 rounds below it, is not cut off by range_min."""
    from ros_test_util import camera_info_msg

    from cadfd_ros.optics.psf_bank import PSFBank, default_psf_bank_path, load_psf_bank, save_psf_bank
    from cadfd_ros.params import PARAMS
    from cadfd_ros.ros import conversions as conv
    from cadfd_ros.ros.parameters import build_processor, output_settings

    bundled = load_psf_bank(default_psf_bank_path())
    far = 4.1236
    save_psf_bank(PSFBank(bundled.psfs, bundled.depths * (far / bundled.depths[-1]), bundled.metadata),
                  tmp_path / "far.npz")
    values = {**{p.name: p.default for p in PARAMS}, "device": "cpu", "psf_bank": str(tmp_path / "far.npz"),
              "depth_encoding": encoding}
    processor = build_processor(values)
    assert float(processor.bank.depths[-1]) == pytest.approx(far)
    info = camera_info_msg(128, 96, (1, 0), "cam", cx=70.0)  # its widest column lands in the scan
    wall = conv.depth_to_image_msg(np.full((96, 128), processor.bank.depths[-1], np.float32), info.header, encoding)
    lo, hi = processor.scan_range(output_settings(values), info, 128)

    def ranges(range_max: float) -> np.ndarray:
        return np.asarray(conv.depth_image_to_laserscan(wall, info, 1, lo, range_max, 0.1, "cam_link").ranges)

    unlimited = ranges(1000.0)  # every ray the scan holds (d2ls leaves a few bins empty: NaN at any range)
    assert np.isfinite(unlimited).sum() >= 120
    np.testing.assert_array_equal(ranges(hi), unlimited)  # all of them in range at the default
    assert unlimited[np.isfinite(unlimited)].max() <= np.float32(hi)
    assert np.isfinite(ranges(far)).sum() <= 2  # range_max at the depth itself: the centre column at most
    assert processor.scan_range(output_settings({**values, "scan_range_max": 4.0}), info, 128)[1] == 4.0
    near = float(processor.bank.depths[0])  # 0.41236 m: 412 mm in 16UC1, below the bank's own nearest depth
    near_wall = conv.depth_to_image_msg(np.full((96, 128), near, np.float32), info.header, encoding)
    at_near = conv.depth_image_to_laserscan(near_wall, info, 1, lo, hi, 0.1, "cam_link").ranges
    unlimited_near = conv.depth_image_to_laserscan(near_wall, info, 1, 0.0, 1000.0, 0.1, "cam_link").ranges
    np.testing.assert_array_equal(np.asarray(at_near), np.asarray(unlimited_near))  # the near wall in range too


def test_a_frame_of_another_size_than_the_calibration_is_reported_once(tmp_path):
    """A calibrated bank records its frame size: a frame binned by the camera to another size no longer fits its
    PSFs, and the first such frame says so; input_downscale bins frame and bank together, and is not reported."""
    from ros_test_util import camera_info_msg, image_msg, simulated_capture, small_bank

    from cadfd_ros.optics.psf_bank import PSFBank, load_psf_bank, save_psf_bank
    from cadfd_ros.params import PARAMS
    from cadfd_ros.ros.parameters import build_processor, output_settings

    plain = load_psf_bank(small_bank(tmp_path / "bank6.npz"))
    calibrated = tmp_path / "calibrated.npz"
    save_psf_bank(PSFBank(plain.psfs, plain.depths, {**plain.metadata, "frame_width_px": 256,
                                                      "frame_height_px": 192}), calibrated)
    assert downscale_psf_bank(load_psf_bank(calibrated), 2).metadata["frame_width_px"] == 128
    values = {**{p.name: p.default for p in PARAMS}, "psf_bank": str(calibrated), "device": "cpu",
              "scan_frame_id": "cam_link"}

    def notes(processor, height: int, width: int, stamp: tuple[int, int]) -> list[str]:
        capture, _ = simulated_capture(calibrated, height, width, rgb=True)
        out = processor.process(image_msg(capture, "rgb8", stamp, "cam"), camera_info_msg(width, height, stamp, "cam"),
                                output_settings(values))
        return [n for n in out.notes if "calibrated on" in n]

    processor = build_processor(values)
    first = notes(processor, 96, 128, (1, 0))
    assert first == ["128x96 frames, but the PSF bank was calibrated on 256x192 frames: if the camera binned or "
                     "scaled them, the PSFs (in pixels) no longer fit (a crop is fine; bin with input_downscale, "
                     "which scales the bank too)"]
    assert notes(processor, 96, 128, (2, 0)) == []  # once per size
    binned = build_processor({**values, "input_downscale": 2})
    assert notes(binned, 192, 256, (3, 0)) == []  # the calibration frame, binned with its bank
