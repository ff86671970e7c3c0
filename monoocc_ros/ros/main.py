"""`occupancy_node`'s entry point: --help and the checks that need no ROS first (the parameter
table, params files), then rclpy, the node (ros/node.py), spun by a single-threaded executor."""

from __future__ import annotations

import os
import sys

from monoocc_ros.errors import one_line
from monoocc_ros.ros.params import params_file_errors, usage


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    ros_args_at = argv.index("--ros-args") if "--ros-args" in argv else len(argv)
    if any(a in ("-h", "--help") for a in argv[1:ros_args_at]):
        print(usage())
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    import rclpy
    from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
    from rclpy.executors import ExternalShutdownException

    bad_files = params_file_errors(argv[ros_args_at:])
    if bad_files:
        print(f"occupancy_node: {'; '.join(bad_files)}", file=sys.stderr)
        return 2
    try:
        rclpy.init(args=argv)  # a params file that is not ROS parameter YAML fails here
    except Exception as exc:  # rclpy raises its RCLError (not exported) with rcl's message
        print(f"occupancy_node: cannot start: {one_line(exc)}", file=sys.stderr)
        return 2
    try:
        from monoocc_ros.ros.node import OccupancyNode

        node = OccupancyNode()
    except (ValueError, InvalidParameterTypeException, InvalidParameterValueException) as exc:
        # InvalidParameterTypeException: e.g. an integer for a double parameter ("1" for "1.0").
        print(f"occupancy_node: {one_line(exc)}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
