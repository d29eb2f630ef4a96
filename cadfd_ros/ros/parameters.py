"""The node's parameters as ROS sees them, built from the one schema in ``cadfd_ros.params``.

Descriptors, the set-request policy, the output settings and the configured processor are plain
functions of parameter values, so they are tested without a node and cannot drift from the CLI
and solver configs.
"""
from __future__ import annotations

from typing import Any, Mapping

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from cadfd_ros.errors import CadfdError
from cadfd_ros.params import OUTPUT, PARAM_BY_NAME, PARAMS, ParamSpec, scope_values
from cadfd_ros.ros.processing import FrameProcessor, OutputSettings, downscale_psf_bank

CONFIGURE_NOTE = "applied on configure; set it while unconfigured (cleanup first)"


def descriptor(spec: ParamSpec) -> ParameterDescriptor:
    """Description, choices, range and read-only flag, for ``ros2 param describe``."""
    d = ParameterDescriptor(name=spec.name, description=spec.description, read_only=spec.read_only)
    notes = []
    if spec.choices:
        notes.append("one of: " + ", ".join(spec.choices))
    if spec.configure_time:
        notes.append(CONFIGURE_NOTE)
    d.additional_constraints = "; ".join(notes)
    if spec.value_range is not None:
        lo, hi = spec.value_range
        if spec.zero_is_unset:
            lo = 0  # ROS checks the range itself: it must accept 0 = unset; ParamSpec.check does the rest
        if isinstance(spec.default, float):
            d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
        else:
            d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]
    return d


def declarations() -> list[tuple[str, Any, ParameterDescriptor]]:
    """(name, default, descriptor) for every node parameter, in schema order."""
    return [(p.name, p.default, descriptor(p)) for p in PARAMS]


def output_settings(values: Mapping[str, Any]) -> OutputSettings:
    """OutputSettings from the OUTPUT-scope values (defaults where ``values`` lacks one)."""
    return OutputSettings(**scope_values(values, OUTPUT))


def validate_changes(changes: Mapping[str, Any], current: Mapping[str, Any], configured: bool) -> str | None:
    """Why a set request must be refused, or None to accept it.

    ``current`` holds the values before the request; names outside the schema (QoS overrides,
    use_sim_time) are left to rclpy.
    """
    for name, value in changes.items():
        spec = PARAM_BY_NAME.get(name)
        if spec is None:
            continue
        if spec.configure_time and configured:
            return f"{name} is applied on configure; deactivate and cleanup the node before changing it"
        try:
            spec.check(value)
        except CadfdError as exc:
            return str(exc)
    try:
        output_settings({**current, **changes})  # the min/max depth pair is checked as a whole
    except CadfdError as exc:
        return str(exc)
    return None


def check_values(values: Mapping[str, Any]) -> None:
    """Raise a CadfdError for the first invalid value. Configure calls it: values from a YAML
    file or the command line never pass through the set-request callback. Missing values are
    the defaults (``cadfd bag`` has no node parameters)."""
    for spec in PARAMS:
        try:
            spec.check(values.get(spec.name, spec.default))
        except CadfdError as exc:
            raise CadfdError(f"parameter {exc}") from None
    output_settings(values)


def build_processor(values: Mapping[str, Any]) -> FrameProcessor:
    """The frame processor the INPUT and SOLVER values describe (not warmed up); raises a
    CadfdError naming the first invalid value."""
    from cadfd_ros.optics.psf_bank import default_psf_bank_path, load_psf_bank
    from cadfd_ros.pipeline import ReconstructionConfig, Reconstructor

    check_values(values)
    def value(name: str) -> Any:
        return PARAM_BY_NAME[name].to_config(values.get(name, PARAM_BY_NAME[name].default))

    full = load_psf_bank(value("psf_bank") or str(default_psf_bank_path()))
    factor = int(value("input_downscale"))
    bank = downscale_psf_bank(full, factor)
    config = ReconstructionConfig.from_values(values)
    return FrameProcessor(Reconstructor(bank, config), factor, str(values.get("input_transfer", "linear")),
                          max_input_pixels=value("max_input_pixels"), oversize_policy=value("oversize_policy"),
                          full_bank=full)
