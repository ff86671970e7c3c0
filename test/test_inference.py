"""The inference API: preprocessing geometry for cameras unlike KITTI's, outputs, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monoocc_ros.checkpoint import CheckpointError, build_model_from_checkpoint, save_checkpoint
from monoocc_ros.geometry import KITTI_CALIB, lidar_projection, project_points, resize_image_and_projection
from monoocc_ros.inference import Predictor, prepare_input, resolve_device
from monoocc_ros.model.config import load_named_config
from monoocc_ros.model.monoocc import MonoOcc


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return MonoOcc(load_named_config("student_tiny")).eval()


def test_kitti_camera_prepares_exactly_like_the_dataset(tiny):
    image = np.random.default_rng(0).integers(0, 255, (376, 1241, 3), dtype=np.uint8)
    prep = prepare_input(tiny.cfg, image, KITTI_CALIB["P2"], KITTI_CALIB["Tr"])
    ref_img, ref_proj = resize_image_and_projection(
        image, lidar_projection(KITTI_CALIB["P2"], KITTI_CALIB["Tr"]), (188, 620)
    )
    assert prep.image.shape == (3, 188, 620)
    np.testing.assert_allclose(prep.projection, ref_proj, rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal((prep.image * 255).round().astype(np.uint8).transpose(1, 2, 0), ref_img)


def test_other_camera_geometry_is_preserved(tiny):
    """A 640x480 camera with f=500 and an off-centre principal point: a bright dot drawn where a
    3D point projects ends up where the prepared projection puts that point."""
    k = np.array([[500.0, 0, 300.0], [0, 500.0, 260.0], [0, 0, 1]])
    extrinsic = KITTI_CALIB["Tr"]
    point = np.array([[12.0, 1.5, -0.5]])
    u, v = project_points(point, k @ extrinsic[:3])[0][0]
    image = np.zeros((480, 640, 3), np.uint8)
    ui, vi = int(np.rint(u)), int(np.rint(v))
    image[vi - 3 : vi + 4, ui - 3 : ui + 4] = 255
    prep = prepare_input(tiny.cfg, image, k, extrinsic)
    uv2, d = project_points(point, prep.projection)
    u2, v2 = uv2[0]
    assert d[0] > 0 and 0 <= u2 < 620 and 0 <= v2 < 188
    bright = np.argwhere(prep.image[0] > 0.5)
    centre = bright.mean(axis=0)  # (row, col)
    assert abs(centre[0] - v2) < 1.0 and abs(centre[1] - u2) < 1.0
    # the focal length now matches training (718.856 px at image_scale 0.5): 1 m at 10 m spans f/10 px
    pts = np.array([[10.0, 0, 0], [10.0, 1.0, 0]])
    uv, _ = project_points(pts, prep.projection)
    assert abs(np.linalg.norm(uv[0] - uv[1]) - 718.856 * 0.5 / 10.0) < 2.0


def test_predict_outputs_full_grid(tiny):
    pred = Predictor.from_model(tiny, device="cpu")
    image = np.random.default_rng(1).integers(0, 255, (376, 1241, 3), dtype=np.uint8)
    labels, conf = pred.predict(image, KITTI_CALIB["P2"], KITTI_CALIB["Tr"])
    assert labels.shape == (256, 256, 32) and labels.dtype == np.uint8 and labels.max() < 20
    assert conf.shape == (256, 256, 32) and conf.dtype == np.float32
    assert (conf >= 1 / 20 - 1e-6).all() and (conf <= 1).all()
    # a coarser model's voxel is repeated 2x2x2
    assert (labels[0::2, 0::2, 0::2] == labels[1::2, 1::2, 1::2]).all()


@pytest.mark.parametrize(
    "image,k,match",
    [
        (np.zeros((376, 1241), np.uint8), KITTI_CALIB["P2"], r"\(H, W, 3\) uint8"),
        (np.zeros((376, 1241, 3), np.float32), KITTI_CALIB["P2"], r"\(H, W, 3\) uint8"),
        (np.zeros((376, 1241, 3), np.uint8), np.zeros((3, 3)), "focal lengths must be positive"),
        (np.zeros((376, 1241, 3), np.uint8), np.full((3, 3), np.nan), "NaN"),
        (np.zeros((376, 1241, 3), np.uint8), np.eye(2), "3x3 K or 3x4 P"),
        (np.zeros((4, 4, 3), np.uint8), KITTI_CALIB["P2"], "too small"),
    ],
)
def test_bad_inputs_are_clear_errors(tiny, image, k, match):
    with pytest.raises(ValueError, match=match):
        prepare_input(tiny.cfg, image, k, KITTI_CALIB["Tr"])


def test_devices_never_fall_back_silently(tiny):
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda")
        with pytest.raises(ValueError, match="half_precision needs CUDA"):
            Predictor.from_model(tiny, device="cpu", half_precision=True)
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="teacher"):
        Predictor.from_model(MonoOcc(load_named_config("teacher_tiny")), device="cpu")


def test_checkpoint_round_trip_and_errors(tmp_path, tiny):
    path = tmp_path / "m.pt"
    save_checkpoint(path, tiny.cfg, tiny.state_dict(), step=7)
    model, data = build_model_from_checkpoint(path)
    assert data["step"] == 7 and data["model_config"] == tiny.cfg
    for a, b in zip(model.state_dict().values(), tiny.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    (tmp_path / "trunc.pt").write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"trunc\.pt \(1000 bytes\) cannot be read"):
        build_model_from_checkpoint(tmp_path / "trunc.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_model_from_checkpoint(tmp_path / "missing.pt")
    torch.save({"hello": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a monoocc_ros checkpoint"):
        build_model_from_checkpoint(tmp_path / "other.pt")
    weights = dict(tiny.state_dict())
    weights.pop("head.subvoxel.bias")
    weights["head.subvoxel.weight"] = torch.zeros(3, 3)
    save_checkpoint(tmp_path / "bad.pt", tiny.cfg, weights)
    with pytest.raises(
        CheckpointError,
        match=r"missing 1 key\(s\) e.g. \['head.subvoxel.bias'\].*shape mismatch in head.subvoxel.weight",
    ):
        build_model_from_checkpoint(tmp_path / "bad.pt")


def test_export_strips_training_state(tmp_path, tiny):
    from monoocc_ros.checkpoint import export_weights, load_checkpoint

    src = tmp_path / "train.pt"
    opt = torch.optim.AdamW([p for p in tiny.parameters() if p.requires_grad])
    save_checkpoint(src, tiny.cfg, tiny.state_dict(), optimizer=opt.state_dict(), step=3, metrics={"miou": 1.0})
    export_weights(src, tmp_path / "ship.pt")
    data = load_checkpoint(tmp_path / "ship.pt")
    assert "optimizer" not in data and data["step"] == 3 and data["metrics"] == {"miou": 1.0}
    model, _ = build_model_from_checkpoint(tmp_path / "ship.pt")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), tiny.state_dict().values(), strict=True))


def test_camera_view_mask_and_field_of_view_policy():
    """The view is what projects onto the image in front of the camera (KITTI: about a wedge of
    +-40 degrees ahead); outside it labels become unknown (or stay, with `predict`) and the
    confidence is 0, so no unseen voxel ranks above a seen one."""
    from monoocc_ros.geometry import IMAGE_HEIGHT, IMAGE_WIDTH, KITTI_CALIB, SEMANTIC_KITTI_GRID
    from monoocc_ros.inference import camera_view_mask
    from monoocc_ros.ros.pipeline import apply_field_of_view

    view = camera_view_mask(KITTI_CALIB["P2"], KITTI_CALIB["Tr"], (IMAGE_HEIGHT, IMAGE_WIDTH))
    assert view.shape == SEMANTIC_KITTI_GRID.shape and view.dtype == bool
    ix = lambda x, y, z: tuple(int((v - o) / 0.2) for v, o in zip((x, y, z), SEMANTIC_KITTI_GRID.origin, strict=True))  # noqa: E731
    assert view[ix(20.0, 0.0, 0.0)] and view[ix(40.0, 10.0, 0.5)]  # ahead, and 14 degrees to the left
    assert not view[ix(20.0, 24.0, 0.0)] and not view[ix(1.0, 0.0, -1.7)]  # 50 degrees left; the ground at 1 m
    assert 0.2 < view.mean() < 0.9
    half = camera_view_mask(KITTI_CALIB["P2"], KITTI_CALIB["Tr"], (IMAGE_HEIGHT, IMAGE_WIDTH // 2))
    assert half.sum() < view.sum() and not (half & ~view).any()  # a narrower image sees a subset

    labels = np.full(SEMANTIC_KITTI_GRID.shape, 9, np.uint8)
    confidence = np.full(SEMANTIC_KITTI_GRID.shape, 0.7, np.float32)
    lab, conf = apply_field_of_view(labels, confidence, view, "unknown")
    assert (lab[view] == 9).all() and (lab[~view] == 255).all()
    assert (conf[view] == np.float32(0.7)).all() and (conf[~view] == 0).all()
    lab, conf = apply_field_of_view(labels, confidence, view, "predict")
    assert (lab == 9).all() and (conf[~view] == 0).all()
    with pytest.raises(ValueError, match="outside_view must be one of"):
        apply_field_of_view(labels, confidence, view, "guess")


def test_the_model_grid_is_what_is_published_and_scored(tmp_path):
    """The grid comes from the model's config (checkpoint), not from the dataset's file grid: a
    model made for a coarser, shifted grid publishes that grid, and is refused by training/eval
    on SemanticKITTI files and by bag scoring against ground truth on another grid."""
    import dataclasses

    from monoocc_ros.bag.evaluate import GroundTruth
    from monoocc_ros.geometry import SEMANTIC_KITTI_GRID, GridSpec
    from monoocc_ros.model.config import ConfigError
    from monoocc_ros.ros.convert import msg_to_grid
    from monoocc_ros.ros.params import default_params
    from monoocc_ros.ros.pipeline import run_frame
    from monoocc_ros.testing.harness import camera_info_msg, image_msg
    from monoocc_ros.trainer.engine import make_dataset

    grid = GridSpec(origin=(2.0, -25.6, -1.6), resolution=0.4, shape=(64, 128, 16))
    torch.manual_seed(0)
    model = MonoOcc(dataclasses.replace(load_named_config("student_tiny"), grid=grid)).eval()
    save_checkpoint(tmp_path / "coarse.pt", model.cfg, model.state_dict())
    pred = Predictor.from_checkpoint(tmp_path / "coarse.pt", device="cpu")
    assert pred.grid == grid and pred.cfg.query_grid.shape == (16, 32, 4)

    rgb = np.random.default_rng(2).integers(0, 255, (376, 1241, 3), dtype=np.uint8)
    stamp = 7_000_000_000
    img, info = image_msg(rgb, stamp), camera_info_msg(KITTI_CALIB["P2"], rgb.shape[1], rgb.shape[0], stamp)
    out = run_frame(pred, img, info, stamp, default_params(), False, False)
    decoded = msg_to_grid(out.voxels)
    assert decoded.grid == grid and decoded.labels.shape == (64, 128, 16)
    # Outside the camera's view (default outside_view: unknown) is judged on this grid: the first
    # x-slab is 2.0-2.4 m ahead, where the image covers only the middle of the y range.
    assert (decoded.labels[0, 0] == 255).all() and (decoded.labels[0, 64] != 255).any()

    with pytest.raises(ConfigError, match=r"fills GridSpec\(origin=\(2.0, -25.6, -1.6\).*holds SemanticKITTI"):
        make_dataset(model.cfg, str(tmp_path), ("00",), (0,))
    gt = GroundTruth({stamp: np.zeros(SEMANTIC_KITTI_GRID.shape, np.uint8)}, SEMANTIC_KITTI_GRID)
    with pytest.raises(ValueError, match="cannot be compared"):
        gt.check_prediction(decoded.grid)
