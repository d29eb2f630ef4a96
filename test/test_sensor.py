"""The sensor as it is (issue 13, section 3): black level, saturation, noise model, flat field."""
from __future__ import annotations

import numpy as np
import pytest

from cadfd_ros.errors import CadfdError
from cadfd_ros.pipeline import ReconstructionConfig, Reconstructor
from cadfd_ros.solvers.noise import estimate_noise_sigma


@pytest.fixture(scope="module")
def clipped_scene(default_bank):
    """A bright mono scene whose highlights clip at 1.0 (about 1 % of the pixels)."""
    from cadfd_ros.bench.scenes import load_photo, make_scene

    return make_scene(load_photo("coffee") * 4.0, default_bank, 96, 128, noise_sigma=0.01, seed=1, channels=1)


def test_black_and_saturation_levels_in_the_schema_and_config():
    from cadfd_ros.params import PARAM_BY_NAME, SOLVER

    assert PARAM_BY_NAME["black_level"].scope == SOLVER and PARAM_BY_NAME["black_level"].default == 0.0
    assert PARAM_BY_NAME["saturation_level"].zero_is_unset
    config = ReconstructionConfig.from_values({"black_level": 0.05, "saturation_level": 0.0})
    assert config.black_level == 0.05 and config.saturation_level is None
    assert ReconstructionConfig.from_values({"saturation_level": 0.8}).saturation_level == 0.8
    with pytest.raises(CadfdError, match="black_level .* must be below the saturation level"):
        ReconstructionConfig(black_level=0.5, saturation_level=0.4)
    with pytest.raises(CadfdError, match="black_level must be in"):
        ReconstructionConfig(black_level=0.95)


def test_black_level_is_subtracted_and_the_range_rescaled(default_bank):
    capture = np.array([[0.05, 0.2, 0.8, 0.9]], np.float32)
    recon = Reconstructor(default_bank, ReconstructionConfig(device="cpu", black_level=0.05, saturation_level=0.8))
    prepared, saturated = recon.prepare(capture)
    np.testing.assert_allclose(prepared, [[0.0, 0.2, 1.0, 0.85 / 0.75]], atol=1e-6)
    np.testing.assert_array_equal(saturated, [[False, False, True, True]])
    # By default the level is the 8/16-bit maximum (1.0), found in any channel.
    recon = Reconstructor(default_bank, ReconstructionConfig(device="cpu"))
    rgb = np.full((1, 3, 3), 0.5, np.float32)
    rgb[0, 1, 2] = 1.0
    prepared, saturated = recon.prepare(rgb)
    np.testing.assert_array_equal(prepared, rgb)
    np.testing.assert_array_equal(saturated, [[False, True, False]])
    assert recon.prepare(np.full((2, 2), 0.99, np.float32))[1] is None  # nothing clipped


def test_evidence_weight_excludes_a_margin_around_clipped_pixels(default_bank):
    recon = Reconstructor(default_bank, ReconstructionConfig(device="cpu"))
    mask = np.zeros((60, 60), bool)
    mask[30, 30] = True
    weight = recon.classical.evidence_weight(mask)
    # 25x25 PSFs, dilation 0.25: 6 px on every side of the clipped pixel, a 13x13 block at (24..36, 24..36)
    assert default_bank.kernel_size == 25 and recon.classical.params.saturation_dilation == 0.25
    assert weight.dtype == np.float32 and int((weight == 0).sum()) == 13 * 13
    assert not weight[24:37, 24:37].any()
    assert weight[23, 30] == weight[37, 30] == weight[30, 23] == weight[30, 37] == weight[0, 0] == 1
    assert recon.classical.evidence_weight(np.zeros((8, 8), bool)) is None


