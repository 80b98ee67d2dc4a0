"""Typed definitions of the benchmark presets: data, model, recipe, seeds, method overrides,
labelled extra settings, and suites of several (dataset, architecture) pairs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from worker.bench import BenchConfigError
from worker.engine.data.tables import TableColumns
from worker.engine.training import TrainingRecipe

SCENARIOS = ("random-10", "class")
DIGITS = "digits"  # scikit-learn's bundled digits, exported to an upload-format .npz
SYNTHETIC = "synthetic"  # a fixed make_classification table, exported likewise (bench/data.py)
CIFAR10 = "cifar10"  # the CIFAR-10 ImageFolder archive, located by cifar10_archive()
CIFAR10_FILE = "cifar10-jpeg.tar.gz"
BUILT_IN_SOURCES = (DIGITS, SYNTHETIC, CIFAR10)  # sources named rather than given as a file


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
    # How a table is read (None: a label column, every other a feature), and for a text
    # classifier the tokenizer.json to tokenize with (None: a word-level one built from the
    # training texts, as ``lethe train`` builds it).
    columns: TableColumns | None = None
    tokenizer: str | None = None


@dataclass(frozen=True)
class Variant:
    """A labelled extra row: a method under other parameters than the preset's defaults, e.g.
    a paper's settings beside Lethe's. ``scenario_params`` override ``params`` per scenario,
    for settings a paper gives per kind of request."""

    label: str
    method: str
    params: Mapping[str, Any]
    scenario_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def params_for(self, scenario: str) -> dict[str, Any]:
        return {**self.params, **self.scenario_params.get(scenario, {})}


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
    # Extra labelled rows run after the methods (a method may appear under several labels).
    variants: tuple[Variant, ...] = ()
    # The methods a run without --methods covers (None: every registered one).
    methods: tuple[str, ...] | None = None
    # Intra-op threads while the bench runs (None: torch's default). Tiny models run an order
    # of magnitude faster on one thread than on two busy cores, where threads wait on each other.
    torch_threads: int | None = None
    # torch.compile the models ``train`` trains (original, retrain, finetune), on a GPU only.
    compile: bool = False

    def with_dataset(self, path: Path, columns: TableColumns | None = None,
                     tokenizer: Path | None = None) -> Preset:
        return replace(self, dataset=replace(
            self.dataset, source=str(path), columns=columns,
            tokenizer=None if tokenizer is None else str(tokenizer)))

    def params_for(self, method: str) -> dict[str, Any]:
        return dict(self.method_params.get(method, {}))


@dataclass(frozen=True)
class PresetSuite:
    """Several presets (each one dataset and architecture: a "pair") run one after the other,
    reported pair by pair and averaged over pairs."""

    name: str
    description: str
    pairs: tuple[Preset, ...]


def paper_variants(gamma: float = 0.95) -> tuple[Variant, ...]:
    """The papers' own settings, as rows of their own beside Lethe's defaults.

    ``projected-gradient (paper)``: Hoang et al.'s schedule (SGD, learning rate decaying
    exponentially from 0.05 to 0.01 over up to 100 epochs), their loss (entropy weight 0.2;
    the offset 0.05 is already the default), one γ for both kinds of request (0.95; 0.9 for
    AllCNN-like nets, methods.md) with no retry at a lower one, every classifier row
    projected, and their stopping rule as far as the parameters reach: forget accuracy at
    the starting test accuracy (no difficulty shift, no learning-curve scaling), keeping the
    closer of the last two epochs (no bisection), and a fixed schedule (no epoch undone, no
    step halved or doubled: ``adapt_step`` off). What no parameter turns off stays Lethe's: a
    class's classifier rows are projected as the paper's, but the per-epoch check runs on
    samples of 500 rows (see projected_gradient.py).

    ``ssd (official)``: Foster et al.'s α 10 and λ 1, batch 128 for random samples and 64 for
    whole classes. Lethe's loader still shuffles D (the authors' does not; see ssd.py).
    """
    return (
        Variant("projected-gradient (paper)", "projected-gradient", {
            "lr_start": 0.05, "lr_end": 0.01, "max_epochs": 100, "gamma": gamma,
            "class_gamma": gamma, "gamma_floor": gamma, "free_class_rows": False,
            "entropy_weight": 0.2, "level_exponent": 0.0, "difficulty_weight": 0.0,
            "bisect_steps": 0, "adapt_step": False}),
        Variant("ssd (official)", "ssd", {"alpha": 10.0, "dampening": 1.0, "batch_size": 128},
                scenario_params={"class": {"batch_size": 64}}),
    )


PAPER_VARIANTS = paper_variants()


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
    variants=PAPER_VARIANTS,
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
    variants=PAPER_VARIANTS,
    torch_threads=1,
)

# The GPU presets' recipe: the cpu preset's 128-row recipe (SGD, lr 0.05, momentum 0.9,
# cosine) at a GPU-sized batch, its learning rate scaled linearly with the batch (Goyal et
# al., "Accurate, Large Minibatch SGD", 2017) and warmed up linearly over the first epoch or
# the first 5% of the steps, whichever is longer. Finetune (a fifth of the recipe's rate, at
# its batch) scales with it; the methods keep their own batch sizes and rates, which were
# tuned with them (benchmarks/tuning/).
BASE_BATCH, BASE_LR = 128, 0.05
GPU_BATCH = 512


def scaled_recipe(epochs: int, batch_size: int = GPU_BATCH, **fields: Any) -> TrainingRecipe:
    """The 128-row recipe at ``batch_size`` rows: lr × batch_size / 128, warmed up."""
    return TrainingRecipe(epochs=epochs, batch_size=batch_size,
                          lr=BASE_LR * batch_size / BASE_BATCH,
                          warmup_ratio=round(max(0.05, 1 / epochs), 4), augment=True, **fields)


GPU = Preset(
    name="gpu",
    description="All of CIFAR-10 and ResNet-18, three seeds, every method: for a machine "
                "with a GPU.",
    dataset=DatasetSpec(CIFAR10),
    architecture="resnet18",
    architecture_config={},
    recipe=scaled_recipe(epochs=50),
    seeds=(0, 1, 2),
    variants=PAPER_VARIANTS,
)

# Sized for about 8 minutes on one H100-class GPU, the original model's training included
# (benchmarks/gpu-quick/ESTIMATE.md; an estimate from a CPU profile until a GPU runs it):
# 15 epochs of ResNet-18 train the original and each scenario's retrain, which with the
# methods' own passes over D_r are most of the time.
GPU_QUICK_METHODS = ("retrain", "projected-gradient", "deepclean", "feature-constraint",
                     "salun", "finetune")
GPU_QUICK = replace(
    GPU,
    name="gpu-quick",
    description="All of CIFAR-10 and ResNet-18, one seed: the original, retrain, the three "
                "core methods, salun and finetune; about 8 minutes on one H100-class GPU.",
    recipe=scaled_recipe(epochs=15),
    seeds=(0,),
    variants=(),
    methods=GPU_QUICK_METHODS,
)


def zoo_pair(name: str, dataset: DatasetSpec, architecture: str, config: Mapping[str, Any],
             recipe: TrainingRecipe, gamma: float = 0.95) -> Preset:
    return Preset(name=name, description=f"zoo pair {name}", dataset=dataset,
                  architecture=architecture, architecture_config=config, recipe=recipe,
                  seeds=(0, 1, 2), variants=paper_variants(gamma), torch_threads=1)


# Sized on the 2-core development VM with one thread, while other work ran (benchmarks/
# README.md, "zoo"): one seed of every method and variant on both scenarios took 8 s
# (digits-mlp), 15 s (synthetic-mlp), about 445 s (cifar10-allcnn) and about 590 s
# (cifar10-resnet18) of CPU time, the original models included: some 53 minutes for three
# seeds. Most of it is the two CIFAR-10 pairs; `--methods` narrows a run. The two
# CIFAR-10 pairs differ in regime too: All-CNN with augmentation underfits (train 54%, test
# 46%), ResNet-18 without it memorises (train 99.8%, test 35%), as in the papers' tables.
ZOO = PresetSuite(
    name="zoo",
    description="Four (dataset, architecture) pairs, every method and the papers' settings, "
                "both scenarios, three seeds: digits and a synthetic table with MLPs, a "
                "2,000-image CIFAR-10 subset with a narrow All-CNN and a narrow ResNet-18; "
                "about an hour on a 2-core CPU with one thread.",
    pairs=(
        zoo_pair("digits-mlp", DatasetSpec(DIGITS), "mlp", {"hidden": [64, 64]},
                 TrainingRecipe(epochs=30, batch_size=64, lr=0.05)),
        zoo_pair("synthetic-mlp", DatasetSpec(SYNTHETIC), "mlp", {"hidden": [256, 128]},
                 TrainingRecipe(epochs=40, batch_size=64, lr=0.05)),
        # The paper's γ for All-CNN-like nets is 0.9 (methods.md).
        zoo_pair("cifar10-allcnn", DatasetSpec(CIFAR10, train_size=2_000, test_size=1_000),
                 "allcnn", {"width": 0.1667},  # 16 and 32 channels
                 TrainingRecipe(epochs=20, batch_size=128, lr=0.05, augment=True), gamma=0.9),
        # Without augmentation: the memorising regime of the papers' tables (RA near 100).
        zoo_pair("cifar10-resnet18", DatasetSpec(CIFAR10, train_size=2_000, test_size=1_000),
                 "resnet18", {"width": 8},
                 TrainingRecipe(epochs=20, batch_size=128, lr=0.05)),
    ),
)

PRESETS = {preset.name: preset for preset in (SMOKE, CPU, GPU, GPU_QUICK)}
SUITES = {suite.name: suite for suite in (ZOO,)}


def get_preset(name: str) -> Preset:
    """A one-pair preset by name (suites such as ``zoo`` come from get_suite)."""
    try:
        return PRESETS[name]
    except KeyError:
        hint = f"; {name!r} is a suite of several pairs" if name in SUITES else ""
        raise BenchConfigError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}"
                               f"{hint}") from None


def get_suite(name: str) -> PresetSuite:
    """Any preset as a suite: a suite by name, or a one-pair preset wrapped as one."""
    if name in SUITES:
        return SUITES[name]
    if name in PRESETS:
        preset = PRESETS[name]
        return PresetSuite(preset.name, preset.description, (preset,))
    raise BenchConfigError(f"unknown preset {name!r}; known: "
                           f"{', '.join([*PRESETS, *SUITES])}")


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
