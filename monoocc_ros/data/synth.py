"""A procedural synthetic driving world written in exactly the SemanticKITTI layout.

`monoocc synth --out DIR --sequences N --frames M --seed S` writes, per sequence
`sequences/XX/`: `calib.txt` (KITTI seq 00's P0..P3 and Tr), `poses.txt`, `times.txt`, and per
frame `image_2/NNNNNN.png` (1241x376), `velodyne/NNNNNN.bin` + `labels/NNNNNN.label` (a
simulated 64-beam scan), and `voxels/NNNNNN.{label,invalid,occluded,bin}`. Every loader and
metric of the package runs on it unchanged. `--preset benchmark` writes the named benchmark
(training and validation worlds from disjoint seeds, and `splits.yaml`).

Stages, one module each: `synth_world` lays out a street that varies (curves, intersections,
lanes, bands, blocks, traffic) and the ego's drive; this module renders the camera image and the
LiDAR scan with open3d's RaycastingScene (Embree, CPU); `synth_labels` accumulates the drive's
scans into SemanticKITTI-style voxel labels (`.label` from accumulated returns, `.invalid` where
no ray reached, `.bin` the current scan, `.occluded` hidden from it). Colours come from per-class
palettes with per-instance variation, procedural texture, Lambertian shading and a sky
gradient, so a class is not a function of colour alone.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from monoocc_ros.classes import train_to_raw
from monoocc_ros.data import formats as F
from monoocc_ros.data.synth_labels import (
    ACCUMULATION_AZIMUTHS,
    MAX_RANGE,
    MIN_RANGE,
    FrameLabeler,
    ScanGeometry,
    accumulate,
    box_shells,
    lidar_directions,
    sight_directions,
)
from monoocc_ros.data.synth_world import (
    CAR,
    FRAME_PERIOD,
    PARKING,
    ROAD,
    SIDEWALK,
    SIGN,
    VEGETATION,
    Boxes,
    World,
    make_world,
)
from monoocc_ros.geometry import (
    IMAGE_HEIGHT,
    IMAGE_WIDTH,
    KITTI_CALIB,
    SEMANTIC_KITTI_GRID,
    GridSpec,
    camera_pose_to_lidar,
    lidar_projection,
)

_SUN = np.array([0.4, 0.3, 0.85]) / np.linalg.norm([0.4, 0.3, 0.85])
_REFLECTANCE = {ROAD: 0.25, PARKING: 0.25, SIDEWALK: 0.3, SIGN: 0.9, CAR: 0.4}
SCAN_RANGE = 80.0  # m: the written scan keeps returns within this range, as a Velodyne


def _box_triangles(center: np.ndarray, size: np.ndarray, yaw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (8N, 3) and triangles (12N, 3) of N oriented boxes, outward-facing."""
    n = center.shape[0]
    corners = np.array([[i, j, k] for i in (-0.5, 0.5) for j in (-0.5, 0.5) for k in (-0.5, 0.5)])
    local = corners[None] * size[:, None, :]
    c, s = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
    verts = np.stack([c * local[..., 0] - s * local[..., 1], s * local[..., 0] + c * local[..., 1], local[..., 2]], -1)
    verts = verts + center[:, None, :]
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


def _scene(center: np.ndarray, size: np.ndarray, yaw: np.ndarray):
    import open3d as o3d

    verts, tris = _box_triangles(center, size, yaw)
    scene = o3d.t.geometry.RaycastingScene()
    # open3d's generated stubs omit the defaults of Tensor's dtype and device (here and in _cast)
    scene.add_triangles(o3d.core.Tensor(verts), o3d.core.Tensor(tris))  # type: ignore[call-overload]
    return scene


def _cast(scene, origin: np.ndarray, dirs: np.ndarray):
    import open3d as o3d

    rays = np.concatenate([np.broadcast_to(origin, dirs.shape), dirs], 1).astype(np.float32)
    ans = scene.cast_rays(o3d.core.Tensor(rays), nthreads=0)  # type: ignore[call-overload]
    return ans["t_hit"].numpy(), ans["primitive_ids"].numpy(), ans["primitive_normals"].numpy()


