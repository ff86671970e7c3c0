"""One frame through the node's pipeline, stage by stage, as pure functions (no publishing):
decode -> preprocess -> inference -> voxel message -> markers -> points. The node calls this and
publishes; `monoocc bench node` calls it to time every stage."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from monoocc_ros.inference import Predictor, camera_view_mask
from monoocc_ros.ros.camera import InputError, camera_image, image_to_rgb
from monoocc_ros.ros.convert import grid_to_msg, quantize_confidence
from monoocc_ros.ros.params import OUTSIDE_VIEW, NodeParams
from monoocc_ros.ros.visualization import markers_cdr, pointcloud_cdr


@dataclass
class FrameOutputs:
    voxels: Any
    markers: Any = None
    points: Any = None
    timings_ms: dict[str, float] = field(default_factory=dict)


def apply_field_of_view(
    labels: np.ndarray, confidence: np.ndarray, view: np.ndarray, outside_view: str
) -> tuple[np.ndarray, np.ndarray]:
    """Outside the camera's view (`view` False) the network can only repeat what scenes usually
    look like (unrelated and all-black images agree there): its confidence becomes 0, so it never
    ranks above a voxel the camera saw, and with "unknown" its label becomes 255."""
    if outside_view not in OUTSIDE_VIEW:
        raise ValueError(f"outside_view must be one of {OUTSIDE_VIEW}, got {outside_view!r}")
    confidence = np.where(view, confidence, np.float32(0.0))
    if outside_view == "unknown":
        labels = np.where(view, labels, np.uint8(255))
    return labels, confidence


def apply_confidence_threshold(labels: np.ndarray, confidence: np.ndarray, threshold: float) -> np.ndarray:
    """Voxels less likely than `threshold` become unknown (255)."""
    if threshold <= 0:
        return labels
    return np.where(confidence < threshold, np.uint8(255), labels)


def run_frame(
    predictor: Predictor,
    image_msg,
    info_msg,
    stamp_ns: int,
    params: NodeParams,
    want_markers: bool,
    want_points: bool,
) -> FrameOutputs:
    """`params`: the node's parameters (grid_frame, grid_to_camera, confidence_threshold,
    publish_confidence, max_marker_cubes, outside_view are used). Raises InputError for unusable messages."""
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    rgb, intrinsics = camera_image(info_msg, image_to_rgb(image_msg), params.image_is_rectified)
    extrinsic = np.asarray(params.grid_to_camera, dtype=np.float64).reshape(4, 4)
    t1 = time.perf_counter()
    try:
        prepared = predictor.prepare(rgb, intrinsics, extrinsic)
    except ValueError as exc:  # the camera model was rejected by the inference checks
        raise InputError(str(exc)) from exc
    t2 = time.perf_counter()
    labels, confidence = predictor.postprocess(predictor.infer(prepared))
    grid = predictor.grid  # the model's grid (its config), published whatever the training files held
    view = camera_view_mask(intrinsics, extrinsic, rgb.shape[:2], grid)
    labels, confidence = apply_field_of_view(labels, confidence, view, params.outside_view)
    labels = apply_confidence_threshold(labels, confidence, params.confidence_threshold)
    t3 = time.perf_counter()
    header = image_msg.header.__class__()
    header.stamp = image_msg.header.stamp
    header.frame_id = params.grid_frame
    conf = quantize_confidence(confidence) if params.publish_confidence else None
    voxels = grid_to_msg(labels, stamp_ns=stamp_ns, frame_id=header.frame_id, grid=grid, confidence=conf)
    t4 = time.perf_counter()
    # Markers and points as serialized bytes (ros/cdr.py): publishing bytes skips building one
    # Python object per cube and rclpy's serialization of them.
    markers = markers_cdr(labels, grid, header, params.max_marker_cubes) if want_markers else None
    t5 = time.perf_counter()
    points = pointcloud_cdr(labels, grid, header) if want_points else None
    t6 = time.perf_counter()
    t.update(decode=t1 - t0, preprocess=t2 - t1, inference=t3 - t2, voxel_message=t4 - t3, markers=t5 - t4,
             points=t6 - t5)  # fmt: skip
    return FrameOutputs(voxels, markers, points, {k: v * 1e3 for k, v in t.items()})
