"""Grid geometry, projections and pose algebra (pure numpy; no torch, no ROS).

The SemanticKITTI grid is the one source of truth for the scene's extent: x in [0, 51.2],
y in [-25.6, 25.6], z in [-2.0, 4.4] metres in the LiDAR frame, 0.2 m voxels, 256x256x32,
flattened x-major with z fastest (C order).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GridSpec:
    """An axis-aligned voxel grid: `origin` is the minimum corner (metres), `shape` (X, Y, Z)."""

    origin: tuple[float, float, float]
    resolution: float
    shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        if not (self.resolution > 0 and np.isfinite(self.resolution)):
            raise ValueError(f"grid resolution must be a positive number, got {self.resolution}")
        if len(self.shape) != 3 or any(int(s) <= 0 for s in self.shape):
            raise ValueError(f"grid shape must be three positive sizes, got {self.shape}")
        if len(self.origin) != 3 or not np.all(np.isfinite(self.origin)):
            raise ValueError(f"grid origin must be three finite numbers, got {self.origin}")
        object.__setattr__(self, "origin", tuple(float(v) for v in self.origin))
        object.__setattr__(self, "shape", tuple(int(v) for v in self.shape))
        object.__setattr__(self, "resolution", float(self.resolution))

    @property
    def num_voxels(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]

    @property
    def upper(self) -> tuple[float, float, float]:
        """The maximum corner (metres)."""
        return tuple(o + s * self.resolution for o, s in zip(self.origin, self.shape, strict=True))

    def scaled(self, factor: int) -> GridSpec:
        """The same physical extent with voxels `factor` times larger."""
        if any(s % factor for s in self.shape):
            raise ValueError(f"grid shape {self.shape} is not divisible by {factor}")
        return GridSpec(self.origin, self.resolution * factor, tuple(s // factor for s in self.shape))

    def voxel_centers(self) -> np.ndarray:
        """Centres of all voxels, (X, Y, Z, 3) float32, in the grid's frame."""
        axes = [
            (np.arange(n, dtype=np.float64) + 0.5) * self.resolution + o
            for n, o in zip(self.shape, self.origin, strict=True)
        ]
        return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).astype(np.float32)

    def points_to_indices(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Voxel indices (N, 3) int64 of points (N, >=3), and a mask of points inside."""
        pts = np.asarray(points)[:, :3]
        idx = np.floor((pts - np.asarray(self.origin)) / self.resolution).astype(np.int64)
        inside = np.all((idx >= 0) & (idx < np.asarray(self.shape)), axis=1)
        return idx, inside


SEMANTIC_KITTI_GRID = GridSpec(origin=(0.0, -25.6, -2.0), resolution=0.2, shape=(256, 256, 32))
