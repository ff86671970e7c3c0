"""`monoocc demo` (what `make demo` runs): the main job end to end on a fresh machine.

1. a small synthetic sequence (a world seed no shipped model was trained on) written as a rosbag2;
2. that bag replayed through the occupancy node process with the shipped checkpoint;
3. the scores (same metrics as offline evaluation), latency and frames lost;
4. pictures in demo_out/: camera image beside bird's-eye views of the predicted and true grids,
   and an open3d offscreen 3D render of a prediction.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from monoocc_ros.bev import bev_image, legend_image, side_by_side
from monoocc_ros.classes import CLASS_COLORS_RGB
from monoocc_ros.dds import use_local_dds
from monoocc_ros.paths import default_model

DEMO_SEED = 2026  # not a training seed (models/README.md lists those)


def _titled(img: np.ndarray, title: str) -> np.ndarray:
    canvas = Image.new("RGB", (img.shape[1], img.shape[0] + 18), "white")
    canvas.paste(Image.fromarray(img), (0, 18))
    ImageDraw.Draw(canvas).text((4, 3), title, fill="black")
    return np.asarray(canvas)


def render_3d(labels: np.ndarray, path: Path, size: tuple[int, int] = (960, 540)) -> None:
    """Offscreen open3d render of the occupied surface voxels, seen from behind and above the car."""
    import open3d as o3d
    from open3d.visualization import rendering

    from monoocc_ros.geometry import SEMANTIC_KITTI_GRID
    from monoocc_ros.ros.visualization import surface_voxels, voxel_centers

    idx = surface_voxels(labels)
    pts = voxel_centers(SEMANTIC_KITTI_GRID, idx).astype(np.float64)
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
    cloud.colors = o3d.utility.Vector3dVector(CLASS_COLORS_RGB[labels.reshape(-1)[idx]] / 255.0)
    voxels = o3d.geometry.VoxelGrid.create_from_point_cloud(cloud, SEMANTIC_KITTI_GRID.resolution)
    renderer = rendering.OffscreenRenderer(*size)
    mat = rendering.MaterialRecord()
    mat.shader = "defaultLit"
    renderer.scene.set_background([1.0, 1.0, 1.0, 1.0])
    renderer.scene.add_geometry("prediction", voxels, mat)
    renderer.setup_camera(55.0, [22.0, 0.0, -1.0], [-14.0, 0.0, 16.0], [0.0, 0.0, 1.0])
    o3d.io.write_image(path, renderer.render_to_image())


def run_demo(out_dir: str | Path = "demo_out", checkpoint: str | None = None, frames: int = 20) -> int:
    use_local_dds()
    from monoocc_ros.bag.dataset import from_dataset
    from monoocc_ros.bag.evaluate import header_stamp, load_ground_truth
    from monoocc_ros.bag.io import PRED_TOPIC, typestore
    from monoocc_ros.bag.play import read_bag
    from monoocc_ros.bag.replay import replay_eval
    from monoocc_ros.data.synth import synthesize
    from monoocc_ros.ros.convert import msg_to_grid

    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = Path(checkpoint) if checkpoint else default_model()
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint {ckpt} not found; train one (models/README.md) or pass --checkpoint")
    data, bag, pred = out / "data", out / "bag", out / "pred"
    if not (data / "sequences" / "08" / "times.txt").exists():
        print(f"[1/4] synthesising a {frames}-frame drive (seed {DEMO_SEED}) ...")
        synthesize(data, 1, frames, DEMO_SEED, first_sequence=8)
    if not bag.exists():
        print("[2/4] writing it as a rosbag2 (MCAP) ...")
        from_dataset(data, "08", bag)
    shutil.rmtree(pred, ignore_errors=True)
    print(f"[3/4] replaying {bag} through occupancy_node with {ckpt} ...")
    result = replay_eval(bag, str(ckpt), out=pred)
    print(result.report())

    print("[4/4] pictures ...")
    store = typestore()
    gt = load_ground_truth(bag).labels
    preds = {}
    for _, msgtype, _, raw in read_bag(pred, [PRED_TOPIC]):
        msg = store.deserialize_cdr(raw, msgtype)
        preds[header_stamp(msg)] = msg_to_grid(msg).labels.copy()
    stamps = sorted(preds)
    times = sorted(gt)
    written = []
    for k in sorted({0, len(stamps) // 2, len(stamps) - 1}):
        stamp = stamps[k]
        frame = times.index(stamp) if stamp in times else k
        image = np.asarray(Image.open(data / "sequences/08/image_2" / f"{frame:06d}.png").convert("RGB"))
        image = np.asarray(Image.fromarray(image).resize((620, 188), Image.Resampling.BILINEAR))
        panels = [
            _titled(image, f"camera, frame {frame}"),
            _titled(bev_image(preds[stamp], 1), "prediction (top view)"),
        ]
        if stamp in gt:
            panels.append(_titled(bev_image(gt[stamp], 1), "ground truth (top view)"))
        panels.append(legend_image())
        path = out / f"frame_{frame:06d}.png"
        Image.fromarray(side_by_side(*panels)).save(path)
        written.append(path)
    try:
        render_3d(preds[stamps[len(stamps) // 2]], out / "prediction_3d.png")
        written.append(out / "prediction_3d.png")
    except Exception as exc:  # reported, not hidden: the other pictures stand on their own
        print(f"warning: the 3D render failed ({exc.__class__.__name__}: {exc}); is a Vulkan/EGL driver installed?")
    (out / "scores.json").write_text(json.dumps({
        **result.scores.to_dict(), "frames_lost": result.frames_lost, "frames_scored": result.frames_scored,
        "latency_ms": result.latency_ms, "checkpoint": str(ckpt)}, indent=2))  # fmt: skip
    print("wrote " + ", ".join(str(p) for p in written) + f", {out / 'scores.json'}")
    print(f"demo finished in {time.perf_counter() - t_start:.0f} s")
    return 0 if not result.frames_lost else 1
