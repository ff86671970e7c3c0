"""Teacher outputs computed once and read back while the student trains.

Why: a distilled student step used to run the frozen teacher too (its other frames, its LiDAR,
its larger backbone: more than half of the step on 2 cores). The Dataset has no random
augmentation, so the teacher's answer for a training item never changes: it is computed once
per (teacher checkpoint, training items), as the official MonoOcc code precomputes its teacher
features, and memory-mapped from disk afterwards. The student's maths is unchanged: features are
stored as float32, exactly what the live teacher would hand over (logits, only with
`loss.distill_logit`, as float16: 21 MB per frame in float32).

Layout of a cache folder (written to a temporary name and renamed, so a folder that exists is
complete):
  meta.json                 teacher sha256 and config name, data root, the data files' fingerprint,
                            the items in order
  voxel_features.npy        (N, C, Xq, Yq, Zq) float32
  logits.npy                (N, 20, Xs, Ys, Zs) float16, only with logits
A cache that does not match the teacher checkpoint, the data files (size and mtime of every file
of the sequences, `data_fingerprint`) or the training items is an error that says what differs;
it is never used silently.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

if TYPE_CHECKING:
    from monoocc_ros.data.dataset import SemanticKITTIDataset
    from monoocc_ros.model.monoocc import MonoOcc

FORMAT = 2  # 2: meta.json holds the data fingerprint


class TeacherCacheError(ValueError):
    """A teacher cache that does not belong to this teacher or these training items."""


def data_fingerprint(dataset: SemanticKITTIDataset) -> str:
    """A hash of every file of the Dataset's sequences (path, size, mtime): data written again
    under the same frame names is other data."""
    from monoocc_ros.data.item_cache import sequence_fingerprint

    prints = {name: sequence_fingerprint(seq.path) for name, seq in sorted(dataset.sequences.items())}
    return hashlib.sha256(json.dumps(prints).encode()).hexdigest()


def cache_key(
    teacher_sha256: str, data_root: str, data_print: str, items: list[tuple[str, int]], with_logits: bool
) -> str:
    """The default cache folder name: the teacher's content, the data files and the exact item list."""
    text = json.dumps([FORMAT, teacher_sha256, str(Path(data_root).resolve()), data_print, items, with_logits])
    return f"{teacher_sha256[:12]}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def is_cache_of(name: str, teacher_sha256: str) -> bool:
    """Whether a folder name is a finished default cache (`cache_key`) of this teacher checkpoint;
    a build still being written (`<key>.<pid>.tmp`) is not."""
    return re.fullmatch(f"{teacher_sha256[:12]}-[0-9a-f]{{12}}", name) is not None


