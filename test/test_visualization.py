"""Markers and point cloud built from a label grid decode back to the right voxels and colours."""

import numpy as np
import pytest
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

from monoocc_ros.classes import CLASS_COLORS_RGB
from monoocc_ros.geometry import SEMANTIC_KITTI_GRID as G
from monoocc_ros.ros.visualization import build_markers, build_pointcloud, surface_voxels


def _grid():
    g = np.zeros(G.shape, np.uint8)
    g[10:13, 20:23, 2:5] = 1  # a 3x3x3 car: 26 surface voxels, 1 hidden
    g[100, 128, 0] = 19
    g[5, 5, 5] = 255  # unknown: never drawn
    return g


def test_pointcloud_round_trip():
    g = _grid()
    msg = build_pointcloud(g, G, Header(frame_id="velodyne"))
    assert msg.width == 28 and msg.point_step == 20 and len(msg.data) == 28 * 20
    rows = np.frombuffer(bytes(msg.data), np.float32).reshape(-1, 5)
    labels = rows[:, 4].view(np.uint32)
    assert sorted(set(labels.tolist())) == [1, 19]
    sign = rows[labels == 19][0]
    np.testing.assert_allclose(sign[:3], [100.5 * 0.2, -25.6 + 128.5 * 0.2, -2.0 + 0.5 * 0.2], atol=1e-5)
    rgb = sign[3:4].view(np.uint32)[0]
    assert ((rgb >> 16) & 255, (rgb >> 8) & 255, rgb & 255) == tuple(CLASS_COLORS_RGB[19])


def test_markers_surface_only_capped_and_coloured():
    g = _grid()
    assert len(surface_voxels(g)) == 27
    arr = build_markers(g, G, Header(frame_id="velodyne"), max_cubes=0)
    assert arr.markers[0].action == Marker.DELETEALL
    by_ns = {m.ns: m for m in arr.markers[1:]}
    assert set(by_ns) == {"car", "traffic-sign"}
    assert len(by_ns["car"].points) == 26 and by_ns["car"].scale.x == 0.2
    assert (by_ns["car"].color.r, by_ns["car"].color.g) == (100 / 255, 150 / 255)
    capped = build_markers(g, G, Header(), max_cubes=10)
    assert sum(len(m.points) for m in capped.markers[1:]) <= 14  # every 3rd voxel per class


@pytest.mark.parametrize("cap", [20000, 0], ids=["capped", "uncapped"])
def test_serialized_markers_and_points_equal_the_slow_messages(cap):
    """What the node publishes (bytes written from numpy, ros/cdr.py) deserializes to exactly the
    messages built object by object and serialized by rclpy, as a subscriber receives them."""
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import PointCloud2
    from std_msgs.msg import Header
    from visualization_msgs.msg import MarkerArray

    from monoocc_ros.geometry import SEMANTIC_KITTI_GRID
    from monoocc_ros.ros.visualization import build_markers, build_pointcloud, markers_cdr, pointcloud_cdr

    rng = np.random.default_rng(1)
    labels = np.zeros(SEMANTIC_KITTI_GRID.shape, np.uint8)
    labels[:, :, :2] = rng.integers(0, 20, (256, 256, 2))  # a ground of every class
    labels[100:120, 100:140, 5:12] = 10  # a block whose inside is hidden
    labels[3, 4, 30] = 255  # unknown voxels are not drawn
    header = Header(frame_id="velodyne")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    received = lambda data, cls: deserialize_message(data, cls)  # noqa: E731
    slow = received(serialize_message(build_markers(labels, SEMANTIC_KITTI_GRID, header, cap)), MarkerArray)
    fast = received(markers_cdr(labels, SEMANTIC_KITTI_GRID, header, cap), MarkerArray)
    assert fast == slow and len(fast.markers) == 20  # DELETEALL + 19 classes
    assert sum(len(m.points) for m in fast.markers) <= (cap or 10**9)
    slow = received(serialize_message(build_pointcloud(labels, SEMANTIC_KITTI_GRID, header)), PointCloud2)
    fast = received(pointcloud_cdr(labels, SEMANTIC_KITTI_GRID, header), PointCloud2)
    assert fast == slow and fast.width == int(((labels > 0) & (labels != 255)).sum())
