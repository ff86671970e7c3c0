"""The inference API shared by the ROS node, offline evaluation and the benchmarks:

    predictor = Predictor.from_checkpoint("models/student_tiny.pt", device="auto")
    labels, confidence = predictor.predict(image, intrinsics, extrinsic)

`image` is any (H, W, 3) uint8 RGB image; `intrinsics` its 3x3 K or 3x4 P (a CameraInfo's P
carries a stereo baseline in P[:, 3]); `extrinsic` the 4x4 transform from the grid frame to that
camera's frame. The image is rescaled so that its focal length matches the one the model was
trained with (KITTI's 718.856 px times the config's `image_scale`), then padded or cropped so the
principal point sits where it did in training; the projection is adjusted with every step. So a
camera unlike KITTI's still gets geometrically right voxels (within the training field of view).

Output: `labels` (256, 256, 32) uint8 train ids on the SemanticKITTI grid (a coarser model's
output is repeated to the full grid), `confidence` (256, 256, 32) float32 softmax probability of
the predicted label.

Devices: "auto" takes CUDA when available, else the CPU; "cuda" without CUDA is an error, never a
silent fallback. `half_precision` runs the network under CUDA autocast (fp16); it is an error on
the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from monoocc_ros.geometry import (
    IMAGE_HEIGHT,
    IMAGE_WIDTH,
    KITTI_CALIB,
    SEMANTIC_KITTI_GRID,
    resize_image_and_projection,
    to_homogeneous,
)
from monoocc_ros.model.config import ModelConfig

# The camera models are trained for: KITTI's image_2 (the synthetic world renders with it too).
TRAIN_FOCAL = float(KITTI_CALIB["P2"][0, 0])  # px
TRAIN_CENTER = (float(KITTI_CALIB["P2"][0, 2]), float(KITTI_CALIB["P2"][1, 2]))  # px (cx, cy)
TRAIN_SIZE = (IMAGE_HEIGHT, IMAGE_WIDTH)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but CUDA is not available (use 'cpu' or 'auto')")
        return torch.device(device)
    if device == "cpu":
        return torch.device("cpu")
    raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")


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
    return round(TRAIN_SIZE[0] * cfg.image_scale), round(TRAIN_SIZE[1] * cfg.image_scale)


def prepare_input(cfg: ModelConfig, image: np.ndarray, intrinsics: np.ndarray, extrinsic: np.ndarray) -> Prepared:
    """Rescale to the training focal length, pad/crop to the training size with the principal
    point where training had it, and compose the projection grid -> network pixels."""
    k, e = validate_camera(image, intrinsics, extrinsic)
    out_h, out_w = network_input_size(cfg)
    # Resize so fx matches training (fy follows with the same factor: square-ish pixels).
    f = TRAIN_FOCAL * cfg.image_scale / k[0, 0]
    h, w = image.shape[:2]
    new_h, new_w = max(1, round(h * f)), max(1, round(w * f))
    img, p = resize_image_and_projection(np.ascontiguousarray(image), k @ e, (new_h, new_w))
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
    return Prepared(
        image=canvas.transpose(2, 0, 1).astype(np.float32) / 255.0,
        projection=(shift @ p).astype(np.float32),
    )


def expand_to_full_grid(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(X, Y, Z) at a coarser grid -> the SemanticKITTI grid by repeating each voxel."""
    if factor == 1:
        return x
    return x.repeat_interleave(factor, 0).repeat_interleave(factor, 1).repeat_interleave(factor, 2)


class Predictor:
    def __init__(self, model: torch.nn.Module, device: str = "auto", half_precision: bool = False) -> None:
        cfg: ModelConfig = model.cfg
        if cfg.is_teacher:
            raise ValueError(
                f"{cfg.name} is a multi-frame teacher ({cfg.frame_offsets}); the node runs monocular students"
            )
        self.device = resolve_device(device)
        if half_precision and self.device.type != "cuda":
            raise ValueError("half_precision needs CUDA; the CPU runs float32")
        self.cfg, self.half = cfg, half_precision
        self.model = model.to(self.device).eval()

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "auto", half_precision: bool = False) -> Predictor:
        from monoocc_ros.checkpoint import build_model_from_checkpoint

        model, _ = build_model_from_checkpoint(path)
        return cls(model, device, half_precision)

    @torch.inference_mode()
    def logits(self, prepared: Prepared) -> torch.Tensor:
        """(1, 20, X, Y, Z) float32 logits at the model's output grid."""
        img = torch.from_numpy(prepared.image)[None, None].to(self.device)
        proj = torch.from_numpy(prepared.projection)[None, None].to(self.device)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.half):
            out = self.model(img, proj)["logits"]
        return out.float()

    def predict(
        self, image: np.ndarray, intrinsics: np.ndarray, extrinsic: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        prepared = prepare_input(self.cfg, image, intrinsics, extrinsic)
        return self.postprocess(self.logits(prepared))

    def postprocess(self, logits: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        prob = logits[0].softmax(0)
        confidence, labels = prob.max(0)
        factor = SEMANTIC_KITTI_GRID.shape[0] // labels.shape[0]
        labels = expand_to_full_grid(labels.to(torch.uint8), factor)
        confidence = expand_to_full_grid(confidence, factor)
        return labels.cpu().numpy(), confidence.cpu().numpy().astype(np.float32)
