"""`monoocc eval`: SSC metrics of a checkpoint on a dataset split, optionally writing
SemanticKITTI-format predictions for the official evaluator, and with `--controls` the same
scores for an image-free prior and for the model shown other worlds' images (see
`monoocc_ros.trainer.controls`), so that a scene prior is not mistaken for perception. The depth
head's errors against the LiDAR depth are printed beside them (`monoocc_ros.depth_metrics`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from monoocc_ros.checkpoint import build_model_from_checkpoint
from monoocc_ros.data.dataset import DatasetConfig, SemanticKITTIDataset
from monoocc_ros.depth_metrics import DepthMetrics
from monoocc_ros.inference import resolve_device
from monoocc_ros.metrics import SSCScores
from monoocc_ros.trainer.controls import (
    ControlReport,
    OtherImageDataset,
    donor_sequences,
    image_free_prior,
    score_fixed_prediction,
)
from monoocc_ros.trainer.engine import evaluate, make_dataset, resolve_sequences

if TYPE_CHECKING:
    from monoocc_ros.model.monoocc import MonoOcc


def _load(
    checkpoint: str, data: str, split: str, sequences: tuple[str, ...] | None, device: str
) -> tuple[MonoOcc, SemanticKITTIDataset, torch.device]:
    """The model on its device and the evaluated split's Dataset."""
    dev = resolve_device(device)
    model, _ = build_model_from_checkpoint(checkpoint)
    seqs = resolve_sequences(data, sequences, split)
    dataset = make_dataset(model.cfg, data, seqs, model.cfg.frame_offsets, model.cfg.privileged_lidar)
    return model.to(dev), dataset, dev


def evaluate_checkpoint(
    checkpoint: str,
    data: str,
    split: str = "val",
    sequences: tuple[str, ...] | None = None,
    predictions: str | None = None,
    device: str = "auto",
    progress: bool = True,
    depth: DepthMetrics | None = None,
) -> SSCScores:
    """`depth`: given, it also accumulates the depth head's errors (`engine.evaluate`)."""
    model, dataset, dev = _load(checkpoint, data, split, sequences, device)
    return evaluate(model, dataset, dev, Path(predictions) if predictions else None, progress=progress, depth=depth)


def evaluate_with_controls(
    checkpoint: str,
    data: str,
    split: str = "val",
    sequences: tuple[str, ...] | None = None,
    prior_split: str = "train",
    predictions: str | None = None,
    device: str = "auto",
    progress: bool = True,
    depth: DepthMetrics | None = None,
) -> ControlReport:
    """The model's scores and both controls' on the same frames. Sequences and donors are
    resolved before the model runs, so a root without a second sequence fails at once. `depth`:
    as `evaluate_checkpoint`'s, for the model's own images."""
    model, dataset, dev = _load(checkpoint, data, split, sequences, device)
    prior_seqs = resolve_sequences(data, None, prior_split)
    donors = donor_sequences(data, dataset.cfg.sequences)
    other = OtherImageDataset(dataset, donors)
    prior = image_free_prior(data, prior_seqs, progress)
    scores = evaluate(model, dataset, dev, Path(predictions) if predictions else None, progress=progress, depth=depth)
    return ControlReport(
        model=scores,
        prior=score_fixed_prediction(prior, dataset, progress),
        other_image=evaluate(model, other, dev, progress=progress, desc="other image"),
        sequences=dataset.cfg.sequences,
        prior_sequences=prior_seqs,
        donors=donors,
    )


def evaluate_other_image(
    checkpoint: str,
    data: str,
    split: str = "val",
    sequences: tuple[str, ...] | None = None,
    device: str = "auto",
    progress: bool = True,
) -> tuple[SSCScores, dict[str, str]]:
    """The other-image control alone (the scores with other worlds' images, and which sequence
    lent its images to which): for a run whose own scores are already known, e.g. the ablation's."""
    model, dataset, dev = _load(checkpoint, data, split, sequences, device)
    donors = donor_sequences(data, dataset.cfg.sequences)
    other = OtherImageDataset(dataset, donors)
    return evaluate(model, other, dev, progress=progress, desc="other image"), donors


def prior_scores(data: str, split: str = "val", prior_split: str = "train", progress: bool = True) -> SSCScores:
    """The image-free prior control alone: the prior of `prior_split` scored on `split`, on the
    same targets and camera-view masks as a model's evaluation (no model needed)."""
    seqs = resolve_sequences(data, None, split)
    prior = image_free_prior(data, resolve_sequences(data, None, prior_split), progress)
    dataset = SemanticKITTIDataset(DatasetConfig(root=data, sequences=seqs, downsample=(), load_points=False))
    return score_fixed_prediction(prior, dataset, progress)


def _run(args: argparse.Namespace, depth: DepthMetrics) -> tuple[SSCScores, ControlReport | None]:
    seqs = tuple(args.sequences) if args.sequences else None
    if args.controls:
        report = evaluate_with_controls(
            args.checkpoint, args.data, args.split, seqs, args.prior_split, args.predictions, args.device, depth=depth
        )
        return report.model, report
    scores = evaluate_checkpoint(
        args.checkpoint, args.data, args.split, seqs, args.predictions, args.device, depth=depth
    )
    return scores, None


def main(args: argparse.Namespace) -> int:
    try:
        resolve_device(args.device)  # CUDA asked for and absent: one line, before any work
    except (ValueError, RuntimeError) as exc:
        raise SystemExit(f"monoocc eval: {exc}") from None
    depth = DepthMetrics()
    try:
        scores, report = _run(args, depth)
    except (ValueError, FileNotFoundError) as exc:
        # The user's input (CheckpointError, ConfigError, FormatError are ValueErrors): one line.
        # A RuntimeError from inside the model is a bug and keeps its traceback.
        raise SystemExit(f"monoocc eval: {exc}") from None
    print(scores.table())
    depth_scores = depth.scores()
    print(depth_scores.table() if depth_scores else "depth: no frame has LiDAR depth (velodyne scans), not scored")
    if report is not None:
        print()
        print(report.table())
    if args.json:
        out = scores.to_dict()
        if depth_scores is not None:
            out["depth"] = depth_scores.to_dict()
        if report is not None:
            out["controls"] = report.to_dict()
        Path(args.json).write_text(json.dumps(out, indent=2))
    if args.predictions:
        print(f"predictions written under {args.predictions}/sequences/*/predictions/")
    return 0
