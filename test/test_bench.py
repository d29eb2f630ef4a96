"""cadfd bench: tables, figures and the quality-against-steps curve."""
from __future__ import annotations

import json

import pytest

from cadfd_ros.cli import main as cli_main

pytest.importorskip("diffusers")


def test_steps_curve_runs_each_sampler_at_each_step_count(tmp_path):
    out = tmp_path / "bench"
    code = cli_main(["bench", "--methods", "constant,classical,dps,dps:dps", "--photos", "brick", "--size", "64x80",
                     "--steps-curve", "2,1", "--device", "cpu", "--out-dir", str(out)])
    assert code == 0
    summary = json.loads((out / "bench.json").read_text())
    assert list(summary) == ["constant", "classical", "dps@1", "dps@2", "dps:dps@1", "dps:dps@2"]
    constant = summary["constant"]  # the mid-depth guess, with the capture as its image
    for name, metrics in summary.items():
        if name != "constant":  # depth from defocus beats the guess by far even on 64x80 brick (0.15 vs 0.41-0.48)
            assert metrics["tex_delta1"] > constant["tex_delta1"] + 0.15, name
    for name in ("dps@1", "dps@2", "dps:dps@1", "dps:dps@2"):  # the prior's image is sharper than the capture
        assert summary[name]["aif_ssim"] > constant["aif_ssim"] + 0.05, name
    assert (out / "steps_curve.png").stat().st_size > 10_000
    assert (out / "examples.png").is_file() and "| dps:dps@2 |" in (out / "bench.md").read_text()


def test_steps_curve_rejects_bad_counts(tmp_path, capsys):
    assert cli_main(["bench", "--steps-curve", "0,5", "--out-dir", str(tmp_path)]) == 2
    assert "--steps-curve" in capsys.readouterr().err


def test_paired_leads_mean_standard_error_and_wins():
    from cadfd_ros.bench.runner import BenchRow, markdown_table, paired_leads

    classical = {"a": (0.5, 20.0), "b": (0.7, 25.0), "c": (0.6, 22.0)}
    dps = {"a": (0.7, 21.0), "b": (0.6, 27.0), "c": (0.9, 25.0)}  # δ leads +0.2, -0.1, +0.3
    rows = [BenchRow(method, scene, {"tex_delta1": d, "aif_psnr": p})
            for method, table in (("classical", classical), ("dps", dps)) for scene, (d, p) in table.items()]
    lead = paired_leads(rows)["dps"]
    assert lead["scenes"] == 3 and lead["wins_tex_delta1"] == 2 and lead["wins_aif_psnr"] == 3
    assert lead["lead_tex_delta1"] == pytest.approx(0.4 / 3)
    assert lead["lead_tex_delta1_se"] == pytest.approx(0.2081666 / 3**0.5, rel=1e-5)  # sample std of the leads
    assert lead["lead_aif_psnr"] == pytest.approx(2.0)
    assert "classical" not in paired_leads(rows)
    assert "| dps | 3 | +0.133 ± 0.120 | 2 | +2.00 ± 0.58 | 3 |" in markdown_table(rows)


def test_repeats_render_each_photo_with_new_depth_maps():
    import numpy as np

    from cadfd_ros.bench.runner import constant_depth_method, run_bench
    from cadfd_ros.optics.psf_bank import default_psf_bank_path, load_psf_bank

    bank = load_psf_bank(default_psf_bank_path())
    rows, examples = run_bench(bank, {"constant": constant_depth_method(bank)}, ("brick", "coins"), 48, 64, 0.01,
                               progress=False, repeats=2)
    assert [row.scene for row in rows] == ["brick#0", "coins#0", "brick#1", "coins#1"]
    depths = [scene.depth for scene, _ in examples]
    assert not np.allclose(depths[0], depths[2]) and not np.allclose(depths[1], depths[3])
    single, first = run_bench(bank, {"constant": constant_depth_method(bank)}, ("brick", "coins"), 48, 64, 0.01,
                              progress=False)
    assert [row.scene for row in single] == ["brick", "coins"]  # one repeat: the scenes as before
    np.testing.assert_array_equal(first[1][0].depth, depths[1])


