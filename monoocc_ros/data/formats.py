"""SemanticKITTI / KITTI odometry file formats: read and write, bit-exact.

Every reader checks the file's size against what the format requires and raises
`FormatError` naming the file, its size and the expected size; nothing is silently
truncated or padded. Class ids and colours live in `monoocc_ros.classes`, the grid's
geometry in `monoocc_ros.geometry`.

Voxel files (per frame, 256x256x32 voxels, C order x-major / z fastest):
  .bin .invalid .occluded   one bit per voxel, 8 per byte, most significant bit first
                            (numpy.packbits / unpackbits order)
  .label                    uint16 raw class id per voxel, not packed
Per-point files: velodyne .bin float32 (x, y, z, reflectance); labels .label uint32
(lower 16 bits semantic raw id, upper 16 bits instance id).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

from monoocc_ros.classes import IGNORE, NUM_CLASSES
from monoocc_ros.geometry import SEMANTIC_KITTI_GRID

PathLike = str | os.PathLike
# The grid of SemanticKITTI's voxel files (.bin/.label/.invalid/.occluded): fixed by the format.
# A model's own grid is its config's (`ModelConfig.grid`); training and scoring need them equal.
FILE_GRID = SEMANTIC_KITTI_GRID
GRID_SHAPE = FILE_GRID.shape


class FormatError(ValueError):
    """A file does not have the size or content its format requires."""


def _read_exact(path: PathLike, dtype: npt.DTypeLike, count: int) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    expected = count * np.dtype(dtype).itemsize
    size = path.stat().st_size
    if size != expected:
        raise FormatError(f"{path}: {size} bytes, expected {expected} ({count} x {np.dtype(dtype).name})")
    return np.fromfile(path, dtype=dtype)


def _read_records(path: PathLike, dtype: npt.DTypeLike, record: int) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    size = path.stat().st_size
    unit = record * np.dtype(dtype).itemsize
    if size % unit:
        raise FormatError(
            f"{path}: {size} bytes is not a multiple of {unit} (records of {record} x {np.dtype(dtype).name}); "
            f"truncated? expected {size // unit * unit} or {(size // unit + 1) * unit}"
        )
    return np.fromfile(path, dtype=dtype).reshape(-1, record)


# --- bit-packed voxel masks ------------------------------------------------------------


def pack_bits(mask: np.ndarray) -> np.ndarray:
    """Boolean voxel mask (any shape, C order) -> packed uint8, MSB first."""
    return np.packbits(np.asarray(mask, dtype=bool).reshape(-1))


def unpack_bits(packed: np.ndarray, shape: tuple[int, ...] = GRID_SHAPE) -> np.ndarray:
    n = int(np.prod(shape))
    return np.unpackbits(np.asarray(packed, dtype=np.uint8), count=n).astype(bool).reshape(shape)


def read_voxel_bits(path: PathLike, shape: tuple[int, ...] = GRID_SHAPE) -> np.ndarray:
    """Read a `.bin`/`.invalid`/`.occluded` voxel file -> bool array of `shape`."""
    n = int(np.prod(shape))
    if n % 8:
        raise ValueError(f"grid of {n} voxels is not a whole number of bytes")
    return unpack_bits(_read_exact(path, np.uint8, n // 8), shape)


def write_voxel_bits(path: PathLike, mask: np.ndarray) -> None:
    mask = np.asarray(mask)
    if mask.dtype != bool:
        raise TypeError(f"voxel mask must be bool, got {mask.dtype}")
    pack_bits(mask).tofile(path)


# --- uint16 voxel labels ---------------------------------------------------------------


def read_voxel_labels(path: PathLike, shape: tuple[int, ...] = GRID_SHAPE) -> np.ndarray:
    """Read a voxel `.label` file -> uint16 raw ids of `shape` (map with classes.raw_to_train)."""
    return _read_exact(path, np.uint16, int(np.prod(shape))).reshape(shape)


def write_voxel_labels(path: PathLike, raw: np.ndarray) -> None:
    raw = np.asarray(raw)
    if raw.dtype != np.uint16:
        raise TypeError(f"voxel labels are written as uint16 raw ids, got {raw.dtype}")
    np.ascontiguousarray(raw).tofile(path)


# --- per-point files ---------------------------------------------------------------------


def read_scan(path: PathLike) -> np.ndarray:
    """Velodyne scan -> (N, 4) float32: x, y, z, reflectance (LiDAR frame)."""
    return _read_records(path, np.float32, 4)


def write_scan(path: PathLike, points: np.ndarray) -> None:
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 4:
        raise ValueError(f"scan must be (N, 4) x, y, z, reflectance; got {points.shape}")
    np.ascontiguousarray(points, dtype=np.float32).tofile(path)


def read_point_labels(path: PathLike, num_points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-point `.label` -> (semantic raw id uint16, instance id uint16). With `num_points`,
    the count must match the scan's."""
    data = _read_records(path, np.uint32, 1)[:, 0]
    if num_points is not None and data.size != num_points:
        raise FormatError(
            f"{path}: {data.size} labels ({data.size * 4} bytes), expected {num_points} "
            f"({num_points * 4} bytes) to match the scan"
        )
    return (data & 0xFFFF).astype(np.uint16), (data >> 16).astype(np.uint16)


