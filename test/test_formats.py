"""SemanticKITTI formats: bit-exact round trips, size errors, the official downsampling rule."""

from __future__ import annotations

import numpy as np
import pytest

from monoocc_ros.classes import (
    CLASS_COLORS_RGB,
    CLASS_NAMES,
    LEARNING_MAP,
    LEARNING_MAP_INV,
    class_weights,
    raw_to_train,
    train_to_raw,
)
from monoocc_ros.data import formats as F


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_bits_round_trip_and_numpy_packbits_order(tmp_path, rng):
    mask = rng.random(F.GRID_SHAPE) < 0.3
    F.write_voxel_bits(tmp_path / "a.bin", mask)
    raw = np.fromfile(tmp_path / "a.bin", np.uint8)
    assert raw.size == 256 * 256 * 32 // 8
    np.testing.assert_array_equal(raw, np.packbits(mask.reshape(-1)))
    np.testing.assert_array_equal(F.read_voxel_bits(tmp_path / "a.bin"), mask)
    # MSB first: voxel (0, 0, 0) is the top bit of byte 0; (0, 0, 7) the lowest.
    one = np.zeros(F.GRID_SHAPE, bool)
    one[0, 0, 0] = True
    one[0, 0, 15] = True
    packed = F.pack_bits(one)
    assert packed[0] == 0b1000_0000 and packed[1] == 0b0000_0001


def test_labels_scan_calib_poses_times_round_trip(tmp_path, rng):
    raw = rng.integers(0, 260, F.GRID_SHAPE).astype(np.uint16)
    F.write_voxel_labels(tmp_path / "v.label", raw)
    np.testing.assert_array_equal(F.read_voxel_labels(tmp_path / "v.label"), raw)

    pts = rng.normal(size=(1000, 4)).astype(np.float32)
    F.write_scan(tmp_path / "s.bin", pts)
    np.testing.assert_array_equal(F.read_scan(tmp_path / "s.bin"), pts)

    sem = rng.integers(0, 260, 1000).astype(np.uint16)
    inst = rng.integers(0, 500, 1000).astype(np.uint16)
    F.write_point_labels(tmp_path / "p.label", sem, inst)
    s2, i2 = F.read_point_labels(tmp_path / "p.label", num_points=1000)
    np.testing.assert_array_equal(s2, sem)
    np.testing.assert_array_equal(i2, inst)

    calib = {k: rng.normal(size=(3, 4)) for k in ("P0", "P1", "P2", "P3", "Tr")}
    F.write_calib(tmp_path / "calib.txt", calib)
    back = F.read_calib(tmp_path / "calib.txt")
    for k in calib:
        np.testing.assert_array_equal(back[k][:3], calib[k])
    assert back["Tr"].shape == (4, 4) and (back["Tr"][3] == [0, 0, 0, 1]).all()

    poses = np.tile(np.eye(4), (5, 1, 1))
    poses[:, :3, :] = rng.normal(size=(5, 3, 4))
    F.write_poses(tmp_path / "poses.txt", poses)
    np.testing.assert_array_equal(F.read_poses(tmp_path / "poses.txt"), poses)

    times = np.cumsum(rng.random(7))
    F.write_times(tmp_path / "times.txt", times)
    np.testing.assert_array_equal(F.read_times(tmp_path / "times.txt"), times)


def test_truncated_files_name_file_size_and_expected(tmp_path):
    (tmp_path / "t.bin").write_bytes(b"\x00" * 1000)
    with pytest.raises(F.FormatError, match=r"t\.bin: 1000 bytes, expected 262144"):
        F.read_voxel_bits(tmp_path / "t.bin")
    with pytest.raises(F.FormatError, match=r"t\.bin: 1000 bytes, expected 4194304"):
        F.read_voxel_labels(tmp_path / "t.bin")
    (tmp_path / "scan.bin").write_bytes(b"\x00" * 18)
    with pytest.raises(F.FormatError, match=r"scan\.bin: 18 bytes is not a multiple of 16"):
        F.read_scan(tmp_path / "scan.bin")
    (tmp_path / "p.label").write_bytes(b"\x00" * 8)
    with pytest.raises(F.FormatError, match="expected 3"):
        F.read_point_labels(tmp_path / "p.label", num_points=3)
    (tmp_path / "calib.txt").write_text("P0: 1 2 3\n")
    with pytest.raises(F.FormatError, match="P0 has 3 values, expected 12"):
        F.read_calib(tmp_path / "calib.txt")
    with pytest.raises(FileNotFoundError, match=r"missing\.bin"):
        F.read_voxel_bits(tmp_path / "missing.bin")


