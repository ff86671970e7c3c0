"""The one image preprocessing of the package: any camera's image brought to the camera the
networks are trained for, used by the offline Dataset and by `prepare_input` (the node,
`predict`, the ONNX export, through `inference`) alike, so that a frame scores the same offline
and through the node. The network-input contract (`Prepared`, `network_input_size`) lives here
too, below both the deployment API (inference.py) and the ONNX exporter, which share it.

Why it exists apart: both the Dataset (data/) and the deployment API (inference.py) need it, and
neither should import the other; it needs only numpy and the geometry helpers.

The training camera is KITTI's image_2 (the synthetic world renders with it too), scaled by the
model's `image_scale`. An image is resized so that its focal length matches the training one,
then padded or cropped so that the principal point lands where it was in training; the 3x4
projection follows every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from monoocc_ros.geometry import IMAGE_HEIGHT, IMAGE_WIDTH, KITTI_CALIB, resize_image_and_projection, to_homogeneous

if TYPE_CHECKING:
    from monoocc_ros.model.config import ModelConfig

TRAIN_FOCAL = float(KITTI_CALIB["P2"][0, 0])  # px
TRAIN_CENTER = (float(KITTI_CALIB["P2"][0, 2]), float(KITTI_CALIB["P2"][1, 2]))  # px (cx, cy)
TRAIN_SIZE = (IMAGE_HEIGHT, IMAGE_WIDTH)


def training_input_size(image_scale: float) -> tuple[int, int]:
    """(H, W) of the training image scaled by `image_scale`: a network's input size."""
    return round(TRAIN_SIZE[0] * image_scale), round(TRAIN_SIZE[1] * image_scale)


def fit_to_training_camera(
    image: np.ndarray,
    intrinsics: np.ndarray,
    projection: np.ndarray,
    out_size: tuple[int, int],
    image_scale: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 image of a camera with 3x4 `intrinsics`, and a 3x4 `projection` into it
    (e.g. intrinsics @ extrinsic) -> (out_size canvas uint8, the projection into the canvas)."""
    k = np.asarray(intrinsics, dtype=np.float64)
    out_h, out_w = out_size
    # Resize so fx matches training (fy follows with the same factor: square-ish pixels).
    f = TRAIN_FOCAL * image_scale / k[0, 0]
    h, w = image.shape[:2]
    new_h, new_w = max(1, round(h * f)), max(1, round(w * f))
    img, p = resize_image_and_projection(np.ascontiguousarray(image), projection, (new_h, new_w))
    # Shift so the principal point lands on the training one (pixel-centre convention).
    cx_target = (TRAIN_CENTER[0] + 0.5) * (out_w / TRAIN_SIZE[1]) - 0.5
    cy_target = (TRAIN_CENTER[1] + 0.5) * (out_h / TRAIN_SIZE[0]) - 0.5
    sx, sy = new_w / w, new_h / h  # the factors actually applied (after rounding the size)
    cx_now = sx * k[0, 2] + 0.5 * (sx - 1)
    cy_now = sy * k[1, 2] + 0.5 * (sy - 1)
    dx, dy = round(cx_target - cx_now), round(cy_target - cy_now)
    canvas = np.zeros((out_h, out_w, 3), np.uint8)
    # destination window of the shifted image, clipped to the canvas
    x0, y0 = max(dx, 0), max(dy, 0)
    x1, y1 = min(dx + img.shape[1], out_w), min(dy + img.shape[0], out_h)
    if x1 > x0 and y1 > y0:
        canvas[y0:y1, x0:x1] = img[y0 - dy : y1 - dy, x0 - dx : x1 - dx]
    shift = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])
    return canvas, shift @ p


def validate_camera(image: np.ndarray, intrinsics: np.ndarray, extrinsic: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check inputs and return (3x4 intrinsic projection P, 4x4 extrinsic). Raises ValueError
    with what was wrong and what was expected."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    if image.shape[0] < 16 or image.shape[1] < 16:
        raise ValueError(f"image of {image.shape[1]}x{image.shape[0]} px is too small (need at least 16x16)")
    k = np.asarray(intrinsics, dtype=np.float64)
    if k.shape == (3, 3):
        k = np.concatenate([k, np.zeros((3, 1))], 1)
    if k.shape != (3, 4):
        raise ValueError(f"intrinsics must be a 3x3 K or 3x4 P matrix, got shape {k.shape}")
    if not np.isfinite(k).all():
        raise ValueError("intrinsics contain NaN or infinity")
    if k[0, 0] <= 0 or k[1, 1] <= 0:
        raise ValueError(f"focal lengths must be positive, got fx={k[0, 0]}, fy={k[1, 1]}")
    if abs(k[2, 2] - 1.0) > 1e-6 or abs(k[2, 0]) > 1e-9 or abs(k[2, 1]) > 1e-9:
        raise ValueError(f"intrinsics' last row must be [0, 0, 1, *], got {k[2].tolist()}")
    e = np.asarray(extrinsic, dtype=np.float64)
    if e.shape not in ((3, 4), (4, 4)) or not np.isfinite(e).all():
        raise ValueError(f"extrinsic must be a finite 3x4 or 4x4 grid-to-camera transform, got shape {e.shape}")
    e = to_homogeneous(e)
    r = e[:3, :3]
    if not np.allclose(r @ r.T, np.eye(3), atol=1e-3):
        raise ValueError("extrinsic rotation is not orthonormal")
    return k, e


@dataclass(frozen=True)
class Prepared:
    """Network input: image (3, h, w) float32 in [0, 1] and projection (3, 4) float32."""

    image: np.ndarray
    projection: np.ndarray


def network_input_size(cfg: ModelConfig) -> tuple[int, int]:
    """(H, W) the network sees: the training image scaled by the config's image_scale."""
    return training_input_size(cfg.image_scale)


def prepare_input(
    cfg: ModelConfig,
    image: np.ndarray,
    intrinsics: np.ndarray,
    extrinsic: np.ndarray,
    size: tuple[int, int] | None = None,
) -> Prepared:
    """Rescale to the training focal length, pad/crop to the network input size (default the
    config's; an ONNX export may fix another) with the principal point at the same relative
    place as in training, and compose the projection grid -> network pixels. The same
    `preprocess.fit_to_training_camera` prepares the Dataset's images, so offline and node
    scores of one frame are identical."""
    k, e = validate_camera(image, intrinsics, extrinsic)
    canvas, projection = fit_to_training_camera(image, k, k @ e, size or network_input_size(cfg), cfg.image_scale)
    return Prepared(
        image=canvas.transpose(2, 0, 1).astype(np.float32) / 255.0,
        projection=projection.astype(np.float32),
    )
