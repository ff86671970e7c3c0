"""PyTorch Dataset over any SemanticKITTI-format root (the real one or `monoocc synth` output).

One item is one labelled frame (`voxels/NNNNNN.label` exists; with `require_labels=False`
every image, targets only where labels exist) with:
  image          (3, H, W) float32 RGB in [0, 1] (ImageNet normalisation is the model's job,
                 so training and inference share it)
  projection     (3, 4) float32: grid/LiDAR frame -> pixels of `image` (P2 @ Tr, resized)
  target         (X, Y, Z) int64 train ids, 255 where ignored or invalid
  target_<s>     the same reduced by factor s with the official rule, for each `downsample`
  invalid        (X, Y, Z) bool
  labels_2d      (H', W') int64 sparse semantic labels from projected LiDAR points (255 = none),
  depth_2d       (H', W') float32 sparse depth (0 = none); H', W' = H, W / `label_stride`
  other_images   (K, 3, H, W), other_projections (K, 3, 4): frames at `frame_offsets`, each
                 projected from this frame's grid (P2 @ Tr @ inv(pose_j) @ pose_i); an offset
                 outside the sequence reuses the current frame
  lidar_evidence (Xq, Yq, Zq) float32, only with `lidar_offsets` (a privileged teacher's input):
                 log(1 + n), n the LiDAR returns of the scans at those offsets (within the
                 sequence) that fall in each voxel of the grid reduced by `lidar_scale`, each scan
                 moved into this frame's LiDAR frame by the poses
  meta           sequence, frame, stamp (s)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from torch.utils.data import Dataset

from monoocc_ros.classes import IGNORE, raw_to_train
from monoocc_ros.data import formats as F
from monoocc_ros.data.item_cache import ItemCache
from monoocc_ros.errors import one_line
from monoocc_ros.geometry import (
    camera_pose_to_lidar,
    lidar_projection,
    other_frame_projection,
    points_to_sparse_image,
    resize_projection,
)
from monoocc_ros.model.config import yaml_problem
from monoocc_ros.preprocess import TRAIN_SIZE, fit_to_training_camera

SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("00", "01", "02", "03", "04", "05", "06", "07", "09", "10"),
    "val": ("08",),
    "test": tuple(f"{i:02d}" for i in range(11, 22)),
}
SPLITS_FILE = "splits.yaml"  # optional, in a dataset root: its own split -> sequences table


@dataclass(frozen=True)
class DatasetConfig:
    root: str
    sequences: tuple[str, ...]
    image_size: tuple[int, int] | None = None  # (H, W); None keeps the file's size
    # The focal length images are brought to, as a multiple of the training camera's (the model's
    # image_scale; None: image_size's height / the training height). preprocess.py, as the node.
    image_scale: float | None = None
    frame_offsets: tuple[int, ...] = ()
    downsample: tuple[int, ...] = (2,)
    label_stride: int = 4  # 2D labels at 1/4 resolution, as the paper's auxiliary head
    load_points: bool = True
    require_labels: bool = True  # False: every image is an item (e.g. the test split), targets when present
    lidar_offsets: tuple[int, ...] = ()  # accumulated scans for `lidar_evidence` (privileged teachers)
    lidar_scale: int = 4  # the grid reduction of `lidar_evidence` (the teacher's query grid)
    item_cache: str | None = None  # a folder for decoded items (data/item_cache.py); None: decode every time


@dataclass
class _Sequence:
    name: str
    path: Path
    calib: dict[str, np.ndarray]
    poses: np.ndarray | None
    times: np.ndarray | None
    num_images: int
    first_image: Path  # its size is the camera's image size


def list_sequences(root: str | Path) -> list[str]:
    """Sequence names under `root/sequences` (sorted)."""
    seq_root = Path(root) / "sequences"
    if not seq_root.is_dir():
        raise FileNotFoundError(f"{seq_root}: not a directory; expected a SemanticKITTI root with sequences/XX/")
    return sorted(p.name for p in seq_root.iterdir() if p.is_dir())


def _sequence_name(path: Path, split: str, value: object) -> str:
    """A sequence name from splits.yaml. Unquoted numbers arrive as ints (YAML 1.1 reads 11 as
    11 and 07 as octal 7), so an int is written back two-digit; a bool or a float is a mistake."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return f"{value:02d}"
    raise F.FormatError(
        f"{path}: split {split!r} lists {value!r} ({type(value).__name__}); expected sequence names "
        "such as '08' (quoted strings preferred; unquoted integers are read as two-digit names)"
    )


