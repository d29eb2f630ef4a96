"""PSF bank format: normalisation, round trip and every loader error."""
from __future__ import annotations

import numpy as np
import pytest

from cadfd_ros.errors import PSFBankError
from cadfd_ros.optics.psf_bank import PSFBank, load_psf_bank, save_psf_bank


def _bank_arrays(layers: int = 4, k: int = 5, channels: int | None = None):
    psfs = np.random.default_rng(0).random((layers, k, k)).astype(np.float32)
    psfs /= psfs.sum(axis=(1, 2), keepdims=True)
    if channels:
        psfs = np.repeat(psfs[:, None], channels, axis=1)
    return psfs, np.linspace(0.5, 5.0, layers).astype(np.float32)


def _write(tmp_path, **arrays):
    path = tmp_path / "bank.npz"
    np.savez(path, **arrays)
    return path


def test_round_trip_mono_and_rgb(tmp_path):
    for channels in (None, 3):
        psfs, depths = _bank_arrays(channels=channels)
        bank = PSFBank(psfs, depths, {"focal_length_m": 0.012, "pixel_pitch_m": 7.5e-6})
        loaded = load_psf_bank(save_psf_bank(bank, tmp_path / f"b{channels}.npz"))
        assert loaded.psfs.shape == (4, channels or 1, 5, 5)
        np.testing.assert_allclose(loaded.psfs, bank.psfs, atol=1e-7)
        np.testing.assert_array_equal(loaded.depths, depths)
        assert loaded.focal_length_px() == pytest.approx(1600.0)


def test_small_sum_error_is_renormalised(tmp_path):
    psfs, depths = _bank_arrays()
    psfs[1] *= 1.0008
    bank = load_psf_bank(_write(tmp_path, psfs=psfs, depths=depths))
    np.testing.assert_allclose(bank.psfs.sum(axis=(2, 3)), 1.0, atol=1e-6)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p, d: (p * 1.01, d), "layer 0 channel 0 sums to 1.01"),
        (lambda p, d: (np.where(np.arange(p.size).reshape(p.shape) == 7, np.nan, p), d), "NaN"),
        (lambda p, d: (p - p.max(), d), "negative"),
        (lambda p, d: (p[:, :4, :4], d), "odd size"),
        (lambda p, d: (p[:, :5, :3], d), "square"),
        (lambda p, d: (p[0], d), "shape"),
        (lambda p, d: (p, d[::-1].copy()), "strictly increasing"),
        (lambda p, d: (p, d[:3]), "'depths' must have shape (4,)"),
        (lambda p, d: (p, -d), "positive"),
        (lambda p, d: (p[:1], d[:1]), "at least 2"),
        (lambda p, d: (np.repeat(p[:, None], 2, axis=1), d), "1 or 3 channels"),
    ],
)
def test_loader_errors_name_file_and_problem(tmp_path, mutate, message):
    psfs, depths = mutate(*_bank_arrays())
    path = _write(tmp_path, psfs=psfs, depths=depths)
    with pytest.raises(PSFBankError) as info:
        load_psf_bank(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_missing_keys_file_and_format(tmp_path):
    psfs, depths = _bank_arrays()
    with pytest.raises(PSFBankError, match="missing key 'depths'"):
        load_psf_bank(_write(tmp_path, psfs=psfs))
    with pytest.raises(PSFBankError, match="missing key 'psfs'"):
        load_psf_bank(_write(tmp_path, depths=depths))
    with pytest.raises(PSFBankError, match="not found"):
        load_psf_bank(tmp_path / "absent.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip archive")
    with pytest.raises(PSFBankError, match="not a readable .npz"):
        load_psf_bank(garbage)


def test_pickled_arrays_are_refused(tmp_path):
    psfs, depths = _bank_arrays()
    path = _write(tmp_path, psfs=psfs, depths=depths, focal_length_m=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(PSFBankError, match="pickle"):
        load_psf_bank(path)


def test_bad_metadata(tmp_path):
    psfs, depths = _bank_arrays()
    with pytest.raises(PSFBankError, match="scalar"):
        load_psf_bank(_write(tmp_path, psfs=psfs, depths=depths, f_number=np.array([2.0, 4.0])))
    with pytest.raises(PSFBankError, match="positive finite"):
        load_psf_bank(_write(tmp_path, psfs=psfs, depths=depths, f_number=np.array(-2.0)))


def test_bundled_default_bank_is_valid(default_bank):
    assert default_bank.num_layers == 16
    assert default_bank.kernel_size % 2 == 1
    assert default_bank.depths[0] == pytest.approx(0.5) and default_bank.depths[-1] == pytest.approx(5.0)
    np.testing.assert_allclose(default_bank.psfs.sum(axis=(2, 3)), 1.0, atol=1e-5)
    assert set(default_bank.metadata) == {"focal_length_m", "f_number", "focus_distance_m", "pixel_pitch_m"}


def test_straddles_focus_needs_layers_on_both_sides_and_a_focus_distance():
    depths = np.array([0.5, 1.0, 2.0])
    psfs = np.full((3, 1, 3, 3), 1 / 9, np.float32)
    assert PSFBank(psfs, depths, {"focus_distance_m": 0.8}).straddles_focus()
    assert not PSFBank(psfs, depths, {"focus_distance_m": 0.3}).straddles_focus()  # range behind focus
    assert not PSFBank(psfs, depths, {"focus_distance_m": 4.0}).straddles_focus()  # range in front of it
    assert not PSFBank(psfs, depths).straddles_focus()  # no focus distance: the side cannot be known


def test_effective_diameter_of_a_point_and_a_disc():
    # sqrt(4 / (pi sum h^2)): a point is 2/sqrt(pi) = 1.13 px, a uniform disc of n pixels sqrt(4 n / pi), and
    # an RGB bank's channels are averaged first
    k = 15
    yy, xx = np.mgrid[:k, :k] - k // 2
    disc = (xx**2 + yy**2 <= 5**2).astype(np.float32)
    point = np.zeros((k, k), np.float32)
    point[k // 2, k // 2] = 1
    psfs = np.stack([point, disc / disc.sum()])[:, None]
    bank = PSFBank(psfs, np.array([1.0, 2.0], np.float32), {})
    np.testing.assert_allclose(bank.effective_diameters_px(), [2 / np.sqrt(np.pi), np.sqrt(4 * disc.sum() / np.pi)],
                               rtol=1e-6)
    rgb = PSFBank(np.repeat(psfs, 3, axis=1), bank.depths, {})
    np.testing.assert_allclose(rgb.effective_diameters_px(), bank.effective_diameters_px(), rtol=1e-6)
