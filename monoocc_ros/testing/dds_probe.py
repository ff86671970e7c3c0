"""Helper processes for cross-process DDS checks of VoxelGrid (used by tests and `monoocc bench msg`).

python -m monoocc_ros.testing.dds_probe publish --topic T [--timeout S]
    publishes `reference_grid()` once, reliable + transient-local, and stays alive
    (so a late subscriber still gets it) until killed or the timeout passes.
python -m monoocc_ros.testing.dds_probe receive --topic T --count N
    receives N grids and prints one JSON line: one-way latencies (ms) measured from
    each message's header stamp (same machine, same clock) and decode times.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from monoocc_ros.geometry import SEMANTIC_KITTI_GRID
from monoocc_ros.ros.stamps import NS_PER_S, stamp_to_ns

REFERENCE_STAMP_NS = 1_234 * NS_PER_S + 5_678
REFERENCE_FRAME = "velodyne"


def reference_grid() -> tuple[np.ndarray, np.ndarray]:
    """A deterministic full-size label grid (every train id and 255 occur, in an order
    that breaks if axes are permuted) and a uint8 confidence grid."""
    n = SEMANTIC_KITTI_GRID.num_voxels
    idx = np.arange(n, dtype=np.int64)
    ids = (idx * 7 + idx // 97) % 21
    labels = np.where(ids == 20, 255, ids).astype(np.uint8).reshape(SEMANTIC_KITTI_GRID.shape)
    confidence = ((idx * 13) % 256).astype(np.uint8).reshape(SEMANTIC_KITTI_GRID.shape)
    return labels, confidence


def _qos(transient: bool):
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(
        depth=1 if transient else 10,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if transient else DurabilityPolicy.VOLATILE,
    )


def _publish(topic: str, timeout: float) -> int:
    import rclpy

    from monoocc_ros.msg import VoxelGrid
    from monoocc_ros.ros.convert import grid_to_msg

    rclpy.init()
    node = rclpy.create_node("voxelgrid_probe_publisher")
    pub = node.create_publisher(VoxelGrid, topic, _qos(transient=True))
    labels, confidence = reference_grid()
    pub.publish(grid_to_msg(labels, stamp_ns=REFERENCE_STAMP_NS, frame_id=REFERENCE_FRAME, confidence=confidence))
    print("published", flush=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def _receive(topic: str, count: int, timeout: float) -> int:
    import rclpy

    from monoocc_ros.msg import VoxelGrid
    from monoocc_ros.ros.convert import msg_to_grid

    rclpy.init()
    node = rclpy.create_node("voxelgrid_probe_receiver")
    latencies: list[float] = []
    decode: list[float] = []

    def on_grid(msg) -> None:
        now = time.time_ns()
        stamp = stamp_to_ns(msg.header.stamp)
        latencies.append((now - stamp) / 1e6)
        t0 = time.perf_counter()
        msg_to_grid(msg).labels.copy()
        decode.append((time.perf_counter() - t0) * 1e3)

    node.create_subscription(VoxelGrid, topic, on_grid, _qos(transient=False))
    print("ready", flush=True)
    deadline = time.monotonic() + timeout
    while len(latencies) < count and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.1)
    print(json.dumps({"latency_ms": latencies, "decode_ms": decode}), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0 if len(latencies) >= count else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m monoocc_ros.testing.dds_probe",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="role", required=True)
    p = sub.add_parser("publish")
    p.add_argument("--topic", required=True)
    p.add_argument("--timeout", type=float, default=60.0)
    r = sub.add_parser("receive")
    r.add_argument("--topic", required=True)
    r.add_argument("--count", type=int, default=20)
    r.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    if args.role == "publish":
        return _publish(args.topic, args.timeout)
    return _receive(args.topic, args.count, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
