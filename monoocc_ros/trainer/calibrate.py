"""`monoocc calibrate`: the fine head's occupancy threshold(s), chosen on training frames.

Why: training weighs empty and occupied voxels by the loss, not by the completion IoU the
benchmark reports, so P(occupied) > 0.5 is not the IoU-best decision (the shipped student had
precision 80 / recall 47 on validation). This picks the threshold that maximises completion IoU
on frames of the *training* split (never validation: that would tune the evaluation to itself),
stores it in the model's config (`occupancy_threshold`, which the node, eval and ONNX export use)
and writes a new checkpoint; the weights are unchanged.

How: one pass over the frames accumulates, for valid voxels (target != 255), histograms of
P(occupied) for occupied and for empty targets; every bin edge is a candidate threshold, and
its true/false positives and false negatives are sums over the histograms (exact at the edges).

`--per-class`: one threshold per predicted class (`class_occupancy_thresholds`). Why: a wall or a
car whose depth the network knows to a metre spreads P(occupied) over several 0.2 m voxels, so
none reaches 0.5, while the flat ground does. The histograms are kept per predicted class, split
by target (that class / another, occupied / empty). A threshold t_c only decides whether voxels
predicted as c are c or empty, so class c's IoU depends on t_c alone: TP_c / (N_c + FP_c), N_c the
target voxels of c. The objective is completion IoU + mIoU, the two headline figures
weighted equally, maximised by coordinate ascent over the classes (each step exact over the bin
edges; the objective never falls; the sweeps stop when no class's threshold changes, or after
`sweeps`, with a warning).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from monoocc_ros.checkpoint import build_model_from_checkpoint, save_checkpoint, sha256
from monoocc_ros.classes import IGNORE, NUM_CLASSES
from monoocc_ros.data.dataset import load_splits
from monoocc_ros.inference import resolve_device
from monoocc_ros.model.monoocc import MonoOcc
from monoocc_ros.trainer.engine import expand_labels, make_dataset, model_inputs, resolve_sequences

BINS = 200  # candidate thresholds 0.005, 0.010, ..., 0.995


@dataclass
class Calibration:
    threshold: float  # the IoU-best P(occupied) threshold (--per-class: the unchanged one-for-all)
    iou: float  # completion IoU (%) on the calibration frames at `threshold`
    iou_at_half: float  # the same at 0.5 (the uncalibrated decision)
    previous: float  # the checkpoint's threshold before
    frames: int
    sequences: tuple[str, ...]
    # --per-class: the thresholds of classes 1..19, and mIoU (%) there and at 0.5
    class_thresholds: tuple[float, ...] = ()
    miou: float | None = None
    miou_at_half: float | None = None
    previous_class_thresholds: tuple[float, ...] = ()
    source_sha256: str = ""  # the calibrated checkpoint's, so a record never just names a path

    def summary(self) -> str:
        where = f"on {self.frames} training frames of sequences {list(self.sequences)}"
        if self.class_thresholds:
            ts = ", ".join(f"{t:.3f}" for t in self.class_thresholds)
            return (
                f"per-class occupancy thresholds (classes 1..{len(self.class_thresholds)}: {ts}): completion IoU "
                f"{self.iou:.2f} and mIoU {self.miou:.2f} vs {self.iou_at_half:.2f} and {self.miou_at_half:.2f} "
                f"at 0.5, {where}"
            )
        return (
            f"occupancy threshold {self.threshold:.3f} (was {self.previous:.3f}): completion IoU {self.iou:.2f} "
            f"vs {self.iou_at_half:.2f} at 0.5, {where}"
        )


def occupancy_histograms(
    model: MonoOcc, dataset, device: torch.device, progress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(occupied, empty): counts of valid voxels per P(occupied) bin (BINS over [0, 1])."""
    cfg = model.cfg
    occupied = np.zeros(BINS, np.int64)
    empty = np.zeros(BINS, np.int64)
    loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=0)
    model.eval()
    with torch.inference_mode():
        for batch in tqdm(loader, desc="calibrate", unit="frame", disable=not progress):
            out = model(*model_inputs(batch, cfg, device), with_2d=False)
            p = out["occupancy"].float().sigmoid()
            p = expand_labels(p, cfg.grid)[0].cpu()  # a coarser output repeated onto the grid
            target = batch["target"][0]
            valid = target != IGNORE
            for counts, mask in ((occupied, valid & (target > 0)), (empty, valid & (target == 0))):
                counts += torch.histc(p[mask], bins=BINS, min=0.0, max=1.0).long().numpy()
    return occupied, empty


