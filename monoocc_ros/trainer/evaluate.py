"""`monoocc eval`: SSC metrics of a checkpoint on a dataset split, optionally writing
SemanticKITTI-format predictions for the official evaluator."""

from __future__ import annotations

import argparse
from pathlib import Path

from monoocc_ros.checkpoint import build_model_from_checkpoint
from monoocc_ros.inference import resolve_device
from monoocc_ros.metrics import SSCScores
from monoocc_ros.trainer.engine import evaluate, make_dataset, resolve_sequences


def evaluate_checkpoint(
    checkpoint: str,
    data: str,
    split: str = "val",
    sequences: tuple[str, ...] | None = None,
    predictions: str | None = None,
    device: str = "auto",
    progress: bool = True,
) -> SSCScores:
    dev = resolve_device(device)
    model, _ = build_model_from_checkpoint(checkpoint)
    model = model.to(dev)
    seqs = resolve_sequences(data, sequences, split)
    dataset = make_dataset(model.cfg, data, seqs, model.cfg.frame_offsets)
    return evaluate(model, dataset, dev, Path(predictions) if predictions else None, progress=progress)


def main(args: argparse.Namespace) -> int:
    seqs = tuple(args.sequences) if args.sequences else None
    scores = evaluate_checkpoint(args.checkpoint, args.data, args.split, seqs, args.predictions, args.device)
    print(scores.table())
    if args.json:
        Path(args.json).write_text(scores.to_json())
    if args.predictions:
        print(f"predictions written under {args.predictions}/sequences/*/predictions/")
    return 0
