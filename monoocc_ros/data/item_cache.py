"""A disk cache of decoded Dataset items, so training pays for decoding a frame once.

Why: decoding one item costs ~0.1 s on the 2 cores here (PNG decode and resize, the official
majority downsampling of the voxel labels at every scale, LiDAR projection for the 2-D labels),
and every epoch decodes every frame again. Items are a deterministic function of the files and
the DatasetConfig (no augmentation), so they are cached as compact numpy arrays (uint8 images and
labels, bit-packed masks) in one uncompressed `.npz` per frame, read back in a few milliseconds.
A cached item is bit-identical to a decoded one (test/test_synth_dataset.py).

Validity: each sequence's cache folder is named by a hash of the DatasetConfig (all that shapes
an item), `FORMAT`, and the sequence's files (relative path, size, modification time): any
change to the data or the config reads a fresh folder. Files are written under a temporary name
and renamed, so DataLoader workers can share a folder and an interrupted write leaves nothing
half-written. Everything under the cache can be deleted at any time (`paths.cache_dir`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = 1  # of the files below; bump when decoding changes what an item holds
_BITS = "__bits__"  # suffix of a bit-packed bool array; its shape is stored under __shape__


def sequence_fingerprint(path: Path) -> str:
    """A hash of every file under a sequence folder: relative path, size, mtime (ns), following
    symbolic links (SemanticKITTI is often assembled from several downloads by linking folders).
    Written predictions (`predictions/`) are not inputs and are left out."""
    h = hashlib.sha256()
    for folder, dirs, files in os.walk(path, followlinks=True):
        rel_dir = Path(folder).relative_to(path)
        if rel_dir.parts and rel_dir.parts[0] == "predictions":
            dirs[:] = []
            continue
        dirs.sort()
        for name in sorted(files):
            file = Path(folder) / name
            try:
                st = file.stat()  # follows links
            except FileNotFoundError:  # a dangling link: not an input the Dataset can read
                continue
            h.update(f"{rel_dir / name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


class ItemCache:
    """Decoded items of one Dataset under `root`, one folder per sequence (see the module doc)."""

    def __init__(self, root: str | os.PathLike, config: Any, sequences: dict[str, Path]) -> None:
        cfg = {k: v for k, v in dataclasses.asdict(config).items() if k != "item_cache"}
        cfg["root"] = str(Path(cfg["root"]).resolve())
        base = json.dumps({"format": FORMAT, "config": cfg}, sort_keys=True, default=list)
        self.folders = {
            name: Path(root) / hashlib.sha256(f"{base}\0{sequence_fingerprint(path)}".encode()).hexdigest()[:24]
            for name, path in sequences.items()
        }

    def path(self, name: str, frame: int) -> Path:
        return self.folders[name] / f"{frame:06d}.npz"

    def load(self, name: str, frame: int) -> dict[str, np.ndarray] | None:
        """The cached arrays of a frame, or None when not cached (or unreadable: decoded again)."""
        path = self.path(name, frame)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                return _unpack({k: data[k] for k in data.files})
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            path.unlink(missing_ok=True)  # truncated or foreign: decoded and written again
            return None

    def save(self, name: str, frame: int, arrays: dict[str, np.ndarray]) -> None:
        path = self.path(name, frame)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                # numpy's stub cannot tell the arrays from its allow_pickle keyword in **kwargs.
                np.savez(f, **_pack(arrays))  # type: ignore[arg-type]
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _pack(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for k, v in arrays.items():
        if v.dtype == np.bool_:  # masks: 8x smaller as bits
            out[k + _BITS] = np.packbits(v.reshape(-1))
            out[k + "__shape__"] = np.asarray(v.shape, np.int64)
        else:
            out[k] = v
    return out


def _unpack(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for k, v in data.items():
        if k.endswith("__shape__"):
            continue
        if k.endswith(_BITS):
            name = k[: -len(_BITS)]
            shape = tuple(int(s) for s in data[name + "__shape__"])
            out[name] = np.unpackbits(v, count=int(np.prod(shape))).astype(bool).reshape(shape)
        else:
            out[k] = v
    return out
