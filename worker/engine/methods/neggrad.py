"""NegGrad+: descend the retain loss while ascending the forget loss, in one weighted objective
α·CE(D_r) − (1−α)·CE(D_f); plain gradient ascent (NegGrad) is the case α = 0."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

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
    forget_set,
    paired_batches,
    require_rows,
    retain_set,
    steps_per_epoch,
)
from worker.engine.methods._common import working_copy
from worker.engine.training import seeded_generator


class Params(MethodParams):
    alpha: float = Field(
        0.99, ge=0, le=1,
        description="α: weight of the retain loss; the forget loss is ascended with weight 1−α.",
    )
    epochs: int = Field(3, ge=1, le=100, description="Passes over D_r.")
    lr: float = Field(0.01, gt=0, le=10, description="SGD learning rate.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    weight_decay: float = Field(5e-4, ge=0, le=1, description="SGD weight decay.")
    batch_size: int = Field(
        64, ge=1, le=8192,
        description="Retain rows per step; each step also takes this many forget rows "
                    "(D_f is cycled through as often as D_r needs).",
    )


@register_method
class NegGradPlus(UnlearningMethod):
    name = "neggrad"
    summary = (
        "NegGrad+: gradient descent on the retain set and ascent on the forget set, in one "
        "weighted loss α·CE(D_r) − (1−α)·CE(D_f)."
    )
    reference = (
        "Kurmanji, Triantafillou, Hayes, Triantafillou. Towards Unbounded Machine Unlearning. "
        "NeurIPS 2023. arXiv:2302.09880."
    )
    Params = Params

    def unlearn(self, task: UnlearningTask, params: Params) -> UnlearningOutcome:
        require_rows(task.data, retain=True)
        model = working_copy(task)
        generator = seeded_generator(params.seed)
        optimizer = torch.optim.SGD(model.parameters(), lr=params.lr, momentum=params.momentum,
                                    weight_decay=params.weight_decay)
        retain, forget = retain_set(task.data), forget_set(task.data)
        steps = StepProgress(task.progress,
                             params.epochs * steps_per_epoch(len(retain[0]), params.batch_size))
        history = []
        for epoch in range(1, params.epochs + 1):
            model.train()
            losses = []
            for batches in paired_batches(retain, forget, params.batch_size, generator,
                                          device=task.device):
                losses.append(neggrad_step(model, optimizer, params.alpha, task.device, *batches))
                steps.advance()
            retain_loss, forget_loss = torch.tensor(losses).mean(0).tolist()
            history.append({"epoch": epoch, "retain_loss": retain_loss,
                            "forget_loss": forget_loss})
        return UnlearningOutcome(model=model.eval(), metrics={"history": history})


def neggrad_step(model: nn.Module, optimizer: torch.optim.Optimizer, alpha: float,
                 device: torch.device, retain: Batch, forget: Batch) -> tuple[float, float]:
    """One SGD step on α·CE(retain batch) − (1−α)·CE(forget batch); returns both losses."""
    with autocast_for(device):  # bf16 forward passes on a GPU (the losses in float32)
        retain_loss = F.cross_entropy(model(retain[0].to(device)), retain[1].to(device))
        forget_loss = F.cross_entropy(model(forget[0].to(device)), forget[1].to(device))
    optimizer.zero_grad(set_to_none=True)
    (alpha * retain_loss - (1 - alpha) * forget_loss).backward()
    optimizer.step()
    return retain_loss.item(), forget_loss.item()
