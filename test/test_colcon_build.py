"""The package builds the way a ROS user builds it: `colcon build` in a workspace.

Checks that the message is generated, the Python package (sources and generated code in
one directory), the executables under lib/monoocc_ros, and launch/config/models under
share/monoocc_ros are all installed. Uses the real colcon and rosidl toolchain from .venv.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT


@pytest.mark.slow
def test_colcon_build_installs_everything(tmp_path: Path):
    venv = Path(sys.prefix)
    colcon = venv / "bin" / "colcon"
    if not colcon.exists():
        pytest.skip("colcon is not installed in this environment (make setup installs it)")
    src = tmp_path / "src"
    src.mkdir()
    (src / "monoocc_ros").symlink_to(REPO_ROOT)
    env = dict(os.environ, AMENT_PREFIX_PATH=str(venv), CMAKE_PREFIX_PATH=str(venv), _ROS_WHEELS_BOOTSTRAP_COMPLETE="1")
    proc = subprocess.run(
        [
            str(colcon),
            "build",
            "--base-paths",
            "src",
            "--event-handlers",
            "console_cohesion+",
            "--cmake-args",
            f"-DPython3_EXECUTABLE={sys.executable}",
            "-DBUILD_TESTING=OFF",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    prefix = tmp_path / "install" / "monoocc_ros"
    for exe in ("occupancy_node", "monoocc"):
        path = prefix / "lib" / "monoocc_ros" / exe
        assert path.is_file() and os.access(path, os.X_OK), path
    share = prefix / "share" / "monoocc_ros"
    for name in ("package.xml", "msg/VoxelGrid.msg", "launch", "config", "models"):
        assert (share / name).exists(), share / name
    pkg = next(prefix.glob("lib/python3*/site-packages/monoocc_ros"))
    for rel in ("__init__.py", "geometry.py", "ros/convert.py", "msg/__init__.py", "msg/_voxel_grid.py"):
        assert (pkg / rel).is_file(), pkg / rel
    # Our __init__.py (not the generated stub) is the package's one __init__.py.
    assert "extend_path" in (pkg / "__init__.py").read_text()
    assert list(pkg.glob("monoocc_ros_s__rosidl_typesupport_fastrtps_c*.so"))
    # The installed tree imports on its own, installed modules first.
    code = "import monoocc_ros.geometry as g, monoocc_ros.msg as m; print(g.__file__); print(m.VoxelGrid().axis_order)"
    run_env = dict(os.environ, PYTHONPATH=str(pkg.parent))
    out = subprocess.run(
        [sys.executable, "-c", code], env=run_env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    geometry_file, axis_order = out.stdout.split()
    assert Path(geometry_file).is_relative_to(prefix)
    assert axis_order == "0"
    shutil.rmtree(tmp_path / "build", ignore_errors=True)