def test_noise_estimate_ignores_clipped_pixels(rng):
    capture = 0.4 + rng.normal(0, 0.02, (128, 128))
    capture[:, :80] = 1.0  # clipped: no noise there
    valid = capture < 1.0
    assert estimate_noise_sigma(capture) < 0.01  # the old estimate: pulled down by the clipped zeros
    assert estimate_noise_sigma(capture, valid) == pytest.approx(0.02, rel=0.1)


def test_saturated_pixels_get_no_depth_and_lower_the_valid_fraction(default_bank, clipped_scene):
    saturated = clipped_scene.capture >= 1.0
    assert 0.005 < saturated.mean() < 0.05
    result = Reconstructor(default_bank, ReconstructionConfig(device="cpu")).reconstruct(clipped_scene.capture)
    assert np.isnan(result.depth[saturated]).all() and np.isfinite(result.depth[~saturated]).all()
    assert (result.confidence[saturated] == 0).all()
    assert result.valid_fraction == pytest.approx(1.0 - saturated.mean())
    assert any("saturated" in note for note in result.notes)
    # Tiled frames carry the mask into every tile.
    tiled = Reconstructor(default_bank, ReconstructionConfig(device="cpu")).reconstruct_tiled(
        clipped_scene.capture, tile_size=100)
    assert tiled.tiles > 1 and np.isnan(tiled.depth[saturated]).all()
    assert tiled.valid_fraction == pytest.approx(1.0 - saturated.mean())


def test_cli_and_node_take_the_levels(tmp_path, default_bank, clipped_scene):
    from cadfd_ros.cli import main
    from cadfd_ros.io.images import write_png
    from cadfd_ros.params import INPUT, SOLVER, defaults
    from cadfd_ros.ros.parameters import build_processor

    write_png(tmp_path / "capture.png", clipped_scene.capture, bits=16)
    level = 0.9
    expected = np.round(np.clip(clipped_scene.capture, 0, 1) * 65535) / 65535 >= level
    assert main(["reconstruct", str(tmp_path / "capture.png"), "--out-dir", str(tmp_path / "out"), "--device", "cpu",
                 "--saturation-level", str(level), "--black-level", "0.01"]) == 0
    depth = np.load(tmp_path / "out" / "depth.npy")
    np.testing.assert_array_equal(np.isnan(depth), expected)
    values = {**defaults([INPUT, SOLVER]), "device": "cpu", "black_level": 0.02, "saturation_level": level}
    config = build_processor(values).reconstructor.config
    assert (config.black_level, config.saturation_level) == (0.02, level)


def _vignette(height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    r2 = ((yy - (height - 1) / 2) ** 2 + (xx - (width - 1) / 2) ** 2) / ((height / 2) ** 2 + (width / 2) ** 2)
    v = 1.0 - 0.5 * r2  # 1 at the centre, 0.5 in the corners
    return (v / v.max()).astype(np.float32)


def test_flat_field_files_and_their_errors(tmp_path, default_bank):
    from cadfd_ros.errors import InputImageError
    from cadfd_ros.io.images import read_flat_field, write_png

    np.save(tmp_path / "flat.npy", np.array([[1.0, 2.0], [0.5, 1.5]]))
    np.testing.assert_allclose(read_flat_field(tmp_path / "flat.npy"), [[0.5, 1.0], [0.25, 0.75]])
    write_png(tmp_path / "flat.png", np.array([[0.2, 0.4]]), bits=16)
    np.testing.assert_allclose(read_flat_field(tmp_path / "flat.png"), [[0.5, 1.0]], atol=1e-4)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputImageError, match=r"^flat_field .*objects.npy: cannot read"):
        read_flat_field(tmp_path / "objects.npy")  # never unpickled
    with pytest.raises(InputImageError, match=r"^flat_field .*missing.png: file not found$"):
        read_flat_field(tmp_path / "missing.png")
    np.save(tmp_path / "zero.npy", np.array([[0.0, 1.0]]))
    with pytest.raises(InputImageError, match=r"zero.npy: has zero or negative pixels"):
        read_flat_field(tmp_path / "zero.npy")
    with pytest.raises(InputImageError, match=r"missing.npy: file not found"):
        Reconstructor(default_bank, ReconstructionConfig(device="cpu", flat_field=str(tmp_path / "missing.npy")))
    np.save(tmp_path / "small.npy", np.ones((50, 60), np.float32))
    recon = Reconstructor(default_bank, ReconstructionConfig(device="cpu", flat_field=str(tmp_path / "small.npy")))
    with pytest.raises(InputImageError, match=r"^flat_field .*small.npy: 60x50 does not match the 128x96 capture$"):
        recon.reconstruct(np.full((96, 128), 0.5, np.float32))


