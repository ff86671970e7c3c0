"""Depth metrics (monoocc_ros.depth_metrics) against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from monoocc_ros.depth_metrics import DepthMetrics


def test_hand_computed_frames_are_averaged_per_frame():
    m = DepthMetrics()
    # Frame 1: two evaluated pixels (10 m and 20 m); 0 has no return, 60 m is beyond max_depth.
    m.update(np.array([[12.0, 20.0], [5.0, 5.0]]), np.array([[10.0, 20.0], [0.0, 60.0]]), 50.0)
    # Frame 2: one pixel, 50 % too far: outside delta < 1.25.
    m.update(np.array([[6.0]]), np.array([[4.0]]), 50.0)
    s = m.scores()
    assert s is not None
    assert s.abs_rel == pytest.approx((0.1 + 0.5) / 2)  # frame 1: mean(2/10, 0) = 0.1
    assert s.rmse == pytest.approx((math.sqrt(2.0) + 2.0) / 2)  # frame 1: sqrt(mean(4, 0))
    assert s.delta1 == pytest.approx(50.0)  # 100 % then 0 %
    assert (s.frames, s.pixels, s.max_depth) == (2, 3, 50.0)


def test_a_perfect_depth_scores_zero_error():
    target = np.array([[3.0, 0.0, 7.5]])
    m = DepthMetrics()
    m.update(target.copy(), target, 80.0)
    s = m.scores()
    assert s is not None and (s.abs_rel, s.rmse, s.delta1, s.pixels) == (0.0, 0.0, 100.0, 2)
    assert "AbsRel 0.000" in s.table() and "2 LiDAR pixels <= 80 m in 1 frames" in s.table()


def test_frames_without_returns_are_skipped_and_none_is_no_score():
    m = DepthMetrics()
    m.update(np.ones((2, 2)), np.zeros((2, 2)), 50.0)
    assert m.scores() is None
    m.update(np.ones((1, 1)), np.full((1, 1), 2.0), 50.0)
    s = m.scores()
    assert s is not None and s.frames == 1 and s.abs_rel == pytest.approx(0.5)


def test_mismatched_shapes_and_ranges_are_errors():
    m = DepthMetrics()
    with pytest.raises(ValueError, match=r"depth prediction shape \(2, 2\) != LiDAR depth shape \(2, 3\)"):
        m.update(np.ones((2, 2)), np.ones((2, 3)), 50.0)
    m.update(np.ones((1, 1)), np.ones((1, 1)), 50.0)
    with pytest.raises(ValueError, match=r"max_depth 40\.0 differs from the earlier frames. 50\.0"):
        m.update(np.ones((1, 1)), np.ones((1, 1)), 40.0)
