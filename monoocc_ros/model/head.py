"""Occupancy head: trilinear x2 upsampling to the output grid, then LayerNorm + Linear per voxel
(no 3D convolution), as MonoOcc.

With `upsample_logits` (the CPU-size configs) the LayerNorm + Linear run at the query grid and
the 20-channel logits are upsampled instead of the C-channel features: the same kind of
prediction at a fraction of the cost (the full-grid feature tensor is the largest in the
network), at the price of per-voxel nonlinearity after upsampling. The paper-size configs keep
the paper's order. Upsampling runs in channels-last layout, which torch's CPU kernel handles
without layout copies."""

from __future__ import annotations

import torch
from torch import nn

from monoocc_ros.model.export_friendly import upsample_trilinear


class OccupancyHead(nn.Module):
    """(B, C, X, Y, Z) -> logits (B, num_classes, X*u, Y*u, Z*u), u = `upsample` (1 or 2)."""

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
        x = self.linear(self.norm(self._up(voxels).permute(0, 2, 3, 4, 1)))
        return x.permute(0, 4, 1, 2, 3)