def test_motion_blur_smears_the_capture_sideways_and_nothing_else(default_bank):
    import numpy as np

    from cadfd_ros.bench.scenes import make_scene, motion_blur

    edge = np.zeros((9, 20), np.float32)
    edge[:, 10:] = 1.0  # a vertical edge: a 5 px sideways motion turns it into a 5 px ramp
    ramp = motion_blur(edge, 5)[4]
    assert np.count_nonzero((ramp > 0.01) & (ramp < 0.99)) == 4 and ramp[:8].max() == 0 and ramp[12:].min() == 1
    np.testing.assert_allclose(motion_blur(edge.T, 5), edge.T, atol=1e-6)  # a horizontal edge: untouched
    assert motion_blur(edge, 1) is edge and motion_blur(edge, 0) is edge
    with pytest.raises(ValueError, match=">= 0 px"):
        motion_blur(edge, -2)
    still = make_scene("brick", default_bank, 48, 64, noise_sigma=0.0, seed=3)
    moving = make_scene("brick", default_bank, 48, 64, noise_sigma=0.0, seed=3, motion_px=7)
    np.testing.assert_array_equal(moving.depth, still.depth)  # the scene is the same; only the capture moves
    np.testing.assert_array_equal(moving.sharp, still.sharp)
    np.testing.assert_allclose(moving.capture, motion_blur(still.capture, 7), atol=1e-6)
    assert np.abs(moving.capture - still.capture).mean() > 1e-3


@pytest.mark.parametrize("flags", [["--motion-blur", "-1"], ["--motion-blur", "3", "--speed"],
                                   ["--motion-blur", "3", "--sequence"]])
def test_motion_blur_flag_is_checked(tmp_path, capsys, flags):
    assert cli_main(["bench", *flags, "--out-dir", str(tmp_path)]) == 2
    assert "--motion-blur" in capsys.readouterr().err


def test_measured_depth_is_the_photos_own_geometry_in_the_banks_range(default_bank):
    import numpy as np

    from cadfd_ros.bench.scenes import make_scene, measured_depth

    near, far = float(default_bank.depths[0]), float(default_bank.depths[-1])
    depth = measured_depth("stereo_motorcycle", 60, 80, near, far)
    assert depth.shape == (60, 80) and np.isfinite(depth).all()  # the unmeasured pixels filled
    assert depth.min() == pytest.approx(near) and depth.max() == pytest.approx(far)
    # the Middlebury scene: the floor at the bottom is near, the shelves at the top are far
    assert np.median(depth[-6:]) < 0.5 * np.median(depth[:6])
    first = make_scene("stereo_motorcycle", default_bank, 60, 80, noise_sigma=0.01, seed=1, measured=True)
    second = make_scene("stereo_motorcycle", default_bank, 60, 80, noise_sigma=0.01, seed=2, measured=True)
    np.testing.assert_array_equal(first.depth, depth)  # every seed: the same geometry, new noise
    np.testing.assert_array_equal(second.depth, depth)
    assert not np.array_equal(first.capture, second.capture)
    with pytest.raises(ValueError, match="photo 'brick': no measured depth"):
        make_scene("brick", default_bank, 60, 80, measured=True)


@pytest.mark.parametrize("flags,message", [(["--measured-depth"], "--measured-depth applies to the --cameras"),
                                           (["--cameras", "--photos", "grass", "--measured-depth"], "--measured-depth"),
                                           (["--only", "bundled"], "--only applies to the --cameras bench only")])
