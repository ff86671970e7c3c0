"""sensor_msgs/Image and CameraInfo to arrays, with clear errors for what a camera driver can
get wrong. ROS 2's cv_bridge is not installable here (and the PyPI `cv-bridge` is ROS 1's), so the
few encodings a colour camera sends are decoded with numpy."""

from __future__ import annotations

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


def camera_info_to_intrinsics(msg, image_hw: tuple[int, int] | None = None) -> np.ndarray:
    """CameraInfo -> 3x4 intrinsic projection: P when set (rectified images; carries the stereo
    baseline), else [K | 0]. Checks focal lengths, finiteness, and the size against the image."""
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
    if image_hw is not None and (msg.height, msg.width) != (0, 0):
        if (int(msg.height), int(msg.width)) != tuple(image_hw):
            raise InputError(f"image is {image_hw[1]}x{image_hw[0]} but its camera info says {msg.width}x{msg.height}")
    return m
