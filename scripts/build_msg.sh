#!/usr/bin/env bash
# Builds msg/VoxelGrid.msg with the real rosidl toolchain (the same CMakeLists.txt a colcon
# workspace uses, with MONOOCC_INSTALL_PYTHON=OFF) and installs the generated Python,
# C and C++ code into the virtualenv. Our source package stays editable; the generated
# monoocc_ros/__init__.py and egg-info are removed so that the source __init__.py (which
# extends __path__) is the package's one __init__.py and pip sees one distribution.
set -euo pipefail
venv=$(cd "${1:?usage: build_msg.sh VENV}" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
build="$root/build/msg"
mkdir -p "$build"
export AMENT_PREFIX_PATH="$venv" CMAKE_PREFIX_PATH="$venv" _ROS_WHEELS_BOOTSTRAP_COMPLETE=1
cmake -S "$root" -B "$build" -DMONOOCC_INSTALL_PYTHON=OFF -DBUILD_TESTING=OFF \
  -DCMAKE_PREFIX_PATH="$venv" -DCMAKE_INSTALL_PREFIX="$venv" \
  -DPython3_EXECUTABLE="$venv/bin/python" >"$build.log" 2>&1 || { cat "$build.log"; exit 1; }
cmake --build "$build" -j2 >>"$build.log" 2>&1 || { tail -50 "$build.log"; exit 1; }
cmake --install "$build" >>"$build.log" 2>&1 || { tail -50 "$build.log"; exit 1; }
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
rm -f "$site/monoocc_ros/__init__.py"
rm -rf "$site"/monoocc_ros-*.egg-info
echo "setup: VoxelGrid message built and installed into $venv (log: $build.log)"
