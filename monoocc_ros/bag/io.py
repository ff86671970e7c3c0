"""Bag files through `rosbags`: the type store (ROS 2 Kilted types plus our VoxelGrid, registered
from msg/VoxelGrid.msg so the definition in the bag is the real one), QoS profiles, writers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import Reader, ReaderError, StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from monoocc_ros.paths import package_file

VOXELGRID_TYPE = "monoocc_ros/msg/VoxelGrid"
IMAGE_TOPIC = "/camera/image_raw"
INFO_TOPIC = "/camera/camera_info"
GT_TOPIC = "/ground_truth/voxels"
PRED_TOPIC = "/occupancy_node/output/voxels"


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
        raise BagError(f"{path} is not a readable rosbag2 bag ({' '.join(str(exc).split())})") from None
    try:
        yield reader
    finally:
        reader.close()


def python_msg_class(msgtype: str):
    """'sensor_msgs/msg/Image' -> the rclpy message class."""
    import importlib

    pkg, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)
