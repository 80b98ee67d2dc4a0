"""ResNet-18 (He et al., CVPR 2016) in its CIFAR form: a 3×3 stem without max-pooling, then
four stages of two BasicBlocks; the usual backbone of unlearning benchmarks."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from worker.engine.architectures._base import Classifier, register_architecture
from worker.engine.architectures._layers import ImageConfig, global_pool

BLOCKS_PER_STAGE = (2, 2, 2, 2)


class ResNet18Config(ImageConfig):
    width: int = Field(64, ge=1, le=512, description="Channels of the first stage; each later "
                                                      "stage doubles them.")


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with a residual connection (projected when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def _stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
    strides = [stride] + [1] * (blocks - 1)
    layers = []
    for block_stride in strides:
        layers.append(BasicBlock(in_channels, out_channels, block_stride))
        in_channels = out_channels
    return nn.Sequential(*layers)


class ResNet18(Classifier):
    def __init__(self, config: ResNet18Config):
        super().__init__()
        width = config.width
        layers: list[nn.Module] = [
            nn.Conv2d(config.input_shape[0], width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        ]
        channels = width
        for index, blocks in enumerate(BLOCKS_PER_STAGE):
            out_channels = width * 2**index
            layers.append(_stage(channels, out_channels, blocks, stride=1 if index == 0 else 2))
            channels = out_channels
        self.features = nn.Sequential(*layers, *global_pool())
        self.classifier = nn.Linear(channels, config.num_classes)
        _init_weights(self)


def _init_weights(model: nn.Module) -> None:
    """He initialisation for convolutions, identity batch norm (torchvision's choice)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


@register_architecture("resnet18", ResNet18Config,
                       "CIFAR-style ResNet-18: 3×3 stem, no max-pool, BasicBlocks [2, 2, 2, 2].")
def build_resnet18(config: ResNet18Config) -> ResNet18:
    return ResNet18(config)
