"""The one parameter schema: the CLI flags and the solver config are generated from it."""
from __future__ import annotations

import pytest

from cadfd_ros.cli import build_parser
from cadfd_ros.errors import CadfdError
from cadfd_ros.params import OUTPUT, PARAM_BY_NAME, PARAMS, SOLVER, scope_values
from cadfd_ros.pipeline import ReconstructionConfig


def _parse(argv: list[str]):
    return build_parser().parse_args(argv)


@pytest.mark.parametrize("argv, skipped", [
    (["reconstruct", "cap.png", "--out-dir", "o"], set()),
    (["demo"], {"method"}),  # --methods runs several
    (["bag", "in", "out"], set()),
    (["bench"], {"method", "sampler"}),  # --methods names method and sampler
])
def test_every_solver_parameter_is_a_flag_with_the_schema_default(argv, skipped):
    args = _parse(argv)
    for spec in PARAMS:
        if spec.scope == SOLVER and spec.name not in skipped:
            assert getattr(args, spec.name) == spec.default, spec.name


def test_bag_takes_the_output_parameters_too():
    args = _parse(["bag", "in", "out", "--no-publish-aif", "--points-colored", "--depth-encoding", "16UC1"])
    values = scope_values(vars(args), OUTPUT)
    assert values["publish_aif"] is False and values["points_colored"] is True and values["depth_encoding"] == "16UC1"
    assert values["publish_points"] is True  # untouched flags keep the node's defaults
    # The scan and decimation switches come from the same schema.
    assert values["publish_scan"] is True and values["scan_height"] == 1 and values["scan_range_max"] is None
    args = _parse(["bag", "in", "out", "--no-publish-scan", "--scan-height", "5", "--scan-range-max", "3.5",
                   "--scan-frame-id", "cam_link", "--points-decimation", "4"])
    values = scope_values(vars(args), OUTPUT)
    assert (values["publish_scan"], values["scan_height"], values["scan_range_max"], values["scan_frame_id"],
            values["points_decimation"]) == (False, 5, 3.5, "cam_link", 4)
    with pytest.raises(CadfdError, match=r"points_decimation must be in \[1, 8\], got 9"):
        scope_values({"points_decimation": 9}, OUTPUT)


def test_flags_reach_the_config_and_zero_means_unset():
    from cadfd_ros.commands.reconstruct import config_from_args

    args = _parse(["reconstruct", "c.png", "--out-dir", "o", "--method", "dps", "--steps", "7",
                   "--noise-sigma", "0.02", "--time-budget-ms", "0"])
    config = config_from_args(args)
    assert (config.method, config.steps, config.noise_sigma, config.time_budget_ms) == ("dps", 7, 0.02, None)
    assert config.sampler_config().noise_sigma == 0.02 and config.sampler_config().steps == 7
    assert ReconstructionConfig.from_values({}) == ReconstructionConfig()


@pytest.mark.parametrize("name, value, message", [
    ("noise_sigma", 0.7, r"noise_sigma must be in \[0.0001, 0.5\]"),
    ("method", "magic", "method must be one of classical, dps"),
    ("steps", 0, r"steps must be in \[1, 1000\]"),
    ("steps", 2.5, "steps must be a int"),
    ("sampler", "ddim", "sampler must be one of auto, diffpir, dps"),
])
def test_bad_values_name_the_parameter(name, value, message):
    with pytest.raises(CadfdError, match=message):
        PARAM_BY_NAME[name].check(value)
    with pytest.raises(CadfdError, match=message):  # the config refuses the same values
        ReconstructionConfig.from_values({name: value})


def test_cli_rejects_a_bad_choice_before_running(capsys):
    with pytest.raises(SystemExit):
        _parse(["reconstruct", "c.png", "--out-dir", "o", "--device", "tpu"])
    assert "invalid choice: 'tpu'" in capsys.readouterr().err


def test_demo_refuses_an_unknown_method(capsys, tmp_path):
    from cadfd_ros.cli import main

    assert main(["demo", "--out-dir", str(tmp_path), "--methods", "dps,magic"]) == 2
    assert "--methods must be a comma list of classical, dps, got 'dps,magic'" in capsys.readouterr().err


def test_warm_start_description_names_the_refresh_period():
    """The parameter's documentation (ROS descriptor, CLI help) states the periodic cold frame the sampler runs."""
    from cadfd_ros.solvers.dps import SamplerParams

    period = SamplerParams().warm_refresh_every
    assert f"every {period}th frame" in PARAM_BY_NAME["temporal_warm_start"].description


def test_dps_flags_set_for_classical_are_reported_not_dropped(capsys):
    from cadfd_ros.commands.reconstruct import warn_ignored_flags
    from cadfd_ros.params import ignored_by_method

    # the flag marks exactly the parameters documented as read by method dps
    assert {p.name for p in PARAMS if p.dps_only} == {p.name for p in PARAMS if "method dps" in p.description}
    assert ignored_by_method({"method": "classical", "prior": "/ckpt", "steps": 4}) == ["prior"]  # 4: the default
    assert ignored_by_method({"steps": 8, "temporal_warm_start": True}) == ["steps", "temporal_warm_start"]
    assert ignored_by_method({"method": "dps", "prior": "/ckpt", "steps": 8}) == []
    warn_ignored_flags({"method": "classical", "prior": "/ckpt", "sampler": "dps"})
    assert capsys.readouterr().err == ("cadfd: warning: --prior, --sampler apply to --method dps only; ignored with "
                                       "--method classical\n")
    warn_ignored_flags({"method": "classical"})
    assert capsys.readouterr().err == ""
