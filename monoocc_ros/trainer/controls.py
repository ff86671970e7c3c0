"""Controls for `monoocc eval --controls`: what the score would be without perception.

A model's SSC score mixes what it sees in the image with what it learned about where things
usually are (road below, cars on the road, buildings to the sides). In a world that repeats its
layout the second alone scores well, and a score means little until the two are separated:

- image-free prior: at every voxel the most frequent class of the training labels, with no
  image at all. A model that does not beat it has learned a layout, not perception.
- other image: the same model given, for each frame, another world's image while the frame's
  own projection, targets and invalid mask stay. What it loses against its own score is the
  perception gain: how much of the score comes from the image.

Both are scored with `SSCMetrics` on exactly the targets the model is scored on.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from monoocc_ros.classes import IGNORE, NUM_CLASSES
from monoocc_ros.data.dataset import DatasetConfig, SemanticKITTIDataset, list_sequences, load_voxel_target
from monoocc_ros.data.formats import FILE_GRID
from monoocc_ros.metrics import RegionMetrics, SSCScores
from monoocc_ros.paths import cache_dir

PRIOR_CACHE_VERSION = 1  # bump when the prior's definition changes, so old cache files are not reused


# --- the image-free prior ---------------------------------------------------------------


def label_files(root: str | Path, sequences: tuple[str, ...]) -> list[Path]:
    """Every labelled frame's `voxels/NNNNNN.label` of the sequences, in order."""
    files = [p for s in sequences for p in sorted((Path(root) / "sequences" / s / "voxels").glob("*.label"))]
    if not files:
        raise FileNotFoundError(
            f"no labelled frames (voxels/*.label) in {root} sequences {list(sequences)}: "
            "the image-free prior is built from training labels"
        )
    return files


def prior_cache_path(root: str | Path, sequences: tuple[str, ...], files: list[Path]) -> Path:
    """`$MONOOCC_CACHE/prior/<key>.npz`, the key a hash of the resolved root, the sequences and
    every voxel file's name, size and modification time: relabelled or added frames make a new
    key, so a stale prior is never read back."""
    stamps = []
    for label in files:
        for path in (label, label.with_suffix(".invalid")):
            st = path.stat() if path.exists() else None
            stamps.append([str(path.relative_to(root)), st and st.st_size, st and st.st_mtime_ns])
    payload = {
        "version": PRIOR_CACHE_VERSION,
        "root": str(Path(root).resolve()),
        "sequences": list(sequences),
        "files": stamps,
    }
    key = hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:32]
    return cache_dir("prior") / f"{key}.npz"


def count_classes(files: list[Path], progress: bool = True) -> np.ndarray:
    """(NUM_CLASSES, X*Y*Z) how often each voxel was each class over the frames, counting only
    valid voxels (not ignored, not invalid). uint16 (84 MB for the full grid) as long as no
    count can overflow it."""
    n = FILE_GRID.num_voxels
    dtype = np.uint16 if len(files) < np.iinfo(np.uint16).max else np.uint32
    counts = np.zeros((NUM_CLASSES, n), dtype)
    flat = counts.reshape(-1)
    for label in tqdm(files, desc="prior", unit="frame", disable=not progress, leave=False):
        target, _ = load_voxel_target(label.with_suffix(""))
        target = target.reshape(-1)
        valid = np.flatnonzero(target != IGNORE)
        # One class per voxel and frame: the indices are distinct, so a fancy-index += counts right.
        flat[target[valid].astype(np.int64) * n + valid] += 1
    return counts


def compute_prior(files: list[Path], progress: bool = True) -> np.ndarray:
    """(X, Y, Z) uint8: each voxel's most frequent valid class, ties to the lowest id; a voxel
    never observed valid is 0 (empty), argmax's answer for all-zero counts."""
    return count_classes(files, progress).argmax(0).astype(np.uint8).reshape(FILE_GRID.shape)


def _read_cached(path: Path) -> np.ndarray | None:
    """The cached prior, or None when absent or unreadable (then it is simply computed again)."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            prior = data["prior"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    return prior if prior.shape == FILE_GRID.shape and prior.dtype == np.uint8 else None


def _write_cached(path: Path, prior: np.ndarray) -> None:
    """Temporary file + rename, so an interrupted run never leaves half a cache file; a cache
    that cannot be written (read-only home) costs a recomputation next time, not this run."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez_compressed(f, prior=prior)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:
        warnings.warn(f"could not cache the image-free prior at {path}: {exc}", stacklevel=2)


def image_free_prior(root: str | Path, sequences: tuple[str, ...], progress: bool = True) -> np.ndarray:
    """The prior of `sequences` under `root` (see `compute_prior`), computed once and then read
    from the cache (`prior_cache_path`)."""
    files = label_files(root, sequences)
    path = prior_cache_path(root, sequences, files)
    prior = _read_cached(path)
    if prior is None:
        prior = compute_prior(files, progress)
        _write_cached(path, prior)
    return prior


def score_fixed_prediction(prediction: np.ndarray, dataset: SemanticKITTIDataset, progress: bool = True) -> SSCScores:
    """SSC scores of one prediction used for every frame of `dataset`, read with the Dataset's
    own target reader (same targets, same invalid mask) but without decoding any image."""
    metrics = RegionMetrics()
    for name, frame in tqdm(dataset.items, desc="prior eval", unit="frame", disable=not progress, leave=False):
        stem = dataset.sequences[name].path / "voxels" / f"{frame:06d}"
        if stem.with_suffix(".label").exists():
            target, invalid = load_voxel_target(stem)
            metrics.update(prediction, target, invalid, dataset.view_mask(name))
    return metrics.scores()


# --- the other-image control --------------------------------------------------------------


