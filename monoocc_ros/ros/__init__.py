"""The ROS 2 layer: the occupancy node, its parameters and pipeline, message conversions, stamp
pairing, and the node as a child process (`process.py`).

Inside this subpackage only `node.py` and `main.py` import rclpy; outside it, only the modules
that talk DDS (bag play/record/replay, the node benchmarks, `monoocc_ros.testing`) do.
"""
