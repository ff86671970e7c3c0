"""Image features: a torchvision ResNet truncated after layer3 (stride 16) and a one-level FPN.

MonoOcc-S uses ResNet-50 layer3 (1024 channels); the teacher uses ResNet-101 (InternImage-XL is
not installable here); the CPU configs use ResNet-18/34 (256 channels at layer3). The stem and
layer1 are frozen and every BatchNorm is a FrozenBatchNorm2d: with batch 1 per GPU, batch
statistics are noise. Weights come from a local file when given (nothing is downloaded at run
time), else random initialisation.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageBackbone(nn.Module):
    """(B, 3, H, W) RGB in [0, 1] -> (B, C, H/16, W/16) features, C = `embed_dim`."""

    def __init__(self, name: str, embed_dim: int, weights: str | None = None, frozen_stages: int = 1) -> None:
        super().__init__()
        resnet = getattr(torchvision.models, name)(weights=None, norm_layer=FrozenBatchNorm2d)
        if weights:
            path = Path(weights)
            if not path.is_file():
                raise FileNotFoundError(f"backbone weights {path} do not exist")
            state = torch.load(path, map_location="cpu", weights_only=True)
            missing, unexpected = resnet.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.startswith("fc.")]
            if missing or unexpected:
                raise ValueError(
                    f"backbone weights {path} do not fit {name}: missing {missing[:5]}, unexpected {unexpected[:5]}"
                )
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.layer1, self.layer2, self.layer3 = resnet.layer1, resnet.layer2, resnet.layer3
        in_channels = 256 if name in ("resnet18", "resnet34") else 1024  # layer3 width (basic vs bottleneck)
        self.fpn = FeaturePyramidNetwork([in_channels], embed_dim)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        stages = [self.stem, self.layer1, self.layer2, self.layer3]
        for module in stages[: frozen_stages + 1] if frozen_stages > 0 else []:
            for p in module.parameters():
                p.requires_grad_(False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = (image - self.mean) / self.std
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fpn({"0": x})["0"]
