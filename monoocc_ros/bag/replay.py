"""`monoocc replay-eval`: one command that starts the occupancy node as a process, plays a bag
through it, records its outputs, stops everything, and prints the scores.

By default each frame waits for its grid before the next is sent (as fast as the node consumes,
so on any machine every frame can be answered); `--rate R` plays with the recorded timing instead
and counts what the node could not keep up with. The node runs with use_sim_time and this process
publishes /clock at every frame's stamp. The node's process group is always torn down (SIGINT,
then SIGKILL), so no orphan survives an error or Ctrl-C.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from monoocc_ros.bag.evaluate import GroundTruth, ReplayScores, header_stamp, load_ground_truth
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
from monoocc_ros.geometry import KITTI_CALIB, SEMANTIC_KITTI_GRID, GridSpec, to_homogeneous
from monoocc_ros.inference import camera_view_mask
from monoocc_ros.metrics import RegionMetrics
from monoocc_ros.ros.convert import msg_to_grid
from monoocc_ros.ros.process import NodeProcess, start_node


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


def _view_of(store, info_raw: bytes | None, extrinsic: np.ndarray, grid: GridSpec) -> np.ndarray:
    """The camera's field of view on `grid`, from a CameraInfo (all True without one)."""
    if not info_raw:
        return np.ones(grid.shape, bool)
    info = store.deserialize_cdr(info_raw, "sensor_msgs/msg/CameraInfo")
    p = np.asarray(info.p, dtype=np.float64).reshape(3, 4)
    return camera_view_mask(p, extrinsic, (int(info.height), int(info.width)), grid)


def node_args(checkpoint: str | None, extra_params: list[str] | None = None) -> list[str]:
    """The replayed node's ROS arguments: simulated time, the CPU, the bag's topics."""
    args = ["-p", "use_sim_time:=true", "-p", "device:=cpu",
            "-r", f"~/input/image:={IMAGE_TOPIC}", "-r", f"~/input/camera_info:={INFO_TOPIC}"]  # fmt: skip
    if checkpoint:
        args += ["-p", f"checkpoint:={checkpoint}"]
    for p in extra_params or []:
        args += ["-p", p]
    return args


def replay_eval(
    bag: str | Path,
    checkpoint: str | None = None,
    rate: float | None = None,
    timeout: float = 120.0,
    out: str | Path | None = None,
    progress: bool = True,
    node_params: list[str] | None = None,
) -> ReplayScores:
    """Start the node, play the bag's frames through it, record and score its grids, stop it."""
    bag = Path(bag)
    _check_model(checkpoint)
    topics = bag_topics(bag)
    for t in (IMAGE_TOPIC, INFO_TOPIC):
        if t not in topics:
            raise ValueError(f"{bag} has no {t}; make one with `monoocc bag from-dataset`")
    gt = load_ground_truth(bag) if GT_TOPIC in topics else None
    frames, first_info = _read_frames(bag)
    extrinsic = bag_extrinsic(bag, topics, progress)
    # The full grid is scored as offline eval scores it (outside_view predict), and the camera's
    # view beside it; the node runs with this data's extrinsic.
    params = ["outside_view:=predict", f"grid_to_camera:={[float(v) for v in extrinsic.reshape(-1)]}"]
    grid = gt.grid if gt is not None else SEMANTIC_KITTI_GRID
    replay = _Replay(bag, gt, _view_of(typestore(), first_info, extrinsic, grid), out)
    try:
        node = start_node(node_args(checkpoint, [*params, *(node_params or [])]))
    except BaseException:
        replay.close()
        raise
    try:
        replay.run(node, frames, rate, timeout, progress)
    finally:
        try:
            replay.close()
        finally:
            log = node.stop()  # always: no node process outlives the replay
    if node.returncode not in (0, -signal.SIGINT):
        raise RuntimeError(f"the node exited with {node.returncode}:\n{log[-3000:]}")
    return replay.scores(frames)


def _check_model(checkpoint: str | None) -> None:
    """An unreadable model fails here, with its name, before any replay."""
    if checkpoint and not str(checkpoint).endswith(".onnx"):
        from monoocc_ros.checkpoint import load_checkpoint

        load_checkpoint(checkpoint)
    elif checkpoint and not Path(checkpoint).is_file():
        raise FileNotFoundError(f"ONNX model {checkpoint} does not exist")


def _read_frames(bag: Path) -> tuple[list[tuple[int, bytes, bytes]], bytes | None]:
    """(stamp, camera info raw, image raw) per image in bag order, and the first camera info."""
    store = typestore()
    images: list[tuple[int, bytes]] = []
    infos: dict[int, bytes] = {}
    for topic, msgtype, _, raw in read_bag(bag, [INFO_TOPIC, IMAGE_TOPIC]):
        stamp = header_stamp(store.deserialize_cdr(raw, msgtype))
        if topic == INFO_TOPIC:
            infos[stamp] = raw
        else:
            images.append((stamp, raw))
    # Paired after reading everything: drivers often record a frame's camera info after its image.
    frames = [(stamp, infos.get(stamp, b""), raw) for stamp, raw in images]
    return frames, next(iter(infos.values()), None)


