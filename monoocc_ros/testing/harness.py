"""The test side of the node over real DDS: camera messages built from arrays, a test node that
publishes them and collects the node's outputs, an untrained checkpoint, and the node started with
the shared launcher (`monoocc_ros.ros.process`). Used by the node tests and `monoocc bench node`."""

from __future__ import annotations

import array
import time
from pathlib import Path

import numpy as np
import torch

from monoocc_ros.checkpoint import save_checkpoint
from monoocc_ros.model.config import load_named_config
from monoocc_ros.model.monoocc import MonoOcc
from monoocc_ros.ros.process import NodeProcess
from monoocc_ros.ros.process import start_node as start_node_process
from monoocc_ros.ros.stamps import set_stamp


def random_tiny_checkpoint(path: Path) -> Path:
    """An untrained student_tiny: exercises the whole pipeline (not accuracy)."""
    torch.manual_seed(0)
    model = MonoOcc(load_named_config("student_tiny"))
    save_checkpoint(path, model.cfg, model.state_dict())
    return path


def start_node(checkpoint: Path, ns: str, extra: list[str] | None = None) -> NodeProcess:
    """The node in namespace `ns`, reading `ns`/camera/*, on the CPU; `extra`: more ROS arguments.
    Stop it with `.stop()` (its whole process group; returns the log)."""
    return start_node_process([
        "-p", f"checkpoint:={checkpoint}", "-p", "device:=cpu",
        "-r", f"__ns:={ns}",
        "-r", f"~/input/image:={ns}/camera/image_raw", "-r", f"~/input/camera_info:={ns}/camera/camera_info",
        *(extra or []),
    ])  # fmt: skip


def image_msg(rgb: np.ndarray, stamp_ns: int, encoding: str = "rgb8"):
    from sensor_msgs.msg import Image

    msg = Image()
    set_stamp(msg.header.stamp, stamp_ns)
    msg.header.frame_id = "camera"
    msg.height, msg.width = rgb.shape[:2]
    msg.encoding = encoding
    msg.step = rgb.shape[1] * (rgb.shape[2] if rgb.ndim == 3 else 1)
    data = array.array("B")
    data.frombytes(np.ascontiguousarray(rgb).tobytes())
    msg.data = data
    return msg


def camera_info_msg(p: np.ndarray, width: int, height: int, stamp_ns: int):
    from sensor_msgs.msg import CameraInfo

    msg = CameraInfo()
    set_stamp(msg.header.stamp, stamp_ns)
    msg.header.frame_id = "camera"
    msg.width, msg.height = width, height
    msg.p = [float(v) for v in np.asarray(p, dtype=np.float64).reshape(-1)]
    msg.k = [float(v) for v in np.asarray(p, dtype=np.float64)[:3, :3].reshape(-1)]
    return msg


class Harness:
    """A test-side node publishing camera topics and collecting the node's outputs."""

    def __init__(self, ns: str, visualization: bool = True) -> None:
        import rclpy
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2
        from visualization_msgs.msg import MarkerArray

        from monoocc_ros.msg import VoxelGrid

        rclpy.init()
        self.rclpy = rclpy
        self.node = rclpy.create_node("test_harness", namespace=ns)
        self.pub_image = self.node.create_publisher(Image, f"{ns}/camera/image_raw", qos_profile_sensor_data)
        self.pub_info = self.node.create_publisher(CameraInfo, f"{ns}/camera/camera_info", qos_profile_sensor_data)
        self.voxels: list = []
        self.markers: list = []
        self.points: list = []
        out = f"{ns}/occupancy_node/output"
        self.node.create_subscription(VoxelGrid, f"{out}/voxels", self.voxels.append, 10)
        if visualization:  # the node builds markers and points only while someone subscribes
            self.node.create_subscription(MarkerArray, f"{out}/markers", self.markers.append, 10)
            self.node.create_subscription(PointCloud2, f"{out}/points", self.points.append, 10)

    def spin_until(self, cond, timeout: float, proc: NodeProcess | None = None) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return True
            if proc is not None and proc.poll() is not None:
                return False
            self.rclpy.spin_once(self.node, timeout_sec=0.05)
        return cond()

    def wait_for_node(self, proc: NodeProcess, timeout: float = 60.0) -> bool:
        return self.spin_until(
            lambda: self.pub_image.get_subscription_count() > 0 and self.pub_info.get_subscription_count() > 0,
            timeout,
            proc,
        )

    def send(self, image, info) -> None:
        if info is not None:
            self.pub_info.publish(info)
        if image is not None:
            self.pub_image.publish(image)

    def close(self) -> None:
        self.node.destroy_node()
        self.rclpy.try_shutdown()