def test_flat_field_divides_the_capture_before_solving(tmp_path, default_bank, clipped_scene):
    from cadfd_ros.bench.scenes import make_scene
    from cadfd_ros.cli import main
    from cadfd_ros.io.images import write_png

    scene = make_scene("astronaut", default_bank, 96, 128, noise_sigma=0.005, seed=3, channels=1)
    vignette = _vignette(96, 128)
    np.save(tmp_path / "flat.npy", 0.8 * vignette)  # any scale: normalised to max 1
    # At twice the size it is binned to the capture (the node's input_downscale).
    np.save(tmp_path / "flat2.npy", np.repeat(np.repeat(vignette, 2, axis=0), 2, axis=1))
    for name in ("flat.npy", "flat2.npy"):
        recon = Reconstructor(default_bank, ReconstructionConfig(device="cpu", flat_field=str(tmp_path / name)))
        prepared, _ = recon.prepare(scene.capture * vignette)
        np.testing.assert_allclose(prepared, scene.capture, atol=1e-5)
    write_png(tmp_path / "vignetted.png", scene.capture * vignette, bits=16)
    write_png(tmp_path / "clean.png", scene.capture, bits=16)
    runs = {"clean": ["clean.png"], "flat": ["vignetted.png", "--flat-field", str(tmp_path / "flat.npy")],
            "raw": ["vignetted.png"]}
    aif = {}
    for name, extra in runs.items():
        out = tmp_path / name
        assert main(["reconstruct", str(tmp_path / extra[0]), "--out-dir", str(out), "--device", "cpu",
                     *extra[1:]]) == 0
        aif[name] = np.load(out / "aif.npy")
    assert np.abs(aif["flat"] - aif["clean"]).mean() < 2e-3
    assert np.abs(aif["raw"] - aif["clean"]).mean() > 0.02  # the lens falloff stays in the AIF