def write_point_labels(path: PathLike, semantic: np.ndarray, instance: np.ndarray | None = None) -> None:
    semantic = np.asarray(semantic).astype(np.uint32)
    inst = np.zeros_like(semantic) if instance is None else np.asarray(instance).astype(np.uint32)
    ((inst << 16) | (semantic & 0xFFFF)).astype(np.uint32).tofile(path)


# --- calib.txt, poses.txt, times.txt ----------------------------------------------------


CALIB_SIZES = {"P0": 12, "P1": 12, "P2": 12, "P3": 12, "Tr": 12, "R0_rect": 9, "Tr_velo_to_cam": 12}


def read_calib(path: PathLike, require_tr: bool = True) -> dict[str, np.ndarray]:
    """calib.txt -> {'P2' (and whichever of 'P0', 'P1', 'P3' it has): (3, 4), 'Tr': (4, 4) LiDAR ->
    rectified camera 0}.

    Reads KITTI odometry / SemanticKITTI files (P0..P3, Tr), files with only P2 and Tr, and the
    KITTI object benchmark's format (P0..P3, R0_rect, Tr_velo_to_cam, Tr_imu_to_velo), whose
    LiDAR -> rectified camera transform is R0_rect @ Tr_velo_to_cam. Other keys are ignored.
    `require_tr=False` accepts a file without a LiDAR transform (image-only uses)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    raw: dict[str, np.ndarray] = {}
    for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        key, _, values = line.partition(":")
        key = key.strip()
        if key not in CALIB_SIZES:
            continue  # Tr_imu_to_velo, calib_time, ...: not needed here
        try:
            nums = np.array([float(v) for v in values.split()], dtype=np.float64)
        except ValueError:
            raise FormatError(f"{path}:{lineno}: {key} is not numbers: {line.strip()[:60]!r}") from None
        if nums.size != CALIB_SIZES[key]:
            raise FormatError(f"{path}:{lineno}: {key} has {nums.size} values, expected {CALIB_SIZES[key]}")
        raw[key] = nums.reshape(3, -1)
    if "P2" not in raw:
        raise FormatError(f"{path}: no P2 (the left colour camera's 3x4 projection); found {sorted(raw) or 'nothing'}")
    out: dict[str, np.ndarray] = {k: raw[k] for k in ("P0", "P1", "P2", "P3") if k in raw}
    if "Tr" in raw:
        tr = raw["Tr"]
    elif "Tr_velo_to_cam" in raw:
        tr = raw.get("R0_rect", np.eye(3)) @ raw["Tr_velo_to_cam"]
    elif require_tr:
        raise FormatError(f"{path}: no LiDAR -> camera transform; expected Tr (odometry) or Tr_velo_to_cam (object)")
    else:
        return out
    out["Tr"] = np.vstack([tr, [0.0, 0.0, 0.0, 1.0]])
    return out


def write_calib(path: PathLike, calib: dict[str, np.ndarray]) -> None:
    lines = []
    for key in ("P0", "P1", "P2", "P3", "Tr"):
        m = np.asarray(calib[key], dtype=np.float64)[:3, :4]
        lines.append(f"{key}: " + " ".join(repr(float(v)) for v in m.reshape(-1)))
    Path(path).write_text("\n".join(lines) + "\n")


def read_poses(path: PathLike) -> np.ndarray:
    """poses.txt -> (N, 4, 4) camera-0 poses (camera of frame i -> camera of frame 0)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        vals = line.split()
        if len(vals) != 12:
            raise FormatError(f"{path}:{lineno}: {len(vals)} values, expected 12 (a 3x4 pose)")
        rows.append([float(v) for v in vals])
    poses = np.tile(np.eye(4), (len(rows), 1, 1))
    poses[:, :3, :] = np.asarray(rows, dtype=np.float64).reshape(-1, 3, 4)
    return poses


