"""`monoocc eval --controls`: per-root split files, the image-free prior (and its cache), the
other-image control and the comparison the CLI prints. Tiny SemanticKITTI-format roots are
written here voxel by voxel, so every expected value is known by hand."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monoocc_ros.classes import train_to_raw
from monoocc_ros.data import formats as F
from monoocc_ros.data.dataset import DatasetConfig, SemanticKITTIDataset, load_splits
from monoocc_ros.geometry import IMAGE_HEIGHT, IMAGE_WIDTH, KITTI_CALIB, SEMANTIC_KITTI_GRID, resize_projection
from monoocc_ros.metrics import SSCMetrics
from monoocc_ros.trainer import controls
from monoocc_ros.trainer.controls import (
    OtherImageDataset,
    donor_sequences,
    image_free_prior,
    score_fixed_prediction,
)
from monoocc_ros.trainer.engine import resolve_sequences

SHAPE = SEMANTIC_KITTI_GRID.shape
EMPTY, CAR, PERSON, ROAD = 0, 1, 6, 9
IGNORED_RAW = 1  # "outlier": raw_to_train maps it to 255
A, B, C, D, E = (10, 10, 5), (20, 20, 5), (30, 30, 5), (40, 40, 5), (50, 50, 5)
SMALL = (8, 16)  # (H, W) of the images the unit tests write: no resizing, colours stay exact

# Three training frames, voxel by voxel: (train id or None for ignored, invalid bit).
TRAIN_FRAMES = [
    {A: (CAR, False), B: (PERSON, False), C: (CAR, True), D: (CAR, True), E: (CAR, False)},
    {A: (CAR, False), B: (None, False), C: (CAR, True), D: (None, False), E: (ROAD, False)},
    {A: (ROAD, False), B: (None, False), C: (ROAD, False), D: (CAR, True), E: (None, False)},
]
VAL_FRAME = {A: (CAR, False), C: (ROAD, False)}  # everything else empty


def _write_labels(seq: Path, frame: int, voxels: dict) -> None:
    """One frame's voxel files: empty and valid everywhere except the listed voxels."""
    (seq / "voxels").mkdir(parents=True, exist_ok=True)
    raw = np.zeros(SHAPE, np.uint16)
    invalid = np.zeros(SHAPE, bool)
    for idx, (train_id, bad) in voxels.items():
        raw[idx] = IGNORED_RAW if train_id is None else train_to_raw(np.array(train_id))
        invalid[idx] = bad
    F.write_voxel_labels(seq / "voxels" / f"{frame:06d}.label", raw)
    F.write_voxel_bits(seq / "voxels" / f"{frame:06d}.invalid", invalid)


def _colour(seq: str, frame: int) -> tuple[int, int, int]:
    return (int(seq) * 20 + 5, frame * 40 + 3, 200)


def _write_sequence(
    root: Path, name: str, frames: list[dict], images: int | None = None, size: tuple[int, int] = SMALL
) -> Path:
    """calib (P2's focal length differs per sequence), poses, times, uniform-colour images and
    the labelled frames; `images` more images than labelled frames when given."""
    seq = root / "sequences" / name
    (seq / "image_2").mkdir(parents=True)
    calib = {k: v.copy() for k, v in KITTI_CALIB.items()}
    # A camera consistent with the image size (KITTI's, scaled), its focal length per sequence.
    calib["P2"] = resize_projection(calib["P2"], size[1] / IMAGE_WIDTH, size[0] / IMAGE_HEIGHT)
    calib["P2"][0, 0] *= 1 + int(name) / 100
    F.write_calib(seq / "calib.txt", calib)
    n = images or len(frames)
    F.write_poses(seq / "poses.txt", np.tile(np.eye(4), (n, 1, 1)))
    F.write_times(seq / "times.txt", np.arange(n) * 0.1)
    rng = np.random.default_rng(int(name))
    for i in range(n):
        if size == SMALL:
            pixels = np.full((*size, 3), _colour(name, i), np.uint8)
        else:
            pixels = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(seq / "image_2" / f"{i:06d}.png")
    for i, voxels in enumerate(frames):
        _write_labels(seq, i, voxels)
    return seq


