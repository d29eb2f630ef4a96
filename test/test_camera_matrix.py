"""The camera-matrix bench: camera file, masks, sensor quantisation, ceilings and the per-camera run."""
from __future__ import annotations

import numpy as np
import pytest

from cadfd_ros.bench import camera_matrix as cm
from cadfd_ros.errors import CadfdError


def test_committed_matrix_covers_the_designs_the_issue_asks_for():
    cameras, split = cm.load_cameras(cm.default_cameras_path())
    assert len(cameras) >= 8 and not set(split.tuning) & set(split.heldout) and len(split.heldout) >= 4
    blurs = [cm.blur_range_px(c.psf_bank()) for c in cameras]
    assert any(lo > 0 and hi > lo for lo, hi in blurs)  # behind focus, blur growing
    assert any(lo < 0 and hi < 0 and abs(hi) < abs(lo) for lo, hi in blurs)  # in front, blur shrinking
    assert any(lo < 0 < hi for lo, hi in blurs)  # straddling focus
    masks = {c.mask.split(":")[0] + (":" + c.mask.split(":")[1] if c.mask.startswith("random") else "")
             for c in cameras if not c.bank}
    assert {"random:9", "random:13", "circle", "designed"} <= masks
    assert {c.channels for c in cameras} == {1, 3} and {c.bits for c in cameras} == {8, 16}
    layers = [c.psf_bank().num_layers for c in cameras]
    assert min(layers) == 8 and max(layers) == 16
    noises = [c.noise for c in cameras]
    assert min(noises) <= 0.005 and max(noises) >= 0.03
    sizes = [c.size for c in cameras]
    assert (128, 128) in sizes and (480, 640) in sizes and any(h != w for h, w in sizes)


def test_held_out_camera_designs_are_new_and_share_the_photo_split():
    """config/cameras_heldout.toml: designs no parameter was chosen on, beside the tuned matrix, with its split."""
    tuned, split = cm.load_cameras(cm.default_cameras_path())
    cameras, heldout_split = cm.load_cameras(cm.heldout_cameras_path())
    assert heldout_split == split and len(cameras) >= 6
    assert not {c.name for c in cameras} & {c.name for c in tuned}
    tuned_designs = {(c.mask, c.focal_length_mm, c.f_number, c.focus_m) for c in tuned}
    assert not {(c.mask, c.focal_length_mm, c.f_number, c.focus_m) for c in cameras} & tuned_designs
    blurs = [cm.blur_range_px(c.psf_bank()) for c in cameras]
    assert any(lo > 0 for lo, hi in blurs) and any(hi < 0 for lo, hi in blurs) and any(lo < 0 < hi for lo, hi in blurs)
    assert all(max(abs(lo), abs(hi)) <= 25 for lo, hi in blurs)  # practical blurs, as the matrix's


def test_every_photo_of_the_split_loads_from_the_installed_wheels():
    """Each name of the split is a photo in [0, 1], none of them training data of the prior; a stereo pair gives
    its left view and matplotlib's sample data its file. Bad names say which photo and why."""
    import csv
    from pathlib import Path

    import skimage.data

    import cadfd_ros.prior
    from cadfd_ros.bench.scenes import load_photo

    _, split = cm.load_cameras(cm.default_cameras_path())
    with open(Path(cadfd_ros.prior.__file__).with_name("MANIFEST.csv"), newline="") as manifest:
        trained_on = {row["name"] for row in csv.DictReader(manifest) if row["split"] == "train"}
    assert trained_on and not {name.split(":")[-1] for name in split.tuning + split.heldout} & trained_on
    for name in split.tuning + split.heldout:
        photo = load_photo(name)
        assert photo.dtype == np.float32 and photo.ndim in (2, 3) and min(photo.shape[:2]) >= 300, name
        assert 0 <= photo.min() < photo.max() <= 1 and photo.std() > 0.05, name
    left = skimage.data.stereo_motorcycle()[0]
    assert load_photo("stereo_motorcycle").shape == left.shape
    assert load_photo("matplotlib:grace_hopper").shape == (600, 512, 3)
    with pytest.raises(ValueError, match=r"photo 'matplotlib:nope': not in matplotlib's sample data"):
        load_photo("matplotlib:nope")
    with pytest.raises(ValueError, match="not in matplotlib's sample data"):
        load_photo("matplotlib:../sample_data/grace_hopper")  # a name, not a path
    with pytest.raises(ValueError, match=r"photo 'nope': not a scikit-image sample"):
        load_photo("nope")


