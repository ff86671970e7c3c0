"""Bird's-eye-view pictures of label grids, their class legend and side-by-side panels (numpy + PIL only)."""

from __future__ import annotations

import numpy as np

from monoocc_ros.classes import CLASS_COLORS_RGB, CLASS_NAMES, IGNORE


def bev_image(labels: np.ndarray, scale: int = 2) -> np.ndarray:
    """Bird's-eye view of an (X, Y, Z) train-id grid: each column shows its highest
    non-empty voxel's class colour (white = all empty, grey = only unknown). Forward (+x)
    points up, left (+y) points left, as a driver sees the map. Returns (X*s, Y*s, 3) uint8."""
    labels = np.asarray(labels)
    occupied = (labels > 0) & (labels != IGNORE)
    z = labels.shape[2]
    top = z - 1 - np.argmax(occupied[:, :, ::-1], axis=2)
    has = occupied.any(axis=2)
    cls = np.take_along_axis(labels, top[:, :, None], axis=2)[:, :, 0]
    img = np.full((*labels.shape[:2], 3), 255, np.uint8)
    img[(labels == IGNORE).all(axis=2)] = 128
    img[has] = CLASS_COLORS_RGB[cls[has]]
    img = img[::-1, ::-1]  # row = reversed x (forward is up), column = reversed y (left is left)
    return np.repeat(np.repeat(np.ascontiguousarray(img), scale, 0), scale, 1)


def legend_image(row: int = 18) -> np.ndarray:
    """The 19 class colours with their names, one per row (RGB uint8)."""
    from PIL import Image, ImageDraw

    legend = Image.new("RGB", (130, 19 * row + 4), "white")
    draw = ImageDraw.Draw(legend)
    for i in range(1, 20):
        y = 4 + (i - 1) * row
        draw.rectangle([4, y, 18, y + row - 6], fill=tuple(int(c) for c in CLASS_COLORS_RGB[i]))
        draw.text((24, y), CLASS_NAMES[i], fill="black")
    return np.asarray(legend)


def side_by_side(*panels: np.ndarray, gap: int = 8) -> np.ndarray:
    """Concatenate RGB panels left to right, centred vertically on a white canvas."""
    h = max(p.shape[0] for p in panels)
    w = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1)
    out = np.full((h, w, 3), 255, np.uint8)
    x = 0
    for p in panels:
        y = (h - p.shape[0]) // 2
        out[y : y + p.shape[0], x : x + p.shape[1]] = p
        x += p.shape[1] + gap
    return out
