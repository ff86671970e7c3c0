"""sensor_msgs/Image and CameraInfo to arrays, with clear errors for what a camera driver can
get wrong. ROS 2's cv_bridge is not installable here (and the PyPI `cv-bridge` is ROS 1's), so the
few encodings a colour camera sends are decoded with numpy.

The camera model follows sensor_msgs/CameraInfo and REP-104:
- a distorted image (non-zero D: plumb_bob, rational_polynomial, equidistant) is rectified with
  OpenCV's undistortion maps (built once per calibration and size, then a remap per frame) into
  the image P describes; images that are already rectified (D zero, or image_rect) pass as they are;
- binning and a region of interest are applied to P: K, D, R and P always describe the full,
  unbinned sensor, and the image is the ROI, binned.
"""

from __future__ import annotations

import functools

import numpy as np

SUPPORTED_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
MAX_PIXELS = 4096 * 4096  # refuse absurd images instead of allocating gigabytes


class InputError(ValueError):
    """A message the node cannot use; the text says what was wrong and what was expected."""


def image_to_rgb(msg) -> np.ndarray:
    """Image message -> (H, W, 3) uint8 RGB (a copy; the message buffer is not kept)."""
    enc = msg.encoding.lower()
    if enc not in _CHANNELS:
        raise InputError(f"image encoding {msg.encoding!r} is not supported; expected one of {SUPPORTED_ENCODINGS}")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h == 0 or w == 0:
        raise InputError(f"image is empty ({w}x{h})")
    if h * w > MAX_PIXELS:
        raise InputError(f"image of {w}x{h} px exceeds the limit of {MAX_PIXELS} px")
    c = _CHANNELS[enc]
    if step < w * c:
        raise InputError(f"image step {step} is smaller than width*channels = {w * c} for {enc}")
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size != step * h:
        raise InputError(f"image data has {data.size} bytes, expected step*height = {step}*{h} = {step * h}")
    pixels = data.reshape(h, step)[:, : w * c].reshape(h, w, c)
    if enc == "mono8":
        return np.repeat(pixels, 3, axis=2)
    if enc.startswith("bgr"):
        return np.ascontiguousarray(pixels[:, :, 2::-1])
    return np.ascontiguousarray(pixels[:, :, :3])


DISTORTION_MODELS = ("plumb_bob", "rational_polynomial", "equidistant")


def camera_image(msg_info, rgb: np.ndarray, rectified: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The node's camera model: (rectified RGB image, its 3x4 projection) from a decoded image and
    its CameraInfo. Distortion removed (unless the image is `rectified` already: image_rect is
    published beside the camera's original CameraInfo, whose D is not zero), ROI and binning
    applied (module docstring)."""
    bx, by = max(int(msg_info.binning_x), 1), max(int(msg_info.binning_y), 1)
    roi = msg_info.roi
    roi_full = int(roi.width) == 0 or int(roi.height) == 0
    full_hw = (int(msg_info.height), int(msg_info.width))
    if full_hw != (0, 0):  # the image must be the ROI (or the full sensor), binned
        h, w = (int(roi.height), int(roi.width)) if not roi_full else full_hw
        want = (h // by, w // bx)
        if rgb.shape[:2] != want:
            what = f"ROI {w}x{h}" if not roi_full else f"{w}x{h}"
            if (bx, by) != (1, 1):
                what += f" binned {bx}x{by} = {want[1]}x{want[0]}"
            raise InputError(f"image is {rgb.shape[1]}x{rgb.shape[0]} but its camera info says {what}")
    p = camera_info_to_intrinsics(msg_info)
    d = np.asarray(msg_info.d, dtype=np.float64)
    if not np.isfinite(d).all():
        raise InputError("camera info contains NaN or infinity in D (distortion coefficients)")
    if d.size and np.any(d != 0) and not rectified:
        if (bx, by) != (1, 1) or not roi_full:
            raise InputError("distorted images with binning or a ROI are not supported; publish the rectified image")
        rgb = rectify(rgb, msg_info)
    if not roi_full:
        p = np.array([[1.0, 0.0, -float(roi.x_offset)], [0.0, 1.0, -float(roi.y_offset)], [0.0, 0.0, 1.0]]) @ p
    if (bx, by) != (1, 1):
        # Pixel centres at integer coordinates: binned pixel j covers sensor pixels b*j .. b*j+b-1.
        p = np.array([[1.0 / bx, 0.0, 0.5 / bx - 0.5], [0.0, 1.0 / by, 0.5 / by - 0.5], [0.0, 0.0, 1.0]]) @ p
    return rgb, p


def rectify(rgb: np.ndarray, msg_info) -> np.ndarray:
    """Undistort `rgb` into the image CameraInfo's P describes (bilinear)."""
    import cv2

    model = str(msg_info.distortion_model)
    if model not in DISTORTION_MODELS:
        raise InputError(f"distortion model {model!r} is not supported; expected one of {DISTORTION_MODELS}")
    key = (model, tuple(msg_info.k), tuple(msg_info.d), tuple(msg_info.r), tuple(msg_info.p), rgb.shape[:2])
    map1, map2 = _undistort_maps(*key)
    return cv2.remap(rgb, map1, map2, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


@functools.lru_cache(maxsize=4)
def _undistort_maps(model: str, k: tuple, d: tuple, r: tuple, p: tuple, hw: tuple[int, int]):
    import cv2

    k_, d_ = np.asarray(k, np.float64).reshape(3, 3), np.asarray(d, np.float64)
    r_ = np.asarray(r, np.float64).reshape(3, 3) if len(r) == 9 and any(r) else np.eye(3)
    p_ = np.asarray(p, np.float64).reshape(3, 4)[:, :3] if len(p) == 12 and p[0] else k_
    size = (int(hw[1]), int(hw[0]))
    if model == "equidistant":
        if d_.size != 4:
            raise InputError(f"equidistant distortion needs 4 coefficients, got {d_.size}")
        return cv2.fisheye.initUndistortRectifyMap(k_, d_, r_, p_, size, cv2.CV_16SC2)
    return cv2.initUndistortRectifyMap(k_, d_, r_, p_, size, cv2.CV_16SC2)


def camera_info_to_intrinsics(msg) -> np.ndarray:
    """CameraInfo -> 3x4 intrinsic projection: P when set (rectified images; carries the stereo
    baseline), else [K | 0]. Checks focal lengths and finiteness (`camera_image` checks the size
    against the image, ROI and binning included)."""
    p = np.asarray(msg.p, dtype=np.float64).reshape(3, 4) if len(msg.p) == 12 else np.zeros((3, 4))
    k = np.asarray(msg.k, dtype=np.float64).reshape(3, 3) if len(msg.k) == 9 else np.zeros((3, 3))
    if not (np.isfinite(p).all() and np.isfinite(k).all()):
        raise InputError("camera info contains NaN or infinity in K or P")
    if p[0, 0] != 0.0:
        m = p
    elif k[0, 0] != 0.0:
        m = np.concatenate([k, np.zeros((3, 1))], 1)
    else:
        raise InputError("camera info has zero focal length in both P and K; expected a calibrated camera")
    if m[0, 0] <= 0 or m[1, 1] <= 0:
        raise InputError(f"camera info focal lengths must be positive, got fx={m[0, 0]}, fy={m[1, 1]}")
    return m
