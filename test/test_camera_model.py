"""The node's camera model (ros/camera.py) and the one preprocessing shared with the Dataset:
a distorted frame is rectified back to nearly the grid of the undistorted one, binning and ROI
follow REP-104, and the Dataset's item is exactly what the node feeds the network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monoocc_ros.data.synth import synthesize
from monoocc_ros.geometry import KITTI_CALIB
from monoocc_ros.inference import Predictor
from monoocc_ros.ros.camera import InputError, camera_image

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "student_tiny.pt"
P2 = KITTI_CALIB["P2"]


@pytest.fixture(scope="module")
def frame(tmp_path_factory) -> tuple[Path, np.ndarray]:
    root = synthesize(tmp_path_factory.mktemp("camera") / "data", sequences=1, frames=1, seed=4)
    rgb = np.asarray(Image.open(root / "sequences" / "00" / "image_2" / "000000.png").convert("RGB"))
    return root, rgb


def _info(width: int, height: int, d=(), model: str = "plumb_bob", binning=(0, 0), roi=(0, 0, 0, 0)):
    from sensor_msgs.msg import CameraInfo

    msg = CameraInfo()
    msg.width, msg.height = width, height
    msg.distortion_model = model
    msg.d = [float(v) for v in d]
    msg.k = [float(v) for v in P2[:3, :3].reshape(-1)]
    msg.r = [float(v) for v in np.eye(3).reshape(-1)]
    msg.p = [float(v) for v in P2.reshape(-1)]
    msg.binning_x, msg.binning_y = binning
    msg.roi.x_offset, msg.roi.y_offset, msg.roi.width, msg.roi.height = roi
    return msg


def _distort(rgb: np.ndarray, d: np.ndarray, fisheye: bool = False) -> np.ndarray:
    """What a lens with coefficients `d` would have recorded: each distorted pixel samples the
    undistorted image where OpenCV's inverse model sends it."""
    import cv2

    h, w = rgb.shape[:2]
    k = P2[:3, :3]
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    pts = np.stack([u.ravel(), v.ravel()], -1)[:, None, :]
    und = (cv2.fisheye.undistortPoints(pts, k, d, P=k) if fisheye else cv2.undistortPoints(pts, k, d, P=k)).reshape(
        h, w, 2
    )
    return cv2.remap(rgb, und[..., 0].astype(np.float32), und[..., 1].astype(np.float32), cv2.INTER_LINEAR)


LENSES = {"plumb_bob": [-0.28, 0.08, 0.0008, -0.0005, 0.0], "equidistant": [-0.05, 0.01, -0.002, 0.0]}


@pytest.mark.parametrize("model,d", LENSES.items(), ids=list(LENSES))
def test_distorted_frame_rectified_gives_nearly_the_undistorted_grid(frame, model, d):
    _, rgb = frame
    d = np.asarray(d)
    distorted = _distort(rgb, d, fisheye=model == "equidistant")
    h, w = rgb.shape[:2]
    assert np.abs(distorted.astype(int) - rgb).mean() > 5  # the lens really moves the picture
    rectified, p = camera_image(_info(w, h, d, model), distorted)
    np.testing.assert_allclose(p, P2)
    pred = Predictor.load(SHIPPED, "torch", "cpu")
    truth, _ = pred.predict(rgb, P2, KITTI_CALIB["Tr"])
    fixed, _ = pred.predict(rectified, p, KITTI_CALIB["Tr"])
    ignored, _ = pred.predict(distorted, P2, KITTI_CALIB["Tr"])  # the distortion ignored, as before
    occupied = (truth > 0) | (fixed > 0)
    agree_fixed = float((fixed == truth)[occupied].mean())
    agree_ignored = float((ignored == truth)[(truth > 0) | (ignored > 0)].mean())
    every = float((fixed == truth).mean())
    print(f"{model}: occupied-voxel agreement with the undistorted frame {agree_fixed:.3f} rectified, "
          f"{agree_ignored:.3f} with the distortion ignored; all voxels {every:.4f}")  # fmt: skip
    assert agree_fixed > 0.8 and agree_fixed > agree_ignored + 0.05


def test_binning_and_roi_follow_rep_104(frame):
    """K and P describe the full sensor; the image is the ROI, binned. A 2x2-binned crop must get
    the projection that maps scene points onto the same (binned, cropped) pixels."""
    _, rgb = frame
    h, w = rgb.shape[:2]
    x0, y0, rw, rh = 100, 40, 800, 300
    crop = rgb[y0 : y0 + rh, x0 : x0 + rw]
    binned = crop.reshape(rh // 2, 2, rw // 2, 2, 3).mean((1, 3)).astype(np.uint8)
    out, p = camera_image(_info(w, h, binning=(2, 2), roi=(x0, y0, rw, rh)), binned)
    assert out.shape == binned.shape
    ahead = np.array([1.5, -0.3, 12.0, 1.0])  # camera frame: 12 m ahead
    grid_point = KITTI_CALIB["Tr"] @ np.array([15.0, 2.0, -0.5, 1.0])  # a grid point, in the camera frame
    for x in (ahead, grid_point):
        full = P2 @ x
        u, v = full[:2] / full[2]
        small = p @ x
        # binned pixel j covers full pixels 2j, 2j+1 (centre 2j + 0.5) of the crop
        np.testing.assert_allclose(small[:2] / small[2], [(u - x0 - 0.5) / 2, (v - y0 - 0.5) / 2], atol=1e-9)
    with pytest.raises(InputError, match="camera info says ROI 800x300 binned 2x2 = 400x150"):
        camera_image(_info(w, h, binning=(2, 2), roi=(x0, y0, rw, rh)), crop)
    same, _ = camera_image(_info(w, h, d=[0.1, 0, 0, 0, 0]), rgb, rectified=True)  # image_rect: not warped again
    assert same is rgb
    with pytest.raises(InputError, match="NaN or infinity in D"):
        camera_image(_info(w, h, d=[float("nan"), 0, 0, 0, 0]), rgb)
    with pytest.raises(InputError, match="distortion model 'kannala' is not supported"):
        camera_image(_info(w, h, d=[0.1, 0, 0, 0], model="kannala"), rgb)
    with pytest.raises(InputError, match="with binning or a ROI are not supported"):
        camera_image(_info(w, h, d=[0.1, 0, 0, 0, 0], binning=(2, 2)), rgb[::2, ::2][: h // 2, : w // 2])


def test_dataset_item_is_what_the_node_feeds_the_network(frame):
    """One preprocessing: the Dataset's image and projection for a frame are the node's, so
    offline and node scores of the same frame are identical."""
    from monoocc_ros.model.config import load_named_config
    from monoocc_ros.trainer.engine import make_dataset

    root, rgb = frame
    cfg = load_named_config("student_tiny")
    item = make_dataset(cfg, str(root), ("00",), (0,))[0]
    h, w = rgb.shape[:2]
    node_rgb, p = camera_image(_info(w, h), rgb)
    prepared = Predictor.load(SHIPPED, "torch", "cpu").prepare(node_rgb, p, KITTI_CALIB["Tr"])
    assert np.array_equal(item["image"].numpy(), prepared.image)
    np.testing.assert_allclose(item["projection"].numpy(), prepared.projection, rtol=0, atol=1e-4)
