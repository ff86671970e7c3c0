"""The synthetic world (written in SemanticKITTI format) and the Dataset over it."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from monoocc_ros.classes import raw_to_train
from monoocc_ros.data import formats as F
from monoocc_ros.data.dataset import DatasetConfig, SemanticKITTIDataset
from monoocc_ros.data.synth import CAR, SequenceRenderer, make_world, synthesize
from monoocc_ros.geometry import (
    IMAGE_HEIGHT,
    IMAGE_WIDTH,
    KITTI_CALIB,
    SEMANTIC_KITTI_GRID,
    in_image,
    lidar_projection,
    project_points,
)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    synthesize(root, sequences=1, frames=4, seed=3)
    return root


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_cli_writes_full_layout_and_is_deterministic(tmp_path, synth_root):
    out = tmp_path / "again"
    proc = subprocess.run(
        [sys.executable, "-m", "monoocc_ros.cli", "synth", "--out", str(out), "--frames", "4", "--seed", "3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "frames/s" in proc.stdout
    seq = out / "sequences" / "00"
    for rel in (
        "calib.txt",
        "poses.txt",
        "times.txt",
        "image_2/000003.png",
        "velodyne/000003.bin",
        "labels/000003.label",
        "voxels/000003.label",
        "voxels/000003.bin",
        "voxels/000003.invalid",
        "voxels/000003.occluded",
    ):
        assert (seq / rel).is_file(), rel
    assert _digest(out) == _digest(synth_root)  # same seed, same bytes
    other = tmp_path / "other"
    synthesize(other, sequences=1, frames=1, seed=4)
    assert (other / "sequences/00/voxels/000000.label").read_bytes() != (
        synth_root / "sequences/00/voxels/000000.label"
    ).read_bytes()


def test_voxel_files_are_consistent(synth_root):
    """SemanticKITTI's meaning: labels come from accumulated returns, so every labelled voxel was
    observed (never invalid); building interiors are invalid, not solid; the current scan's
    voxels (.bin) are occupied and not occluded."""
    vox = synth_root / "sequences" / "00" / "voxels"
    labels = raw_to_train(F.read_voxel_labels(vox / "000002.label"))
    scan = F.read_voxel_bits(vox / "000002.bin")
    occluded = F.read_voxel_bits(vox / "000002.occluded")
    invalid = F.read_voxel_bits(vox / "000002.invalid")
    assert scan.sum() > 5000
    assert (labels[scan] > 0).mean() > 0.97  # what the current scan hits is occupied
    assert not (scan & occluded).any()
    assert not (invalid & (labels > 0)).any()  # a voxel with a class was observed
    assert 0.15 < invalid.mean() < 0.9  # unobserved space exists (behind walls, far away) but not all
    present = set(np.unique(labels).tolist())
    assert {0, 9, 11, 15} <= present  # empty, road, sidewalk, vegetation at least
    # Road lies on the grid's second z layer (surface at -1.73 m within [-1.8, -1.6]).
    road_z = np.bincount(np.nonzero(labels == 9)[2], minlength=32)
    assert road_z[1] > 0.95 * road_z.sum()
    building = labels == 13
    assert building[:, :, [0, 31]].sum() <= 0.05 * max(building.sum(), 1)  # no solid slabs at the grid's edges


def test_lidar_points_agree_with_voxel_labels(synth_root):
    seq = synth_root / "sequences" / "00"
    scan = F.read_scan(seq / "velodyne" / "000001.bin")
    sem = raw_to_train(F.read_point_labels(seq / "labels" / "000001.label", num_points=len(scan))[0])
    labels = raw_to_train(F.read_voxel_labels(seq / "voxels" / "000001.label"))
    idx, inside = SEMANTIC_KITTI_GRID.points_to_indices(scan)
    vox_lab = labels[tuple(idx[inside].T)]
    agree = (vox_lab == sem[inside]).mean()
    assert inside.sum() > 20_000
    assert agree > 0.85, agree


def test_known_object_projects_onto_its_rendered_class():
    """A car's voxel centres, projected with P2 @ Tr, land on pixels rendered as car."""
    world = make_world(np.random.default_rng([7, 0]), 1)
    renderer = SequenceRenderer(world, seed=7)
    out = renderer.render(0)
    cars_seen = out["camera_seen"] & (out["labels"] == CAR)
    assert cars_seen.sum() > 50
    centers = SEMANTIC_KITTI_GRID.voxel_centers()[cars_seen]
    uv, depth = project_points(centers, lidar_projection(KITTI_CALIB["P2"], KITTI_CALIB["Tr"]))
    ok = (depth > 0) & in_image(uv, IMAGE_WIDTH, IMAGE_HEIGHT)
    px = np.rint(uv[ok]).astype(int)
    hits = out["label_image"][px[:, 1], px[:, 0]]
    assert (hits == CAR).mean() > 0.8, np.bincount(hits)