def test_camera_file_errors_name_the_problem(tmp_path):
    bad = tmp_path / "cams.toml"
    bad.write_text('[photos]\ntuning = ["a"]\nheldout = ["a"]\n[[camera]]\nname = "x"\nchannels = 1\nbits = 8\n'
                   'noise = 0.01\nsize = [64, 64]\n')
    with pytest.raises(CadfdError, match=r"photos \['a'\] are both tuning and held out"):
        cm.load_cameras(bad)
    bad.write_text('[[camera]]\nname = "x"\nchannels = 1\nbits = 8\nnoise = 0.01\nsize = [64, 64]\nlense = 3\n')
    with pytest.raises(CadfdError, match=r"camera 0 has unknown keys \['lense'\]"):
        cm.load_cameras(bad)
    with pytest.raises(CadfdError, match="expected designed, alt, circle or random"):
        cm.mask_pattern("spiral")


def test_random_masks_are_reproducible_and_half_open():
    a, b = cm.mask_pattern("random:13:4"), cm.mask_pattern("random:13:4")
    np.testing.assert_array_equal(a, b)
    assert a.shape == (13, 13) and a.sum() == 85 and not np.array_equal(a, cm.mask_pattern("random:13:5"))


def test_quantise_to_the_sensor_bits():
    values = np.array([0.0, 0.3, 0.5, 1.2], np.float32)
    q8 = cm.quantise(values, 8)
    np.testing.assert_allclose(q8 * 255, np.round(q8 * 255), atol=1e-4)
    assert q8[-1] == 1.0 and abs(q8[1] - 0.3) <= 0.5 / 255
    assert abs(cm.quantise(values, 16)[1] - 0.3) <= 0.5 / 65535


def test_a_grey_photo_on_an_rgb_sensor_gets_independent_noise_per_channel(small_bank):
    # Replicating a noisy grey capture into three channels made the channels' noise identical, and the noise
    # estimate (which averages the channels as if independent) read about sqrt(3) too high.
    from cadfd_ros.bench.scenes import make_scene
    from cadfd_ros.solvers.noise import estimate_noise_sigma

    noisy = make_scene("camera", small_bank, 96, 128, noise_sigma=0.01, seed=4, channels=3)
    clean = make_scene("camera", small_bank, 96, 128, noise_sigma=0.0, seed=4, channels=3)
    assert noisy.sharp.shape == noisy.capture.shape == (96, 128, 3)
    np.testing.assert_array_equal(noisy.sharp[..., 0], noisy.sharp[..., 2])
    residual = (noisy.capture - clean.capture).reshape(-1, 3)
    inside = np.all((clean.capture.reshape(-1, 3) > 0.05) & (clean.capture.reshape(-1, 3) < 0.95), axis=1)
    correlation = np.corrcoef(residual[inside].T)
    assert np.abs(correlation[np.triu_indices(3, 1)]).max() < 0.05
    assert 0.008 < estimate_noise_sigma(noisy.capture) < 0.012


def test_depth_ceiling_reads_a_fronto_parallel_plane(small_bank):
    from cadfd_ros.bench.scenes import Scene, fit_photo, load_photo
    from cadfd_ros.forward.render import render_occlusion_aware

    sharp = fit_photo(load_photo("brick"), 64, 64)
    depth = np.full((64, 64), small_bank.depths[5], np.float32)
    capture = render_occlusion_aware(sharp, depth, small_bank)
    found = cm.depth_ceiling(Scene("plane", sharp, depth, capture, 0.0), small_bank)
    inner = found[10:-10, 10:-10]
    # the right layer everywhere (within half a layer in inverse depth); the sub-layer parabola of a
    # V-shaped cost leaves a bias inside that (measured: median 1.42-1.46 m for 1.40 m)
    half_step = 0.5 * (1 / small_bank.depths[5] - 1 / small_bank.depths[6])
    assert np.all(np.abs(1 / inner - 1 / small_bank.depths[5]) < half_step)


def test_reliability_orders_pixels_by_confidence():
    truth = np.ones((10, 10), np.float32)
    confidence = np.tile(np.linspace(0, 1, 10, dtype=np.float32), (10, 1))
    depth = np.where(confidence > 0.5, 1.0, 2.0).astype(np.float32)  # wrong where unconfident
    curve = cm.reliability(depth, confidence, truth, np.ones((10, 10), bool))
    assert curve[:5] == [0.0] * 5 and curve[5:] == [1.0] * 5


