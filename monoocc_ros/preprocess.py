"""The one image preprocessing of the package: any camera's image brought to the camera the
networks are trained for, used by the offline Dataset and by `inference.prepare_input` (the node,
`predict`, the ONNX export) alike, so that a frame scores the same offline and through the node.

Why it exists apart: both the Dataset (data/) and the deployment API (inference.py) need it, and
neither should import the other; it needs only numpy and the geometry helpers.

The training camera is KITTI's image_2 (the synthetic world renders with it too), scaled by the
model's `image_scale`. An image is resized so that its focal length matches the training one,
then padded or cropped so that the principal point lands where it was in training; the 3x4
projection follows every step.
"""

from __future__ import annotations

import numpy as np

from monoocc_ros.geometry import IMAGE_HEIGHT, IMAGE_WIDTH, KITTI_CALIB, resize_image_and_projection

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
