"""``cadfd_node``: a lifecycle node that turns a coded-aperture camera into a depth sensor.

Data flows one way: ``image_raw`` (+ ``camera_info``) -> latest-frame slot -> worker thread
(conversion -> solver -> messages, see ``cadfd_ros.ros.processing``) -> lifecycle publishers.
Subscription callbacks only store the newest frame, so a slow solver never blocks the executor
and a fast camera never queues up memory or latency: older unprocessed frames are dropped and
counted. Health goes to ``/diagnostics`` once a second, whatever the lifecycle state.

Lifecycle: configure = validate parameters, load the PSF bank (and prior for dps), warm up;
activate = subscribe and start the worker; deactivate = unsubscribe and stop it; cleanup and
shutdown release solver memory (GPU included). A failed configure logs one line saying why and
leaves the node unconfigured, ready for a corrected configure.
"""
from __future__ import annotations

import collections
import copy
import functools
import gc
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleNodeMixin, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from cadfd_ros.errors import CadfdError, InputImageError
from cadfd_ros.pipeline import METHODS
from cadfd_ros.ros.processing import DEPTH_ENCODINGS, FrameOutputs, FrameProcessor, OutputSettings

NODE_NAME = "cadfd_node"
DEVICES = ("auto", "cpu", "cuda")
WARN_WINDOW_S = 5.0  # a bad frame / failure keeps diagnostics at WARN / ERROR this long
NO_INPUT_WARN_S = 3.0  # active with no frame for this long: diagnostics WARN
INFO_HISTORY = 30  # camera_info messages kept for stamp matching (1 s at 30 Hz)
INFO_WAIT_S = 0.05  # how long a frame waits for its camera_info when one is expected
# The executor threads share the GIL with the worker. At Python's default 5 ms switch interval a
# busy worker under a 30 Hz VGA stream held lifecycle calls for up to 3.3 s and the executor took
# under half the frames (2 cores, measured); at 1 ms both stayed under 0.2 s and above 92%.
WORKER_SWITCH_INTERVAL_S = 0.001


@dataclass(frozen=True)
class _Param:
    name: str
    default: Any
    description: str
    configure_time: bool = False  # applied on configure; changing it needs cleanup + configure
    choices: tuple[str, ...] = ()
    int_range: tuple[int, int] | None = None
    float_range: tuple[float, float] | None = None
    read_only: bool = False

    def descriptor(self) -> ParameterDescriptor:
        d = ParameterDescriptor(name=self.name, description=self.description, read_only=self.read_only)
        notes = []
        if self.choices:
            notes.append("one of: " + ", ".join(self.choices))
        if self.configure_time:
            notes.append("applied on configure; set it while unconfigured (cleanup first)")
        d.additional_constraints = "; ".join(notes)
        if self.int_range:
            d.integer_range = [IntegerRange(from_value=self.int_range[0], to_value=self.int_range[1], step=1)]
        if self.float_range:
            d.floating_point_range = [
                FloatingPointRange(from_value=self.float_range[0], to_value=self.float_range[1], step=0.0)
            ]
        return d