def test_cameras_only_flags_are_checked(tmp_path, capsys, flags, message):
    assert cli_main(["bench", *flags, "--out-dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_cameras_bench_over_the_measured_geometry_end_to_end(tmp_path):
    import json

    cams = tmp_path / "cams.toml"
    cams.write_text('[photos]\ntuning = ["brick"]\nheldout = ["stereo_motorcycle"]\n'
                    '[[camera]]\nname = "tiny"\nmask = "random:9:1"\nfocal_length_mm = 12.0\nf_number = 8.0\n'
                    'focus_m = 0.23\npitch_um = 7.5\nnear_m = 0.5\nfar_m = 5.0\nlayers = 8\nchannels = 1\nbits = 8\n'
                    'noise = 0.01\nsize = [48, 64]\n')
    out = tmp_path / "out"
    assert cli_main(["bench", "--cameras", str(cams), "--photos", "heldout", "--measured-depth", "--steps", "1",
                     "--repeats", "2", "--device", "cpu", "--out-dir", str(out)]) == 0
    report = (out / "camera_matrix.md").read_text()
    assert "2 noise draw(s) over its measured depth" in report and "Where the wrong depths go" in report
    summary = json.loads((out / "camera_matrix.json").read_text())["tiny"]
    for method in ("classical", "DFD-DPS", "depth ceiling"):  # right, too sharp or too blurry: nothing else
        means = summary["methods"][method]
        assert means["tex_delta1"] + means["tex_wrong_sharper"] + means["tex_wrong_blurrier"] == pytest.approx(1.0)
    scenes = summary["scenes"]
    assert [s["scene"] for s in scenes] == ["stereo_motorcycle#0", "stereo_motorcycle#1"]
    # the constant guess cannot cover a geometry that spans the whole range
    assert all(s["constant"]["tex_delta1"] < s["classical"]["tex_delta1"] for s in scenes)


def test_speed_bench_reports_network_time_and_overhead(tmp_path):
    out = tmp_path / "speed"
    code = cli_main(["bench", "--speed", "--speed-sizes", "64x56", "--speed-steps", "2,1", "--speed-channels", "mono",
                     "--speed-repeats", "1", "--device", "cpu", "--out-dir", str(out)])
    assert code == 0
    rows = json.loads((out / "speed.json").read_text())
    assert [(r["width"], r["height"], r["channels"], r["steps"]) for r in rows] == [(64, 56, 1, 1), (64, 56, 1, 2)]
    for row in rows:
        # the network is part of the frame's time, never all of it (there is a classical start)
        assert 0 < row["network_s"] < row["seconds"] and row["overhead"] > 1.0
        assert row["peak_mb"] > 50 and "dps" in row["stages"] and "evidence" in row["stages"]
        # the time outside the network is attributed: depth updates, per-step and final data steps, all
        # inside the sampler's own time together with the network
        parts = [row["stages"][k] for k in ("dps_depth", "dps_data_step", "dps_final_data_step")]
        assert all(p > 0 for p in parts) and row["network_s"] + sum(parts) <= row["stages"]["dps"]
    table = (out / "speed.md").read_text()
    assert "| 64x56 | mono | 2 |" in table and "| start | depth | data steps | final step |" in table


@pytest.mark.parametrize("flag, value", [("--speed-sizes", "160"), ("--speed-sizes", "8x8"), ("--speed-steps", "0"),
                                         ("--speed-channels", "bgr"), ("--speed-repeats", "0")])
def test_speed_bench_rejects_bad_flags(tmp_path, capsys, flag, value):
    assert cli_main(["bench", "--speed", flag, value, "--out-dir", str(tmp_path)]) == 2
    assert flag in capsys.readouterr().err


def test_network_seconds_are_counted_per_frame(default_bank):
    import numpy as np

    from cadfd_ros.pipeline import ReconstructionConfig, Reconstructor

    capture = np.random.default_rng(0).uniform(0.2, 0.8, (56, 64)).astype(np.float32)
    dps = Reconstructor(default_bank, ReconstructionConfig(method="dps", steps=2)).reconstruct(capture)
    classical = Reconstructor(default_bank, ReconstructionConfig(method="classical")).reconstruct(capture)
    assert 0 < dps.network_seconds < dps.timings["dps"] <= dps.timings["total"]
    assert classical.network_seconds == 0.0
