"""Geometry on real SemanticKITTI seq 00 files (../shared/realdata; skipped when absent)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from monoocc_ros.classes import raw_to_train
from monoocc_ros.data import formats as F
from monoocc_ros.geometry import (
    SEMANTIC_KITTI_GRID,
    GridSpec,
    camera_pose_to_lidar,
    in_image,
    lidar_projection,
    other_frame_projection,
    points_to_sparse_image,
    project_points,
    resize_projection,
    voxelize_occupancy,
)


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_calib_and_poses_parse(realdata_seq00):
    calib = F.read_calib(realdata_seq00 / "calib.txt")
    assert calib["P2"][0, 0] == pytest.approx(718.856, abs=0.01)
    assert calib["P2"][:, 3] @ [1, 0, 0] != 0  # P2 carries the baseline offset
    assert np.allclose(calib["Tr"][:3, :3] @ calib["Tr"][:3, :3].T, np.eye(3), atol=1e-5)
    poses = F.read_poses(realdata_seq00 / "poses.txt")
    assert poses.shape == (10, 4, 4)
    np.testing.assert_allclose(poses[0], np.eye(4), atol=1e-6)
    assert poses[9, 2, 3] > 5  # the car drives forward (camera z) about 0.8 m per frame
    assert F.read_times(realdata_seq00 / "times.txt").shape == (10,)


def test_voxelised_scan_matches_release_voxels_with_the_known_shift(realdata_seq00):
    scan = F.read_scan(realdata_seq00 / "velodyne" / "000000.bin")
    release = F.read_voxel_bits(realdata_seq00 / "voxels" / "000000.bin")
    first_release = GridSpec((0.0, -25.6, -2.2), 0.2, (256, 256, 32))
    iou_shifted = _iou(voxelize_occupancy(scan, first_release), release)
    iou_current = _iou(voxelize_occupancy(scan, SEMANTIC_KITTI_GRID), release)
    assert iou_shifted > 0.99, iou_shifted
    assert iou_current < 0.5, iou_current


def test_projected_points_land_in_image_with_road_low(realdata_seq00):
    calib = F.read_calib(realdata_seq00 / "calib.txt")
    scan = F.read_scan(realdata_seq00 / "velodyne" / "000000.bin")
    sem, _ = F.read_point_labels(realdata_seq00 / "labels" / "000000.label", num_points=len(scan))
    w, h = Image.open(realdata_seq00 / "image_2" / "000000.png").size
    assert (w, h) == (1241, 376)
    proj = lidar_projection(calib["P2"], calib["Tr"])
    uv, depth = project_points(scan, proj)
    inside = (depth > 0) & in_image(uv, w, h)
    assert 17_000 < inside.sum() < 22_000  # the README's ~19,400
    road = inside & (raw_to_train(sem) == 9)
    assert road.sum() > 1000
    assert np.median(uv[road, 1]) > h / 2  # road points in the lower half
    labels, depth_img = points_to_sparse_image(scan, raw_to_train(sem), proj, h, w)
    assert ((labels != 255) <= (depth_img > 0)).all()  # every labelled pixel has a depth
    assert 15_000 < (depth_img > 0).sum() <= inside.sum()
    rows_with_road = np.nonzero((labels == 9).any(axis=1))[0]
    assert rows_with_road.min() > h / 3


def test_other_frame_projection_follows_the_car(realdata_seq00):
    calib = F.read_calib(realdata_seq00 / "calib.txt")
    poses = F.read_poses(realdata_seq00 / "poses.txt")
    p_same = other_frame_projection(calib["P2"], calib["Tr"], poses[5], poses[5])
    np.testing.assert_allclose(p_same, lidar_projection(calib["P2"], calib["Tr"]), atol=1e-9)
    # A static point 20 m ahead at frame 0 is nearer (by the distance driven) from frame 5.
    point = np.array([[20.0, 0.0, 0.0]])
    _, d0 = project_points(point, other_frame_projection(calib["P2"], calib["Tr"], poses[0], poses[0]))
    _, d5 = project_points(point, other_frame_projection(calib["P2"], calib["Tr"], poses[0], poses[5]))
    driven = np.linalg.norm(poses[5][:3, 3] - poses[0][:3, 3])
    assert d0[0] - d5[0] == pytest.approx(driven, abs=0.1)
    lidar_pose = camera_pose_to_lidar(poses[5], calib["Tr"])
    assert lidar_pose[0, 3] == pytest.approx(driven, abs=0.1)  # LiDAR x is forward


def test_resize_projection_keeps_pixel_edges():
    p = np.array([[700.0, 0, 600, 10], [0, 700, 180, 0], [0, 0, 1, 0]])
    pts = np.array([[1.0, 0.5, 10.0], [-3.0, 1.0, 20.0]])
    uv, _ = project_points(pts, p)
    uv2, _ = project_points(pts, resize_projection(p, 0.5, 0.25))
    np.testing.assert_allclose(uv2[:, 0], (uv[:, 0] + 0.5) * 0.5 - 0.5)
    np.testing.assert_allclose(uv2[:, 1], (uv[:, 1] + 0.5) * 0.25 - 0.5)