# Why configure-time rather than read_only: read_only parameters can never change after start-up,
# so a bad psf_bank could only be fixed by restarting the process; configure-time ones are
# refused while configured and accepted while unconfigured, which is what a lifecycle needs.
PARAMS: tuple[_Param, ...] = (
    _Param("psf_bank", "", "PSF bank .npz path; empty = the bundled config/default_psf_bank.npz", True),
    _Param("prior", "default", "diffusion prior: 'default' (bundled) or a checkpoint folder (method dps only)", True),
    _Param("method", "classical", "reconstruction method", True, choices=METHODS),
    _Param("sampler", "auto", "diffusion sampler for method dps ('auto' picks the default)", True),
    _Param("steps", 20, "prior network evaluations per frame (method dps)", True, int_range=(1, 1000)),
    _Param("time_budget_ms", 0.0, "per-frame solver time budget in ms; 0 = no budget", True, float_range=(0.0, 600000.0)),
    _Param("seed", 0, "random seed of the sampler (reproducible output)", True, int_range=(0, 2**31 - 1)),
    _Param("device", "auto", "compute device: auto picks cuda when torch sees one", True, choices=DEVICES),
    _Param("noise_sigma", 0.0, "capture noise std in [0,1] intensity; 0 = estimate per frame", True, float_range=(0.0, 0.5)),
    _Param("min_confidence", 0.0, "depth with lower solver confidence becomes invalid", True, float_range=(0.0, 1.0)),
    _Param("input_downscale", 1, "bin the input by this factor before solving (PSFs follow)", True, int_range=(1, 8)),
    _Param("worker_niceness", 10, "nice increment of the solver thread (Linux), so callbacks and services keep the "
           "CPU first; 0 = same priority", True, int_range=(0, 19)),
    _Param("depth_encoding", "32FC1", "depth/image encoding: 32FC1 metres (NaN invalid) or 16UC1 mm (0 invalid)",
           choices=DEPTH_ENCODINGS),
    _Param("min_depth", 0.0, "depth below this (m) is published as invalid", float_range=(0.0, 1000.0)),
    _Param("max_depth", 0.0, "depth above this (m) is published as invalid; 0 = no limit", float_range=(0.0, 1000.0)),
    _Param("publish_aif", True, "publish aif/image and aif/camera_info"),
    _Param("publish_points", True, "publish the organised point cloud on points"),
    _Param("points_colored", False, "add an rgb field (from the all-in-focus image) to points"),
    _Param("publish_confidence", True, "publish confidence/image (32FC1 in [0,1])"),
    _Param("output_frame_id", "", "frame_id of every output; empty = the input image's frame_id"),
    _Param("autostart", False, "configure and activate at start-up (without a lifecycle manager)", read_only=True),
)
PARAM_BY_NAME = {p.name: p for p in PARAMS}


@dataclass
class _Stats:
    """Counters the worker and callbacks update and diagnostics read (under ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    frames_in: int = 0
    processed: int = 0
    dropped: int = 0  # replaced in the latest-frame slot before the worker got to them
    lost: int = 0  # lost in the middleware before reaching the node (where the RMW reports it)
    bad: int = 0
    failed: int = 0
    latency_s: collections.deque = field(default_factory=lambda: collections.deque(maxlen=100))
    processing_s: collections.deque = field(default_factory=lambda: collections.deque(maxlen=100))
    last_input_mono: float = 0.0
    last_bad_mono: float = -1e9
    last_fail_mono: float = -1e9
    last_warning: str = ""
    last_error: str = ""
    last_note: str = ""  # the solver's latest per-frame warning (an unmet time budget)
    last_note_mono: float = -1e9
    last_steps: int = 0  # network evaluations of the latest frame (a time budget picks them)
    intrinsics: str = "unknown"


class _LatestFrame:
    """One-slot mailbox: ``put`` replaces an unprocessed frame (that frame is dropped)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: tuple | None = None
        self._closed = False

    def put(self, item: tuple) -> bool:
        """Store ``item``; True when it replaced a frame the worker never saw."""
        with self._cond:
            replaced = self._item is not None
            self._item = item
            self._cond.notify()
            return replaced

    def take(self) -> tuple | None:
        """Block until a frame arrives (returned) or the slot is closed (None)."""
        with self._cond:
            while self._item is None and not self._closed:
                self._cond.wait()
            item, self._item = self._item, None
            return None if self._closed else item

    def open(self) -> None:
        with self._cond:
            self._closed, self._item = False, None

    def close(self) -> None:
        with self._cond:
            self._closed, self._item = True, None
            self._cond.notify_all()


