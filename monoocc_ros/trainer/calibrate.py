"""`monoocc calibrate`: the fine head's occupancy threshold, chosen on training frames.

Why: training weighs empty and occupied voxels by the loss, not by the completion IoU the
benchmark reports, so P(occupied) > 0.5 is not the IoU-best decision (the shipped student had
precision 80 / recall 47 on validation). This picks the threshold that maximises completion IoU
on frames of the *training* split (never validation: that would tune the evaluation to itself),
stores it in the model's config (`occupancy_threshold`, which the node, eval and ONNX export use)
and writes a new checkpoint; the weights are unchanged.

How: one pass over the frames accumulates, for valid voxels (target != 255), histograms of
P(occupied) for occupied and for empty targets; every bin edge is a candidate threshold, and
its true/false positives and false negatives are sums over the histograms (exact at the edges).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from monoocc_ros.checkpoint import build_model_from_checkpoint, save_checkpoint
from monoocc_ros.classes import IGNORE
from monoocc_ros.data.dataset import load_splits
from monoocc_ros.inference import resolve_device
from monoocc_ros.model.monoocc import MonoOcc
from monoocc_ros.trainer.engine import expand_labels, make_dataset, model_inputs, resolve_sequences

BINS = 200  # candidate thresholds 0.005, 0.010, ..., 0.995


@dataclass
class Calibration:
    threshold: float  # the IoU-best P(occupied) threshold
    iou: float  # completion IoU (%) on the calibration frames at `threshold`
    iou_at_half: float  # the same at 0.5 (the uncalibrated decision)
    previous: float  # the checkpoint's threshold before
    frames: int
    sequences: tuple[str, ...]

    def summary(self) -> str:
        return (
            f"occupancy threshold {self.threshold:.3f} (was {self.previous:.3f}): completion IoU {self.iou:.2f} "
            f"vs {self.iou_at_half:.2f} at 0.5, on {self.frames} training frames of sequences {list(self.sequences)}"
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
) -> Calibration:
    """Pick the threshold on `frames` evenly spaced training frames and write `out`."""
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
    picks = np.unique(np.linspace(0, len(dataset) - 1, num=min(frames, len(dataset))).round().astype(int))
    subset = torch.utils.data.Subset(dataset, picks.tolist())
    occupied, empty = occupancy_histograms(model, subset, dev, progress)
    if occupied.sum() == 0:
        raise ValueError(f"the {len(picks)} calibration frames hold no occupied voxel with a valid label")
    threshold, iou, iou_half = best_threshold(occupied, empty)
    result = Calibration(threshold, iou, iou_half, cfg.occupancy_threshold, len(picks), seqs)
    # The checkpoint's own validation metrics were measured at the old threshold: not carried over.
    extra = {k: data_ckpt[k] for k in ("step", "source") if k in data_ckpt}
    save_checkpoint(
        out,
        dataclasses.replace(cfg, occupancy_threshold=threshold),
        data_ckpt["weights"],
        **extra,
        calibration={**dataclasses.asdict(result), "sequences": list(seqs), "source": str(checkpoint)},
    )
    return result