@dataclass(frozen=True)
class TeacherCache:
    path: Path
    items: list[tuple[str, int]]
    features: np.ndarray  # memory-mapped (N, C, Xq, Yq, Zq) float32
    logits: np.ndarray | None  # memory-mapped (N, 20, Xs, Ys, Zs) float16

    @classmethod
    def open(
        cls, path: str | Path, teacher_sha256: str, data_print: str, items: list[tuple[str, int]], with_logits: bool
    ) -> TeacherCache:
        path = Path(path)
        meta_path = path / "meta.json"
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise TeacherCacheError(f"teacher cache {path}: cannot read {meta_path.name} ({exc})") from None
        if meta.get("format") != FORMAT:
            raise TeacherCacheError(f"teacher cache {path} has format {meta.get('format')!r}, expected {FORMAT}")
        if meta["teacher_sha256"] != teacher_sha256:
            raise TeacherCacheError(
                f"teacher cache {path} was computed by another teacher checkpoint (sha256 "
                f"{meta['teacher_sha256'][:12]}, this one {teacher_sha256[:12]}); delete it or set teacher_cache "
                "to a new folder"
            )
        if meta["data_fingerprint"] != data_print:
            raise TeacherCacheError(
                f"teacher cache {path} was computed from other data files (fingerprint "
                f"{meta['data_fingerprint'][:12]}, now {data_print[:12]}: the data was written again); delete it or "
                "set teacher_cache to a new folder"
            )
        cached = [tuple(i) for i in meta["items"]]
        if cached != list(items):
            extra = sorted(set(cached) ^ set(items))[:3]
            raise TeacherCacheError(
                f"teacher cache {path} holds other training items ({len(cached)} cached, {len(items)} now; "
                f"e.g. {extra} differ); delete it or set teacher_cache to a new folder"
            )
        if with_logits and not (path / "logits.npy").is_file():
            raise TeacherCacheError(f"teacher cache {path} has no logits, but loss.distill_logit is set")
        features = np.load(path / "voxel_features.npy", mmap_mode="r")
        logits = np.load(path / "logits.npy", mmap_mode="r") if with_logits else None
        return cls(path, cached, features, logits)

    @staticmethod
    def build(
        teacher: MonoOcc,
        teacher_set: SemanticKITTIDataset,
        path: str | Path,
        teacher_sha256: str,
        data_root: str,
        data_print: str,
        with_logits: bool,
        inputs,
        progress: bool = True,
    ) -> None:
        """Run `teacher` over every item of `teacher_set` (the teacher's Dataset: its frames and
        LiDAR) and write the cache to `path`. `inputs(batch)` gives the teacher's arguments."""
        path = Path(path)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        items = [tuple(i) for i in teacher_set.items]
        features = logits = None
        teacher.eval()
        loader = DataLoader(teacher_set, batch_size=1, shuffle=False, num_workers=1)
        try:
            with torch.inference_mode():
                for row, batch in enumerate(tqdm(loader, desc="teacher cache", unit="frame", disable=not progress)):
                    out = teacher(*inputs(batch), with_2d=False)  # the 2D head's output is never cached
                    f = out["voxel_features"][0].float().cpu().numpy()
                    if features is None:
                        features = np.lib.format.open_memmap(
                            tmp / "voxel_features.npy", "w+", np.float32, (len(items), *f.shape)
                        )
                    features[row] = f
                    if with_logits:
                        lg = out["logits"][0].cpu().numpy().astype(np.float16)
                        if logits is None:
                            logits = np.lib.format.open_memmap(
                                tmp / "logits.npy", "w+", np.float16, (len(items), *lg.shape)
                            )
                        logits[row] = lg
            for array in (features, logits):
                if array is not None:
                    array.flush()
            meta = {"format": FORMAT, "teacher_sha256": teacher_sha256, "teacher": teacher.cfg.name,
                    "data_root": str(data_root), "data_fingerprint": data_print, "items": items,
                    "with_logits": with_logits}  # fmt: skip
            (tmp / "meta.json").write_text(json.dumps(meta))
            del features, logits  # close the maps before the rename
            os.replace(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


class WithTeacherOutputs(Dataset):
    """A student's Dataset with the cached teacher outputs of each item added:
    `teacher_voxel_features` (C, Xq, Yq, Zq) float32 and, with logits, `teacher_logits`."""

    def __init__(self, base: SemanticKITTIDataset, cache: TeacherCache) -> None:
        if [tuple(i) for i in base.items] != cache.items:
            raise TeacherCacheError(f"teacher cache {cache.path} does not hold this Dataset's items in order")
        self.base, self.cache = base, cache
        self.items = base.items

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict:
        item = self.base[index]
        item["teacher_voxel_features"] = torch.from_numpy(np.array(self.cache.features[index]))
        if self.cache.logits is not None:
            item["teacher_logits"] = torch.from_numpy(np.array(self.cache.logits[index], dtype=np.float32))
        return item


def teacher_outputs(batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
    """The cached teacher outputs of a collated batch, as the live teacher's would be."""
    out = {"voxel_features": batch["teacher_voxel_features"].to(device)}
    if "teacher_logits" in batch:
        out["logits"] = batch["teacher_logits"].to(device)
    return out
