"""A full-size VoxelGrid crosses a real DDS link between two processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from monoocc_ros.classes import CLASS_NAMES, CLASS_TABLE_ID
from monoocc_ros.testing.dds_probe import REFERENCE_FRAME, REFERENCE_STAMP_NS, reference_grid


def test_voxelgrid_between_processes():
    rclpy = pytest.importorskip("rclpy")
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    from monoocc_ros.msg import VoxelGrid
    from monoocc_ros.ros.convert import msg_to_grid

    assert os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    topic = f"/test_dds_{os.getpid()}/voxels"
    pub = subprocess.Popen(
        [sys.executable, "-m", "monoocc_ros.testing.dds_probe", "publish", "--topic", topic, "--timeout", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    rclpy.init()
    node = rclpy.create_node("test_dds_receiver")
    received = []
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    node.create_subscription(VoxelGrid, topic, received.append, qos)
    try:
        deadline = time.monotonic() + 45
        while not received and time.monotonic() < deadline and pub.poll() is None:
            rclpy.spin_once(node, timeout_sec=0.1)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        pub.terminate()
        out, _ = pub.communicate(timeout=20)
    assert received, f"no VoxelGrid received within 45 s; publisher said:\n{out}"
    msg = received[0]
    labels, confidence = reference_grid()
    decoded = msg_to_grid(msg)
    np.testing.assert_array_equal(decoded.labels, labels)
    np.testing.assert_array_equal(decoded.confidence, confidence)
    assert decoded.stamp_ns == REFERENCE_STAMP_NS
    assert msg.header.frame_id == REFERENCE_FRAME
    assert (msg.size_x, msg.size_y, msg.size_z) == (256, 256, 32)
    assert msg.resolution == pytest.approx(0.2)
    p, q = msg.origin.position, msg.origin.orientation
    assert (p.x, p.y, p.z) == pytest.approx((0.0, -25.6, -2.0))
    assert (q.x, q.y, q.z, q.w) == (0.0, 0.0, 0.0, 1.0)
    assert msg.axis_order == VoxelGrid.AXIS_ORDER_XYZ_Z_FASTEST == 0
    assert VoxelGrid.LABEL_UNKNOWN == 255
    assert msg.class_table == CLASS_TABLE_ID
    assert tuple(msg.class_names) == CLASS_NAMES
