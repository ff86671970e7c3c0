"""Semantic scene completion metrics, identical in meaning to semantic-kitti-api's
`evaluate_completion.py`.

One confusion matrix `conf[gt, pred]` (20 x 20) is accumulated over a whole split, not
averaged per frame. Voxels whose ground truth is 255 (ignored classes) or that are marked
invalid are left out. Completion (occupied vs empty): IoU = conf[1:,1:].sum() /
(conf.sum() - conf[0,0]), precision over predicted-occupied, recall over truly-occupied.
Semantic: IoU per class c = TP / (TP + FP + FN); mIoU is the mean over classes 1..19, a
class absent from both prediction and ground truth counts 0 (as the official evaluator).
All figures are percentages.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

import numpy as np

from monoocc_ros.classes import CLASS_NAMES, IGNORE, NUM_CLASSES, SMALL_OBJECT_CLASSES


@dataclass(frozen=True)
class SSCScores:
    precision: float
    recall: float
    completion_iou: float
    class_iou: tuple[float, ...]  # 20 entries; index 0 (empty) is reported but not in the mean
    miou: float
    num_voxels: int
    # The same scores on the voxels inside the camera's field of view only (`RegionMetrics`);
    # outside it a monocular model can only repeat a scene prior.
    in_view: SSCScores | None = None

    @property
    def small_object_iou(self) -> float:
        return float(np.mean([self.class_iou[c] for c in SMALL_OBJECT_CLASSES]))

    def to_dict(self) -> dict:
        d = asdict(replace(self, in_view=None))
        d["class_iou"] = {name: iou for name, iou in zip(CLASS_NAMES, self.class_iou, strict=True)}
        d["small_object_iou"] = self.small_object_iou
        if self.in_view is not None:
            d["in_view"] = self.in_view.to_dict()
        else:
            del d["in_view"]
        return d

    def summary(self) -> dict:
        """The headline figures and the per-class IoU as a list: what a training run's
        checkpoint and the ablation's records keep."""
        return {"completion_iou": self.completion_iou, "miou": self.miou, "precision": self.precision,
                "recall": self.recall, "small_object_iou": self.small_object_iou,
                "class_iou": list(self.class_iou)}  # fmt: skip

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        """A plain-text table as the official evaluator prints it (percent)."""
        lines = [
            f"{'metric':<18}{'value':>8}",
            f"{'precision':<18}{self.precision:8.2f}",
            f"{'recall':<18}{self.recall:8.2f}",
            f"{'completion IoU':<18}{self.completion_iou:8.2f}",
            f"{'mIoU (1-19)':<18}{self.miou:8.2f}",
            f"{'small objects':<18}{self.small_object_iou:8.2f}",
            "-" * 26,
        ]
        lines += [f"{name:<18}{iou:8.2f}" for name, iou in zip(CLASS_NAMES[1:], self.class_iou[1:], strict=True)]
        lines.append(f"({self.num_voxels} voxels evaluated)")
        if self.in_view is not None:
            v = self.in_view
            lines.append(
                f"in the camera's view ({v.num_voxels} voxels): completion IoU {v.completion_iou:.2f}, mIoU "
                f"{v.miou:.2f}, precision {v.precision:.2f}, recall {v.recall:.2f}"
            )
        return "\n".join(lines)


class SSCMetrics:
    """Accumulates the confusion matrix over many frames; `scores()` at the end."""

    def __init__(self) -> None:
        self.conf = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)

    def reset(self) -> None:
        self.conf[:] = 0

    def update(self, pred: np.ndarray, target: np.ndarray, invalid: np.ndarray | None = None) -> None:
        """Add one frame (or a batch): `pred` and `target` train ids of the same shape,
        `invalid` an optional bool mask of voxels to leave out."""
        pred = np.asarray(pred)
        target = np.asarray(target)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {pred.shape} != ground-truth shape {target.shape}")
        valid = target != IGNORE
        if invalid is not None:
            invalid = np.asarray(invalid, dtype=bool)
            if invalid.shape != target.shape:
                raise ValueError(f"invalid mask shape {invalid.shape} != ground-truth shape {target.shape}")
            valid &= ~invalid
        p = pred[valid].astype(np.int64)
        t = target[valid].astype(np.int64)
        if p.size and (p.min() < 0 or p.max() >= NUM_CLASSES):
            raise ValueError(f"predictions must be train ids 0..{NUM_CLASSES - 1}; got {np.unique(p)[:10]}")
        if t.size and t.max() >= NUM_CLASSES:
            raise ValueError(f"ground truth must be train ids 0..{NUM_CLASSES - 1} or {IGNORE}")
        self.conf += np.bincount(t * NUM_CLASSES + p, minlength=NUM_CLASSES**2).reshape(NUM_CLASSES, NUM_CLASSES)

    def merge(self, other: SSCMetrics) -> None:
        self.conf += other.conf

    def scores(self) -> SSCScores:
        return scores_from_confusion(self.conf)


class RegionMetrics:
    """Full-grid scores and, beside them, the scores of the voxels in the camera's view."""

    def __init__(self) -> None:
        self.full, self.view = SSCMetrics(), SSCMetrics()

    def update(self, pred: np.ndarray, target: np.ndarray, invalid: np.ndarray | None, view: np.ndarray) -> None:
        """As `SSCMetrics.update`; `view` (same shape) bool, True inside the camera's view."""
        self.full.update(pred, target, invalid)
        outside = ~np.asarray(view, dtype=bool)
        self.view.update(pred, target, outside if invalid is None else (np.asarray(invalid, dtype=bool) | outside))

    def scores(self) -> SSCScores:
        return replace(self.full.scores(), in_view=self.view.scores())


def _ratio(num: float, den: float) -> float:
    return float(100.0 * num / den) if den > 0 else 0.0


def scores_from_confusion(conf: np.ndarray) -> SSCScores:
    conf = np.asarray(conf, dtype=np.int64)
    occ_tp = conf[1:, 1:].sum()
    precision = _ratio(occ_tp, conf[:, 1:].sum())
    recall = _ratio(occ_tp, conf[1:, :].sum())
    completion = _ratio(occ_tp, conf.sum() - conf[0, 0])
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    class_iou = tuple(_ratio(tp[c], union[c]) for c in range(NUM_CLASSES))
    return SSCScores(
        precision=precision,
        recall=recall,
        completion_iou=completion,
        class_iou=class_iou,
        miou=float(np.mean(class_iou[1:])),
        num_voxels=int(conf.sum()),
    )
