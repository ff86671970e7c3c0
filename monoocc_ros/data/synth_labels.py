"""Voxel ground truth of the synthetic world, made the way SemanticKITTI's is: from LiDAR scans.

SemanticKITTI's voxel labels are the labelled LiDAR scans of the whole drive (before and after
the frame) accumulated in the frame's volume and voxelised with the majority label; voxels no
ray ever reached are `.invalid` (building interiors, space behind walls, under cars). Here:

- every pose of the drive (the written frames plus poses before and after them) casts a
  simulated 64-beam scan into the world's **static** boxes; returns 2.5-70 m from the sensor
  (the official voxelizer's range) are kept with their class;
- the free space of every kept ray (sensor to just before its return) is marked once per
  sequence in a world-aligned grid by a 3-D DDA walk (Amanatides & Woo) compiled with numba:
  no installable library walks rays through a voxel grid, so it is written here;
- per frame, the returns are voxelised in the frame's own grid (majority class per voxel), and
  a voxel with no return is empty if some ray passed through it (looked up in the world grid at
  its centre), otherwise invalid;
- moving objects are not accumulated (they would leave the tube-shaped traces SemanticKITTI's
  labels have); each is drawn at the frame's time as the shell of its box (the voxels its
  surface passes through), its inside invalid.

`.bin` is the current scan's occupancy and `.occluded` the voxels hidden from it (behind the
return of the beam nearest to their direction), as in SemanticKITTI.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np
from numba import njit, prange

from monoocc_ros.classes import NUM_CLASSES
from monoocc_ros.geometry import GridSpec

# numba's OpenMP/TBB layers keep their threads spinning after a parallel loop, which starves
# the numpy/BLAS and Embree work that follows on a 2-core machine (a 7 ms matmul took 170 ms);
# the workqueue layer's threads sleep.
# numba.core.config defines its options at run time (through globals()), so its stubs lack them.
numba.config.THREADING_LAYER = "workqueue"  # type: ignore[attr-defined]

MIN_RANGE, MAX_RANGE = 2.5, 70.0  # the official voxelizer's point range (metres from the sensor)
BEAMS = (-24.8, 2.0, 64)  # HDL-64-like: lowest and highest beam elevation (degrees), beam count
ACCUMULATION_AZIMUTHS = 1024  # half the written scan's: ~200 poses per sequence fill in the rest


def _directions(elevations: np.ndarray, azimuths: int) -> np.ndarray:
    """Unit directions (rows*azimuths, 3), elevation-major, azimuths from -pi."""
    el, az = np.meshgrid(elevations, np.linspace(-np.pi, np.pi, azimuths, endpoint=False), indexing="ij")
    return np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], -1).reshape(-1, 3)


def lidar_directions(azimuths: int = 2048) -> np.ndarray:
    """Unit directions (beams*azimuths, 3) of the simulated scanner (`BEAMS`)."""
    low, high, beams = BEAMS
    return _directions(np.deg2rad(np.linspace(low, high, beams)), azimuths)


def sight_directions(top: float = 40.0, azimuths: int = 1024) -> np.ndarray:
    """Unit directions above the scanner's beams (+2 degrees) up to `top` degrees, rows spaced so
    that where a row leaves the grid's top (4.4 m above the sensor) neighbouring rows are about a
    voxel apart (spacing proportional to tan(elevation))."""
    rows = [np.deg2rad(BEAMS[1] + 0.4)]
    while rows[-1] < np.deg2rad(top):
        rows.append(rows[-1] + 0.045 * np.tan(rows[-1]))
    return _directions(np.array(rows), azimuths)


@njit(parallel=True, cache=True)
def _carve(free, origin, resolution, sensor, ends):  # pragma: no cover - compiled
    """Marks every voxel the segment sensor -> ends[i] passes through before its end voxel."""
    nx, ny, nz = free.shape
    p = (sensor - origin) / resolution
    for i in prange(ends.shape[0]):
        q = (ends[i] - origin) / resolution
        d = q - p
        length = np.sqrt((d * d).sum())
        if length == 0:
            continue
        vx, vy, vz = int(np.floor(p[0])), int(np.floor(p[1])), int(np.floor(p[2]))
        ex, ey, ez = int(np.floor(q[0])), int(np.floor(q[1])), int(np.floor(q[2]))
        sx = 1 if d[0] > 0 else -1
        sy = 1 if d[1] > 0 else -1
        sz = 1 if d[2] > 0 else -1
        inf = 1e30
        tdx = abs(1.0 / d[0]) if d[0] != 0 else inf
        tdy = abs(1.0 / d[1]) if d[1] != 0 else inf
        tdz = abs(1.0 / d[2]) if d[2] != 0 else inf
        tmx = ((vx + (sx > 0)) - p[0]) / d[0] if d[0] != 0 else inf
        tmy = ((vy + (sy > 0)) - p[1]) / d[1] if d[1] != 0 else inf
        tmz = ((vz + (sz > 0)) - p[2]) / d[2] if d[2] != 0 else inf
        for _ in range(4096):
            if vx == ex and vy == ey and vz == ez:
                break
            if 0 <= vx < nx and 0 <= vy < ny and 0 <= vz < nz:
                free[vx, vy, vz] = 1
            if tmx < tmy and tmx < tmz:
                if tmx > 1.0:
                    break
                vx += sx
                tmx += tdx
            elif tmy < tmz:
                if tmy > 1.0:
                    break
                vy += sy
                tmy += tdy
            else:
                if tmz > 1.0:
                    break
                vz += sz
                tmz += tdz


@njit(cache=True)
def _vote(points, labels, rot, trans, origin, resolution, shape, votes, touched):  # pragma: no cover
    """Adds each point (world) transformed by (rot, trans) into the grid to votes[voxel, class];
    returns how many distinct voxels were touched (their flat indices in `touched`)."""
    nx, ny, nz = shape
    count = 0
    for i in range(points.shape[0]):
        x = rot[0, 0] * points[i, 0] + rot[0, 1] * points[i, 1] + rot[0, 2] * points[i, 2] + trans[0]
        y = rot[1, 0] * points[i, 0] + rot[1, 1] * points[i, 1] + rot[1, 2] * points[i, 2] + trans[1]
        z = rot[2, 0] * points[i, 0] + rot[2, 1] * points[i, 1] + rot[2, 2] * points[i, 2] + trans[2]
        ix = int(np.floor((x - origin[0]) / resolution))
        iy = int(np.floor((y - origin[1]) / resolution))
        iz = int(np.floor((z - origin[2]) / resolution))
        if 0 <= ix < nx and 0 <= iy < ny and 0 <= iz < nz:
            flat = (ix * ny + iy) * nz + iz
            row = votes[flat]
            if row.sum() == 0:
                touched[count] = flat
                count += 1
            if row[labels[i]] < 65535:
                row[labels[i]] += 1
    return count


@njit(cache=True)
def _majority(votes, touched, count, out):  # pragma: no cover - compiled
    """out[v] = the most voted class of each touched voxel (ties: lowest id); resets the votes."""
    for k in range(count):
        flat = touched[k]
        out[flat] = np.argmax(votes[flat])
        votes[flat, :] = 0


@njit(parallel=True, cache=True)
def _lookup(table, t_origin, resolution, centers, rot, trans, out):  # pragma: no cover - compiled
    """out[i] = table value at the world position of frame point centers[i] (0 outside)."""
    nx, ny, nz = table.shape
    for i in prange(centers.shape[0]):
        c = centers[i]
        x = rot[0, 0] * c[0] + rot[0, 1] * c[1] + rot[0, 2] * c[2] + trans[0]
        y = rot[1, 0] * c[0] + rot[1, 1] * c[1] + rot[1, 2] * c[2] + trans[1]
        z = rot[2, 0] * c[0] + rot[2, 1] * c[1] + rot[2, 2] * c[2] + trans[2]
        ix = int(np.floor((x - t_origin[0]) / resolution))
        iy = int(np.floor((y - t_origin[1]) / resolution))
        iz = int(np.floor((z - t_origin[2]) / resolution))
        if 0 <= ix < nx and 0 <= iy < ny and 0 <= iz < nz:
            out[i] = table[ix, iy, iz]
        else:
            out[i] = 0


@dataclass
class Accumulation:
    """A sequence's accumulated returns (world points + classes, bucketed by world x/y tiles
    so a frame reads only those near it) and its world grid of carved free space."""

    points: np.ndarray  # (M, 3) float32, world frame
    labels: np.ndarray  # (M,) uint8 train ids
    tile_start: dict[tuple[int, int], tuple[int, int]]
    free: np.ndarray  # (NX, NY, NZ) uint8, world-aligned
    free_origin: np.ndarray  # (3,) float64
    resolution: float

    TILE = 12.8  # metres


def world_region(poses: np.ndarray, grid: GridSpec, margin: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """x/y bounds (min (2,), max (2,)) of all frames' grid volumes in the world frame."""
    lo, hi = np.asarray(grid.origin), np.asarray(grid.upper)
    corners = np.array([[x, y, 0.0, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])])
    world = np.einsum("nij,kj->nki", poses, corners)[..., :2].reshape(-1, 2)
    return world.min(0) - margin, world.max(0) + margin


