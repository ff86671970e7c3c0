"""`monoocc bench msg`: VoxelGrid conversion speed and cross-process DDS latency.

Conversion is timed in this process; publish -> receive is timed one-way from the header
stamp to the receiving callback in a second process (same machine, same clock), with the
full-size 256x256x32 grid plus confidence (4 MB per message).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from monoocc_ros.benchmarks.report import markdown_table, summarize
from monoocc_ros.dds import use_local_dds


def run(repeats: int = 50, dds_messages: int = 20) -> dict[str, dict[str, float]]:
    use_local_dds()
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from monoocc_ros.msg import VoxelGrid
    from monoocc_ros.ros.convert import grid_to_msg, msg_to_grid
    from monoocc_ros.testing.dds_probe import reference_grid

    labels, confidence = reference_grid()
    to_msg, to_msg_conf, from_msg = [], [], []
    msg = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        grid_to_msg(labels)
        to_msg.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        msg = grid_to_msg(labels, confidence=confidence)
        to_msg_conf.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        out = msg_to_grid(msg)
        assert out.confidence is not None  # the message was built with confidence
        out.labels.copy()
        out.confidence.copy()
        from_msg.append((time.perf_counter() - t0) * 1e3)

    topic = f"/monoocc_bench_{os.getpid()}/voxels"
    receiver = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "monoocc_ros.testing.dds_probe",
            "receive",
            "--topic",
            topic,
            "--count",
            str(dds_messages),
            "--timeout",
            "120",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert receiver.stdout is not None
    receiver.stdout.readline()  # "ready"
    rclpy.init()
    node = rclpy.create_node("monoocc_bench_publisher")
    pub = node.create_publisher(VoxelGrid, topic, QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    try:
        deadline = time.monotonic() + 30
        while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.05)
        for _ in range(dds_messages):
            stamp = time.time_ns()
            msg = grid_to_msg(labels, confidence=confidence, stamp_ns=stamp)
            pub.publish(msg)
            rclpy.spin_once(node, timeout_sec=0.1)  # ~10 Hz, like a camera
        out_text, _ = receiver.communicate(timeout=120)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        if receiver.poll() is None:
            receiver.kill()
    result = json.loads(out_text.strip().splitlines()[-1])
    return {
        "numpy -> msg (labels)": summarize(to_msg),
        "numpy -> msg (labels + confidence)": summarize(to_msg_conf),
        "msg -> numpy (labels + confidence)": summarize(from_msg),
        "publish -> receive, 2 processes": summarize(result["latency_ms"]),
        "receiver decode": summarize(result["decode_ms"]),
    }


def main(json_out: str | None = None) -> int:
    stats = run()
    rows = [(name, s["n"], s["median_ms"], s["p90_ms"], s["min_ms"]) for name, s in stats.items()]
    print("VoxelGrid 256x256x32 (2,097,152 voxels)")
    print(markdown_table(["stage", "n", "median ms", "p90 ms", "min ms"], rows))
    if json_out:
        with open(json_out, "w") as f:
            json.dump(stats, f, indent=2)
    return 0
