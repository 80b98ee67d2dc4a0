"""What every architecture provides: a typed config and a classifier split into features + head."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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


def classification_head(model: nn.Module) -> nn.Linear:
    """The final classification layer, found generically: ``model.classifier`` when it is a
    linear layer (every built-in, and most Hugging Face classifiers), else the last linear
    layer registered under ``model.classifier`` (RoBERTa's head: dense, then out_proj), else
    the last linear layer of the model. Its input is the penultimate representation; its
    outputs are the logits."""
    head = getattr(model, "classifier", None)
    if isinstance(head, nn.Linear):
        return head
    for scope in (head, model):
        if isinstance(scope, nn.Module):
            linears = [m for m in scope.modules() if isinstance(m, nn.Linear)]
            if linears:
                return linears[-1]
    raise ValueError(f"{type(model).__name__} has no linear classification layer")


def output_classes(model: nn.Module) -> int:
    """How many logits the model gives."""
    return classification_head(model).out_features


@dataclass(frozen=True)
class Architecture:
    name: str
    summary: str
    config_model: type[ArchitectureConfig]
    factory: Callable[[ArchitectureConfig], Classifier]
    # TrainingRecipe fields a registration without a training_config gets (retrain and
    # finetune train with the recipe); None: TrainingRecipe's own defaults.
    default_recipe: dict[str, Any] | None = None

    def build(self, config: ArchitectureConfig | dict) -> Classifier:
        if not isinstance(config, self.config_model):
            config = self.config_model.model_validate(config)
        return self.factory(config)


# Built-ins are the modules of this package; installed plugins add theirs through the
# ``lethe.architectures`` entry-point group (each names a module that registers with
# ``register_architecture``, exactly as a built-in does).
ENTRY_POINT_GROUP = "lethe.architectures"
ARCHITECTURES: Registry[Architecture] = Registry("architecture", "worker.engine.architectures",
                                                 entry_point_group=ENTRY_POINT_GROUP)


def register_architecture(name: str, config_model: type[ArchitectureConfig], summary: str,
                          default_recipe: dict[str, Any] | None = None):
    """Decorator for ``factory(config) -> Classifier``."""

    def decorate(factory: Callable[[ArchitectureConfig], Classifier]):
        ARCHITECTURES.register(name)(Architecture(name, summary, config_model, factory,
                                                  default_recipe))
        return factory

    return decorate


def build_model(name: str, config: dict | ArchitectureConfig) -> Classifier:
    return ARCHITECTURES.get(name).build(config)
