"""A small VGG: stages of batch-normalised 3×3 convolutions, each stage followed by 2×2 max-pool."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from torch import nn

from worker.engine.architectures._base import Classifier, register_architecture
from worker.engine.architectures._layers import ImageConfig, conv_bn_relu, global_pool

Width = Annotated[int, Field(ge=1, le=4096)]


class SmallVGGConfig(ImageConfig):
    widths: list[Width] = Field([64, 128, 256], min_length=1, max_length=6,
                                description="Channels of each stage.")
    convs_per_stage: int = Field(2, ge=1, le=4)
    hidden: int = Field(256, ge=0, le=8192,
                        description="Width of the fully connected layer before the classifier; "
                                    "0 for none.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout before the classifier.")


class SmallVGG(Classifier):
    def __init__(self, config: SmallVGGConfig):
        super().__init__()
        channels, height, width = config.input_shape
        layers: list[nn.Module] = []
        for stage_width in config.widths:
            for _ in range(config.convs_per_stage):
                layers += conv_bn_relu(channels, stage_width)
                channels = stage_width
            # Stop pooling once the map is 1 pixel wide, so small inputs take many stages.
            if min(height, width) >= 2:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
        layers += global_pool()
        if config.hidden:
            layers += [nn.Linear(channels, config.hidden), nn.ReLU()]
            channels = config.hidden
        if config.dropout:
            layers.append(nn.Dropout(config.dropout))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, config.num_classes)


@register_architecture("smallvgg", SmallVGGConfig,
                       "A small VGG with batch norm: conv stages, max-pooling, one hidden layer.")
def build_smallvgg(config: SmallVGGConfig) -> SmallVGG:
    return SmallVGG(config)
