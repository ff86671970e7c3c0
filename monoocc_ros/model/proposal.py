"""Monocular query proposal (stage 1): depth from the same image, lifted to a pseudo point
cloud, voxelised, and a light bird's-eye-view U-Net (height as channels, LMSCNet style) that
predicts which query voxels are occupied.

MonoOcc/VoxFormer take this depth from a stereo network; predicting it from the image features
keeps the whole system monocular. Depth is a distribution over `bins` uniform bins (its
expectation is the depth), supervised by sparse projected LiDAR depth. Lifting and
voxelisation are not differentiable (integer voxel indices): the U-Net learns from the
proposal loss, the depth head from the depth loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from monoocc_ros.geometry import GridSpec
from monoocc_ros.model.export_friendly import softmax


class DepthHead(nn.Module):
    """(B, C, H/s, W/s) features (s = 16 or 8) -> depth logits (B, bins, h, w) and expected depth
    (B, h, w), with (h, w) the requested output size (the sparse depth's, 1/4 of the image)."""

    centers: torch.Tensor  # a buffer (registered in __init__)

    def __init__(self, dim: int, bins: int, depth_min: float, depth_max: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(dim, bins, 1),
        )
        self.register_buffer("centers", torch.linspace(depth_min, depth_max, bins), persistent=False)

    def forward(self, features: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.interpolate(features, size=size, mode="bilinear", align_corners=False)
        logits = self.net(x)
        depth = (softmax(logits, 1) * self.centers.view(1, -1, 1, 1)).sum(1)
        return logits, depth


def pixel_rays_to_points(depth: torch.Tensor, projection: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """Back-project a depth map to points in the grid frame.

    depth (B, h, w) covers the image of size image_hw that `projection` (B, 3, 4) maps into;
    depth is the third homogeneous coordinate of P @ [X; 1] (camera z for KITTI's P2 @ Tr).
    Returns (B, h*w, 3)."""
    b, h, w = depth.shape
    dev, dt = depth.device, depth.dtype
    sy, sx = image_hw[0] / h, image_hw[1] / w
    v, u = torch.meshgrid(
        (torch.arange(h, device=dev, dtype=dt) + 0.5) * sy - 0.5,
        (torch.arange(w, device=dev, dtype=dt) + 0.5) * sx - 0.5,
        indexing="ij",
    )
    d = depth.reshape(b, -1)
    pix = torch.stack([u.reshape(-1).expand(b, -1) * d, v.reshape(-1).expand(b, -1) * d, d], -1)  # (B, hw, 3)
    m, p4 = projection[:, :, :3], projection[:, :, 3]
    return (pix - p4[:, None, :]) @ inverse_3x3(m).transpose(1, 2)


def inverse_3x3(m: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) -> inverses by the adjugate. Written out instead of torch.linalg.inv/solve
    because ONNX has no matrix inverse; eager and exported models share this one formula, so
    both back-project the same points."""
    a, b, c = m[:, 0, 0], m[:, 0, 1], m[:, 0, 2]
    d, e, f = m[:, 1, 0], m[:, 1, 1], m[:, 1, 2]
    g, h, i = m[:, 2, 0], m[:, 2, 1], m[:, 2, 2]
    cof = torch.stack(
        [e * i - f * h, c * h - b * i, b * f - c * e,
         f * g - d * i, a * i - c * g, c * d - a * f,
         d * h - e * g, b * g - a * h, a * e - b * d],
        -1,
    ).view(-1, 3, 3)  # fmt: skip
    det = a * cof[:, 0, 0] + b * cof[:, 1, 0] + c * cof[:, 2, 0]
    return cof / det.view(-1, 1, 1)


def voxel_index(points: torch.Tensor, grid: GridSpec) -> torch.Tensor:
    """(B, N, 3) points -> (B, N) int64 flat C-order voxel index in `grid`, `grid.num_voxels` for
    points outside it: one extra bin that callers drop, so scatters keep a fixed shape (no
    boolean indexing) and export to ONNX as ScatterElements(add)."""
    origin = torch.tensor(grid.origin, device=points.device, dtype=points.dtype)
    idx = torch.floor((points - origin) / grid.resolution).long()
    shape = torch.tensor(grid.shape, device=points.device)
    inside = ((idx >= 0) & (idx < shape)).all(-1)
    flat = (idx[..., 0] * grid.shape[1] + idx[..., 1]) * grid.shape[2] + idx[..., 2]
    return torch.where(inside, flat, torch.full_like(flat, grid.num_voxels))


def voxelize_points(points: torch.Tensor, grid: GridSpec) -> torch.Tensor:
    """(B, N, 3) points -> (B, X, Y, Z) point counts per voxel (points outside are dropped)."""
    flat = voxel_index(points, grid)
    counts = torch.zeros(points.shape[0], grid.num_voxels + 1, device=points.device, dtype=points.dtype)
    counts = counts.scatter_add(1, flat, torch.ones_like(flat, dtype=points.dtype))
    return counts[:, : grid.num_voxels].reshape(-1, *grid.shape)


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class BEVUNet(nn.Module):
    """(B, Z, X, Y) occupancy evidence (height as channels) -> (B, Z, X, Y) occupancy logits.
    Two-level U-Net; X and Y must be divisible by 4."""

    def __init__(self, height: int, channels: int) -> None:
        super().__init__()
        c = channels
        self.enc0 = _conv_block(height, c)
        self.enc1 = _conv_block(c, 2 * c)
        self.enc2 = _conv_block(2 * c, 4 * c)
        self.up1 = nn.ConvTranspose2d(4 * c, 2 * c, 2, stride=2)
        self.dec1 = _conv_block(4 * c, 2 * c)
        self.up0 = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        self.dec0 = _conv_block(2 * c, c)
        self.out = nn.Conv2d(c, height, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e0 = self.enc0(x)
        e1 = self.enc1(F.max_pool2d(e0, 2))
        e2 = self.enc2(F.max_pool2d(e1, 2))
        d1 = self.dec1(torch.cat([self.up1(e2), e1], 1))
        d0 = self.dec0(torch.cat([self.up0(d1), e0], 1))
        return self.out(d0)


class QueryProposal(nn.Module):
    """Depth -> pseudo points -> voxel evidence -> BEV U-Net -> occupancy logits (B, X, Y, Z)
    at the query grid."""

    def __init__(self, grid: GridSpec, channels: int) -> None:
        super().__init__()
        self.grid = grid
        self.unet = BEVUNet(grid.shape[2], channels)

    def forward(
        self, depth: torch.Tensor, projection: torch.Tensor, image_hw: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """depth (B, h, w), projection (B, 3, 4) into an image of image_hw.
        Returns (occupancy logits (B, X, Y, Z), voxelised evidence (B, X, Y, Z))."""
        with torch.no_grad():
            points = pixel_rays_to_points(depth.detach().float(), projection.float(), image_hw)
            evidence = torch.log1p(voxelize_points(points, self.grid))
        return self.from_evidence(evidence.to(depth.dtype)), evidence

    def from_evidence(self, evidence: torch.Tensor) -> torch.Tensor:
        """(B, X, Y, Z) log(1 + points) per voxel -> occupancy logits (B, X, Y, Z). A privileged
        teacher calls this with accumulated LiDAR instead of its own depth's pseudo points."""
        logits = self.unet(evidence.permute(0, 3, 1, 2))  # (B, Z, X, Y)
        return logits.permute(0, 2, 3, 1)
