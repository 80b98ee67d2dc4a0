"""A multi-layer perceptron over the flattened input."""

from __future__ import annotations

import math

from pydantic import Field
from torch import nn

from worker.engine.architectures._base import ArchitectureConfig, Classifier, register_architecture


class MLPConfig(ArchitectureConfig):
    hidden: list[int] = Field([256, 128], min_length=1, max_length=8,
                              description="Widths of the hidden layers.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


class MLP(Classifier):
    def __init__(self, config: MLPConfig):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(config.input_shape)
        for hidden in config.hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            if config.dropout:
                layers.append(nn.Dropout(config.dropout))
            width = hidden
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, config.num_classes)


@register_architecture("mlp", MLPConfig, "Fully connected network on the flattened input.")
def build_mlp(config: MLPConfig) -> MLP:
    return MLP(config)
