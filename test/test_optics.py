"""Thin-lens defocus, coded PSF geometry and the mask criterion."""
from __future__ import annotations

import numpy as np
import pytest

from cadfd_ros.optics.masks import circular_pattern, load_pattern, score_pattern
from cadfd_ros.optics.thin_lens import (
    DEFAULT_FAR_M,
    DEFAULT_LENS,
    DEFAULT_NEAR_M,
    DEFAULT_NUM_LAYERS,
    ThinLens,
    circle_of_confusion_px,
    layer_depths,
    render_coded_psf,
    synthesize_psf_bank,
)
from cadfd_ros.resources import config_dir


def test_circle_of_confusion_sign_and_zero_at_focus():
    lens = ThinLens(0.012, 2.0, 1.0, 5e-6)
    assert lens.coc_px(1.0) == pytest.approx(0.0, abs=1e-12)
    assert lens.coc_px(0.5) < 0 < lens.coc_px(2.0)  # in front of focus negative, behind positive
    # A = f/N = 6 mm; c(2 m) = A (2-1)/2 * f/(1-f) / pitch
    assert lens.coc_px(2.0) == pytest.approx(0.006 * 0.5 * 0.012 / 0.988 / 5e-6)


def test_circle_of_confusion_is_affine_in_inverse_depth():
    s = np.array([0.4, 0.7, 1.3, 2.5, 9.0])
    c = circle_of_confusion_px(s, 0.012, 2.8, 1.0, 5e-6)
    slope, intercept = np.polyfit(1 / s, c, 1)
    np.testing.assert_allclose(slope * (1 / s) + intercept, c, rtol=1e-9)


def test_psf_is_mask_rotated_in_front_of_focus():
    pattern = np.zeros((4, 4))
    pattern[0, 0] = pattern[0, 1] = pattern[1, 0] = 1.0  # open top-left corner only
    behind = render_coded_psf(pattern, 9.0, 11)
    front = render_coded_psf(pattern, -9.0, 11)
    np.testing.assert_allclose(front, behind[::-1, ::-1], atol=1e-7)
    rows = np.arange(11)
    centroid_behind = (behind.sum(axis=1) * rows).sum()
    assert centroid_behind < 5 < (front.sum(axis=1) * rows).sum()


def test_psf_size_grows_with_blur_and_sums_to_one():
    widths = []
    for coc in (2.0, 5.0, 9.0):
        psf = render_coded_psf(np.ones((5, 5)), coc, 11)
        assert psf.sum() == pytest.approx(1.0, abs=1e-6)
        widths.append(int((psf.sum(axis=0) > 1e-6).sum()))
    assert widths[0] < widths[1] < widths[2]
    point = render_coded_psf(np.ones((5, 5)), 0.0, 11)
    assert point[5, 5] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="does not fit"):
        render_coded_psf(np.ones((5, 5)), 15.0, 11)


def test_layers_evenly_spaced_in_inverse_depth():
    depths = layer_depths(0.5, 5.0, 16)
    assert depths[0] == pytest.approx(0.5) and depths[-1] == pytest.approx(5.0)
    np.testing.assert_allclose(np.diff(1 / depths), np.diff(1 / depths)[0], rtol=1e-5)


def test_default_bank_regenerates_from_mask_and_lens(default_bank):
    pattern = load_pattern(config_dir() / "default_mask.png")
    bank = synthesize_psf_bank(pattern, DEFAULT_LENS, DEFAULT_NEAR_M, DEFAULT_FAR_M, DEFAULT_NUM_LAYERS)
    np.testing.assert_allclose(bank.psfs, default_bank.psfs, atol=1e-6)
    cocs = DEFAULT_LENS.coc_px(bank.depths)
    assert np.all(cocs > 0)  # working range entirely behind focus
    assert cocs.max() / cocs.min() < 2.0  # inside one octave of blur


def test_default_mask_beats_open_circle_on_depth_criterion():
    designed = score_pattern(load_pattern(config_dir() / "default_mask.png"))
    circle = score_pattern(circular_pattern())
    # measured at the default camera: KL 3.20 vs 2.33, alias power 0.038 vs 0.014
    assert designed.min_adjacent_kl > 1.3 * circle.min_adjacent_kl
    assert designed.min_alias_power > 2.0 * circle.min_alias_power
    assert designed.wiener_mse < 1.2 * circle.wiener_mse
