"""Forget sets of each scenario, drawn deterministically from the bench seed."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch

from worker.bench.data import BenchData
from worker.engine.methods import UnlearningData

RANDOM_FRACTION = 0.1


@dataclass(frozen=True)
class ForgetSet:
    scenario: str
    forget_idx: torch.Tensor
    forget_classes: list[int] | None = None


def draw_forget_set(scenario: str, data: BenchData, seed: int) -> ForgetSet:
    # Each (scenario, seed) pair gets its own stream, so adding a scenario moves no other draw.
    generator = torch.Generator().manual_seed(zlib.crc32(f"{scenario}:{seed}".encode()))
    if scenario == "random-10":
        count = round(RANDOM_FRACTION * len(data.y_train))
        rows = torch.randperm(len(data.y_train), generator=generator)[:count]
        return ForgetSet(scenario, rows.sort().values)
    if scenario == "class":
        label = int(torch.randint(data.num_classes, (1,), generator=generator))
        rows = torch.nonzero(data.y_train == label).flatten()
        return ForgetSet(scenario, rows, forget_classes=[label])
    raise ValueError(f"unknown scenario {scenario!r}; known: random-10, class")


def unlearning_data(data: BenchData, forget: ForgetSet) -> UnlearningData:
    """What the methods see: every training row, split into forget and retain."""
    retain = torch.ones(len(data.y_train), dtype=torch.bool)
    retain[forget.forget_idx] = False
    return UnlearningData(
        x_train=data.x_train, y_train=data.y_train, x_test=data.x_test, y_test=data.y_test,
        forget_idx=forget.forget_idx, retain_idx=torch.nonzero(retain).flatten(),
        num_classes=data.num_classes, forget_classes=forget.forget_classes)


def evaluation_data(task_data: UnlearningData) -> UnlearningData:
    """The data scores are taken on. After class forgetting, TA and the membership attack's
    non-members use the test rows of the retained classes only: a forgotten class's test rows
    would score 0 for every model, retrain included, and say nothing."""
    if not task_data.forget_classes:
        return task_data
    forgotten = torch.tensor(task_data.forget_classes, dtype=task_data.y_test.dtype)
    keep = ~torch.isin(task_data.y_test, forgotten)
    return UnlearningData(
        x_train=task_data.x_train, y_train=task_data.y_train, x_test=task_data.x_test[keep],
        y_test=task_data.y_test[keep], forget_idx=task_data.forget_idx,
        retain_idx=task_data.retain_idx, num_classes=task_data.num_classes,
        forget_classes=task_data.forget_classes)
