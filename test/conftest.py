"""Shared fixtures: small banks and scenes so the suite stays fast on 2 CPU cores."""
from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def default_bank():
    from cadfd_ros.optics.psf_bank import default_psf_bank_path, load_psf_bank

    return load_psf_bank(default_psf_bank_path())


@pytest.fixture(scope="session")
def small_bank():
    """8 layers, 11x11 PSFs from the default mask: cheap for operator tests."""
    from cadfd_ros.optics.masks import load_pattern
    from cadfd_ros.optics.thin_lens import ThinLens, synthesize_psf_bank
    from cadfd_ros.resources import config_dir

    lens = ThinLens(focal_length_m=0.012, f_number=8.0, focus_distance_m=0.23, pixel_pitch_m=7.5e-6)
    return synthesize_psf_bank(load_pattern(config_dir() / "default_mask.png"), lens, 0.5, 5.0, 8)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
