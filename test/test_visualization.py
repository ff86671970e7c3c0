"""Markers and point cloud built from a label grid decode back to the right voxels and colours."""

import numpy as np
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
