"""Monocular depth metrics of the network's depth head against the frame's LiDAR depth.

Why: the depth head places the query proposals and lifts the 2D semantics, so when a model's
occupancy is poor the first question is whether its depth is. `monoocc eval` prints these beside
the SSC scores so the question is answered by a command, not a one-off script.

The definitions are the standard ones of monocular depth estimation (Eigen et al. 2014; the
KITTI depth benchmark): on the pixels with a LiDAR return (depth > 0) no farther than the
model's `depth_max` (its head cannot predict beyond it), per frame

  AbsRel = mean(|d - g| / g),  RMSE = sqrt(mean((d - g)^2)) in metres,
  delta1 = percentage of pixels with max(d / g, g / d) < 1.25,

then averaged over the frames that have such pixels. Predictions and targets are compared at
the Dataset's sparse-label resolution (the depth head's output, 1/4 of the network input).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

DELTA = 1.25  # the threshold of delta1


@dataclass(frozen=True)
class DepthScores:
    abs_rel: float
    rmse: float  # metres
    delta1: float  # percent
    frames: int  # frames with at least one evaluated pixel
    pixels: int  # evaluated pixels over all frames
    max_depth: float  # metres; farther LiDAR returns are left out

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        return (
            f"depth ({self.pixels} LiDAR pixels <= {self.max_depth:g} m in {self.frames} frames): "
            f"AbsRel {self.abs_rel:.3f}, RMSE {self.rmse:.2f} m, delta<{DELTA} {self.delta1:.1f} %"
        )


class DepthMetrics:
    """Accumulates per-frame depth errors; `scores()` at the end."""

    def __init__(self) -> None:
        self._abs_rel: list[float] = []
        self._sq: list[float] = []
        self._delta: list[float] = []
        self._pixels = 0
        self._max_depth: float | None = None

    def update(self, pred: np.ndarray, target: np.ndarray, max_depth: float) -> None:
        """Add one frame: `pred` and `target` (H, W) metres, `target` 0 where no LiDAR return."""
        pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
        if pred.shape != target.shape:
            raise ValueError(f"depth prediction shape {pred.shape} != LiDAR depth shape {target.shape}")
        if self._max_depth is not None and max_depth != self._max_depth:
            raise ValueError(f"max_depth {max_depth} differs from the earlier frames' {self._max_depth}")
        self._max_depth = max_depth
        valid = (target > 0) & (target <= max_depth)
        if not valid.any():
            return
        d, g = np.maximum(pred[valid], 1e-6), target[valid]  # a zero prediction would make g / d infinite
        self._abs_rel.append(float(np.mean(np.abs(d - g) / g)))
        self._sq.append(float(np.sqrt(np.mean((d - g) ** 2))))
        self._delta.append(float(100.0 * np.mean(np.maximum(d / g, g / d) < DELTA)))
        self._pixels += int(valid.sum())

    def scores(self) -> DepthScores | None:
        """None when no frame had a LiDAR pixel (e.g. a dataset without velodyne scans)."""
        if not self._abs_rel or self._max_depth is None:
            return None
        return DepthScores(
            abs_rel=float(np.mean(self._abs_rel)),
            rmse=float(np.mean(self._sq)),
            delta1=float(np.mean(self._delta)),
            frames=len(self._abs_rel),
            pixels=self._pixels,
            max_depth=self._max_depth,
        )
