"""The GPU presets' shape and the estimate of their time from a CPU profile (no GPU needed)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from worker.bench.estimate import CAVEAT, DataShape, estimate_preset, render_markdown
from worker.bench.presets import CIFAR10, PRESETS, get_preset
from worker.bench.runner import plan_contenders
from worker.engine.methods import METHODS
from worker.engine.training import TrainingRecipe

QUICK_METHODS = ["retrain", "projected-gradient", "deepclean", "feature-constraint", "salun",
                 "finetune"]


def test_gpu_quick_is_one_seed_of_the_core_methods_on_all_of_cifar10():
    preset = get_preset("gpu-quick")
    assert "gpu-quick" in PRESETS
    assert preset.seeds == (0,)
    assert preset.dataset.source == CIFAR10
    assert preset.dataset.train_size is None and preset.dataset.test_size is None
    assert preset.architecture == "resnet18" and dict(preset.architecture_config) == {}
    assert preset.variants == ()
    assert [c.label for c in plan_contenders(preset, None)] == QUICK_METHODS
    assert preset.compile is False


def test_gpu_keeps_every_method_and_three_seeds():
    preset = get_preset("gpu")
    assert preset.seeds == (0, 1, 2) and preset.dataset.train_size is None
    assert preset.architecture == "resnet18"
    labels = [c.label for c in plan_contenders(preset, None)]
    assert set(METHODS.names()) <= set(labels)


@pytest.mark.parametrize("name", ["gpu", "gpu-quick"])
def test_gpu_recipes_scale_the_rate_with_the_batch(name):
    recipe = get_preset(name).recipe
    assert recipe.batch_size == 512
    assert recipe.lr == pytest.approx(0.05 * 512 / 128)  # the cpu preset's 128-row recipe
    assert recipe.warmup_ratio > 0 and recipe.augment


def test_the_estimate_of_a_tiny_config_is_positive_and_says_what_it_assumed():
    preset = replace(get_preset("gpu-quick"), architecture="mlp",
                     architecture_config={"hidden": [16]},
                     recipe=TrainingRecipe(epochs=2, batch_size=32, lr=0.05))
    before = torch.get_num_threads()
    estimate = estimate_preset(preset, shape=DataShape(200, 50, 4, (8,)), profile_rows=8,
                               repeats=1)
    assert torch.get_num_threads() == before
    assert estimate.minutes > 0 and estimate.bound_minutes >= estimate.minutes
    assert estimate.caveat == CAVEAT
    assert set(estimate.profiles) == {"train", "forward", "fisher", "representation"}
    assert all(p.flops > 0 and p.operators > 0 for p in estimate.profiles.values())
    assert set(estimate.by_label()) >= set(QUICK_METHODS) | {"original"}
    recorded = estimate.as_dict()
    assert recorded["caveat"] == CAVEAT
    assert recorded["assumptions"]["convnet_share"] == estimate.assumptions.convnet_share
    text = render_markdown(estimate)
    assert CAVEAT in text and "lethe bench --preset gpu-quick --out benchmarks/gpu-quick" in text
    assert "No GPU was lent" in text and "sustain" in text