def _poisson_gaussian(clean: np.ndarray, a: float, b: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(clean + np.sqrt(a * clean + b) * rng.standard_normal(clean.shape), 0, 1).astype(np.float32)


def test_noise_model_fit_recovers_a_and_b(default_bank):
    from cadfd_ros.bench.scenes import make_scene
    from cadfd_ros.solvers.noise import estimate_noise_model

    clean = make_scene("coffee", default_bank, 128, 160, noise_sigma=0.0, seed=0, channels=1).capture
    a, b = estimate_noise_model(_poisson_gaussian(clean, 4e-4, 0.01**2, 1))
    assert a == pytest.approx(4e-4, rel=0.25) and b == pytest.approx(1e-4, rel=0.25)
    a, b = estimate_noise_model(_poisson_gaussian(clean, 0.0, 0.01**2, 2))  # plain Gaussian noise
    assert a < 1e-4 and b == pytest.approx(1e-4, rel=0.15)
    ramp = np.tile(np.linspace(0.05, 0.95, 128), (128, 1))  # flat-field-like: no texture at all
    a, b = estimate_noise_model(_poisson_gaussian(ramp, 1e-3, 0.005**2, 3))
    assert a == pytest.approx(1e-3, rel=0.15)  # b is small beside a*x here: check the level it gives
    assert a * 0.5 + b == pytest.approx(1e-3 * 0.5 + 0.005**2, rel=0.1)
    # RGB: per-channel a and b against the intensity itself (not the sqrt(3)-scaled mean)
    rgb = _poisson_gaussian(np.repeat(ramp[:, :, None], 3, axis=2), 1e-3, 0.005**2, 5)
    a, b = estimate_noise_model(rgb)
    assert a == pytest.approx(1e-3, rel=0.15) and a * 0.5 + b == pytest.approx(1e-3 * 0.5 + 0.005**2, rel=0.1)


@pytest.mark.parametrize("code_values", [0.5, 1.0, 1.3, 2.0, 4.0])
def test_noise_of_a_quantised_capture_is_not_pulled_to_the_code_values(code_values):
    """An 8-bit capture with about one code value of noise: its Haar band lies on a lattice of half code values,
    where the plain median jumps (1.0 code value read as 0.74, 1.3 as 1.48). The estimate is the noise the
    capture carries, quantisation error included: sqrt(sigma^2 + 1/12) code values."""
    from cadfd_ros.solvers.noise import estimate_noise_model

    rng = np.random.default_rng(7)
    flat = np.round((0.4 + code_values / 255 * rng.standard_normal((200, 200))) * 255) / 255
    expected = np.sqrt(code_values**2 + 1 / 12) / 255
    assert estimate_noise_sigma(flat.astype(np.float32)) == pytest.approx(expected, rel=0.04)
    ramp = np.tile(np.linspace(0.1, 0.9, 256), (256, 1))  # per intensity bin as well (the Poisson-Gaussian fit)
    noisy = np.round((ramp + code_values / 255 * rng.standard_normal(ramp.shape)) * 255) / 255
    a, b = estimate_noise_model(noisy.astype(np.float32))
    assert np.sqrt(a * 0.5 + b) == pytest.approx(expected, rel=0.08)


def test_mad_sigma_interpolates_within_the_lattice_bin():
    """Unit noise on a lattice of 0.5: the plain median of |x| sits on the lattice value 0.5 (sigma read as
    0.741); interpolated within its bin it gives the noise plus the lattice's own 0.5^2/12."""
    from cadfd_ros.solvers.noise import mad_sigma

    rng = np.random.default_rng(7)
    band = np.round(rng.standard_normal(40_000) * 2) / 2  # a Haar band of integer codes: half-code lattice
    assert np.median(np.abs(band)) / 0.6745 == pytest.approx(0.741, abs=0.001)  # stuck on a lattice value
    assert mad_sigma(band) == pytest.approx(np.sqrt(1 + 0.25 / 12), rel=0.03)
    assert mad_sigma(rng.standard_normal(40_000)) == pytest.approx(1.0, rel=0.03)  # continuous: plain MAD


def test_a_noise_model_measured_elsewhere_replaces_the_estimate(default_bank):
    """``Reconstructor.reconstruct(noise=(a, b))``, as the node passes a Bayer frame's mosaic noise: the frame's
    sigma is then the model's, taken through the black level, and a bad model is refused by name."""
    from cadfd_ros.solvers.noise import rescale_noise_model

    capture = make_scene_capture(default_bank)
    plain = Reconstructor(default_bank, ReconstructionConfig(device="cpu", noise_model="gaussian"))
    assert plain.reconstruct(capture).noise_sigma == pytest.approx(0.01, rel=0.2)  # estimated: the scene's 0.01
    assert plain.reconstruct(capture, noise=(0.0, 0.03**2)).noise_sigma == pytest.approx(0.03, rel=1e-5)
    black = Reconstructor(default_bank, ReconstructionConfig(device="cpu", noise_model="gaussian", black_level=0.2))
    assert black.reconstruct(capture, noise=(0.0, 0.03**2)).noise_sigma == pytest.approx(0.03 / 0.8, rel=1e-5)
    # sigma^2 = a x + b on the raw scale, x = black + span x' on the new one
    a, b = rescale_noise_model((4e-4, 1e-4), 0.2, 0.9)
    for x_new in (0.0, 0.5, 1.0):
        assert a * x_new + b == pytest.approx((4e-4 * (0.2 + 0.7 * x_new) + 1e-4) / 0.7**2)
    with pytest.raises(CadfdError, match=r"noise model \(a, b\) must be finite with a >= 0 and b > 0"):
        plain.reconstruct(capture, noise=(0.0, 0.0))


def make_scene_capture(bank) -> np.ndarray:
    from cadfd_ros.bench.scenes import make_scene

    return make_scene("coffee", bank, 96, 128, noise_sigma=0.01, seed=0, channels=1).capture


def test_noise_model_parameter_and_the_sigma_map(default_bank):
    from cadfd_ros.params import PARAM_BY_NAME

    assert PARAM_BY_NAME["noise_model"].choices == ("gaussian", "poisson_gaussian")
    with pytest.raises(CadfdError, match="noise_model must be one of gaussian, poisson_gaussian"):
        ReconstructionConfig(noise_model="poisson")
    ramp = _poisson_gaussian(np.tile(np.linspace(0.05, 0.95, 128), (96, 1)).astype(np.float32), 1e-3, 0.005**2, 4)
    pg = Reconstructor(default_bank, ReconstructionConfig(device="cpu", noise_model="poisson_gaussian"))
    result = pg.reconstruct(ramp)
    # The reported sigma is the frame's average level sqrt(a * mean + b), about sqrt(1e-3 * 0.5 + 2.5e-5).
    assert result.noise_sigma == pytest.approx(np.sqrt(1e-3 * 0.5 + 0.005**2), rel=0.1)
    fixed = Reconstructor(default_bank, ReconstructionConfig(device="cpu", noise_model="poisson_gaussian",
                                                             noise_sigma=0.02)).reconstruct(ramp)
    assert fixed.noise_sigma == 0.02  # a fixed noise_sigma overrides the model


def test_poisson_gaussian_evidence_pays_on_signal_dependent_noise(default_bank):
    """Captures with sigma^2 = 4e-4 x + 0.005^2: whitening by the per-pixel sigma gives better depth
    than one sigma per frame (measured on all eight tuning photos: delta 0.38 -> 0.51). Measured with the depth
    evidence at the noise's own sigma (ClassicalParams.evidence_noise_floor 0): here 0.36 -> 0.89. The floor (the
    default, 0.01) weighs both at no less than 0.01, which lifts one sigma per frame (its estimate, 0.007, is the dark
    pixels') to 0.84 and costs the per-pixel model 0.05 on this scene (0.84)."""
    from dataclasses import replace

    from cadfd_ros.bench.metrics import depth_metrics, evaluation_mask, textured_mask
    from cadfd_ros.bench.scenes import make_scene
    from cadfd_ros.solvers.classical import ClassicalParams, ClassicalSolver

    scene = make_scene("rocket", default_bank, 128, 160, noise_sigma=0.0, seed=3, channels=1)
    capture = _poisson_gaussian(scene.capture, 4e-4, 0.005**2, 103)
    mask = evaluation_mask(scene.depth.shape, default_bank.half_size) & textured_mask(scene.sharp)
    delta = {}
    for floor in (0.0, 0.01):
        params = replace(ClassicalParams(), evidence_noise_floor=floor)
        for model in ("gaussian", "poisson_gaussian"):
            result = ClassicalSolver(default_bank, noise_model=model, params=params).solve(capture)
            delta[model, floor] = depth_metrics(result.depth, scene.depth, mask)["delta1"]
    assert delta["poisson_gaussian", 0.0] > delta["gaussian", 0.0] + 0.1, delta
    assert min(delta["poisson_gaussian", 0.01], delta["gaussian", 0.01]) > 0.75, delta
    result = Reconstructor(default_bank, ReconstructionConfig(device="cpu")).reconstruct(capture)  # the node's way
    assert depth_metrics(result.depth, scene.depth, mask)["delta1"] == pytest.approx(delta["poisson_gaussian", 0.01])


def test_dps_depth_evidence_leaves_clipped_pixels_out(default_bank):
    """The sampler's own depth evidence (each depth update) is weighted like the classical one:
    windows of clipped pixels carry no layer preference, the rest still pick the true layer."""
    import torch

    from cadfd_ros.bench.scenes import fit_photo, load_photo
    from cadfd_ros.solvers.dps import DiffusionPosteriorSampler, SamplerConfig, depth_update

    sampler = DiffusionPosteriorSampler(default_bank, SamplerConfig(sampler="diffpir"), "cpu", prior=object())
    sharp = fit_photo(load_photo("brick"), 96, 160)
    sharp = sharp.mean(axis=-1) if sharp.ndim == 3 else sharp
    op = sampler.operator(96, 160, 1)
    x = op.pad_image(torch.from_numpy(np.ascontiguousarray(sharp, np.float32))[None, None])
    blurred = op.blur_layers(x)
    y = blurred[:, 10] + 0.01 * torch.randn(1, 1, 96, 160, generator=torch.Generator().manual_seed(0))
    y[..., :60] = 1.0  # clipped
    saturated = np.zeros((96, 160), bool)
    saturated[:, :60] = True
    from cadfd_ros.solvers.classical import ClassicalSolver

    weight = torch.from_numpy(ClassicalSolver(default_bank).evidence_weight(saturated))
    coord = torch.full((1, 96, 160), 5.0)
    _, energy, _ = depth_update(sampler.frame_context(y, 0.01, weight), blurred, coord, None)
    assert float(energy[..., :4].abs().max()) == 0.0  # old behaviour: the clipped error decided these
    best = energy[0, :, :, -20:-6].mean(dim=(1, 2)).argmin()
    assert abs(int(best) - 10) <= 1
    _, unweighted, _ = depth_update(sampler.frame_context(y, 0.01), blurred, coord, None)
    assert float(unweighted[..., :4].abs().max()) > 1.0


def test_dps_reconstruction_of_a_clipped_capture(default_bank, clipped_scene):
    pytest.importorskip("diffusers")
    saturated = clipped_scene.capture >= 1.0
    config = ReconstructionConfig(device="cpu", method="dps", steps=2)
    result = Reconstructor(default_bank, config).reconstruct(clipped_scene.capture)
    assert np.isnan(result.depth[saturated]).all() and (result.confidence[saturated] == 0).all()
    assert result.valid_fraction == pytest.approx(1.0 - saturated.mean())


def test_node_finds_clipping_before_binning(default_bank, clipped_scene):
    """With input_downscale 2, a clipped pixel averages below the level once binned; the node finds
    clipping at full resolution, so the binned pixel holding it gets no depth."""
    pytest.importorskip("sensor_msgs")
    from sensor_msgs.msg import Image

    from cadfd_ros.params import INPUT, OUTPUT, SOLVER, defaults
    from cadfd_ros.ros.parameters import build_processor, output_settings

    values = {**defaults([INPUT, SOLVER, OUTPUT]), "device": "cpu", "input_downscale": 2}
    processor = build_processor(values)
    full = np.kron(np.clip(clipped_scene.capture, 0, 0.9), np.ones((2, 2))).astype(np.float32)
    full[41, 61] = 1.0  # one clipped pixel in the binned pixel (20, 30)
    raw = np.round(full * 65535).astype(np.uint16)
    msg = Image(height=raw.shape[0], width=raw.shape[1], encoding="mono16", is_bigendian=0,
                step=raw.shape[1] * 2, data=raw.tobytes())
    result = processor.process(msg, None, output_settings(values)).reconstruction
    assert result.depth.shape == (96, 128)
    assert np.isnan(result.depth[20, 30]) and int(np.isnan(result.depth).sum()) == 1
    assert result.confidence[20, 30] == 0


def test_final_data_step_ignores_clipped_pixels(small_bank):
    """The sampler's last exact data step (CG on A^T W A + R) with weight 0 on clipped pixels: its
    solution does not depend on what the clipped pixels hold; unweighted, it does."""
    import torch

    from cadfd_ros.forward.operators import LayeredBlur

    op = LayeredBlur(torch.from_numpy(small_bank.psfs_for_channels(1)), 48, 64)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, *op.padded_shape, generator=gen)
    coord = torch.full((1, 48, 64), 3.0)
    from cadfd_ros.forward.layers import soft_layer_weights

    y = op(x, soft_layer_weights(coord, op.num_layers))
    clipped = y.clone()
    clipped[..., 10:20, 10:30] = 1.0
    weight = torch.ones(1, 1, 48, 64)
    weight[..., 5:25, 5:35] = 0.0
    x_ref = torch.full_like(x, 0.5)
    solve = lambda obs, w: op.least_squares(obs, coord, x_ref, 1e-3, x_ref, 200, 1e-6, data_weight=w)[0]
    assert float((solve(clipped, weight) - solve(y, weight)).abs().max()) < 1e-4
    assert float((solve(clipped, None) - solve(y, None)).abs().max()) > 0.05


