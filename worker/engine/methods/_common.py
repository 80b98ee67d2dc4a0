"""Helpers the core unlearning methods share: copying, evaluation, stopping rules, BN freezing."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
from torch import nn

from worker.engine.architectures import Classifier
from worker.engine.methods._base import ProgressFn, UnlearningData, UnlearningTask
from worker.engine.training import iterate_batches


def working_copy(task: UnlearningTask) -> Classifier:
    """The model to unlearn, copied so the base version stays intact for the caller."""
    return copy.deepcopy(task.model).to(task.device)


def progress_span(progress: ProgressFn, start: float, end: float) -> ProgressFn:
    """Map a phase's own 0..1 progress onto [start, end] of the whole job."""
    return lambda fraction: progress(start + (end - start) * min(max(fraction, 0.0), 1.0))


def freeze_norm_statistics(model: nn.Module) -> None:
    """Put BatchNorm layers in eval mode so unlearning batches never shift running stats."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def random_rows(count: int, take: int, generator: torch.Generator) -> torch.Tensor:
    """``take`` distinct positions out of ``range(count)`` (all of them when take >= count)."""
    return torch.randperm(count, generator=generator)[: min(take, count)]


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode for the block, then every module's own mode back (frozen BN stays frozen)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def channels_last(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """The model's weights in channels-last layout for the block, then the default one back.
    Convolutions run about twice as fast in it on CPUs (same predictions); the layout is put
    back so training afterwards behaves exactly as before."""
    if not enabled:
        yield
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device,
             batch_size: int = 256) -> float:
    """Top-1 accuracy in percent (0 for an empty set)."""
    if len(x) == 0:
        return 0.0
    images = x.dim() == 4
    correct = 0
    with evaluating(model), channels_last(model, enabled=images):
        for xb, yb in iterate_batches(x, y, batch_size, shuffle=False):
            xb = xb.to(device)
            if images:
                xb = xb.contiguous(memory_format=torch.channels_last)
            correct += (model(xb).argmax(1).cpu() == yb).sum().item()
    return 100.0 * correct / len(x)


@dataclass
class EpochScore:
    epoch: float  # fractional for a point within an epoch
    forget_acc: float
    # On the test rows of retained classes when whole classes are forgotten; None where it was
    # not measured.
    test_acc: float | None

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class ForgetMonitor:
    """Measures forgetting from D_f and the test split only, never the retain data, so methods
    that must not read D_r can still decide when to stop.

    Random forgetting is done once forget accuracy is down at test accuracy (what a model that
    never saw D_f scores); class forgetting once it is near zero.
    """

    forget_x: torch.Tensor
    forget_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    class_forgetting: bool
    device: torch.device

    @classmethod
    def from_task(cls, task: UnlearningTask, max_samples: int,
                  generator: torch.Generator) -> ForgetMonitor:
        data = task.data
        forget_rows = data.forget_idx[random_rows(len(data.forget_idx), max_samples, generator)]
        test_x, test_y = retained_class_test_rows(data)
        test_rows = random_rows(len(test_x), max_samples, generator)
        return cls(data.x_train[forget_rows], data.y_train[forget_rows], test_x[test_rows],
                   test_y[test_rows], bool(data.forget_classes), task.device)

    def score(self, model: nn.Module, epoch: float) -> EpochScore:
        return EpochScore(epoch, self.forget_accuracy(model),
                          accuracy(model, self.test_x, self.test_y, self.device))

    def forget_accuracy(self, model: nn.Module) -> float:
        return accuracy(model, self.forget_x, self.forget_y, self.device)

    def forgotten(self, score: EpochScore, class_target_acc: float,
                  test_level: float | None = None) -> bool:
        """``test_level`` fixes the random-forgetting target (e.g. the starting test accuracy)
        instead of the current one, which a method that damages the whole model also lowers."""
        if self.class_forgetting:
            return score.forget_acc <= class_target_acc
        return score.forget_acc <= (score.test_acc if test_level is None else test_level)


def retained_class_test_rows(data: UnlearningData) -> tuple[torch.Tensor, torch.Tensor]:
    """The test split without the forgotten classes (the whole split for random forgetting)."""
    if not data.forget_classes:
        return data.x_test, data.y_test
    keep = ~torch.isin(data.y_test, torch.tensor(data.forget_classes, dtype=data.y_test.dtype))
    return data.x_test[keep], data.y_test[keep]


@contextlib.contextmanager
def only_these_trainable(model: nn.Module, trainable: list[nn.Parameter]) -> Iterator[None]:
    """Switch autograd off for every other parameter (no wasted gradients), then restore."""
    chosen = {id(p) for p in trainable}
    before = [(p, p.requires_grad) for p in model.parameters()]
    for parameter, _ in before:
        parameter.requires_grad_(id(parameter) in chosen)
    try:
        yield
    finally:
        for parameter, flag in before:
            parameter.requires_grad_(flag)
