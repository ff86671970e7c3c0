"""The 2D semantic auxiliary head (MonoOcc): gives the image backbone a direct training signal
from sparse 2D labels (projected labelled LiDAR points)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _up_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class Semantic2DHead(nn.Module):
    """(B, C, H/s, W/s) features -> (B, num_classes, H/4, W/4) logits: x2 upsampling blocks (two
    from stride 16, one from stride 8), then 3x3 conv + BN + ReLU + dropout and a 1x1 conv, as
    in the paper."""

    def __init__(self, dim: int, num_classes: int, dropout: float = 0.1, stride: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            *(_up_block(dim, dim) for _ in range({16: 2, 8: 1}[stride])),
            nn.Conv2d(dim, dim, 3, padding=1, bias=False),
            nn.BatchNorm2d(dim),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
            nn.Conv2d(dim, num_classes, 1),
        )

    def forward(self, features: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """`size`: the exact (h, w) of the sparse labels when the image is not a multiple of 16."""
        out = self.net(features)
        if size is not None and tuple(out.shape[-2:]) != tuple(size):
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        return out
