"""Original models kept between bench runs, keyed by everything that determines the weights."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from worker.engine.training import TrainingRecipe, save_state_dict

INFO_KEY = "bench"


def original_key(dataset_sha256: str, architecture: str, config: dict[str, Any],
                 recipe: TrainingRecipe, seed: int) -> str:
    identity = {"dataset": dataset_sha256, "architecture": architecture, "config": config,
                "recipe": recipe.model_dump(mode="json"), "seed": seed}
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class ModelCache:
    def __init__(self, root: Path):
        self.root = Path(root) / "models"

    def path(self, key: str) -> Path:
        return self.root / f"{key}.safetensors"

    def load(self, key: str, model: nn.Module) -> dict[str, Any] | None:
        """Fill ``model`` with the cached weights and return what was recorded with them;
        None (model untouched) when nothing is cached under ``key``."""
        path = self.path(key)
        if not path.is_file():
            return None
        with safe_open(str(path), framework="pt") as file:
            info = json.loads(file.metadata()[INFO_KEY])
        model.load_state_dict(load_file(str(path)))
        return info

    def save(self, key: str, model: nn.Module, info: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        partial = self.path(key).with_suffix(f".{os.getpid()}.tmp")
        save_state_dict(model, partial, metadata={INFO_KEY: json.dumps(info)})
        partial.replace(self.path(key))  # atomic: a concurrent run never reads half a file
