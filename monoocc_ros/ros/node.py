"""The occupancy node (`occupancy_node`).

Status: the node's inference pipeline arrives with the model and node issues; today this
entry point only documents its interface (`--help`) and refuses to start, rather than
publishing anything made up.
"""

from __future__ import annotations

import sys

USAGE = """usage: occupancy_node [--help] [--ros-args ...]

Monocular semantic occupancy node (monoocc_ros).
  subscribes  ~/input/image (sensor_msgs/Image), ~/input/camera_info (sensor_msgs/CameraInfo)
  publishes   ~/output/voxels (monoocc_ros/msg/VoxelGrid), ~/output/markers, ~/output/points

Start it as any ROS 2 node, e.g.
  occupancy_node --ros-args --params-file config/occ.yaml -r ~/input/image:=/camera/image_raw
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ros_args_at = argv.index("--ros-args") if "--ros-args" in argv else len(argv)
    if any(a in ("-h", "--help") for a in argv[:ros_args_at]):
        print(USAGE)
        return 0
    print("occupancy_node: the inference pipeline is not built yet (see the node issue).", file=sys.stderr)
    return 2
