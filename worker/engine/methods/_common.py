"""Helpers the unlearning methods share: copying, evaluation, BN freezing, trainable subsets.

The core methods' monitor and stopping loops are in ``_monitor.py``."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import nn

from worker.engine.architectures import Classifier
from worker.engine.device import channels_last, eval_batch_size
from worker.engine.methods._base import ProgressFn, UnlearningTask
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


@torch.no_grad()
def outputs(model: nn.Module, x: torch.Tensor, device: torch.device,
            batch_size: int | None = None) -> torch.Tensor:
    """Logits of every row, float32 on the CPU, in eval mode (channels-last for images: about
    twice as fast on CPUs, same predictions), in float32 on a GPU too (no autocast: these
    figures decide when a method stops). ``batch_size`` defaults to 256 rows on a CPU and
    to ``eval_batch_size`` on a GPU."""
    if len(x) == 0:
        return torch.empty(0, 0)
    batch_size = batch_size or eval_batch_size(device, 256)
    images = x.dim() == 4
    out = []
    with evaluating(model), channels_last(model, enabled=images):
        for xb, _ in iterate_batches(x, x, batch_size, shuffle=False):
            xb = xb.to(device)
            if images:
                xb = xb.contiguous(memory_format=torch.channels_last)
            out.append(model(xb).float().cpu())
    return torch.cat(out)


def predictions(model: nn.Module, x: torch.Tensor, device: torch.device,
                batch_size: int | None = None) -> torch.Tensor:
    """Top-1 predicted class of every row, on the CPU."""
    if len(x) == 0:
        return torch.empty(0, dtype=torch.int64)
    return outputs(model, x, device, batch_size).argmax(1)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device,
             batch_size: int | None = None) -> float:
    """Top-1 accuracy in percent (0 for an empty set)."""
    if len(x) == 0:
        return 0.0
    return 100.0 * (predictions(model, x, device, batch_size) == y).double().mean().item()


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
