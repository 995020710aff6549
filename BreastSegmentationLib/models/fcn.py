"""FCN with a dilated ResNet backbone (seed 001's FCN-ResNet50), built from MONAI blocks.

torchvision's ``fcn_resnet50`` cannot be used beside CPU torch (its PyPI wheel is CUDA-linked), so the same
network is assembled from MONAI's ``ResNetFeatures``: layer3 and layer4 trade their stride for dilation
(output stride 8, torchvision's ``replace_stride_with_dilation=[False, True, True]``), then the FCN head
(3x3 conv to a quarter of the channels, batch norm, ReLU, dropout, 1x1 conv) and bilinear upsampling to the
input size. Module names follow torchvision's (``backbone.*``, ``classifier.*``), so its state dicts load key
for key. With 2 inputs and 1 output it has 32,943,617 parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.nets.resnet import ResNetFeatures, resnet_params
from torch import nn

#: ResNet variants made of bottleneck blocks, the only ones torchvision's dilation scheme applies to.
BOTTLENECK_BACKBONES = tuple(name for name, params in resnet_params.items() if params[0] == "bottleneck")


def dilate_layer(layer: nn.Sequential, first_dilation: int, dilation: int) -> None:
    """Replace the stride of a bottleneck layer by dilation, as torchvision does for its DeepLab/FCN backbones.

    The first block keeps the previous dilation and drops its stride (in the 3x3 conv and the shortcut);
    the following blocks use ``dilation``. Parameter shapes are unchanged.
    """
    for index, block in enumerate(layer):
        rate = first_dilation if index == 0 else dilation
        block.conv2.stride = (1, 1)
        block.conv2.dilation = (rate, rate)
        block.conv2.padding = (rate, rate)
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)


def fcn_head(in_channels: int, out_channels: int, dropout: float) -> nn.Sequential:
    """torchvision's ``FCNHead``: 3x3 conv to ``in_channels // 4``, BN, ReLU, dropout, 1x1 conv to the classes."""
    inter_channels = in_channels // 4
    return nn.Sequential(
        nn.Conv2d(in_channels, inter_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(inter_channels),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Conv2d(inter_channels, out_channels, kernel_size=1),
    )


class FCNResNet(nn.Module):
    """2-D FCN on a dilated bottleneck ResNet (output stride 8); returns logits at the input size."""

    def __init__(self, in_channels: int = 2, out_channels: int = 1, backbone: str = "resnet50", dropout: float = 0.1):
        super().__init__()
        if backbone not in BOTTLENECK_BACKBONES:
            raise ValueError(f"backbone must be one of {BOTTLENECK_BACKBONES}, not {backbone!r}")
        self.backbone = ResNetFeatures(backbone, pretrained=False, spatial_dims=2, in_channels=in_channels)
        dilate_layer(self.backbone.layer3, first_dilation=1, dilation=2)
        dilate_layer(self.backbone.layer4, first_dilation=2, dilation=4)
        self.classifier = fcn_head(self.backbone.in_planes, out_channels, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)[-1]
        logits = self.classifier(features)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

