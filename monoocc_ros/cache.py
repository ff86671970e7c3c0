"""What the package's derived-file caches hold on disk, and freeing them (`monoocc cache`).

Why: training writes large caches under `paths.cache_root()` (`$MONOOCC_CACHE`, else
`~/.cache/monoocc_ros`): decoded items (~3 MB a frame per Dataset config) and one teacher-output
cache per (teacher checkpoint, training items), ~6 GB for the benchmark's 1000 frames. A new
teacher checkpoint makes a new cache, so three ablation seeds alone leave ~18 GB, and a full disk
breaks far more than training. Users see the usage with `monoocc cache` and free it with
`monoocc cache --clear`; the ablation frees each seed's teacher cache once nothing reads it.
Everything here can be rebuilt from its inputs, so deleting it loses no result.

Deleting empties each kind's folder rather than removing it, so a folder that is a symbolic link
to a larger disk keeps working; an entry that is itself a link is unlinked, never followed.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from monoocc_ros.paths import CACHE_KINDS, cache_dir, cache_root


@dataclass(frozen=True)
class Usage:
    """The disk use of one kind of cache."""

    kind: str
    folder: Path
    entries: int  # files or folders directly under `folder`
    bytes: int

    def line(self) -> str:
        """One aligned row of `monoocc cache`."""
        what = CACHE_KINDS[self.kind]
        return f"{self.kind:8s} {size_text(self.bytes):>9s}  {self.entries:4d} entries  {self.folder}  ({what})"


def size_text(n: int) -> str:
    """Bytes in decimal units, as `df -H` and `du --si` print them."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def tree_bytes(path: Path) -> int:
    """Bytes of the regular files under `path`, links not followed (what deleting it frees).
    A file that vanishes meanwhile (a training run renaming its temporary files) counts zero."""
    if path.is_symlink():
        return 0
    if not path.is_dir():
        return _file_bytes(path)
    return sum(_file_bytes(p) for p in path.rglob("*") if not p.is_symlink())


def _file_bytes(path: Path) -> int:
    try:
        return path.stat().st_size if path.is_file() else 0
    except FileNotFoundError:
        return 0


def remove(path: Path) -> int:
    """Deletes a cache entry (a link: only the link); the bytes freed. Errors are raised, so no
    caller reports space it did not free."""
    freed = tree_bytes(path)
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path)
    return freed


def usage(kinds: list[str] | None = None) -> list[Usage]:
    """The disk use of each kind (None: all of CACHE_KINDS); a kind never written counts zero."""
    rows = []
    for kind in CACHE_KINDS if kinds is None else dict.fromkeys(kinds):
        folder = cache_dir(kind)
        children = list(folder.iterdir()) if folder.is_dir() else []
        rows.append(Usage(kind, folder, len(children), sum(tree_bytes(c) for c in children)))
    return rows


def clear(kinds: list[str]) -> int:
    """Deletes every entry of the caches of `kinds`; the bytes freed."""
    folders = [cache_dir(kind) for kind in dict.fromkeys(kinds)]  # an unknown kind fails before any deletion
    freed = 0
    for folder in folders:
        if folder.is_dir():
            freed += sum(remove(child) for child in list(folder.iterdir()))
    return freed


def remove_teacher_caches(teacher_sha256: str) -> int:
    """Deletes every finished default teacher cache computed by the checkpoint with this SHA-256
    (`teacher_cache.is_cache_of`); the bytes freed. A build in progress is left alone, and so are
    caches a user put elsewhere (`teacher_cache: PATH`)."""
    from monoocc_ros.trainer.teacher_cache import is_cache_of

    folder = cache_dir("teacher")
    if not folder.is_dir():
        return 0
    return sum(remove(p) for p in list(folder.iterdir()) if is_cache_of(p.name, teacher_sha256))


def main(clear_kinds: list[str] | None) -> int:
    """`monoocc cache [--clear [KIND ...]]`: prints the usage, or frees the kinds (all without KIND)."""
    if clear_kinds is not None:
        kinds = clear_kinds or list(CACHE_KINDS)
        freed = clear(kinds)
        print(f"freed {size_text(freed)} ({', '.join(dict.fromkeys(kinds))}); each is rebuilt when next needed")
        return 0
    rows = usage()
    for row in rows:
        print(row.line())
    total = size_text(sum(r.bytes for r in rows))
    print(f"total    {total:>9s}  under {cache_root()} (free it: monoocc cache --clear [KIND ...])")
    return 0
