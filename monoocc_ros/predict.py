"""`monoocc predict`: one image through a model on either backend, without ROS.

Writes OUT.label (the 256x256x32 grid as SemanticKITTI raw ids, uint16, the format the official
tools read) and OUT.png (bird's-eye view with the class legend), and prints the class histogram.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from monoocc_ros.classes import CLASS_NAMES, train_to_raw
from monoocc_ros.data.formats import FILE_GRID, read_calib, write_voxel_labels
from monoocc_ros.geometry import KITTI_CALIB
from monoocc_ros.inference import Predictor
from monoocc_ros.paths import default_model


def main(args: argparse.Namespace) -> int:
    from PIL import Image, UnidentifiedImageError

    model = Path(args.model) if args.model else default_model()
    try:
        calib = read_calib(args.calib) if args.calib else KITTI_CALIB
    except (OSError, ValueError) as exc:
        raise SystemExit(f"monoocc predict: cannot read calibration {args.calib}: {exc}") from exc
    try:
        rgb = np.asarray(Image.open(args.image).convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise SystemExit(f"monoocc predict: cannot read image {args.image}: {exc}") from exc
    try:
        predictor = Predictor.load(model, args.backend, args.device)
        if predictor.grid != FILE_GRID:
            raise ValueError(f"{model} fills {predictor.grid}; a SemanticKITTI .label file holds {FILE_GRID}")
        t0 = time.perf_counter()
        labels, confidence = predictor.predict(rgb, calib["P2"], calib["Tr"])
        dt = time.perf_counter() - t0
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise SystemExit(f"monoocc predict: {exc}") from exc
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_voxel_labels(out.with_suffix(".label"), train_to_raw(labels))
    from monoocc_ros.bev import bev_image, legend_image, side_by_side

    Image.fromarray(side_by_side(bev_image(labels), legend_image())).save(out.with_suffix(".png"))
    counts = np.bincount(labels[labels != 255].ravel(), minlength=len(CLASS_NAMES))
    occupied = {CLASS_NAMES[c]: int(n) for c, n in enumerate(counts) if c > 0 and n > 0}
    print(f"{predictor.cfg.name} on {predictor.describe()}: {dt * 1e3:.0f} ms; wrote {out.with_suffix('.label')} "
          f"and {out.with_suffix('.png')}")  # fmt: skip
    print(f"occupied voxels {int(counts[1:].sum())} (mean confidence {float(confidence.mean()):.3f}): {occupied}")
    return 0
