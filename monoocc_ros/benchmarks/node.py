"""`monoocc bench node`: per-stage latency of the node's pipeline and its end-to-end rate.

Stages (decode, preprocess, inference, voxel message, markers, points) run in this process on
real ROS message types through `ros.pipeline.run_frame`, exactly as the node runs them; `publish`
is the time to publish the three outputs over DDS. The end-to-end rate starts the node as its own
process and feeds it the next frame as soon as the previous grid arrives (the rate a camera may
run at without drops).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from monoocc_ros.benchmarks.report import markdown_table
from monoocc_ros.dds import use_local_dds
from monoocc_ros.paths import DEFAULT_MODEL, default_model


def _frame() -> np.ndarray:
    from PIL import Image

    from monoocc_ros.data.synth import synthesize

    with tempfile.TemporaryDirectory() as tmp:
        root = synthesize(tmp, 1, 1, seed=0)
        return np.asarray(Image.open(root / "sequences/00/image_2/000000.png").convert("RGB"))


def _checkpoint(path: str | None) -> tuple[Path, str]:
    if path:
        return Path(path), Path(path).name
    shipped = default_model()
    if shipped.is_file():
        return shipped, DEFAULT_MODEL
    import torch

    from monoocc_ros.checkpoint import save_checkpoint
    from monoocc_ros.model.config import load_named_config
    from monoocc_ros.model.monoocc import MonoOcc

    torch.manual_seed(0)
    model = MonoOcc(load_named_config("student_tiny"))
    out = Path(tempfile.gettempdir()) / "monoocc_bench_random_student_tiny.pt"
    save_checkpoint(out, model.cfg, model.state_dict())
    return out, f"student_tiny (untrained: {DEFAULT_MODEL} not found)"


def main(checkpoint: str | None = None, frames: int = 20, e2e_frames: int = 20) -> int:
    use_local_dds()
    import rclpy
    from sensor_msgs.msg import PointCloud2
    from visualization_msgs.msg import MarkerArray

    from monoocc_ros.geometry import KITTI_CALIB
    from monoocc_ros.inference import Predictor
    from monoocc_ros.msg import VoxelGrid
    from monoocc_ros.ros.params import default_params
    from monoocc_ros.ros.pipeline import run_frame

    ckpt, label = _checkpoint(checkpoint)
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    rgb = _frame()
    values = default_params()
    from monoocc_ros.testing.harness import camera_info_msg, image_msg

    stamp = 1_000_000_000
    img, info = image_msg(rgb, stamp), camera_info_msg(KITTI_CALIB["P2"], rgb.shape[1], rgb.shape[0], stamp)
    run_frame(predictor, img, info, stamp, values, True, True)  # warm-up
    rclpy.init()
    node = rclpy.create_node("monoocc_bench_node")
    pubs = [node.create_publisher(t, f"/monoocc_bench/{n}", 1) for t, n in
            ((VoxelGrid, "voxels"), (MarkerArray, "markers"), (PointCloud2, "points"))]  # fmt: skip
    stages: dict[str, list[float]] = {}
    for _ in range(frames):
        out = run_frame(predictor, img, info, stamp, values, True, True)
        t0 = time.perf_counter()
        pubs[0].publish(out.voxels)
        t1 = time.perf_counter()
        pubs[1].publish(out.markers)
        pubs[2].publish(out.points)
        out.timings_ms["publish voxels"] = (t1 - t0) * 1e3
        out.timings_ms["publish markers+points"] = (time.perf_counter() - t1) * 1e3
        for k, v in out.timings_ms.items():
            stages.setdefault(k, []).append(v)
    node.destroy_node()
    rclpy.try_shutdown()
    rate = _end_to_end(ckpt, rgb, e2e_frames)
    rate_viz = _end_to_end(ckpt, rgb, e2e_frames, viz=True)

    rows = [(k, float(np.median(v)), float(np.percentile(v, 90))) for k, v in stages.items()]
    med = {k: m for k, m, _ in rows}
    viz = ("markers", "points", "publish markers+points")
    rows.append(("all but inference, voxels only", sum(m for k, m in med.items() if k != "inference" and k not in viz),
                 float("nan")))  # fmt: skip
    rows.append(("all but inference, with markers+points", sum(m for k, m in med.items() if k != "inference"),
                 float("nan")))  # fmt: skip
    rows.append(("total, with markers+points", sum(med.values()), float("nan")))
    print(f"node pipeline, {label}, 1241x376 rgb8 frame, CPU ({os.cpu_count()} cores), {frames} frames")
    print(markdown_table(["stage", "median ms", "p90 ms"], rows))
    print(
        f"\nend-to-end over DDS (node process, next frame on each grid, {e2e_frames} frames; markers and points "
        f"are built only while someone subscribes): {rate:.2f} Hz with only the voxel grid subscribed, "
        f"{rate_viz:.2f} Hz with markers and points subscribed too"
    )
    return 0


def _end_to_end(ckpt: Path, rgb: np.ndarray, n: int, extra: list[str] | None = None, viz: bool = False) -> float:
    """Frames/s of the node process, the next frame sent when the grid arrives. `viz`: markers
    and points subscribed too (as raw bytes: this process must not pay for deserializing them)."""
    from sensor_msgs.msg import PointCloud2
    from visualization_msgs.msg import MarkerArray

    from monoocc_ros.geometry import KITTI_CALIB
    from monoocc_ros.testing.harness import Harness, camera_info_msg, image_msg, start_node

    ns = f"/bench{os.getpid()}{'v' if viz else ''}"
    h = Harness(ns, visualization=False)
    if viz:
        out = f"{ns}/occupancy_node/output"
        h.node.create_subscription(MarkerArray, f"{out}/markers", h.markers.append, 10, raw=True)
        h.node.create_subscription(PointCloud2, f"{out}/points", h.points.append, 10, raw=True)
    proc = start_node(ckpt, ns, extra)
    try:
        if not h.wait_for_node(proc, 60):
            raise RuntimeError("node did not start:\n" + proc.stop())
        h.spin_until(lambda: False, 1.0)
        t0 = None
        for i in range(n + 1):
            stamp = 1_000_000_000 + i * 100_000_000
            h.send(image_msg(rgb, stamp), camera_info_msg(KITTI_CALIB["P2"], rgb.shape[1], rgb.shape[0], stamp))
            if not h.spin_until(lambda i=i: len(h.voxels) > i, 60, proc):
                raise RuntimeError("node did not answer:\n" + proc.stop())
            if i == 0:
                t0 = time.perf_counter()  # the first frame warms up
        assert t0 is not None  # set in the first iteration (i == 0)
        return n / (time.perf_counter() - t0)
    finally:
        h.close()
        proc.stop()