class _Replay:
    """This process's side of a replay: publishes the frames, receives, records and scores grids."""

    def __init__(self, bag: Path, gt: GroundTruth | None, view, out: str | Path | None) -> None:
        import rclpy

        from monoocc_ros.msg import VoxelGrid

        self.bag, self.gt, self.view, self.store = bag, gt or GroundTruth({}, SEMANTIC_KITTI_GRID), view, typestore()
        self.received: dict[int, int] = {}  # stamp -> arrival (ns)
        self.sent: dict[int, int] = {}
        self.metrics = RegionMetrics()
        self.node_process: NodeProcess | None = None
        self.writer = None
        rclpy.init()
        try:
            self.node = rclpy.create_node("monoocc_replay")
            self.node.create_subscription(VoxelGrid, PRED_TOPIC, self._on_grid, 10, raw=True)
            self.player = Player(self.node, bag, [IMAGE_TOPIC, INFO_TOPIC], clock=True)
        except BaseException:
            rclpy.try_shutdown()
            raise
        if out:  # opened last: nothing above can leave a half-written bag behind
            self.writer = open_writer(out)
            self.writer.open()
            self.c_img = self.writer.add_connection(
                IMAGE_TOPIC, "sensor_msgs/msg/Image", typestore=self.store, offered_qos_profiles=[RELIABLE_QOS]
            )
            self.c_pred = self.writer.add_connection(
                PRED_TOPIC, VOXELGRID_TYPE, typestore=self.store, offered_qos_profiles=[RELIABLE_QOS]
            )

    def _on_grid(self, raw: bytes) -> None:
        now = time.time_ns()
        msg = self.store.deserialize_cdr(raw, VOXELGRID_TYPE)
        stamp = header_stamp(msg)
        if stamp in self.received:
            return
        self.received[stamp] = now
        if self.writer is not None:
            self.writer.write(self.c_pred, now, raw)
        if stamp in self.gt.labels:
            grid = msg_to_grid(msg)
            self.gt.check_prediction(grid.grid)
            self.metrics.update(grid.labels, self.gt.labels[stamp], None, self.view)

    def _spin(self, t: float) -> None:
        import rclpy

        rclpy.spin_once(self.node, timeout_sec=t)
        if self.node_process is not None and self.node_process.poll() is not None:
            raise RuntimeError("the node exited:\n" + self.node_process.log())

    def _wait_for_node(self) -> None:
        deadline = time.monotonic() + 120
        pubs = self.player.pubs
        while (pubs[IMAGE_TOPIC].get_subscription_count() == 0 or pubs[INFO_TOPIC].get_subscription_count() == 0
               or self.node.count_publishers(PRED_TOPIC) == 0):  # fmt: skip
            if time.monotonic() > deadline:
                raise RuntimeError("the node did not come up within 120 s")
            self._spin(0.1)
        self._spin(0.5)

    def run(self, node: NodeProcess, frames: list, rate: float | None, timeout: float, progress: bool) -> None:
        """Play every frame: at the recorded timing scaled by `rate`, or (no rate) each frame
        after the previous one's grid arrived (or `timeout`)."""
        self.node_process = node
        self._wait_for_node()
        t0 = time.monotonic()
        bag_t0 = frames[0][0] if frames else 0
        for stamp, info_raw, img_raw in tqdm(frames, desc="replay", unit="frame", disable=not progress):
            if rate:
                due = t0 + (stamp - bag_t0) / 1e9 / rate
                while (w := due - time.monotonic()) > 0:
                    self._spin(min(w, 0.02))
            if info_raw:
                self.player.publish(INFO_TOPIC, stamp, info_raw)
            self.player.publish(IMAGE_TOPIC, stamp, img_raw)
            self.sent[stamp] = time.time_ns()
            if self.writer is not None:
                self.writer.write(self.c_img, self.sent[stamp], img_raw)
            if not rate:
                end = time.monotonic() + timeout
                while stamp not in self.received and time.monotonic() < end:
                    self._spin(0.01)
        end = time.monotonic() + (timeout if rate else 2.0)
        while len(self.received) < len(frames) and time.monotonic() < end:
            self._spin(0.05)

    def close(self) -> None:
        import rclpy

        try:
            self.node.destroy_node()
            rclpy.try_shutdown()
        finally:
            if self.writer is not None:
                self.writer.close()

    def scores(self, frames: list) -> ReplayScores:
        lost = sorted(s for s, _, _ in frames if s not in self.received)
        latency = [(self.received[s] - self.sent[s]) / 1e6 for s in self.sent if s in self.received]
        return ReplayScores(self.metrics.scores(), sum(1 for s in self.received if s in self.gt.labels), lost, latency)
