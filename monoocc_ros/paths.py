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


def cache_dir(kind: str) -> Path:
    """The folder for one kind of derived file (onnx/, prior/): under `$MONOOCC_CACHE`, else
    `~/.cache/monoocc_ros`. Everything there can be rebuilt from its inputs, so deleting it is
    always safe; the variable lets tests and read-only homes put it elsewhere."""
    return Path(os.environ.get("MONOOCC_CACHE", Path.home() / ".cache" / "monoocc_ros")) / kind
