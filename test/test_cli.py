"""The ``cadfd`` CLI contract: simulate -> reconstruct files, psf-bank tools, clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cadfd_ros.cli import main


@pytest.fixture(scope="module")
def capture_files(tmp_path_factory, default_bank):
    from PIL import Image

    from cadfd_ros.bench.scenes import fit_photo, load_photo, procedural_depth
    from cadfd_ros.io.images import linear_to_srgb

    folder = tmp_path_factory.mktemp("cli")
    photo = fit_photo(load_photo("rocket"), 96, 128)
    Image.fromarray(np.round(linear_to_srgb(photo) * 255).astype(np.uint8)).save(folder / "photo.png")
    depth = procedural_depth(96, 128, 0.5, 5.0, np.random.default_rng(0))
    np.save(folder / "depth.npy", depth)
    np.save(folder / "sharp.npy", photo)  # the truth, for scoring what reconstruct writes
    assert main(["simulate", "--image", str(folder / "photo.png"), "--depth", str(folder / "depth.npy"),
                 "--noise", "0.01", "--out", str(folder / "capture.png"), "--seed", "1"]) == 0
    return folder


def test_simulate_writes_a_16bit_capture(capture_files):
    import cv2

    from cadfd_ros.forward.render import render_occlusion_aware
    from cadfd_ros.io.images import read_photo_linear
    from cadfd_ros.optics.psf_bank import default_psf_bank_path, load_psf_bank

    raw = cv2.imread(str(capture_files / "capture.png"), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw.shape == (96, 128, 3)
    # linear values (BGR on disk): the photo rendered through the default bank over the depth, plus noise 0.01
    capture = raw[:, :, ::-1].astype(np.float64) / 65535
    clean = render_occlusion_aware(read_photo_linear(capture_files / "photo.png"),
                                   np.load(capture_files / "depth.npy").astype(np.float32),
                                   load_psf_bank(default_psf_bank_path()))
    unclipped = (clean > 0.05) & (clean < 0.95)
    noise = (capture - clean)[unclipped]
    assert abs(noise.mean()) < 1e-3 and noise.std() == pytest.approx(0.01, rel=0.1)


def test_reconstruct_writes_the_contract_files(capture_files, default_bank):
    out = capture_files / "out"
    assert main(["reconstruct", str(capture_files / "capture.png"), "--out-dir", str(out), "--device", "cpu"]) == 0
    depth = np.load(out / "depth.npy")
    aif = np.load(out / "aif.npy")
    confidence = np.load(out / "confidence.npy")
    assert depth.shape == (96, 128) and depth.dtype == np.float32
    assert aif.shape == (96, 128, 3) and aif.dtype == np.float32
    assert confidence.shape == (96, 128) and confidence.dtype == np.float32
    # the depth is the scene's: delta<1.25 on the textured pixels inside the border band was 0.86, where the
    # constant mid-range guess scores 0
    from cadfd_ros.bench.metrics import evaluation_mask, textured_mask, within_delta1

    truth = np.load(capture_files / "depth.npy")
    scored = evaluation_mask(truth.shape, default_bank.half_size) & textured_mask(np.load(capture_files / "sharp.npy"))
    assert scored.sum() > 300 and within_delta1(depth, truth)[scored].mean() > 0.6
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "classical"
    assert {"evidence", "total"} <= set(report["timings_s"])
    assert report["final_residual"] < 0.05
    assert report["network_s"] == 0.0 and report["overhead"] is None  # classical: no network
    assert report["noise_source"] == "capture" and 0 < report["noise_sigma"] < 0.05
    header = (out / "points.ply").read_bytes()[:300].decode("ascii", "replace")
    assert "element vertex 12288" in header and "property uchar red" in header
    for name in ("aif.png", "depth.png"):
        assert (out / name).stat().st_size > 1000


def test_reconstruct_warns_of_dps_flags_with_classical(capture_files, capsys):
    out = capture_files / "out_ignored"
    assert main(["reconstruct", str(capture_files / "capture.png"), "--out-dir", str(out), "--device", "cpu",
                 "--prior", str(capture_files / "no_checkpoint"), "--steps", "8"]) == 0
    err = capsys.readouterr().err
    assert "--prior, --steps apply to --method dps only; ignored with --method classical" in err
    assert json.loads((out / "report.json").read_text())["method"] == "classical"


def test_ply_points_use_the_bank_intrinsics(capture_files, default_bank):
    out = capture_files / "out_k"
    assert main(["reconstruct", str(capture_files / "capture.png"), "--out-dir", str(out), "--fx", "100",
                 "--fy", "200", "--cx", "10", "--cy", "20"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["intrinsics"] == {"fx": 100.0, "fy": 200.0, "cx": 10.0, "cy": 20.0}
    data = (out / "points.ply").read_bytes()
    body = data[data.index(b"end_header\n") + 11:]
    points = np.frombuffer(body, dtype=[("xyz", "<f4", 3), ("rgb", "u1", 3)])["xyz"]
    depth = np.load(out / "depth.npy")
    np.testing.assert_allclose(points[0], [(0 - 10) * depth[0, 0] / 100, (0 - 20) * depth[0, 0] / 200, depth[0, 0]],
                               rtol=1e-5)


def test_reconstruct_errors_are_one_line_and_nonzero(capture_files, tmp_path, capsys):
    import cv2

    cases = {}
    cases["missing"] = tmp_path / "missing.png"
    (tmp_path / "capture.jpg").write_bytes(b"\xff\xd8\xff")
    cases["format"] = tmp_path / "capture.jpg"
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.zeros((20, 20), np.uint8))
    cases["small"] = small
    import tifffile

    nan_tiff = tmp_path / "nan.tif"
    tifffile.imwrite(nan_tiff, np.full((64, 64), np.nan, np.float32))
    cases["nan"] = nan_tiff
    float_tiff = tmp_path / "float.tif"
    tifffile.imwrite(float_tiff, np.full((64, 64), 0.5, np.float32))
    cases["bits"] = float_tiff
    (tmp_path / "folder.png").mkdir()
    cases["folder"] = tmp_path / "folder.png"
    expected = {"missing": "not found", "format": "unsupported format .jpg", "small": "small.png: 20x20 is too small",
                "nan": "NaN", "bits": "bit depth", "folder": "a folder, not a capture file"}
    for key, path in cases.items():
        assert main(["reconstruct", str(path), "--out-dir", str(tmp_path / key)]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and expected[key] in err, (key, err)


def test_bad_bank_path_is_reported(capture_files, tmp_path, capsys):
    assert main(["reconstruct", str(capture_files / "capture.png"), "--out-dir", str(tmp_path),
                 "--psf-bank", str(tmp_path / "nope.npz")]) == 2
    assert "nope.npz: PSF bank file not found" in capsys.readouterr().err


def test_psf_bank_synth_and_show(tmp_path):
    from cadfd_ros.optics.psf_bank import load_psf_bank

    bank_path = tmp_path / "bank.npz"
    assert main(["psf-bank", "synth", "--layers", "6", "--f-number", "8", "--out", str(bank_path)]) == 0
    bank = load_psf_bank(bank_path)
    assert bank.num_layers == 6 and bank.metadata["f_number"] == pytest.approx(8.0)
    assert main(["psf-bank", "show", str(bank_path), "--out", str(tmp_path / "sheet.png")]) == 0
    assert (tmp_path / "sheet.png").stat().st_size > 2000


def test_entry_points_keep_freed_buffers_on_glibc(monkeypatch):
    """The allocator setting of cadfd and the node: applied on glibc Linux (this machine), and not at all when
    the user opts out."""
    import platform

    from cadfd_ros.runtime import OPT_OUT, keep_freed_memory

    monkeypatch.setenv(OPT_OUT, "1")
    assert keep_freed_memory() is False
    monkeypatch.delenv(OPT_OUT)
    assert keep_freed_memory() is (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")


@pytest.mark.parametrize("mode", [["--cameras", "--only", "just-behind-focus"], ["--speed", "--speed-sizes", "64x48",
                                                                                 "--speed-steps", "1"]])
def test_bench_modes_use_the_solver_flags(tmp_path, capsys, mode):
    # the camera-matrix and speed benches once built their solver from steps, seed and device alone, so --prior
    # (and every other solver flag) was silently ignored: a missing prior folder must now stop them by name
    missing = tmp_path / "no_such_prior"
    assert main(["bench", *mode, "--prior", str(missing), "--out-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "does not exist" in err


def test_photos_and_masks_are_read_over_their_full_range(tmp_path, capsys):
    import cv2

    from cadfd_ros.io.images import read_photo_linear, srgb_to_linear
    from cadfd_ros.optics.masks import load_pattern

    levels = np.arange(0, 256, dtype=np.uint8).reshape(16, 16)
    cv2.imwrite(str(tmp_path / "p8.png"), levels)
    cv2.imwrite(str(tmp_path / "p16.png"), levels.astype(np.uint16) * 257)  # the same photo at 16 bits
    np.testing.assert_allclose(read_photo_linear(tmp_path / "p16.png"), read_photo_linear(tmp_path / "p8.png"),
                               atol=1e-6)
    np.testing.assert_allclose(read_photo_linear(tmp_path / "p8.png"), srgb_to_linear(levels / 255.0), atol=1e-6)
    half = np.full((13, 13), 32768, np.uint16)  # a 16-bit mask at half transmission, not an open one
    cv2.imwrite(str(tmp_path / "mask16.png"), half)
    np.testing.assert_allclose(load_pattern(tmp_path / "mask16.png"), 32768 / 65535)
    # files that are not images, a float photo and a pickled mask: one line naming the file, nothing unpickled
    (tmp_path / "text.png").write_text("not an image")
    np.save(tmp_path / "object.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    import tifffile

    tifffile.imwrite(tmp_path / "float.tif", np.full((16, 16), 0.5, np.float32))
    depth = tmp_path / "depth.npy"
    np.save(depth, np.ones((16, 16), np.float32))
    for argv, message in (
            (["simulate", "--image", str(tmp_path / "text.png"), "--depth", str(depth), "--out",
              str(tmp_path / "o.png")],
             "text.png: not a readable image"),
            (["simulate", "--image", str(tmp_path / "float.tif"), "--depth", str(depth), "--out",
              str(tmp_path / "o.png")], "float.tif: unsupported bit depth (float32)"),
            (["psf-bank", "synth", "--pattern", str(tmp_path / "text.png"), "--out", str(tmp_path / "b.npz")],
             "aperture pattern " + str(tmp_path / "text.png") + ": not a readable image"),
            (["psf-bank", "synth", "--pattern", str(tmp_path / "object.npy"), "--out", str(tmp_path / "b.npz")],
             "aperture pattern " + str(tmp_path / "object.npy") + ": cannot read")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and message in err, (argv, err)


def test_bad_flags_and_outputs_are_one_line_errors(capture_files, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    np.save(tmp_path / "object.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "bool.npy", np.ones((96, 128), bool))
    bank = tmp_path / "string_meta.npz"
    from cadfd_ros.optics.psf_bank import default_psf_bank_path, load_psf_bank

    default = load_psf_bank(default_psf_bank_path())
    np.savez(bank, psfs=default.psfs, depths=default.depths, focal_length_m=np.array("abc"))
    capture, photo = str(capture_files / "capture.png"), str(capture_files / "photo.png")
    cases = [
        (["reconstruct", capture, "--out-dir", str(tmp_path / "r1"), "--fx", "nan"], "--fx nan: the focal length"),
        (["reconstruct", capture, "--out-dir", str(tmp_path / "r2"), "--fx", "0"], "--fx 0.0: the focal length"),
        (["reconstruct", capture, "--out-dir", str(tmp_path / "r3"), "--cy", "inf"], "--cy inf: the principal"),
        (["reconstruct", capture, "--out-dir", str(a_file / "sub")], f"{a_file / 'sub'}: Not a directory"),
        (["simulate", "--image", photo, "--depth", str(capture_files / "depth.npy"), "--out",
          str(a_file / "sub" / "c.png")], f"{a_file / 'sub'}: Not a directory"),
        (["reconstruct", capture, "--psf-bank", str(bank), "--out-dir", str(tmp_path / "r4")],
         "metadata 'focal_length_m' must be a real number"),
        (["simulate", "--image", photo, "--depth", str(capture_files / "depth.npy"), "--out", str(tmp_path / "c.txt")],
         "c.txt: an image output must be a .png file"),
        (["simulate", "--image", photo, "--depth", str(tmp_path / "object.npy"), "--out", str(tmp_path / "c.png")],
         "object.npy: cannot read (Object arrays cannot be loaded"),
        (["simulate", "--image", photo, "--depth", str(tmp_path / "bool.npy"), "--out", str(tmp_path / "c.png")],
         "bool.npy: must hold real numbers, got dtype bool"),
        (["psf-bank", "design", "--out", str(tmp_path / "m.png"), "--restarts", "0"], "--restarts 0"),
        (["psf-bank", "design", "--out", str(tmp_path / "m.png"), "--cells", "2"], "--cells 2"),
        (["psf-bank", "design", "--out", str(tmp_path / "m.png"), "--alias-weight", "-1"], "--alias-weight -1.0"),
        (["psf-bank", "target", "--out", str(tmp_path / "t.png"), "--width-px", "100000"], "at most 16384 px"),
        (["psf-bank", "target", "--out", str(tmp_path / "t.jpg")], "the target is written as a lossless .png file"),
        (["psf-bank", "calibrate", "--target", photo, "--capture", f"1.0={capture}", "--out", str(tmp_path / "b.npz"),
          "--regularisation", "-1"], "--regularisation -1.0: must be a finite number >= 0"),
        (["psf-bank", "calibrate", "--target", photo, "--capture", f"1.0={capture}", "--out", str(tmp_path / "b.npz"),
          "--kernel-size", "-1"], "--kernel-size must be 0 (automatic) or a positive odd size, got -1"),
        (["bench", "--size", "8x8", "--out-dir", str(tmp_path / "b")], "--size 8x8: too small for the 25x25 PSFs"),
        (["bench", "--noise", "-1", "--out-dir", str(tmp_path / "b")], "--noise -1.0"),
        (["prior", "sample", "--out", str(tmp_path / "s.png"), "--threads", "-1"], "--threads -1: at least 1"),
        (["prior", "sample", "--out", str(tmp_path / "s.png"), "--prior", str(a_file)],
         "is a file; a prior is a diffusers folder"),
        (["simulate", "--image", photo, "--depth", str(capture_files / "depth.npy"), "--out", str(tmp_path / "c.png"),
          "--seed", "-1"], "--seed -1: a seed is an integer >= 0"),
        (["psf-bank", "synth", "--layers", "4", "--out", str(tmp_path / "bank.txt")], "must end in .npz"),
        (["psf-bank", "show", str(default_psf_bank_path()), "--out", str(tmp_path / "sheet")],
         "the contact sheet is a .png file"),
        (["psf-bank", "check", str(default_psf_bank_path()), "--target", photo, "--capture", f"1.0={capture}",
          "--max-error", "nan"], "--max-error nan"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and message in err, (argv, err)
    assert not (tmp_path / "c.png").exists() and not (tmp_path / "b").exists()
    assert not (tmp_path / "bank.txt.npz").exists() and not (tmp_path / "sheet.png").exists()


def test_bench_and_demo_find_a_bad_output_folder_before_the_run(tmp_path, capsys, monkeypatch):
    """An --out-dir under a file is one line before any solve: the runs would otherwise be lost at the end."""
    import cadfd_ros.bench.camera_matrix as camera_matrix
    import cadfd_ros.bench.runner as runner
    import cadfd_ros.bench.sequence as sequence
    import cadfd_ros.bench.speed as speed
    import cadfd_ros.pipeline as pipeline

    def not_reached(*args, **kwargs):
        raise AssertionError("the run started before the output folder was checked")

    for module, name in ((runner, "run_bench"), (camera_matrix, "run_camera"), (speed, "run_speed"),
                         (sequence, "run_sequence"), (pipeline, "Reconstructor")):
        monkeypatch.setattr(module, name, not_reached)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    out = str(a_file / "sub")
    for argv in (["bench", "--methods", "constant", "--size", "64x64", "--out-dir", out],
                 ["bench", "--cameras", "--only", "bundled", "--out-dir", out],
                 ["bench", "--speed", "--speed-sizes", "64x64", "--speed-steps", "1", "--out-dir", out],
                 ["bench", "--sequence", "--out-dir", out],
                 ["demo", "--out-dir", out]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and f"{out}: Not a directory" in err, (argv, err)
