"""The occupancy node as its own process over real DDS: real KITTI frames, a synthetic frame,
and 50 malformed messages interleaved with good ones."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image as PILImage

from monoocc_ros.classes import CLASS_NAMES
from monoocc_ros.data import formats as F
from monoocc_ros.geometry import IMAGE_HEIGHT, IMAGE_WIDTH, KITTI_CALIB
from monoocc_ros.ros.convert import msg_to_grid
from monoocc_ros.testing.harness import Harness, camera_info_msg, image_msg, random_tiny_checkpoint, start_node

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return random_tiny_checkpoint(tmp_path_factory.mktemp("node") / "student_tiny_random.pt")


def _check_grid(msg, stamp_ns, p, image_hw):
    """A whole grid: classes inside the camera's view, unknown (255, confidence 0) outside it
    (`outside_view` defaults to unknown; the node runs with KITTI's default extrinsic)."""
    from monoocc_ros.inference import camera_view_mask

    grid = msg_to_grid(msg)
    assert grid.stamp_ns == stamp_ns
    assert grid.frame_id == "velodyne"
    assert grid.labels.shape == (256, 256, 32)
    view = camera_view_mask(p, KITTI_CALIB["Tr"], image_hw)
    assert grid.labels[view].max() < 20 and (grid.labels[~view] == 255).all()
    assert grid.confidence is not None and grid.confidence.shape == (256, 256, 32)
    assert (grid.confidence[~view] == 0).all()
    assert grid.class_names == CLASS_NAMES


def _run_frames(checkpoint, frames, ns):
    """frames: list of (rgb, P, stamp_ns). Sends one at a time, waits for each answer."""
    h = Harness(ns)
    proc = start_node(checkpoint, ns)
    try:
        assert h.wait_for_node(proc), proc.stop()
        # the node's markers/points publishers need to see our subscriptions
        assert h.spin_until(lambda: h.node.count_publishers(f"{ns}/occupancy_node/output/markers") > 0, 30, proc)
        h.spin_until(lambda: False, 1.0)
        for i, (rgb, p, stamp) in enumerate(frames):
            h.send(image_msg(rgb, stamp), camera_info_msg(p, rgb.shape[1], rgb.shape[0], stamp))
            assert h.spin_until(lambda i=i: len(h.voxels) > i, 90, proc), proc.stop()
            _check_grid(h.voxels[i], stamp, p, rgb.shape[:2])
        assert h.spin_until(lambda: len(h.markers) >= len(frames) and len(h.points) >= len(frames), 30, proc)
        return h.voxels, h.markers, h.points
    finally:
        h.close()
        log = proc.stop()
        assert proc.returncode == 0, log


def _check_viz(markers, points):
    from visualization_msgs.msg import Marker

    m = markers[-1].markers
    assert m[0].action == Marker.DELETEALL
    assert all(x.type == Marker.CUBE_LIST and x.ns in CLASS_NAMES for x in m[1:])
    assert sum(len(x.points) for x in m[1:]) <= 20000  # max_marker_cubes in config/occ.yaml
    cloud = points[-1]
    assert [f.name for f in cloud.fields] == ["x", "y", "z", "rgb", "label"]
    assert cloud.width * cloud.point_step == len(cloud.data)


def test_node_on_real_kitti_frames(checkpoint, realdata_seq00):
    calib = F.read_calib(realdata_seq00 / "calib.txt")
    frames = []
    for i in range(3):
        rgb = np.asarray(PILImage.open(realdata_seq00 / "image_2" / f"{i:06d}.png").convert("RGB"))
        assert rgb.shape == (376, 1241, 3)
        frames.append((rgb, calib["P2"], 1_000_000_000 + i * 103_735_900))
    voxels, markers, points = _run_frames(checkpoint, frames, f"/real{os.getpid()}")
    assert len(voxels) == 3
    _check_viz(markers, points)


def test_node_on_a_synthetic_frame(checkpoint, tmp_path):
    from monoocc_ros.data.synth import synthesize

    root = synthesize(tmp_path, 1, 1, seed=2)
    rgb = np.asarray(PILImage.open(root / "sequences/00/image_2/000000.png").convert("RGB"))
    assert rgb.shape == (IMAGE_HEIGHT, IMAGE_WIDTH, 3)
    voxels, markers, points = _run_frames(checkpoint, [(rgb, KITTI_CALIB["P2"], 5_000_000_000)], f"/syn{os.getpid()}")
    assert len(voxels) == 1
    _check_viz(markers, points)


def _malformed(i: int, stamp: int, good_rgb: np.ndarray):
    """Bad (image, info) pairs of several kinds; each with its own stamp."""
    p = KITTI_CALIB["P2"]
    h, w = good_rgb.shape[:2]
    kind = i % 8
    if kind == 0:  # unsupported encoding
        return image_msg(good_rgb, stamp, encoding="32FC1"), camera_info_msg(p, w, h, stamp)
    if kind == 1:  # image size disagrees with its camera info
        return image_msg(good_rgb[:100], stamp), camera_info_msg(p, w, h, stamp)
    if kind == 2:  # zero focal length
        return image_msg(good_rgb, stamp), camera_info_msg(np.zeros((3, 4)), w, h, stamp)
    if kind == 3:  # no camera info at all: never pairs
        return image_msg(good_rgb, stamp), None
    if kind == 4:  # NaN in the matrix
        bad = p.copy()
        bad[0, 2] = np.nan
        return image_msg(good_rgb, stamp), camera_info_msg(bad, w, h, stamp)
    if kind == 5:  # empty image
        return image_msg(np.zeros((0, 0, 3), np.uint8), stamp), camera_info_msg(p, 0, 0, stamp)
    if kind == 6:  # data shorter than step * height
        msg = image_msg(good_rgb, stamp)
        msg.data = msg.data[:1000]
        return msg, camera_info_msg(p, w, h, stamp)
    # huge: 4200x4100 mono8 (17 MB), over the node's pixel limit
    return image_msg(np.zeros((4100, 4200), np.uint8), stamp, "mono8"), camera_info_msg(p, 4200, 4100, stamp)


def test_node_survives_malformed_input(checkpoint):
    ns = f"/bad{os.getpid()}"
    rng = np.random.default_rng(0)
    good_rgb = rng.integers(0, 255, (376, 1241, 3), dtype=np.uint8)
    h = Harness(ns)
    proc = start_node(checkpoint, ns)
    try:
        assert h.wait_for_node(proc), proc.stop()
        h.spin_until(lambda: False, 1.0)
        stamp, answered, goods = 10_000_000_000, 0, 0
        for i in range(50):
            stamp += 1_000_000
            bad_img, bad_info = _malformed(i, stamp, good_rgb)
            h.send(bad_img, bad_info)
            h.spin_until(lambda: False, 0.05)
            if i % 10 == 9:  # a good frame after every ten bad ones
                stamp += 1_000_000
                goods += 1
                h.send(image_msg(good_rgb, stamp), camera_info_msg(KITTI_CALIB["P2"], 1241, 376, stamp))
                assert h.spin_until(lambda g=goods: len(h.voxels) >= g, 90, proc), proc.stop()
                assert msg_to_grid(h.voxels[-1]).stamp_ns == stamp
                answered += 1
        assert answered == goods == 5
        assert proc.poll() is None  # still running
        # bad frames never produced output
        assert len(h.voxels) == 5
    finally:
        h.close()
        log = proc.stop()
    assert "not supported" in log and "zero focal length" in log


def test_missing_checkpoint_reports_error_then_reloads_at_run_time(checkpoint, tmp_path):
    """A checkpoint that does not exist: the node stays up with an ERROR diagnostic naming it;
    setting the `checkpoint` parameter to a good file at run time makes it serve frames; then a
    file that is not a model is refused (the transactional reload) and the next frame is answered."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from rclpy.parameter import Parameter
    from rclpy.parameter_client import AsyncParameterClient

    ns = f"/ckpt{os.getpid()}"
    missing = tmp_path / "nope.pt"
    h = Harness(ns, visualization=False)
    diags = []
    h.node.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
    proc = start_node(missing, ns)
    try:
        assert h.wait_for_node(proc), proc.stop()
        assert h.spin_until(
            lambda: any(
                s.name == f"{ns}/occupancy_node: occupancy"
                and s.level == DiagnosticStatus.ERROR
                and "nope.pt" in s.message
                for d in diags
                for s in d.status
            ),
            30,
            proc,
        )
        client = AsyncParameterClient(h.node, f"{ns}/occupancy_node")
        assert client.wait_for_services(timeout_sec=30)
        future = client.set_parameters([Parameter("checkpoint", value=str(checkpoint))])
        assert h.spin_until(future.done, 60, proc)
        assert future.result().results[0].successful
        bad = client.set_parameters([Parameter("device", value="cpu")])  # start-up only
        assert h.spin_until(bad.done, 30, proc)
        assert not bad.result().results[0].successful
        # A bad model at run time is refused with the reason; the good one keeps serving.
        junk = tmp_path / "junk.pt"
        junk.write_text("not a checkpoint")
        refused = client.set_parameters([Parameter("checkpoint", value=str(junk))])
        assert h.spin_until(refused.done, 60, proc)
        result = refused.result().results[0]
        assert not result.successful and "junk.pt" in result.reason and "cannot load" in result.reason
        current = client.get_parameters(["checkpoint"])
        assert h.spin_until(current.done, 30, proc)
        assert current.result().values[0].string_value == str(checkpoint)
        rgb = np.zeros((376, 1241, 3), np.uint8)
        stamp = 7_000_000_000
        h.send(image_msg(rgb, stamp), camera_info_msg(KITTI_CALIB["P2"], 1241, 376, stamp))
        assert h.spin_until(lambda: len(h.voxels) == 1, 90, proc), proc.stop()
        assert msg_to_grid(h.voxels[0]).stamp_ns == stamp
    finally:
        h.close()
        log = proc.stop()
    assert "cannot load" in log and "nope.pt" in log


def test_onnxruntime_backend_and_switching_backend_at_run_time(checkpoint, tmp_path, monkeypatch):
    """backend:=onnxruntime with a .pt checkpoint: exported once into the cache, served over DDS
    with the labels eager torch gives for the same frame; switching `backend` to torch while the
    node runs reloads the model and it keeps serving."""
    from rclpy.parameter import Parameter
    from rclpy.parameter_client import AsyncParameterClient

    from monoocc_ros.inference import Predictor, camera_view_mask

    monkeypatch.setenv("MONOOCC_CACHE", str(tmp_path / "cache"))
    ns = f"/ort{os.getpid()}"
    rgb = np.random.default_rng(3).integers(0, 255, (IMAGE_HEIGHT, IMAGE_WIDTH, 3), dtype=np.uint8)
    expected, _ = Predictor.load(checkpoint, "torch", "cpu").predict(rgb, KITTI_CALIB["P2"], KITTI_CALIB["Tr"])
    view = camera_view_mask(KITTI_CALIB["P2"], KITTI_CALIB["Tr"], (IMAGE_HEIGHT, IMAGE_WIDTH))
    h = Harness(ns, visualization=False)
    proc = start_node(checkpoint, ns, ["-p", "backend:=onnxruntime"])
    try:
        assert h.wait_for_node(proc, 120), proc.stop()
        h.spin_until(lambda: False, 1.0)
        for i, stamp in enumerate((8_000_000_000, 8_100_000_000)):
            if i == 1:
                client = AsyncParameterClient(h.node, f"{ns}/occupancy_node")
                assert client.wait_for_services(timeout_sec=30)
                future = client.set_parameters([Parameter("backend", value="torch")])
                assert h.spin_until(future.done, 60, proc)
                assert future.result().results[0].successful
            h.send(image_msg(rgb, stamp), camera_info_msg(KITTI_CALIB["P2"], IMAGE_WIDTH, IMAGE_HEIGHT, stamp))
            assert h.spin_until(lambda i=i: len(h.voxels) > i, 90, proc), proc.stop()
            grid = msg_to_grid(h.voxels[i])
            assert grid.stamp_ns == stamp
            assert (grid.labels[view] == expected[view]).mean() >= 0.999 and (grid.labels[~view] == 255).all()
    finally:
        h.close()
        log = proc.stop()
    assert list((tmp_path / "cache" / "onnx").glob("*.onnx")), "the checkpoint was not exported to the cache"
    assert "onnxruntime (CPUExecutionProvider)" in log and "torch on cpu" in log, log
