"""Stamp pairing of Image and CameraInfo (pure Python)."""

import pytest

from monoocc_ros.ros.sync import StampPairer


def test_exact_pairing_in_either_order():
    p = StampPairer(slop=0.0)
    assert p.add_image(100, "img1") is None
    assert p.add_camera_info(100, "info1") == ("img1", "info1", 100)
    assert p.add_camera_info(200, "info2") is None
    assert p.add_image(200, "img2") == ("img2", "info2", 200)
    assert p.add_image(201, "img3") is None  # 1 ns off: no pair without slop
    assert p.stats.paired == 2


def test_approximate_pairing_takes_the_nearest_within_slop():
    p = StampPairer(slop=0.01)
    p.add_camera_info(1_000_000_000, "a")
    p.add_camera_info(1_004_000_000, "b")
    assert p.add_image(1_005_000_000, "img") == ("img", "b", 1_005_000_000)
    assert p.add_image(1_030_000_000, "late") is None  # 26 ms from the nearest info


def test_zero_stamps_never_pair_and_old_images_are_dropped():
    p = StampPairer(slop=1.0, queue_size=3)
    assert p.add_image(0, "x") is None and p.add_camera_info(0, "y") is None
    assert p.stats.zero_stamp == 2
    for t in range(1, 6):
        p.add_image(t * 10**9 * 10, f"img{t}")
    assert p.stats.unmatched_images == 2  # queue holds 3
    assert p.add_camera_info(40 * 10**9, "info") == ("img4", "info", 40 * 10**9)
    assert p.stats.unmatched_images == 3  # img3 was older than the match


def test_negative_slop_rejected():
    with pytest.raises(ValueError, match="slop"):
        StampPairer(slop=-1)
