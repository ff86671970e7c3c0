"""Starts monoocc_ros's occupancy_node (and optionally RViz).

ros2 launch monoocc_ros occ.launch.py image_topic:=/camera/image_raw camera_info_topic:=/camera/camera_info
"""

from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare("monoocc_ros")
    args = [
        DeclareLaunchArgument("image_topic", default_value="/camera/image_raw", description="sensor_msgs/Image input"),
        DeclareLaunchArgument(
            "camera_info_topic", default_value="/camera/camera_info", description="sensor_msgs/CameraInfo input"
        ),
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([share, "config", "occ.yaml"]),
            description="node parameters (/**: ros__parameters:)",
        ),
        DeclareLaunchArgument("checkpoint", default_value="", description="model checkpoint; empty: shipped model"),
        DeclareLaunchArgument("backend", default_value="torch", description="torch | onnxruntime"),
        DeclareLaunchArgument("device", default_value="auto", description="auto | cpu | cuda"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="follow /clock (bag replay)"),
        DeclareLaunchArgument("rviz", default_value="false", description="also start rviz2 with config/occ.rviz"),
    ]
    node = Node(
        package="monoocc_ros",
        executable="occupancy_node",
        name="occupancy_node",
        output="screen",
        parameters=[
            LaunchConfiguration("params_file"),
            {
                "checkpoint": LaunchConfiguration("checkpoint"),
                "backend": LaunchConfiguration("backend"),
                "device": LaunchConfiguration("device"),
                "use_sim_time": LaunchConfiguration("use_sim_time"),
            },
        ],
        remappings=[
            ("~/input/image", LaunchConfiguration("image_topic")),
            ("~/input/camera_info", LaunchConfiguration("camera_info_topic")),
        ],
    )
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="rviz2",
        arguments=["-d", PathJoinSubstitution([share, "config", "occ.rviz"])],
        parameters=[{"use_sim_time": LaunchConfiguration("use_sim_time")}],
        condition=IfCondition(LaunchConfiguration("rviz")),
    )
    return LaunchDescription([*args, node, rviz])
