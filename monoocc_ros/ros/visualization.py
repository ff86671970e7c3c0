"""RViz outputs from a label grid: a MarkerArray (one CUBE_LIST per class, SemanticKITTI
colours) and a PointCloud2 of occupied voxel centres with label and rgb fields. Built with numpy
(sensor_msgs_py is not installable here); message types are passed in so this module stays
testable without a running node."""

from __future__ import annotations

import array

import numpy as np

from monoocc_ros.classes import CLASS_COLORS_RGB, CLASS_NAMES, IGNORE
from monoocc_ros.geometry import GridSpec


def occupied_voxels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flat indices, labels) of voxels that are neither empty nor unknown."""
    flat = labels.reshape(-1)
    idx = np.flatnonzero((flat > 0) & (flat != IGNORE))
    return idx, flat[idx]


def voxel_centers(grid: GridSpec, flat_idx: np.ndarray) -> np.ndarray:
    ijk = np.stack(np.unravel_index(flat_idx, grid.shape), -1).astype(np.float32)
    return (ijk + 0.5) * np.float32(grid.resolution) + np.asarray(grid.origin, np.float32)


def build_markers(labels: np.ndarray, grid: GridSpec, header, max_cubes: int = 0):
    """MarkerArray: DELETEALL, then one CUBE_LIST per present class (namespace = class name).
    `max_cubes` > 0 caps the total by keeping every n-th voxel of each class."""
    from geometry_msgs.msg import Point
    from visualization_msgs.msg import Marker, MarkerArray

    out = MarkerArray()
    clear = Marker()
    clear.header = header
    clear.action = Marker.DELETEALL
    out.markers.append(clear)
    idx, lab = occupied_voxels(labels)
    stride = max(1, int(np.ceil(len(idx) / max_cubes))) if max_cubes > 0 and len(idx) > max_cubes else 1
    centers = voxel_centers(grid, idx)
    for c in np.unique(lab):
        sel = centers[lab == c][::stride]
        m = Marker()
        m.header = header
        m.ns = CLASS_NAMES[int(c)]
        m.id = int(c)
        m.type = Marker.CUBE_LIST
        m.action = Marker.ADD
        m.pose.orientation.w = 1.0
        m.scale.x = m.scale.y = m.scale.z = float(grid.resolution)
        r, g, b = (CLASS_COLORS_RGB[int(c)] / 255.0).tolist()
        m.color.r, m.color.g, m.color.b, m.color.a = r, g, b, 1.0
        m.points = [Point(x=float(x), y=float(y), z=float(z)) for x, y, z in sel]
        out.markers.append(m)
    return out


def build_pointcloud(labels: np.ndarray, grid: GridSpec, header):
    """PointCloud2 (x, y, z float32; label uint8; rgb float32 packed as RViz expects)."""
    from sensor_msgs.msg import PointCloud2, PointField

    idx, lab = occupied_voxels(labels)
    centers = voxel_centers(grid, idx)
    dtype = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<f4"), ("label", "u1")], align=False)
    cloud = np.zeros(len(idx), dtype=dtype)
    cloud["x"], cloud["y"], cloud["z"] = centers[:, 0], centers[:, 1], centers[:, 2]
    rgb = CLASS_COLORS_RGB[lab].astype(np.uint32)
    cloud["rgb"] = ((rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]).view(np.float32)
    cloud["label"] = lab
    msg = PointCloud2()
    msg.header = header
    msg.height, msg.width = 1, len(idx)
    msg.fields = [
        PointField(name="x", offset=0, datatype=PointField.FLOAT32, count=1),
        PointField(name="y", offset=4, datatype=PointField.FLOAT32, count=1),
        PointField(name="z", offset=8, datatype=PointField.FLOAT32, count=1),
        PointField(name="rgb", offset=12, datatype=PointField.FLOAT32, count=1),
        PointField(name="label", offset=16, datatype=PointField.UINT8, count=1),
    ]
    msg.is_bigendian = False
    msg.point_step = dtype.itemsize
    msg.row_step = dtype.itemsize * len(idx)
    msg.is_dense = True
    data = array.array("B")
    data.frombytes(cloud.tobytes())
    msg.data = data
    return msg
