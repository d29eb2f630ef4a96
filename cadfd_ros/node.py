"""``cadfd_node``: a lifecycle node that turns a coded-aperture camera into a depth sensor.

Wiring only, so the policy can be tested without DDS: frames go through ``ros.mailbox`` to the
``ros.worker`` thread (which runs ``ros.processing``) and out through lifecycle publishers;
parameters are ``ros.parameters``, health ``ros.diagnostics``. Callbacks only store the newest
frame, so a slow solver never blocks the executor. Cleanup, shutdown, error and a failed
configure all release everything and leave the node unconfigured, ready to configure again.
"""
from __future__ import annotations

import collections
import functools
import gc
import math
import threading
import time
from typing import Any, Callable

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.exceptions import InvalidHandle, InvalidParameterTypeException, InvalidParameterValueException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleNodeMixin, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, Image, LaserScan, PointCloud2

from cadfd_ros.errors import CadfdError, InputImageError
from cadfd_ros.params import PARAM_BY_NAME, PARAMS, ignored_by_method
from cadfd_ros.ros.conversions import check_image_layout
from cadfd_ros.ros.diagnostics import RateMeter, Stats, diagnostic_statuses
from cadfd_ros.ros.mailbox import CameraInfoBuffer, LatestFrame
from cadfd_ros.ros.metadata import StampChecker
from cadfd_ros.ros.qos import driver_qos, info_qos, sensor_qos
from cadfd_ros.ros.parameters import build_processor, declarations, output_settings, validate_changes
from cadfd_ros.ros.processing import FrameOutputs, FrameProcessor, OutputSettings
from cadfd_ros.ros.worker import SolverWorker, empty_cuda_cache

NODE_NAME = "cadfd_node"
OUTPUT_TOPICS = (("depth", Image, "depth/image"), ("depth_info", CameraInfo, "depth/camera_info"),
                 ("points", PointCloud2, "points"), ("aif", Image, "aif/image"),
                 ("aif_info", CameraInfo, "aif/camera_info"), ("confidence", Image, "confidence/image"),
                 ("scan", LaserScan, "scan"))
NOTE_LOG_PERIOD_S = 5.0  # a frame note repeated every frame is logged at most this often, each text on its own
# Configure failures a user can fix: their message alone says why.
CONFIGURE_ERRORS = (CadfdError, ImportError, OSError, ValueError)