def best_threshold(occupied: np.ndarray, empty: np.ndarray) -> tuple[float, float, float]:
    """(threshold, IoU % there, IoU % at 0.5) from the histograms: predicted occupied = P > edge."""
    tp = np.cumsum(occupied[::-1])[::-1]  # tp[k]: occupied voxels in bins k.. (P above edge k)
    fp = np.cumsum(empty[::-1])[::-1]
    fn = occupied.sum() - tp
    iou = 100.0 * tp / np.maximum(tp + fp + fn, 1)
    edges = np.arange(BINS) / BINS
    candidates = np.arange(1, BINS)  # thresholds strictly inside (0, 1)
    k = int(candidates[np.argmax(iou[candidates])])
    return float(edges[k]), float(iou[k]), float(iou[BINS // 2])


def calibration_frames(items: int, frames: int) -> np.ndarray:
    """The indices of `frames` items spread evenly over a split of `items` (all when fewer)."""
    return np.unique(np.linspace(0, items - 1, num=min(frames, items)).round().astype(int))


@dataclass
class ClassHistograms:
    """Counts of valid voxels per (predicted class, P(occupied) bin), (NUM_CLASSES, BINS) each:
    `same`: target is the predicted class; `occupied`/`empty`: target occupied / empty (so the
    voxels of another class are occupied + empty - same). `targets`: valid target voxels per
    class; `occupied_total`: occupied valid voxels."""

    same: np.ndarray
    occupied: np.ndarray
    empty: np.ndarray
    targets: np.ndarray
    occupied_total: int = 0

    @classmethod
    def zeros(cls) -> ClassHistograms:
        z = lambda: np.zeros((NUM_CLASSES, BINS), np.int64)  # noqa: E731
        return cls(z(), z(), z(), np.zeros(NUM_CLASSES, np.int64))

    def add(self, p: torch.Tensor, predicted: torch.Tensor, target: torch.Tensor) -> None:
        """p, predicted (class 1..19 of each voxel's semantic voxel), target: one frame's voxels."""
        valid = target != IGNORE
        key = predicted.long() * BINS + (p * BINS).long().clamp_(0, BINS - 1)

        def count(mask: torch.Tensor) -> np.ndarray:
            return torch.bincount(key[mask], minlength=NUM_CLASSES * BINS).view(NUM_CLASSES, BINS).numpy()

        self.same += count(valid & (target == predicted))
        self.occupied += count(valid & (target > 0))
        self.empty += count(valid & (target == 0))
        self.targets += np.bincount(target[valid].numpy().ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES]
        self.occupied_total += int((valid & (target > 0)).sum())

    def scores(self, edges: np.ndarray) -> tuple[float, float]:
        """(completion IoU %, mIoU % over classes 1..) with voxels predicted as class c occupied
        when P(occupied) is above bin edge edges[c] (an int array, index 0 unused)."""
        c = np.arange(1, NUM_CLASSES)
        above = np.arange(BINS)[None, :] >= edges[c, None]  # (19, BINS)
        tp = (self.occupied[c] * above).sum()
        fp = (self.empty[c] * above).sum()
        iou = 100.0 * tp / max(self.occupied_total + fp, 1)
        same = (self.same[c] * above).sum(1)
        other = ((self.occupied[c] + self.empty[c] - self.same[c]) * above).sum(1)
        class_iou = 100.0 * same / np.maximum(self.targets[c] + other, 1)
        return float(iou), float(class_iou.mean())


def best_class_thresholds(h: ClassHistograms, sweeps: int = 10) -> np.ndarray:
    """Bin edges (NUM_CLASSES,) maximising completion IoU + mIoU, by coordinate ascent from 0.5."""
    edges = np.full(NUM_CLASSES, BINS // 2)
    for _ in range(sweeps):
        changed = False
        for c in range(1, NUM_CLASSES):
            trial = edges.copy()
            best_k, best = edges[c], sum(h.scores(edges))
            for k in range(1, BINS):
                trial[c] = k
                value = sum(h.scores(trial))
                if value > best + 1e-9:
                    best_k, best = k, value
            changed |= best_k != edges[c]
            edges[c] = best_k
        if not changed:
            return edges
    warnings.warn(f"per-class thresholds: still changing after {sweeps} sweeps; keeping the last", stacklevel=2)
    return edges


def class_histograms(model: MonoOcc, dataset, device: torch.device, progress: bool = True) -> ClassHistograms:
    """The per-class histograms over `dataset` (see ClassHistograms)."""
    from monoocc_ros.model.head import repeat_voxels

    cfg = model.cfg
    h = ClassHistograms.zeros()
    loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=0)
    model.eval()
    with torch.inference_mode():
        for batch in tqdm(loader, desc="calibrate", unit="frame", disable=not progress):
            out = model(*model_inputs(batch, cfg, device), with_2d=False)
            p = expand_labels(out["occupancy"].float().sigmoid(), cfg.grid)[0].cpu()
            predicted = out["logits"][:, 1:].argmax(1) + 1  # what labels_and_confidence labels a voxel
            predicted = repeat_voxels(predicted, cfg.semantic_scale // cfg.output_scale)
            h.add(p, expand_labels(predicted, cfg.grid)[0].cpu(), batch["target"][0])
    return h


def _training_sequences(root: str, sequences: tuple[str, ...] | None) -> tuple[str, ...]:
    chosen = resolve_sequences(root, sequences, "train")
    splits = load_splits(root)
    val = set(splits.get("val", ())) | set(splits.get("test", ()))
    held_out = sorted(set(chosen) & val)
    if held_out:
        raise ValueError(
            f"sequences {held_out} belong to the validation/test split of {root}: calibrate on training "
            "frames only, or the validation scores would be tuned to themselves"
        )
    return chosen


def calibrate(
    checkpoint: str,
    data: str,
    out: str,
    sequences: tuple[str, ...] | None = None,
    frames: int = 100,
    device: str = "auto",
    progress: bool = True,
    per_class: bool = False,
) -> Calibration:
    """Pick the threshold (`per_class`: one per class) on `frames` evenly spaced training frames
    and write `out`."""
    if Path(out).resolve() == Path(checkpoint).resolve():
        raise ValueError(f"--out {out} is the input checkpoint; write the calibrated model to a new file")
    if frames < 1:
        raise ValueError(f"--frames must be >= 1, got {frames}")
    dev = resolve_device(device)
    model, data_ckpt = build_model_from_checkpoint(checkpoint)
    model = model.to(dev)
    cfg = model.cfg
    if cfg.head != "fine":
        raise ValueError(
            f"{checkpoint}: calibrate sets the fine head's occupancy threshold; this model has head {cfg.head!r}"
        )
    seqs = _training_sequences(data, sequences)
    dataset = make_dataset(cfg, data, seqs, cfg.frame_offsets, cfg.privileged_lidar)
    picks = calibration_frames(len(dataset), frames)
    subset = torch.utils.data.Subset(dataset, picks.tolist())
    if per_class:
        result, new_cfg = _per_class(model, subset, dev, progress, len(picks), seqs)
    else:
        occupied, empty = occupancy_histograms(model, subset, dev, progress)
        if occupied.sum() == 0:
            raise ValueError(f"the {len(picks)} calibration frames hold no occupied voxel with a valid label")
        threshold, iou, iou_half = best_threshold(occupied, empty)
        result = Calibration(threshold, iou, iou_half, cfg.occupancy_threshold, len(picks), seqs)
        # One threshold for all classes replaces any per-class ones.
        new_cfg = dataclasses.replace(cfg, occupancy_threshold=threshold, class_occupancy_thresholds=())
    result.source_sha256 = sha256(checkpoint)
    # The checkpoint's own validation metrics were measured at the old threshold: not carried over.
    provenance = ("step", "epoch", "source", "source_code_version", "train_config")
    extra = {k: data_ckpt[k] for k in provenance if k in data_ckpt}
    save_checkpoint(
        out,
        new_cfg,
        data_ckpt["weights"],
        **extra,
        calibration={**dataclasses.asdict(result), "sequences": list(seqs), "source": str(checkpoint)},
    )
    return result


def _per_class(model: MonoOcc, subset, dev: torch.device, progress: bool, frames: int, seqs: tuple[str, ...]):
    h = class_histograms(model, subset, dev, progress)
    if h.occupied_total == 0:
        raise ValueError(f"the {frames} calibration frames hold no occupied voxel with a valid label")
    edges = best_class_thresholds(h)
    iou, miou = h.scores(edges)
    iou_half, miou_half = h.scores(np.full(NUM_CLASSES, BINS // 2))
    thresholds = tuple(float(e) / BINS for e in edges[1:])
    cfg = model.cfg
    result = Calibration(
        threshold=cfg.occupancy_threshold,
        iou=iou,
        iou_at_half=iou_half,
        previous=cfg.occupancy_threshold,
        frames=frames,
        sequences=seqs,
        class_thresholds=thresholds,
        miou=miou,
        miou_at_half=miou_half,
        previous_class_thresholds=cfg.class_occupancy_thresholds,
    )
    return result, dataclasses.replace(cfg, class_occupancy_thresholds=thresholds)
