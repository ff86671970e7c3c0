"""`monoocc stats`: what a SemanticKITTI-format split's voxel ground truth contains, beside
SemanticKITTI's own figures, so a synthetic benchmark can be checked against the real one.

Read from the files alone (any root: the synthetic benchmark, SemanticKITTI itself):
- the class mix of valid occupied voxels (percent of all valid occupied voxels);
- the share of voxels that are valid (observed), and of valid voxels that are occupied;
- the share of valid occupied voxels inside the camera's view (projecting into image_2 with
  `P2 @ Tr` in front of the camera): what a monocular model can see at all;
- building voxels in the grid's bottom and top layers (solid slabs there were a bug of the
  first synthetic world: labelled interiors cut by the grid's edges).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from monoocc_ros.classes import CLASS_FREQUENCIES, CLASS_NAMES, IGNORE, NUM_CLASSES
from monoocc_ros.data import formats as F
from monoocc_ros.data.dataset import load_voxel_target
from monoocc_ros.geometry import (
    IMAGE_HEIGHT,
    IMAGE_WIDTH,
)

BUILDING = CLASS_NAMES.index("building")


@dataclass(frozen=True)
class SplitStatistics:
    sequences: tuple[str, ...]
    frames: int
    class_share: tuple[float, ...]  # percent of valid occupied voxels, classes 1..19
    valid_share: float  # percent of all voxels
    occupied_share: float  # percent of valid voxels
    in_view_share: float  # percent of valid occupied voxels inside image_2's view
    building_slab_share: float  # percent of building voxels in z layers 0 and 31
    missing_classes: tuple[str, ...]

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        """Class mix beside SemanticKITTI's (MonoScene's frequencies), then the shares."""
        ref = reference_class_share()
        lines = [f"{'class':<15}{'here %':>9}{'SemKITTI %':>12}{'ratio':>8}"]
        for name, a, b in zip(CLASS_NAMES[1:], self.class_share, ref, strict=True):
            lines.append(f"{name:<15}{a:9.2f}{b:12.2f}{a / b:8.2f}")
        ref_occ = 100 * (1 - CLASS_FREQUENCIES[0] / CLASS_FREQUENCIES.sum())
        lines += [
            "-" * 44,
            f"{'valid voxels (% of all)':<34}{self.valid_share:8.2f}",
            f"{'occupied (% of valid)':<34}{self.occupied_share:8.2f}   SemanticKITTI {ref_occ:.2f}",
            f"{'in camera view (% of occ. valid)':<34}{self.in_view_share:8.2f}",
            f"{'building in z=0/31 (% building)':<34}{self.building_slab_share:8.2f}",
            f"({self.frames} frames of sequences {', '.join(self.sequences)}; "
            f"classes absent: {', '.join(self.missing_classes) or 'none'})",
        ]
        return "\n".join(lines)


def reference_class_share() -> np.ndarray:
    """SemanticKITTI's class mix of occupied voxels (percent, classes 1..19)."""
    occupied = CLASS_FREQUENCIES[1:]
    return 100 * occupied / occupied.sum()


def in_view_mask(calib: dict[str, np.ndarray], size: tuple[int, int] = (IMAGE_WIDTH, IMAGE_HEIGHT)) -> np.ndarray:
    """(X, Y, Z) bool: voxel centres projecting inside image_2 (`size` = width, height) in front
    of the camera."""
    from monoocc_ros.inference import camera_view_mask

    return camera_view_mask(calib["P2"], calib["Tr"], (size[1], size[0]))


def image_size(folder: Path) -> tuple[int, int]:
    """(width, height) of a sequence's first image_2 file (KITTI's sizes vary by sequence)."""
    from PIL import Image

    first = next(iter(sorted((folder / "image_2").glob("*.png"))), None)
    if first is None:
        return IMAGE_WIDTH, IMAGE_HEIGHT
    with Image.open(first) as img:
        return img.size


def split_statistics(root: str | Path, sequences: tuple[str, ...], every: int = 1, progress: bool = True):
    """Statistics over every `every`-th labelled frame of the sequences."""
    counts = np.zeros(NUM_CLASSES, np.int64)
    frames = valid = total = in_view = occupied = slab = 0
    stems = []
    for s in sequences:
        folder = Path(root) / "sequences" / s
        calib = F.read_calib(folder / "calib.txt")
        view = in_view_mask(calib, image_size(folder))
        labels = sorted((folder / "voxels").glob("*.label"))[::every]
        stems += [(p.with_suffix(""), view) for p in labels]
    if not stems:
        raise FileNotFoundError(f"no labelled frames (voxels/*.label) in {root} sequences {list(sequences)}")
    for stem, view in tqdm(stems, desc="stats", unit="frame", disable=not progress):
        target, _ = load_voxel_target(stem)
        ok = target != IGNORE
        occ = ok & (target > 0)
        counts += np.bincount(target[ok], minlength=NUM_CLASSES)[:NUM_CLASSES]
        frames += 1
        valid += int(ok.sum())
        total += target.size
        occupied += int(occ.sum())
        in_view += int((occ & view).sum())
        slab += int((target[:, :, [0, -1]] == BUILDING).sum())
    share = 100 * counts[1:] / max(counts[1:].sum(), 1)
    return SplitStatistics(
        sequences=tuple(sequences),
        frames=frames,
        class_share=tuple(float(v) for v in share),
        valid_share=100 * valid / total,
        occupied_share=100 * occupied / max(valid, 1),
        in_view_share=100 * in_view / max(occupied, 1),
        building_slab_share=100 * slab / max(int(counts[BUILDING]), 1),
        missing_classes=tuple(CLASS_NAMES[c] for c in range(1, NUM_CLASSES) if counts[c] == 0),
    )


def main(args) -> int:
    from monoocc_ros.trainer.engine import resolve_sequences

    seqs = resolve_sequences(args.data, tuple(args.sequences) if args.sequences else None, args.split)
    stats = split_statistics(args.data, seqs, args.every)
    print(stats.table())
    if args.json:
        Path(args.json).write_text(json.dumps(stats.to_dict(), indent=2))
    return 0
