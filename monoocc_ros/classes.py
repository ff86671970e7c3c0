"""The class table: the one source of truth for SemanticKITTI class names, ids and colours.

Train ids 0..19 index `CLASS_NAMES`; 0 is empty (free space) and 255 is "ignore/unknown".
Raw ids are the SemanticKITTI label ids found in `.label` files.
"""

from __future__ import annotations

from typing import Final

import numpy as np

CLASS_TABLE_ID: Final = "semantickitti20"
IGNORE: Final = 255
NUM_CLASSES: Final = 20

CLASS_NAMES: Final[tuple[str, ...]] = (
    "empty",
    "car",
    "bicycle",
    "motorcycle",
    "truck",
    "other-vehicle",
    "person",
    "bicyclist",
    "motorcyclist",
    "road",
    "parking",
    "sidewalk",
    "other-ground",
    "building",
    "fence",
    "vegetation",
    "trunk",
    "terrain",
    "pole",
    "traffic-sign",
)

# raw id -> train id (semantic-kitti.yaml `learning_map`, SSC variant: 0 = empty).
# Every raw id not listed maps to IGNORE.
LEARNING_MAP: Final[dict[int, int]] = {
    0: 0,
    10: 1,
    252: 1,
    11: 2,
    15: 3,
    18: 4,
    258: 4,
    13: 5,
    16: 5,
    20: 5,
    256: 5,
    257: 5,
    259: 5,
    30: 6,
    254: 6,
    31: 7,
    253: 7,
    32: 8,
    255: 8,
    40: 9,
    60: 9,
    44: 10,
    48: 11,
    49: 12,
    50: 13,
    51: 14,
    70: 15,
    71: 16,
    72: 17,
    80: 18,
    81: 19,
}

# train id -> raw id (semantic-kitti.yaml `learning_map_inv`), used to write predictions.
LEARNING_MAP_INV: Final[dict[int, int]] = {
    0: 0,
    1: 10,
    2: 11,
    3: 15,
    4: 18,
    5: 20,
    6: 30,
    7: 31,
    8: 32,
    9: 40,
    10: 44,
    11: 48,
    12: 49,
    13: 50,
    14: 51,
    15: 70,
    16: 71,
    17: 72,
    18: 80,
    19: 81,
}

# RGB colours: semantic-kitti.yaml `color_map` (stored there as BGR) of each class's
# representative raw id, converted to RGB. Empty is black and never drawn.
CLASS_COLORS_RGB: Final[np.ndarray] = np.array(
    [
        (0, 0, 0),
        (100, 150, 245),
        (100, 230, 245),
        (30, 60, 150),
        (80, 30, 180),
        (0, 0, 255),
        (255, 30, 30),
        (255, 40, 200),
        (150, 30, 90),
        (255, 0, 255),
        (255, 150, 255),
        (75, 0, 75),
        (175, 0, 75),
        (255, 200, 0),
        (255, 120, 50),
        (0, 175, 0),
        (135, 60, 0),
        (150, 240, 80),
        (255, 240, 150),
        (255, 0, 0),
    ],
    dtype=np.uint8,
)
CLASS_COLORS_RGB.setflags(write=False)

# Class frequencies on SemanticKITTI train (MonoScene), empty first: the source of the
# class-weighted cross-entropy weights.
CLASS_FREQUENCIES: Final[np.ndarray] = np.array(
    [
        5.41773033e9,
        1.5783539e7,
        1.25136e5,
        1.18809e5,
        6.46799e5,
        8.21951e5,
        2.62978e5,
        2.83696e5,
        2.0475e5,
        6.1688703e7,
        4.502961e6,
        4.488365e7,
        2.269923e6,
        5.6840218e7,
        1.5719652e7,
        1.58442623e8,
        2.061623e6,
        3.6970522e7,
        1.151988e6,
        3.34146e5,
    ]
)
CLASS_FREQUENCIES.setflags(write=False)

# Small objects as grouped in the MonoOcc paper (bicycle, motorcycle, traffic-sign).
SMALL_OBJECT_CLASSES: Final[tuple[int, ...]] = (2, 3, 19)


def _lut(mapping: dict[int, int], size: int, default: int) -> np.ndarray:
    lut = np.full(size, default, dtype=np.uint8 if size <= 256 else np.uint16)
    for src, dst in mapping.items():
        lut[src] = dst
    lut.setflags(write=False)
    return lut


# Lookup tables so that mapping a 2M-voxel grid is one fancy-indexing operation.
_RAW_TO_TRAIN_LUT: Final = _lut(LEARNING_MAP, 1 << 16, IGNORE).astype(np.uint8)
_TRAIN_TO_RAW_LUT: Final = _lut({**LEARNING_MAP_INV, IGNORE: 0}, 256, 0).astype(np.uint16)


def raw_to_train(raw: np.ndarray) -> np.ndarray:
    """Map raw SemanticKITTI ids (any integer array; upper 16 bits, the instance id, are
    dropped) to train ids 0..19, or 255 for ids outside the learning map."""
    raw = np.asarray(raw)
    if not np.issubdtype(raw.dtype, np.integer):
        raise TypeError(f"raw labels must be integers, got dtype {raw.dtype}")
    if raw.dtype == np.uint16:  # voxel .label files: no instance bits to drop, index directly (faster)
        return _RAW_TO_TRAIN_LUT[raw]
    return _RAW_TO_TRAIN_LUT[(raw.astype(np.int64) & 0xFFFF)]


def train_to_raw(train: np.ndarray) -> np.ndarray:
    """Map train ids back to raw ids (learning_map_inv); 255 becomes 0 (unlabeled)."""
    train = np.asarray(train)
    if not np.issubdtype(train.dtype, np.integer):
        raise TypeError(f"train labels must be integers, got dtype {train.dtype}")
    bad = (train < 0) | ((train >= NUM_CLASSES) & (train != IGNORE))
    if bad.any():
        raise ValueError(f"train ids must be 0..{NUM_CLASSES - 1} or {IGNORE}; got {np.unique(train[bad])[:10]}")
    return _TRAIN_TO_RAW_LUT[train.astype(np.int64)]


def class_weights(frequencies: np.ndarray = CLASS_FREQUENCIES) -> np.ndarray:
    """Cross-entropy class weights 1 / ln(f + 0.001) on raw voxel counts f, as MonoScene
    (counts, not normalised frequencies: ln of a fraction would make weights negative).
    Rare classes get about twice the weight of empty space."""
    f = np.asarray(frequencies, dtype=np.float64)
    if f.shape != (NUM_CLASSES,) or (f <= 1.0).any():
        raise ValueError(f"expected {NUM_CLASSES} voxel counts > 1, got shape {f.shape}")
    return 1.0 / np.log(f + 0.001)
