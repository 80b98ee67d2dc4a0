"""Architecture registry: one module per architecture, each registering itself."""

from worker.engine.architectures._base import (
    ARCHITECTURES,
    Architecture,
    ArchitectureConfig,
    Classifier,
    build_model,
    classification_head,
    output_classes,
    register_architecture,
)

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "ArchitectureConfig",
    "Classifier",
    "build_model",
    "classification_head",
    "output_classes",
    "register_architecture",
]
