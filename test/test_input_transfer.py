"""input_transfer (issue 13): gamma-encoded frames are linearised before solving, in the CLI and the node."""
from __future__ import annotations

import numpy as np
import pytest

from cadfd_ros.cli import main
from cadfd_ros.errors import CadfdError
from cadfd_ros.io.images import apply_input_transfer, linear_to_srgb, write_png


def test_apply_input_transfer_values():
    v = np.array([0.0, 0.04045, 0.5, 1.0], np.float32)
    np.testing.assert_array_equal(apply_input_transfer(v, "linear"), v)
    np.testing.assert_allclose(apply_input_transfer(v, "srgb"), [0.0, 0.0031308, 0.2140411, 1.0], atol=1e-6)
    with pytest.raises(ValueError, match="input_transfer must be one of linear, srgb"):
        apply_input_transfer(v, "gamma22")


def test_parameter_schema_and_processor():
    from cadfd_ros.params import INPUT, PARAM_BY_NAME, defaults
    from cadfd_ros.ros.parameters import build_processor

    spec = PARAM_BY_NAME["input_transfer"]
    assert spec.scope == INPUT and spec.default == "linear" and spec.choices == ("linear", "srgb")
    values = {**defaults([INPUT]), **defaults(["solver"]), "input_transfer": "srgb", "device": "cpu"}
    assert build_processor(values).input_transfer == "srgb"
    with pytest.raises(CadfdError, match="input_transfer must be one of linear, srgb"):
        build_processor({**values, "input_transfer": "gamma"})


def test_reconstruct_with_srgb_input_matches_the_linear_capture(tmp_path, default_bank):
    """The same scene, delivered linear and gamma-encoded: with --input-transfer srgb the
    all-in-focus image and depth match the linear run; without it they do not."""
    from scipy.ndimage import gaussian_filter
    from scipy.signal import fftconvolve

    rng = np.random.default_rng(0)
    scene = gaussian_filter(rng.random((120, 152)), 1.5)
    scene = (scene - scene.min()) / np.ptp(scene) * 0.8 + 0.1
    psf = default_bank.psfs[5, 0]
    capture = fftconvolve(np.pad(scene, 12, mode="edge"), psf, mode="valid")[:96, :128]
    write_png(tmp_path / "linear.png", capture, bits=16)
    write_png(tmp_path / "srgb.png", linear_to_srgb(capture), bits=16)
    runs = {"linear": ["linear.png"], "srgb": ["srgb.png", "--input-transfer", "srgb"], "raw": ["srgb.png"]}
    aif, depth = {}, {}
    for name, extra in runs.items():
        out = tmp_path / name
        assert main(["reconstruct", str(tmp_path / extra[0]), "--out-dir", str(out), "--device", "cpu", *extra[1:]]) == 0
        aif[name], depth[name] = np.load(out / "aif.npy"), np.load(out / "depth.npy")
    assert np.abs(aif["srgb"] - aif["linear"]).mean() < 2e-3
    assert np.nanmean(np.abs(depth["srgb"] - depth["linear"])) < 0.02
    assert np.abs(aif["raw"] - aif["linear"]).mean() > 0.05  # gamma-encoded values are not intensity