def donor_sequences(root: str | Path, sequences: tuple[str, ...]) -> dict[str, str]:
    """Which sequence lends its images to each evaluated one: the next in the list (cyclic), so
    every frame sees another world; a single evaluated sequence borrows from the first other
    sequence under the root."""
    seqs = tuple(dict.fromkeys(sequences))
    if len(seqs) > 1:
        return {s: seqs[(i + 1) % len(seqs)] for i, s in enumerate(seqs)}
    others = [s for s in list_sequences(root) if s not in seqs]
    if not others:
        raise ValueError(
            f"the other-image control needs a second sequence under {root}/sequences to take images from; "
            f"it has only {list(seqs)}"
        )
    return {seqs[0]: others[0]}


class OtherImageDataset(Dataset):
    """`base`'s items with each frame's image (and a teacher's `other_images`) taken from the
    same frame index, modulo its length, of the donor sequence; projections, targets, invalid
    and meta stay the frame's own. So the model reads another world's picture through this
    world's camera geometry, and only what it takes from the image can change."""

    def __init__(self, base: SemanticKITTIDataset, donors: dict[str, str]) -> None:
        if base.cfg.image_size is None:
            raise ValueError("the other-image control needs a fixed image_size, so every image fits the projection")
        missing = sorted({name for name, _ in base.items} - donors.keys())
        if missing:
            raise ValueError(f"no donor sequence for evaluated sequences {missing}")
        self.base = base
        self.donors = donors
        cfg = base.cfg
        self.donor_set = SemanticKITTIDataset(
            DatasetConfig(
                root=cfg.root,
                sequences=tuple(sorted(set(donors.values()))),
                image_size=cfg.image_size,
                downsample=(),
                load_points=False,
                require_labels=False,
            )
        )

    def __len__(self) -> int:
        return len(self.base)

    def view_mask(self, name: str):
        return self.base.view_mask(name)  # the scored geometry is the base sequence's

    def donor_frame(self, name: str, frame: int) -> tuple[str, int]:
        """(donor sequence, donor frame) whose image replaces `frame` of sequence `name`."""
        donor = self.donors[name]
        return donor, frame % self.donor_set.sequences[donor].num_images

    def __getitem__(self, index: int) -> dict:
        item = self.base[index]
        name, frame = self.base.items[index]
        donor, donor_frame = self.donor_frame(name, frame)
        item["image"] = self.donor_set.image_tensor(donor, donor_frame)
        if "other_images" in item:
            frames = [self.base.other_frame(name, frame, off) for off in self.base.cfg.frame_offsets]
            item["other_images"] = torch.stack(
                [self.donor_set.image_tensor(*self.donor_frame(name, j)) for j in frames]
            )
        item["meta"] = {**item["meta"], "image_sequence": donor, "image_frame": donor_frame}
        return item


# --- the report ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ControlReport:
    """The model's scores beside the two controls, on the same frames."""

    model: SSCScores
    prior: SSCScores
    other_image: SSCScores
    sequences: tuple[str, ...]
    prior_sequences: tuple[str, ...]
    donors: dict[str, str]

    @property
    def perception_gain(self) -> float:
        """mIoU points the model loses when it sees another world's image."""
        return self.model.miou - self.other_image.miou

    @property
    def relative_drop(self) -> float | None:
        """The perception gain as a percentage of the model's mIoU (None when that is 0)."""
        return 100.0 * self.perception_gain / self.model.miou if self.model.miou > 0 else None

    def to_dict(self) -> dict:
        return {
            "prior": self.prior.to_dict(),
            "other_image": self.other_image.to_dict(),
            "perception_gain": {"miou": self.perception_gain, "relative_drop_percent": self.relative_drop},
            "prior_sequences": list(self.prior_sequences),
            "image_donors": dict(self.donors),
        }

    def table(self) -> str:
        """The compact comparison printed after the model's own table."""
        donors = ", ".join(f"{s} <- {d}" for s, d in self.donors.items())
        lines = [
            f"controls on sequences {list(self.sequences)}: image-free prior from {list(self.prior_sequences)}, "
            f"other images from ({donors})",
            f"{'':<18}{'compl. IoU':>11}{'mIoU':>8}{'precision':>11}{'recall':>8}",
        ]
        rows = (("model", self.model), ("image-free prior", self.prior), ("other image", self.other_image))
        for label, s in rows:
            lines.append(f"{label:<18}{s.completion_iou:11.2f}{s.miou:8.2f}{s.precision:11.2f}{s.recall:8.2f}")
        if all(s.in_view is not None for _, s in rows):
            lines.append("in the camera's view only:")
            for label, s in rows:
                v = s.in_view
                assert v is not None  # checked by the all() above
                lines.append(f"{label:<18}{v.completion_iou:11.2f}{v.miou:8.2f}{v.precision:11.2f}{v.recall:8.2f}")
        drop = "n/a (model mIoU is 0)" if self.relative_drop is None else f"{self.relative_drop:.1f} %"
        lines.append(
            f"perception gain: {self.perception_gain:.2f} mIoU points (model {self.model.miou:.2f} - other image "
            f"{self.other_image.miou:.2f}); relative drop {drop}"
        )
        lines += self.notes()
        return "\n".join(lines)

    def notes(self) -> list[str]:
        """Warnings a reader should not miss."""
        notes = []
        if self.model.miou <= self.prior.miou:
            notes.append(
                "note: the model does not beat the image-free prior on mIoU: its score is explained by the scene "
                "layout, not by perception"
            )
        overlap = sorted(set(self.prior_sequences) & set(self.sequences))
        if overlap:
            notes.append(f"note: the prior is built from evaluated sequences {overlap}: its score is optimistic")
        return notes
