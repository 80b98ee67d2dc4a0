"""``conv1d``: a tiny 1-D convolutional classifier over a sample's values read as a sequence.

Any input shape works: a sample is flattened to one channel of ``prod(input_shape)`` values,
then ``depth`` blocks of convolution (kernel ``kernel_size``, ``channels`` wide), ReLU and
2x max-pooling, then global average pooling into the linear classifier.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from worker.engine.architectures import ArchitectureConfig, Classifier, register_architecture


class Conv1dConfig(ArchitectureConfig):
    channels: int = Field(16, ge=1, le=1024, description="Channels of every convolution.")
    depth: int = Field(2, ge=1, le=6, description="Convolution blocks.")
    kernel_size: int = Field(3, ge=1, le=15, description="Kernel width (odd keeps the length).")


class Conv1dNet(Classifier):
    def __init__(self, config: Conv1dConfig):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten(), nn.Unflatten(1, (1, -1))]
        width = 1
        for _ in range(config.depth):
            layers += [nn.Conv1d(width, config.channels, config.kernel_size,
                                 padding=config.kernel_size // 2),
                       nn.ReLU(), nn.MaxPool1d(2, ceil_mode=True)]
            width = config.channels
        layers += [nn.AdaptiveAvgPool1d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_architecture("conv1d", Conv1dConfig,
                       "Example plugin (lethe-example-arch): a tiny 1-D conv net over the "
                       "flattened input.")
def build_conv1d(config: Conv1dConfig) -> Conv1dNet:
    return Conv1dNet(config)