@pytest.fixture()
def root(tmp_path, monkeypatch) -> Path:
    """Train sequence 00 (the three frames above), val sequence 08 (one frame)."""
    monkeypatch.setenv("MONOOCC_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "root"
    _write_sequence(root, "00", TRAIN_FRAMES)
    _write_sequence(root, "08", [VAL_FRAME])
    return root


# --- split files --------------------------------------------------------------------------


def test_splits_yaml_replaces_the_semantickitti_lists(root):
    _write_sequence(root, "01", [VAL_FRAME])
    assert resolve_sequences(str(root), None, "train") == ("00", "01")
    assert resolve_sequences(str(root), None, "val") == ("08",)
    # Unquoted numbers: YAML reads 1 as an int (-> "01"), 08 (not octal) stays the string "08".
    (root / "splits.yaml").write_text("train: [1]\nval: [08, '00']\n")
    assert load_splits(root) == {"train": ("01",), "val": ("08", "00")}
    assert resolve_sequences(str(root), None, "train") == ("01",)
    assert resolve_sequences(str(root), None, "val") == ("08", "00")
    assert resolve_sequences(str(root), ("00",), "val") == ("00",)  # explicit sequences still win
    with pytest.raises(ValueError, match=r"split 'test' is not defined in .*splits.yaml \(it defines \['train'"):
        resolve_sequences(str(root), None, "test")
    (root / "splits.yaml").write_text("train: ['01', '03']\nval: ['08']\n")
    with pytest.raises(FileNotFoundError, match=r"splits.yaml: train sequences \['03'\] do not exist"):
        resolve_sequences(str(root), None, "train")


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("train: ['00', '01'\n", r"not valid YAML \(line \d+: "),
        ("- '00'\n- '01'\n", "holds list"),
        ("", "holds nothing"),
        ("train: '00'\n", "split 'train' maps to str"),
        ("train: ['00', 1.5]\n", r"split 'train' lists 1.5 \(float\)"),
        ("val: [true]\n", r"split 'val' lists True \(bool\)"),
    ],
)
def test_malformed_splits_yaml_is_one_clear_error(root, text, why):
    (root / "splits.yaml").write_text(text)
    with pytest.raises(F.FormatError, match=why) as info:
        resolve_sequences(str(root), None, "train")
    message = str(info.value)
    assert message.startswith(str(root / "splits.yaml")) and "expected" in message and "\n" not in message


# --- the image-free prior -----------------------------------------------------------------


def test_prior_is_the_most_frequent_valid_class(root):
    prior = image_free_prior(root, ("00",), progress=False)
    assert prior.shape == SHAPE and prior.dtype == np.uint8
    assert prior[A] == CAR  # car, car, road
    assert prior[B] == PERSON  # valid once; ignored twice does not count as empty
    assert prior[C] == ROAD  # car twice but marked invalid, road once valid
    assert prior[D] == EMPTY  # never valid: car labels under invalid bits do not count
    assert prior[E] == CAR  # car once, road once: the tie goes to the lower id
    assert np.count_nonzero(prior) == 4


def test_prior_is_scored_on_the_models_targets(root):
    prior = image_free_prior(root, ("00",), progress=False)
    val = SemanticKITTIDataset(DatasetConfig(str(root), ("08",), image_size=SMALL, downsample=()))
    scores = score_fixed_prediction(prior, val, progress=False)
    expected = SSCMetrics()
    for i in range(len(val)):
        item = val[i]
        expected.update(prior, item["target"].numpy(), item["invalid"].numpy())
    assert dataclasses.replace(scores, in_view=None) == expected.scores()
    # Val: car at A, road at C. The prior adds a person at B and a car at E, both truly empty.
    assert scores.class_iou[CAR] == pytest.approx(50.0)  # A right, E a false positive
    assert scores.class_iou[ROAD] == pytest.approx(100.0)
    assert scores.class_iou[PERSON] == 0.0
    assert scores.precision == pytest.approx(50.0) and scores.recall == pytest.approx(100.0)
    assert scores.num_voxels == int(np.prod(SHAPE))


