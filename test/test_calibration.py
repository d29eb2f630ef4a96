"""PSF calibration from target photos (issue 13): target, registration, PSF solve, model fit."""
from __future__ import annotations

import numpy as np
import pytest

from cadfd_ros.cli import main
from cadfd_ros.optics.target import CalibrationError, load_target, make_target, target_layout


def test_target_layout_and_content():
    layout = target_layout(640, 480)
    assert layout.dot_radius == pytest.approx(0.06 * 480)
    assert layout.quiet_radius == pytest.approx(2 * layout.dot_radius)
    image = make_target(640, 480, seed=3)
    assert image.shape == (480, 640) and image.dtype == np.uint8
    for x, y in layout.dots:  # black dot in a white quiet disc
        assert image[int(round(y)), int(round(x))] == 0
        assert image[int(round(y)), int(round(x + 1.5 * layout.dot_radius))] == 255
    # the fifth dot breaks the 180-degree and mirror symmetries
    centre = np.array([319.5, 239.5])
    rotated = 2 * centre - layout.dots
    assert np.min(np.linalg.norm(rotated[4] - layout.dots, axis=1)) > layout.dot_radius
    mirrored = layout.dots * [-1, 1] + [639, 0]
    assert np.min(np.linalg.norm(mirrored[4] - layout.dots, axis=1)) > layout.dot_radius
    # broadband texture: uniform grey levels, flat spectrum up to the cell size
    texture = image[200:280, 150:490].astype(np.float64)
    assert 100 < texture.mean() < 155 and texture.std() > 60
    assert not np.array_equal(make_target(640, 480, seed=4), image)
    np.testing.assert_array_equal(make_target(640, 480, seed=3), image)


def test_target_command_writes_a_loadable_target(tmp_path):
    out = tmp_path / "target.png"
    assert main(["psf-bank", "target", "--out", str(out), "--width-px", "800", "--height-px", "600",
                 "--seed", "2"]) == 0
    linear, layout = load_target(out)
    assert linear.shape == (600, 800) and layout.width == 800
    # sRGB-decoded: mid-grey 128 is 0.216 in linear light
    raw = make_target(800, 600, 2)
    np.testing.assert_allclose(linear[raw == 128], 0.2158605, atol=1e-5)


def test_load_target_refuses_other_images(tmp_path):
    from PIL import Image

    path = tmp_path / "grey.png"
    Image.fromarray(np.full((480, 640), 128, np.uint8)).save(path)
    with pytest.raises(CalibrationError, match="grey.png: no fiducial dot"):
        load_target(path)
    assert main(["psf-bank", "target", "--out", str(tmp_path / "t.png"), "--width-px", "100"]) == 2