def _transition(name: str, on_exception: TransitionCallbackReturn, teardown: bool = False,
                plain: tuple[type[BaseException], ...] = ()) -> Callable:
    """Catch, log and record an exception in a transition callback (rclpy would turn it into a
    silent ERROR) and return ``on_exception``; ``teardown`` releases everything first."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(self: "CadfdNode", state: LifecycleState) -> TransitionCallbackReturn:
            try:
                return fn(self, state)
            except Exception as exc:  # noqa: BLE001 - every failure must be visible
                what = str(exc) if isinstance(exc, plain) else f"{type(exc).__name__}: {exc}"
                message = f"{name} failed: {what}"
                self.get_logger().error(message)
                self._stats.error(message, time.monotonic())
                if teardown:
                    self._teardown()
                return on_exception

        return wrapper

    return decorate


class CadfdNode(LifecycleNode):
    """Coded-aperture depth: ``image_raw`` in; depth, camera_info, points, scan, AIF, confidence out."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        # LifecycleNode puts the lifecycle services in the default callback group, next to the
        # parameter services; a long configure (bank load, warm-up) would then block parameter
        # get/set. Initialise the two bases ourselves to give lifecycle its own group.
        Node.__init__(self, node_name, **kwargs)
        LifecycleNodeMixin.__init__(self, callback_group=MutuallyExclusiveCallbackGroup())
        # The read-only lifecycle services (get_state, available states and transitions) get a
        # group of their own too: in the transitions' group they waited for a whole configure.
        queries = MutuallyExclusiveCallbackGroup()
        for service in (self._service_get_state, self._service_get_available_states,
                        self._service_get_available_transitions, self._service_get_transition_graph):
            service.callback_group = queries
            queries.add_entity(service)
        self._stats = Stats()
        # Start-up values (command line, YAML) that were refused: name -> the one line that says
        # why. Configure fails while any is left; setting a valid value clears it.
        self._startup_errors: dict[str, str] = {}
        for name, default, desc in declarations():
            self._declare(name, default, desc)
        self._check_startup_values()
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)

        self._configured = False
        self._processor: FrameProcessor | None = None
        try:
            self._settings = output_settings(self._values())
        except CadfdError as exc:  # e.g. min_depth >= max_depth from a YAML file: configure reports it
            self.get_logger().error(f"output parameters: {exc}")
            self._settings = OutputSettings()
        self._slot = LatestFrame()
        self._infos = CameraInfoBuffer()
        self._worker: SolverWorker | None = None
        self._warned_no_info = False
        self._stamps = StampChecker()
        # Stamps of frames whose latency is meaningless (zero, backwards, skewed): bounded, checked at publish.
        self._untrusted: collections.OrderedDict[tuple[int, int], None] = collections.OrderedDict()
        self._untrusted_lock = threading.Lock()  # executor threads add, the worker takes
        # A frame's outputs go out whole or not at all: stopping input waits for a publish in progress, and a
        # worker of an earlier activation (its session number passed) publishes nothing.
        self._publish_lock = threading.Lock()
        self._session = 0
        self._notes_logged: collections.OrderedDict[str, float] = collections.OrderedDict()  # text -> last logged
        self._subs: list = []
        self._pubs: dict[str, Any] = {}
        self._input_group = MutuallyExclusiveCallbackGroup()
        self._rates = RateMeter(time.monotonic())

        # Diagnostics are not a lifecycle publisher: an unconfigured or failed node must still
        # say why it produces nothing.
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        # On the steady clock: a node timer follows ROS time, which under use_sim_time stands still
        # until /clock arrives, and diagnostics would stop exactly when something is wrong.
        self._diag_timer = self.create_timer(1.0, self._publish_diagnostics, MutuallyExclusiveCallbackGroup(),
                                             clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.get_logger().info("cadfd_node up (unconfigured); configure then activate via the lifecycle services")

    # ------------------------------------------------------------------ parameters
    def _declare(self, name: str, default: Any, desc: Any) -> None:
        """Declare one parameter; a start-up value of the wrong type or out of range (which rclpy
        raises on, killing the process with a traceback) is replaced by the default and reported."""
        override = self._parameter_overrides.get(name)
        if override is not None and isinstance(default, float) and type(override.value) is int:
            # YAML `noise_sigma: 0` and `-p noise_sigma:=0` are integers: take them as doubles.
            self._parameter_overrides[name] = Parameter(name, value=float(override.value))
        try:
            self.declare_parameter(name, default, desc)
        except (InvalidParameterTypeException, InvalidParameterValueException):
            self.declare_parameter(name, default, desc, ignore_override=True)
            self._startup_error(name, override.value if override is not None else None)

    def _check_startup_values(self) -> None:
        """Values rclpy accepted that the schema refuses (a zero_is_unset range, a choice)."""
        for spec in PARAMS:
            if spec.name in self._startup_errors:
                continue
            value = self.get_parameter(spec.name).value
            try:
                spec.check(value)
            except CadfdError:
                self._startup_error(spec.name, value)

    def _startup_error(self, name: str, value: Any) -> None:
        spec = PARAM_BY_NAME[name]
        message = (f"start-up parameter {name}:={value!r} refused: {name} accepts {spec.accepted()}; "
                   f"the node stays unconfigured until {name} is set to a valid value")
        self._startup_errors[name] = message
        self.get_logger().error(message)
        self._stats.error(message, time.monotonic())

    def _values(self) -> dict[str, Any]:
        return {p.name: self.get_parameter(p.name).value for p in PARAMS}

    def _validate_parameters(self, params: list[Parameter]) -> SetParametersResult:
        reason = validate_changes({p.name: p.value for p in params}, self._values(), self._configured)
        return SetParametersResult(successful=reason is None, reason=reason or "")

    def _apply_parameters(self, params: list[Parameter]) -> None:
        for p in params:  # a valid value replaces a refused start-up one
            if self._startup_errors.pop(p.name, None) is not None and not self._startup_errors:
                self._stats.clear_error()
        # One reference swap: the worker sees the old or the new settings, never a mix.
        self._settings = output_settings(self._values())

    # ------------------------------------------------------------------ lifecycle
    @_transition("configure", TransitionCallbackReturn.FAILURE, teardown=True, plain=CONFIGURE_ERRORS)
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._startup_errors:
            raise CadfdError(next(iter(self._startup_errors.values())))
        self._processor = processor = self._build_processor()
        self._create_publishers()
        self._warned_no_info = False
        self._configured = True
        self._stats.clear_error()
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
        self._processor.restart_frame_clock()  # the scan_time of the first frame after a pause is unknown
        self._stamps.reset()  # nor is a stamp going backwards across a pause
        self._worker = SolverWorker(
            self._processor, self._slot, self._infos, lambda: self._settings,
            functools.partial(self._publish, session=self._session), self._stats,
            self.get_logger(), self.resolve_topic_name("image_raw"), int(self.get_parameter("worker_niceness").value),
        )
        self._worker.start()
        qos_options = QoSOverridingOptions.with_default_policies()
        # SensorDataQoS (REP 2003) by default; override via qos_overrides.<topic>.subscription.*
        self._subs = [
            self.create_subscription(
                Image, "image_raw", self._on_image, sensor_qos(),
                callback_group=self._input_group, qos_overriding_options=qos_options,
                event_callbacks=SubscriptionEventCallbacks(
                    message_lost=lambda info: self._stats.messages_lost(int(info.total_count_change))),
            ),
            self.create_subscription(
                CameraInfo, "camera_info", self._infos.add, sensor_qos(),
                callback_group=self._input_group, qos_overriding_options=qos_options,
            ),
        ]
        self._stats.input_started(time.monotonic())
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
        self._teardown()
        return super().on_cleanup(state)

    @_transition("shutdown", TransitionCallbackReturn.ERROR)
    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return super().on_shutdown(state)

    @_transition("error", TransitionCallbackReturn.FAILURE)
    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        # Back to unconfigured with everything released, rather than finalized.
        self.get_logger().error(f"error processing from state {state.label}: releasing and returning to unconfigured")
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def _build_processor(self) -> FrameProcessor:
        values = self._values()
        processor = build_processor(values)  # dps: loads the prior (PriorError)
        ignored = ignored_by_method(values)
        if ignored:
            self.get_logger().warning(f"{', '.join(ignored)} apply to method dps only; ignored with method classical")
        start = time.perf_counter()
        processor.warmup()
        self.get_logger().info(f"warm-up took {1e3 * (time.perf_counter() - start):.0f} ms")
        return processor

    def _create_publishers(self) -> None:
        qos_options = QoSOverridingOptions.with_default_policies()

        def pub(msg_type: type, topic: str, qos: QoSProfile | None = None) -> Any:
            return self.create_lifecycle_publisher(msg_type, topic, qos or driver_qos(),
                                                   qos_overriding_options=qos_options)

        # Keyed by FrameOutputs field; publish order is this order.
        self._pubs = {key: pub(msg_type, topic) for key, msg_type, topic in OUTPUT_TOPICS}
        if self._processor is not None and self._processor.info_type is not None:
            self._pubs["info"] = pub(self._processor.info_type, "~/info", info_qos())
        else:
            self.get_logger().warning("cadfd_ros_interfaces not built (make msgs): ~/info is not published")

    def _stop_input(self, wait_s: float = 0.0) -> None:
        """Unsubscribe and stop the worker without waiting for its frame in flight: that frame is
        abandoned (its solve ends in the background, its outputs are never published), so
        deactivate, cleanup and shutdown return at once during a long solve. ``wait_s``: how long
        to wait for it anyway (process exit). A publish in progress finishes first (milliseconds), so no
        frame goes out in part."""
        with self._publish_lock:
            self._session += 1
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        self._slot.close()
        self._infos.clear()
        if self._worker is not None:
            self._worker.abandon()
            self._worker.join(wait_s)
            self._worker = None
            # The abandoned worker may still be solving, then return to its (closed) slot: give the
            # next activation's worker a slot of its own, so the two never share a frame.
            self._slot = LatestFrame()

    def _teardown(self) -> None:
        """Stop input, destroy the publishers, release solver memory (GPU included): unconfigured."""
        self._stop_input()
        for publisher in self._pubs.values():
            self.destroy_lifecycle_publisher(publisher)
        self._pubs = {}
        self._release_solver()
        self._configured = False

    def _release_solver(self) -> None:
        if self._processor is not None:
            self._processor.release()
        self._processor = None
        gc.collect()  # drop the solver's tensors before returning the cache to the driver
        empty_cuda_cache()

    # ------------------------------------------------------------------ input (executor threads)
    def _on_image(self, msg: Image) -> None:
        # Trivial on purpose: the executor must never wait for the solver.
        self._stats.frame_received(time.monotonic())
        try:  # layout only, no decoding: a malformed frame is counted even when it would be dropped
            check_image_layout(msg)
        except InputImageError as exc:
            if self._worker is not None:
                self._worker.report_bad_frame(msg, str(exc))
            return
        self._check_metadata(msg)
        if self._slot.put((msg, time.monotonic())):
            self._stats.frame_dropped()

    def _check_metadata(self, msg: Image) -> None:
        """Report a suspect stamp or frame_id (throttled log, diagnostics WARN); the frame goes on."""
        settings = self._settings
        stamp = msg.header.stamp
        stamp_ns = int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
        problems, trusted = self._stamps.check(stamp_ns, msg.header.frame_id, self.get_clock().now().nanoseconds,
                                               settings.max_stamp_skew, settings.output_frame_id)
        if not trusted:
            with self._untrusted_lock:
                self._untrusted[(int(stamp.sec), int(stamp.nanosec))] = None
                while len(self._untrusted) > 64:
                    self._untrusted.popitem(last=False)
        if problems:
            text = (f"frame at {stamp.sec}.{stamp.nanosec:09d} on {self.resolve_topic_name('image_raw')}: "
                    + "; ".join(problems))
            self.get_logger().warning(text, throttle_duration_sec=5.0)
            self._stats.metadata_warning(text, time.monotonic())

    # ------------------------------------------------------------------ output (worker thread)
    def _publish(self, out: FrameOutputs, received: float, session: int) -> None:
        with self._publish_lock:
            if session != self._session or not self._pubs:
                return  # deactivated or cleaned up while this frame was in flight
            self._publish_frame(out, received, self._pubs)

    def _log_note(self, note: str) -> None:
        """A WARN per note text, at most every NOTE_LOG_PERIOD_S: rclpy throttles by call site, so one
        repeating note (an uncalibrated camera_info) would have hidden a once-only one logged after it."""
        now = time.monotonic()
        if now - self._notes_logged.get(note, -math.inf) < NOTE_LOG_PERIOD_S:
            return
        self._notes_logged[note] = now
        self._notes_logged.move_to_end(note)
        while len(self._notes_logged) > 64:
            self._notes_logged.popitem(last=False)
        self.get_logger().warning(note)

    def _publish_frame(self, out: FrameOutputs, received: float, pubs: dict[str, Any]) -> None:
        if out.intrinsics_source != "camera_info" and not self._warned_no_info:
            self._warned_no_info = True
            where = "PSF bank optics (fx=fy=focal_length_m/pixel_pitch_m, centred)" if out.depth_info else "nowhere"
            self.get_logger().warning(
                f"no usable camera_info on {self.resolve_topic_name('camera_info')}: intrinsics from {where}"
                + ("" if out.depth_info else "; points, scan and camera_info are not published")
            )
        pubs["depth"].publish(out.depth)
        now = self.get_clock().now()  # latency: stamp -> depth publish
        for key, publisher in pubs.items():
            if key != "depth" and getattr(out, key) is not None:
                publisher.publish(getattr(out, key))
        for note in out.notes:  # e.g. a scan_height the frame cannot hold: the rest was published
            self._log_note(note)
        stamp = Time.from_msg(out.header.stamp, clock_type=now.clock_type)
        key = (int(out.header.stamp.sec), int(out.header.stamp.nanosec))
        with self._untrusted_lock:
            untrusted = self._untrusted.pop(key, False) is None
        # Zero, backwards or skewed stamps: a latency would be meaningless and swamp the good ones.
        latency = (now - stamp).nanoseconds * 1e-9 if stamp.nanoseconds > 0 and not untrusted else None
        self._stats.frame_published(out.intrinsics_source, out.reconstruction.steps,
                                    [*out.reconstruction.notes, *out.notes], time.monotonic() - received, latency,
                                    time.monotonic(), tiles=out.reconstruction.tiles,
                                    noise_sigma=float(out.reconstruction.noise_sigma),
                                    noise_source=out.reconstruction.noise_source)

    # ------------------------------------------------------------------ diagnostics (1 Hz timer)
    def _publish_diagnostics(self) -> None:
        state = self._state_machine.current_state[1]
        now = time.monotonic()
        snap = self._stats.snapshot()
        in_rate, out_rate = self._rates.update(snap, now)
        processor = self._processor
        if processor is not None:
            config = processor.reconstructor.config
            method, device, steps = config.method, processor.reconstructor.device, config.steps
        else:
            method, device = str(self.get_parameter("method").value), str(self.get_parameter("device").value)
            steps = int(self.get_parameter("steps").value)
        steps = steps if method == "dps" else 0  # classical evaluates no network: ~/info says 0 too
        statuses = diagnostic_statuses(snap, state, now, in_rate, out_rate, method, device, steps,
                                       self.get_fully_qualified_name(), self.resolve_topic_name("image_raw"))
        array = DiagnosticArray(status=list(statuses))
        array.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(array)

    def stop(self) -> None:
        """Stop the worker and release the solver (process exit without a shutdown transition)."""
        self._stop_input(wait_s=2.0)
        self._release_solver()


def spin_through_destroyed_entities(executor: Any, logger: Any = None) -> None:
    """``executor.spin()`` until the executor or its context shuts down, carrying on past InvalidHandle.
    Deactivate, cleanup and shutdown destroy subscriptions in the transition's thread while another executor
    thread may be adding their event handlers to a wait set; rclpy then raises InvalidHandle out of spin
    (ros2/rclpy#1284; seen in this package's tests). The entity is gone, the next wait set no longer holds it,
    so spinning on is right and the node keeps running."""
    while True:
        try:
            executor.spin()
            return
        except InvalidHandle as exc:
            if logger is not None:
                logger.debug(f"executor: an entity destroyed during a wait ({exc}); spinning on")


def main(args: list[str] | None = None) -> int:
    from cadfd_ros.runtime import keep_freed_memory

    keep_freed_memory()  # before the solver's first allocations
    rclpy.init(args=args)
    node = CadfdNode()
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    try:
        if node.get_parameter("autostart").value and not node._startup_errors:
            if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                node.trigger_activate()
        spin_through_destroyed_entities(executor, node.get_logger())
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