def test_dataset_item(synth_root):
    ds = SemanticKITTIDataset(
        DatasetConfig(str(synth_root), ("00",), image_size=(188, 620), frame_offsets=(-2, 0, 1, 9))
    )
    assert len(ds) == 4
    item = ds[1]
    assert item["image"].shape == (3, 188, 620) and item["image"].dtype == torch.float32
    assert 0 <= item["image"].min() and item["image"].max() <= 1
    assert item["target"].shape == (256, 256, 32) and item["target_2"].shape == (128, 128, 16)
    assert (item["target"][item["invalid"]] == 255).all()
    assert item["labels_2d"].shape == (47, 155)
    labelled = item["labels_2d"] != 255
    assert labelled.sum() > 500 and (item["depth_2d"][labelled] > 0).all()
    # frame offsets: -2 and +9 fall outside the 4-frame sequence and reuse the current frame.
    other = item["other_projections"]
    assert item["other_images"].shape == (4, 3, 188, 620)
    torch.testing.assert_close(other[0], item["projection"])
    torch.testing.assert_close(other[1], item["projection"])
    torch.testing.assert_close(other[3], item["projection"])
    torch.testing.assert_close(item["other_images"][3], item["image"])
    assert not torch.allclose(other[2], item["projection"])  # frame 2 sees the grid from 0.6-1 m ahead
    assert item["meta"] == {"sequence": "00", "frame": 1, "stamp": pytest.approx(0.1)}


