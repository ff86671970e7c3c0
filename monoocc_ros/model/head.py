"""Occupancy head: trilinear x2 upsampling to the output grid, then LayerNorm + Linear per voxel
(no 3D convolution), as MonoOcc.

With `upsample_logits` (the CPU-size configs) the LayerNorm + Linear run at the query grid and
the 20-channel logits are upsampled instead of the C-channel features: the same kind of
prediction at a fraction of the cost (the full-grid feature tensor is the largest in the
network), at the price of per-voxel nonlinearity after upsampling. The paper-size configs keep
the paper's order. Upsampling runs in channels-last layout, which torch's CPU kernel handles
without layout copies."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from monoocc_ros.model.export_friendly import upsample_trilinear
from monoocc_ros.model.memory import maybe_checkpoint


class OccupancyHead(nn.Module):
    """(B, C, X, Y, Z) -> logits (B, num_classes, X*u, Y*u, Z*u), u = `upsample` (1 or 2).

    With `checkpointing` (model/memory.py) the paper's order (upsample, then LayerNorm + Linear
    at the output grid) runs in slabs of SLAB output X-slices, each keeping only its input slices
    for backward: the full-grid feature tensor (256x256x32x128 floats, 1 GiB, and as much again
    after the LayerNorm) never exists at once."""

    checkpointing = False
    SLAB = 32  # output X-slices per slab

    def __init__(self, dim: int, num_classes: int, upsample: int, upsample_logits: bool = False) -> None:
        super().__init__()
        self.upsample, self.upsample_logits = upsample, upsample_logits
        self.norm = nn.LayerNorm(dim)
        self.linear = nn.Linear(dim, num_classes)

    def _up(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample == 1:
            return x
        if not torch.onnx.is_in_onnx_export():  # a layout hint for torch's kernel; ONNX has no layouts
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return upsample_trilinear(x, self.upsample)

    def forward(self, voxels: torch.Tensor) -> torch.Tensor:
        if self.upsample_logits:
            logits = self.linear(self.norm(voxels.permute(0, 2, 3, 4, 1))).permute(0, 4, 1, 2, 3)
            return self._up(logits)
        if self.checkpointing and self.upsample == 2 and torch.is_grad_enabled():
            return self._slabs(voxels)
        x = self.linear(self.norm(self._up(voxels).permute(0, 2, 3, 4, 1)))
        return x.permute(0, 4, 1, 2, 3)

    def _slabs(self, voxels: torch.Tensor) -> torch.Tensor:
        """The same as the full path, slab by slab along X. Output slice i interpolates input
        slices floor((i - 1) / 2) .. floor((i + 1) / 2) (align_corners=False, clamped), so a slab
        of output slices [a, b) reads input slices [a // 2 - 1, (b + 1) // 2] (clamped) and the
        upsampled halo is cut off again."""
        nx = voxels.shape[2]
        outs = []
        for a in range(0, 2 * nx, self.SLAB):
            b = min(a + self.SLAB, 2 * nx)
            lo, hi = max(a // 2 - 1, 0), min((b + 1) // 2 + 1, nx)
            outs.append(maybe_checkpoint(True, self._slab, voxels[:, :, lo:hi], a - 2 * lo, b - a))
        return torch.cat(outs, 2)

    def _slab(self, part: torch.Tensor, start: int, length: int) -> torch.Tensor:
        # Interpolating a slab alone clamps at its own ends; rows next to a cut must instead see
        # the neighbour slice, so the slab carries one input slice of halo on each cut side and
        # only output rows whose two sources lie inside the slab are kept (`start`, `length`).
        up = upsample_trilinear(part, 2)
        x = self.linear(self.norm(up[:, :, start : start + length].permute(0, 2, 3, 4, 1)))
        return x.permute(0, 4, 1, 2, 3)


class FineOccupancyHead(nn.Module):
    """The CPU configs' full-resolution head: occupancy at every output voxel, semantics coarser.

    (B, C, Xq, Yq, Zq) -> {"occupancy": (B, X, Y, Z) log-odds at the output grid (r = query /
    output scale sub-voxels per query axis), "logits": (B, 20, Xs, Ys, Zs) at the semantic grid}.

    Why: a 20-class prediction per 0.2 m voxel is 168 MB of logits per frame, and a coarse one
    caps the score (the ground truth itself, pushed through 0.4 m, loses a third of its IoU: roads
    are one 0.2 m layer thick). Geometry needs the resolution, class boundaries much less. The
    occupancy log-odds are the coarse semantic head's own occupied-vs-empty log-odds, trilinearly
    upsampled, plus a per-query Linear that predicts a correction for each of its r^3 sub-voxels.
    A voxel's label is empty where P(occupied) <= `occupancy_threshold` (0.5: log-odds <= 0; or its
    class's entry of `class_occupancy_thresholds`), else the most likely non-empty class of its
    semantic voxel (`labels_and_confidence`): no full-resolution logits are ever built."""

    def __init__(self, dim: int, num_classes: int, subvoxels: int, semantic_upsample: int) -> None:
        super().__init__()
        self.r, self.u = subvoxels, semantic_upsample
        self.semantic = OccupancyHead(dim, num_classes, semantic_upsample, upsample_logits=True)
        self.norm = nn.LayerNorm(dim)
        self.subvoxel = nn.Linear(dim, subvoxels**3)
        nn.init.zeros_(self.subvoxel.weight)  # start from the coarse head's geometry
        nn.init.zeros_(self.subvoxel.bias)

    def forward(self, voxels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.semantic(voxels)  # (B, 20, Xs, Ys, Zs)
        coarse = occupied_log_odds(logits)  # (B, Xs, Ys, Zs)
        up = self.r // self.u  # static (a traced shape would make the export's matrices data-dependent)
        base = coarse[:, None] if up == 1 else upsample_trilinear(coarse[:, None], up)
        fine = self._subvoxels(self.norm(voxels.permute(0, 2, 3, 4, 1)))
        return {"logits": logits, "occupancy": base[:, 0] + fine}

    def _subvoxels(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Xq, Yq, Zq, C) normalised features -> (B, Xq*r, Yq*r, Zq*r): the Linear(C, r^3)
        applied per query with its r^3 outputs laid out as the query's sub-voxels (output
        i*r*r + j*r + k is sub-voxel (i, j, k)). Eager: the Linear, then one permuting copy
        (torch's CPU transposed convolution took 39 ms per frame for student_tiny). Exported: one
        transposed convolution with kernel = stride = r (the same sums, no overlap), the bias
        entering as a constant input channel (the 7-D transpose cost ONNX Runtime 20 ms)."""
        b, xq, yq, zq, c = x.shape
        r = self.r
        if not torch.onnx.is_in_onnx_export():
            y = F.linear(x, self.subvoxel.weight, self.subvoxel.bias).reshape(b, xq, yq, zq, r, r, r)
            return y.permute(0, 1, 4, 2, 5, 3, 6).reshape(b, xq * r, yq * r, zq * r)
        x = x.permute(0, 4, 1, 2, 3)
        ones = torch.ones(b, 1, xq, yq, zq, dtype=x.dtype, device=x.device)
        weight = torch.cat([self.subvoxel.weight, self.subvoxel.bias[:, None]], 1)  # (r^3, C + 1)
        weight = weight.t().reshape(c + 1, 1, r, r, r)
        return F.conv_transpose3d(torch.cat([x, ones], 1), weight, stride=r)[:, 0]


def occupied_log_odds(logits: torch.Tensor) -> torch.Tensor:
    """(B, 20, ...) class logits -> (B, ...) log P(occupied) - log P(empty)."""
    return torch.logsumexp(logits[:, 1:], 1) - logits[:, 0]


def labels_and_confidence(
    logits: torch.Tensor,
    occupancy: torch.Tensor | None,
    factor: int = 1,
    threshold: float = 0.5,
    class_thresholds: tuple[float, ...] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """The network's answer at its output grid: labels (B, X, Y, Z) uint8 and confidence (B, X, Y, Z)
    float32, the probability of that label.

    Paper head (`occupancy` None): argmax and max of the softmax of `logits` (B, 20, X, Y, Z).
    Fine head: `occupancy` (B, X, Y, Z) log-odds; `logits` at a grid coarser by `factor` (a
    plain int, so that an exported graph repeats by a constant).
    A voxel is occupied when P(occupied) > `threshold` (`ModelConfig.occupancy_threshold`), or,
    with `class_thresholds` (19 values, classes 1..19), > the threshold of its semantic voxel's
    most likely class. Occupied voxels take that class, with confidence
    P(occupied) * P(class | occupied); empty ones P(empty)."""
    if occupancy is None:
        confidence, labels = logits.softmax(1).max(1)
        return labels.to(torch.uint8), confidence
    class_prob, cls = logits[:, 1:].softmax(1).max(1)
    # Decisions compared as log-odds (constants in an exported graph): 0.5 is log-odds 0.
    if class_thresholds:
        table = torch.tensor([_log_odds(t) for t in class_thresholds], dtype=occupancy.dtype, device=occupancy.device)
        cut: torch.Tensor | float = repeat_voxels(table[cls], factor)  # looked up at the semantic grid
    else:
        cut = _log_odds(threshold)
    # Labels as uint8 at the semantic grid, then repeated to the output grid in one expand (an
    # int64 class index repeated axis by axis was 8x the bytes and three copies).
    cls = repeat_voxels((cls + 1).to(torch.uint8), factor)
    class_prob = repeat_voxels(class_prob, factor)
    p = occupancy.sigmoid()
    occupied = occupancy > cut
    labels = torch.where(occupied, cls, torch.zeros_like(cls))
    return labels, torch.where(occupied, p * class_prob, 1 - p)


def _log_odds(p: float) -> float:
    return math.log(p / (1.0 - p))


def repeat_voxels(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, X, Y, Z) -> (B, fX, fY, fZ), each voxel repeated f times along each axis (one copy)."""
    if factor == 1:
        return x
    b, nx, ny, nz = x.shape
    f = factor
    return x[:, :, None, :, None, :, None].expand(b, nx, f, ny, f, nz, f).reshape(b, nx * f, ny * f, nz * f)
