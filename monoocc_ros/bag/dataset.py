"""`monoocc bag from-dataset`: a SemanticKITTI-format sequence as a real rosbag2.

Topics: /camera/image_raw (rgb8 Image), /camera/camera_info (P = P2, K its left 3x3, sensor-data
QoS recorded like a camera driver), /ground_truth/voxels (VoxelGrid of train ids, 255 where the
ground truth is ignored or invalid; only frames with voxel labels). Stamps: `start_time` plus the
sequence's times.txt (a zero stamp would never pair in the node).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from monoocc_ros.bag.io import (
    GT_TOPIC,
    IMAGE_TOPIC,
    INFO_TOPIC,
    RELIABLE_QOS,
    SENSOR_QOS,
    STATIC_QOS,
    TF_STATIC_TOPIC,
    VOXELGRID_TYPE,
    header,
    new_bag,
    transform_message,
    typestore,
)
from monoocc_ros.classes import IGNORE, raw_to_train
from monoocc_ros.data import formats as F
from monoocc_ros.ros.convert import voxelgrid_fields

DEFAULT_START_TIME = 1_700_000_000.0  # s; any fixed, non-zero epoch keeps bags reproducible


def image_message(store, rgb: np.ndarray, stamp_ns: int, frame: str = "camera"):
    return store.types["sensor_msgs/msg/Image"](
        header=header(store, stamp_ns, frame), height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8",
        is_bigendian=0, step=rgb.shape[1] * 3, data=np.ascontiguousarray(rgb).reshape(-1),
    )  # fmt: skip


def camera_info_message(store, p2: np.ndarray, width: int, height: int, stamp_ns: int, frame: str = "camera"):
    t = store.types
    k = np.asarray(p2, np.float64)[:3, :3]
    return t["sensor_msgs/msg/CameraInfo"](
        header=header(store, stamp_ns, frame), height=height, width=width, distortion_model="plumb_bob",
        d=np.zeros(5), k=k.reshape(-1), r=np.eye(3).reshape(-1), p=np.asarray(p2, np.float64).reshape(-1),
        binning_x=0, binning_y=0,
        roi=t["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
    )  # fmt: skip


def voxelgrid_message(store, labels: np.ndarray, stamp_ns: int, frame: str = "velodyne", confidence=None):
    """A rosbags VoxelGrid of SemanticKITTI-file labels (`voxelgrid_fields` checks and fills it)."""
    t = store.types
    f = voxelgrid_fields(labels, F.FILE_GRID, confidence)
    pose = t["geometry_msgs/msg/Pose"](
        position=t["geometry_msgs/msg/Point"](x=f.origin[0], y=f.origin[1], z=f.origin[2]),
        orientation=t["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0),
    )
    return t[VOXELGRID_TYPE](
        header=header(store, stamp_ns, frame), origin=pose, resolution=f.resolution,
        size_x=f.size[0], size_y=f.size[1], size_z=f.size[2], axis_order=f.axis_order,
        labels=f.labels, class_table=f.class_table, class_names=list(f.class_names), confidence=f.confidence,
    )  # fmt: skip


def from_dataset(
    root: str | Path,
    sequence: str,
    out: str | Path,
    storage: str = "mcap",
    start_time: float = DEFAULT_START_TIME,
    max_frames: int | None = None,
) -> dict:
    seq = Path(root) / "sequences" / sequence
    if not seq.is_dir():
        raise FileNotFoundError(f"{seq} does not exist; expected ROOT/sequences/{sequence}/ (SemanticKITTI layout)")
    images = sorted((seq / "image_2").glob("*.png"))
    if not images:
        raise FileNotFoundError(f"{seq / 'image_2'} has no .png images")
    if max_frames:
        images = images[:max_frames]
    calib = F.read_calib(seq / "calib.txt", require_tr=False)  # the bag carries images and P2 only
    times = F.read_times(seq / "times.txt")
    store = typestore()
    counts = {"images": 0, "ground_truth": 0}
    with new_bag(out, storage) as writer:
        c_img = writer.add_connection(
            IMAGE_TOPIC, "sensor_msgs/msg/Image", typestore=store, offered_qos_profiles=[SENSOR_QOS]
        )
        c_info = writer.add_connection(
            INFO_TOPIC, "sensor_msgs/msg/CameraInfo", typestore=store, offered_qos_profiles=[SENSOR_QOS]
        )
        c_gt = None  # added with the first labelled frame: a sequence without labels has no GT topic
        if "Tr" in calib:  # the extrinsic, so replay-eval runs the node with this data's own
            c_tf = writer.add_connection(
                TF_STATIC_TOPIC, "tf2_msgs/msg/TFMessage", typestore=store, offered_qos_profiles=[STATIC_QOS]
            )
            first = round((start_time + times[int(images[0].stem)]) * 1e9) if len(times) else 0
            tf = transform_message(store, calib["Tr"], first, "camera", "velodyne")
            writer.write(c_tf, first, store.serialize_cdr(tf, c_tf.msgtype))
        for path in tqdm(images, desc=f"bag {sequence}", unit="frame"):
            frame = int(path.stem)
            if frame >= len(times):
                raise ValueError(f"{seq / 'times.txt'} has {len(times)} entries, but image {path.name} exists")
            stamp = round((start_time + times[frame]) * 1e9)
            rgb = np.asarray(Image.open(path).convert("RGB"))
            writer.write(
                c_info,
                stamp,
                store.serialize_cdr(
                    camera_info_message(store, calib["P2"], rgb.shape[1], rgb.shape[0], stamp), c_info.msgtype
                ),
            )
            writer.write(c_img, stamp, store.serialize_cdr(image_message(store, rgb, stamp), c_img.msgtype))
            counts["images"] += 1
            label = seq / "voxels" / f"{frame:06d}.label"
            if label.exists():
                train = raw_to_train(F.read_voxel_labels(label))
                invalid_path = label.with_suffix(".invalid")
                if invalid_path.exists():
                    train = np.where(F.read_voxel_bits(invalid_path), IGNORE, train).astype(np.uint8)
                if c_gt is None:
                    c_gt = writer.add_connection(
                        GT_TOPIC, VOXELGRID_TYPE, typestore=store, offered_qos_profiles=[RELIABLE_QOS]
                    )
                writer.write(c_gt, stamp, store.serialize_cdr(voxelgrid_message(store, train, stamp), VOXELGRID_TYPE))
                counts["ground_truth"] += 1
    return counts
