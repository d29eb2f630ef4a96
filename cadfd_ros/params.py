"""One parameter schema for the node, the CLI and the solver configs (no ROS imports).

Every user-facing option is declared once here. ``cadfd_ros.ros.parameters`` builds the node's
declarations and descriptors from it, ``add_cli_arguments`` the flags of ``cadfd reconstruct``,
``bag``, ``bench`` and ``demo``, and ``ReconstructionConfig.from_values`` the solver config. ROS
parameters cannot be None, so "not set" is 0 (``zero_is_unset``) everywhere, CLI included.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from cadfd_ros.errors import CadfdError

METHODS = ("classical", "dps")
SAMPLERS = ("auto", "diffpir", "dps")  # auto: the benchmarked default (diffpir)
DEVICES = ("auto", "cpu", "cuda")
DEPTH_ENCODINGS = ("32FC1", "16UC1")
OVERSIZE_POLICIES = ("bin", "refuse")

SOLVER = "solver"  # read by ReconstructionConfig; applied on configure
INPUT = "input"  # read by the frame processor (and the PSF bank it loads); applied on configure
NODE = "node"  # node only
OUTPUT = "output"  # OutputSettings; may change between frames


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    scope: str
    choices: tuple[str, ...] = ()
    value_range: tuple[float, float] | None = None  # inclusive
    zero_is_unset: bool = False  # 0 means "not set" (None in the solver config)
    read_only: bool = False
    cli: bool = True  # offered as a flag by the commands that take this scope
    dps_only: bool = False  # read by method dps alone: set with method classical, it is reported as ignored

    @property
    def configure_time(self) -> bool:
        """Applied on configure: changing it on a configured node needs cleanup + configure."""
        return self.scope in (SOLVER, INPUT, NODE) and not self.read_only

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, value: Any) -> Any:
        """``value`` if valid for this parameter, else a CadfdError naming the parameter."""
        kind = type(self.default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise CadfdError(f"{self.name} must be a {kind.__name__}, got {value!r}")
        if self.choices and value not in self.choices:
            raise CadfdError(f"{self.name} must be one of {', '.join(self.choices)}, got {value!r}")
        if self.value_range is not None:
            lo, hi = self.value_range
            if not (lo <= value <= hi) and not (self.zero_is_unset and value == 0):
                raise CadfdError(f"{self.name} must be in {self._range_text()}, got {value!r}")
        return value

    def accepted(self) -> str:
        """What this parameter accepts, in words (for a refused start-up value)."""
        kind = {bool: "a bool", int: "an integer", float: "a double", str: "a string"}[type(self.default)]
        if self.choices:
            return f"{kind}, one of {', '.join(self.choices)}"
        if self.value_range is not None:
            return f"{kind} in {self._range_text()}"
        return kind

    def _range_text(self) -> str:
        lo, hi = self.value_range
        return f"[{lo:g}, {hi:g}]" + (" or 0 (unset)" if self.zero_is_unset else "")

    def to_config(self, value: Any) -> Any:
        """Checked value as a config field: 0 -> None where 0 means unset."""
        value = self.check(value)
        return None if self.zero_is_unset and value == 0 else value


# Why configure-time rather than read_only: read_only parameters can never change after start-up,
# so a bad psf_bank could only be fixed by restarting the process; configure-time ones are
# refused while configured and accepted while unconfigured, which is what a lifecycle needs.
PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("psf_bank", "", "PSF bank .npz path; empty = the bundled config/default_psf_bank.npz", INPUT),
    ParamSpec("prior", "default", "diffusion prior: 'default' (bundled) or a checkpoint folder (method dps only)",
              SOLVER, dps_only=True),
    ParamSpec("method", "classical", "reconstruction method", SOLVER, choices=METHODS),
    ParamSpec("sampler", "auto", "diffusion sampler for method dps ('auto' picks the default, diffpir)", SOLVER,
              choices=SAMPLERS, dps_only=True),
    ParamSpec("steps", 4, "prior network evaluations per frame (method dps)", SOLVER, value_range=(1, 1000),
              dps_only=True),
    ParamSpec("time_budget_ms", 0.0, "per-frame solver time budget in ms, picks the steps (method dps); 0 = no budget",
              SOLVER, value_range=(1.0, 600000.0), zero_is_unset=True, dps_only=True),
    ParamSpec("seed", 0, "random seed of the sampler (reproducible output)", SOLVER, value_range=(0, 2**31 - 1)),
    ParamSpec("device", "auto", "compute device: auto picks cuda when torch sees one", SOLVER, choices=DEVICES),
    ParamSpec("noise_sigma", 0.0, "capture noise std in [0,1] intensity; 0 = estimate per frame", SOLVER,
              value_range=(1e-4, 0.5), zero_is_unset=True),
    ParamSpec("noise_model", "poisson_gaussian", "noise model estimated when noise_sigma is 0: gaussian (one sigma per "
              "frame) or poisson_gaussian (sigma^2 = a*x + b fitted per frame, a per-pixel sigma in the classical "
              "evidence)", SOLVER, choices=("gaussian", "poisson_gaussian")),
    ParamSpec("black_level", 0.0, "sensor black level in [0,1] linear units (after input_transfer): subtracted, "
              "and the range rescaled so the saturation level maps to 1, before solving", SOLVER,
              value_range=(0.0, 0.9)),
    ParamSpec("saturation_level", 0.0, "capture values at or above this (in [0,1] units, before black-level "
              "removal) are saturated: left out of the depth evidence, depth invalid; 0 = the 8/16-bit maximum",
              SOLVER, value_range=(1e-3, 1.0), zero_is_unset=True),
    ParamSpec("flat_field", "", "flat-field (vignetting) image, PNG/TIFF/.npy at the capture's size, normalised to "
              "max 1; the capture is divided by it (after black-level removal) before solving; empty = none",
              SOLVER),
    ParamSpec("min_confidence", 0.0, "depth with lower solver confidence becomes invalid", SOLVER,
              value_range=(0.0, 1.0)),
    ParamSpec("max_pixels", 2_000_000, "frames with more pixels are solved in overlapping tiles (bounded memory)",
              SOLVER, value_range=(4096, 2**31 - 1)),
    ParamSpec("tile_size", 512, "tile side in pixels when tiling", SOLVER, value_range=(64, 65536)),
    ParamSpec("temporal_warm_start", False, "method dps on a video: start each frame from the previous frame's "
              "depth and image, noised to a lower level and refined in fewer network evaluations, instead of from "
              "the classical estimate; a scene cut (the previous estimate no longer explains the capture), a "
              "change of frame size and every 11th frame (SamplerParams.warm_refresh_every) start cold", SOLVER,
              dps_only=True),
    ParamSpec("input_transfer", "linear", "transfer curve of the input frames, inverted before solving: linear "
              "(raw sensors) or srgb (gamma-encoded 8-bit frames, most UVC/GigE drivers); the AIF output is linear "
              "either way", INPUT, choices=("linear", "srgb")),
    ParamSpec("input_downscale", 1, "bin the input by this factor before solving (PSFs follow)", INPUT,
              value_range=(1, 8)),
    ParamSpec("max_input_pixels", 1_000_000, "largest frame solved as it is, in pixels after input_downscale "
              "(about 10 s of classical solve on a 2-core CPU); larger frames are binned to fit or refused "
              "(oversize_policy); 0 = no limit", INPUT, value_range=(4096, 2**31 - 1), zero_is_unset=True, cli=False),
    ParamSpec("oversize_policy", "bin", "a frame over max_input_pixels: 'bin' picks a larger input_downscale for it "
              "(camera_info scaled, a WARN once per size), 'refuse' skips it as a bad frame", INPUT,
              choices=OVERSIZE_POLICIES, cli=False),
    ParamSpec("worker_niceness", 10, "nice increment of the solver thread (Linux), so callbacks and services keep "
              "the CPU first; 0 = same priority", NODE, value_range=(0, 19)),
    ParamSpec("depth_encoding", "32FC1", "depth/image encoding: 32FC1 metres (NaN invalid) or 16UC1 mm (0 invalid)",
              OUTPUT, choices=DEPTH_ENCODINGS),
    ParamSpec("min_depth", 0.0, "depth below this (m) is published as invalid", OUTPUT, value_range=(0.0, 1000.0)),
    ParamSpec("max_depth", 0.0, "depth above this (m) is published as invalid; 0 = no limit", OUTPUT,
              value_range=(0.0, 1000.0)),
    ParamSpec("publish_aif", True, "publish aif/image and aif/camera_info", OUTPUT),
    ParamSpec("aif_transfer", "srgb", "transfer curve of the 8-bit aif/image and of the cloud's rgb field: srgb "
              "(display-encoded, as RViz, image_view and feature extractors read mono8/rgb8) or linear (the solver's "
              "linear intensities, for photometric use)", OUTPUT, choices=("srgb", "linear")),
    ParamSpec("publish_points", True, "publish the organised point cloud on points", OUTPUT),
    ParamSpec("points_colored", False, "add an rgb field (from the all-in-focus image) to points", OUTPUT),
    ParamSpec("points_decimation", 1, "points keeps every n-th pixel of every n-th row: a ceil(H/n) x ceil(W/n) "
              "organised cloud, each point projected with the full-resolution intrinsics", OUTPUT,
              value_range=(1, 8)),
    ParamSpec("publish_scan", True, "publish scan (sensor_msgs/LaserScan computed from the published depth as "
              "depthimage_to_laserscan does)", OUTPUT),
    ParamSpec("scan_height", 1, "depth rows per scan range, centred on cy (the shortest range wins); refused for "
              "a frame it does not fit", OUTPUT, value_range=(1, 4096)),
    ParamSpec("scan_range_min", 0.0, "scan range_min in m; 0 = the PSF bank's nearest depth", OUTPUT,
              value_range=(0.001, 1000.0), zero_is_unset=True),
    ParamSpec("scan_range_max", 0.0, "scan range_max in m; 0 = the longest ray of the PSF bank's farthest depth "
              "over the frame's columns (depth / cos angle)", OUTPUT, value_range=(0.001, 1000.0), zero_is_unset=True),
    ParamSpec("scan_time", 0.0, "scan_time in s written into scan; 0 = the measured period between frames", OUTPUT,
              value_range=(1e-6, 3600.0), zero_is_unset=True),
    ParamSpec("scan_frame_id", "", "frame_id of scan; empty = the depth frame. Must be an x-forward (body, not "
              "optical) frame at the camera, like depthimage_to_laserscan's output_frame", OUTPUT),
    ParamSpec("publish_confidence", True, "publish confidence/image (32FC1 in [0,1])", OUTPUT),
    ParamSpec("output_frame_id", "", "frame_id of every output; empty = the input image's frame_id (an input "
              "without one is reported)", OUTPUT),
    ParamSpec("max_stamp_skew", 5.0, "seconds an input stamp may differ from the node clock before it is reported "
              "and left out of the latency statistics; 0 = no check", OUTPUT, value_range=(0.001, 1e6),
              zero_is_unset=True, cli=False),
    ParamSpec("autostart", False, "configure and activate at start-up (without a lifecycle manager)", NODE,
              read_only=True, cli=False),
)
PARAM_BY_NAME: dict[str, ParamSpec] = {p.name: p for p in PARAMS}


def defaults(scopes: Iterable[str]) -> dict[str, Any]:
    scopes = set(scopes)
    return {p.name: p.default for p in PARAMS if p.scope in scopes}


def ignored_by_method(values: Mapping[str, Any]) -> list[str]:
    """The method-dps parameters that ``values`` sets away from their defaults while its method is classical:
    the solver never reads them, so a caller reports them instead of dropping them silently."""
    if values.get("method", PARAM_BY_NAME["method"].default) != "classical":
        return []
    return [p.name for p in PARAMS if p.dps_only and p.name in values and values[p.name] != p.default]


def scope_values(values: Mapping[str, Any], scope: str) -> dict[str, Any]:
    """The checked values of one scope as config fields (defaults where ``values`` lacks one)."""
    return {p.name: p.to_config(values.get(p.name, p.default)) for p in PARAMS if p.scope == scope}


def add_cli_arguments(parser: argparse.ArgumentParser, scopes: Iterable[str], skip: Iterable[str] = ()) -> None:
    """Flags for every parameter of ``scopes`` (``--noise-sigma`` for noise_sigma), same defaults
    as the node; booleans that default to true become ``--no-<name>``."""
    skip = set(skip)
    for p in PARAMS:
        if p.scope not in set(scopes) or not p.cli or p.name in skip:
            continue
        help_text = p.description.replace("%", "%%")
        if isinstance(p.default, bool):
            if p.default:
                parser.add_argument("--no-" + p.name.replace("_", "-"), dest=p.name, action="store_false",
                                    help=f"do not {help_text}")
            else:
                parser.add_argument(p.flag, dest=p.name, action="store_true", help=help_text)
            continue
        parser.add_argument(p.flag, dest=p.name, type=type(p.default), default=p.default,
                            choices=p.choices or None, help=f"{help_text} (default: {p.default!r})")


def values_from_args(args: argparse.Namespace, scopes: Iterable[str]) -> dict[str, Any]:
    """The parameters of ``scopes`` that ``args`` carries (flags added by ``add_cli_arguments``)."""
    return {p.name: getattr(args, p.name) for p in PARAMS if p.scope in set(scopes) and hasattr(args, p.name)}
