"""The occupancy node (`occupancy_node`): a thin rclpy node over pure functions.

Importing this module imports rclpy; `occupancy_node --help` and the parameter table need none
(ros/main.py is the entry point, ros/params.py the table).

Callbacks only decode stamps and hand messages to the StampPairer; the newest complete
(image, camera info) pair goes to a worker thread that runs decoding, `inference.Predictor` and
the output builders. A pair that arrives while the worker is busy replaces the waiting one (the
replaced one is counted as dropped): a slow network never blocks the inputs or builds a backlog.

Every bad input (wrong encoding, size mismatch, zero focal length, NaN, empty or huge image,
missing camera info) gives one throttled log line and a diagnostic, and the node goes on with the
next good frame. A checkpoint that cannot be loaded leaves the node up, reporting ERROR, until the
`checkpoint` parameter names a good one.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Float64
from visualization_msgs.msg import MarkerArray

from monoocc_ros.errors import one_line
from monoocc_ros.msg import VoxelGrid
from monoocc_ros.paths import default_model
from monoocc_ros.ros.camera import MAX_PIXELS, InputError
from monoocc_ros.ros.diagnostics import WINDOW_S, Inputs, NodeStats, RateWindow, assess
from monoocc_ros.ros.params import PARAM_BY_NAME, PARAMS, NodeParams
from monoocc_ros.ros.pipeline import run_frame
from monoocc_ros.ros.stamps import stamp_to_ns
from monoocc_ros.ros.sync import StampPairer


def diagnostic_status_name(node_fqn: str) -> str:
    """The node's /diagnostics status name: its fully qualified name, so that two occupancy
    nodes on one graph can be told apart."""
    return f"{node_fqn}: occupancy"


class OccupancyNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("occupancy_node", **kwargs)
        for p in PARAMS:
            self.declare_parameter(
                p.name, p.default, ParameterDescriptor(description=p.description, read_only=not p.runtime)
            )
        values = {p.name: self.get_parameter(p.name).value for p in PARAMS}
        import torch

        self.params = NodeParams.of(values, cuda_available=torch.cuda.is_available())  # ValueError: refuse to start
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self.predictor = None
        self.model_error = ""
        self.loading = ""  # what is being loaded (diagnostics say so meanwhile)
        self._load_model(self.params.checkpoint, self.params.backend)

        depth = self.params.queue_depth
        self.pairer = StampPairer(self.params.sync_slop, queue_size=depth)
        self._lock = threading.Condition()
        self._pending: tuple | None = None
        self._stop = False
        self.stats = NodeStats()
        self._rates = RateWindow()
        self._started = time.monotonic()
        self._last_logged: dict[str, float] = {}

        sensor_qos = QoSProfile(
            depth=depth,
            reliability=qos_profile_sensor_data.reliability,
            durability=qos_profile_sensor_data.durability,
            history=qos_profile_sensor_data.history,
        )
        out_qos = QoSProfile(
            depth=1,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL if self.params.latch else DurabilityPolicy.VOLATILE,
        )
        self.create_subscription(Image, "~/input/image", self._on_image, sensor_qos)
        self.create_subscription(CameraInfo, "~/input/camera_info", self._on_info, sensor_qos)
        self.pub_voxels = self.create_publisher(VoxelGrid, "~/output/voxels", out_qos)
        self.pub_markers = self.create_publisher(MarkerArray, "~/output/markers", out_qos)
        self.pub_points = self.create_publisher(PointCloud2, "~/output/points", out_qos)
        self.pub_proc = self.create_publisher(Float64, "~/debug/processing_time_ms", 10)
        self.pub_latency = self.create_publisher(Float64, "~/debug/pipeline_latency_ms", 10)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        # Diagnostics from their own thread, not an executor timer: they keep coming while a
        # parameter change loads a model (in the parameter callback, on the executor). A
        # multi-threaded executor would free the executor too, but its overhead halved the node's
        # rate here (1.73 vs 3.77 frames/s on 2 cores).
        self._diag_stop = threading.Event()
        self._diag = threading.Thread(target=self._diagnostics_loop, name="monoocc_diagnostics", daemon=True)
        self._diag.start()
        self._worker = threading.Thread(target=self._work, name="monoocc_inference", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"ready: model {self.predictor.cfg.name if self.predictor else 'NOT LOADED'} on "
            f"{self.predictor.describe() if self.predictor else '-'}; waiting for images"
        )

    # --- parameters and model -----------------------------------------------------
    def _load_model(self, checkpoint: str, backend: str) -> None:
        """At start-up: a model that cannot be loaded leaves the node up, reporting ERROR."""
        try:
            self.predictor = self._new_predictor(checkpoint, backend)
        except Exception as exc:  # reported, not hidden: diagnostics say ERROR until fixed
            self.predictor = None
            self.model_error = str(exc)
            self.get_logger().error(self.model_error)

    def _new_predictor(self, checkpoint: str, backend: str):
        """Load a model without touching the one serving; raises with the reason."""
        from monoocc_ros.inference import Predictor

        path = Path(checkpoint) if checkpoint else default_model()
        self.loading = f"loading {path} on backend {backend}"
        try:
            predictor = Predictor.load(path, backend, self.params.device, self.params.half_precision)
        except Exception as exc:
            raise RuntimeError(f"cannot load {path} on backend {backend}: {one_line(exc)}") from exc
        finally:
            self.loading = ""
        self.get_logger().info(f"loaded {path} ({predictor.cfg.name}) on {predictor.describe()}")
        return predictor

    def _on_set_parameters(self, params) -> SetParametersResult:
        changes = {}
        for p in params:
            spec = PARAM_BY_NAME.get(p.name)
            if spec is None:
                continue
            if not spec.runtime:
                return SetParametersResult(successful=False, reason=f"{p.name} can only be set at start-up")
            changes[p.name] = p.value
        try:
            new = self.params.replace(**changes)
        except ValueError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        model_changed = (new.checkpoint, new.backend) != (self.params.checkpoint, self.params.backend)
        if model_changed or (self.predictor is None and {"checkpoint", "backend"} & set(changes)):
            # (setting the same path again retries a model that failed to load)
            # Transactional: the new model is loaded while the old one keeps serving (the worker
            # finishes its frame with it; diagnostics keep publishing from their thread; new
            # inputs wait in their queues). Only a model that loaded replaces it; otherwise the
            # change is refused with the reason.
            try:
                predictor = self._new_predictor(new.checkpoint, new.backend)
            except Exception as exc:
                self.get_logger().error(f"{exc}; keeping the current model")
                return SetParametersResult(successful=False, reason=str(exc))
            self.predictor, self.model_error = predictor, ""
        self.params = new
        self.pairer.set_slop(new.sync_slop)
        return SetParametersResult(successful=True)

    # --- inputs ---------------------------------------------------------------------
    @staticmethod
    def _stamp_ns(msg) -> int:
        return stamp_to_ns(msg.header.stamp)

    def _on_image(self, msg) -> None:
        self._offer(self.pairer.add_image(self._stamp_ns(msg), msg))

    def _on_info(self, msg) -> None:
        self._offer(self.pairer.add_camera_info(self._stamp_ns(msg), msg))

    def _offer(self, pair) -> None:
        if pair is None:
            return
        with self._lock:
            if self._pending is not None:
                self.stats.dropped += 1
            self._pending = pair
            self._lock.notify()

    # --- worker ---------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._lock:
                while self._pending is None and not self._stop:
                    self._lock.wait(0.5)
                if self._stop:
                    return
                pair, self._pending = self._pending, None
            assert pair is not None  # the wait ends on a pending pair, or on _stop (returned above)
            try:
                self._process(*pair)
            except InputError as exc:
                self._fail(f"bad input: {exc}")
            except Exception as exc:  # inference or CUDA failure: reported, node stays up
                self._fail(f"processing failed: {exc.__class__.__name__}: {exc}")

    def _fail(self, text: str) -> None:
        if self._stop or not self.context.ok():
            return  # shutting down: a publish into a closed context is not a frame error
        self.stats.errors += 1
        self.stats.last_error = text
        # Throttled per kind of error (rclpy's throttle is per call site, which would hide
        # a second kind of problem behind the first).
        kind = text.split(":")[1].strip() if text.count(":") >= 2 else text
        now = time.monotonic()
        if now - self._last_logged.get(kind[:60], -1e9) >= 2.0:
            self._last_logged[kind[:60]] = now
            self.get_logger().error(text)

    def _process(self, image_msg, info_msg, stamp_ns: int) -> None:
        if self.predictor is None:
            raise RuntimeError(self.model_error or "no model loaded")
        t0 = time.perf_counter()
        out = run_frame(
            self.predictor, image_msg, info_msg, stamp_ns, self.params,
            want_markers=self.params.publish_markers and self.pub_markers.get_subscription_count() > 0,
            want_points=self.pub_points.get_subscription_count() > 0,
        )  # fmt: skip
        self.pub_voxels.publish(out.voxels)
        if out.markers is not None:
            self.pub_markers.publish(out.markers)
        if out.points is not None:
            self.pub_points.publish(out.points)
        proc_ms = (time.perf_counter() - t0) * 1e3
        latency_ms = (self.get_clock().now().nanoseconds - stamp_ns) / 1e6
        self.pub_proc.publish(Float64(data=proc_ms))
        self.pub_latency.publish(Float64(data=latency_ms))
        st = self.stats
        st.processing_ms, st.latency_ms = proc_ms, latency_ms
        st.frames, st.last_ok = st.frames + 1, time.monotonic()

    # --- diagnostics ----------------------------------------------------------------
    def diagnostic_status(self):
        s, pairs = self.stats, self.pairer.stats
        st = DiagnosticStatus(name=diagnostic_status_name(self.get_fully_qualified_name()), hardware_id="camera")
        window = self._rates.add(time.monotonic(), s)
        inputs = Inputs(pairs.unmatched_images, pairs.zero_stamp, pairs.last_unpaired_reason)
        model_error = None if self.predictor is not None else (self.model_error or "no model loaded")
        since_ok = time.monotonic() - (s.last_ok or self._started)
        level, st.message = assess(s, window, inputs, self.params, since_ok, model_error, self.loading)
        st.level = bytes([level])
        st.values = [
            KeyValue(key=k, value=str(v))
            for k, v in (
                ("frames", s.frames), ("dropped_frames", s.dropped), ("errors", s.errors),
                (f"frames_dropped_errors_last_{WINDOW_S:.0f}s", "/".join(map(str, window))),
                ("processing_ms", f"{s.processing_ms:.1f}"), ("latency_ms", f"{s.latency_ms:.1f}"),
                ("unpaired_images", pairs.unmatched_images), ("unpaired_reason", pairs.last_unpaired_reason),
                ("zero_stamps", pairs.zero_stamp), ("last_error", s.last_error),
                ("largest_image_accepted_px", MAX_PIXELS),
            )
        ]  # fmt: skip
        return st

    def _diagnostics_loop(self) -> None:
        while not self._diag_stop.wait(1.0):
            try:
                self._publish_diagnostics()
            except Exception:  # the context is shutting down: nothing left to report to
                if not self.context.ok():
                    return
                raise

    def _publish_diagnostics(self) -> None:
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [self.diagnostic_status()]
        self.pub_diag.publish(msg)

    def shutdown(self) -> None:
        self._diag_stop.set()
        with self._lock:
            self._stop = True
            self._lock.notify()
        self._worker.join(timeout=5.0)
        self._diag.join(timeout=5.0)
