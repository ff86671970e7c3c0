"""Deformable attention (Deformable DETR style, one feature level) in pure PyTorch.

Written here because no installable library offers it without custom CUDA ops: the
multi-scale CUDA kernel of Deformable DETR / mmcv is not installable here, and a kernel-free
`grid_sample` version also exports cleanly to ONNX. Each query predicts, per head, `points`
sampling offsets around its reference point and softmax weights; values are bilinearly
sampled with `grid_sample` (batched over heads, queries and points; no Python loop over
queries) and summed.

Coordinates: reference points are normalised to [0, 1] over the value map's extent with
pixel-edge convention (u_norm = (u + 0.5) / W), listed in `grid_sample` order, i.e. the LAST
spatial axis first: (x=W, y=H) for a (B, C, H, W) map, (w, h, d) for a (B, C, D, H, W) volume.
Offsets are in cells of the value map (normalised by its size, as Deformable DETR).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from monoocc_ros.model.export_friendly import softmax
from monoocc_ros.model.memory import maybe_checkpoint


class DeformableAttention(nn.Module):
    """query (B, N, C), reference (B, N, ndim) in [0, 1], value tokens (B, S, C) of a map of
    `spatial` shape (S = prod(spatial), C order, len(spatial) == ndim) -> (B, N, C).
    Values come as tokens, not as (B, C, *spatial), because both callers hold them that way and
    a layout round trip costs more than the attention on the CPU. `chunk` bounds peak memory by
    processing queries in chunks (the result does not depend on it); with `checkpointing` (see
    `model/memory.py`) each chunk keeps only its inputs for backward."""

    checkpointing = False

    def __init__(self, dim: int, heads: int, points: int, ndim: int = 2, chunk: int = 65536) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        if ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {ndim}")
        self.dim, self.heads, self.points, self.ndim, self.chunk = dim, heads, points, ndim, chunk
        self.sampling_offsets = nn.Linear(dim, heads * points * ndim)
        self.attention_weights = nn.Linear(dim, heads * points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # As Deformable DETR: offsets start on rays in different directions per head, growing
        # with the point index, so the heads look in different places from the first step.
        nn.init.zeros_(self.sampling_offsets.weight)
        if self.ndim == 2:
            theta = torch.arange(self.heads, dtype=torch.float32) * (2.0 * math.pi / self.heads)
            dirs = torch.stack([theta.cos(), theta.sin()], -1)
        else:
            dirs = torch.randn(self.heads, 3, generator=torch.Generator().manual_seed(0))
        dirs = dirs / dirs.abs().max(-1, keepdim=True)[0]
        bias = dirs[:, None, :] * torch.arange(1, self.points + 1, dtype=torch.float32)[None, :, None]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self, query: torch.Tensor, reference: torch.Tensor, value: torch.Tensor, spatial: tuple[int, ...]
    ) -> torch.Tensor:
        b, n, c = query.shape
        spatial = tuple(int(s) for s in spatial)
        if len(spatial) != self.ndim or reference.shape != (b, n, self.ndim) or value.shape[1] != math.prod(spatial):
            raise ValueError(
                f"expected value tokens (B, prod{spatial}, C) of a {self.ndim}D map and reference (B, N, "
                f"{self.ndim}); got {tuple(value.shape)} and {tuple(reference.shape)}"
            )
        h, ch = self.heads, c // self.heads
        v = self.value_proj(value)  # (B, S, C)
        v = v.view(b, -1, h, ch).permute(0, 2, 3, 1).reshape(b * h, ch, *spatial)
        size = torch.tensor(spatial[::-1], dtype=query.dtype, device=query.device)  # grid_sample order
        if torch.onnx.is_in_onnx_export() or (n <= self.chunk and not self.checkpointing):
            # One pass, no slicing: an exported graph must not bake the traced N into slice bounds
            # (the number of proposed queries changes from frame to frame).
            return self.output_proj(self._sample(query, reference, v, size))
        outs = [
            maybe_checkpoint(
                self.checkpointing,
                self._sample,
                query[:, s : s + self.chunk],
                reference[:, s : s + self.chunk],
                v,
                size,
            )
            for s in range(0, n, self.chunk)
        ]
        return self.output_proj(torch.cat(outs, 1))

    def sampling_plan(
        self, q: torch.Tensor, reference: torch.Tensor, size: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q (B, m, C), reference (B, m, ndim) in [0, 1], size (ndim,) of the map in grid_sample
        order -> sampling locations (B*heads, points, m, ndim) in grid_sample's [-1, 1] and
        attention weights (B*heads, points, m), softmax over the points.

        Both come from ONE matmul that yields them transposed, (B, K, m) with K ordered
        (component, head, point): grid = 2 * (reference + offset / size) - 1 is affine in the
        query, so the 2 / size is folded into the offset layer's weights and the reference and
        the biases are added by a second, (ndim + 1)-wide matmul. Each component is then a
        contiguous (B*heads, points, m) plane, and the weighted sum over points reduces a
        middle axis. Why: in ONNX Runtime the straightforward version spent 33 ms per frame
        (student_tiny, 2 cores, three layers) on a broadcast divide and add over (B, m, heads,
        points, ndim) alone, plus transposes with 3-float inner blocks and a sum over the
        innermost axis; torch gains too (self-attention 170 -> about 110-150 ms)."""
        b, m, c = q.shape
        h, p, nd = self.heads, self.points, self.ndim
        scale = (2.0 / size).view(nd, 1, 1)
        offsets_w = self.sampling_offsets.weight.view(h * p, nd, c).transpose(0, 1) * scale  # (nd, h*p, C)
        weight = torch.cat([offsets_w, self.attention_weights.weight.view(1, h * p, c)]).reshape(-1, c)
        offsets_b = self.sampling_offsets.bias.view(h * p, nd).t() * scale[..., 0] - 1.0  # (nd, h*p)
        bias = torch.cat([offsets_b, self.attention_weights.bias.view(1, h * p)]).reshape(-1, 1)
        # (K, ndim + 1): 2 * reference for each point's own component, then the bias column.
        eye = torch.eye(nd + 1, nd, dtype=q.dtype, device=q.device)  # the attention rows get no reference
        spread = torch.cat([eye.mul(2.0).repeat_interleave(h * p, 0), bias], 1)
        ref1 = torch.cat([reference, torch.ones_like(reference[..., :1])], -1)  # (B, m, ndim + 1)
        planned = torch.matmul(weight, q.transpose(1, 2)) + torch.matmul(spread, ref1.transpose(1, 2))  # (B, K, m)
        planned = planned.view(b, nd + 1, h * p, m)
        grid = torch.stack([planned[:, i].reshape(b * h, p, m) for i in range(nd)], -1)
        return grid, softmax(planned[:, nd].reshape(b * h, p, m), 1)

    def _sample(self, q: torch.Tensor, reference: torch.Tensor, v: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        """q (B, m, C), reference (B, m, ndim), v (B*heads, C/heads, *spatial) -> (B, m, C) before output_proj."""
        b, m, c = q.shape
        grid, w = self.sampling_plan(q, reference, size)  # (B*h, p, m, ndim), (B*h, p, m)
        if self.ndim == 2:
            out = weighted_samples(v, grid, w)
        elif torch.onnx.is_in_onnx_export():
            out = weighted_volume_samples_as_slice_pairs(v, grid, w)
        else:
            out = weighted_samples(v, grid[:, :, :, None, :], w)  # (B*h, p, m, 1, 3): a 5-D grid
        return out.reshape(b, c, m).transpose(1, 2)


def weighted_samples(value: torch.Tensor, grid: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Bilinear/trilinear samples of `value` (N, C, *spatial) at `grid` (N, p, m, [1,] ndim) in
    [-1, 1] (zeros outside), summed over the p points with `weights` (N, p, m) -> (N, C, m).
    A multiply and a sum over a middle axis rather than an einsum: the same speed in torch,
    several times faster in ONNX Runtime, whose Einsum kernel is slow for this pattern."""
    n, c = value.shape[:2]
    sampled = F.grid_sample(value, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (sampled.reshape(n, c, *weights.shape[1:]) * weights[:, None]).sum(2)


def weighted_volume_samples_as_slice_pairs(
    volume: torch.Tensor, grid: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """The same as `weighted_samples` for a volume (N, C, D, H, W) at `grid` (N, p, m, 3) in
    grid_sample's [-1, 1] (order W, H, D; align_corners=False), computed with one bilinear
    sample of a 2-D image per point.

    Trilinear = linear along H between bilinear samples (over D and W) of the two neighbouring
    H slices, so the image holds each pair of neighbouring H slices as 2C channels: pair k =
    slices k and k + 1. The image is (N, 2C, D, (H - 1) * W): rows along D, and along the
    columns the pairs side by side. It is a view of the volume's memory order plus one copy:
    no transpose, no padding. grid_sample's zero padding is applied by the weights instead:
    - along D, the rows, grid_sample pads as usual;
    - along W, the column is clamped to the pair's [0, W - 1], where bilinear sampling reads the
      border column alone, and the weight takes the linear fall-off to the zero beyond it;
    - along H, a point between slice -1 and 0 (or H - 1 and H) reads pair 0 (or H - 2) and
      weights only the slice that exists.

    Used in ONNX exports only. ONNX Runtime's 5-D GridSample kernel is about 3x slower than
    this. Its 2-D kernel first computes a plan per sampled point on one thread, then samples the
    channels, so half as many points with twice the channels beats two samples of a C-channel
    image: a whole student_tiny frame went from 264 to 232 ms median (2 cores, 30 interleaved
    runs; before, the slices lay side by side and each point was sampled twice), and leaving
    out the padding saved a 6 ms Pad. Torch's own 3-D kernel is faster than all of these and is
    used everywhere else. Equal to grid_sample's result within float32 rounding of the column
    coordinate.
    """
    n, c, d, h, w = volume.shape
    if h < 2:
        raise ValueError(f"slice pairs need a volume at least 2 deep along H, got {tuple(volume.shape)}")
    p, m = weights.shape[1:]
    # Channel 2 * i + s is channel i of the pair's slice s, so the weighted sum below reduces one
    # contiguous middle axis (slice, point), which ONNX Runtime does 2x faster than two axes apart.
    pairs = torch.stack([volume[:, :, :, :-1], volume[:, :, :, 1:]], 2).reshape(n, 2 * c, d, (h - 1) * w)
    gx, gy, gz = grid.unbind(-1)
    px = (gx + 1) * (w / 2) - 0.5  # pixel coordinates (align_corners=False)
    py = (gy + 1) * (h / 2) - 0.5
    x_in = px.clamp(0, w - 1)
    fall_off = (1 - (x_in - px).abs()).clamp(min=0)  # 1 inside, linear to 0 one pixel outside
    h0 = torch.floor(py)
    fh = py - h0
    inner = ((h0 >= 0) & (h0 <= h - 2)).to(fh.dtype)
    lower = (1 - fh) * inner + fh * (h0 == -1).to(fh.dtype)  # weight of the pair's slice k
    upper = fh * inner + (1 - fh) * (h0 == h - 1).to(fh.dtype)  # weight of its slice k + 1
    col = h0.clamp(0, h - 2) * w + x_in
    columns = torch.stack([(2 * col + 1) / ((h - 1) * w) - 1, gz], -1)  # (N, p, m, 2): (column, row)
    sampled = F.grid_sample(pairs, columns, mode="bilinear", padding_mode="zeros", align_corners=False)
    point_weights = weights * fall_off
    slice_weights = torch.stack([point_weights * lower, point_weights * upper], 1)  # (N, 2, p, m)
    return (sampled.view(n, c, 2 * p, m) * slice_weights.view(n, 1, 2 * p, m)).sum(2)
