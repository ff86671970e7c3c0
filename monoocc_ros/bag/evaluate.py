"""`monoocc bag eval`: score a bag of predicted VoxelGrids against a bag of ground truth, matched
by header stamp, with the same metrics code as offline evaluation; latency and frames lost too."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from monoocc_ros.bag.io import GT_TOPIC, IMAGE_TOPIC, PRED_TOPIC, typestore
from monoocc_ros.bag.play import read_bag
from monoocc_ros.geometry import GridSpec
from monoocc_ros.metrics import SSCMetrics, SSCScores
from monoocc_ros.ros.convert import msg_to_grid
from monoocc_ros.ros.stamps import stamp_to_ns


def header_stamp(msg) -> int:
    """A message's header stamp in nanoseconds (the key predictions and ground truth share)."""
    return stamp_to_ns(msg.header.stamp)


@dataclass
class ReplayScores:
    scores: SSCScores
    frames_scored: int
    frames_lost: list[int]  # ground-truth stamps without a prediction
    latency_ms: list[float] = field(default_factory=list)

    @property
    def lost_fraction(self) -> float:
        """Ground-truth frames without a prediction, as a fraction of all ground-truth frames."""
        return len(self.frames_lost) / max(self.frames_scored + len(self.frames_lost), 1)

    def check_lost(self, max_lost: float) -> str | None:
        """The failure line when more than `max_lost` of the frames have no prediction."""
        if self.lost_fraction > max_lost:
            return (
                f"FAIL: {self.lost_fraction:.1%} of frames lost ({len(self.frames_lost)} of "
                f"{self.frames_scored + len(self.frames_lost)}; allowed {max_lost:.1%}, --max-lost)"
            )
        return None

    def report(self) -> str:
        lines = [self.scores.table(), ""]
        lines.append(f"frames scored: {self.frames_scored}, frames lost: {len(self.frames_lost)}")
        if self.latency_ms:
            lat = np.asarray(self.latency_ms)
            lines.append(
                f"latency (image published -> grid received): median {np.median(lat):.1f} ms, "
                f"p90 {np.percentile(lat, 90):.1f} ms, max {lat.max():.1f} ms over {lat.size} frames"
            )
        return "\n".join(lines)


@dataclass
class GroundTruth:
    """A bag's ground-truth grids: labels by header stamp, on one grid."""

    labels: dict[int, np.ndarray]
    grid: GridSpec

    def check_prediction(self, grid: GridSpec) -> None:
        """A prediction is scored only on the ground truth's own grid (a model trained on another
        grid publishes another one: `ModelConfig.grid`)."""
        if grid != self.grid:
            raise ValueError(f"the predictions cover {grid}, the ground truth {self.grid}: they cannot be compared")


def load_ground_truth(gt_bag: str | Path, topic: str = GT_TOPIC) -> GroundTruth:
    store = typestore()
    out = {}
    grids = set()
    for _, msgtype, _, raw in read_bag(gt_bag, [topic]):
        grid = msg_to_grid(store.deserialize_cdr(raw, msgtype))
        out[grid.stamp_ns] = grid.labels.copy()
        grids.add(grid.grid)
    if not out:
        raise ValueError(f"{gt_bag} has no messages on {topic}")
    if len(grids) > 1:
        raise ValueError(f"{gt_bag}: the ground truth on {topic} changes grid ({sorted(map(str, grids))})")
    return GroundTruth(out, grids.pop())


def score_bags(
    pred_bag: str | Path, gt_bag: str | Path, pred_topic: str = PRED_TOPIC, gt_topic: str = GT_TOPIC
) -> ReplayScores:
    for path in (pred_bag, gt_bag):  # both named before either is read
        if not Path(path).exists():
            raise FileNotFoundError(f"bag {path} does not exist")
    store = typestore()
    gt = load_ground_truth(gt_bag, gt_topic)
    metrics = SSCMetrics()
    seen: set[int] = set()
    image_time: dict[int, int] = {}
    latency = []
    for topic, msgtype, ts, raw in read_bag(pred_bag, [pred_topic, IMAGE_TOPIC]):
        msg = store.deserialize_cdr(raw, msgtype)
        stamp = header_stamp(msg)
        if topic == IMAGE_TOPIC:
            image_time[stamp] = ts
            continue
        if stamp in image_time:
            latency.append((ts - image_time[stamp]) / 1e6)
        if stamp not in gt.labels or stamp in seen:
            continue
        grid = msg_to_grid(msg)
        gt.check_prediction(grid.grid)
        metrics.update(grid.labels, gt.labels[stamp])
        seen.add(stamp)
    lost = sorted(set(gt.labels) - seen)
    return ReplayScores(metrics.scores(), len(seen), lost, latency)
