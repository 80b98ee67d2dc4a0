"""SCRUB: a student (starting as the original model) is pushed away from the original, its
teacher, on D_f (max-steps: maximise the KL) and kept close to it on D_r (min-steps: cross-entropy
plus KL). A few epochs alternate both; the last ones only do min-steps, which repairs what the
max-steps broke on retained data."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from pydantic import Field

from worker.engine.device import autocast_for
from worker.engine.methods._base import (
    MethodParams,
    UnlearningMethod,
    UnlearningOutcome,
    UnlearningTask,
    register_method,
)
from worker.engine.methods._baseline_utils import (
    Batch,
    StepProgress,
    distillation_kl,
    forget_set,
    frozen_copy,
    require_rows,
    retain_set,
    steps_per_epoch,
)
from worker.engine.methods._common import working_copy
from worker.engine.training import iterate_batches, seeded_generator

# (inputs, labels) -> (loss to descend, value to report)
StepLoss = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, float]]


class Params(MethodParams):
    epochs: int = Field(
        5, ge=1, le=100, description="Epochs; each ends with a min-step pass over D_r.")
    max_epochs: int = Field(
        1, ge=0, le=100,
        description="The first this many epochs start with a max-step pass over D_f.",
    )
    lr: float = Field(0.001, gt=0, le=10, description="SGD learning rate.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    weight_decay: float = Field(5e-4, ge=0, le=1, description="SGD weight decay.")
    temperature: float = Field(4.0, gt=0, le=100, description="Softmax temperature of the KL.")
    ce_weight: float = Field(
        0.99, ge=0, le=100, description="γ: weight of cross-entropy in the min-steps.")
    kl_weight: float = Field(
        0.001, ge=0, le=100, description="α: weight of the KL to the teacher in the min-steps.")
    forget_batch_size: int = Field(32, ge=1, le=8192, description="Rows per max-step.")
    retain_batch_size: int = Field(64, ge=1, le=8192, description="Rows per min-step.")


@register_method
class Scrub(UnlearningMethod):
    name = "scrub"
    summary = (
        "Teacher-student unlearning: alternate maximising the KL to the original model on the "
        "forget set and minimising cross-entropy plus KL on the retain set."
    )
    reference = (
        "Kurmanji, Triantafillou, Hayes, Triantafillou. Towards Unbounded Machine Unlearning. "
        "NeurIPS 2023. arXiv:2302.09880."
    )
    Params = Params

    def unlearn(self, task: UnlearningTask, params: Params) -> UnlearningOutcome:
        require_rows(task.data, retain=True)
        return _ScrubRun(task, params).run()


class _ScrubRun:
    def __init__(self, task: UnlearningTask, params: Params):
        self.task, self.params, self.device = task, params, task.device
        self.student = working_copy(task)
        self.teacher = frozen_copy(self.student)
        self.generator = seeded_generator(params.seed)
        self.optimizer = torch.optim.SGD(self.student.parameters(), lr=params.lr,
                                         momentum=params.momentum,
                                         weight_decay=params.weight_decay)
        self.forget, self.retain = forget_set(task.data), retain_set(task.data)
        self.steps = StepProgress(task.progress, self._total_steps())

    def _total_steps(self) -> int:
        max_passes = min(self.params.max_epochs, self.params.epochs)
        return (max_passes * steps_per_epoch(len(self.forget[0]), self.params.forget_batch_size)
                + self.params.epochs * steps_per_epoch(len(self.retain[0]),
                                                       self.params.retain_batch_size))

    def run(self) -> UnlearningOutcome:
        history = []
        for epoch in range(1, self.params.epochs + 1):
            record = {"epoch": epoch}
            if epoch <= self.params.max_epochs:
                record["forget_kl"] = self._pass(self.forget, self.params.forget_batch_size,
                                                 self._max_loss)
            record["retain_loss"] = self._pass(self.retain, self.params.retain_batch_size,
                                               self._min_loss)
            history.append(record)
        return UnlearningOutcome(model=self.student.eval(), metrics={"history": history})

    def _pass(self, data: Batch, batch_size: int, loss_fn: StepLoss) -> float:
        """One epoch over ``data`` descending ``loss_fn``; returns the mean of what it reports."""
        self.student.train()
        total = 0.0
        for xb, yb in iterate_batches(*data, batch_size, shuffle=True, generator=self.generator,
                                      device=self.device):
            with autocast_for(self.device):  # bf16 forward passes on a GPU, KL/CE in float32
                loss, reported = loss_fn(xb.to(self.device), yb.to(self.device))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += reported * len(xb)
            self.steps.advance()
        return total / len(data[0])

    def _max_loss(self, x: torch.Tensor, _y: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Max-step: ascend the KL to the teacher (descend its negative)."""
        kl = distillation_kl(self.student(x), self._teacher_logits(x), self.params.temperature)
        return -kl, kl.item()

    def _min_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Min-step: γ·CE + α·KL to the teacher."""
        logits = self.student(x)
        kl = distillation_kl(logits, self._teacher_logits(x), self.params.temperature)
        loss = self.params.ce_weight * F.cross_entropy(logits, y) + self.params.kl_weight * kl
        return loss, loss.item()

    @torch.no_grad()
    def _teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher(x)
