#!/usr/bin/env bash
# Installs the Debian packages monoocc_ros needs, only when one is missing (so a re-run
# of `make setup` costs a dpkg query, not an apt-get update).
#   libusb-1.0-0                       open3d imports it
#   mesa-vulkan-drivers libvulkan1     open3d's OffscreenRenderer (software Vulkan) for demo pictures
#   cmake g++ make                     building the VoxelGrid message with rosidl
set -euo pipefail
pkgs=(libusb-1.0-0 mesa-vulkan-drivers libvulkan1 cmake g++ make)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "setup: missing Debian packages: ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "setup: installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
