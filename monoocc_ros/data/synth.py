"""A procedural synthetic driving world written in exactly the SemanticKITTI layout.

`monoocc synth --out DIR --sequences N --frames M --seed S` writes, per sequence
`sequences/XX/`: `calib.txt` (KITTI seq 00's P0..P3 and Tr), `poses.txt`, `times.txt`, and per
frame `image_2/NNNNNN.png` (1241x376), `velodyne/NNNNNN.bin` + `labels/NNNNNN.label` (a
simulated 64-beam scan), and `voxels/NNNNNN.{label,invalid,occluded,bin}`. Every loader and
metric of the package runs on it unchanged.

The world is a street of axis-aligned boxes, each with a class and an instance: road with
lane markings, parking strips, curbed sidewalks, other ground, terrain, buildings of varied
height, fences, trees (trunk and crown), bushes, poles with traffic signs, parked and moving
cars, trucks and vans, persons, parked bicycles and motorcycles, bicyclists and motorcyclists.
Boxes keep ground truth exact: a voxel's label is the class of the last box drawn over its
centre (ground first, objects last).

Per frame, in the LiDAR/grid frame of that frame:
  voxels/.label     raw ids of the full world around the car (occluded parts included)
  voxels/.bin       voxels the camera actually sees (surfaces hit by camera rays)
  voxels/.occluded  voxels in the camera's view behind the first visible surface
  voxels/.invalid   voxels inside solid objects (all six neighbours occupied): never
                    observable by any sensor, left out of evaluation as SemanticKITTI does
                    for unobserved space

Rendering uses open3d's RaycastingScene (Embree, CPU): colours come from per-class palettes
with per-instance variation, procedural texture, Lambertian shading and a sky gradient, so a
class is not a function of colour alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monoocc_ros.classes import train_to_raw
from monoocc_ros.data import formats as F
from monoocc_ros.geometry import (
    IMAGE_HEIGHT,
    IMAGE_WIDTH,
    KITTI_CALIB,
    SEMANTIC_KITTI_GRID,
    GridSpec,
    camera_pose_to_lidar,
    in_image,
    lidar_projection,
    project_points,
)

LIDAR_HEIGHT = 1.73  # metres above the road, as KITTI's Velodyne
GROUND_Z = -LIDAR_HEIGHT
FRAME_PERIOD = 0.1  # s (10 Hz)

# train ids used below (see monoocc_ros.classes.CLASS_NAMES)
CAR, BICYCLE, MOTORCYCLE, TRUCK, OTHER_VEHICLE, PERSON, BICYCLIST, MOTORCYCLIST = 1, 2, 3, 4, 5, 6, 7, 8
ROAD, PARKING, SIDEWALK, OTHER_GROUND, BUILDING, FENCE, VEGETATION, TRUNK, TERRAIN, POLE, SIGN = range(9, 20)

# Per-class base colours (RGB 0..1) to draw an instance colour from; several classes share
# similar greys/greens on purpose.
_PALETTES: dict[int, list[tuple[float, float, float]]] = {
    CAR: [(0.7, 0.1, 0.1), (0.1, 0.2, 0.6), (0.8, 0.8, 0.8), (0.15, 0.15, 0.15), (0.5, 0.5, 0.55), (0.2, 0.4, 0.3)],
    BICYCLE: [(0.1, 0.1, 0.1), (0.6, 0.1, 0.1), (0.2, 0.3, 0.6)],
    MOTORCYCLE: [(0.1, 0.1, 0.1), (0.7, 0.4, 0.0), (0.4, 0.4, 0.45)],
    TRUCK: [(0.9, 0.9, 0.9), (0.3, 0.35, 0.5), (0.6, 0.2, 0.1)],
    OTHER_VEHICLE: [(0.9, 0.8, 0.2), (0.85, 0.85, 0.85), (0.2, 0.5, 0.3)],
    PERSON: [(0.2, 0.2, 0.3), (0.5, 0.3, 0.2), (0.7, 0.1, 0.2), (0.3, 0.4, 0.2)],
    BICYCLIST: [(0.2, 0.2, 0.3), (0.8, 0.5, 0.1), (0.2, 0.4, 0.7)],
    MOTORCYCLIST: [(0.1, 0.1, 0.1), (0.5, 0.1, 0.1)],
    ROAD: [(0.27, 0.27, 0.28), (0.32, 0.31, 0.3)],
    PARKING: [(0.38, 0.37, 0.36), (0.3, 0.3, 0.32)],
    SIDEWALK: [(0.55, 0.53, 0.5), (0.6, 0.58, 0.56), (0.5, 0.45, 0.42)],
    OTHER_GROUND: [(0.45, 0.42, 0.36), (0.5, 0.5, 0.48)],
    BUILDING: [(0.75, 0.68, 0.55), (0.6, 0.3, 0.25), (0.55, 0.55, 0.58), (0.85, 0.82, 0.75), (0.45, 0.4, 0.35)],
    FENCE: [(0.5, 0.5, 0.5), (0.45, 0.3, 0.18), (0.25, 0.35, 0.25)],
    VEGETATION: [(0.15, 0.4, 0.12), (0.25, 0.45, 0.15), (0.1, 0.3, 0.1)],
    TRUNK: [(0.35, 0.22, 0.12), (0.3, 0.25, 0.2)],
    TERRAIN: [(0.45, 0.5, 0.25), (0.5, 0.45, 0.3), (0.35, 0.45, 0.2)],
    POLE: [(0.5, 0.5, 0.52), (0.3, 0.3, 0.3)],
    SIGN: [(0.8, 0.1, 0.1), (0.1, 0.3, 0.8), (0.9, 0.9, 0.9), (0.9, 0.7, 0.1)],
}
_SUN = np.array([0.4, 0.3, 0.85]) / np.linalg.norm([0.4, 0.3, 0.85])
_REFLECTANCE = {ROAD: 0.25, PARKING: 0.25, SIDEWALK: 0.3, SIGN: 0.9, CAR: 0.4}


@dataclass
class Boxes:
    """N axis-aligned boxes in the world frame: `lo`, `hi` (N, 3) corners at t = 0,
    `velocity` (N, 3) m/s, `label` train id, `instance` id, `color` (N, 3) RGB 0..1."""

    lo: np.ndarray
    hi: np.ndarray
    velocity: np.ndarray
    label: np.ndarray
    instance: np.ndarray
    color: np.ndarray

    def at(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        shift = self.velocity * t
        return self.lo + shift, self.hi + shift


class _WorldBuilder:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.rows: list[tuple] = []

    def add(self, lo, hi, label: int, velocity=(0.0, 0.0, 0.0), instance: int | None = None, color=None) -> int:
        inst = len(self.rows) + 1 if instance is None else instance
        if color is None:
            base = np.array(self.rng.choice(_PALETTES[label]))
            color = np.clip(base * self.rng.uniform(0.8, 1.2, 3), 0.02, 1.0)
        self.rows.append((lo, hi, velocity, label, inst, color))
        return inst

    def build(self) -> Boxes:
        lo, hi, vel, lab, inst, col = zip(*self.rows, strict=True)
        return Boxes(
            np.asarray(lo, np.float64),
            np.asarray(hi, np.float64),
            np.asarray(vel, np.float64),
            np.asarray(lab, np.int64),
            np.asarray(inst, np.int64),
            np.asarray(col, np.float64),
        )


def generate_world(rng: np.random.Generator, length: float) -> Boxes:
    """A straight street along +x from x = -40 to `length` + 80; the ego drives in the right
    lane at y = 0. y is left, z up, the road surface at z = -1.73 (LiDAR frame of frame 0)."""
    b = _WorldBuilder(rng)
    x0, x1 = -40.0, length + 80.0
    g, base = GROUND_Z, GROUND_Z - 0.6
    # Ground layers are thin slabs so the ground occupies the one voxel layer its surface
    # passes through (as in SemanticKITTI), not the solid earth below it.
    slab = g - 0.05
    lane = rng.uniform(3.2, 3.8)
    road_r, road_l = -lane / 2, 1.5 * lane  # two lanes, ego in the right one
    curb = 0.15

    # Ground layers. Parking strips alternate with plain road along the right edge.
    b.add((x0, road_r, slab), (x1, road_l, g), ROAD)
    park_w = rng.uniform(2.2, 2.8)
    x = x0
    while x < x1:
        seg = rng.uniform(15, 45)
        kind = ROAD if rng.random() < 0.35 else PARKING
        b.add((x, road_r - park_w, slab), (x + seg, road_r, g), kind)
        x += seg
    for side in (-1, 1):
        edge = road_r - park_w if side < 0 else road_l
        walk_w = rng.uniform(2.5, 4.0)
        w_lo, w_hi = (edge - walk_w, edge) if side < 0 else (edge, edge + walk_w)
        b.add((x0, w_lo, slab), (x1, w_hi, g + curb), SIDEWALK)
        outer = w_lo if side < 0 else w_hi
        # Beyond the sidewalk: building blocks with gaps of terrain, other ground or vegetation.
        x = x0
        while x < x1:
            seg = rng.uniform(8, 30)
            setback = rng.uniform(0.5, 6.0)
            depth = rng.uniform(8, 20)
            near = outer - setback if side < 0 else outer + setback
            far = near - depth if side < 0 else near + depth
            strip_lo, strip_hi = sorted((outer, near))
            fill = rng.choice([TERRAIN, OTHER_GROUND, VEGETATION, TERRAIN])
            strip_top = g + (0.5 if fill == VEGETATION else 0.1)
            b.add((x, strip_lo, slab), (x + seg, strip_hi, strip_top), int(fill))
            blo, bhi = sorted((near, far))
            if rng.random() < 0.75:
                b.add((x + 0.5, blo, base), (x + seg - 0.5, bhi, g + rng.uniform(4, 16)), BUILDING)
                b.add((x, blo, slab), (x + 0.5, bhi, g + 0.1), OTHER_GROUND)
                b.add((x + seg - 0.5, blo, slab), (x + seg, bhi, g + 0.1), OTHER_GROUND)
            else:
                b.add((x, blo, slab), (x + seg, bhi, g + 0.1), int(rng.choice([TERRAIN, OTHER_GROUND])))
                if rng.random() < 0.6:  # a hedge or a few trees in the open lot
                    b.add((x + 1, blo + 1, g), (x + seg - 1, bhi - 1, g + rng.uniform(0.8, 2.5)), VEGETATION)
            if rng.random() < 0.4 and setback > 1.5:  # a fence along the plot boundary
                fy = near + (0.3 if side < 0 else -0.3)
                b.add((x, fy - 0.05, g), (x + seg, fy + 0.05, g + rng.uniform(1.0, 2.0)), FENCE)
            x += seg
        # Street furniture on the sidewalk's outer half.
        furn = (w_lo + 0.6) if side < 0 else (w_hi - 0.6)
        x = x0 + rng.uniform(0, 10)
        while x < x1:
            r = rng.random()
            if r < 0.45:  # tree
                t = rng.uniform(0.25, 0.45)
                h = rng.uniform(2.2, 3.5)
                b.add((x - t / 2, furn - t / 2, g), (x + t / 2, furn + t / 2, g + h + 0.3), TRUNK)
                c = rng.uniform(2.0, 4.0)
                b.add(
                    (x - c / 2, furn - c / 2, g + h), (x + c / 2, furn + c / 2, g + h + rng.uniform(2, 4)), VEGETATION
                )
            elif r < 0.75:  # pole, often with a sign
                b.add((x - 0.08, furn - 0.08, g), (x + 0.08, furn + 0.08, g + rng.uniform(3.0, 5.0)), POLE)
                if rng.random() < 0.7:
                    sy = furn + (0.25 if side < 0 else -0.25)
                    sh = rng.uniform(2.0, 2.8)
                    b.add((x - 0.05, sy - 0.35, g + sh), (x + 0.05, sy + 0.35, g + sh + 0.7), SIGN)
            elif r < 0.85:  # parked bicycle or motorcycle at the curb side
                cls, ln, wd, ht = (BICYCLE, 1.7, 0.5, 1.05) if rng.random() < 0.6 else (MOTORCYCLE, 2.0, 0.75, 1.2)
                cy = (edge - 0.5) if side < 0 else (edge + 0.5)
                b.add((x, cy - wd / 2, g + curb), (x + ln, cy + wd / 2, g + curb + ht), cls)
            else:  # bush
                s = rng.uniform(1.0, 2.0)
                b.add((x, furn - s / 2, g + curb), (x + s, furn + s / 2, g + curb + rng.uniform(0.6, 1.3)), VEGETATION)
            x += rng.uniform(6, 18)
        # Pedestrians, some walking along the sidewalk.
        for _ in range(int(length / 12) + 4):
            px = rng.uniform(x0, x1)
            py = rng.uniform(w_lo + 0.4, w_hi - 0.4)
            v = rng.choice([0.0, rng.uniform(-1.5, 1.5)])
            b.add(
                (px, py - 0.25, g + curb), (px + 0.5, py + 0.25, g + curb + rng.uniform(1.55, 1.9)), PERSON, (v, 0, 0)
            )

    # Parked vehicles on the right edge (cars mostly, some trucks / vans).
    x = x0
    while x < x1:
        r = rng.random()
        cls, ln, wd, ht = (
            (CAR, rng.uniform(3.8, 4.8), rng.uniform(1.7, 1.9), rng.uniform(1.4, 1.6))
            if r < 0.8
            else (TRUCK, rng.uniform(6, 9), 2.4, rng.uniform(2.8, 3.4))
            if r < 0.9
            else (OTHER_VEHICLE, rng.uniform(5, 6.5), 2.0, rng.uniform(2.2, 2.6))
        )
        cy = road_r - park_w / 2
        b.add((x, cy - wd / 2, g), (x + ln, cy + wd / 2, g + ht), cls)
        x += ln + rng.uniform(0.8, 12.0)
    # Traffic: oncoming in the left lane, same direction ahead in the right lane, and riders.
    for _ in range(int(length / 25) + 3):
        r = rng.random()
        cls, ln, wd, ht = (
            (CAR, 4.4, 1.8, 1.5)
            if r < 0.75
            else (OTHER_VEHICLE, 11.0, 2.5, 3.0)
            if r < 0.88
            else (TRUCK, 8.0, 2.4, 3.2)
        )
        px = rng.uniform(x0, x1 + 60)
        cy = lane + rng.uniform(-0.3, 0.3)
        b.add((px, cy - wd / 2, g), (px + ln, cy + wd / 2, g + ht), cls, (-rng.uniform(6, 12), 0, 0))
    for _ in range(int(length / 60) + 2):  # faster than the ego (<= 10 m/s): they pull away
        px = rng.uniform(12, x1)
        b.add((px, -0.9, g), (px + 4.4, 0.9, g + 1.5), CAR, (rng.uniform(11, 14), 0, 0))
    for _ in range(int(length / 40) + 2):
        px = rng.uniform(x0, x1)
        cy = road_r + 0.55  # along the right edge of the road
        cls, ln, ht = (BICYCLIST, 1.7, 1.1) if rng.random() < 0.7 else (MOTORCYCLIST, 2.0, 1.2)
        v = rng.uniform(3, 6) if cls == BICYCLIST else rng.uniform(6, 9)
        inst = b.add((px, cy - 0.3, g), (px + ln, cy + 0.3, g + ht), cls, (v, 0, 0))
        b.add((px + 0.5, cy - 0.25, g + ht), (px + 1.1, cy + 0.25, g + ht + 0.75), cls, (v, 0, 0), instance=inst)
    return b.build()


def _box_triangles(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (8N, 3) and triangles (12N, 3) of N boxes, outward-facing."""
    n = lo.shape[0]
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=np.float64)
    verts = lo[:, None, :] + corners[None] * (hi - lo)[:, None, :]
    faces = np.array(
        [
            [0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5],  # x = lo, x = hi
            [0, 4, 5], [0, 5, 1], [2, 3, 7], [2, 7, 6],  # y = lo, y = hi
            [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3],  # z = lo, z = hi
        ]
    )  # fmt: skip
    tris = faces[None] + 8 * np.arange(n)[:, None, None]
    return verts.reshape(-1, 3).astype(np.float32), tris.reshape(-1, 3).astype(np.uint32)


