"""Bag files through `rosbags`: the type store (ROS 2 Kilted types plus our VoxelGrid, registered
from msg/VoxelGrid.msg so the definition in the bag is the real one), QoS profiles, writers."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import Reader, ReaderError, StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from monoocc_ros.errors import one_line
from monoocc_ros.paths import package_file
from monoocc_ros.ros.stamps import ns_to_sec_nanosec

VOXELGRID_TYPE = "monoocc_ros/msg/VoxelGrid"
IMAGE_TOPIC = "/camera/image_raw"
INFO_TOPIC = "/camera/camera_info"
GT_TOPIC = "/ground_truth/voxels"
PRED_TOPIC = "/occupancy_node/output/voxels"
TF_STATIC_TOPIC = "/tf_static"  # from-dataset writes the grid -> camera extrinsic here


@lru_cache(maxsize=1)
def typestore():
    store = get_typestore(Stores.ROS2_KILTED)
    store.register(get_types_from_msg(package_file("msg/VoxelGrid.msg").read_text(), VOXELGRID_TYPE))
    return store


def _qos(reliability: QosReliability, durability: QosDurability, depth: int) -> Qos:
    zero = QosTime(0, 0)
    return Qos(QosHistory.KEEP_LAST, depth, reliability, durability, zero, zero, QosLiveliness.AUTOMATIC, zero, False)


SENSOR_QOS = _qos(QosReliability.BEST_EFFORT, QosDurability.VOLATILE, 5)
RELIABLE_QOS = _qos(QosReliability.RELIABLE, QosDurability.VOLATILE, 10)
STATIC_QOS = _qos(QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL, 1)  # what tf2 uses for /tf_static


def header(store, stamp_ns: int, frame_id: str):
    """A typestore `std_msgs/Header` stamped `stamp_ns` (the one builder the bag writers share)."""
    t = store.types
    sec, nsec = ns_to_sec_nanosec(stamp_ns)
    return t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=sec, nanosec=nsec), frame_id=frame_id)


def transform_message(store, grid_to_camera: np.ndarray, stamp_ns: int, camera_frame: str, grid_frame: str):
    """tf2_msgs/TFMessage with one TransformStamped: parent `camera_frame`, child `grid_frame`,
    i.e. the pose of the grid frame in the camera frame, which maps grid points to the camera
    (the node's `grid_to_camera`)."""
    from monoocc_ros.geometry import rotation_to_quaternion

    t = store.types
    m = np.asarray(grid_to_camera, dtype=np.float64)
    qx, qy, qz, qw = rotation_to_quaternion(m[:3, :3])
    transform = t["geometry_msgs/msg/Transform"](
        translation=t["geometry_msgs/msg/Vector3"](x=m[0, 3], y=m[1, 3], z=m[2, 3]),
        rotation=t["geometry_msgs/msg/Quaternion"](x=qx, y=qy, z=qz, w=qw),
    )
    stamped = t["geometry_msgs/msg/TransformStamped"](
        header=header(store, stamp_ns, camera_frame), child_frame_id=grid_frame, transform=transform
    )
    return t["tf2_msgs/msg/TFMessage"](transforms=[stamped])


def grid_to_camera_from_tf(msg, grid_frame: str) -> np.ndarray | None:
    """The 4x4 grid -> camera transform of a TFMessage's transform whose child is `grid_frame`."""
    from monoocc_ros.geometry import quaternion_to_rotation

    for ts in msg.transforms:
        if ts.child_frame_id == grid_frame:
            q, v = ts.transform.rotation, ts.transform.translation
            m = np.eye(4)
            m[:3, :3] = quaternion_to_rotation([q.x, q.y, q.z, q.w])
            m[:3, 3] = [v.x, v.y, v.z]
            return m
    return None


@contextmanager
def new_bag(out: str | Path, storage: str = "mcap") -> Iterator[Writer]:
    """An open Writer for a new bag at `out`, written under a temporary name and renamed when the
    block completes: a failure (a bad input file, Ctrl-C, a full disk) leaves no half-written bag
    that blocks the rerun or looks finished."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists; rosbag2 writes a new directory (remove it or pick another)")
    partial = out.with_name(f"{out.name}.partial-{os.getpid()}")
    try:
        with open_writer(partial, storage) as writer:
            yield writer
        os.rename(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def open_writer(path: str | Path, storage: str = "mcap") -> Writer:
    if storage not in ("mcap", "sqlite3"):
        raise ValueError(f"storage must be 'mcap' or 'sqlite3', got {storage!r}")
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; rosbag2 writes a new directory (remove it or pick another)")
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    return Writer(path, version=9, storage_plugin=plugin)


class BagError(ValueError):
    """A path that is not a readable rosbag2 bag."""


@contextmanager
def open_reader(path: str | Path) -> Iterator[Reader]:
    """A rosbags Reader; a missing path or a folder that is not a readable bag is one clear error."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"bag {path} does not exist")
    try:
        reader = Reader(path)
        reader.open()
    except ReaderError as exc:
        raise BagError(f"{path} is not a readable rosbag2 bag ({one_line(exc)})") from None
    try:
        yield reader
    finally:
        reader.close()


def python_msg_class(msgtype: str):
    """'sensor_msgs/msg/Image' -> the rclpy message class."""
    import importlib

    pkg, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)
