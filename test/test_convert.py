"""VoxelGrid <-> numpy conversions (real generated message type, no DDS)."""

from __future__ import annotations

import array

import numpy as np
import pytest

from monoocc_ros.classes import CLASS_NAMES
from monoocc_ros.geometry import SEMANTIC_KITTI_GRID, GridSpec
from monoocc_ros.msg import VoxelGrid
from monoocc_ros.ros.convert import grid_to_msg, msg_to_grid, quantize_confidence
from monoocc_ros.testing.dds_probe import reference_grid


def test_round_trip_full_grid_is_exact():
    labels, confidence = reference_grid()
    msg = grid_to_msg(labels, stamp_ns=3_000_000_007, frame_id="velodyne", confidence=confidence)
    assert isinstance(msg, VoxelGrid)
    assert (msg.size_x, msg.size_y, msg.size_z) == (256, 256, 32)
    assert msg.header.stamp.sec == 3 and msg.header.stamp.nanosec == 7
    assert msg.origin.position.y == pytest.approx(-25.6)
    assert msg.origin.position.z == pytest.approx(-2.0)
    assert msg.resolution == pytest.approx(0.2)
    assert list(msg.class_names) == list(CLASS_NAMES)
    out = msg_to_grid(msg)
    np.testing.assert_array_equal(out.labels, labels)
    np.testing.assert_array_equal(out.confidence, confidence)
    assert out.stamp_ns == 3_000_000_007 and out.frame_id == "velodyne"
    assert out.grid == SEMANTIC_KITTI_GRID


def test_flat_layout_is_x_major_z_fastest():
    grid = GridSpec((0, 0, 0), 1.0, (2, 3, 4))
    labels = np.zeros(grid.shape, np.uint8)
    labels[1, 2, 3] = 7
    labels[0, 0, 1] = 5
    msg = grid_to_msg(labels, grid=grid)
    flat = np.frombuffer(msg.labels, np.uint8)
    assert flat[(1 * 3 + 2) * 4 + 3] == 7
    assert flat[1] == 5
    assert len(msg.confidence) == 0
    assert msg_to_grid(msg).confidence is None


def test_float_confidence_is_quantised():
    grid = GridSpec((0, 0, 0), 1.0, (1, 1, 3))
    msg = grid_to_msg(np.zeros(grid.shape, np.uint8), grid=grid, confidence=np.array([[[0.0, 0.5, 1.0]]], np.float32))
    assert list(msg.confidence) == [0, 128, 255]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        quantize_confidence(np.array([1.5]))


def test_wrong_shape_dtype_and_size_are_clear_errors():
    with pytest.raises(ValueError, match=r"shape \(256, 256, 31\), expected \(256, 256, 32\)"):
        grid_to_msg(np.zeros((256, 256, 31), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        grid_to_msg(np.zeros((256, 256, 32), np.int64))
    with pytest.raises(ValueError, match="confidence has shape"):
        grid_to_msg(np.zeros((256, 256, 32), np.uint8), confidence=np.zeros((2, 2, 2), np.uint8))
    msg = grid_to_msg(np.zeros((256, 256, 32), np.uint8))
    msg.labels = array.array("B", b"\x00" * 100)
    with pytest.raises(ValueError, match=r"hold 100 values.*= 2097152"):
        msg_to_grid(msg)
