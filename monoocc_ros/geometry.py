"""Grid geometry, projections and pose algebra (pure numpy; no torch, no ROS).

The SemanticKITTI grid is the one source of truth for the scene's extent: x in [0, 51.2],
y in [-25.6, 25.6], z in [-2.0, 4.4] metres in the LiDAR frame, 0.2 m voxels, 256x256x32,
flattened x-major with z fastest (C order).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class GridSpec:
    """An axis-aligned voxel grid: `origin` is the minimum corner (metres), `shape` (X, Y, Z)."""

    origin: tuple[float, float, float]
    resolution: float
    shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        if not (self.resolution > 0 and np.isfinite(self.resolution)):
            raise ValueError(f"grid resolution must be a positive number, got {self.resolution}")
        if len(self.shape) != 3 or any(int(s) <= 0 for s in self.shape):
            raise ValueError(f"grid shape must be three positive sizes, got {self.shape}")
        if len(self.origin) != 3 or not np.all(np.isfinite(self.origin)):
            raise ValueError(f"grid origin must be three finite numbers, got {self.origin}")
        object.__setattr__(self, "origin", tuple(float(v) for v in self.origin))
        object.__setattr__(self, "shape", tuple(int(v) for v in self.shape))
        object.__setattr__(self, "resolution", float(self.resolution))

    @property
    def num_voxels(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]

    @property
    def upper(self) -> tuple[float, float, float]:
        """The maximum corner (metres)."""
        (ox, oy, oz), (sx, sy, sz), r = self.origin, self.shape, self.resolution
        return (ox + sx * r, oy + sy * r, oz + sz * r)

    def scaled(self, factor: int) -> GridSpec:
        """The same physical extent with voxels `factor` times larger."""
        if any(s % factor for s in self.shape):
            raise ValueError(f"grid shape {self.shape} is not divisible by {factor}")
        sx, sy, sz = self.shape
        return GridSpec(self.origin, self.resolution * factor, (sx // factor, sy // factor, sz // factor))

    def voxel_centers(self) -> np.ndarray:
        """Centres of all voxels, (X, Y, Z, 3) float32, in the grid's frame."""
        axes = [
            (np.arange(n, dtype=np.float64) + 0.5) * self.resolution + o
            for n, o in zip(self.shape, self.origin, strict=True)
        ]
        return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).astype(np.float32)

    def points_to_indices(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Voxel indices (N, 3) int64 of points (N, >=3), and a mask of points inside."""
        pts = np.asarray(points)[:, :3]
        idx = np.floor((pts - np.asarray(self.origin)) / self.resolution).astype(np.int64)
        inside = np.all((idx >= 0) & (idx < np.asarray(self.shape)), axis=1)
        return idx, inside


SEMANTIC_KITTI_GRID = GridSpec(origin=(0.0, -25.6, -2.0), resolution=0.2, shape=(256, 256, 32))


# --- homogeneous transforms and projections ------------------------------------------------


def to_homogeneous(matrix: np.ndarray) -> np.ndarray:
    """A 3x4 (or 4x4) rigid transform -> 4x4."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape == (4, 4):
        return m.copy()
    if m.shape != (3, 4):
        raise ValueError(f"expected a 3x4 or 4x4 matrix, got {m.shape}")
    out = np.eye(4)
    out[:3] = m
    return out


def lidar_projection(p2: np.ndarray, tr: np.ndarray) -> np.ndarray:
    """3x4 projection of LiDAR/grid-frame points into image_2: `P2 @ [Tr; 0 0 0 1]`."""
    return np.asarray(p2, dtype=np.float64)[:3, :4] @ to_homogeneous(tr)


def project_points(points: np.ndarray, projection: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project (N, >=3) points with a 3x4 matrix -> pixel coordinates (N, 2) and depth (N,).

    Pixel (u, v) = (0, 0) is the centre of the top-left pixel (KITTI convention). Points at
    or behind the camera (depth <= 0) get NaN pixel coordinates.
    """
    pts = np.asarray(points, dtype=np.float64)[:, :3]
    proj = np.asarray(projection, dtype=np.float64)
    cam = pts @ proj[:, :3].T + proj[:, 3]
    depth = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = cam[:, :2] / depth[:, None]
    uv[depth <= 0] = np.nan
    return uv, depth


def in_image(uv: np.ndarray, width: int, height: int) -> np.ndarray:
    """Mask of pixel coordinates that fall on a pixel of a (height, width) image."""
    u, v = uv[:, 0], uv[:, 1]
    with np.errstate(invalid="ignore"):
        return (u >= -0.5) & (u < width - 0.5) & (v >= -0.5) & (v < height - 0.5)


def rotation_to_quaternion(r: np.ndarray) -> np.ndarray:
    """3x3 rotation -> unit quaternion (x, y, z, w), w >= 0. Shepperd's method, written here
    because the only user is the bag's /tf_static and scipy is not a dependency."""
    r = np.asarray(r, dtype=np.float64)
    t = np.trace(r)
    if t > 0:
        s = 2.0 * np.sqrt(1.0 + t)
        q = [(r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s, 0.25 * s]
    else:
        i = int(np.argmax(np.diag(r)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(1.0 + r[i, i] - r[j, j] - r[k, k])
        q = [0.0, 0.0, 0.0, (r[k, j] - r[j, k]) / s]
        q[i], q[j], q[k] = 0.25 * s, (r[j, i] + r[i, j]) / s, (r[k, i] + r[i, k]) / s
    q = np.asarray(q) / np.linalg.norm(q)
    return q if q[3] >= 0 else -q


def quaternion_to_rotation(q: npt.ArrayLike) -> np.ndarray:
    """Quaternion (x, y, z, w), normalised here -> 3x3 rotation."""
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array(
        [[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
         [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
         [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]]
    )  # fmt: skip


def camera_pose_to_lidar(pose: np.ndarray, tr: np.ndarray) -> np.ndarray:
    """A KITTI camera-0 pose (poses.txt) expressed for the LiDAR frame: `inv(Tr) @ P @ Tr`."""
    tr4 = to_homogeneous(tr)
    return np.linalg.inv(tr4) @ to_homogeneous(pose) @ tr4


def other_frame_projection(p2: np.ndarray, tr: np.ndarray, pose_i: np.ndarray, pose_j: np.ndarray) -> np.ndarray:
    """3x4 projection of points in frame i's LiDAR/grid frame into frame j's image_2:
    `P2 @ Tr @ inv(pose_j) @ pose_i`, with poses converted to the LiDAR frame."""
    lid_i = camera_pose_to_lidar(pose_i, tr)
    lid_j = camera_pose_to_lidar(pose_j, tr)
    return lidar_projection(p2, tr) @ np.linalg.inv(lid_j) @ lid_i


def resize_projection(projection: np.ndarray, scale_x: float, scale_y: float) -> np.ndarray:
    """Adjust a 3x4 projection for an image resized by (scale_x, scale_y).

    Pixel centres sit at integer coordinates, so a pixel edge at -0.5 stays at -0.5:
    u' = s*u + (s - 1)/2 (the common `P[:2] *= s` is off by up to half a pixel)."""
    a = np.array([[scale_x, 0.0, 0.5 * (scale_x - 1.0)], [0.0, scale_y, 0.5 * (scale_y - 1.0)], [0.0, 0.0, 1.0]])
    return a @ np.asarray(projection, dtype=np.float64)


def resize_image_and_projection(
    image: np.ndarray, projection: np.ndarray, size_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Resize an (H, W, C) uint8 image to `size_hw` (bilinear, PIL) and its projection with it."""
    from PIL import Image

    h, w = image.shape[:2]
    new_h, new_w = size_hw
    if (new_h, new_w) == (h, w):
        return image, np.asarray(projection, dtype=np.float64).copy()
    resized = np.array(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))
    return resized, resize_projection(projection, new_w / w, new_h / h)


# --- voxelisation and sparse image labels ------------------------------------------------


def voxelize_occupancy(points: np.ndarray, grid: GridSpec) -> np.ndarray:
    """Bool (X, Y, Z) grid of voxels containing at least one point."""
    idx, inside = grid.points_to_indices(points)
    out = np.zeros(grid.shape, dtype=bool)
    i = idx[inside]
    out[i[:, 0], i[:, 1], i[:, 2]] = True
    return out


def voxelize_labels(points: np.ndarray, labels: np.ndarray, grid: GridSpec, ignore: int = 255) -> np.ndarray:
    """(X, Y, Z) uint8 grid: per voxel the most frequent train id among its points
    (labels equal to `ignore` do not vote; ties go to the smallest id); 0 where no point."""
    idx, inside = grid.points_to_indices(points)
    lab = np.asarray(labels).astype(np.int64)
    keep = inside & (lab != ignore)
    flat = np.ravel_multi_index(idx[keep].T, grid.shape)
    lab = lab[keep]
    out = np.zeros(grid.num_voxels, dtype=np.uint8)
    if flat.size == 0:
        return out.reshape(grid.shape)
    # Sort by (voxel, label), count runs, keep the largest run per voxel (smallest label on ties).
    order = np.lexsort((lab, flat))
    flat, lab = flat[order], lab[order]
    key_change = np.r_[True, (flat[1:] != flat[:-1]) | (lab[1:] != lab[:-1])]
    starts = np.flatnonzero(key_change)
    run_len = np.diff(np.r_[starts, flat.size])
    run_vox, run_lab = flat[starts], lab[starts]
    order = np.lexsort((run_lab, -run_len, run_vox))
    first = np.r_[True, run_vox[order][1:] != run_vox[order][:-1]]
    out[run_vox[order][first]] = run_lab[order][first]
    return out.reshape(grid.shape)


def points_to_sparse_image(
    points: np.ndarray,
    labels: np.ndarray | None,
    projection: np.ndarray,
    height: int,
    width: int,
    ignore: int = 255,
) -> tuple[np.ndarray, np.ndarray]:
    """Project labelled points into an image: sparse label image (H, W) uint8 (`ignore` where
    no point) and sparse depth (H, W) float32 (0 where no point). Where several points hit
    one pixel, the nearest wins."""
    uv, depth = project_points(points, projection)
    keep = (depth > 0) & in_image(uv, width, height)
    px = np.rint(uv[keep]).astype(np.int64)
    d = depth[keep]
    order = np.argsort(-d)  # far first, so nearer points overwrite
    px, d = px[order], d[order]
    depth_img = np.zeros((height, width), dtype=np.float32)
    depth_img[px[:, 1], px[:, 0]] = d
    label_img = np.full((height, width), ignore, dtype=np.uint8)
    if labels is not None:
        label_img[px[:, 1], px[:, 0]] = np.asarray(labels)[keep][order]
    return label_img, depth_img


# KITTI odometry sequence 00 camera (public calibration): the camera the synthetic world renders
# with and the models are trained for. image_2 size and rectified projections; Tr: LiDAR -> camera 0.
IMAGE_WIDTH, IMAGE_HEIGHT = 1241, 376
KITTI_CALIB: dict[str, np.ndarray] = {
    "P0": np.array([[718.856, 0.0, 607.1928, 0.0], [0.0, 718.856, 185.2157, 0.0], [0.0, 0.0, 1.0, 0.0]]),
    "P1": np.array([[718.856, 0.0, 607.1928, -386.1448], [0.0, 718.856, 185.2157, 0.0], [0.0, 0.0, 1.0, 0.0]]),
    "P2": np.array(
        [[718.856, 0.0, 607.1928, 45.38225], [0.0, 718.856, 185.2157, -0.1130887], [0.0, 0.0, 1.0, 0.003779761]]
    ),
    "P3": np.array(
        [[718.856, 0.0, 607.1928, -337.2877], [0.0, 718.856, 185.2157, 2.369057], [0.0, 0.0, 1.0, 0.004915215]]
    ),
    "Tr": to_homogeneous(
        np.array(
            [
                [4.276802385584e-04, -9.999672484946e-01, -8.084491683471e-03, -1.198459927713e-02],
                [-7.210626507497e-03, 8.081198471645e-03, -9.999413164504e-01, -5.403984729748e-02],
                [9.999738645903e-01, 4.859485810390e-04, -7.206933692422e-03, -2.921968648686e-01],
            ]
        )
    ),
}