def accumulate(
    scans: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    frame_poses: np.ndarray,
    grid: GridSpec,
    sight: Sequence[tuple[np.ndarray, np.ndarray]] = (),
) -> Accumulation:
    """`scans`: per accumulation pose (origin (3,), returns (K, 3) world, classes (K,)); `sight`:
    more free segments (origin (3,), ends (K, 3)) that carry no class. The free-space grid covers
    the volumes of `frame_poses` (the written frames)."""
    lo, hi = world_region(frame_poses, grid)
    res = grid.resolution
    # x/y snapped to the resolution; z as the frame grid's (the ground is flat and the poses
    # level, so z layers line up exactly with every frame's).
    lo = np.floor(lo / res) * res
    origin = np.array([lo[0], lo[1], grid.origin[2]])
    shape = (int(np.ceil((hi[0] - lo[0]) / res)), int(np.ceil((hi[1] - lo[1]) / res)), grid.shape[2])
    free = np.zeros(shape, np.uint8)
    points, labels = [], []
    for sensor, pts, cls in scans:
        # Every ray carves (one crossing the region to a return beyond it too); only returns
        # near the region are kept as labels.
        _carve(free, origin, res, np.asarray(sensor, np.float64), pts.astype(np.float64))
        near = (pts[:, 0] > lo[0] - 1) & (pts[:, 0] < hi[0] + 1) & (pts[:, 1] > lo[1] - 1) & (pts[:, 1] < hi[1] + 1)
        points.append(pts[near].astype(np.float32))
        labels.append(cls[near].astype(np.uint8))
    for sensor, ends in sight:
        _carve(free, origin, res, np.asarray(sensor, np.float64), np.ascontiguousarray(ends, np.float64))
    pts = np.concatenate(points) if points else np.zeros((0, 3), np.float32)
    cls = np.concatenate(labels) if labels else np.zeros(0, np.uint8)
    # A world cell holding a return straddles a surface (a ray grazing its front part marked it
    # free); frame voxels are looked up at their centres, and one whose centre lies behind the
    # surface in such a cell must not read as observed empty: cells with returns are not free.
    idx = np.floor((pts - origin) / res).astype(np.int64)
    inside = np.all((idx >= 0) & (idx < np.asarray(shape)), axis=1)
    free[tuple(idx[inside].T)] = 0
    pts, cls, index = _dedupe_by_tile(pts, cls)
    return Accumulation(pts, cls, index, free, origin, res)