def test_reliability_splits_tied_confidences_at_random_not_in_raster_order():
    """Half the pixels wrong, all in the first rows, every confidence 0: raster order would give deciles
    0 0 0 0 0 1 1 1 1 1, a ranking the confidence does not make; each decile should read about 0.5."""
    truth = np.ones((40, 50), np.float32)
    depth = truth.copy()
    depth[:20] = 2.0
    curve = cm.reliability(depth, np.zeros_like(truth), truth, np.ones_like(truth, bool))
    assert all(0.35 < v < 0.65 for v in curve), curve


def test_confidence_auc_measures_how_well_confidence_ranks_errors():
    truth = np.ones((10, 10), np.float32)
    confidence = np.tile(np.linspace(0, 1, 10, dtype=np.float32), (10, 1))
    mask = np.ones((10, 10), bool)
    wrong_where_unconfident = np.where(confidence > 0.5, 1.0, 2.0).astype(np.float32)
    assert cm.confidence_auc(wrong_where_unconfident, confidence, truth, mask) == 1.0
    wrong_where_confident = np.where(confidence > 0.5, 2.0, 1.0).astype(np.float32)
    assert cm.confidence_auc(wrong_where_confident, confidence, truth, mask) == 0.0
    # no ranking: the same confidence everywhere reads 0.5 (ties count half)
    assert cm.confidence_auc(wrong_where_unconfident, np.zeros_like(confidence), truth, mask) == 0.5
    # undefined where no pixel (or every pixel) is wrong
    assert np.isnan(cm.confidence_auc(truth, confidence, truth, mask))


def test_min_confidence_trade_counts_kept_pixels_and_their_delta():
    truth = np.ones((10, 10), np.float32)
    confidence = np.tile(np.linspace(0, 1, 10, dtype=np.float32), (10, 1))  # columns at 0, 0.11 ... 1
    depth = np.where(confidence > 0.5, 1.0, 2.0).astype(np.float32)
    depth[0, 0] = np.nan  # an invalid pixel is never kept
    result = cm.CameraResult(camera=None, blur_px=(0.0, 0.0))
    result.coverage["DFD-DPS"] = cm.coverage_counts(depth, confidence, truth, np.ones((10, 10), bool)) * 2
    trade = dict((level, (kept, delta)) for level, kept, delta in result.trade("DFD-DPS"))
    assert trade[0.0] == (0.99, 50 / 99)  # pooled counts: the factor 2 cancels
    assert trade[0.5] == (0.5, 1.0) and trade[0.9] == (0.1, 1.0)
    assert trade[0.25][0] == 0.7 and abs(trade[0.25][1] - 5 / 7) < 1e-12


def test_either_side_delta_counts_the_mirror_across_focus():
    from cadfd_ros.bench.metrics import either_side_delta1, mirror_across_focus

    # focus 1 m: 0.8 m and 4/3 m have blurs of one size and opposite signs; 0.4 m has no mirror
    assert np.allclose(mirror_across_focus(np.array([0.8, 4 / 3, 1.0]), 1.0), [4 / 3, 0.8, 1.0])
    assert np.isinf(mirror_across_focus(np.array([0.4]), 1.0)[0])
    truth = np.full((4, 4), 0.8, np.float32)
    depth = np.full((4, 4), 4 / 3, np.float32)  # every pixel on the wrong side
    depth[0] = 3.0  # wrong on either side (its mirror is 0.6 m)
    mask = np.ones((4, 4), bool)
    assert either_side_delta1(depth, truth, mask, 1.0) == 0.75


def test_wrong_depths_are_split_by_blur_size_and_side_of_focus():
    from cadfd_ros.bench.metrics import wrong_depth_shares

    # focus 1 m, layers 0.5 ... 4 m: the blur grows with |1/d - 1/focus| on either side
    depths = np.array([0.5, 0.8, 1.0, 4 / 3, 2.0, 4.0])
    diameters = 10 * np.abs(1 / depths - 1.0)
    truth = np.full((2, 5), 0.5)
    truth[1] = 2.0
    # row 0, truth 0.5 m (10 px in front): right, too sharp (0.8 m: 2.5 px), too sharp, other side, other side
    # row 1, truth 2 m (5 px behind): right, too sharp (1.25 m: 2 px), too blurry (4 m: 7.5 px), other side twice
    depth = np.array([[0.52, 0.8, 0.9, 2.0, 4.0],
                      [2.1, 1.25, 4.0, 0.5, 0.8]])
    mask = np.ones((2, 5), bool)
    shares = wrong_depth_shares(depth, truth, mask, 1 / depths, diameters, focus_m=1.0)
    assert shares == pytest.approx({"wrong_sharper": 0.3, "wrong_blurrier": 0.1, "wrong_side": 0.4})
    # without a focus (a bank wholly on one side) the other-side pixels count by their blur's size alone: 2 m and
    # 4 m (5 and 7.5 px) against 10 px too sharp, 0.5 m (10 px) against 5 px too blurry, 0.8 m (2.5 px) too sharp
    shares = wrong_depth_shares(depth, truth, mask, 1 / depths, diameters)
    assert shares == pytest.approx({"wrong_sharper": 0.6, "wrong_blurrier": 0.2})
    assert np.isnan(wrong_depth_shares(depth, truth, ~mask, 1 / depths, diameters)["wrong_sharper"])