def test_learning_map_and_inverse():
    assert len(CLASS_NAMES) == 20 and CLASS_COLORS_RGB.shape == (20, 3)
    raw = np.array(
        [
            0,
            10,
            252,
            11,
            15,
            18,
            258,
            13,
            16,
            20,
            256,
            257,
            259,
            30,
            254,
            31,
            253,
            32,
            255,
            40,
            60,
            44,
            48,
            49,
            50,
            51,
            70,
            71,
            72,
            80,
            81,
            1,
            52,
            99,
        ]
    )
    expect = [
        0,
        1,
        1,
        2,
        3,
        4,
        4,
        5,
        5,
        5,
        5,
        5,
        5,
        6,
        6,
        7,
        7,
        8,
        8,
        9,
        9,
        10,
        11,
        12,
        13,
        14,
        15,
        16,
        17,
        18,
        19,
        255,
        255,
        255,
    ]
    np.testing.assert_array_equal(raw_to_train(raw), expect)
    # Instance ids in the upper 16 bits are dropped.
    assert raw_to_train(np.array([(7 << 16) | 10], np.uint32))[0] == 1
    train = np.arange(20, dtype=np.uint8)
    np.testing.assert_array_equal(raw_to_train(train_to_raw(train)), train)
    assert all(LEARNING_MAP[LEARNING_MAP_INV[t]] == t for t in range(20))
    with pytest.raises(ValueError):
        train_to_raw(np.array([20]))
    w = class_weights()
    assert w.shape == (20,) and (w > 0).all() and w[0] == w.min() and w[3] == w.max()


def _reference_downsample(labels, f):
    """Line-by-line the loop of MonoScene's `_downsample_label` (the official rule)."""
    x, y, z = (s // f for s in labels.shape)
    out = np.zeros((x, y, z), np.uint8)
    for i in range(x):
        for j in range(y):
            for k in range(z):
                b = labels[i * f : (i + 1) * f, j * f : (j + 1) * f, k * f : (k + 1) * f].flatten()
                c0, c255 = np.sum(b == 0), np.sum(b == 255)
                if c0 + c255 > 0.95 * f**3:
                    out[i, j, k] = 0 if c0 > c255 else 255
                else:
                    s = b[(b > 0) & (b < 255)]
                    out[i, j, k] = np.argmax(np.bincount(s))
    return out


def test_downsample_matches_reference_loop(rng):
    for f in (2, 4):
        labels = rng.choice([0, 0, 0, 255, 1, 5, 9, 13, 19], size=(16, 16, 8)).astype(np.uint8)
        labels[:8, :8] = 0
        labels[8:12, :4, :4] = 255
        labels[:4, 8:12, :4] = 0
        labels[0, 8, 0] = 255  # 1 ignore vs f^3-1 empty
        np.testing.assert_array_equal(F.downsample_labels(labels, f), _reference_downsample(labels, f))


def test_downsample_hand_cases():
    block = np.zeros((2, 2, 2), np.uint8)
    assert F.downsample_labels(block, 2)[0, 0, 0] == 0
    block[0, 0, 0] = 7  # 7/8 = 87.5% empty: not > 95%, so the semantic label wins
    assert F.downsample_labels(block, 2)[0, 0, 0] == 7
    block[:] = 255
    block[0, 0, 0] = 0
    assert F.downsample_labels(block, 2)[0, 0, 0] == 255
    block[:] = 3
    block[0, 0, :] = 5
    block[0, 1, :] = 5
    assert F.downsample_labels(block, 2)[0, 0, 0] == 3  # tie 4:4 -> smallest id
