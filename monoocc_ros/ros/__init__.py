"""The ROS 2 layer: message conversions, stamp pairing and the occupancy node.

Only this subpackage (and `monoocc_ros.bag`) imports rclpy or ROS message types.
"""