def test_one_small_camera_gives_every_row_and_the_ceilings(tmp_path):
    path = tmp_path / "cams.toml"
    path.write_text('[photos]\ntuning = ["brick"]\nheldout = ["camera"]\n'
                    '[[camera]]\nname = "tiny"\nmask = "random:9:1"\nfocal_length_mm = 12.0\nf_number = 8.0\n'
                    'focus_m = 0.23\npitch_um = 7.5\nnear_m = 0.5\nfar_m = 5.0\nlayers = 8\nchannels = 1\nbits = 8\n'
                    'noise = 0.01\nsize = [64, 80]\n')
    cameras, split = cm.load_cameras(path)
    result = cm.run_camera(cameras[0], split.tuning, steps=1, progress=False)
    assert set(result.rows) == {"constant", "capture", "classical", "DFD-DPS", "depth ceiling", "AIF ceiling"}
    # 64x80 brick, 1 step: classical 0.44 and DFD-DPS 0.41 against 0.18 for the constant guess; the image
    # above the capture (21.6 dB) and below its own ceiling at the true depth (25.1 dB)
    for method in ("classical", "DFD-DPS"):
        assert result.mean(method, "tex_delta1") > result.mean("constant", "tex_delta1") + 0.1, method
    assert result.mean("capture", "aif_psnr") < result.mean("DFD-DPS", "aif_psnr") < result.mean("AIF ceiling",
                                                                                                "aif_psnr")
    assert result.mean("depth ceiling", "tex_delta1") > result.mean("constant", "tex_delta1")
    assert len(result.reliability["DFD-DPS"]) == cm.DECILES
    assert [level for level, _, _ in result.trade("DFD-DPS")] == list(cm.MIN_CONFIDENCE_LEVELS)
    kept = [kept for _, kept, _ in result.trade("DFD-DPS")]
    assert kept == sorted(kept, reverse=True) and kept[0] == 1.0  # threshold 0 keeps all; higher keeps no more
    assert kept[-1] < 1.0  # and 0.9 drops some on this camera
    assert "| tiny |" in cm.trade_table([result]) and cm.side_table([result]) == ""  # behind focus: no side table
    for method in cm.WRONG_DEPTH_METHODS:  # every textured pixel is right, too sharp or too blurry
        row = result.rows[method][0]
        assert "tex_wrong_side" not in row
        assert row["tex_delta1"] + row["tex_wrong_sharper"] + row["tex_wrong_blurrier"] == pytest.approx(1.0)
    wrong = cm.wrong_depth_table([cm.results_json([result])])
    dps = result.rows["DFD-DPS"][0]
    assert (f"{dps['tex_delta1']:.3f} · {dps['tex_wrong_sharper']:.2f} · {dps['tex_wrong_blurrier']:.2f} · –"
            in wrong.splitlines()[2])
    table = cm.camera_table([result])
    assert "| tiny |" in table and "mean over 1 cameras" in table
    leads = cm.lead_table([result])  # one scene: leads without a standard error, never "± nan"
    assert "| tiny | 1 |" in leads and "nan" not in leads and "±" not in leads.splitlines()[2]
    assert "tiny" in cm.results_json([result]) and cm.save_worst_camera_figure(tmp_path / "w.png", [result]).is_file()
    # every scene's own figures, so one photo that moves a camera's mean can be seen
    scenes = cm.results_json([result])["tiny"]["scenes"]
    assert [entry["scene"] for entry in scenes] == ["brick"] and 0.0 < scenes[0]["textured_share"] <= 1.0
    assert scenes[0]["DFD-DPS"]["tex_delta1"] == result.mean("DFD-DPS", "tex_delta1")
    assert scenes[0]["capture"]["aif_psnr"] == result.mean("capture", "aif_psnr")
    assert "| tiny | brick |" in cm.scene_table([result])