def load_splits(root: str | Path) -> dict[str, tuple[str, ...]]:
    """The split -> sequence names table of a dataset root: `ROOT/splits.yaml` when it exists,
    else the SemanticKITTI `SPLITS`.

    A root that is not SemanticKITTI (a synthetic world, a custom recording) rarely has its
    sequences where the official train/val lists expect them; the file says which sequences
    train and which validate, for that root only. Its lists replace `SPLITS` entirely, e.g.

        train: ["00", "01", "02"]
        val: ["08", "11"]

    Quote the names: unquoted, YAML reads 11 as the integer 11 and 07 as octal 7; integers are
    accepted and written two-digit (7 -> "07"), but 010 would be octal 8 -> "08"."""
    path = Path(root) / SPLITS_FILE
    if not path.is_file():
        return dict(SPLITS)
    expected = "expected a mapping of split name to a list of sequence names, e.g. {train: ['00', '01'], val: ['08']}"
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise F.FormatError(f"{path}: not valid YAML ({yaml_problem(exc)}); {expected}") from None
    if not isinstance(data, dict) or not data:
        raise F.FormatError(f"{path}: holds {'nothing' if data is None else type(data).__name__}; {expected}")
    splits: dict[str, tuple[str, ...]] = {}
    for split, names in data.items():
        if not isinstance(split, str) or not isinstance(names, list):
            raise F.FormatError(f"{path}: split {split!r} maps to {type(names).__name__}; {expected}")
        splits[split] = tuple(_sequence_name(path, split, n) for n in names)
    return splits


def load_voxel_target(stem: Path) -> tuple[np.ndarray, np.ndarray]:
    """(target, invalid) of one frame from `voxels/NNNNNN.label` and `.invalid`: target (X, Y, Z)
    uint8 train ids, 255 where ignored or invalid; invalid (X, Y, Z) bool. The Dataset and the
    image-free controls both read targets here, so a control is scored on exactly the model's."""
    target = raw_to_train(F.read_voxel_labels(stem.with_suffix(".label"), F.FILE_GRID.shape))
    invalid = F.read_voxel_bits(stem.with_suffix(".invalid"), F.FILE_GRID.shape)
    np.putmask(target, invalid, IGNORE)  # in place: raw_to_train returns a new uint8 array
    return target, invalid


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)


def _tensors(arrays: dict[str, np.ndarray]) -> dict:
    """Compact arrays (`SemanticKITTIDataset._decode`, or the item cache) -> the item's tensors
    with the dtypes the module doc lists."""
    item: dict = {}
    for key, value in arrays.items():
        if key == "image":
            item[key] = _to_tensor(value)
        elif key == "other_images":
            item[key] = torch.stack([_to_tensor(v) for v in value])
        elif key == "target" or key.startswith("target_") or key == "labels_2d":
            item[key] = torch.from_numpy(value.astype(np.int64))
        else:
            item[key] = torch.from_numpy(value)
    return item