def _hash_noise(p: np.ndarray, scale: float, seed: int) -> np.ndarray:
    """Deterministic value noise in [0, 1) from integer cells of world points."""
    c = np.floor(p * scale).astype(np.int64)
    h = (c[:, 0] * 73856093) ^ (c[:, 1] * 19349663) ^ (c[:, 2] * 83492791) ^ (seed * 2654435761)
    return ((h * 0x9E3779B1) & 0xFFFF).astype(np.float64) / 65536.0


class SequenceRenderer:
    """Renders frames of one world: camera image, LiDAR scan, voxel ground truth."""

    def __init__(self, world: Boxes, ego_x: np.ndarray, seed: int, grid: GridSpec = SEMANTIC_KITTI_GRID) -> None:
        self.world, self.ego_x, self.seed, self.grid = world, ego_x, seed, grid
        self.tr = KITTI_CALIB["Tr"]
        self.projection = lidar_projection(KITTI_CALIB["P2"], self.tr)
        m, p4 = self.projection[:, :3], self.projection[:, 3]
        self.camera_center = -np.linalg.solve(m, p4)  # in the LiDAR frame
        u, v = np.meshgrid(np.arange(IMAGE_WIDTH), np.arange(IMAGE_HEIGHT))
        pix = np.stack([u, v, np.ones_like(u)], -1).reshape(-1, 3).astype(np.float64)
        d = pix @ np.linalg.inv(m).T
        self.camera_dirs = (d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32)
        # HDL-64-like: 64 beams from -24.8 to +2 degrees, 2048 azimuth steps.
        el = np.deg2rad(np.linspace(-24.8, 2.0, 64))
        az = np.linspace(-np.pi, np.pi, 2048, endpoint=False)
        el, az = np.meshgrid(el, az, indexing="ij")
        rows = np.repeat(np.linspace(0, 1, IMAGE_HEIGHT, dtype=np.float32), IMAGE_WIDTH)[:, None]
        self._sky = np.array([0.45, 0.62, 0.9], np.float32) * (1 - rows) + 0.85 * rows
        self.lidar_dirs = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], -1).reshape(-1, 3)
        # The camera is fixed to the grid (both ride on the car), so where each voxel centre
        # projects is the same every frame: computed once here for the occlusion test.
        uv, depth = project_points(grid.voxel_centers().reshape(-1, 3), self.projection)
        ok = (depth > 0) & in_image(uv, IMAGE_WIDTH, IMAGE_HEIGHT)
        self._vox_in_view = np.flatnonzero(ok)
        px = np.rint(uv[ok]).astype(np.int64)
        self._vox_pixel = px[:, 1] * IMAGE_WIDTH + px[:, 0]
        self._vox_depth = depth[ok].astype(np.float32)

    def _scene(self, t: float, ego: np.ndarray):
        import open3d as o3d

        lo, hi = self.world.at(t)
        lo, hi = lo - ego, hi - ego  # into this frame's LiDAR frame (no rotation: straight drive)
        near = (hi[:, 0] > -30) & (lo[:, 0] < 110) & (hi[:, 1] > -60) & (lo[:, 1] < 60)
        idx = np.flatnonzero(near)
        verts, tris = _box_triangles(lo[idx], hi[idx])
        scene = o3d.t.geometry.RaycastingScene()
        scene.add_triangles(o3d.core.Tensor(verts), o3d.core.Tensor(tris))
        return scene, idx, lo, hi

    @staticmethod
    def _cast(scene, origin: np.ndarray, dirs: np.ndarray):
        import open3d as o3d

        rays = np.concatenate([np.broadcast_to(origin, dirs.shape), dirs], 1).astype(np.float32)
        ans = scene.cast_rays(o3d.core.Tensor(rays), nthreads=0)
        return ans["t_hit"].numpy(), ans["primitive_ids"].numpy(), ans["primitive_normals"].numpy()

    def voxel_labels(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Train-id grid: every box drawn in order over the voxels it overlaps.

        Overlap, not centre-inside: a surface makes the voxel it passes through occupied, as
        voxelising a LiDAR scan does (the road top at z = -1.73 occupies the voxel
        [-1.8, -1.6]); boxes that only touch a voxel's face do not count."""
        g = self.grid
        out = np.zeros(g.shape, np.uint8)
        o, r = np.asarray(g.origin), g.resolution
        eps = 1e-6
        i0 = np.maximum(np.floor((lo - o) / r + eps), 0).astype(np.int64)
        i1 = np.minimum(np.ceil((hi - o) / r - eps), np.asarray(g.shape)).astype(np.int64)
        for k in np.flatnonzero(np.all(i1 > i0, axis=1)):
            a, b = i0[k], i1[k]
            out[a[0] : b[0], a[1] : b[1], a[2] : b[2]] = self.world.label[k]
        return out

    def render(self, frame: int) -> dict[str, np.ndarray]:
        t = frame * FRAME_PERIOD
        ego = np.array([self.ego_x[frame], 0.0, 0.0])
        scene, idx, lo, hi = self._scene(t, ego)
        world = self.world

        # Camera image.
        t_hit, prim, normal = self._cast(scene, self.camera_center, self.camera_dirs)
        hit = np.isfinite(t_hit)
        box = idx[prim[hit] // 12]
        pts = self.camera_center + self.camera_dirs[hit] * t_hit[hit, None]
        label = world.label[box]
        color = world.color[box].copy()
        wpts = pts + ego
        tex = 0.85 + 0.3 * _hash_noise(wpts, 4.0, self.seed + 1) * (0.6 + 0.4 * _hash_noise(wpts, 0.7, self.seed + 2))
        color *= tex[:, None]
        is_road = label == ROAD
        marking = is_road & (np.abs(pts[:, 1] - world_lane_center(world)) < 0.08) & ((wpts[:, 0] % 6) < 3)
        color[marking] = 0.9
        shade = 0.45 + 0.55 * np.clip(normal[hit] @ _SUN, 0, 1)
        fog = np.exp(-t_hit[hit] / 250.0)[:, None]
        rgb = self._sky.copy()
        rgb[hit] = (color * shade[:, None]) * fog + 0.8 * (1 - fog)
        noise = np.random.default_rng(self.seed * 100003 + frame).standard_normal(rgb.shape, dtype=np.float32)
        rgb = rgb * 255.0 + noise * 3.0
        image = np.clip(rgb, 0, 255).astype(np.uint8).reshape(IMAGE_HEIGHT, IMAGE_WIDTH, 3)
        label_image = np.full(IMAGE_HEIGHT * IMAGE_WIDTH, 255, np.uint8)
        label_image[hit] = label
        depth_image = np.zeros(IMAGE_HEIGHT * IMAGE_WIDTH, np.float32)
        depth_image[hit] = (pts - self.camera_center) @ self._optical_axis()

        # LiDAR scan (points within 80 m, as a Velodyne).
        l_hit, l_prim, _ = self._cast(scene, np.zeros(3), self.lidar_dirs)
        ok = np.isfinite(l_hit) & (l_hit < 80.0)
        scan_pts = self.lidar_dirs[ok] * l_hit[ok, None]
        scan_lab = world.label[idx[l_prim[ok] // 12]]
        refl = np.array([_REFLECTANCE.get(int(c), 0.15) for c in range(20)])[scan_lab]
        refl = np.clip(refl + 0.05 * _hash_noise(scan_pts + ego, 5.0, self.seed + 3), 0, 1)
        scan = np.concatenate([scan_pts, refl[:, None]], 1).astype(np.float32)

        # Voxel ground truth, and what the camera sees of it.
        labels = self.voxel_labels(lo, hi)
        seen = np.zeros(self.grid.num_voxels, bool)
        vi, inside = self.grid.points_to_indices(pts - 1e-4 * self.camera_dirs[hit])
        seen[np.ravel_multi_index(vi[inside].T, self.grid.shape)] = True
        occupied = labels > 0
        solid = occupied.copy()
        for axis in range(3):
            for shift in (1, -1):
                n = np.roll(occupied, shift, axis)
                edge = [slice(None)] * 3
                edge[axis] = 0 if shift == 1 else -1
                n[tuple(edge)] = False
                solid &= n
        occluded = self._occluded(depth_image.reshape(IMAGE_HEIGHT, IMAGE_WIDTH))
        return {
            "image": image,
            "label_image": label_image.reshape(IMAGE_HEIGHT, IMAGE_WIDTH),
            "scan": scan,
            "scan_labels": scan_lab.astype(np.uint8),
            "labels": labels,
            "bin": seen.reshape(self.grid.shape),
            "invalid": solid,
            "occluded": occluded & ~seen.reshape(self.grid.shape),
        }

    def _optical_axis(self) -> np.ndarray:
        a = self.projection[2, :3]
        return a / np.linalg.norm(a)

    def _occluded(self, depth_image: np.ndarray) -> np.ndarray:
        """Voxels inside the image whose centre lies behind the first visible surface."""
        surface = depth_image.reshape(-1)[self._vox_pixel]
        behind = (surface > 0) & (self._vox_depth > surface + self.grid.resolution)
        out = np.zeros(self.grid.num_voxels, bool)
        out[self._vox_in_view[behind]] = True
        return out.reshape(self.grid.shape)


def world_lane_center(world: Boxes) -> float:
    """y of the dashed line between the two lanes: the road box's lanes split at lane/2."""
    road = world.hi[0, 1] - world.lo[0, 1]  # the first box is the road: width = 2 lanes
    return world.lo[0, 1] + road / 2


def write_sequence(out: Path, sequence: int, frames: int, seed: int, progress=None) -> None:
    """Generate and write one sequence `out/sequences/XX`."""
    from PIL import Image

    rng = np.random.default_rng([seed, sequence])
    speed = rng.uniform(6.0, 10.0, frames).cumsum() * FRAME_PERIOD
    ego_x = np.r_[0.0, speed[:-1]]
    world = generate_world(rng, float(ego_x[-1]) + 60.0)
    renderer = SequenceRenderer(world, ego_x, seed * 1000 + sequence)
    seq = out / "sequences" / f"{sequence:02d}"
    for sub in ("image_2", "velodyne", "labels", "voxels"):
        (seq / sub).mkdir(parents=True, exist_ok=True)
    F.write_calib(seq / "calib.txt", KITTI_CALIB)
    tr = KITTI_CALIB["Tr"]
    lidar_poses = np.tile(np.eye(4), (frames, 1, 1))
    lidar_poses[:, 0, 3] = ego_x
    # poses.txt holds camera-0 poses: the inverse of camera_pose_to_lidar's inv(Tr) @ P @ Tr.
    cam_poses = tr @ lidar_poses @ np.linalg.inv(tr)
    F.write_poses(seq / "poses.txt", cam_poses)
    F.write_times(seq / "times.txt", np.arange(frames) * FRAME_PERIOD)
    assert np.allclose(camera_pose_to_lidar(cam_poses[-1], tr), lidar_poses[-1], atol=1e-9)
    for f in range(frames):
        r = renderer.render(f)
        name = f"{f:06d}"
        Image.fromarray(r["image"]).save(seq / "image_2" / f"{name}.png", compress_level=1)
        F.write_scan(seq / "velodyne" / f"{name}.bin", r["scan"])
        F.write_point_labels(seq / "labels" / f"{name}.label", train_to_raw(r["scan_labels"]))
        F.write_voxel_labels(seq / "voxels" / f"{name}.label", train_to_raw(r["labels"]))
        F.write_voxel_bits(seq / "voxels" / f"{name}.bin", r["bin"])
        F.write_voxel_bits(seq / "voxels" / f"{name}.invalid", r["invalid"])
        F.write_voxel_bits(seq / "voxels" / f"{name}.occluded", r["occluded"])
        if progress is not None:
            progress.update(1)


def synthesize(out: str | Path, sequences: int, frames: int, seed: int, first_sequence: int = 0) -> Path:
    """Write `sequences` sequences of `frames` frames under `out` (SemanticKITTI layout)."""
    from tqdm import tqdm

    if sequences < 1 or frames < 1:
        raise ValueError(f"need at least one sequence and one frame, got {sequences} x {frames}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tqdm(total=sequences * frames, desc="synth", unit="frame") as bar:
        for s in range(first_sequence, first_sequence + sequences):
            write_sequence(out, s, frames, seed, bar)
    return out
