"""End to end: simulate a small scene, reconstruct with the classical solver, check accuracy."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cadfd_ros.bench.metrics import depth_metrics, evaluation_mask, image_metrics, textured_mask
from cadfd_ros.bench.scenes import make_scene
from cadfd_ros.pipeline import ReconstructionConfig, Reconstructor
from cadfd_ros.solvers.classical import ClassicalParams
from cadfd_ros.solvers.noise import estimate_noise_sigma


@pytest.fixture(scope="module")
def scene_and_result(default_bank):
    # "chelsea" is a test photo: the classical parameters were tuned on astronaut and coffee only.
    scene = make_scene("chelsea", default_bank, 120, 160, noise_sigma=0.01, seed=3)
    result = Reconstructor(default_bank, ReconstructionConfig(device="cpu")).reconstruct(scene.capture)
    return scene, result


def test_outputs_have_the_capture_size_and_types(scene_and_result):
    scene, result = scene_and_result
    assert result.depth.shape == scene.capture.shape[:2] and result.depth.dtype == np.float32
    assert result.all_in_focus.shape == scene.capture.shape and result.all_in_focus.dtype == np.float32
    assert result.confidence.shape == scene.capture.shape[:2]
    assert 0.0 <= result.confidence.min() and result.confidence.max() <= 1.0
    assert set(result.timings) >= {"evidence", "regularise", "all_in_focus", "total"}


def test_depth_beats_constant_guess_in_textured_regions(scene_and_result, default_bank):
    scene, result = scene_and_result
    mask = evaluation_mask(scene.depth.shape, default_bank.half_size) & textured_mask(scene.sharp)
    assert mask.sum() > 2000
    middle = 2.0 / (1.0 / default_bank.depths[0] + 1.0 / default_bank.depths[-1])
    step = float(np.abs(np.diff(default_bank.inverse_depths)).mean())
    constant = depth_metrics(np.full_like(scene.depth, middle), scene.depth, mask, step)
    solved = depth_metrics(result.depth, scene.depth, mask, step)
    # measured: delta1 0.65 vs 0.29, layer error 1.93 vs 2.56 (AbsRel is not asserted: a few
    # far outliers dominate it, see README's bench table)
    assert solved["delta1"] > constant["delta1"] + 0.2
    assert solved["layer_error"] < 0.85 * constant["layer_error"]


def test_all_in_focus_is_sharper_than_the_capture(scene_and_result, default_bank):
    scene, result = scene_and_result
    mask = evaluation_mask(scene.depth.shape, default_bank.half_size)
    assert image_metrics(result.all_in_focus, scene.sharp, mask)["psnr"] > (
        image_metrics(scene.capture, scene.sharp, mask)["psnr"] + 1.0
    )


def test_residual_is_near_the_noise_level(scene_and_result):
    _, result = scene_and_result
    assert result.noise_sigma == pytest.approx(0.01, rel=0.25)
    assert result.residual < 3 * 0.01


def test_a_quiet_capture_does_not_give_a_ringing_all_in_focus_image(default_bank):
    """ClassicalParams.aif_noise_floor: the Wiener prior weighs the capture's error at no less than the floor, since
    the layered model's own error does not shrink with the noise. Below the floor it changes the image only (not the
    depth); above it, nothing."""
    from dataclasses import replace

    from cadfd_ros.solvers.classical import ClassicalSolver

    mask = evaluation_mask((120, 160), default_bank.half_size)
    for sigma in (0.003, 0.02):
        scene = make_scene("chelsea", default_bank, 120, 160, noise_sigma=sigma, seed=3)
        # the depth evidence at the noise's own sigma, as before its floor: the image's floor alone
        results = {floor: ClassicalSolver(default_bank, params=replace(ClassicalParams(), aif_noise_floor=floor,
                                                                       evidence_noise_floor=0.0)
                                          ).estimate(scene.capture)[0] for floor in (0.0, 0.01)}
        np.testing.assert_array_equal(results[0.0].depth, results[0.01].depth)
        psnr = {floor: image_metrics(r.all_in_focus, scene.sharp, mask)["psnr"] for floor, r in results.items()}
        if sigma < 0.01:  # measured: 18.2 dB without the floor, 23.2 with it (the capture 23.4)
            assert psnr[0.01] > psnr[0.0] + 3.0
            # with the evidence's floor too (the defaults) the depth is better and the image beats the capture:
            # measured 26.2 dB against 23.4
            default = ClassicalSolver(default_bank).estimate(scene.capture)[0]
            capture = image_metrics(scene.capture, scene.sharp, mask)["psnr"]
            assert image_metrics(default.all_in_focus, scene.sharp, mask)["psnr"] > capture + 2.0
        else:
            np.testing.assert_array_equal(results[0.0].all_in_focus, results[0.01].all_in_focus)


def test_the_depth_evidence_weighs_a_quiet_capture_at_the_noise_floor(default_bank):
    """ClassicalParams.evidence_noise_floor: below it the layer evidence is the one the floor gives (the layered
    model's error does not shrink with the noise), the per-pixel sigma map included; above it, the noise's own."""
    from dataclasses import replace

    from cadfd_ros.forward.operators import image_batch
    from cadfd_ros.solvers.classical import ClassicalSolver

    scene = make_scene("chelsea", default_bank, 64, 80, noise_sigma=0.003, seed=3)
    y = image_batch(scene.capture, "cpu")
    solvers = {floor: ClassicalSolver(default_bank, params=replace(ClassicalParams(), evidence_noise_floor=floor))
               for floor in (0.0, 0.01)}
    floored = solvers[0.01].layer_evidence(y, 0.003)
    torch.testing.assert_close(floored, solvers[0.0].layer_evidence(y, 0.01))
    assert not torch.allclose(solvers[0.0].layer_evidence(y, 0.003), floored)
    sigma_map = torch.full((64, 80), 0.003)
    torch.testing.assert_close(solvers[0.01].layer_evidence(y, 0.003, sigma_map=sigma_map),
                               solvers[0.0].layer_evidence(y, 0.01, sigma_map=torch.full((64, 80), 0.01)))
    torch.testing.assert_close(solvers[0.01].layer_evidence(y, 0.02), solvers[0.0].layer_evidence(y, 0.02))


def test_noise_estimate_on_flat_and_textured_images(rng):
    flat = 0.4 + rng.normal(0, 0.02, (128, 128))
    assert estimate_noise_sigma(flat) == pytest.approx(0.02, rel=0.1)
    assert estimate_noise_sigma(np.full((64, 64), 0.5)) == pytest.approx(1e-3)


def test_tiled_reconstruction_matches_whole_frame(default_bank):
    """Overlapping tiles blend without seams: away from tile borders they equal the whole frame."""
    scene = make_scene("brick", default_bank, 120, 200, noise_sigma=0.01, seed=2)
    reconstructor = Reconstructor(default_bank, ReconstructionConfig(device="cpu"))
    whole = reconstructor.reconstruct(scene.capture)
    tiled = reconstructor.reconstruct_tiled(scene.capture, tile_size=128)
    assert tiled.tiles == 2 and "tiles" not in tiled.timings  # a count, not seconds
    assert tiled.depth.shape == whole.depth.shape and tiled.all_in_focus.shape == whole.all_in_focus.shape
    mask = evaluation_mask(scene.depth.shape, default_bank.half_size) & textured_mask(scene.sharp)
    tiled_d1 = depth_metrics(tiled.depth, scene.depth, mask)["delta1"]
    whole_d1 = depth_metrics(whole.depth, scene.depth, mask)["delta1"]
    assert tiled_d1 > whole_d1 - 0.1
    core = (slice(20, 100), slice(20, 50))  # covered by the first tile only, far from its border
    # depth (and so the AIF blend) is chosen with less context in a tile, so a few pixels differ
    assert np.mean(np.abs(tiled.all_in_focus[core] - whole.all_in_focus[core])) < 0.01
    # Frames above max_pixels are tiled automatically
    small_limit = Reconstructor(default_bank, ReconstructionConfig(device="cpu", max_pixels=10_000, tile_size=128))
    assert small_limit.reconstruct(scene.capture).tiles == 2


def test_confidence_is_the_mass_within_the_delta_window_of_depth():
    """Tied layers within a factor 1.25 of each other are one answer (high confidence); tied layers
    spanning more than that, as sub-pixel blurs near focus are, leave the depth open (low)."""
    import torch

    from cadfd_ros.solvers.classical import ClassicalParams, depth_from_evidence

    depths = torch.tensor([0.5, 0.55, 0.6, 1.0, 2.0, 4.0])
    guide = torch.ones(1, 1, 16, 16)
    cost = torch.ones(1, 6, 16, 16)
    cost[:, 0:3] = 0.0  # 0.5-0.6 m tied: within a factor 1.25
    _, close = depth_from_evidence(cost, guide, ClassicalParams(), layer_depths=depths)
    cost = torch.ones(1, 6, 16, 16)
    cost[:, 3:6] = 0.0  # 1-4 m tied: the depth is not known
    _, spread = depth_from_evidence(cost, guide, ClassicalParams(), layer_depths=depths)
    assert float(close.min()) > 0.9 and float(spread.max()) < 0.25  # 0.20; within one layer it was 0.33


def _twin_scene(layer: int):
    """A fronto-parallel plane for a bank straddling focus in which layers 2 and 6 have the same blur
    size and opposite signs: the random (asymmetric) pattern and its 180-degree rotation."""
    from cadfd_ros.bench.camera_matrix import mask_pattern
    from cadfd_ros.bench.scenes import Scene, fit_photo, load_photo
    from cadfd_ros.forward.render import render_occlusion_aware
    from cadfd_ros.optics.thin_lens import ThinLens, synthesize_psf_bank

    lens = ThinLens(focal_length_m=0.012, f_number=2.0, focus_distance_m=1.0, pixel_pitch_m=7.5e-6)
    bank = synthesize_psf_bank(mask_pattern("random:13:1"), lens, 0.5, 2.0, 7)
    cocs = lens.coc_px(bank.depths)
    assert cocs[2] < 0 < cocs[6] and abs(abs(cocs[2]) - cocs[6]) < 1e-6
    sharp = fit_photo(load_photo("brick"), 96, 96)
    depth = np.full((96, 96), bank.depths[layer], np.float32)
    capture = render_occlusion_aware(sharp, depth, bank) + np.random.default_rng(0).normal(0, 0.005, (96, 96))
    return bank, Scene("twin", sharp, depth, capture.astype(np.float32), 0.005), lens.focus_distance_m


def _right_side(found: np.ndarray, layer: int, focus: float) -> float:
    inner = found[16:-16, 16:-16]
    return float(((inner < focus) if layer == 2 else (inner > focus)).mean())


@pytest.mark.parametrize("layer", [2, 6])
def test_the_capture_tells_a_psf_from_its_180_degree_rotation(layer):
    """With the true sharp image, re-blur evidence separates the twins: the information is there."""
    from cadfd_ros.bench.camera_matrix import depth_ceiling

    bank, scene, focus = _twin_scene(layer)
    assert _right_side(depth_ceiling(scene, bank), layer, focus) > 0.95


@pytest.mark.parametrize("layer", [2, 6])
def test_classical_evidence_tells_a_psf_from_its_180_degree_rotation(layer):
    """The twin has the same |OTF|, so the re-blur error alone, weighed at this plane's noise (sigma 0.005), leaves
    much of it on the wrong side of focus (27% and 66% right at sparse_weight 4.5; 1% and 26% at 3); the
    side-of-focus term is what puts it right (99.7% and 99.8%). (Weighed at the evidence's noise floor, 0.01, the
    sparse prior is four times stronger against the data, the twin's ghost edges cost more, and the re-blur error
    alone puts all of this plane right: the default's result is also checked.)"""
    from dataclasses import replace

    from cadfd_ros.solvers.classical import ClassicalSolver

    bank, scene, focus = _twin_scene(layer)
    assert _right_side(ClassicalSolver(bank).solve(scene.capture).depth, layer, focus) > 0.9
    at_noise = replace(ClassicalParams(), evidence_noise_floor=0.0)
    assert _right_side(ClassicalSolver(bank, params=at_noise).solve(scene.capture).depth, layer, focus) > 0.9
    without = ClassicalSolver(bank, params=replace(at_noise, side_weight=0.0)).solve(scene.capture).depth
    assert _right_side(without, layer, focus) < 0.7


def test_side_evidence_favours_the_true_side_of_focus_on_a_twin_plane():
    """The side score of the true layer's twin (the capture deconvolved by the wrong orientation) is positive,
    the true layer's is hinged to 0, and the rotated PSF is the twin: the two scores mirror each other."""
    from cadfd_ros.solvers.classical import ClassicalSolver

    for layer, twin in ((2, 6), (6, 2)):
        bank, scene, _ = _twin_scene(layer)
        side = ClassicalSolver(bank).side_evidence(torch.from_numpy(scene.capture)[None, None], 0.005)
        inner = side[0, :, 4:-4, 4:-4]
        assert float(inner.min()) >= 0.0
        assert float(inner[twin].mean()) > 0.01 and float(inner[layer].mean()) < 0.2 * float(inner[twin].mean())


def test_side_evidence_is_none_for_a_bank_on_one_side_of_focus(default_bank):
    from cadfd_ros.solvers.classical import ClassicalSolver

    assert not default_bank.straddles_focus()
    capture = torch.rand(1, 1, 48, 48)
    assert ClassicalSolver(default_bank).side_evidence(capture, 0.01) is None
    bank, _, _ = _twin_scene(2)
    assert ClassicalSolver(bank, params=ClassicalParams(side_weight=0.0)).side_evidence(capture, 0.01) is None
    assert ClassicalSolver(bank).side_evidence(capture, 0.01).shape == (1, bank.num_layers, 12, 12)


def test_subpixel_argmin_picks_the_first_of_tied_layers_and_refines_interior_minima():
    from cadfd_ros.solvers.classical import subpixel_argmin

    layers = torch.arange(8, dtype=torch.float32).view(1, -1, 1, 1)
    # a parabola with its minimum at 3.3, then a flat-bottomed volume (two identical layers, as at the sharp
    # end of an in-front-of-focus bank): the first of the tied layers, not refined past its neighbours
    parabola = (layers - 3.3) ** 2
    tied = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.5, 0.9]).view(1, -1, 1, 1)
    best, c0, coord = subpixel_argmin(torch.cat([parabola, tied], dim=3))
    assert best.flatten().tolist() == [3, 5]
    assert c0.flatten().tolist() == pytest.approx([0.09, 0.5])
    assert coord[0, 0, 0, 0].item() == pytest.approx(3.3, abs=1e-5)
    # costs 1.0 / 0.5 / 0.5 around the first tied layer: the parabola's offset (+0.5) is clamped at half a layer
    assert coord[0, 0, 0, 1].item() == pytest.approx(5.5)
    # the same choice as argmin on a random volume with many exact ties
    noisy = torch.round(torch.randn(1, 12, 30, 40, generator=torch.Generator().manual_seed(0)) * 2) / 2
    assert torch.equal(subpixel_argmin(noisy)[0], noisy.argmin(dim=1, keepdim=True))