def test_item_cache_gives_identical_items_and_follows_the_files(synth_root, tmp_path):
    """A cached item equals a decoded one, key by key and dtype by dtype; a changed source file
    or config reads a fresh folder; an unreadable cache file is decoded again."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    kw = dict(root=str(root), sequences=("00",), image_size=(188, 620), frame_offsets=(-1, 0), downsample=(2, 4))
    plain = SemanticKITTIDataset(DatasetConfig(**kw))
    cached = SemanticKITTIDataset(DatasetConfig(**kw, item_cache=str(tmp_path / "items")))
    for i in range(len(plain)):
        want, first, again = plain[i], cached[i], cached[i]  # decoded + saved, then read back
        assert set(want) == set(again)
        for k, v in want.items():
            if k == "meta":
                assert v == first[k] == again[k]
            else:
                assert v.dtype == again[k].dtype and torch.equal(v, first[k]) and torch.equal(v, again[k]), k
    files = sorted((tmp_path / "items").rglob("*.npz"))
    assert len(files) == len(plain) and len({f.parent for f in files}) == 1

    other_cfg = SemanticKITTIDataset(DatasetConfig(**{**kw, "downsample": (2,)}, item_cache=str(tmp_path / "items")))
    (root / "sequences" / "00" / "image_2" / "000001.png").touch()  # a new mtime: the data changed
    touched = SemanticKITTIDataset(DatasetConfig(**kw, item_cache=str(tmp_path / "items")))
    folders = {cached._cache.folders["00"], other_cfg._cache.folders["00"], touched._cache.folders["00"]}
    assert len(folders) == 3

    files[0].write_bytes(b"not an npz")
    torch.testing.assert_close(cached[0]["target"], plain[0]["target"], rtol=0, atol=0)
    whole = files[1].read_bytes()
    files[1].write_bytes(whole[: len(whole) // 2])  # truncated (zipfile.BadZipFile): decoded again
    torch.testing.assert_close(cached[1]["image"], plain[1]["image"], rtol=0, atol=0)
    assert files[1].read_bytes() == whole  # and written back whole

    unwritable = SemanticKITTIDataset(DatasetConfig(**kw, item_cache=str(root / "sequences" / "00" / "calib.txt")))
    with pytest.warns(UserWarning, match="item cache turned off"):
        item = unwritable[0]  # the cache folder cannot be created under a file: decoding goes on
    assert torch.equal(item["target"], plain[0]["target"]) and unwritable._cache is None


def test_zero_frame_offsets_need_no_poses(synth_root, tmp_path):
    """Offsets that are all 0 (a teacher config's own frame only) work without poses.txt: every
    view is the current frame, as with poses."""
    import shutil

    root = tmp_path / "noposes"
    shutil.copytree(synth_root, root)
    (root / "sequences" / "00" / "poses.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"poses\.txt is needed for frame offsets"):
        SemanticKITTIDataset(DatasetConfig(str(root), ("00",), frame_offsets=(-1, 0)))
    item = SemanticKITTIDataset(DatasetConfig(str(root), ("00",), frame_offsets=(0, 0)))[2]
    assert item["other_images"].shape[0] == 2
    for k in range(2):
        torch.testing.assert_close(item["other_images"][k], item["image"])
        torch.testing.assert_close(item["other_projections"][k], item["projection"])


def test_dataset_on_real_sequence(realdata_seq00):
    """The real seq 00 sample has images, scans and point labels but no voxel .label files."""
    root = realdata_seq00.parents[1]
    with pytest.raises(FileNotFoundError, match="no labelled frames"):
        SemanticKITTIDataset(DatasetConfig(str(root), ("00",)))
    ds = SemanticKITTIDataset(DatasetConfig(str(root), ("00",), frame_offsets=(-5, 0), require_labels=False))
    assert len(ds) == 10
    item = ds[5]
    assert "target" not in item and item["image"].shape == (3, 376, 1241)
    labelled = item["labels_2d"] != 255
    assert labelled.sum() > 2000  # real LiDAR points projected at 1/4 resolution
    rows = torch.nonzero(item["labels_2d"] == 9)[:, 0].float()
    assert rows.median() > 94 / 2  # road in the lower half
    assert not torch.allclose(item["other_projections"][0], item["projection"])
    torch.testing.assert_close(item["other_projections"][1], item["projection"])


def test_missing_dataset_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no sequences/ folder"):
        SemanticKITTIDataset(DatasetConfig(str(tmp_path / "nope"), ("00",)))
    (tmp_path / "sequences" / "00").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"sequence folder .*01 does not exist \(have: \['00'\]\)"):
        SemanticKITTIDataset(DatasetConfig(str(tmp_path), ("01",)))


def test_accumulated_lidar_lands_on_the_scene(synth_root):
    """`lidar_evidence`: scans of other frames moved into this frame by the poses fall on voxels
    the ground truth calls occupied (or cannot see); with the motion ignored they would not."""
    ds = SemanticKITTIDataset(DatasetConfig(str(synth_root), ("00",), lidar_offsets=(-3, -2, -1, 0), lidar_scale=2))
    item = ds[3]
    evidence = item["lidar_evidence"].numpy()
    assert evidence.shape == (128, 128, 16) and evidence.dtype == np.float32
    own = SemanticKITTIDataset(DatasetConfig(str(synth_root), ("00",), lidar_offsets=(0,), lidar_scale=2))[3]
    returns, own_returns = np.expm1(evidence), np.expm1(own["lidar_evidence"].numpy())  # log(1 + n) -> n
    assert (returns >= own_returns - 1e-3).all() and returns.sum() > 3 * own_returns.sum()
    target = item["target_2"].numpy()

    def on_scene(ev: np.ndarray) -> float:
        hit = ev > 0
        return float(((target[hit] > 0) & (target[hit] != 255)).mean() + (target[hit] == 255).mean())

    assert on_scene(evidence) > 0.9
    seq = ds.sequences["00"]  # the oldest scan alone, without its motion: most of it misses
    stale = np.zeros(128 * 128 * 16, np.float32)
    xyz = F.read_scan(seq.path / "velodyne" / "000000.bin")[:, :3]
    idx = np.floor((xyz - np.asarray(SEMANTIC_KITTI_GRID.origin)) / 0.4).astype(np.int64)
    keep = np.all((idx >= 0) & (idx < (128, 128, 16)), axis=1)
    np.add.at(stale, np.ravel_multi_index(idx[keep].T, (128, 128, 16)), 1)
    moved = SemanticKITTIDataset(DatasetConfig(str(synth_root), ("00",), lidar_offsets=(-3,), lidar_scale=2))[3]
    assert on_scene(moved["lidar_evidence"].numpy()) > on_scene(stale.reshape(128, 128, 16)) + 0.1
