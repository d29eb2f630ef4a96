"""temporal_warm_start: each frame of a video starts from the previous frame's estimate; a cut, a size
change or a reset starts cold. Small frames (64x80), few steps."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import replace

import numpy as np
import pytest

from cadfd_ros.bench.sequence import SequenceConfig, make_sequence
from cadfd_ros.errors import CadfdError
from cadfd_ros.pipeline import ReconstructionConfig, Reconstructor

pytest.importorskip("diffusers")

TINY = SequenceConfig(frames=4, cut_every=2, height=64, width=80, seed=3)


@pytest.fixture(scope="module")
def prior():
    from cadfd_ros.prior import load_prior

    return load_prior("default", device="cpu")


@pytest.fixture(scope="module")
def frames(default_bank):
    # tuning photos: two frames of one slowly moving scene, then a cut to another
    return [scene for _, _, scene in make_sequence(default_bank, ("astronaut", "coffee"), TINY)]


def _reconstructor(bank, prior, **config) -> Reconstructor:
    config = {"method": "dps", "steps": 2, "device": "cpu", "temporal_warm_start": True, **config}
    reconstructor = Reconstructor(bank, ReconstructionConfig(**config))
    if reconstructor.sampler is not None:
        reconstructor.sampler.prior = prior
    return reconstructor


def test_warm_on_the_second_frame_cold_after_a_cut(default_bank, prior, frames):
    r = _reconstructor(default_bank, prior)
    threshold = r.sampler.params.warm_cut_data_term
    first = r.reconstruct(frames[0].capture)
    assert first.start == "classical" and first.steps == 2 and math.isnan(first.warm_data_term)
    second = r.reconstruct(frames[1].capture)  # the same scene, moved by at most a pixel
    assert second.start == "warm"
    assert second.steps == r.sampler.params.warm_steps  # network evaluations: exactly the warm step count
    assert "evidence" not in second.timings and "warm_check" in second.timings  # the classical start is skipped
    assert 0.5 < second.warm_data_term <= threshold
    cut = r.reconstruct(frames[2].capture)  # a different photo and depth map
    assert cut.start == "classical" and cut.steps == 2
    assert cut.warm_data_term > 3 * threshold  # far above it: the threshold is not a close call
    after = r.reconstruct(frames[3].capture)
    assert after.start == "warm"


def test_warm_frame_matches_a_cold_one(default_bank, prior, frames):
    # the second frame warm (1 evaluation) against the same frame cold (2): close in depth and image
    from cadfd_ros.bench.runner import score

    warm = _reconstructor(default_bank, prior)
    warm.reconstruct(frames[0].capture)
    w = warm.reconstruct(frames[1].capture)
    c = _reconstructor(default_bank, prior, temporal_warm_start=False).reconstruct(frames[1].capture)
    assert w.start == "warm" and c.start == "classical"
    ws, cs = score(w.depth, w.all_in_focus, frames[1], default_bank), score(c.depth, c.all_in_focus, frames[1], default_bank)
    assert ws["tex_delta1"] > cs["tex_delta1"] - 0.1
    assert ws["aif_psnr"] > cs["aif_psnr"] - 1.0


def test_warm_refresh_starts_every_nth_frame_cold(default_bank, prior, frames):
    from cadfd_ros.solvers.dps import SamplerParams

    r = _reconstructor(default_bank, prior)
    r.sampler.params = replace(r.sampler.params, warm_refresh_every=2)
    starts = [r.reconstruct(frames[i].capture).start for i in (0, 1, 1, 1, 1)]  # one static scene
    assert starts == ["classical", "warm", "classical", "warm", "classical"]
    r.reset_temporal_start()  # the count restarts with the previous frame
    r.sampler.params = replace(r.sampler.params, warm_refresh_every=0)
    assert [r.reconstruct(frames[i].capture).start for i in (0, 1, 1, 1)] == ["classical"] + ["warm"] * 3
    with pytest.raises(CadfdError, match="warm_refresh_every"):
        SamplerParams(warm_refresh_every=-1)


def test_warm_steps_sets_the_network_evaluations(default_bank, prior, frames):
    r = _reconstructor(default_bank, prior)
    r.sampler.params = replace(r.sampler.params, warm_steps=3)
    r.reconstruct(frames[0].capture)
    result = r.reconstruct(frames[1].capture)
    assert result.start == "warm" and result.steps == 3


def test_size_change_and_reset_start_cold(default_bank, prior, frames):
    r = _reconstructor(default_bank, prior)
    r.reconstruct(frames[0].capture)
    cropped = r.reconstruct(frames[1].capture[:56])  # another frame size
    assert cropped.start == "classical" and math.isnan(cropped.warm_data_term)
    assert r.reconstruct(frames[1].capture[:56]).start == "warm"  # the new size is the new previous frame
    r.reset_temporal_start()
    assert r.reconstruct(frames[1].capture[:56]).start == "classical"
    r.warmup(channels=3)  # the flat warm-up frame must not become the previous frame
    assert r.reconstruct(frames[1].capture[:56]).start == "classical"


def test_off_by_default_and_not_for_classical(default_bank, prior, frames):
    off = _reconstructor(default_bank, prior, temporal_warm_start=False)
    assert [off.reconstruct(f.capture).start for f in frames[:2]] == ["classical", "classical"]
    classical = _reconstructor(default_bank, prior, method="classical")
    assert not classical.temporal
    assert [classical.reconstruct(f.capture).start for f in frames[:2]] == ["", ""]


def test_data_term_of_the_estimate_on_its_own_capture_is_its_residual(default_bank, prior, frames):
    from cadfd_ros.solvers.classical import ClassicalSolver
    from cadfd_ros.solvers.dps import DiffusionPosteriorSampler, SamplerConfig

    sampler = DiffusionPosteriorSampler(default_bank, SamplerConfig(steps=2), "cpu", prior=prior)
    _, start = ClassicalSolver(default_bank).estimate(frames[0].capture)
    result = sampler.solve(frames[0].capture, start)
    assert result.next_start is not None and result.start == "classical"
    term = sampler.warm_data_term(frames[0].capture, result.next_start, result.noise_sigma)
    assert term == pytest.approx(result.residual / result.noise_sigma, rel=1e-4)
    with pytest.raises(CadfdError, match="previous frame"):
        sampler.warm_data_term(frames[0].capture[:56], result.next_start, result.noise_sigma)


def test_sequence_bench_runs_and_writes_its_outputs(tmp_path):
    from cadfd_ros.cli import main as cli_main

    code = cli_main(["bench", "--sequence", "--sequence-frames", "5", "--sequence-cut-every", "3",
                     "--sequence-size", "56x64", "--photos", "astronaut,coffee", "--steps", "2",
                     "--out-dir", str(tmp_path)])
    assert code == 0
    for name in ("sequence.csv", "sequence.json", "sequence.md", "sequence.png"):
        assert (tmp_path / name).is_file(), name
    with open(tmp_path / "sequence.csv") as handle:
        rows = list(csv.DictReader(handle))
    warm = [r for r in rows if r["arm"] == "warm"]
    cold = [r for r in rows if r["arm"] == "cold"]
    assert len(warm) == 5 and len(cold) == 5  # cold on every frame by default
    assert [r["start"] for r in warm] == ["classical", "warm", "warm", "classical", "warm"]
    assert all(r["start"] == "classical" and r["nfe"] == "2" for r in cold)
    summary = json.loads((tmp_path / "sequence.json").read_text())
    assert summary["arms"]["warm"]["nfe_per_frame"] == pytest.approx((2 + 1 + 1 + 2 + 1) / 5)
    assert summary["cuts"] == [summary["cuts"][0]] and summary["cuts"][0]["cut"] == 3
    assert summary["cuts"][0]["start_at_cut"] == "classical"
    assert "Goals (issue 14)" in (tmp_path / "sequence.md").read_text()


def test_sequence_frames_move_slowly_and_cut(default_bank):
    # consecutive true images differ by a sub-pixel-to-1-px motion; a cut changes the photo
    config = SequenceConfig(frames=4, cut_every=2, height=64, width=80, seed=3, max_rotation_deg=0.0)
    scenes = [s for _, _, s in make_sequence(default_bank, ("astronaut", "coffee"), config)]
    still = np.abs(scenes[1].sharp - scenes[0].sharp).mean()
    cut = np.abs(scenes[2].sharp - scenes[1].sharp).mean()
    assert 0 < still < 0.25 * cut
    assert scenes[0].name.startswith("astronaut") and scenes[2].name.startswith("coffee")
    assert SequenceConfig(frames=300).cut_frames() == [100, 200]
    assert SequenceConfig(cold_every=5).runs_cold(101) and not SequenceConfig(cold_every=5).runs_cold(104)


def test_drift_standard_error_counts_warm_chains_not_frames():
    # a warm chain's frames share its start, so they are one sample: 12 frames in 3 chains give the spread of the
    # 3 chain means, and a chain restarts wherever the warm arm started cold (a cut or the periodic cold frame)
    from cadfd_ros.bench.sequence import FrameRow, chain_standard_error, summarise_sequence

    starts = ["classical", "warm", "warm", "warm"] * 3
    offsets = [0.1, 0.1, 0.1, 0.1, -0.2, -0.2, -0.2, -0.2, 0.0, 0.0, 0.0, 0.0]
    rows = []
    for frame in range(36):
        start, offset = starts[frame % 12], offsets[frame % 12]
        for arm, shift in (("warm", offset), ("cold", 0.0)):
            rows.append(FrameRow(frame, 0, "p", arm, start if arm == "warm" else "classical", 1, float("nan"), 0.1,
                                 0.5 + shift, 0.5 + shift, 0.1, 25.0 + shift, 0.5))
    means = np.array([0.1, -0.2, 0.0])
    expected = float(np.std(means, ddof=1) / math.sqrt(3))
    assert chain_standard_error([0.1] * 4 + [-0.2] * 4 + [0.0] * 4, [0] * 4 + [1] * 4 + [2] * 4) == pytest.approx(expected)
    assert math.isnan(chain_standard_error([0.1, 0.2], [0, 0]))
    config = SequenceConfig(frames=36, cut_every=100, height=8, width=8)
    drift = summarise_sequence(rows, config)["drift"][0]
    assert drift["delta_diff_first"] == pytest.approx(float(np.mean(offsets)))  # the first 12 frames
    assert drift["delta_diff_first_se"] == pytest.approx(expected)  # 3 chains, not 12 frames
    assert drift["psnr_diff_last_se"] == pytest.approx(expected)
    assert drift["delta_diff_last_se"] > 2 * float(np.std(offsets, ddof=1) / math.sqrt(12))  # wider than per frame


def test_a_segment_without_textured_pixels_has_no_delta_to_drift_or_recover_in():
    # a smooth photo (the tuning set's retina) gives frames with no textured pixels, so no delta: its segment is
    # judged on PSNR alone, and a NaN must not fail the drift or recovery goal, nor hide a real miss elsewhere
    from cadfd_ros.bench.sequence import FrameRow, sequence_markdown, summarise_sequence

    def rows_for(delta_warm: float, delta_cold: float, smooth_psnr_drop: float = 0.0) -> list[FrameRow]:
        rows = []
        for frame in range(60):
            segment, start = frame // 30, "classical" if frame % 5 == 0 else "warm"
            smooth = segment == 1  # the cut at frame 30 lands on the smooth photo
            for arm, delta, psnr in (("warm", delta_warm, 25.0 - smooth * smooth_psnr_drop), ("cold", delta_cold, 25.0)):
                value = float("nan") if smooth else delta
                rows.append(FrameRow(frame, segment, "retina" if smooth else "brick", arm,
                                     start if arm == "warm" else "classical", 1, float("nan"), 0.1, value, value, 0.1,
                                     psnr, 0.5))
        return rows

    config = SequenceConfig(frames=60, cut_every=30, height=8, width=8)
    summary = summarise_sequence(rows_for(0.80, 0.80), config)
    textured, smooth = summary["drift"]
    assert math.isnan(smooth["delta_diff_last"]) and math.isnan(smooth["delta_diff_last_se"])
    assert textured["delta_diff_last"] == pytest.approx(0.0)
    assert summary["goals"]["no_drift"] and summary["goals"]["recovers"]
    assert summary["paired"]["delta_diff"] == pytest.approx(0.0)
    assert "| 1 | retina | n/a ± n/a | n/a ± n/a |" in sequence_markdown(summary, "header")
    # a real miss still fails: the textured segment's delta, and the smooth segment's PSNR after the cut
    assert not summarise_sequence(rows_for(0.70, 0.80), config)["goals"]["no_drift"]
    dropped = summarise_sequence(rows_for(0.80, 0.80, smooth_psnr_drop=0.5), config)["goals"]
    assert not dropped["no_drift"] and not dropped["recovers"]


def test_translation_estimate_and_fourier_shift():
    import cv2
    import torch

    from cadfd_ros.result import SolverStart
    from cadfd_ros.solvers.motion import estimate_translation, fourier_shift, shift_start

    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.random((60, 80)), (0, 0), 2)
    moved = fourier_shift(torch.from_numpy(image), -0.3, 0.6).numpy()
    assert np.abs(moved[5:-5, 5:-5] - np.roll(image, 1, axis=1)[5:-5, 5:-5]).mean() > 1e-3  # not a whole pixel
    whole = fourier_shift(torch.from_numpy(image), 0, 1).numpy()
    np.testing.assert_allclose(whole[5:-5, 5:-5], np.roll(image, 1, axis=1)[5:-5, 5:-5], atol=1e-5)
    before = image.copy()
    dy, dx, response = estimate_translation(image, moved)
    assert (dy, dx) == pytest.approx((-0.3, 0.6), abs=0.02) and response > 0.5
    np.testing.assert_array_equal(image, before)  # OpenCV windows its inputs in place: we pass copies
    warped = cv2.warpAffine(image, np.float64([[1, 0, -2.4], [0, 1, 3.1]]), (80, 60), flags=cv2.INTER_CUBIC,
                            borderMode=cv2.BORDER_REFLECT)
    assert estimate_translation(image, warped)[:2] == pytest.approx((3.1, -2.4), abs=0.1)
    _, _, unrelated = estimate_translation(image, rng.random((60, 80)))
    assert unrelated < 0.2
    start = SolverStart(torch.full((1, 60, 80), 2.0), torch.from_numpy(image)[None, None].float(), 0.01)
    moved_start = shift_start(start, -0.3, 0.6, num_layers=4)
    torch.testing.assert_close(moved_start.layer_coord, torch.full((1, 60, 80), 2.0), atol=1e-5, rtol=0)
    # a depth edge moves with the image, and the shift's ringing stays inside the bank's layer range
    step = torch.zeros(1, 60, 80)
    step[..., 40:] = 3.0
    edge = shift_start(SolverStart(step, start.padded_image, 0.01), -0.3, 0.6, num_layers=4).layer_coord
    torch.testing.assert_close(edge, fourier_shift(step, -0.3, 0.6).clamp(0, 3))
    assert float(edge.min()) == 0 and float(edge.max()) == 3
    row = edge[0, 30]
    # moved 0.6 px right: column 40 keeps 0.4 of the step (about 1.2), its neighbours stay on their side
    assert 0.8 < float(row[40]) < 1.6 and float(row[:40].max()) < 0.3 and float(row[41:].min()) > 2.6
    np.testing.assert_allclose(moved_start.padded_image[0, 0].numpy(), moved, atol=1e-4)


def test_warm_chain_keeps_its_detail_on_a_static_scene(default_bank, prior):
    # a static fine-textured scene (tuning photo brick), fresh noise every frame: warm frames started from the
    # previous output lose detail frame by frame; started from this capture's deconvolution (or the blend of
    # both, the default) they do not
    from cadfd_ros.bench.runner import score
    from cadfd_ros.forward.render import render_occlusion_aware

    config = SequenceConfig(frames=300, cut_every=100, height=96, width=128, seed=0)  # the bench's first frame
    scene = next(s for _, _, s in make_sequence(default_bank, ("brick",), config))
    clean = render_occlusion_aware(scene.sharp, scene.depth, default_bank)
    rng = np.random.default_rng(5)
    captures = [np.clip(clean + rng.normal(0, 0.01, clean.shape), 0, 1).astype(np.float32) for _ in range(5)]
    psnr = {}
    for image in ("blend", "deconvolved", "previous"):
        r = _reconstructor(default_bank, prior, steps=8)
        r.sampler.params = replace(r.sampler.params, warm_start_image=image, warm_refresh_every=0)
        results = [r.reconstruct(c) for c in captures]
        assert [x.start for x in results] == ["classical"] + ["warm"] * 4
        psnr[image] = [score(x.depth, x.all_in_focus, replace(scene, capture=c), default_bank)["aif_psnr"]
                       for x, c in zip(results, captures)]
    for image in ("blend", "deconvolved"):
        assert min(psnr[image][1:]) > psnr[image][0] - 0.3  # no loss over the chain
    assert psnr["previous"][-1] < psnr["previous"][0] - 1.0  # the old start: detail lost frame by frame
    assert psnr["deconvolved"][-1] > psnr["previous"][-1] + 1.0


def test_a_warm_frame_of_a_straddling_bank_gets_its_own_side_of_focus(default_bank, prior):
    """The side-of-focus score is a property of the capture: a warm frame computes it from its own capture
    (the previous frame's depth would otherwise hand a twin-side error on), cold and warm alike; a bank on
    one side of focus has none."""
    from test_classical import _twin_scene

    twin_bank, scene, _ = _twin_scene(2)
    for bank, capture, straddles in ((twin_bank, scene.capture, True),
                                     (default_bank, scene.capture, False)):
        r = _reconstructor(bank, prior)
        seen = []
        solve = r.sampler.solve

        def recording_solve(capture, start=None, warm=False, solve=solve, seen=seen):
            seen.append((warm, start))
            return solve(capture, start, warm)

        r.sampler.solve = recording_solve
        r.reconstruct(capture)
        second = r.reconstruct(capture)
        assert second.start == "warm" and [w for w, _ in seen] == [False, True]
        for _, start in seen:
            assert (start.side_evidence is not None) == straddles
        if straddles:  # this frame's capture, so the same score as the cold start's
            assert np.allclose(seen[1][1].side_evidence, seen[0][1].side_evidence, atol=1e-5)


def test_a_warm_frame_refits_its_start_image_to_its_capture(default_bank, prior, frames, monkeypatch):
    """SamplerParams.warm_exact_step: a warm frame's start image goes through the exact data step before it is
    noised (one step cannot refit it), so a warm frame runs that step twice (its one step has no midway step),
    a cold frame of this 2-step schedule twice too (midway and final); off, the warm frame runs it once."""
    from cadfd_ros.solvers import dps

    calls = []
    exact = dps.exact_data_step

    def counted(ctx, x0, layer_coord):
        calls.append(x0.shape)
        return exact(ctx, x0, layer_coord)

    monkeypatch.setattr(dps.data_steps, "exact_data_step", counted)
    images = {}
    for refit in (True, False):
        r = _reconstructor(default_bank, prior)
        r.sampler.params = replace(r.sampler.params, warm_exact_step=refit)
        calls.clear()
        assert r.reconstruct(frames[0].capture).start == "classical" and len(calls) == 2
        calls.clear()
        second = r.reconstruct(frames[1].capture)
        assert second.start == "warm" and len(calls) == (2 if refit else 1)
        images[refit] = second.all_in_focus
    assert np.abs(images[True] - images[False]).mean() > 1e-4


def test_a_warm_frame_weighs_its_exact_steps_by_the_warm_scale_and_shrink(default_bank, prior, frames, monkeypatch):
    """SamplerParams.warm_exact_step_weight_scale and warm_shrink_strength: a warm frame's exact data steps (refit and
    final) pull towards x0 with the scaled weight and shrink their correction with the warm strength; a cold frame's
    keep the bank's weight and final_shrink_strength."""
    from cadfd_ros.solvers import dps

    seen = []
    exact = dps.exact_data_step

    def recording(ctx, x0, layer_coord):
        seen.append((ctx.exact_step_weight, ctx.params.final_shrink_strength))
        return exact(ctx, x0, layer_coord)

    monkeypatch.setattr(dps.data_steps, "exact_data_step", recording)
    r = _reconstructor(default_bank, prior)
    r.sampler.params = replace(r.sampler.params, warm_exact_step_weight_scale=0.25, warm_shrink_strength=2.0)
    p, weight = r.sampler.params, r.sampler.final_proximal_weight
    assert r.reconstruct(frames[0].capture).start == "classical"
    assert seen and all(s == (weight, p.final_shrink_strength) for s in seen)
    seen.clear()
    assert r.reconstruct(frames[1].capture).start == "warm"
    assert len(seen) == 2 and all(s == (0.25 * weight, 2.0) for s in seen)
    with pytest.raises(CadfdError, match="warm_exact_step_weight_scale"):
        replace(p, warm_exact_step_weight_scale=0.0)