class SemanticKITTIDataset(Dataset):
    def __init__(self, cfg: DatasetConfig) -> None:
        self.cfg = cfg
        root = Path(cfg.root)
        if not (root / "sequences").is_dir():
            raise FileNotFoundError(
                f"dataset root {root} has no sequences/ folder; expected ROOT/sequences/XX/"
                "{image_2,voxels,calib.txt,...} (SemanticKITTI layout, or `monoocc synth --out ROOT`)"
            )
        self.sequences: dict[str, _Sequence] = {}
        self._views: dict[str, np.ndarray] = {}  # view_mask per sequence
        self.items: list[tuple[str, int]] = []
        for name in cfg.sequences:
            path = root / "sequences" / name
            if not path.is_dir():
                raise FileNotFoundError(f"sequence folder {path} does not exist (have: {list_sequences(root)})")
            images = sorted((path / "image_2").glob("*.png"))
            if not images:
                raise FileNotFoundError(f"{path / 'image_2'}: no .png images")
            seq = _Sequence(
                name=name,
                path=path,
                calib=F.read_calib(path / "calib.txt"),
                poses=F.read_poses(path / "poses.txt") if (path / "poses.txt").exists() else None,
                times=F.read_times(path / "times.txt") if (path / "times.txt").exists() else None,
                num_images=len(images),
                first_image=images[0],
            )
            if seq.poses is not None and len(seq.poses) < seq.num_images:
                raise F.FormatError(
                    f"{path / 'poses.txt'} has {len(seq.poses)} poses for {seq.num_images} images (truncated?)"
                )
            if cfg.frame_offsets and any(cfg.frame_offsets) and seq.poses is None:
                raise FileNotFoundError(f"{path / 'poses.txt'} is needed for frame offsets {cfg.frame_offsets}")
            if cfg.lidar_offsets and (seq.poses is None or not (path / "velodyne").is_dir()):
                raise FileNotFoundError(
                    f"{path}: poses.txt and velodyne/ are needed for accumulated LiDAR (offsets {cfg.lidar_offsets})"
                )
            self.sequences[name] = seq
            if cfg.require_labels:
                self.items += [(name, int(p.stem)) for p in sorted((path / "voxels").glob("*.label"))]
            else:
                self.items += [(name, int(p.stem)) for p in images]
        if not self.items:
            raise FileNotFoundError(f"no labelled frames (voxels/*.label) in {root} sequences {cfg.sequences}")
        self._cache = (
            ItemCache(cfg.item_cache, cfg, {n: q.path for n, q in self.sequences.items()}) if cfg.item_cache else None
        )

    def __len__(self) -> int:
        return len(self.items)

    def _image(self, seq: _Sequence, frame: int, projection: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        path = seq.path / "image_2" / f"{frame:06d}.png"
        image = np.array(Image.open(path).convert("RGB"))
        if self.cfg.image_size is not None:  # what the node does to a camera image (preprocess.py)
            scale = self.cfg.image_scale or self.cfg.image_size[0] / TRAIN_SIZE[0]
            image, projection = fit_to_training_camera(image, seq.calib["P2"], projection, self.cfg.image_size, scale)
        return image, projection

    def image_tensor(self, name: str, frame: int) -> torch.Tensor:
        """The image of `frame` in sequence `name` as an item's `image`: (3, H, W) at the
        configured size. For putting one sequence's picture in front of another's geometry."""
        image, _ = self._image(self.sequences[name], frame, np.zeros((3, 4)))
        return _to_tensor(image)

    def other_frame(self, name: str, frame: int, offset: int) -> int:
        """The frame shown at `offset` from `frame` in `other_images`: outside the sequence (or
        without poses) the frame itself."""
        seq = self.sequences[name]
        j = frame + offset
        if not (0 <= j < seq.num_images) or seq.poses is None or j >= len(seq.poses):
            return frame
        return j

    def check_files(self, progress: bool = False) -> None:
        """Every file the items will read exists and has its format's size (images: a PNG that
        decodes its header and checksums), before a long run starts. Raises FormatError naming the
        first bad file and how many there are: a corrupt download fails at once, not at hour 3."""
        from tqdm import tqdm

        n = F.FILE_GRID.num_voxels
        bad: list[str] = []
        for name, frame in tqdm(self.items, desc="checking files", unit="frame", disable=not progress, leave=False):
            seq = self.sequences[name]
            stem = f"{frame:06d}"
            image = seq.path / "image_2" / f"{stem}.png"
            try:
                with Image.open(image) as img:
                    img.verify()
            except Exception as exc:  # PIL raises many types for a broken file
                bad.append(f"{image} ({type(exc).__name__}: {one_line(exc)[:80]})")
            expected = {"voxels/{}.label": 2 * n, "voxels/{}.invalid": n // 8}
            if self.cfg.require_labels or (seq.path / "voxels" / f"{stem}.label").exists():
                for pattern, size in expected.items():
                    path = seq.path / pattern.format(stem)
                    if not path.is_file() or path.stat().st_size != size:
                        got = path.stat().st_size if path.is_file() else "missing"
                        bad.append(f"{path} ({got} bytes, expected {size})")
            scan = seq.path / "velodyne" / f"{stem}.bin"
            if self.cfg.load_points and scan.is_file() and scan.stat().st_size % 16:
                bad.append(f"{scan} ({scan.stat().st_size} bytes, not a multiple of 16)")
        if bad:
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            raise F.FormatError(f"unreadable dataset file: {bad[0]}{more}")

    def view_mask(self, name: str) -> np.ndarray:
        """(256, 256, 32) bool: voxels inside image_2's field of view in sequence `name` (its
        calibration and the size of its first image). Read once per sequence: eval asks per frame."""
        from monoocc_ros.inference import camera_view_mask

        if name not in self._views:
            seq = self.sequences[name]
            with Image.open(seq.first_image) as img:  # the size only: no pixels decoded
                w, h = img.size
            self._views[name] = camera_view_mask(seq.calib["P2"], seq.calib["Tr"], (h, w))
        return self._views[name]

    def lidar_evidence(self, name: str, frame: int) -> np.ndarray:
        """`lidar_evidence` of one frame: the scans at `lidar_offsets` in this frame's LiDAR frame,
        log(1 + returns) per voxel of the reduced grid."""
        seq, grid = self.sequences[name], F.FILE_GRID.scaled(self.cfg.lidar_scale)
        assert seq.poses is not None  # __init__ requires poses.txt for lidar_offsets
        here = np.linalg.inv(camera_pose_to_lidar(seq.poses[frame], seq.calib["Tr"]))
        counts = np.zeros(grid.num_voxels, np.float32)
        for j in sorted({frame + off for off in self.cfg.lidar_offsets}):
            path = seq.path / "velodyne" / f"{j:06d}.bin"
            if not (0 <= j < len(seq.poses)) or not path.exists():
                continue  # before the first or after the last scan: fewer scans, as at a drive's start
            move = here @ camera_pose_to_lidar(seq.poses[j], seq.calib["Tr"])
            xyz = F.read_scan(path)[:, :3].astype(np.float64) @ move[:3, :3].T + move[:3, 3]
            idx = np.floor((xyz - np.asarray(grid.origin)) / grid.resolution).astype(np.int64)
            keep = np.all((idx >= 0) & (idx < np.asarray(grid.shape)), axis=1)
            flat = np.ravel_multi_index(idx[keep].T, grid.shape)
            counts += np.bincount(flat, minlength=grid.num_voxels).astype(np.float32)
        return np.log1p(counts).reshape(grid.shape)

    def _decode(self, name: str, frame: int) -> dict[str, np.ndarray]:
        """The item of a frame as compact arrays (uint8 images and labels, `_tensors` makes the
        item): what the item cache stores."""
        seq = self.sequences[name]
        cfg = self.cfg
        base_proj = lidar_projection(seq.calib["P2"], seq.calib["Tr"])
        image, projection = self._image(seq, frame, base_proj)
        h, w = image.shape[:2]

        item: dict[str, np.ndarray] = {"image": image, "projection": projection.astype(np.float32)}
        vox = seq.path / "voxels" / f"{frame:06d}"
        if vox.with_suffix(".label").exists():
            target, invalid = load_voxel_target(vox)
            item["target"], item["invalid"] = target, invalid
            for s in cfg.downsample:
                item[f"target_{s}"] = F.downsample_labels(target, s)

        hs, ws = h // cfg.label_stride, w // cfg.label_stride
        labels_2d = np.full((hs, ws), IGNORE, np.uint8)
        depth_2d = np.zeros((hs, ws), np.float32)
        scan_path = seq.path / "velodyne" / f"{frame:06d}.bin"
        label_path = seq.path / "labels" / f"{frame:06d}.label"
        if cfg.load_points and scan_path.exists():
            scan = F.read_scan(scan_path)
            sem = None
            if label_path.exists():
                sem = raw_to_train(F.read_point_labels(label_path, num_points=len(scan))[0])
            small = resize_projection(projection, ws / w, hs / h)
            labels_2d, depth_2d = points_to_sparse_image(scan, sem, small, hs, ws)
        item["labels_2d"], item["depth_2d"] = labels_2d, depth_2d

        if cfg.frame_offsets:
            imgs, projs = [], []
            for off in cfg.frame_offsets:
                j = self.other_frame(name, frame, off)
                # Without poses.txt (__init__ allows that only for offsets that are all 0) every
                # "other" frame is this one (`other_frame`), seen from where it was taken.
                pose_here = seq.poses[frame] if seq.poses is not None else np.eye(4)
                pose_there = seq.poses[j] if seq.poses is not None else pose_here
                p = other_frame_projection(seq.calib["P2"], seq.calib["Tr"], pose_here, pose_there)
                img, p = self._image(seq, j, p)
                imgs.append(img)
                projs.append(p.astype(np.float32))
            item["other_images"], item["other_projections"] = np.stack(imgs), np.stack(projs)
        if cfg.lidar_offsets:
            item["lidar_evidence"] = self.lidar_evidence(name, frame)
        return item

    def _save_to_cache(self, name: str, frame: int, arrays: dict[str, np.ndarray]) -> None:
        """A cache that cannot be written (a full disk, no permission) must not stop training: say
        so once and decode every item from then on."""
        assert self._cache is not None
        try:
            self._cache.save(name, frame, arrays)
        except OSError as exc:
            warnings.warn(f"item cache turned off: cannot write {self._cache.path(name, frame)} ({exc})", stacklevel=2)
            self._cache = None

    def __getitem__(self, index: int) -> dict:
        name, frame = self.items[index]
        arrays = self._cache.load(name, frame) if self._cache is not None else None
        if arrays is None:
            arrays = self._decode(name, frame)
            if self._cache is not None:
                self._save_to_cache(name, frame, arrays)
        item = _tensors(arrays)
        seq = self.sequences[name]
        item["meta"] = {
            "sequence": name,
            "frame": frame,
            "stamp": float(seq.times[frame]) if seq.times is not None and frame < len(seq.times) else 0.0,
        }
        return item
