"""Builders for the unlearning-method tests: digits as tensors, a small trained MLP, tasks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sklearn.datasets import load_digits

from worker.engine.architectures import Classifier, build_model
from worker.engine.methods import UnlearningData, UnlearningTask
from worker.engine.methods._common import accuracy
from worker.engine.training import TrainingRecipe, train

CPU = torch.device("cpu")
MLP_CONFIG = {"num_classes": 10, "input_shape": (64,), "hidden": [64, 64]}
RECIPE = TrainingRecipe(epochs=30, batch_size=64, lr=0.05, seed=0)
FORGOTTEN_CLASS = 3

# The core methods calibrate themselves against the acceptance gate's targets
# (worker/engine/methods/_monitor.py), so the tests run them at their defaults: what a user
# gets. Kept as a mapping for the tests that drive every core method through the API.
DIGITS_PARAMS: dict[str, dict] = {
    "feature-constraint": {},
    "projected-gradient": {},
    "deepclean": {},
}


@dataclass(frozen=True)
class Digits:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digit_tensors(test_size: int = 360) -> Digits:
    """scikit-learn's 8×8 digits, pixels 0..16 scaled to 0..1, split by a fixed permutation."""
    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train_rows, test_rows = order[test_size:], order[:test_size]
    return Digits(x[train_rows], y[train_rows], x[test_rows], y[test_rows])


def build_mlp() -> Classifier:
    return build_model("mlp", MLP_CONFIG)


def train_mlp(digits: Digits) -> Classifier:
    torch.manual_seed(0)
    return train(build_mlp(), digits.x_train, digits.y_train, RECIPE, CPU)


def make_task(model: Classifier, digits: Digits, forget_idx: torch.Tensor, *,
              forget_classes: list[int] | None = None, gone_idx: torch.Tensor | None = None,
              state: dict[str, torch.Tensor] | None = None) -> UnlearningTask:
    """A request forgetting ``forget_idx``; ``gone_idx`` are rows earlier versions forgot."""
    rows = torch.arange(len(digits.x_train))
    settled = forget_idx if gone_idx is None else torch.cat([forget_idx, gone_idx])
    data = UnlearningData(
        x_train=digits.x_train, y_train=digits.y_train,
        x_test=digits.x_test, y_test=digits.y_test,
        forget_idx=forget_idx.sort().values, retain_idx=rows[~torch.isin(rows, settled)],
        num_classes=10, forget_classes=forget_classes,
    )
    return UnlearningTask(model=model, build_fresh=build_mlp, data=data, recipe=RECIPE,
                          device=CPU, state=state)


def class_rows(digits: Digits, label: int = FORGOTTEN_CLASS) -> torch.Tensor:
    return torch.nonzero(digits.y_train == label).squeeze(1)


def random_rows(digits: Digits, fraction: float = 0.1, seed: int = 1) -> torch.Tensor:
    count = round(fraction * len(digits.x_train))
    order = torch.randperm(len(digits.x_train), generator=torch.Generator().manual_seed(seed))
    return order[:count].sort().values


@dataclass(frozen=True)
class Accuracies:
    forget: float
    retain: float
    test: float  # on the test rows of retained classes


def measure(model: torch.nn.Module, task: UnlearningTask) -> Accuracies:
    data = task.data
    keep = ~torch.isin(data.y_test, torch.tensor(data.forget_classes or [], dtype=torch.int64))
    return Accuracies(
        forget=accuracy(model, data.x_train[data.forget_idx], data.y_train[data.forget_idx], CPU),
        retain=accuracy(model, data.x_train[data.retain_idx], data.y_train[data.retain_idx], CPU),
        test=accuracy(model, data.x_test[keep], data.y_test[keep], CPU),
    )