FOLIAGE_DEPTH = 0.6  # m: mean depth a LiDAR return reaches into vegetation (leaves are porous)


def foliage_returns(
    boxes: Boxes,
    box: np.ndarray,
    center: np.ndarray,
    yaw: np.ndarray,
    origin: np.ndarray,
    dirs: np.ndarray,
    t_hit: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Ranges with returns from vegetation moved into the foliage by an exponential depth, never
    past the box's far side. Why: real LiDAR beams enter crowns and hedges, so SemanticKITTI's
    vegetation is a volume of returns, not a shell; the camera still sees the outer surface."""
    veg = np.flatnonzero(boxes.label[box] == VEGETATION)
    if not len(veg):
        return t_hit
    k = box[veg]
    c, s = np.cos(yaw[k]), np.sin(yaw[k])
    rel = origin - center[k]
    d = dirs[veg]
    p = np.stack([c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1], rel[:, 2]], 1)
    q = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], 1)
    half = boxes.size[k] / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        far = np.where(q > 0, (half - p) / q, (-half - p) / q)
    exit_t = np.nanmin(np.where(np.isfinite(far), far, np.inf), axis=1)
    out = t_hit.copy()
    depth = rng.exponential(FOLIAGE_DEPTH, len(veg))
    out[veg] = np.minimum(t_hit[veg] + depth, np.maximum(exit_t - 0.02, t_hit[veg]))
    return out


_scan_geometry = functools.cache(ScanGeometry)  # one per grid for the process: the same for every sequence


class SequenceRenderer:
    """Renders frames of one world: camera image, LiDAR scan, voxel ground truth."""

    def __init__(self, world: World, seed: int, grid: GridSpec = SEMANTIC_KITTI_GRID) -> None:
        self.world, self.boxes, self.seed, self.grid = world, world.boxes, seed, grid
        self.traj = world.trajectory
        self.tr = KITTI_CALIB["Tr"]
        self.projection = lidar_projection(KITTI_CALIB["P2"], self.tr)
        m, p4 = self.projection[:, :3], self.projection[:, 3]
        self.camera_center = -np.linalg.solve(m, p4)  # in the LiDAR frame
        u, v = np.meshgrid(np.arange(IMAGE_WIDTH), np.arange(IMAGE_HEIGHT))
        pix = np.stack([u, v, np.ones_like(u)], -1).reshape(-1, 3).astype(np.float64)
        d = pix @ np.linalg.inv(m).T
        self.camera_dirs = (d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32)
        self.camera_center = self.camera_center.astype(np.float32)
        self.optical_axis = (self.projection[2, :3] / np.linalg.norm(self.projection[2, :3])).astype(np.float32)
        rows = np.repeat(np.linspace(0, 1, IMAGE_HEIGHT, dtype=np.float32), IMAGE_WIDTH)[:, None]
        self._sky = np.array([0.45, 0.62, 0.9], np.float32) * (1 - rows) + 0.85 * rows
        self.lidar_dirs = lidar_directions()
        self._accumulation_dirs = lidar_directions(azimuths=ACCUMULATION_AZIMUTHS)
        self._sight_dirs = sight_directions()
        self._scan_geometry = _scan_geometry(grid)
        static = np.flatnonzero(~self.boxes.moving)
        self._static = static
        self._static_scene = _scene(self.boxes.center[static], self.boxes.size[static], self.boxes.yaw[static])
        self._labeler: FrameLabeler | None = None

    def pose(self, frame: int) -> np.ndarray:
        """World-from-LiDAR pose (4, 4) of written frame `frame`."""
        return self.traj.poses[self.traj.first + frame]

    def accumulate(self, progress=None) -> None:
        """Casts every pose's scan into the static world and builds the label accumulation."""
        scans, sight = [], []
        b = self.boxes
        rng = np.random.default_rng([self.seed, 7])
        for i, pose in enumerate(self.traj.poses):
            origin = pose[:3, 3]
            dirs = self._accumulation_dirs @ np.ascontiguousarray(pose[:3, :3].T)
            t_hit, prim, _ = _cast(self._static_scene, origin, dirs)
            ok = np.flatnonzero(np.isfinite(t_hit))
            box = self._static[prim[ok] // 12]
            t_hit[ok] = foliage_returns(b, box, b.center, b.yaw, origin, dirs[ok], t_hit[ok], rng)
            keep = (t_hit[ok] >= MIN_RANGE) & (t_hit[ok] <= MAX_RANGE)
            scans.append((origin, origin + dirs[ok[keep]] * t_hit[ok[keep], None], b.label[box[keep]]))
            if i % 2 == 0:  # lines of sight: every other pose is dense enough for free space
                unused = np.ones(len(t_hit), bool)
                unused[ok[keep]] = False
                sight.append((origin, self._lines_of_sight(origin, pose[:3, :3], dirs[unused], t_hit[unused])))
        written = self.traj.poses[self.traj.first : self.traj.first + self.traj.written]
        self._labeler = FrameLabeler(accumulate(scans, written, self.grid, sight), self.grid)

    def _lines_of_sight(self, origin: np.ndarray, rot: np.ndarray, beams: np.ndarray, t_beam: np.ndarray):
        """Ends of the free segments seen from a pose beyond its kept returns: beams without a
        return or with one outside 2.5-70 m (`beams`, `t_beam`: inf for none), and upward
        directions above the beams, each up to the first surface or 80 m. Why: SemanticKITTI's
        `.invalid` marks what no scan position could see (line of sight through the accumulated
        scans), so air above the beams' reach is observed empty there, not invalid; surfaces
        reached only this way get no class."""
        up = self._sight_dirs @ np.ascontiguousarray(rot.T)
        t_up, _, _ = _cast(self._static_scene, origin, up)
        dirs = np.concatenate([beams, up])
        t = np.minimum(np.concatenate([t_beam, t_up]), SCAN_RANGE)
        return origin + dirs * t[:, None]

    def _frame_scene(self, t: float, pose: np.ndarray):
        center, yaw = self.boxes.at(t)
        near = np.linalg.norm(center[:, :2] - pose[:2, 3], axis=1) < 150 + np.abs(self.boxes.size[:, :2]).max(1)
        idx = np.flatnonzero(near)
        return _scene(center[idx], self.boxes.size[idx], yaw[idx]), idx, center, yaw

    def render(self, frame: int) -> dict[str, np.ndarray]:
        """One frame: camera image (+ its per-pixel class and depth), LiDAR scan and voxel files."""
        if self._labeler is None:
            self.accumulate()
        t = float(self.traj.times[self.traj.first + frame])
        pose = self.pose(frame)
        scene, idx, center, yaw = self._frame_scene(t, pose)
        out = self._camera(scene, idx, pose, frame)
        scan, scan_lab, ranges = self._scan(scene, idx, center, yaw, pose, frame)
        labels, invalid = self._voxel_truth(pose, center, yaw)
        g = self.grid
        seen: np.ndarray = np.zeros(g.num_voxels, bool)  # flat, then (X, Y, Z)
        vi, inside = g.points_to_indices(scan)
        seen[np.ravel_multi_index(vi[inside].T, g.shape)] = True
        seen = seen.reshape(g.shape)
        out.update(
            scan=scan,
            scan_labels=scan_lab,
            labels=labels,
            bin=seen,
            invalid=invalid,
            occluded=self._scan_geometry.occluded(ranges) & ~seen,
        )
        return out

    def _camera(self, scene, idx: np.ndarray, pose: np.ndarray, frame: int) -> dict[str, np.ndarray]:
        """The camera image, its per-pixel class (255 sky) and depth, and the voxels it sees."""
        rot, origin = pose[:3, :3].astype(np.float32), pose[:3, 3].astype(np.float32)
        boxes = self.boxes
        cam = rot @ self.camera_center + origin
        dirs = self.camera_dirs @ np.ascontiguousarray(rot.T)
        t_hit, prim, normal = _cast(scene, cam, dirs)
        hit = np.isfinite(t_hit)
        box = idx[prim[hit] // 12]
        th = t_hit[hit, None]
        pts = cam + dirs[hit] * th
        color = boxes.color[box].astype(np.float32)
        tex = 0.85 + 0.3 * _hash_noise(pts, 4.0, self.seed + 1) * (0.6 + 0.4 * _hash_noise(pts, 0.7, self.seed + 2))
        shade = 0.45 + 0.55 * np.clip(normal[hit] @ _SUN.astype(np.float32), 0, 1)
        fog = np.exp(th / -250.0)
        rgb = self._sky.copy()
        rgb[hit] = color * (tex * shade)[:, None].astype(np.float32) * fog + 0.8 * (1 - fog)
        noise = np.random.default_rng(self.seed * 100003 + frame).standard_normal(rgb.shape, dtype=np.float32)
        rgb = rgb * 255.0 + noise * 3.0
        label_image = np.full(IMAGE_HEIGHT * IMAGE_WIDTH, 255, np.uint8)
        label_image[hit] = boxes.label[box]
        depth_image = np.zeros(IMAGE_HEIGHT * IMAGE_WIDTH, np.float32)
        local_dirs = self.camera_dirs[hit]
        depth_image[hit] = (local_dirs @ self.optical_axis) * th[:, 0]
        # The voxel of each surface point the camera sees (nudged towards the camera, so that a
        # point on a voxel face counts for the voxel in front of it).
        camera_seen = np.zeros(self.grid.num_voxels, bool)
        vi, inside = self.grid.points_to_indices(self.camera_center + local_dirs * (th - 1e-4))
        camera_seen[np.ravel_multi_index(vi[inside].T, self.grid.shape)] = True
        return {
            "image": np.clip(rgb, 0, 255).astype(np.uint8).reshape(IMAGE_HEIGHT, IMAGE_WIDTH, 3),
            "label_image": label_image.reshape(IMAGE_HEIGHT, IMAGE_WIDTH),
            "depth_image": depth_image.reshape(IMAGE_HEIGHT, IMAGE_WIDTH),
            "camera_seen": camera_seen.reshape(self.grid.shape),
        }

    def _scan(self, scene, idx, center, yaw, pose, frame: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The frame's LiDAR scan in its own frame (x, y, z, reflectance; returns within 80 m,
        as a Velodyne), each point's class, and the range image (64, 2048) (0 = no return)."""
        rot, origin = pose[:3, :3], pose[:3, 3]
        boxes = self.boxes
        l_dirs = self.lidar_dirs @ np.ascontiguousarray(rot.T)
        l_hit, l_prim, _ = _cast(scene, origin, l_dirs)
        ok = np.flatnonzero(np.isfinite(l_hit))
        l_box = idx[l_prim[ok] // 12]
        rng = np.random.default_rng([self.seed, 8, frame])
        l_hit[ok] = foliage_returns(boxes, l_box, center, yaw, origin, l_dirs[ok], l_hit[ok], rng)
        keep = l_hit[ok] < SCAN_RANGE
        ok, l_box = ok[keep], l_box[keep]
        scan_pts = self.lidar_dirs[ok] * l_hit[ok, None]
        scan_lab = boxes.label[l_box]
        refl = np.array([_REFLECTANCE.get(c, 0.15) for c in range(20)])[scan_lab]
        refl = np.clip(refl + 0.05 * _hash_noise(origin + l_dirs[ok] * l_hit[ok, None], 5.0, self.seed + 3), 0, 1)
        scan = np.concatenate([scan_pts, refl[:, None]], 1).astype(np.float32)
        ranges = np.where(np.isfinite(l_hit), l_hit, 0.0).reshape(64, -1)
        return scan, scan_lab.astype(np.uint8), ranges

    def _voxel_truth(self, pose: np.ndarray, center: np.ndarray, yaw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(train-id labels, invalid) of a frame: accumulated static returns + moving shells."""
        g = self.grid
        assert self._labeler is not None  # render() accumulates first
        static, observed = self._labeler.static_labels(pose)
        labels = static.reshape(g.shape)
        invalid = ~observed.reshape(g.shape)
        moving = np.flatnonzero(self.boxes.moving)
        if len(moving):
            inv = np.linalg.inv(pose)
            local = center[moving] @ inv[:3, :3].T + inv[:3, 3]
            ego_yaw = np.arctan2(pose[1, 0], pose[0, 0])
            shells, inside = box_shells(g, local, self.boxes.size[moving], yaw[moving] - ego_yaw,
                                        self.boxes.label[moving])  # fmt: skip
            drawn = shells > 0
            labels = np.where(drawn, shells, labels)
            invalid = (invalid & ~drawn) | inside
            labels = np.where(inside, 0, labels)
        return labels, invalid


def write_sequence(out: Path, sequence: int, frames: int, seed: int, progress=None) -> None:
    """Generate and write one sequence `out/sequences/XX` (its world drawn from seed and number)."""
    from PIL import Image

    world = make_world(np.random.default_rng([seed, sequence]), frames)
    renderer = SequenceRenderer(world, seed * 1000 + sequence)
    renderer.accumulate()
    seq = out / "sequences" / f"{sequence:02d}"
    for sub in ("image_2", "velodyne", "labels", "voxels"):
        (seq / sub).mkdir(parents=True, exist_ok=True)
    F.write_calib(seq / "calib.txt", KITTI_CALIB)
    tr = KITTI_CALIB["Tr"]
    lidar_poses = np.stack([renderer.pose(f) for f in range(frames)])
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
    if sequences < 1 or frames < 1:
        raise ValueError(f"need at least one sequence and one frame: --sequences {sequences} --frames {frames}")
    return _write(Path(out), [(s, frames, seed) for s in range(first_sequence, first_sequence + sequences)])


# The named benchmark: ten training worlds (SemanticKITTI's training sequence numbers) from seed
# 0 and three validation worlds from seed 1 (08 is SemanticKITTI's validation sequence; 11 and
# 12 are added so that validation spans several worlds). No validation world shares a seed with
# a training world; `splits.yaml` tells `monoocc train/eval` which is which.
BENCHMARK_TRAIN = ("00", "01", "02", "03", "04", "05", "06", "07", "09", "10")
BENCHMARK_VAL = ("08", "11", "12")
BENCHMARK_TRAIN_FRAMES, BENCHMARK_VAL_FRAMES = 100, 50
BENCHMARK_TRAIN_SEED, BENCHMARK_VAL_SEED = 0, 1


def synthesize_benchmark(out: str | Path) -> Path:
    """`monoocc synth --preset benchmark`: the training and validation worlds and `splits.yaml`."""
    jobs = [(int(s), BENCHMARK_TRAIN_FRAMES, BENCHMARK_TRAIN_SEED) for s in BENCHMARK_TRAIN]
    jobs += [(int(s), BENCHMARK_VAL_FRAMES, BENCHMARK_VAL_SEED) for s in BENCHMARK_VAL]
    root = _write(Path(out), jobs)
    (root / "splits.yaml").write_text(  # JSON lists are YAML with every name quoted ("08", never 8)
        "# monoocc synth --preset benchmark: which sequences form each split (read by monoocc train/eval)\n"
        f"train: {json.dumps(list(BENCHMARK_TRAIN))}\nval: {json.dumps(list(BENCHMARK_VAL))}\n"
    )
    return root


def _write(out: Path, jobs: list[tuple[int, int, int]]) -> Path:
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    with tqdm(total=sum(j[1] for j in jobs), desc="synth", unit="frame") as bar:
        for sequence, frames, seed in jobs:
            write_sequence(out, sequence, frames, seed, bar)
    return out
