"""What the image says, placed in the grid by the predicted depth (additions of this package,
not in the paper): `SemanticLift` (below) and `DepthEvidence` (the fine head's geometry).

Semantic lift: the 2D head's class probabilities, placed in the query grid by the predicted
depth, as evidence every voxel query starts from (a student's counterpart of the privileged
teacher's LiDAR embedding).

Why: measured on the benchmark's validation worlds, the shipped student's 2D head already
segments the image well (buildings 80, cars 70, vegetation 60 2D IoU) and its depth is within
10 % for 76 % of LiDAR pixels, yet its 3D output scored buildings 0.2, cars 2.7, vegetation 2.6
IoU: the deformable cross-attention of a few layers did not carry what the image shows into
the voxels. Lifting puts each pixel's class distribution where its depth says it is, so a voxel
knows directly what was seen in it.

Per pixel of the 1/4-resolution maps: softmax of the 2D logits, back-projected with the expected
depth (`pixel_rays_to_points`; not differentiable in the position, as the proposal's points),
summed per query voxel. Each voxel gets the mean class distribution of its pixels and
log(1 + pixel count), embedded by one Linear into a (B, N, C) query bias. Gradients reach the 2D
head and the backbone through the probabilities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from monoocc_ros.geometry import GridSpec
from monoocc_ros.model.export_friendly import softmax
from monoocc_ros.model.proposal import pixel_rays_to_points, voxel_index, voxelize_points


class SemanticLift(nn.Module):
    """2D logits (B, K, h, w) + depth (B, h, w) -> query bias (B, X*Y*Z, C) for `grid`."""

    def __init__(self, grid: GridSpec, num_classes: int, dim: int) -> None:
        super().__init__()
        self.grid = grid
        self.embed = nn.Linear(num_classes + 1, dim)

    def forward(
        self, logits: torch.Tensor, depth: torch.Tensor, projection: torch.Tensor, image_hw: tuple[int, int]
    ) -> torch.Tensor:
        """logits (B, K, h, w) and depth (B, h, w) at the same size; projection (B, 3, 4) into an
        image of image_hw."""
        b, k = logits.shape[:2]
        n = self.grid.num_voxels
        with torch.no_grad():
            points = pixel_rays_to_points(depth.detach().float(), projection.float(), image_hw)
            flat = voxel_index(points, self.grid)  # (B, hw), n for pixels outside the grid
        probs = softmax(logits, 1).flatten(2)  # (B, K, hw)
        sums = probs.new_zeros(b, k, n + 1).scatter_add(2, flat[:, None, :].expand(b, k, -1), probs)
        counts = probs.new_zeros(b, n + 1).scatter_add(1, flat, torch.ones_like(probs[:, 0]))
        counts = counts[:, None, :n]
        mean = sums[:, :, :n] / counts.clamp(min=1.0)
        evidence = torch.cat([mean, torch.log1p(counts)], 1)  # (B, K + 1, N)
        return self.embed(evidence.transpose(1, 2))


class DepthEvidence(nn.Module):
    """Predicted depth -> a correction (B, X, Y, Z) to the fine head's occupancy log-odds at the
    output grid: learned weights on log(1 + n), n the pseudo points (one per 1/4-resolution pixel,
    at its expected depth) in each output voxel and in its 2x2x2 and 4x4x4 blocks.

    Why: the voxel queries learn where along a ray a surface is only through the proposals (one
    bit per 0.8 m query); above the ground, the fine head found almost none of it (buildings 3 %
    of their voxels predicted occupied, results/experiments/README.md). This hands the head the
    depth's own answer at 0.2, 0.4 and 0.8 m, letting training weigh each scale. Starts at zero
    (no effect), as the sub-voxel Linear does."""

    SCALES = (1, 2, 4)
    # Adam moves a parameter by about the learning rate per step (5e-4), and these three weights
    # may need to travel O(1) in a 1,500-step run: they enter scaled by GAIN.
    GAIN = 10.0

    def __init__(self, grid: GridSpec) -> None:
        super().__init__()
        if any(s % 4 for s in grid.shape):
            raise ValueError(f"depth evidence needs a grid divisible by 4, got {grid.shape}")
        self.grid = grid
        self.weight = nn.Parameter(torch.zeros(len(self.SCALES)))

    def forward(self, depth: torch.Tensor, projection: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
        """depth (B, h, w); projection (B, 3, 4) into an image of image_hw -> (B, X, Y, Z)."""
        from monoocc_ros.model.head import repeat_voxels

        with torch.no_grad():
            points = pixel_rays_to_points(depth.detach().float(), projection.float(), image_hw)
            counts = voxelize_points(points, self.grid).to(depth.dtype)
        w = self.weight * self.GAIN
        out = w[0] * torch.log1p(counts)
        for i, s in enumerate(self.SCALES[1:], 1):
            block = F.avg_pool3d(counts[:, None], s)[:, 0] * float(s**3)  # points per s x s x s block
            out = out + w[i] * repeat_voxels(torch.log1p(block), s)
        return out