def test_seed_means_table_averages_runs_and_lists_each_runs_lead():
    def run(dps: float, classical: float) -> dict:
        methods = {"constant": {"tex_delta1": 0.3}, "classical": {"tex_delta1": classical},
                   "DFD-DPS": {"tex_delta1": dps, "aif_psnr": 26.0, "aif_ssim": 0.7, "confidence_auc": 0.75},
                   "depth ceiling": {"tex_delta1": 0.9}, "capture": {"aif_psnr": 25.0, "aif_ssim": 0.6}}
        return {"cam": {"blur_px": [2.0, 9.5], "methods": methods}}

    table = cm.seed_means_table([run(0.8, 0.6), run(0.7, 0.65)])
    row = next(line for line in table.splitlines() if line.startswith("| cam |"))
    assert "| +2.0 … +9.5 | 0.300 | 0.625 | 0.750 | 0.900 | 83.3% |" in row  # one decimal: the bar is 85%
    assert "+0.125 (+0.200 / +0.050)" in row and "+0.325 (+0.300 / +0.350)" in row  # each run's paired lead
    assert "25.00 → 26.00 (+1.00 / +1.00)" in row and "0.750 / 0.750 |" in row
    assert "**mean over 1 cameras**" in table
    with pytest.raises(ValueError, match="differ in cameras"):
        cm.seed_means_table([run(0.8, 0.6), {"other": run(0.8, 0.6)["cam"]}])


def test_wrong_depth_table_averages_runs_and_marks_banks_without_a_side():
    def run(dps_sharper: float) -> dict:
        behind = {"tex_delta1": 0.6, "tex_wrong_sharper": 0.3, "tex_wrong_blurrier": 0.1}
        dps = {"tex_delta1": 0.9 - dps_sharper, "tex_wrong_sharper": dps_sharper, "tex_wrong_blurrier": 0.1}
        straddle = {"tex_delta1": 0.5, "tex_wrong_sharper": 0.1, "tex_wrong_blurrier": 0.0, "tex_wrong_side": 0.4}
        return {"behind": {"methods": {"classical": behind, "DFD-DPS": dps, "depth ceiling": behind}},
                "straddle": {"methods": {m: straddle for m in cm.WRONG_DEPTH_METHODS}}}

    lines = cm.wrong_depth_table([run(0.2), run(0.1)]).splitlines()
    assert lines[2] == "| behind | 0.600 · 0.30 · 0.10 · – | 0.750 · 0.15 · 0.10 · – | 0.600 · 0.30 · 0.10 · – |"
    assert lines[3].startswith("| straddle | 0.500 · 0.10 · 0.00 · 0.40 |")
    # the mean over cameras counts a bank without a side as none on the other side
    assert lines[4].startswith("| **mean over 2 cameras** | 0.550 · 0.20 · 0.05 · 0.20 | 0.625 · 0.12 · 0.05 · 0.20 |")
    with pytest.raises(ValueError, match="wrong_depth_table: runs differ in cameras"):
        cm.wrong_depth_table([run(0.2), {"behind": run(0.2)["behind"]}])
    with pytest.raises(ValueError, match="wrong_depth_table: no runs"):
        cm.wrong_depth_table([])


def test_photo_means_table_averages_each_photo_over_cameras_and_runs():
    def scene(photo: str, dps: float, psnr: float, ssim: float) -> dict:
        return {"scene": photo, "textured_share": 0.5, "constant": {"tex_delta1": 0.2},
                "classical": {"tex_delta1": 0.5}, "depth ceiling": {"tex_delta1": 0.9},
                "capture": {"aif_psnr": 30.0, "aif_ssim": 0.8},
                "DFD-DPS": {"tex_delta1": dps, "aif_psnr": psnr, "aif_ssim": ssim}}

    runs = [{"a": {"scenes": [scene("moon", 0.6, 29.0, 0.85), scene("grass", 0.8, 31.0, 0.9)]},
             "b": {"scenes": [scene("moon", 0.8, 31.0, 0.75), scene("grass", 0.9, 32.0, 0.9)]}},
            {"a": {"scenes": [scene("moon", 0.7, 31.0, 0.85), scene("grass", 0.7, 31.0, 0.9)]}}]
    table = cm.photo_means_table(runs)
    moon = next(line for line in table.splitlines() if line.startswith("| moon |"))
    # three scenes; two of them below the capture (one in PSNR, one in SSIM)
    assert moon == "| moon | 3 | 50% | 0.200 | 0.500 | 0.700 | 0.900 | +0.200 | +0.33 | +0.017 | 2 |"
    assert "| grass | 3 | 50% | 0.200 | 0.500 | 0.800 | 0.900 | +0.300 | +1.33 | +0.100 | 0 |" in table
    with pytest.raises(ValueError, match="camera 'a' has no per-scene figures"):
        cm.photo_means_table([{"a": {"methods": {}}}])
