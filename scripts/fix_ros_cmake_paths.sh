#!/usr/bin/env bash
# The ROS PyPI wheels export CMake targets carrying their build machine's paths
# (/opt/python/cp311-cp311/...). CMake's generate step fails on them (colcon then reports
# the package as failed), so rewrite them to this virtualenv's real include dir and
# site-packages. Idempotent: a second run finds nothing to replace.
set -euo pipefail
venv=${1:?usage: fix_ros_cmake_paths.sh VENV}
py="$venv/bin/python"
include=$(_ROS_WHEELS_BOOTSTRAP_COMPLETE=1 "$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
purelib=$(_ROS_WHEELS_BOOTSTRAP_COMPLETE=1 "$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
files=$(grep -rlF /opt/python/cp311-cp311 "$venv/share" --include='*.cmake' 2>/dev/null || true)
[ -z "$files" ] && exit 0
echo "$files" | xargs sed -i \
  -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages#${purelib}#g" \
  -e "s#/opt/python/cp311-cp311/include/python3.11#${include}#g"
