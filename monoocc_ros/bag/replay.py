"""`monoocc replay-eval`: one command that starts the occupancy node as a process, plays a bag
through it, records its outputs, stops everything, and prints the scores.

By default each frame waits for its grid before the next is sent (as fast as the node consumes,
so on any machine every frame can be answered); `--rate R` plays with the recorded timing instead
and counts what the node could not keep up with. The node runs with use_sim_time and this process
publishes /clock at every frame's stamp. The node's process group is always torn down (SIGINT,
then SIGKILL), so no orphan survives an error or Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from monoocc_ros.bag.evaluate import ReplayScores, header_stamp, load_ground_truth
from monoocc_ros.bag.io import (
    GT_TOPIC,
    IMAGE_TOPIC,
    INFO_TOPIC,
    PRED_TOPIC,
    RELIABLE_QOS,
    TF_STATIC_TOPIC,
    VOXELGRID_TYPE,
    grid_to_camera_from_tf,
    open_writer,
    typestore,
)
from monoocc_ros.bag.play import Player, bag_topics, read_bag
from monoocc_ros.geometry import KITTI_CALIB, SEMANTIC_KITTI_GRID, to_homogeneous
from monoocc_ros.inference import camera_view_mask
from monoocc_ros.metrics import RegionMetrics
from monoocc_ros.paths import package_file
from monoocc_ros.ros.convert import msg_to_grid


def bag_extrinsic(bag: Path, topics: dict, progress: bool = True) -> np.ndarray:
    """The grid -> camera transform the bag's data was made with (/tf_static, written by
    `monoocc bag from-dataset`); KITTI sequence 00's, with a note, when the bag has none."""
    if TF_STATIC_TOPIC in topics:
        store = typestore()
        for _, msgtype, _, raw in read_bag(bag, [TF_STATIC_TOPIC]):
            found = grid_to_camera_from_tf(store.deserialize_cdr(raw, msgtype), "velodyne")
            if found is not None:
                return found
    if progress:
        print(f"note: {bag} has no /tf_static velodyne transform; using KITTI sequence 00's extrinsic", file=sys.stderr)
    return to_homogeneous(KITTI_CALIB["Tr"])


def _view_of(store, info_raw: bytes | None, extrinsic: np.ndarray) -> np.ndarray:
    """The camera's field of view on the grid, from a CameraInfo (all True without one)."""
    if not info_raw:
        return np.ones(SEMANTIC_KITTI_GRID.shape, bool)
    info = store.deserialize_cdr(info_raw, "sensor_msgs/msg/CameraInfo")
    p = np.asarray(info.p, dtype=np.float64).reshape(3, 4)
    return camera_view_mask(p, extrinsic, (int(info.height), int(info.width)))


def start_node_process(checkpoint: str | None, extra_params: list[str] | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "monoocc_ros.ros.main", "--ros-args",
           "--params-file", str(package_file("config/occ.yaml")),
           "-p", "use_sim_time:=true", "-p", "device:=cpu",
           "-r", f"~/input/image:={IMAGE_TOPIC}", "-r", f"~/input/camera_info:={INFO_TOPIC}"]  # fmt: skip
    if checkpoint:
        cmd += ["-p", f"checkpoint:={checkpoint}"]
    for p in extra_params or []:
        cmd += ["-p", p]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # Own session: the whole process group can be signalled, nothing is left behind.
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )


def stop_process(proc: subprocess.Popen, timeout: float = 20.0) -> str:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
    return proc.stdout.read() if proc.stdout else ""


