"""DFD-DPS sampler: exact step budget, reproducibility, data consistency, depth accuracy."""
from __future__ import annotations

import numpy as np
import pytest

from cadfd_ros.bench.metrics import depth_metrics, evaluation_mask, textured_mask
from cadfd_ros.bench.scenes import make_scene
from cadfd_ros.pipeline import ReconstructionConfig, Reconstructor

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def prior():
    from cadfd_ros.prior import load_prior

    return load_prior("default", device="cpu")


@pytest.fixture(scope="module")
def scene(default_bank):
    # a test photo never used to tune either solver or to train the prior
    return make_scene("coins", default_bank, 96, 128, noise_sigma=0.01, seed=5)


def _sampler(bank, prior, **config):
    from cadfd_ros.solvers.dps import DiffusionPosteriorSampler

    return DiffusionPosteriorSampler(bank, ReconstructionConfig(method="dps", device="cpu", **config), "cpu",
                                     prior=prior)


@pytest.fixture(scope="module")
def classical(default_bank, scene):
    return Reconstructor(default_bank, ReconstructionConfig(device="cpu")).reconstruct(scene.capture)


@pytest.mark.parametrize("sampler, steps", [("diffpir", 1), ("diffpir", 7), ("dps", 3)])
def test_step_count_is_exact(default_bank, prior, scene, classical, sampler, steps):
    solver = _sampler(default_bank, prior, sampler=sampler, steps=steps)
    result = solver.solve(scene.capture, initial=classical)
    assert solver.last_trace.network_evaluations == steps
    assert result.steps == steps and result.sampler == sampler
    assert len(solver.last_trace.timesteps) == steps
    assert solver.last_trace.timesteps == sorted(solver.last_trace.timesteps, reverse=True)


def test_more_steps_than_timesteps_below_start_still_exact(default_bank, prior, scene, classical):
    from cadfd_ros.solvers.dps import respaced_timesteps

    assert respaced_timesteps(5, 3) == [5, 2, 0]
    solver = _sampler(default_bank, prior, steps=12)
    solver.params = type(solver.params)(start_sigma=0.002)  # start timestep far below 12
    assert solver.prior.timestep_for_sigma(0.002) < 11
    solver.solve(scene.capture, initial=classical)
    assert solver.last_trace.network_evaluations == 12


def test_same_seed_same_output(default_bank, prior, scene, classical):
    a = _sampler(default_bank, prior, steps=4, seed=11).solve(scene.capture, initial=classical)
    b = _sampler(default_bank, prior, steps=4, seed=11).solve(scene.capture, initial=classical)
    c = _sampler(default_bank, prior, steps=4, seed=12).solve(scene.capture, initial=classical)
    np.testing.assert_array_equal(a.depth, b.depth)
    np.testing.assert_array_equal(a.all_in_focus, b.all_in_focus)
    assert not np.array_equal(a.all_in_focus, c.all_in_focus)


def test_data_term_decreases_from_a_noise_start(default_bank, prior, scene, classical):
    from cadfd_ros.solvers.dps import SamplerParams

    solver = _sampler(default_bank, prior, steps=8)
    solver.params = SamplerParams(start="noise")
    solver.solve(scene.capture, initial=classical)
    data = solver.last_trace.data_term
    assert data[-1] < 0.5 * data[0]
    assert data[-1] < 5.0  # residual within a few noise sigmas of the capture


@pytest.mark.xfail(strict=True, reason="issue 4 open: with the current briefly trained prior the sampler "
                   "beats classical on some scenes (tuning scenes +0.02/+0.19 delta1) but not on this one "
                   "(measured 0.18 vs 0.30)")
def test_depth_beats_classical_in_textured_regions(default_bank, prior, scene, classical):
    result = _sampler(default_bank, prior, steps=8).solve(scene.capture, initial=classical)
    mask = evaluation_mask(scene.depth.shape, default_bank.half_size) & textured_mask(scene.sharp)
    solved = depth_metrics(result.depth, scene.depth, mask)
    baseline = depth_metrics(classical.depth, scene.depth, mask)
    assert solved["delta1"] >= baseline["delta1"] + 0.02
    assert solved["abs_rel"] < baseline["abs_rel"]
    assert 0.0 <= result.confidence.min() and result.confidence.max() <= 1.0


def test_unknown_sampler_is_a_clear_error(default_bank, prior):
    from cadfd_ros.errors import CadfdError

    with pytest.raises(CadfdError, match="sampler must be one of"):
        _sampler(default_bank, prior, sampler="ddim")