def test_the_node_takes_a_bayer_frames_noise_from_its_mosaic(default_bank):
    """What the node solves a frame with, and says where the level came from (diagnostics' noise_source)."""
    pytest.importorskip("sensor_msgs")
    from sensor_msgs.msg import Image

    from cadfd_ros.bench.scenes import make_scene
    from cadfd_ros.params import INPUT, OUTPUT, SOLVER, defaults
    from cadfd_ros.ros import conversions as conv
    from cadfd_ros.ros.parameters import build_processor, output_settings

    rgb = make_scene("coffee", default_bank, 96, 128, noise_sigma=0.0, seed=0, channels=3).capture
    rng = np.random.default_rng(5)
    mosaic = np.empty(rgb.shape[:2], np.float32)
    for index, (dy, dx) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):  # RGGB
        mosaic[dy::2, dx::2] = rgb[dy::2, dx::2, [0, 1, 1, 2][index]]
    raw = np.round(np.clip(mosaic + 0.01 * rng.standard_normal(mosaic.shape), 0, 1) * 65535).astype(np.uint16)

    def message(encoding: str, pixels: np.ndarray) -> Image:
        return Image(height=pixels.shape[0], width=pixels.shape[1], encoding=encoding, is_bigendian=0,
                     step=pixels.shape[1] * pixels.itemsize * (3 if pixels.ndim == 3 else 1), data=pixels.tobytes())

    values = {**defaults([INPUT, SOLVER, OUTPUT]), "device": "cpu"}
    bayer = message("bayer_rggb16", raw)
    out = build_processor(values).process(bayer, None, output_settings(values))
    a, b = conv.image_msg_to_capture_and_noise(bayer)[1]
    assert out.reconstruction.noise_source == "noise model" and 0.008 < np.sqrt(a * 0.3 + b) < 0.013
    assert 0.008 < out.reconstruction.noise_sigma < 0.013  # the demosaiced frame alone reads about a third
    rgb16 = np.round(np.clip(rgb + 0.01 * rng.standard_normal(rgb.shape), 0, 1) * 65535).astype(np.uint16)
    rgb_out = build_processor(values).process(message("rgb16", rgb16), None, output_settings(values))
    assert rgb_out.reconstruction.noise_source == "capture"
    fixed = {**values, "noise_sigma": 0.02}
    out = build_processor(fixed).process(bayer, None, output_settings(fixed))
    assert out.reconstruction.noise_source == "noise_sigma parameter" and out.reconstruction.noise_sigma == pytest.approx(0.02)
