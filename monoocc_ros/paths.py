"""Where the package's own files are: shipped files, the default model, the caches.

Files shipped beside the Python package (config/, models/, msg/) live in the source tree when
running from a checkout or the pip environment of `make setup`, and under
share/monoocc_ros/ after a colcon install; `package_file` finds them in either.
"""

from __future__ import annotations

import os
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[1]
# The model the node, `predict`, `replay-eval`, the demo and the benchmarks use when given none.
DEFAULT_MODEL = "models/student_tiny.pt"


def package_file(relative: str) -> Path:
    """A shipped file: the source tree first, then the ROS package share directory. When neither
    has it, the source-tree path is returned so the caller's error names a sensible place."""
    here = SOURCE_ROOT / relative
    if here.exists():
        return here
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:
        return here
    try:
        shared = Path(get_package_share_directory("monoocc_ros")) / relative
    except PackageNotFoundError:
        return here
    return shared if shared.exists() else here


def default_model() -> Path:
    """The shipped default model (`DEFAULT_MODEL`), wherever the package is installed."""
    return package_file(DEFAULT_MODEL)


# The kinds of derived files, each a folder under the cache root, and what writes them
# (`monoocc cache` shows and frees them: cache.py).
CACHE_KINDS: dict[str, str] = {
    "items": "decoded training items (data/item_cache.py)",
    "teacher": "teacher outputs for distillation (trainer/teacher_cache.py)",
    "prior": "image-free priors for the eval controls (trainer/controls.py)",
    "onnx": "ONNX exports made by the node and benchmarks (inference.py)",
}


def cache_root() -> Path:
    """`$MONOOCC_CACHE` (made absolute), else `~/.cache/monoocc_ros`. The variable lets tests and
    read-only homes put the caches elsewhere; set but empty counts as unset (never the current
    folder: `monoocc cache --clear` deletes under it)."""
    return Path(os.environ.get("MONOOCC_CACHE") or Path.home() / ".cache" / "monoocc_ros").absolute()


def cache_dir(kind: str) -> Path:
    """The folder for one kind of derived file (`CACHE_KINDS`). Everything there can be rebuilt
    from its inputs, so deleting it loses nothing (only not while a training run is writing it)."""
    if kind not in CACHE_KINDS:
        raise ValueError(f"unknown cache kind {kind!r}; expected one of {sorted(CACHE_KINDS)}")
    return cache_root() / kind