DEDUPE = 0.05  # m: returns of one class within one such cell count once (see _dedupe_by_tile)


@njit(cache=True)
def _dedupe_keys(pts, cls, tile, cell):  # pragma: no cover - compiled
    """int64 sort keys: tile x, tile y (11 bits each), cell x, y within the tile (8 bits each),
    cell z (8 bits, from 4 m below the sensor), class (15 bits). `accumulate` checks the ranges:
    tiles within +-13 km, z within -4..8.8 m of the sensor."""
    key = np.empty(pts.shape[0], np.int64)
    for i in range(pts.shape[0]):
        tx = np.floor(pts[i, 0] / tile)
        ty = np.floor(pts[i, 1] / tile)
        cx = min(int((pts[i, 0] - tx * tile) / cell), 255)
        cy = min(int((pts[i, 1] - ty * tile) / cell), 255)
        cz = min(max(int(np.floor((pts[i, 2] + 4.0) / cell)), 0), 255)
        key[i] = ((int(tx) + 1024) << 50) | ((int(ty) + 1024) << 39) | (cx << 31) | (cy << 23) | (cz << 15) | cls[i]
    return key


def _dedupe_by_tile(pts: np.ndarray, cls: np.ndarray):
    if len(pts) and (np.abs(pts[:, :2]).max() >= 1024 * Accumulation.TILE or not (-4 <= pts[:, 2]).all()
                     or not (pts[:, 2] < 8.8).all()):  # fmt: skip
        raise ValueError("returns outside the dedupe key's range (+-13 km, -4..8.8 m): see _dedupe_keys")
    return _dedupe_sorted(pts, cls)