def test_prior_is_cached_until_a_label_file_changes(root, tmp_path, monkeypatch):
    calls = []
    real = controls.count_classes
    monkeypatch.setattr(controls, "count_classes", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = image_free_prior(root, ("00",), progress=False)
    second = image_free_prior(root, ("00",), progress=False)
    assert len(calls) == 1 and np.array_equal(first, second)
    cached = list((tmp_path / "cache" / "prior").iterdir())
    assert len(cached) == 1 and cached[0].suffix == ".npz"  # no temporary file left behind

    _write_labels(root / "sequences" / "00", 2, {A: (ROAD, False), E: (ROAD, False)})
    label = root / "sequences" / "00" / "voxels" / "000002.label"
    os.utime(label, ns=(label.stat().st_atime_ns, label.stat().st_mtime_ns + 10**9))
    relabelled = image_free_prior(root, ("00",), progress=False)
    assert len(calls) == 2
    assert relabelled[A] == CAR and relabelled[E] == ROAD  # E: car, road, road now
    assert image_free_prior(root, ("08",), progress=False)[A] == CAR  # other sequences: another key
    assert len(calls) == 3


def test_a_corrupt_cache_file_is_recomputed(root, tmp_path):
    first = image_free_prior(root, ("00",), progress=False)
    (cached,) = (tmp_path / "cache" / "prior").iterdir()
    cached.write_bytes(b"not a zip")
    assert np.array_equal(image_free_prior(root, ("00",), progress=False), first)


# --- the other-image control --------------------------------------------------------------


def test_donors_are_the_next_sequence_or_another_of_the_root(root, tmp_path):
    _write_sequence(root, "01", [VAL_FRAME])
    assert donor_sequences(root, ("00", "01", "08")) == {"00": "01", "01": "08", "08": "00"}
    assert donor_sequences(root, ("08",)) == {"08": "00"}
    assert donor_sequences(root, ("00",)) == {"00": "01"}
    lonely = tmp_path / "lonely"
    _write_sequence(lonely, "00", [VAL_FRAME])
    with pytest.raises(ValueError, match=r"needs a second sequence .* it has only \['00'\]"):
        donor_sequences(lonely, ("00",))


@pytest.mark.parametrize("offsets", [(), (-1, 0)])
def test_other_image_dataset_swaps_only_the_images(root, offsets):
    # 00: three labelled frames; 08: one labelled frame among two images. Evaluate both.
    for i in (1,):
        Image.fromarray(np.full((*SMALL, 3), _colour("08", i), np.uint8)).save(
            root / "sequences" / "08" / "image_2" / f"{i:06d}.png"
        )
    F.write_poses(root / "sequences" / "08" / "poses.txt", np.tile(np.eye(4), (2, 1, 1)))  # a pose per image
    base = SemanticKITTIDataset(DatasetConfig(str(root), ("00", "08"), image_size=SMALL, frame_offsets=offsets))
    other = OtherImageDataset(base, donor_sequences(root, ("00", "08")))
    assert len(other) == len(base) == 4

    def colour(item_image: torch.Tensor) -> tuple[int, int, int]:
        # the centre: the border may be padding (images are fitted to the training camera)
        h, w = item_image.shape[-2:]
        return tuple(int(v) for v in (item_image[:, h // 2, w // 2] * 255).round())

    for index, (name, frame) in enumerate(base.items):
        mine, swapped = base[index], other[index]
        donor = "08" if name == "00" else "00"
        donor_frame = frame % (2 if donor == "08" else 3)
        assert colour(swapped["image"]) == _colour(donor, donor_frame)
        assert colour(mine["image"]) == _colour(name, frame)
        for key in ("projection", "target", "invalid", "labels_2d", "depth_2d"):
            assert torch.equal(swapped[key], mine[key]), key
        assert swapped["meta"]["sequence"] == name and swapped["meta"]["image_sequence"] == donor
        if offsets:
            assert torch.equal(swapped["other_projections"], mine["other_projections"])
            shown = [base.other_frame(name, frame, off) % (2 if donor == "08" else 3) for off in offsets]
            assert [colour(img) for img in swapped["other_images"]] == [_colour(donor, j) for j in shown]
    # 00 frame 2 is shown 08's frame 0 (2 mod 2), through 00's own projection (its own focal length)
    index = base.items.index(("00", 2))
    assert colour(other[index]["image"]) == _colour("08", 0)
    assert torch.equal(other[index]["projection"], base[index]["projection"])
    assert not torch.equal(other[index]["projection"], base[base.items.index(("08", 0))]["projection"])


# --- the CLI ----------------------------------------------------------------------------


MICRO = {
    "name": "micro", "backbone": "resnet18", "embed_dim": 16, "image_scale": 0.25, "output_scale": 4,
    "query_scale": 8, "cross_layers": 1, "self_layers": 1, "icca_layers": 1, "heads": 2, "points": 2,
    "ffn_dim": 32, "depth_bins": 16, "proposal_channels": 8, "dropout": 0.1,
}  # fmt: skip


@pytest.fixture()
def checkpoint(tmp_path) -> Path:
    """A randomly initialised micro student: scores are meaningless, their bookkeeping is not."""
    from monoocc_ros.checkpoint import save_checkpoint
    from monoocc_ros.model.config import ModelConfig
    from monoocc_ros.model.monoocc import MonoOcc

    torch.manual_seed(0)
    cfg = ModelConfig.from_dict(MICRO)
    path = tmp_path / "micro.pt"
    save_checkpoint(path, cfg, MonoOcc(cfg).state_dict())
    return path


def _eval(*extra: str) -> int:
    from monoocc_ros.cli import main

    return main(["eval", *extra, "--device", "cpu"])


def test_eval_controls_end_to_end(tmp_path, monkeypatch, checkpoint, capsys):
    monkeypatch.setenv("MONOOCC_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(2)
    root = tmp_path / "kitti"
    frames = [{A: (CAR, False), C: (ROAD, False)}] * 2
    _write_sequence(root, "00", frames, size=(376, 1241))
    _write_sequence(root, "08", frames, size=(376, 1241))
    import monoocc_ros.trainer.evaluate as ev

    shown = []  # the image sequence of each evaluation's first frame: the model's own, then the donor's
    real_evaluate = ev.evaluate
    monkeypatch.setattr(
        ev,
        "evaluate",
        lambda m, ds, *a, **k: (
            shown.append(ds[0]["meta"].get("image_sequence", "own")) or real_evaluate(m, ds, *a, **k)
        ),
    )
    out = tmp_path / "scores.json"
    assert _eval("--checkpoint", str(checkpoint), "--data", str(root), "--controls", "--json", str(out)) == 0
    assert shown == ["own", "00"]
    text = capsys.readouterr().out
    data = json.loads(out.read_text())
    prior, other = data["controls"]["prior"], data["controls"]["other_image"]
    # Train and val carry the same labels: the prior is exactly right, mIoU 2 classes of 19.
    assert prior["completion_iou"] == 100.0 and prior["precision"] == 100.0 and prior["recall"] == 100.0
    assert prior["miou"] == pytest.approx(200.0 / 19)
    assert data["num_voxels"] == prior["num_voxels"] == other["num_voxels"] == 2 * int(np.prod(SHAPE))
    gain = data["controls"]["perception_gain"]["miou"]
    assert gain == pytest.approx(data["miou"] - other["miou"])
    assert data["controls"]["image_donors"] == {"08": "00"} and data["controls"]["prior_sequences"] == ["00"]

    assert "mIoU (1-19)" in text  # the model's own table comes first
    full_grid = text.split("in the camera's view only:")[0]  # the in-view rows repeat the labels
    rows = {line[:18].strip(): line[18:].split() for line in full_grid.splitlines()}
    assert rows["image-free prior"] == ["100.00", f"{200 / 19:.2f}", "100.00", "100.00"]
    assert rows["model"] == [f"{data[k]:.2f}" for k in ("completion_iou", "miou", "precision", "recall")]
    assert rows["other image"] == [f"{other[k]:.2f}" for k in ("completion_iou", "miou", "precision", "recall")]
    assert f"perception gain: {gain:.2f} mIoU points" in text
    assert "note: the prior is built from evaluated sequences" not in text
    # These sequences have no velodyne scans: the depth is said to be unscored, not scored as 0.
    assert "depth: no frame has LiDAR depth (velodyne scans), not scored" in text and "depth" not in data

    # A root with one sequence cannot lend another image: one line, no traceback.
    lonely = tmp_path / "lonely"
    _write_sequence(lonely, "08", frames[:1])
    with pytest.raises(SystemExit, match=r"^monoocc eval: the other-image control needs a second sequence"):
        _eval("--checkpoint", str(checkpoint), "--data", str(lonely), "--controls", "--prior-split", "val")


def test_eval_reports_a_malformed_splits_file_in_one_line(root, checkpoint):
    (root / "splits.yaml").write_text("val: {a: 1}\n")
    with pytest.raises(SystemExit) as info:
        _eval("--checkpoint", str(checkpoint), "--data", str(root))
    message = str(info.value.code)
    assert message.startswith(f"monoocc eval: {root / 'splits.yaml'}: split 'val' maps to dict; expected a mapping")
    assert "\n" not in message


# --- dataset statistics (monoocc stats) ---------------------------------------------------


def test_split_statistics_count_valid_occupied_voxels(root):
    from monoocc_ros.data.statistics import in_view_mask, split_statistics

    stats = split_statistics(root, ("00",), progress=False)
    assert stats.frames == 3
    share = dict(zip(range(1, 20), stats.class_share, strict=True))
    assert share[CAR] == pytest.approx(100 * 3 / 7) and share[ROAD] == pytest.approx(100 * 3 / 7)
    assert share[PERSON] == pytest.approx(100 / 7)
    n = SEMANTIC_KITTI_GRID.num_voxels
    assert stats.valid_share == pytest.approx(100 * (3 * n - 8) / (3 * n))  # 5 invalid + 3 ignored
    assert stats.occupied_share == pytest.approx(100 * 7 / (3 * n - 8))
    assert "car" not in stats.missing_classes and "truck" in stats.missing_classes
    view = in_view_mask(KITTI_CALIB)
    assert view[100, 128, 8] and not view[100, 250, 8] and not view[0, 128, 8]  # ahead / far left / at the car
    assert stats.in_view_share == 0.0  # A..E all lie left of the camera's view


def test_stats_cli_prints_the_table(root, capsys):
    from monoocc_ros.cli import main

    assert main(["stats", "--data", str(root), "--split", "train"]) == 0
    out = capsys.readouterr().out
    assert "SemKITTI %" in out and "valid voxels" in out
    assert main(["stats", "--data", str(root / "nope")]) == 2
    assert "monoocc stats:" in capsys.readouterr().err
