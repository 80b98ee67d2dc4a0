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
    """Original models by key, under ``root``/models and, when given, in ``pinned``: a kept
    set (the zoo's is committed, benchmarks/zoo/originals) read before the cache and written
    to instead of it. Training an original is deterministic on one machine but not across
    CPUs (their kernels round differently, and twenty epochs amplify it to points of test
    accuracy), so runs that must compare start from one pinned set."""

    def __init__(self, root: Path, pinned: Path | None = None):
        self.root = Path(root) / "models"
        self.pinned = Path(pinned) if pinned is not None else None

    def path(self, key: str) -> Path:
        """Where a model trained now is kept."""
        return (self.pinned or self.root) / f"{key}.safetensors"

    def locate(self, key: str) -> Path | None:
        """The kept file for ``key``: the pinned set's, else the cache's; None if neither."""
        for directory in (self.pinned, self.root):
            if directory is not None and (directory / f"{key}.safetensors").is_file():
                return directory / f"{key}.safetensors"
        return None

    def load(self, key: str, model: nn.Module) -> dict[str, Any] | None:
        """Fill ``model`` with the kept weights and return what was recorded with them; None
        (model untouched) when nothing is kept under ``key``. A model found only in the cache
        is copied into the pinned set, so the set holds every original a run used."""
        path = self.locate(key)
        if path is None:
            return None
        with safe_open(str(path), framework="pt") as file:
            info = json.loads(file.metadata()[INFO_KEY])
        model.load_state_dict(load_file(str(path)))
        if path != self.path(key):
            self.save(key, model, info)
        return info

    def save(self, key: str, model: nn.Module, info: dict[str, Any]) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.tmp")
        save_state_dict(model, partial, metadata={INFO_KEY: json.dumps(info)})
        partial.replace(target)  # atomic: a concurrent run never reads half a file