def replay_eval(
    bag: str | Path,
    checkpoint: str | None = None,
    rate: float | None = None,
    timeout: float = 120.0,
    out: str | Path | None = None,
    progress: bool = True,
    node_params: list[str] | None = None,
) -> ReplayScores:
    import rclpy

    from monoocc_ros.msg import VoxelGrid

    bag = Path(bag)
    if checkpoint and not str(checkpoint).endswith(".onnx"):
        from monoocc_ros.checkpoint import load_checkpoint

        load_checkpoint(checkpoint)  # an unreadable model fails here, with its name, before any replay
    elif checkpoint and not Path(checkpoint).is_file():
        raise FileNotFoundError(f"ONNX model {checkpoint} does not exist")
    topics = bag_topics(bag)
    for t in (IMAGE_TOPIC, INFO_TOPIC):
        if t not in topics:
            raise ValueError(f"{bag} has no {t}; make one with `monoocc bag from-dataset`")
    gt = load_ground_truth(bag) if GT_TOPIC in topics else {}
    store = typestore()
    frames: list[tuple[int, bytes, bytes]] = []  # (stamp, info raw, image raw) in bag order
    infos: dict[int, bytes] = {}
    for topic, msgtype, _, raw in read_bag(bag, [INFO_TOPIC, IMAGE_TOPIC]):
        stamp = header_stamp(store.deserialize_cdr(raw, msgtype))
        if topic == INFO_TOPIC:
            infos[stamp] = raw
        else:
            frames.append((stamp, infos.get(stamp, b""), raw))
    extrinsic = bag_extrinsic(bag, topics, progress)
    view = _view_of(store, next(iter(infos.values()), None), extrinsic)
    # The full grid is scored as offline eval scores it (outside_view predict), and the camera's
    # view beside it; the node runs with this data's extrinsic.
    params = ["outside_view:=predict", f"grid_to_camera:={[float(v) for v in extrinsic.reshape(-1)]}"]
    proc = start_node_process(checkpoint, [*params, *(node_params or [])])
    rclpy.init()
    node = rclpy.create_node("monoocc_replay")
    received: dict[int, tuple[int, object]] = {}
    sent: dict[int, int] = {}
    metrics = RegionMetrics()
    writer = open_writer(out) if out else None
    try:
        if writer is not None:
            writer.open()
            c_img = writer.add_connection(
                IMAGE_TOPIC, "sensor_msgs/msg/Image", typestore=store, offered_qos_profiles=[RELIABLE_QOS]
            )
            c_pred = writer.add_connection(
                PRED_TOPIC, VOXELGRID_TYPE, typestore=store, offered_qos_profiles=[RELIABLE_QOS]
            )

        def on_grid(raw: bytes) -> None:
            now = time.time_ns()
            msg = store.deserialize_cdr(raw, VOXELGRID_TYPE)
            stamp = header_stamp(msg)
            if stamp in received:
                return
            received[stamp] = (now, None)
            if writer is not None:
                writer.write(c_pred, now, raw)
            if stamp in gt:
                metrics.update(msg_to_grid(msg).labels, gt[stamp], None, view)

        node.create_subscription(VoxelGrid, PRED_TOPIC, on_grid, 10, raw=True)
        player = Player(node, bag, [IMAGE_TOPIC, INFO_TOPIC], clock=True)

        def spin(t: float) -> None:
            rclpy.spin_once(node, timeout_sec=t)
            if proc.poll() is not None:
                raise RuntimeError("the node exited:\n" + (proc.stdout.read() if proc.stdout else ""))

        deadline = time.monotonic() + 120
        while (player.pubs[IMAGE_TOPIC].get_subscription_count() == 0
               or player.pubs[INFO_TOPIC].get_subscription_count() == 0
               or node.count_publishers(PRED_TOPIC) == 0):  # fmt: skip
            if time.monotonic() > deadline:
                raise RuntimeError("the node did not come up within 120 s")
            spin(0.1)
        spin(0.5)
        t0 = time.monotonic()
        bag_t0 = frames[0][0] if frames else 0
        for stamp, info_raw, img_raw in tqdm(frames, desc="replay", unit="frame", disable=not progress):
            if rate:
                due = t0 + (stamp - bag_t0) / 1e9 / rate
                while (w := due - time.monotonic()) > 0:
                    spin(min(w, 0.02))
            if info_raw:
                player.publish(INFO_TOPIC, stamp, info_raw)
            player.publish(IMAGE_TOPIC, stamp, img_raw)
            sent[stamp] = time.time_ns()
            if writer is not None:
                writer.write(c_img, sent[stamp], img_raw)
            if not rate:
                end = time.monotonic() + timeout
                while stamp not in received and time.monotonic() < end:
                    spin(0.01)
        end = time.monotonic() + (timeout if rate else 2.0)
        while len(received) < len(frames) and time.monotonic() < end:
            spin(0.05)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        log = stop_process(proc)
        if writer is not None:
            writer.close()
    if proc.returncode not in (0, -signal.SIGINT):
        raise RuntimeError(f"the node exited with {proc.returncode}:\n{log[-3000:]}")
    lost = sorted(s for s, _, _ in frames if s not in received)
    latency = [(received[s][0] - sent[s]) / 1e6 for s in sent if s in received]
    return ReplayScores(metrics.scores(), sum(1 for s in received if s in gt), lost, latency)
