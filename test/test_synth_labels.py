"""The synthetic world's ground truth has SemanticKITTI's meaning, and its streets vary."""

from __future__ import annotations

import numpy as np
import pytest

from monoocc_ros.data import synth_world as W
from monoocc_ros.data.synth import SequenceRenderer
from monoocc_ros.data.synth_labels import _carve, box_shells
from monoocc_ros.geometry import SEMANTIC_KITTI_GRID, GridSpec


def _crossed_voxels(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Voxels (in voxel units) a segment p -> q passes through, exactly: one per interval
    between consecutive crossings of voxel planes, found at the interval's midpoint."""
    d = q - p
    ts = [0.0, 1.0]
    for k in range(3):
        if d[k] != 0:
            planes = np.arange(np.ceil(min(p[k], q[k])), np.floor(max(p[k], q[k])) + 1)
            ts += list((planes - p[k]) / d[k])
    ts = np.unique(np.clip(ts, 0, 1))
    mids = (ts[:-1] + ts[1:]) / 2
    return np.floor(p + mids[:, None] * d).astype(int)


def test_carve_marks_exactly_the_voxels_a_segment_crosses():
    """The DDA walk against exact plane crossings for 300 random segments (end voxel excluded)."""
    rng = np.random.default_rng(0)
    free = np.zeros((20, 20, 8), np.uint8)
    origin = np.array([-1.0, -2.0, -0.5])
    for _ in range(300):
        free[:] = 0
        sensor = rng.uniform([-1, -2, -0.5], [3, 2, 1.1])
        end = rng.uniform([-1.5, -2.5, -0.8], [3.5, 2.5, 1.4], (1, 3))
        _carve(free, origin, 0.2, sensor, end)
        idx = _crossed_voxels((sensor - origin) / 0.2, (end[0] - origin) / 0.2)
        last = np.floor((end[0] - origin) / 0.2).astype(int)
        keep = np.all((idx >= 0) & (idx < free.shape), axis=1) & ~np.all(idx == last, axis=1)
        expected = np.zeros_like(free)
        expected[tuple(idx[keep].T)] = 1
        assert (free == expected).all()
        assert expected.sum() > 0 or np.all(np.floor((sensor - origin) / 0.2) == last)


def test_box_shell_is_the_voxels_its_surface_passes_through():
    grid = GridSpec((0.0, 0.0, 0.0), 0.2, (20, 20, 20))
    lo, hi = np.array([1.03, 0.97, 0.51]), np.array([2.91, 2.47, 3.07])
    labels, inside = box_shells(grid, ((lo + hi) / 2)[None], (hi - lo)[None], np.zeros(1), np.array([7]))
    c = grid.voxel_centers()
    overlaps = np.all((c + 0.1 > lo) & (c - 0.1 < hi), axis=-1)
    within = np.all((c - 0.1 > lo) & (c + 0.1 < hi), axis=-1)
    np.testing.assert_array_equal(labels == 7, overlaps & ~within)
    np.testing.assert_array_equal(inside, within)
    # Rotated by 90 degrees, a box with swapped length and width covers the same voxels.
    rot, _ = box_shells(grid, ((lo + hi) / 2)[None], (hi - lo)[None][:, [1, 0, 2]], np.array([np.pi / 2]), [7])
    np.testing.assert_array_equal(rot, labels)


def _tiny_world(poses_x: np.ndarray) -> W.World:
    """A road, one building left of the road at x 15-25 m, y 5-15 m, and an ego driving along y = 0."""
    b = W._WorldBuilder(np.random.default_rng(0))
    g = W.GROUND_Z
    b.add((0, 0, g - 0.25), (400, 400, 0.5), 0.0, W.ROAD)
    b.add((20, 10, g - 0.6 + 4.3), (10, 10, 8.6), 0.0, W.BUILDING)
    poses = np.tile(np.eye(4), (len(poses_x), 1, 1))
    poses[:, 0, 3] = poses_x
    times = (np.arange(len(poses_x)) - 12) * W.FRAME_PERIOD
    return W.World(b.build(), W.Trajectory(poses, times, 1, 12), [])


def test_labels_come_from_accumulated_returns_and_unseen_space_is_invalid():
    world = _tiny_world(np.arange(-12, 60) * 0.8)  # frame 0 (index 12) at x = 0
    out = SequenceRenderer(world, seed=0).render(0)
    labels, invalid = out["labels"], out["invalid"]
    g = SEMANTIC_KITTI_GRID

    def at(x: float, y: float, z: float) -> tuple[int, int, int]:
        idx, ok = g.points_to_indices(np.array([[x, y, z]]))
        assert ok[0]
        return tuple(idx[0])

    assert invalid[at(20, 10, 0.0)] and labels[at(20, 10, 0.0)] == 0  # inside the building
    assert invalid[at(20, 17, -1.0)]  # behind it: no ray of the drive reaches there
    wall = np.array([[x, 5.05, z] for x in np.arange(15.5, 25, 0.4) for z in (-1.2, -0.6, 0.0)])
    face = labels[tuple(g.points_to_indices(wall)[0].T)]
    assert (face == W.BUILDING).mean() > 0.9  # the street-facing wall, hit by the drive's scans
    assert labels[at(10, 0, -1.0)] == 0 and not invalid[at(10, 0, -1.0)]  # air over the road: empty, observed
    # Air at the volume's side, crossed only by rays whose returns lie beyond the volume: observed.
    assert labels[at(30, -25, -1.0)] == 0 and not invalid[at(30, -25, -1.0)]
    assert labels[at(10, -2, -1.7)] == W.ROAD and not invalid[at(10, -2, -1.7)]
    assert not (invalid & (labels > 0)).any()
    assert not invalid[:, :, 1][labels[:, :, 1] == W.ROAD].any()


@pytest.mark.parametrize("seed", range(5))
def test_every_class_is_placed_near_every_drive(seed):
    world = W.make_world(np.random.default_rng([seed, 8]), 40)
    traj = world.trajectory
    drive = traj.poses[traj.first : traj.first + traj.written, :2, 3]
    near = np.min(np.linalg.norm(world.boxes.center[:, None, :2] - drive[None], axis=2), axis=1) < 40
    assert set(range(1, 20)) <= set(world.boxes.label[near].tolist())


def test_streets_vary_between_worlds():
    """Curves, intersections, lanes and the ego's place in them differ from world to world."""
    worlds = [W.make_world(np.random.default_rng([s, 0]), 50) for s in range(10)]
    curvatures = [
        max(abs(w.streets[0].curvature(s)) for s in np.arange(0, 60, 2.0)) for w in worlds
    ]  # within the drive and its look-ahead
    assert sum(k > 1 / 160 for k in curvatures) >= 3  # curved streets
    assert sum(k < 1e-6 for k in curvatures) >= 1  # and straight ones
    assert sum(len(w.streets) > 1 for w in worlds) >= 3  # intersections
    # The road edge relative to the ego (frame 0) moves: lanes, widths and lateral offsets vary.
    edges = []
    for w in worlds:
        road = (w.boxes.label == W.ROAD) & (np.abs(w.boxes.center[:, 0]) < 2) & (w.boxes.size[:, 1] > 2.5)
        edges.append(np.min(w.boxes.center[road, 1] - w.boxes.size[road, 1] / 2))
    assert np.std(edges) > 0.5, edges
    headings = [np.arctan2(w.trajectory.poses[-1, 1, 0], w.trajectory.poses[-1, 0, 0]) for w in worlds]
    assert np.ptp(headings) > np.deg2rad(20)  # the drive turns by different amounts