def _dedupe_sorted(pts: np.ndarray, cls: np.ndarray):
    """Sorts returns by world tile (so a frame reads only the tiles near it) and keeps one return
    per (5 cm cell, class). Why: near each pose the scans put hundreds of returns in a voxel;
    counting each surface cell once makes the majority vote weigh surface area, not how often a
    pose happened to be near, and cuts the per-frame work ~5x. Kept points are real returns."""
    key = _dedupe_keys(pts, cls, Accumulation.TILE, DEDUPE)
    order = np.argsort(key, kind="stable")
    key = key[order]
    first = np.r_[True, key[1:] != key[:-1]] if len(key) else np.zeros(0, bool)
    keep = order[first]
    pts, cls, tile_key = pts[keep], cls[keep], key[first] >> 39
    tiles = np.stack([(tile_key >> 11) - 1024, (tile_key & 2047) - 1024], 1)  # as the keys were made
    starts = np.flatnonzero(np.r_[True, tile_key[1:] != tile_key[:-1]]) if len(keep) else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], len(keep)]
    index = {(int(tiles[a, 0]), int(tiles[a, 1])): (int(a), int(b)) for a, b in zip(starts, ends, strict=True)}
    return pts, cls, index


class FrameLabeler:
    """Per-frame voxel files from an `Accumulation` (see the module docstring)."""

    def __init__(self, acc: Accumulation, grid: GridSpec) -> None:
        self.acc, self.grid = acc, grid
        self.votes = np.zeros((grid.num_voxels, NUM_CLASSES), np.uint16)
        self.touched = np.zeros(grid.num_voxels, np.int64)
        self.centers = voxel_centres(grid)

    def _points_near(self, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = world_region(pose[None], self.grid)
        t = Accumulation.TILE
        spans = [
            self.acc.tile_start[k]
            for i in range(int(np.floor(lo[0] / t)), int(np.floor(hi[0] / t)) + 1)
            for j in range(int(np.floor(lo[1] / t)), int(np.floor(hi[1] / t)) + 1)
            if (k := (i, j)) in self.acc.tile_start
        ]
        if not spans:
            return np.zeros((0, 3), np.float32), np.zeros(0, np.uint8)
        return (
            np.concatenate([self.acc.points[a:b] for a, b in spans]),
            np.concatenate([self.acc.labels[a:b] for a, b in spans]),
        )

    def static_labels(self, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(labels (X*Y*Z,) uint8 majority class of the returns, observed (X*Y*Z,) bool)."""
        g = self.grid
        inv = np.linalg.inv(pose)
        pts, cls = self._points_near(pose)
        out = np.zeros(g.num_voxels, np.uint8)
        n = _vote(pts, cls, inv[:3, :3], inv[:3, 3], np.asarray(g.origin), g.resolution, g.shape, self.votes,
                  self.touched)  # fmt: skip
        _majority(self.votes, self.touched, n, out)
        free = np.zeros(g.num_voxels, np.uint8)
        _lookup(self.acc.free, self.acc.free_origin, self.acc.resolution, self.centers, pose[:3, :3], pose[:3, 3],
                free)  # fmt: skip
        return out, (free > 0) | (out > 0)


def box_shells(
    grid: GridSpec, centers: np.ndarray, sizes: np.ndarray, yaws: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Oriented boxes (in the grid's frame) drawn as their surface voxels: (labels (X,Y,Z) uint8,
    0 where no box; inside (X,Y,Z) bool, voxels wholly inside a box). A voxel is on the surface
    when its centre lies within half a voxel of the box's boundary."""
    out = np.zeros(grid.shape, np.uint8)
    inside = np.zeros(grid.shape, bool)
    o, r = np.asarray(grid.origin), grid.resolution
    for c, size, yaw, lab in zip(centers, sizes, yaws, labels, strict=True):
        half = np.asarray(size) / 2
        reach = np.abs(np.cos(yaw)) * half[0] + np.abs(np.sin(yaw)) * half[1]
        reach_y = np.abs(np.sin(yaw)) * half[0] + np.abs(np.cos(yaw)) * half[1]
        ext = np.array([reach, reach_y, half[2]]) + r
        i0 = np.maximum(np.floor((c - ext - o) / r), 0).astype(int)
        i1 = np.minimum(np.ceil((c + ext - o) / r), grid.shape).astype(int)
        if np.any(i1 <= i0):
            continue
        axes = [(np.arange(a, b) + 0.5) * r + o[k] - c[k] for k, (a, b) in enumerate(zip(i0, i1, strict=True))]
        x, y, z = np.meshgrid(*axes, indexing="ij")
        u = np.cos(yaw) * x + np.sin(yaw) * y
        v = -np.sin(yaw) * x + np.cos(yaw) * y
        m = np.maximum(np.maximum(np.abs(u) - half[0], np.abs(v) - half[1]), np.abs(z) - half[2])
        sl = tuple(slice(a, b) for a, b in zip(i0, i1, strict=True))
        shell = np.abs(m) <= r / 2
        out[sl][shell] = lab
        inside[sl] |= m < -r / 2
    return out, inside & (out == 0)


@functools.cache
def voxel_centres(grid: GridSpec) -> np.ndarray:
    """(X*Y*Z, 3) float64 voxel centres, computed once per grid (read-only)."""
    centres = grid.voxel_centers().reshape(-1, 3).astype(np.float64)
    centres.setflags(write=False)
    return centres


class ScanGeometry:
    """Where each voxel centre of a grid lies in a scanner's range image: beam row, azimuth
    column (-1 outside the beams) and range. The LiDAR sits at the grid frame's origin in every
    frame, so this is computed once and each frame's occlusion test is a gather."""

    def __init__(self, grid: GridSpec, azimuths: int = 2048) -> None:
        low, high, beams = BEAMS
        c = voxel_centres(grid)
        self.range = np.linalg.norm(c, axis=1)
        el = np.arcsin(c[:, 2] / self.range)
        step = np.deg2rad(high - low) / (beams - 1)
        row = np.rint((el - np.deg2rad(low)) / step).astype(np.int64)
        col = np.rint((np.arctan2(c[:, 1], c[:, 0]) + np.pi) / (2 * np.pi) * azimuths).astype(np.int64) % azimuths
        inside = (row >= 0) & (row < beams)
        self.flat = np.where(inside, row * azimuths + col, -1)
        self.grid = grid

    def occluded(self, ranges: np.ndarray) -> np.ndarray:
        """Voxels behind the return of the beam nearest to their direction; `ranges` (beams,
        azimuths) metres, 0 = no return."""
        hit = np.where(self.flat >= 0, ranges.reshape(-1)[np.maximum(self.flat, 0)], 0.0)
        return ((hit > 0) & (self.range > hit + self.grid.resolution)).reshape(self.grid.shape)