def write_poses(path: PathLike, poses: np.ndarray) -> None:
    poses = np.asarray(poses, dtype=np.float64)
    Path(path).write_text("".join(" ".join(repr(float(v)) for v in p[:3].reshape(-1)) + "\n" for p in poses))


def read_times(path: PathLike) -> np.ndarray:
    """times.txt -> (N,) float64 seconds since the start of the sequence."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return np.array([float(v) for v in path.read_text().split()], dtype=np.float64)
    except ValueError as exc:
        raise FormatError(f"{path}: expected one number per line") from exc


def write_times(path: PathLike, times: np.ndarray) -> None:
    Path(path).write_text("".join(f"{float(t)!r}\n" for t in np.asarray(times, dtype=np.float64)))


# --- label-grid downsampling -------------------------------------------------------------


def downsample_labels(labels: np.ndarray, factor: int) -> np.ndarray:
    """Downsample a train-id grid (X, Y, Z) uint8 by `factor` with the official SSC rule
    (MonoScene / SSC `_downsample_label`): a block whose empty (0) plus ignored (255)
    voxels are more than 95% of it becomes 0 if empties outnumber ignores, else 255;
    otherwise it takes the most frequent semantic label 1..19 (ties: the smallest id)."""
    labels = np.asarray(labels)
    if labels.ndim != 3 or any(s % factor for s in labels.shape):
        raise ValueError(f"label grid {labels.shape} is not 3D or not divisible by {factor}")
    if factor == 1:
        return labels.copy()
    bad = (labels >= NUM_CLASSES) & (labels != IGNORE)
    if bad.any():
        raise ValueError(f"labels must be train ids 0..{NUM_CLASSES - 1} or {IGNORE}")
    x, y, z = (s // factor for s in labels.shape)
    blocks = labels.reshape(x, factor, y, factor, z, factor).transpose(0, 2, 4, 1, 3, 5).reshape(-1, factor**3)
    compact = np.where(blocks == IGNORE, NUM_CLASSES, blocks).astype(np.int64)  # 255 -> 20
    nblocks = blocks.shape[0]
    counts = np.bincount(
        (np.arange(nblocks)[:, None] * (NUM_CLASSES + 1) + compact).reshape(-1),
        minlength=nblocks * (NUM_CLASSES + 1),
    ).reshape(nblocks, NUM_CLASSES + 1)
    n_empty, n_ignore = counts[:, 0], counts[:, NUM_CLASSES]
    mostly_empty = (n_empty + n_ignore) > 0.95 * factor**3
    semantic_mode = np.argmax(counts[:, 1:NUM_CLASSES], axis=1) + 1
    out = np.where(mostly_empty, np.where(n_empty > n_ignore, 0, IGNORE), semantic_mode)
    return out.astype(np.uint8).reshape(x, y, z)
