"""What the package's derived-file caches hold on disk, and freeing them (`monoocc cache`).

Why: training writes large caches under `paths.cache_dir` (`$MONOOCC_CACHE`, else
`~/.cache/monoocc_ros`): decoded items (~0.2 MB a frame per Dataset config) and one teacher-output
cache per (teacher checkpoint, training items), ~6 GB for the benchmark's 1000 frames. A new
teacher checkpoint makes a new cache, so three ablation seeds alone leave ~18 GB, and a full disk
breaks far more than training. Users see the usage with `monoocc cache` and free it with
`monoocc cache --clear`; the ablation frees each seed's teacher cache once nothing reads it.
Everything here can be rebuilt from its inputs, so deleting it never loses results.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from monoocc_ros.paths import cache_dir

# The kinds of derived files, each a folder under the cache root, and what writes them.
KINDS: dict[str, str] = {
    "items": "decoded training items (data/item_cache.py)",
    "teacher": "teacher outputs for distillation (trainer/teacher_cache.py)",
    "prior": "image-free priors for the eval controls (trainer/controls.py)",
    "onnx": "ONNX exports made by the node and benchmarks (inference.py)",
}


@dataclass(frozen=True)
class Usage:
    """The disk use of one kind of cache."""

    kind: str
    folder: Path
    entries: int  # files or folders directly under `folder`
    bytes: int

    def line(self) -> str:
        return f"{self.kind:8s} {_size(self.bytes):>9s}  {self.entries:4d} entries  {self.folder}  ({KINDS[self.kind]})"


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def tree_bytes(path: Path) -> int:
    """Bytes of the regular files under `path` (links are not followed: they are not ours)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def usage(kinds: list[str] | None = None) -> list[Usage]:
    """The disk use of each kind (default: all of KINDS); a kind never written counts zero."""
    rows = []
    for kind in kinds or list(KINDS):
        folder = cache_dir(kind)
        children = list(folder.iterdir()) if folder.is_dir() else []
        rows.append(Usage(kind, folder, len(children), sum(tree_bytes(c) for c in children)))
    return rows


def clear(kinds: list[str]) -> int:
    """Deletes the caches of `kinds`; the bytes freed."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown cache kind(s) {unknown}; expected some of {sorted(KINDS)}")
    freed = 0
    for row in usage(kinds):
        freed += row.bytes
        shutil.rmtree(row.folder, ignore_errors=True)
    return freed


def remove_teacher_caches(teacher_sha256: str) -> int:
    """Deletes every automatic teacher cache computed by the checkpoint with this SHA-256 (their
    folder names start with its first 12 hex digits: `teacher_cache.cache_key`); the bytes freed.
    Caches a user put elsewhere (`teacher_cache: PATH`) are theirs and left alone."""
    folder = cache_dir("teacher")
    if not folder.is_dir():
        return 0
    freed = 0
    for path in folder.glob(f"{teacher_sha256[:12]}-*"):
        freed += tree_bytes(path)
        shutil.rmtree(path, ignore_errors=True)
    return freed


def main(clear_kinds: list[str] | None) -> int:
    """`monoocc cache [--clear [KIND ...]]`: prints the usage, or frees the kinds (all without KIND)."""
    if clear_kinds is not None:
        kinds = clear_kinds or list(KINDS)
        freed = clear(kinds)
        print(f"freed {_size(freed)} ({', '.join(kinds)}); every cache is rebuilt when next needed")
        return 0
    rows = usage()
    for row in rows:
        print(row.line())
    print(f"total    {_size(sum(r.bytes for r in rows)):>9s}  (free it with: monoocc cache --clear [KIND ...])")
    return 0
