"""ℓ1-sparse unlearning: fine-tune on D_r with an ℓ1 penalty α·(1 − t/T)·‖θ‖₁ whose weight
decays linearly over the T epochs. Sparsity makes the model forget D_f faster (the weights D_r
does not need shrink away) and the decay lets the last epochs recover accuracy."""

from __future__ import annotations

import torch
from pydantic import Field

from worker.engine.methods._base import (
    MethodParams,
    UnlearningMethod,
    UnlearningOutcome,
    UnlearningTask,
    register_method,
)
from worker.engine.methods._baseline_utils import (
    l1_norm,
    require_rows,
    retain_set,
    train_cross_entropy,
)
from worker.engine.methods._common import working_copy
from worker.engine.training import seeded_generator


class Params(MethodParams):
    alpha: float = Field(
        5e-4, ge=0, le=1, description="α: weight of ‖θ‖₁ in the first epoch, decaying to 0.")
    epochs: int = Field(3, ge=1, le=100, description="T: passes over D_r.")
    lr: float = Field(0.01, gt=0, le=10, description="SGD learning rate.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    weight_decay: float = Field(5e-4, ge=0, le=1, description="SGD weight decay.")
    batch_size: int = Field(32, ge=1, le=8192, description="Retain rows per step.")


@register_method
class L1Sparse(UnlearningMethod):
    name = "l1-sparse"
    summary = (
        "Fine-tune on the retain set with an ℓ1 penalty on all weights whose strength decays "
        "linearly to zero (sparsity-aware unlearning)."
    )
    reference = (
        "Jia, Liu, Ram, Yao, Liu, Liu, Sharma, Liu. Model Sparsity Can Simplify Machine "
        "Unlearning. NeurIPS 2023. arXiv:2304.04934."
    )
    Params = Params

    def unlearn(self, task: UnlearningTask, params: Params) -> UnlearningOutcome:
        require_rows(task.data, retain=True)
        model = working_copy(task)
        generator = seeded_generator(params.seed)
        optimizer = torch.optim.SGD(model.parameters(), lr=params.lr,
                                    momentum=params.momentum,
                                    weight_decay=params.weight_decay)
        l1_before = l1_norm(model).item()
        losses = train_cross_entropy(
            model, retain_set(task.data), optimizer, epochs=params.epochs,
            batch_size=params.batch_size, generator=generator, device=task.device,
            progress=task.progress,
            penalty=lambda epoch: penalty_weight(params, epoch) * l1_norm(model))
        metrics = {"l1_norm_before": l1_before, "l1_norm_after": l1_norm(model).item(),
                   "epoch_losses": losses}
        return UnlearningOutcome(model=model.eval(), metrics=metrics)


def penalty_weight(params: Params, epoch: int) -> float:
    """α·(1 − t/T) for epoch t = 0..T−1, as the authors schedule it per epoch."""
    return params.alpha * (1 - epoch / params.epochs)
