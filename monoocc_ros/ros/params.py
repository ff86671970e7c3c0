"""The occupancy node's parameters, ROS-free: the one table (declared by the node, checked
against config/occ.yaml, the README and the launch file by the tests, printed by --help), a
frozen `NodeParams` built from it, validation, start-up checks and the usage text.

Why apart from the node: `occupancy_node --help`, the launch file, the tests and the benchmarks
read the table without importing rclpy, and a mistyped parameter name fails at the attribute
(`params.sync_slop`), where a string key failed later on the worker thread.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from monoocc_ros.geometry import KITTI_CALIB
from monoocc_ros.paths import DEFAULT_MODEL


@dataclass(frozen=True)
class Param:
    name: str
    type: type
    default: Any
    description: str
    runtime: bool = False  # may be changed while the node runs


OUTSIDE_VIEW = ("unknown", "predict")  # values of `outside_view` (ros/pipeline.apply_field_of_view)
DEFAULT_EXTRINSIC = [float(v) for v in KITTI_CALIB["Tr"].reshape(-1)]

# The one table of parameters: declared by the node, checked against config/occ.yaml by the
# tests, and printed in the README and by --help.
PARAMS: tuple[Param, ...] = (
    Param("checkpoint", str, "", "Model checkpoint (.pt), or an ONNX model (.onnx, backend onnxruntime). Empty: "
          f"the shipped {DEFAULT_MODEL}. Changing it at run time reloads the model.", runtime=True),
    Param("backend", str, "torch", "torch (eager PyTorch) or onnxruntime (CUDA/TensorRT providers when installed, "
          "else CPU); a .pt checkpoint is exported to ONNX once and cached. Changing it reloads the model.",
          runtime=True),
    Param("device", str, "auto", "auto (CUDA when available), cuda or cpu. cuda without CUDA is an error."),
    Param("half_precision", bool, False, "fp16 autocast on CUDA (an error on the CPU)."),
    Param("grid_frame", str, "velodyne", "frame_id of the output grid (the frame the extrinsic maps from).",
          runtime=True),
    Param("grid_to_camera", list, DEFAULT_EXTRINSIC, "Row-major 4x4 transform from grid_frame to the camera's "
          "optical frame (16 numbers). Default: KITTI's Velodyne-to-camera Tr.", runtime=True),
    Param("sync_slop", float, 0.0, "Max |image stamp - camera info stamp| in seconds to pair them (0: exact).",
          runtime=True),
    Param("queue_depth", int, 5, "Depth of the sensor-data QoS of the inputs and of the pairing buffers."),
    Param("latch", bool, False, "Publish outputs transient-local, so late subscribers get the last grid."),
    Param("publish_markers", bool, True, "Publish ~/output/markers (only while someone subscribes).",
          runtime=True),
    Param("max_marker_cubes", int, 20000, "Cap on marker cubes per frame (0: no cap); RViz slows beyond.",
          runtime=True),
    Param("confidence_threshold", float, 0.0, "Voxels whose predicted class probability is below this are "
          "published as unknown (255).", runtime=True),
    Param("image_is_rectified", bool, False, "The image is already rectified (image_rect beside the camera's "
          "original camera info): its distortion coefficients are not applied again.", runtime=True),
    Param("outside_view", str, "unknown", "Voxels outside the camera's field of view: unknown (255; the camera "
          "saw nothing there, the network's answer is a scene prior) or predict (the network's answer, with "
          "confidence 0).", runtime=True),
    Param("publish_confidence", bool, True, "Fill VoxelGrid.confidence (2 MB more per message).", runtime=True),
    Param("processing_budget_ms", float, 500.0, "Diagnostics turn WARN when processing takes longer.",
          runtime=True),
    Param("input_timeout_s", float, 5.0, "Diagnostics turn ERROR when no frame was processed for this long.",
          runtime=True),
    Param("max_drop_rate", float, 0.5, "Diagnostics turn WARN when more than this fraction of paired frames "
          "was dropped in the last 10 s (the network is slower than the camera).", runtime=True),
    Param("max_failure_rate", float, 0.2, "Diagnostics turn ERROR when more than this fraction of frames "
          "failed in the last 10 s.", runtime=True),
)  # fmt: skip
PARAM_BY_NAME = {p.name: p for p in PARAMS}


def validate_params(values: dict[str, Any]) -> list[str]:
    """Problems with a set of parameter values (empty list: all good)."""
    return _model_errors(values) + _extrinsic_errors(values) + _range_errors(values)


def _model_errors(values: dict[str, Any]) -> list[str]:
    errors = []
    if "backend" in values and values["backend"] not in ("torch", "onnxruntime"):
        errors.append(f"backend must be torch or onnxruntime, got {values['backend']!r}")
    if values.get("backend") == "onnxruntime" and values.get("half_precision"):
        errors.append("half_precision applies to the torch backend only (the ONNX model runs float32)")
    if values.get("backend") == "torch" and str(values.get("checkpoint", "")).endswith(".onnx"):
        errors.append("a .onnx checkpoint needs backend onnxruntime")
    device = values.get("device", "auto")
    if device not in ("auto", "cpu", "cuda") and not str(device).startswith("cuda:"):
        errors.append(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    return errors


def _extrinsic_errors(values: dict[str, Any]) -> list[str]:
    if "grid_to_camera" not in values:
        return []
    m = values["grid_to_camera"]
    if len(m) != 16 or not np.isfinite(np.asarray(m, dtype=float)).all():
        return [f"grid_to_camera must be 16 finite numbers (row-major 4x4), got {len(m)} values"]
    t = np.asarray(m, dtype=float).reshape(4, 4)
    if not np.allclose(t[3], [0, 0, 0, 1]) or not np.allclose(t[:3, :3] @ t[:3, :3].T, np.eye(3), atol=1e-3):
        return ["grid_to_camera must be a rigid transform (orthonormal rotation, last row 0 0 0 1)"]
    return []


# (key, lowest, highest) of the numeric parameters; None: unbounded on that side.
_RANGES = (
    ("max_drop_rate", 0, 1), ("max_failure_rate", 0, 1), ("sync_slop", 0, None),
    ("processing_budget_ms", 0, None), ("input_timeout_s", 0, None), ("confidence_threshold", 0, 1),
    ("queue_depth", 1, None), ("max_marker_cubes", 0, None),
)  # fmt: skip


def _range_errors(values: dict[str, Any]) -> list[str]:
    errors = []
    for key, low, high in _RANGES:
        if key not in values:
            continue
        v = values[key]
        if high is None and not v >= low:
            errors.append(f"{key} must be >= {low}, got {v}")
        elif high is not None and not low <= v <= high:
            errors.append(f"{key} must be in [{low}, {high}], got {v}")
    if "outside_view" in values and values["outside_view"] not in OUTSIDE_VIEW:
        errors.append(f"outside_view must be one of {', '.join(OUTSIDE_VIEW)}, got {values['outside_view']!r}")
    return errors


def cuda_errors(values: dict[str, Any], cuda_available: bool) -> list[str]:
    """Start-up settings that need CUDA where there is none. Checked before the node comes up:
    `device` and `half_precision` are read-only, so a node started with them would lock them
    and never serve; it refuses to start instead (exit 2, one line)."""
    device = str(values.get("device", "auto"))
    errors = []
    if values.get("half_precision") and device == "cpu":
        errors.append("half_precision needs CUDA (fp16 autocast) but device is cpu")
    if cuda_available:
        return errors
    if device.startswith("cuda"):
        errors.append(f"device {device!r} needs CUDA, which this machine does not have (use auto or cpu)")
    if values.get("half_precision") and device != "cpu":
        errors.append("half_precision needs CUDA (fp16 autocast), which this machine does not have")
    return errors


def usage() -> str:
    lines = [
        "usage: occupancy_node [--help] [--ros-args --params-file config/occ.yaml -r ~/input/image:=TOPIC ...]",
        "",
        "Monocular semantic occupancy (monoocc_ros).",
        "  subscribes  ~/input/image (sensor_msgs/Image), ~/input/camera_info (sensor_msgs/CameraInfo)",
        "  publishes   ~/output/voxels (monoocc_ros/msg/VoxelGrid), ~/output/markers (MarkerArray),",
        "              ~/output/points (PointCloud2), ~/debug/processing_time_ms, ~/debug/pipeline_latency_ms",
        "              (std_msgs/Float64), /diagnostics (DiagnosticArray)",
        "",
        "parameters:",
    ]
    for p in PARAMS:
        default = "[KITTI Tr]" if p.name == "grid_to_camera" else repr(p.default)
        lines.append(f"  {p.name:<22} {p.type.__name__:<6} {default:<12} {p.description}")
    return "\n".join(lines)


def params_file_errors(argv: list[str]) -> list[str]:
    """Problems with the `--params-file` arguments, found before rcl parses them (rcl's own
    parser logs a second, unclear line and raises): missing, not YAML, not `NODE: {ros__parameters:
    {...}}` mappings."""
    import yaml

    from monoocc_ros.model.config import yaml_problem

    errors = []
    for i, arg in enumerate(argv[:-1]):
        if arg != "--params-file":
            continue
        path = Path(argv[i + 1])
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as exc:
            errors.append(f"params file {path}: {exc.strerror or exc}")
            continue
        except yaml.YAMLError as exc:
            errors.append(f"params file {path} is not valid YAML ({yaml_problem(exc)})")
            continue
        ok = isinstance(data, dict) and all(
            isinstance(v, dict) and isinstance(v.get("ros__parameters"), dict) for v in data.values()
        )
        if not ok:
            errors.append(f"params file {path}: expected NODE_NAME (or /**): ros__parameters: {{name: value}}")
    return errors


@dataclass(frozen=True)
class NodeParams:
    """The node's parameter values, typed; built once per change with `NodeParams.of`."""

    checkpoint: str
    backend: str
    device: str
    half_precision: bool
    grid_frame: str
    grid_to_camera: tuple[float, ...]
    sync_slop: float
    queue_depth: int
    latch: bool
    publish_markers: bool
    max_marker_cubes: int
    confidence_threshold: float
    image_is_rectified: bool
    outside_view: str
    publish_confidence: bool
    processing_budget_ms: float
    input_timeout_s: float
    max_drop_rate: float
    max_failure_rate: float

    @classmethod
    def of(cls, values: dict[str, Any], cuda_available: bool | None = None) -> NodeParams:
        """From a name -> value map (rclpy's, or the defaults); ValueError listing every problem.
        With `cuda_available` (start-up), the settings that need CUDA are checked too."""
        errors = validate_params(values)
        if cuda_available is not None:
            errors += cuda_errors(values, cuda_available)
        missing = [p.name for p in PARAMS if p.name not in values]
        if missing or errors:
            raise ValueError("invalid parameters: " + "; ".join(errors + [f"{m} is missing" for m in missing]))
        kwargs: dict[str, Any] = {p.name: tuple(values[p.name]) if p.type is list else values[p.name] for p in PARAMS}
        return cls(**kwargs)

    def replace(self, **changes: Any) -> NodeParams:
        return NodeParams.of({**dataclasses.asdict(self), **changes})

    def __getitem__(self, name: str) -> Any:
        """`params["sync_slop"]`, for the pure functions that take a parameter map."""
        return getattr(self, name)


def default_params() -> NodeParams:
    return NodeParams.of({p.name: p.default for p in PARAMS})