def _transition(name: str, on_exception: TransitionCallbackReturn) -> Callable:
    """Catch and log exceptions in a transition callback (rclpy turns them into a silent ERROR)."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(self: "CadfdNode", state: LifecycleState) -> TransitionCallbackReturn:
            try:
                return fn(self, state)
            except Exception as exc:  # noqa: BLE001 - every failure must be visible
                message = f"{name} failed: {type(exc).__name__}: {exc}"
                self.get_logger().error(message)
                with self._stats.lock:
                    self._stats.last_error = message
                    self._stats.last_fail_mono = time.monotonic()
                return on_exception

        return wrapper

    return decorate


def _sensor_qos() -> QoSProfile:
    """A fresh SensorDataQoS: rclpy applies QoS-override parameters by mutating the profile it
    is given, so sharing rclpy's module-level profile would leak one topic's override to all."""
    return copy.copy(qos_profile_sensor_data)


def _is_out_of_memory(exc: BaseException) -> bool:
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:
        pass
    return "out of memory" in str(exc).lower()


class CadfdNode(LifecycleNode):
    """Coded-aperture depth: ``image_raw`` in; depth, camera_info, points, AIF, confidence out."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        # LifecycleNode puts the lifecycle services in the default callback group, next to the
        # parameter services; a long configure (bank load, warm-up) would then block parameter
        # get/set. Initialise the two bases ourselves to give lifecycle its own group.
        Node.__init__(self, node_name, **kwargs)
        LifecycleNodeMixin.__init__(self, callback_group=MutuallyExclusiveCallbackGroup())
        self._stats = _Stats()
        for p in PARAMS:
            self.declare_parameter(p.name, p.default, p.descriptor())
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)

        self._configured = False
        self._processor: FrameProcessor | None = None
        try:
            self._settings = self._read_output_settings()
        except CadfdError as exc:  # e.g. min_depth >= max_depth from a YAML file: configure reports it
            self.get_logger().error(f"output parameters: {exc}")
            self._settings = OutputSettings()
        self._slot = _LatestFrame()
        self._worker: threading.Thread | None = None
        # Recent camera_info by stamp: the worker pairs each image with the one of the same stamp
        # (drivers publish both, in either order), else the newest; no message_filters needed.
        self._infos: collections.OrderedDict[tuple[int, int], CameraInfo] = collections.OrderedDict()
        self._infos_cond = threading.Condition()
        self._last_info_mono = -1e9
        self._activated_mono = 0.0
        self._warned_no_info = False
        self._subs: list = []
        self._pubs: dict[str, Any] = {}
        self._input_group = MutuallyExclusiveCallbackGroup()
        self._last_diag = (time.monotonic(), 0, 0)  # (time, frames_in, processed) at last report

        # Diagnostics are not a lifecycle publisher: an unconfigured or failed node must still
        # say why it produces nothing.
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer = self.create_timer(1.0, self._publish_diagnostics, MutuallyExclusiveCallbackGroup())
        self.get_logger().info("cadfd_node up (unconfigured); configure then activate via the lifecycle services")

    # ------------------------------------------------------------------ parameters
    def _read_output_settings(self, overrides: dict[str, Any] | None = None) -> OutputSettings:
        def value(name: str) -> Any:
            if overrides and name in overrides:
                return overrides[name]
            return self.get_parameter(name).value

        return OutputSettings(
            depth_encoding=value("depth_encoding"),
            min_depth=float(value("min_depth")),
            max_depth=float(value("max_depth")),
            publish_aif=bool(value("publish_aif")),
            publish_points=bool(value("publish_points")),
            points_colored=bool(value("points_colored")),
            publish_confidence=bool(value("publish_confidence")),
            output_frame_id=str(value("output_frame_id")),
        )

    def _validate_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """Reject bad values with a reason; apply output settings atomically when all pass."""
        changes = {p.name: p.value for p in params}
        for name, value in changes.items():
            spec = PARAM_BY_NAME.get(name)
            if spec is None:
                continue  # QoS overrides, use_sim_time: rclpy validates those
            if spec.configure_time and self._configured:
                return SetParametersResult(
                    successful=False,
                    reason=f"{name} is applied on configure; deactivate and cleanup the node before changing it",
                )
            if spec.choices and value not in spec.choices:
                return SetParametersResult(
                    successful=False, reason=f"{name} must be one of {', '.join(spec.choices)}, got {value!r}"
                )
        try:
            self._read_output_settings(changes)  # the min/max depth pair is checked as a whole
        except CadfdError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def _apply_parameters(self, params: list[Parameter]) -> None:
        # One reference swap: the worker sees the old or the new settings, never a mix.
        self._settings = self._read_output_settings()

    # ------------------------------------------------------------------ lifecycle
    @_transition("configure", TransitionCallbackReturn.FAILURE)
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._processor = processor = self._build_processor()
            self._create_publishers()
        except Exception as exc:  # noqa: BLE001 - any configure failure leaves a clean unconfigured node
            # One line saying why; the node stays unconfigured for a corrected configure.
            known = isinstance(exc, (CadfdError, ImportError, OSError, ValueError))
            message = f"configure failed: {exc}" if known else f"configure failed: {type(exc).__name__}: {exc}"
            self.get_logger().error(message)
            with self._stats.lock:
                self._stats.last_error = message
                self._stats.last_fail_mono = time.monotonic()
            self._destroy_publishers()
            self._release_solver()
            return TransitionCallbackReturn.FAILURE
        self._warned_no_info = False
        self._configured = True
        with self._stats.lock:
            self._stats.last_error = ""
        bank = processor.bank
        self.get_logger().info(
            f"configured: method={processor.reconstructor.config.method} device={processor.reconstructor.device} "
            f"bank={bank.source} ({bank.num_layers} layers {bank.depths[0]:.2f}-{bank.depths[-1]:.2f} m, "
            f"{bank.kernel_size}px PSFs) downscale={processor.input_downscale}"
        )
        return super().on_configure(state)

    @_transition("activate", TransitionCallbackReturn.ERROR)
    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # enables the lifecycle publishers
        self._slot.open()
        self._activated_mono = time.monotonic()
        sys.setswitchinterval(min(sys.getswitchinterval(), WORKER_SWITCH_INTERVAL_S))
        self._worker = threading.Thread(target=self._work, args=(int(self.get_parameter("worker_niceness").value),),
                                        name="cadfd_worker", daemon=True)
        self._worker.start()
        qos_options = QoSOverridingOptions.with_default_policies()
        # SensorDataQoS (REP 2003) by default; override via qos_overrides.<topic>.subscription.*
        self._subs = [
            self.create_subscription(
                Image, "image_raw", self._on_image, _sensor_qos(),
                callback_group=self._input_group, qos_overriding_options=qos_options,
                event_callbacks=SubscriptionEventCallbacks(message_lost=self._on_message_lost),
            ),
            self.create_subscription(
                CameraInfo, "camera_info", self._on_camera_info, _sensor_qos(),
                callback_group=self._input_group, qos_overriding_options=qos_options,
            ),
        ]
        with self._stats.lock:
            self._stats.last_input_mono = time.monotonic()
        self.get_logger().info(
            f"active: listening on {self.resolve_topic_name('image_raw')} and {self.resolve_topic_name('camera_info')}"
        )
        return result

    @_transition("deactivate", TransitionCallbackReturn.ERROR)
    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_input()
        return super().on_deactivate(state)

    @_transition("cleanup", TransitionCallbackReturn.ERROR)
    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_input()
        self._destroy_publishers()
        self._release_solver()
        self._configured = False
        return super().on_cleanup(state)

    @_transition("shutdown", TransitionCallbackReturn.ERROR)
    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_input()
        self._destroy_publishers()
        self._release_solver()
        self._configured = False
        return super().on_shutdown(state)

    @_transition("error", TransitionCallbackReturn.FAILURE)
    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        # Back to unconfigured with everything released, rather than finalized.
        self.get_logger().error(f"error processing from state {state.label}: releasing and returning to unconfigured")
        self._stop_input()
        self._destroy_publishers()
        self._release_solver()
        self._configured = False
        return TransitionCallbackReturn.SUCCESS

    def _build_processor(self) -> FrameProcessor:
        from cadfd_ros.optics.psf_bank import default_psf_bank_path, load_psf_bank
        from cadfd_ros.pipeline import ReconstructionConfig, Reconstructor
        from cadfd_ros.ros.processing import downscale_psf_bank

        get = lambda name: self.get_parameter(name).value  # noqa: E731
        for p in PARAMS:  # values from a YAML file bypass the set-parameters callback
            if p.choices and get(p.name) not in p.choices:
                raise CadfdError(f"parameter {p.name} must be one of {', '.join(p.choices)}, got {get(p.name)!r}")
        self._read_output_settings()  # raises on an inconsistent min/max depth pair
        bank_path = get("psf_bank") or str(default_psf_bank_path())
        bank = load_psf_bank(bank_path)
        factor = int(get("input_downscale"))
        bank = downscale_psf_bank(bank, factor)
        config = ReconstructionConfig(
            method=get("method"),
            sampler=get("sampler"),
            steps=int(get("steps")),
            time_budget_ms=float(get("time_budget_ms")) or None,
            seed=int(get("seed")),
            device=get("device"),
            prior=get("prior"),
            noise_sigma=float(get("noise_sigma")) or None,
            min_confidence=float(get("min_confidence")),
        )
        processor = FrameProcessor(Reconstructor(bank, config), factor)  # dps: loads the prior (PriorError)
        start = time.perf_counter()
        processor.warmup()
        self.get_logger().info(f"warm-up took {1e3 * (time.perf_counter() - start):.0f} ms")
        return processor

    def _create_publishers(self) -> None:
        qos_options = QoSOverridingOptions.with_default_policies()

        def pub(msg_type: type, topic: str, qos: QoSProfile | None = None) -> Any:
            return self.create_lifecycle_publisher(
                msg_type, topic, qos or _sensor_qos(), qos_overriding_options=qos_options
            )

        self._pubs = {
            "depth": pub(Image, "depth/image"),
            "depth_info": pub(CameraInfo, "depth/camera_info"),
            "points": pub(PointCloud2, "points"),
            "aif": pub(Image, "aif/image"),
            "aif_info": pub(CameraInfo, "aif/camera_info"),
            "confidence": pub(Image, "confidence/image"),
        }
        if self._processor is not None and self._processor.info_type is not None:
            self._pubs["info"] = pub(self._processor.info_type, "~/info", QoSProfile(depth=10))
        else:
            self.get_logger().warning("cadfd_ros_interfaces not built (make msgs): ~/info is not published")

    def _destroy_publishers(self) -> None:
        for publisher in self._pubs.values():
            self.destroy_lifecycle_publisher(publisher)
        self._pubs = {}

    def _stop_input(self) -> None:
        """Unsubscribe, then stop the worker (waits for the frame in flight, at most one solve)."""
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        self._slot.close()
        with self._infos_cond:
            self._infos.clear()
        if self._worker is not None:
            self._worker.join()
            self._worker = None

    def _release_solver(self) -> None:
        if self._processor is not None:
            self._processor.reconstructor.release()
        self._processor = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    # ------------------------------------------------------------------ input (executor threads)
    def _on_image(self, msg: Image) -> None:
        # Trivial on purpose: the executor must never wait for the solver.
        with self._stats.lock:
            self._stats.frames_in += 1
            self._stats.last_input_mono = time.monotonic()
        if self._slot.put((msg, time.monotonic())):
            with self._stats.lock:
                self._stats.dropped += 1

    def _on_message_lost(self, info: Any) -> None:
        with self._stats.lock:
            self._stats.lost += int(info.total_count_change)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        with self._infos_cond:
            self._infos[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = msg
            while len(self._infos) > INFO_HISTORY:
                self._infos.popitem(last=False)
            self._last_info_mono = time.monotonic()
            self._infos_cond.notify_all()

    def _camera_info_for(self, image: Image) -> CameraInfo | None:
        """The camera_info with the image's stamp; else the newest; else None (bank intrinsics).

        Drivers publish image and camera_info in either order, so wait briefly for the matching
        one while a camera_info stream exists (or may still start, just after activation).
        """
        key = (image.header.stamp.sec, image.header.stamp.nanosec)
        deadline = time.monotonic() + INFO_WAIT_S
        with self._infos_cond:
            while key not in self._infos:
                now = time.monotonic()
                expecting = now - self._last_info_mono < 1.0 or now - self._activated_mono < 1.0
                if not expecting or now >= deadline:
                    break
                self._infos_cond.wait(deadline - now)
            exact = self._infos.get(key)
            return exact or (next(reversed(self._infos.values())) if self._infos else None)

    # ------------------------------------------------------------------ worker thread
    def _work(self, niceness: int) -> None:
        self._lower_priority(niceness)
        while True:
            item = self._slot.take()
            if item is None:
                return
            self._process(*item)

    def _lower_priority(self, niceness: int) -> None:
        """Lower this thread's scheduling priority. It runs before the worker's first solve, so
        torch's CPU threads, which this thread creates, inherit it."""
        if niceness <= 0:
            return
        try:
            thread = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + niceness)
        except (AttributeError, OSError) as exc:  # not Linux, or a sandbox that forbids it
            self.get_logger().warning(f"worker_niceness {niceness} not applied: {exc}")

    def _process(self, msg: Image, received: float) -> None:
        processor = self._processor
        if processor is None:
            return
        info = self._camera_info_for(msg)
        try:
            outputs = processor.process(msg, info, self._settings)
        except InputImageError as exc:
            self._bad_frame(msg, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - a failed frame must not stop the node
            if _is_out_of_memory(exc):
                outputs = self._retry_after_oom(processor, msg, info, exc)
                if outputs is None:
                    return
            else:
                self._failed_frame(f"reconstruction failed: {type(exc).__name__}: {exc}")
                return
        self._publish(outputs, received)

    def _retry_after_oom(self, processor: FrameProcessor, msg: Image, info: CameraInfo | None,
                         exc: BaseException) -> FrameOutputs | None:
        """CUDA OOM: free the cache and retry once in tiles (bounded peak memory)."""
        self._release_cuda_cache()
        try:
            return processor.process(msg, info, self._settings, tiled=True)
        except Exception as retry_exc:  # noqa: BLE001
            self._failed_frame(f"reconstruction out of memory ({exc}); the tiled retry failed too ({retry_exc}); "
                               "lower input_downscale or use device cpu")
            return None

    @staticmethod
    def _release_cuda_cache() -> None:
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    def _bad_frame(self, msg: Image, reason: str) -> None:
        text = f"skipped frame {msg.width}x{msg.height} {msg.encoding!r} on {self.resolve_topic_name('image_raw')}: {reason}"
        self.get_logger().warning(text, throttle_duration_sec=5.0)
        with self._stats.lock:
            self._stats.bad += 1
            self._stats.last_warning = text
            self._stats.last_bad_mono = time.monotonic()

    def _failed_frame(self, text: str) -> None:
        self.get_logger().error(text, throttle_duration_sec=5.0)
        with self._stats.lock:
            self._stats.failed += 1
            self._stats.last_error = text
            self._stats.last_fail_mono = time.monotonic()

    def _publish(self, out: FrameOutputs, received: float) -> None:
        pubs = self._pubs
        if not pubs:
            return  # cleaned up while this frame was in flight
        if out.intrinsics_source != "camera_info" and not self._warned_no_info:
            self._warned_no_info = True
            where = "PSF bank optics (fx=fy=focal_length_m/pixel_pitch_m, centred)" if out.depth_info else "nowhere"
            self.get_logger().warning(
                f"no camera_info on {self.resolve_topic_name('camera_info')}: intrinsics from {where}"
                + ("" if out.depth_info else "; points and camera_info are not published")
            )
        pubs["depth"].publish(out.depth)
        now = self.get_clock().now()
        if out.depth_info is not None:
            pubs["depth_info"].publish(out.depth_info)
        if out.points is not None:
            pubs["points"].publish(out.points)
        if out.aif is not None:
            pubs["aif"].publish(out.aif)
            if out.aif_info is not None:
                pubs["aif_info"].publish(out.aif_info)
        if out.confidence is not None:
            pubs["confidence"].publish(out.confidence)
        if out.info is not None and "info" in pubs:
            pubs["info"].publish(out.info)
        stamp = Time.from_msg(out.header.stamp, clock_type=now.clock_type)
        with self._stats.lock:
            self._stats.processed += 1
            self._stats.intrinsics = out.intrinsics_source
            self._stats.last_steps = out.reconstruction.steps
            if out.reconstruction.notes:
                self._stats.last_note, self._stats.last_note_mono = out.reconstruction.notes[-1], time.monotonic()
            self._stats.processing_s.append(time.monotonic() - received)
            if stamp.nanoseconds > 0:  # stamp -> depth publish; meaningless for unstamped input
                self._stats.latency_s.append((now - stamp).nanoseconds * 1e-9)

    # ------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        state = self._state_machine.current_state[1]
        now = time.monotonic()
        with self._stats.lock:
            s = self._stats
            t0, in0, out0 = self._last_diag
            dt = max(now - t0, 1e-3)
            in_rate, out_rate = (s.frames_in - in0) / dt, (s.processed - out0) / dt
            self._last_diag = (now, s.frames_in, s.processed)
            lat = list(s.latency_s)
            proc = list(s.processing_s)
            counts = dict(frames_in=s.frames_in, frames_processed=s.processed, frames_dropped=s.dropped,
                          frames_lost=s.lost, frames_bad=s.bad, frames_failed=s.failed)
            recent_bad, recent_fail = now - s.last_bad_mono < WARN_WINDOW_S, now - s.last_fail_mono < WARN_WINDOW_S
            silent = now - s.last_input_mono > NO_INPUT_WARN_S
            last_warning, last_error, intrinsics = s.last_warning, s.last_error, s.intrinsics
            recent_note = s.last_note if now - s.last_note_mono < WARN_WINDOW_S else ""
            last_steps = s.last_steps
        processor = self._processor
        device = processor.reconstructor.device if processor else str(self.get_parameter("device").value)
        steps = processor.reconstructor.config.steps if processor else int(self.get_parameter("steps").value)
        steps = last_steps or steps  # what the latest frame ran: a time budget chooses it
        method = processor.reconstructor.config.method if processor else str(self.get_parameter("method").value)

        def kv(**pairs: Any) -> list[KeyValue]:
            return [KeyValue(key=k, value=(f"{v:.3f}" if isinstance(v, float) else str(v))) for k, v in pairs.items()]

        name = self.get_fully_qualified_name()
        image_topic = self.resolve_topic_name("image_raw")
        inp = DiagnosticStatus(name=f"{name}: input", hardware_id=image_topic)
        if state != "active":
            inp.level, inp.message = DiagnosticStatus.OK, f"not subscribed ({state})"
        elif recent_bad:
            inp.level, inp.message = DiagnosticStatus.WARN, "bad frames skipped: " + last_warning
        elif silent:
            inp.level, inp.message = DiagnosticStatus.WARN, f"no frames on {image_topic} for {NO_INPUT_WARN_S:.0f} s"
        else:
            inp.level, inp.message = DiagnosticStatus.OK, f"receiving {in_rate:.1f} Hz"
        inp.values = kv(topic=image_topic, input_rate_hz=in_rate, intrinsics=intrinsics, **counts,
                        last_warning=last_warning)

        rec = DiagnosticStatus(name=f"{name}: reconstruction", hardware_id=device)
        if last_error and recent_fail:
            rec.level, rec.message = DiagnosticStatus.ERROR, last_error
        elif state != "active":
            level = DiagnosticStatus.ERROR if last_error and state == "unconfigured" else DiagnosticStatus.WARN
            rec.level, rec.message = level, (last_error or f"lifecycle state {state}: not producing depth")
        elif recent_note:
            rec.level, rec.message = DiagnosticStatus.WARN, recent_note
        else:
            rec.level, rec.message = DiagnosticStatus.OK, f"publishing {out_rate:.1f} Hz"
        rec.values = kv(
            state=state, method=method, device=device, steps=steps, output_rate_hz=out_rate,
            latency_mean_ms=1e3 * sum(lat) / len(lat) if lat else float("nan"),
            latency_max_ms=1e3 * max(lat) if lat else float("nan"),
            processing_mean_ms=1e3 * sum(proc) / len(proc) if proc else float("nan"),
            processing_max_ms=1e3 * max(proc) if proc else float("nan"),
            **counts, last_error=last_error,
        )
        array = DiagnosticArray(status=[inp, rec])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(array)

    # ------------------------------------------------------------------ teardown
    def stop(self) -> None:
        """Stop the worker and release the solver (process exit without a shutdown transition)."""
        self._stop_input()
        self._release_solver()


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args)
    node = CadfdNode()
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    try:
        if node.get_parameter("autostart").value:
            if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                node.trigger_activate()
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.stop()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
