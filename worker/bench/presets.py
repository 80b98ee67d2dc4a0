"""Typed definitions of the benchmark presets: data, model, recipe, seeds, method overrides."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from worker.bench import BenchConfigError
from worker.engine.training import TrainingRecipe

SCENARIOS = ("random-10", "class")
DIGITS = "digits"  # scikit-learn's bundled digits, exported to an upload-format .npz
CIFAR10 = "cifar10"  # the CIFAR-10 ImageFolder archive, located by cifar10_archive()
CIFAR10_FILE = "cifar10-jpeg.tar.gz"


@dataclass(frozen=True)
class DatasetSpec:
    """Where the data comes from and how much of it a preset uses.

    ``source`` is ``digits``, ``cifar10`` or the path of any upload-format file. The sizes cap
    stratified subsets of the training and test splits (None: the whole split), so a preset
    keeps its time budget whatever file it is given.
    """

    source: str
    train_size: int | None = None
    test_size: int | None = None


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    dataset: DatasetSpec
    architecture: str
    architecture_config: Mapping[str, Any]  # num_classes and input_shape come from the data
    recipe: TrainingRecipe
    seeds: tuple[int, ...]
    scenarios: tuple[str, ...] = SCENARIOS
    # Per-method parameter overrides: what runs fast enough, or what tuning chose.
    method_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # Intra-op threads while the bench runs (None: torch's default). Tiny models run an order
    # of magnitude faster on one thread than on two busy cores, where threads wait on each other.
    torch_threads: int | None = None

    def with_dataset(self, path: Path) -> Preset:
        return replace(self, dataset=replace(self.dataset, source=str(path)))

    def params_for(self, method: str) -> dict[str, Any]:
        return dict(self.method_params.get(method, {}))


# Digits are tiny (1,437 training rows): with one thread every method runs at its defaults
# in about a second, and the whole preset in well under a minute.
SMOKE = Preset(
    name="smoke",
    description="Digits, a small MLP, one seed: under a minute on a laptop CPU (run in CI).",
    dataset=DatasetSpec(DIGITS),
    architecture="mlp",
    architecture_config={"hidden": [64, 64]},
    recipe=TrainingRecipe(epochs=30, batch_size=64, lr=0.05),
    seeds=(0,),
    torch_threads=1,
)

# Calibrated on 2 CPU cores, one thread: the original model trains in about 75 s (train 77%,
# test 67% accuracy), retrain takes about 70 s per scenario, and all twelve methods on both
# scenarios with their evaluations about 6 minutes per seed: some 25 minutes in all.
# Most of that is retraining and the gradient baselines' passes over D_r, so the subset, not
# the recipe's epochs, sets the time; fewer epochs would only shrink every speed-up.
CPU = Preset(
    name="cpu",
    description="A CIFAR-10 subset and a small VGG, three seeds: under an hour on a CPU.",
    dataset=DatasetSpec(CIFAR10, train_size=4_000, test_size=2_000),
    architecture="smallvgg",
    architecture_config={"widths": [16, 32, 64, 128], "convs_per_stage": 1, "hidden": 128},
    recipe=TrainingRecipe(epochs=30, batch_size=128, lr=0.05, augment=True),
    seeds=(0, 1, 2),
    # Every method at its defaults, which were tuned on this preset (benchmarks/tuning/).
    torch_threads=1,
)

GPU = Preset(
    name="gpu",
    description="All of CIFAR-10 and ResNet-18, three seeds: for a machine with a GPU.",
    dataset=DatasetSpec(CIFAR10),
    architecture="resnet18",
    architecture_config={},
    recipe=TrainingRecipe(epochs=50, batch_size=256, lr=0.1, augment=True),
    seeds=(0, 1, 2),
)

PRESETS = {preset.name: preset for preset in (SMOKE, CPU, GPU)}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise BenchConfigError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None


def cifar10_archive() -> Path:
    """The CIFAR-10 archive: ``$LETHE_CIFAR10``, else the shared data folder beside the repo."""
    candidates = [Path(os.environ["LETHE_CIFAR10"])] if os.environ.get("LETHE_CIFAR10") else []
    repo = Path(__file__).resolve().parents[2]
    candidates.append(repo.parent / "shared" / "data" / CIFAR10_FILE)
    for path in candidates:
        if path.is_file():
            return path
    raise BenchConfigError(
        f"{CIFAR10_FILE} not found (looked in {', '.join(map(str, candidates))}); set "
        "LETHE_CIFAR10 or pass --dataset")


def default_cache_dir() -> Path:
    """``$LETHE_HOME/bench-cache`` when LETHE_HOME is set, else ``~/.cache/lethe/bench``."""
    if os.environ.get("LETHE_HOME"):
        return Path(os.environ["LETHE_HOME"]) / "bench-cache"
    return Path.home() / ".cache" / "lethe" / "bench"
