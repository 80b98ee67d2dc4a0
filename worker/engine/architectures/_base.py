"""What every architecture provides: a typed config and a classifier split into features + head."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from worker.engine.registry import Registry


class ArchitectureConfig(BaseModel):
    """Fields every architecture takes; the service fills them from the dataset when absent."""

    model_config = ConfigDict(extra="forbid")

    num_classes: int = Field(..., ge=2, le=100_000, description="Output classes.")
    input_shape: tuple[int, ...] = Field(
        ..., min_length=1, max_length=3,
        description="One sample's shape: (channels, height, width) for images, (features,) else.",
    )


class Classifier(nn.Module):
    """``forward(x) == classifier(features(x))``.

    ``features`` maps an input batch to the penultimate representation (the classifier's
    input), which feature-level unlearning methods need by name.
    """

    features: nn.Module
    classifier: nn.Linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@dataclass(frozen=True)
class Architecture:
    name: str
    summary: str
    config_model: type[ArchitectureConfig]
    factory: Callable[[ArchitectureConfig], Classifier]

    def build(self, config: ArchitectureConfig | dict) -> Classifier:
        if not isinstance(config, self.config_model):
            config = self.config_model.model_validate(config)
        return self.factory(config)


ARCHITECTURES: Registry[Architecture] = Registry("architecture", "worker.engine.architectures")


def register_architecture(name: str, config_model: type[ArchitectureConfig], summary: str):
    """Decorator for ``factory(config) -> Classifier``."""

    def decorate(factory: Callable[[ArchitectureConfig], Classifier]):
        ARCHITECTURES.register(name)(Architecture(name, summary, config_model, factory))
        return factory

    return decorate


def build_model(name: str, config: dict | ArchitectureConfig) -> Classifier:
    return ARCHITECTURES.get(name).build(config)
