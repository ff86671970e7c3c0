"""RViz outputs from a label grid: a MarkerArray (one CUBE_LIST per class, SemanticKITTI
colours) and a PointCloud2 of occupied voxel centres with label and rgb fields. Built with numpy
(sensor_msgs_py is not installable here); message types are passed in so this module stays
testable without a running node."""

from __future__ import annotations

import array
from functools import lru_cache
from typing import Any

import numpy as np

from monoocc_ros.classes import CLASS_COLORS_RGB, CLASS_NAMES, IGNORE
from monoocc_ros.geometry import GridSpec


def occupied_voxels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flat indices, labels) of voxels that are neither empty nor unknown."""
    flat = labels.reshape(-1)
    idx = np.flatnonzero((flat > 0) & (flat != IGNORE))
    return idx, flat[idx]


@lru_cache(maxsize=4)
def _all_centers(grid: GridSpec) -> np.ndarray:
    """(N, 3) float32 centres of every voxel, computed once per grid (24 MB for SemanticKITTI's):
    a gather is several times faster than recomputing centres from indices every frame."""
    return grid.voxel_centers().reshape(-1, 3)


def voxel_centers(grid: GridSpec, flat_idx: np.ndarray) -> np.ndarray:
    return _all_centers(grid)[flat_idx]


# RViz's packed "rgb" float: 0x00RRGGBB reinterpreted as float32, per class.
_PACKED_RGB = (
    (CLASS_COLORS_RGB[:, 0].astype(np.uint32) << 16)
    | (CLASS_COLORS_RGB[:, 1].astype(np.uint32) << 8)
    | CLASS_COLORS_RGB[:, 2].astype(np.uint32)
)


def surface_voxels(labels: np.ndarray) -> np.ndarray:
    """Flat indices of occupied voxels with at least one free (empty or unknown) 6-neighbour or
    on the grid's border: the only ones a viewer can see."""
    occ = (labels > 0) & (labels != IGNORE)
    inner = occ.copy()
    inner[1:] &= occ[:-1]
    inner[:-1] &= occ[1:]
    inner[:, 1:] &= occ[:, :-1]
    inner[:, :-1] &= occ[:, 1:]
    inner[:, :, 1:] &= occ[:, :, :-1]
    inner[:, :, :-1] &= occ[:, :, 1:]
    for axis in range(3):  # border voxels are visible from outside the grid
        sl: list[slice | int] = [slice(None)] * 3
        sl[axis] = 0
        inner[tuple(sl)] = False
        sl[axis] = -1
        inner[tuple(sl)] = False
    return np.flatnonzero(occ & ~inner)


def _marker_parts(labels: np.ndarray, grid: GridSpec, header, max_cubes: int) -> list[tuple[Any, np.ndarray]]:
    """(Marker without points, its cube centres (N, 3) float64) for DELETEALL and each class."""
    from visualization_msgs.msg import Marker

    clear = Marker()
    clear.header = header
    clear.action = Marker.DELETEALL
    parts = [(clear, np.zeros((0, 3)))]
    idx = surface_voxels(labels)
    lab = labels.reshape(-1)[idx]
    stride = max(1, int(np.ceil(len(idx) / max_cubes))) if max_cubes > 0 and len(idx) > max_cubes else 1
    # Voxels grouped by class, each group in grid order (stable sort), so that every stride-th
    # voxel of a class is picked before any centre is gathered (the gather was the cost).
    order = np.argsort(lab, kind="stable")
    classes, starts = np.unique(lab[order], return_index=True)
    ends = [*starts[1:], len(order)]
    for c, start, end in zip(classes, starts, ends, strict=True):
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
        parts.append((m, voxel_centers(grid, idx[order[start:end:stride]]).astype(np.float64)))
    return parts


def build_markers(labels: np.ndarray, grid: GridSpec, header, max_cubes: int = 0):
    """MarkerArray: DELETEALL, then one CUBE_LIST per present class (namespace = class name).
    Only surface voxels are drawn (hidden interior cubes cost RViz time and show nothing);
    `max_cubes` > 0 caps the total by keeping every n-th voxel of each class. The message built
    object by object (slow: one Point per cube); the node publishes `markers_cdr` instead."""
    from geometry_msgs.msg import Point
    from visualization_msgs.msg import MarkerArray

    out = MarkerArray()
    for m, sel in _marker_parts(labels, grid, header, max_cubes):
        m.points = [Point(x=float(x), y=float(y), z=float(z)) for x, y, z in sel]
        out.markers.append(m)
    return out


def markers_cdr(labels: np.ndarray, grid: GridSpec, header, max_cubes: int = 0) -> bytes:
    """`build_markers`, serialized (the bytes rclpy would write for it), with the cube centres
    written straight from numpy (ros/cdr.py): what the node publishes."""
    from visualization_msgs.msg import Marker

    from monoocc_ros.ros.cdr import serialize_items

    parts = _marker_parts(labels, grid, header, max_cubes)
    # geometry_msgs/Point rows are three float64: CDR aligns them to 8.
    return serialize_items([m for m, _ in parts], Marker, [{"points": (p, 8)} for _, p in parts])


def build_pointcloud(labels: np.ndarray, grid: GridSpec, header):
    """PointCloud2 (x, y, z float32; label uint8; rgb float32 packed as RViz expects)."""
    msg, rows = _cloud(labels, grid, header)
    data = array.array("B")
    data.frombytes(rows.tobytes())
    msg.data = data
    return msg


def pointcloud_cdr(labels: np.ndarray, grid: GridSpec, header) -> bytes:
    """`build_pointcloud`, serialized, its data written from numpy: what the node publishes."""
    from monoocc_ros.ros.cdr import serialize

    msg, rows = _cloud(labels, grid, header)
    return serialize(msg, {"data": (rows.view(np.uint8).reshape(-1), 1)})


def _cloud(labels: np.ndarray, grid: GridSpec, header):
    """(PointCloud2 without data, its rows (N, 5) float32)."""
    from sensor_msgs.msg import PointCloud2, PointField

    idx, lab = occupied_voxels(labels)
    # One float32 row per point: x, y, z, rgb, then the label in the low byte of the last word
    # (offset 16, little-endian), so the buffer is built with a few vectorised copies.
    rows = np.empty((len(idx), 5), np.float32)
    rows[:, :3] = voxel_centers(grid, idx)
    rows[:, 3] = _PACKED_RGB[lab].view(np.float32)
    rows[:, 4] = lab.astype(np.uint32).view(np.float32)
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
    msg.point_step = 20
    msg.row_step = 20 * len(idx)
    msg.is_dense = True
    return msg, rows
